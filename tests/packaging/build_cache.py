"""Build products the packaging and compose tests share, cached between runs by content.

The cache lives in $CLRK_TEST_CACHE, else $XDG_CACHE_HOME/clrk-tests, else
~/.cache/clrk-tests.  Each entry is named by a hash of what it is built from and is
complete once it exists: it is built in a temporary directory beside it and renamed
into place, so a crashed build never leaves a half entry behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("clrk", "clrk_runtime", "clrk_cli", "clrk_xds", "clrk_extproc", "clrk_worker_dialer")
# Everything `pip wheel .` reads (packages: their .py files; generated code excluded).
BUILD_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "envoy/bootstrap.yaml")


def cache_root() -> Path:
    given = os.environ.get("CLRK_TEST_CACHE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clrk-tests"


def content_key(paths: Iterable[Path], *extra: str, root: Path = ROOT) -> str:
    """A hash of the files' names (relative to root) and bytes, and of `extra`."""
    digest = hashlib.sha256()
    for text in extra:
        digest.update(text.encode() + b"\0")
    for path in sorted(set(paths)):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def wheel_sources(root: Path = ROOT) -> list[Path]:
    files = [root / name for name in BUILD_FILES]
    files += root.joinpath("proto").rglob("*.proto")
    for package in PACKAGES:
        files += (
            p
            for p in root.joinpath(package).rglob("*.py")
            if "_proto" not in p.relative_to(root).parts and "__pycache__" not in p.parts
        )
    return files


def cached(name: str, key: str, build: Callable[[Path], None], keep: int = 2) -> Path:
    """CACHE/name-key, made by `build(directory)` unless it exists; older entries of the
    same name beyond the `keep` newest are removed."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    entry = root / f"{name}-{key}"
    if not entry.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            build(tmp)
            tmp.chmod(0o755)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    entry.touch()  # mtime = last use, for the pruning below
    others = sorted(
        (p for p in root.glob(f"{name}-*") if p != entry), key=lambda p: p.stat().st_mtime
    )
    for old in others[: max(len(others) - (keep - 1), 0)]:
        with contextlib.suppress(OSError):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    return entry


def wheelhouse() -> Path:
    """Wheels of clrk (built from this tree) and of all its dependencies, for this
    interpreter: what an offline install or image build needs."""

    def build(directory: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(directory),
             str(ROOT)],
            check=True,
            cwd=directory,
        )  # fmt: skip

    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cached("wheels", content_key(wheel_sources(), py), build)
