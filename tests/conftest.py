from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from clrk.api import load_paths, load_text
from clrk.policy import PolicySet, compile_policies

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TESTDATA = Path(__file__).resolve().parent / "testdata"


def compile_paths(*paths: Path | str) -> PolicySet:
    loaded = load_paths([str(p) for p in paths])
    assert not loaded.errors, [f.line() for f in loaded.errors]
    return compile_policies(loaded.resources)


def compile_yaml(text: str) -> PolicySet:
    loaded = load_text(text, "test.yaml")
    assert not loaded.errors, [f.line() for f in loaded.errors]
    return compile_policies(loaded.resources)


@pytest.fixture(scope="session")
def examples() -> Path:
    return EXAMPLES


# The suite runs gRPC servers and clients, Kubernetes watches and record shippers in this
# process; threads their C libraries started may outlive the last test.  One full run in
# four aborted in the interpreter's teardown after every test had passed (SIGABRT, no
# message; the cause is not found yet).  Once pytest has reported, its status is the
# outcome: end there, without a teardown that can only add a crash.  pytest's own
# clean-up at exit is skipped too, so passing tests' directories are removed at the end
# of the session instead (tmp_path_retention_policy in pyproject.toml).
_SESSION: list[pytest.Session] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    _SESSION.append(session)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if not _SESSION:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(_SESSION[-1].exitstatus))
