"""The layout's rules (README, "Layout"): the library never imports the command
line tools, the package holds no benchmark, C sources live in one folder, each
extension's .pyi sits beside it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tallies"


def _imports(path: Path) -> list[str]:
    """Absolute dotted names of every module ``path`` imports."""
    package = ".".join(("tallies", *path.relative_to(SRC).parent.parts))
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.append(mod)
            found += [f"{mod}.{a.name}" for a in node.names]
    return found


def test_the_library_never_imports_the_command_line_tools() -> None:
    # __main__.py is `python -m tallies`: the command line's other entry point.
    library = [
        p
        for p in SRC.rglob("*.py")
        if "cli" not in p.relative_to(SRC).parts and p.name != "__main__.py"
    ]
    assert len(library) > 10
    offenders = {
        str(p.relative_to(SRC)): name
        for p in library
        for name in _imports(p)
        if name == "tallies.cli" or name.startswith("tallies.cli.")
    }
    assert offenders == {}


def test_the_import_scanner_sees_relative_imports() -> None:
    """The scanner above resolves ``from .x import y`` (so it can catch ``.cli``)."""
    assert "tallies.cli.look.positive_int" in _imports(SRC / "cli" / "__init__.py")
    assert "tallies._pure.keyed.KeyedCounter" in _imports(SRC / "keyed" / "__init__.py")


def test_the_package_holds_no_benchmark_and_never_imports_one() -> None:
    """The benchmarks live in benchmarks/ at the repository's root (the wheel is the
    library and its command line); nothing under src/ imports them."""
    assert [p.name for p in SRC.rglob("*bench*") if "__pycache__" not in p.parts] == []
    offenders = {
        str(p.relative_to(SRC)): name
        for p in SRC.rglob("*.py")
        for name in _imports(p)
        if name == "benchmarks" or name.startswith("benchmarks.")
    }
    assert offenders == {}
    assert (ROOT / "benchmarks" / "harness.py").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "\nbench = " not in pyproject  # no `bench` extra: benchmarks/requirements.txt


def test_c_sources_live_in_one_folder() -> None:
    outside = [p for p in SRC.rglob("*.[ch]") if p.parent.name != "_c"]
    assert outside == []
    assert {p.name for p in (SRC / "_c").glob("*.h")} >= {
        "_cells.h",
        "_pyargs.h",
        "_ktable.h",
        "_keyed_cells.h",
    }


def test_each_extension_has_its_pyi_beside_it() -> None:
    for module in ("counter/_core", "keyed/_core", "stores/_shm", "rates/_core"):
        assert (SRC / f"{module}.pyi").is_file(), module


def test_a_module_deleted_from_src_is_not_installed_from_a_stale_build(tmp_path: Path) -> None:
    """setuptools reuses build/lib; the package's build step drops what src/ no longer has
    (the old tallies/cli/bench*.py of a checkout that built before they moved out)."""
    stale = tmp_path / "tallies" / "cli" / "bench.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("raise SystemExit('a stale module')\n")
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not stale.exists()
    assert (tmp_path / "tallies" / "cli" / "demo.py").is_file()
    assert (tmp_path / "tallies" / "counter" / "_core.pyi").is_file()
