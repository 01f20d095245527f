"""The generated protobuf module of proto/clrk/policy/v1/policy.proto.

Generated code is not checked in: `python -m clrk_xds.policy_proto` writes it into
clrk_xds/_proto/ (git-ignored), and `load()` does the same on first use when it is
missing, so a clean clone works without a build step.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR.parent / "proto"
PROTO_FILE = "clrk/policy/v1/policy.proto"
OUT_DIR = PACKAGE_DIR / "_proto"
MODULE = "clrk_xds._proto.clrk.policy.v1.policy_pb2"


def generate() -> None:
    """Run protoc (from grpcio-tools) and swap the result in whole."""
    from grpc_tools import protoc

    source = PROTO_ROOT / PROTO_FILE
    if not source.is_file():
        raise RuntimeError(f"cannot generate {MODULE}: {source} is missing")
    tmp = Path(tempfile.mkdtemp(prefix="_proto.", dir=PACKAGE_DIR))
    try:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            str(source),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {source}")
        (tmp / ".gitignore").write_text("*\n")
        for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            (d / "__init__.py").touch()
        # Another process may have generated it meanwhile: either copy is the same.
        if OUT_DIR.exists():
            shutil.rmtree(OUT_DIR, ignore_errors=True)
        os.replace(tmp, OUT_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load() -> ModuleType:
    """The policy_pb2 module, generating it first if this checkout has none."""
    try:
        return importlib.import_module(MODULE)
    except ImportError:
        generate()
        for name in [m for m in sys.modules if m.startswith("clrk_xds._proto")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        return importlib.import_module(MODULE)


if __name__ == "__main__":
    generate()
    print(f"generated {MODULE} from {PROTO_ROOT / PROTO_FILE}")
