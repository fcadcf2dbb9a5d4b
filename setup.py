"""Build the C core.  Everything else lives in pyproject.toml.

TALLIES_WERROR=1 turns every warning into an error (CI sets it).
TALLIES_TSAN=1 builds with ThreadSanitizer (for local experiments only).
If the C compiler is missing or fails, the package still installs and runs on
the pure-Python fallback, unless TALLIES_REQUIRE_C=1 (CI and the test command
set it) makes a failed build fatal.
"""

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

flags = ["-std=gnu11", "-O2", "-Wall", "-Wextra"]
if os.environ.get("TALLIES_WERROR") == "1":
    flags.append("-Werror")


class optional_build_ext(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            self._fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            self._fallback(exc)

    def _fallback(self, exc: Exception) -> None:
        if os.environ.get("TALLIES_REQUIRE_C") == "1":
            raise exc
        print(
            f"tallies: the C core could not be built ({exc}); "
            "installing the pure-Python fallback",
            file=sys.stderr,
        )


C = "src/tallies/_c/"  # every C source and shared header lives here

# One extension module, tallies._tallies: module.c has its only module init,
# each other file adds its types (src/tallies/_c/_module.h says why they are
# separate translation units).
SOURCES = [
    "module.c",
    "counter.c",
    "keyed.c",
    "rate.c",
    "shm.c",
    "buffered.c",
    "limiter.c",
    "wallrate.c",
]
HEADERS = [
    "_cells.h",
    "_counter_methods.h",
    "_gate.h",
    "_keyed_cells.h",
    "_ktable.h",
    "_limtable.h",
    "_module.h",
    "_pyargs.h",
    "_ring.h",
    "_shared.h",
    "_shmkeys.h",
]
EXTENSION = Extension(
    "tallies._tallies",
    sources=[C + s for s in SOURCES],
    depends=[C + h for h in HEADERS],
    extra_compile_args=flags,
)


class pruned_build_py(build_py):
    """setuptools reuses build/lib between builds: a module deleted from src/ (the
    benchmarks, which moved to benchmarks/; the five extensions of the layout
    before tallies._tallies) would still be installed from there.  After
    copying the package, drop every Python file that src/ no longer has and
    every compiled module other than EXTENSION."""

    def run(self) -> None:
        super().run()
        built = Path(self.build_lib, "tallies")
        source = Path(__file__).resolve().parent / "src" / "tallies"
        ours = Path(*EXTENSION.name.split("."))
        for path in list(built.rglob("*")):
            if path.suffix in (".py", ".pyi"):
                stale = not (source / path.relative_to(built)).exists()
            elif path.suffix in (".so", ".pyd"):
                module = path.relative_to(self.build_lib).parent / path.name.split(".")[0]
                stale = module != ours
            else:
                continue
            if stale:
                path.unlink()


setup(
    ext_modules=[EXTENSION],
    cmdclass={"build_ext": optional_build_ext, "build_py": pruned_build_py},
)
