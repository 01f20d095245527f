"""Golden files: tests/golden/<case>/input.yaml -> expected.yaml (the translation of every
gateway, as `to_plain` gives it), with the keyword arguments of `translate` in an
optional options.yaml.  CLRK_UPDATE_GOLDEN=1 rewrites the expected files instead of
comparing; review the diff before committing it.

Every expected output is also run through the real `envoy --mode validate`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from clrk.api import load_text
from clrk.policy.loaded import compile_loaded
from clrk_xds.envoy_process import static_bootstrap, validate_config
from clrk_xds.translate import to_plain, translate

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.yaml").is_file())
UPDATE = os.environ.get("CLRK_UPDATE_GOLDEN") == "1"


def render(case: str) -> str:
    loaded = load_text((GOLDEN / case / "input.yaml").read_text(), "input.yaml")
    assert not [f for f in loaded.findings if f.is_error and f.scope == "set"], [
        f.line() for f in loaded.findings
    ]
    options_file = GOLDEN / case / "options.yaml"
    options = yaml.safe_load(options_file.read_text()) if options_file.is_file() else {}
    out = translate(compile_loaded(loaded).compiled, **options)
    plain = {ref: to_plain(res) for ref, res in sorted(out.items())}
    return yaml.safe_dump(plain, sort_keys=True, default_flow_style=False, width=100)


def test_every_case_has_input():
    assert len(CASES) >= 9


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    expected_file = GOLDEN / case / "expected.yaml"
    actual = render(case)
    if UPDATE:
        expected_file.write_text(actual)
        return
    assert expected_file.is_file(), f"no {expected_file.name}: run with CLRK_UPDATE_GOLDEN=1"
    assert actual == expected_file.read_text(), (
        f"translation of {case} changed; if intended, run with CLRK_UPDATE_GOLDEN=1"
    )


def test_translation_is_deterministic() -> None:
    for case in CASES:
        assert render(case) == render(case)


@pytest.mark.parametrize("case", CASES)
def test_golden_output_is_valid_envoy_config(case: str) -> None:
    """The real Envoy accepts every gateway's expected output (one bootstrap each)."""
    expected = yaml.safe_load((GOLDEN / case / "expected.yaml").read_text())
    for ref, plain in expected.items():
        ok, output = validate_config(static_bootstrap(plain))
        assert ok, f"{case} {ref}: {output[-2000:]}"
