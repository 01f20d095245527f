"""Build hook: the wheel carries what installed code needs from outside its packages.

- The generated modules of every proto/**/*.proto (clrk_runtime/_proto/), so an
  installed clrk never runs protoc and works from a read-only site-packages.
- envoy/bootstrap.yaml (as clrk_xds/_envoy/bootstrap.yaml), the template `clrk up`
  renders Envoy's bootstrap from.

An editable install needs neither: it runs from the source tree, which has both.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _protos_module():
    # By path: importing the package would need its dependencies in the build environment.
    path = HERE / "clrk_runtime" / "protos.py"
    spec = importlib.util.spec_from_file_location("_clrk_protos", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        lib = Path(self.build_lib)
        out = lib / "clrk_runtime" / "_proto"
        _protos_module().generate(out_dir=out, proto_root=HERE / "proto")
        (out / ".gitignore").unlink()  # for source checkouts only
        envoy = lib / "clrk_xds" / "_envoy"
        envoy.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / "envoy" / "bootstrap.yaml", envoy / "bootstrap.yaml")


setup(cmdclass={"build_py": BuildPy})
