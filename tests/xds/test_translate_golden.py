"""Stage 2 golden files: each case's compiled policies (stage 1's compiled.yaml, read
back as a dialer reads them) -> Envoy resources, with the translator options of
options.yaml.  Every expected output is also run through the real `envoy --mode
validate`.  See tests/golden_cases.py."""

from __future__ import annotations

import pytest
import yaml

from clrk_runtime.policy_messages import from_plain
from clrk_xds.envoy_process import static_bootstrap, validate_config
from clrk_xds.translate import to_plain, translate_gateway
from tests.golden_cases import COMPILED, ENVOY, GOLDEN, cases, check, dump, options

CASES = cases()


def render(case: str) -> str:
    compiled = yaml.safe_load((GOLDEN / case / COMPILED).read_text())
    out = {
        ref: to_plain(translate_gateway(from_plain(plain), **options(case)))
        for ref, plain in sorted(compiled["gateways"].items())
    }
    return dump(out)


@pytest.mark.parametrize("case", CASES)
def test_envoy_resources(case: str) -> None:
    check(case, ENVOY, render(case))


def test_translation_is_deterministic() -> None:
    for case in CASES:
        assert render(case) == render(case)


@pytest.mark.parametrize("case", CASES)
def test_golden_output_is_valid_envoy_config(case: str) -> None:
    """The real Envoy accepts every gateway's expected output (one bootstrap each)."""
    expected = yaml.safe_load((GOLDEN / case / ENVOY).read_text())
    for ref, plain in expected.items():
        ok, output = validate_config(static_bootstrap(plain))
        assert ok, f"{case} {ref}: {output[-2000:]}"
