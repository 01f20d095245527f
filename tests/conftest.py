from __future__ import annotations

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
