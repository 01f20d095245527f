"""The images of the offline compose stack, built without a registry and kept in the
daemon's data root under tags named by what they are built from, so a later run whose
inputs did not change builds nothing.

- base: a Debian rootfs made by mmdebstrap from the machine's own apt sources (python3
  and the tools the gateway and the example agent use), `docker import`ed.
- clrk: the Dockerfile on that base, with every wheel (clrk's built from this tree)
  made on the host beforehand: the build itself has no network.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

from tests.compose.docker_env import DockerLab, run
from tests.packaging.build_cache import ROOT, content_key, wheel_sources, wheelhouse

BASE_PACKAGES = (
    "python3", "python3-venv", "ca-certificates", "iproute2", "iptables", "curl",
    "netcat-openbsd",
)  # fmt: skip
MMDEBSTRAP_OPTIONS = (
    "--variant=minbase",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale", "info")),
)
BASE_REPO = "clrk-test/base"
CLRK_REPO = "clrk-test/clrk"


def codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip('"')
    raise RuntimeError("/etc/os-release names no VERSION_CODENAME")


def apt_sources(suite: str, root: Path = Path("/etc/apt")) -> list[str]:
    """`deb URI SUITE COMPONENTS` lines of the machine's apt sources for `suite` and its
    updates and security suites (one-line .list files and deb822 .sources files)."""
    lines: list[str] = []
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    files = [root / "sources.list", *sorted(root.glob("sources.list.d/*.list"))]
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            deb = len(words) >= 4 and words[0] == "deb" and not words[1].startswith("[")
            if deb and words[2] in wanted:
                lines.append(" ".join(words))
    for path in sorted(root.glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                for s in fields.get("suites", "").split():
                    if s in wanted:
                        lines.append(f"deb {uri} {s} {fields.get('components', 'main')}")
    return lines


def _has_image(lab: DockerLab, tag: str) -> bool:
    return lab.docker("image", "inspect", tag, check=False).returncode == 0


def _drop_other_tags(lab: DockerLab, repo: str, keep: str) -> None:
    tags = lab.docker("image", "ls", repo, "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    old = [t for t in tags if t != keep]
    if old:
        lab.docker("image", "rm", *old, check=False)
    lab.docker("image", "prune", "-f", check=False)


def base_image(lab: DockerLab) -> str:
    suite = codename()
    key = hashlib.sha256(
        "\n".join([suite, *BASE_PACKAGES, *MMDEBSTRAP_OPTIONS]).encode()
    ).hexdigest()[:16]
    tag = f"{BASE_REPO}:{key}"
    if _has_image(lab, tag):
        return tag
    sources = apt_sources(suite)
    if not sources:
        raise RuntimeError(f"no apt source for {suite} in /etc/apt")
    with tempfile.TemporaryDirectory(prefix="clrk-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        run(["mmdebstrap", *MMDEBSTRAP_OPTIONS, f"--include={','.join(BASE_PACKAGES)}",
             suite, str(tar), *sources], timeout=900)  # fmt: skip
        lab.docker("import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["/bin/bash"]',
                   str(tar), tag, timeout=300)  # fmt: skip
    _drop_other_tags(lab, BASE_REPO, tag)
    return tag


def clrk_image(lab: DockerLab, base: str) -> str:
    """The Dockerfile's image on `base`; its wheels come from this interpreter, so its
    Python must be the base's (both bookworm's 3.11 here)."""
    dockerfile = ROOT / "Dockerfile"
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    tag = f"{CLRK_REPO}:{content_key([*wheel_sources(), dockerfile], base, py)}"
    if _has_image(lab, tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="clrk-context-") as tmp:
        context = Path(tmp)
        shutil.copyfile(dockerfile, context / "Dockerfile")
        shutil.copytree(wheelhouse(), context / "wheelhouse")
        result = lab.docker(
            "build", "--build-arg", f"BASE={base}", "--build-arg", "WHEELHOUSE=wheelhouse",
            "--tag", tag, str(context), timeout=900, check=False,
            env={"DOCKER_BUILDKIT": "0"},  # the CLI here has no buildx; the classic builder
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"image build failed:\n{result.stdout[-4000:]}\n{result.stderr}")
    _drop_other_tags(lab, CLRK_REPO, tag)
    return tag


def python_minor(lab: DockerLab, image: str) -> str:
    argv = ["run", "--rm", "--network", "none", image, "python3", "-c",
            "import sys; print(f'{sys.version_info.major}.{sys.version_info.minor}')"]  # fmt: skip
    return lab.docker(*argv).stdout.strip()
