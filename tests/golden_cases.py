"""Golden cases, one directory each under tests/golden, one file per stage:

    input.yaml     the manifests
    options.yaml   keyword options of the translator (optional)
    compiled.yaml  stage 1, resources -> compiled policy (tests/policy/test_compile_golden.py):
                   each gateway's policy as the policy stream sends it (proto3 JSON),
                   the conditions and the findings of the same pass
    envoy.yaml     stage 2, compiled policy -> Envoy (tests/xds/test_translate_golden.py):
                   compiled.yaml's policies translated, read back from that file

`make golden` (CLRK_UPDATE_GOLDEN=1) rewrites the stage files instead of comparing them,
stage 1 first; review the diff like code.  A directory that is not a complete case
fails the suite (`orphans`), so a renamed or removed case leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

GOLDEN = Path(__file__).resolve().parent / "golden"
INPUT, OPTIONS, COMPILED, ENVOY = "input.yaml", "options.yaml", "compiled.yaml", "envoy.yaml"
STAGE_FILES = (COMPILED, ENVOY)
UPDATE = os.environ.get("CLRK_UPDATE_GOLDEN") == "1"


def cases() -> list[str]:
    return sorted(p.name for p in GOLDEN.iterdir() if (p / INPUT).is_file())


def orphans(root: Path = GOLDEN, complete: bool = not UPDATE) -> list[str]:
    """What under `root` is not part of a complete case, one line each.  `complete`:
    every stage file must be there (not while `make golden` writes them)."""
    out = []
    for path in sorted(root.iterdir()):
        if not path.is_dir():
            out.append(f"{path.name}: not a case directory")
            continue
        names = {p.name for p in path.iterdir()}
        if INPUT not in names:
            out.append(f"{path.name}: no {INPUT}")
        out += [
            f"{path.name}/{n}: not a stage file"
            for n in sorted(names - {INPUT, OPTIONS, *STAGE_FILES})
        ]
        out += [f"{path.name}: no {n}" for n in STAGE_FILES if n not in names and complete]
    return out


def dump(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, width=100)


def check(case: str, stage_file: str, actual: str) -> None:
    """Compare `actual` with the stage file, or write it there under `make golden`."""
    path = GOLDEN / case / stage_file
    if UPDATE:
        path.write_text(actual)
        return
    assert path.is_file(), f"no {case}/{stage_file}: run `make golden`"
    assert actual == path.read_text(), (
        f"{case}/{stage_file} changed; if intended, run `make golden` and review the diff"
    )


def options(case: str) -> dict:
    path = GOLDEN / case / OPTIONS
    return yaml.safe_load(path.read_text()) if path.is_file() else {}
