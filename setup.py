"""Build the C core.  Everything else lives in pyproject.toml.

TALLIES_WERROR=1 turns every warning into an error (CI sets it).
TALLIES_TSAN=1 builds with ThreadSanitizer (for local experiments only).
If the C compiler is missing or fails, the package still installs and runs on
the pure-Python fallback, unless TALLIES_REQUIRE_C=1 (CI and the test command
set it) makes a failed build fatal.
"""

import os
import shutil
import sys

from setuptools import Extension, setup
from setuptools.command.build import build
from setuptools.command.build_ext import build_ext

flags = ["-std=gnu11", "-O2", "-Wall", "-Wextra"]
if os.environ.get("TALLIES_WERROR") == "1":
    flags.append("-Werror")


class fresh_build(build):
    """Build into an empty build/lib: a file gone from src/ (an extension of an
    earlier layout, a module moved out of the package) must not ride along from
    an earlier build into the wheel."""

    def run(self) -> None:
        shutil.rmtree(self.build_lib, ignore_errors=True)
        super().run()


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
SOURCES = ["module.c", "counter.c", "keyed.c", "rate.c", "shm.c", "buffered.c"]
HEADERS = [
    "_cells.h",
    "_counter_methods.h",
    "_gate.h",
    "_keyed_cells.h",
    "_ktable.h",
    "_module.h",
    "_pyargs.h",
    "_ring.h",
    "_shared.h",
]

setup(
    ext_modules=[
        Extension(
            "tallies._tallies",
            sources=[C + s for s in SOURCES],
            depends=[C + h for h in HEADERS],
            extra_compile_args=flags,
        )
    ],
    cmdclass={"build": fresh_build, "build_ext": optional_build_ext},
)
