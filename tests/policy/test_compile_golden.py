"""Stage 1 golden files: manifests -> the compiled policy of each gateway (as the policy
stream sends it), with the conditions and findings of the same pass.  See
tests/golden_cases.py."""

from __future__ import annotations

import pytest

from clrk.api import load_text
from clrk.policy.loaded import compile_loaded
from clrk_runtime.policy_messages import to_plain
from tests.golden_cases import COMPILED, GOLDEN, INPUT, cases, check, dump, orphans

CASES = cases()


def render(case: str) -> str:
    loaded = compile_loaded(load_text((GOLDEN / case / INPUT).read_text(), INPUT))
    assert not loaded.blocked, [f.line() for f in loaded.findings]
    compiled = loaded.compiled
    return dump(
        {
            "gateways": {p.ref: to_plain(p) for p in compiled.gateways.values()},
            "conditions": {
                f"{kind} {namespace}/{name}": [
                    f"{c.type}={c.status} {c.reason}" + (f": {c.message}" if c.message else "")
                    for c in conditions
                ]
                for (kind, namespace, name), conditions in sorted(compiled.conditions.items())
            },
            "findings": [f.line() for f in loaded.findings],
        }
    )


def test_every_directory_is_a_complete_case():
    assert len(CASES) >= 15
    assert orphans() == []


def test_an_orphaned_or_incomplete_directory_is_reported(tmp_path):
    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / "expected.yaml").write_text("{}")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "input.yaml").write_text("")
    (tmp_path / "stray.yaml").write_text("")
    assert orphans(tmp_path, complete=True) == [
        "half: no compiled.yaml",
        "half: no envoy.yaml",
        "renamed: no input.yaml",
        "renamed/expected.yaml: not a stage file",
        "renamed: no compiled.yaml",
        "renamed: no envoy.yaml",
        "stray.yaml: not a case directory",
    ]


@pytest.mark.parametrize("case", CASES)
def test_compiled_policy(case: str) -> None:
    check(case, COMPILED, render(case))


def test_compiling_is_deterministic() -> None:
    for case in CASES:
        assert render(case) == render(case)
