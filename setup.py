"""setuptools hook (the project's metadata is in pyproject.toml): every wheel and sdist carries the viewer.

NiiVue is not in git (src/volsam/serve/static/vendor/ is ignored; scripts/build_viewer.py installs the
pinned, integrity-checked release). Building a wheel or an sdist first installs it when it is missing,
so a wheel built from a clean clone serves the viewer at ``/``; an sdist holds the vendor files, so a wheel
built from it needs no network. Set VOLSAM_NIIVUE_TGZ to a local copy of the tarball to build offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent


def _ensure_viewer() -> None:
    spec = importlib.util.spec_from_file_location("build_viewer", ROOT / "scripts" / "build_viewer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if mod.install(ROOT / "src" / "volsam" / "serve" / "static" / "vendor"):
        print(f"setup.py: installed @niivue/niivue@{mod.VERSION} into src/volsam/serve/static/vendor")


class BuildPyWithViewer(build_py):
    # finalize_options, not run: egg_info may list build_py's package data before build_py runs.
    def finalize_options(self) -> None:
        _ensure_viewer()
        super().finalize_options()


class SdistWithViewer(sdist):
    def run(self) -> None:
        _ensure_viewer()
        super().run()


setup(cmdclass={"build_py": BuildPyWithViewer, "sdist": SdistWithViewer})
