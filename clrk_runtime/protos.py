"""The generated protobuf modules of the project's own .proto files (proto/**.proto:
the policy stream, the admin API).

Generated code is not checked in.  A wheel carries it (setup.py runs `generate` into
the build), so an installed clrk never runs protoc and works from a read-only
site-packages.  In a source checkout `python -m clrk_runtime.protos` writes it into
clrk_runtime/_proto/ (git-ignored), and `load()` does the same on first use when a
module is missing, so a clean clone works without a build step.  All files are
generated together, so one generation serves every module.
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
MODULE = "clrk_runtime._proto.clrk.policy.v1.policy_pb2"
ADMIN_MODULE = "clrk_runtime._proto.clrk.admin.v1.admin_pb2"


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(proto_root.rglob("*.proto"))


def generate(out_dir: Path = OUT_DIR, proto_root: Path = PROTO_ROOT) -> None:
    """Run protoc (from grpcio-tools) over every .proto under `proto_root` and swap the
    result into `out_dir` whole."""
    from grpc_tools import protoc

    sources = proto_files(proto_root)
    if not (proto_root / PROTO_FILE).is_file():
        raise RuntimeError(
            f"cannot generate {MODULE}: {proto_root / PROTO_FILE} is missing (an installed "
            "clrk carries its generated modules: reinstall it from a complete wheel)"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="_proto.", dir=out_dir.parent))
    try:
        args = [
            "protoc",
            f"-I{proto_root}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            *map(str, sources),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(map(str, sources))}")
        (tmp / ".gitignore").write_text("*\n")
        for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            (d / "__init__.py").touch()
        readable_by_all(tmp)
        # Another process may have generated it meanwhile: either copy is the same.
        if out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def readable_by_all(root: Path) -> None:
    """Generated code is no secret, and every user of the CLI (`clrk apply` need not run
    as root) imports it: mkdtemp made the directory 0700 and the umask may be strict."""
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def load(module: str = MODULE) -> ModuleType:
    """A generated module (policy_pb2 by default), generating first if this checkout
    has none or has one from before its .proto was added."""
    try:
        return importlib.import_module(module)
    except ImportError:
        generate()
        # Forget the (package) modules that looked for the missing file; generated
        # modules already imported stay: re-executing one would register it twice.
        for name in [m for m in sys.modules if m.startswith("clrk_runtime._proto")]:
            if not name.endswith("_pb2"):
                del sys.modules[name]
        importlib.invalidate_caches()
        return importlib.import_module(module)


if __name__ == "__main__":
    generate()
    print(f"generated {', '.join(map(str, proto_files()))} into {OUT_DIR}")
