"""clrk_runtime.protos: the generated modules of proto/, readable by every user."""

from __future__ import annotations

import os
import stat

from clrk_runtime.protos import generate


def test_generated_code_is_readable_by_every_user_whatever_the_umask(tmp_path):
    out = tmp_path / "_proto"
    previous = os.umask(0o077)
    try:
        generate(out)
    finally:
        os.umask(previous)
    paths = [out, *out.rglob("*")]
    assert any(p.name == "admin_pb2.py" for p in paths)
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    assert not list(tmp_path.glob("_proto.*"))  # no temporary directory left beside it
