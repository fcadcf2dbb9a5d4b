"""Build the C core.  Everything else lives in pyproject.toml.

TALLIES_WERROR=1 turns every warning into an error (CI sets it).
TALLIES_PUBLIC_API=1 builds the documented-CPython-API path on any interpreter
(no CPython internals: src/tallies/_c/_internals.h), TALLIES_PORTABLE=1 the
plain-C path (no compiler extensions: src/tallies/_c/_platform.h); CI runs both.
CC and CFLAGS are honoured as usual.
If the C compiler is missing or fails, the package still installs and runs on
the pure-Python fallback, unless TALLIES_REQUIRE_C=1 (CI and the test command
set it) makes a failed build fatal.  The fallback is not silent: the reason is
kept in the package (tallies/_build_failed.txt) and `import tallies` warns with
it (tallies/_build.py).
"""

import os
import re
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

WERROR = os.environ.get("TALLIES_WERROR") == "1"
FAILED = "_build_failed.txt"  # read by tallies/_build.py
DEFINES = [
    (macro, "1")
    for env, macro in (("TALLIES_PUBLIC_API", "TL_PUBLIC_API"), ("TALLIES_PORTABLE", "TL_PORTABLE"))
    if os.environ.get(env) == "1"
]


def compile_flags(compiler_type: str) -> list[str]:
    """ISO C11 (compiler specifics live in _c/_platform.h), warnings on."""
    if compiler_type == "msvc":  # planned, not built by CI (docs/platforms.md)
        return ["/std:c11", "/experimental:c11atomics", "/O2", "/W3"] + (["/WX"] if WERROR else [])
    return ["-std=c11", "-O2", "-Wall", "-Wextra"] + (["-Werror"] if WERROR else [])


def describe(exc: Exception) -> str:
    """A compiler failure in one line: the command and its status, not its arguments."""
    text = str(exc).strip()
    # CalledProcessError: "Command '[...]' returned ..." ("Command [...]" from 3.15)
    failed = re.match(r"Command '?\[(.*?)\]'? returned non-zero exit status (\d+)", text, re.S)
    if failed:
        program = failed.group(1).split(",")[0].strip(" '\"")
        return f"command '{program}' failed with exit status {failed.group(2)}"
    return text.splitlines()[0][:300] if text else type(exc).__name__


class optional_build_ext(build_ext):
    def finalize_options(self) -> None:
        super().finalize_options()
        # The flags and defines come from the environment, which setuptools'
        # up-to-date check does not see: a build/ left by another configuration
        # (say without TALLIES_PUBLIC_API=1) must not be reused.
        self.force = True

    def run(self) -> None:
        self._forget_failure()
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            self._fallback(exc)

    def build_extensions(self) -> None:
        flags = compile_flags(self.compiler.compiler_type)
        for ext in self.extensions:
            ext.extra_compile_args = flags + ext.extra_compile_args
        super().build_extensions()

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            self._fallback(exc, ext.name)

    def _failure_files(self) -> list[str]:
        dirs = [os.path.join(self.build_lib, "tallies")]
        if self.inplace:
            dirs.append(os.path.join("src", "tallies"))
        return [os.path.join(d, FAILED) for d in dirs]

    def _forget_failure(self) -> None:
        for path in self._failure_files():
            if os.path.exists(path):
                os.remove(path)

    def _fallback(self, exc: Exception, what: str = "") -> None:
        if os.environ.get("TALLIES_REQUIRE_C") == "1":
            raise exc
        reason = describe(exc) + (f" (building {what})" if what else "")
        print(
            f"tallies: the C core could not be built ({reason}); "
            "installing the pure-Python fallback",
            file=sys.stderr,
        )
        for path in self._failure_files():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(reason + "\n")


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
    "_internals.h",
    "_keyed_cells.h",
    "_ktable.h",
    "_limtable.h",
    "_module.h",
    "_platform.h",
    "_pyargs.h",
    "_ring.h",
    "_shared.h",
    "_shmcache.h",
    "_shmkeys.h",
]
EXTENSION = Extension(
    "tallies._tallies",
    sources=[C + s for s in SOURCES],
    depends=[C + h for h in HEADERS],
    define_macros=DEFINES,  # the compile flags come per compiler (compile_flags)
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
