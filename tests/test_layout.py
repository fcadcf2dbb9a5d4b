"""The layout's rules (README, "Layout"): one compiled extension with a complete
stub, C sources in one folder, no import cycle, the library never imports the
package root or the command line tools, the package holds no benchmark."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

from _support import unavailable

import tallies

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tallies"
INSTALLED = Path(tallies.__file__).resolve().parent
EXTENSION = "_tallies"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("tallies", *parts))


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return bool(name == "tallies" or (SRC / rel).with_suffix(".py").is_file()) or (
        (SRC / rel / "__init__.py").is_file()
        or (SRC / rel).with_suffix(".pyi").is_file()  # the extension
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except what sits under ``if TYPE_CHECKING:`` (never run)."""
    found: list[ast.AST] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)
    return found


def _imports(path: Path) -> list[str]:
    """The modules ``path`` imports (the module itself for ``from M import f``,
    the submodule for ``from P import m``; ``tallies`` for a name taken from
    the package root)."""
    return _imports_of(path.read_text(), _module_name(path), path.name == "__init__.py")


def _tallies_imports(path: Path) -> list[str]:
    return [n for n in _imports(path) if n == "tallies" or n.startswith("tallies.")]


def _imports_of(source: str, me: str, is_package: bool) -> list[str]:
    package = me if is_package else me.rpartition(".")[0]
    found = []
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.append(sub if _is_module(sub) else mod)
    return found


def _library() -> list[Path]:
    # The command line (cli/, and __main__.py: `python -m tallies`) is an
    # application of the library, not part of it.
    return [
        p
        for p in SRC.rglob("*.py")
        if "cli" not in p.relative_to(SRC).parts and p.name != "__main__.py"
    ]


def _runtime_edges(me: str, target: str) -> list[str]:
    """What importing ``target`` from ``me`` may run: the target and those of
    its packages that are not ``me``'s own (those are already imported)."""
    mine = {".".join(me.split(".")[:i]) for i in range(1, me.count(".") + 2)}
    parts = target.split(".")
    chain = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [m for m in chain if m not in mine]


def test_the_library_never_imports_the_command_line_tools() -> None:
    library = _library()
    assert len(library) > 10
    offenders = {
        str(p.relative_to(SRC)): name
        for p in library
        for name in _tallies_imports(p)
        if name == "tallies.cli" or name.startswith("tallies.cli.")
    }
    assert offenders == {}


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


def test_the_library_never_imports_the_package_root() -> None:
    """``tallies/__init__.py`` imports every scope; a scope importing it back
    would be a cycle through the root (``from .. import X`` included)."""
    offenders = sorted(
        str(p.relative_to(SRC)) for p in _library() if "tallies" in _tallies_imports(p)
    )
    assert offenders == []


def test_the_library_has_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for p in _library():
        me = _module_name(p)
        graph[me] = {e for t in _tallies_imports(p) for e in _runtime_edges(me, t) if e != me}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(" -> ".join([*path[path.index(n) :], n]))
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == []


def test_the_import_scanner_sees_what_runs() -> None:
    """The scanner resolves relative imports to modules, a name from the root
    to the root, leaves out ``if TYPE_CHECKING:``, and follows packages."""
    source = """
from typing import TYPE_CHECKING
from .. import _impl, Counter
from ..keyed.api import install
from .base import Store
import tallies.rates
if TYPE_CHECKING:
    from ..cli import demo
def later():
    from .._pure import counter
"""
    assert sorted(_imports_of(source, "tallies.stores.x", False)) == [
        "tallies",
        "tallies._impl",
        "tallies._pure.counter",
        "tallies.keyed.api",
        "tallies.rates",
        "tallies.stores.base",
        "typing",
    ]
    assert "tallies.cli.look" in _imports(SRC / "cli" / "__init__.py")
    assert _runtime_edges("tallies._pure.keyed", "tallies.keyed.api") == [
        "tallies.keyed",
        "tallies.keyed.api",
    ]
    assert _runtime_edges("tallies.keyed", "tallies.keyed.api") == ["tallies.keyed.api"]


def test_c_sources_live_in_one_folder() -> None:
    outside = [p for p in SRC.rglob("*.[ch]") if p.parent.name != "_c"]
    assert outside == []
    assert {p.name for p in (SRC / "_c").glob("*.h")} >= {
        "_cells.h",
        "_counter_methods.h",
        "_module.h",
        "_pyargs.h",
        "_ktable.h",
        "_keyed_cells.h",
    }


def test_a_module_deleted_from_src_is_not_installed_from_a_stale_build(tmp_path: Path) -> None:
    """setuptools reuses build/lib; the package's build step drops what src/ no longer has
    (the old tallies/cli/bench*.py of a checkout that built before they moved out, the
    extensions of the layout before tallies._tallies) and keeps the one extension."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    stale = tmp_path / "tallies" / "cli" / "bench.py"
    stale_ext = tmp_path / "tallies" / "counter" / f"_core{suffix}"
    ours = tmp_path / "tallies" / f"{EXTENSION}{suffix}"
    for path in (stale, stale_ext, ours):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("raise SystemExit('a stale module')\n")
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not stale.exists() and not stale_ext.exists()
    assert ours.exists()
    assert (tmp_path / "tallies" / "cli" / "demo.py").is_file()
    assert (tmp_path / "tallies" / f"{EXTENSION}.pyi").is_file()


# ---- the one extension, as installed ------------------------------------------


def _compiled_modules() -> list[Path]:
    suffixes = {sysconfig.get_config_var("EXT_SUFFIX"), ".so", ".pyd"}
    return sorted(p for p in INSTALLED.rglob("*") if any(p.name.endswith(s) for s in suffixes))


def _native() -> types.ModuleType:
    try:
        return importlib.import_module(f"tallies.{EXTENSION}")
    except ImportError as exc:
        unavailable(f"the C core tallies.{EXTENSION} is not importable: {exc!r}")


def test_the_installed_package_has_exactly_one_compiled_module() -> None:
    found = _compiled_modules()
    if not found:
        _native()  # skips (or fails where the C core is required)
    assert [p.name.split(".")[0] for p in found] == [EXTENSION], found
    assert found[0].parent == INSTALLED


def _stub() -> tuple[set[str], dict[str, set[str]]]:
    """The top-level names of the installed stub but its ``@type_check_only``
    classes (names of the stub alone, that group what several C types
    declare), and each class's members, those of its bases in the stub included."""
    stub = INSTALLED / f"{EXTENSION}.pyi"
    assert stub.is_file(), f"{stub} is not installed"
    tree = ast.parse(stub.read_text())
    names: set[str] = set()
    classes: dict[str, set[str]] = {}
    for node in tree.body:
        stub_only = isinstance(node, ast.ClassDef) and any(
            isinstance(d, ast.Name) and d.id == "type_check_only" for d in node.decorator_list
        )
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not stub_only:
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            members = classes[node.name] = set()
            for base in node.bases:
                if isinstance(base, ast.Name) and base.id in classes:
                    members |= classes[base.id]
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
    return names, classes


# Dunders a stub must declare when the C type has them: what type checkers
# need for c += n, int(c), len(kc), key in kc, kc[key].
_PROTOCOL = {
    "__iadd__",
    "__isub__",
    "__int__",
    "__len__",
    "__contains__",
    "__getitem__",
    "__setitem__",
    "__delitem__",
}
_C_MEMBERS = (
    types.MethodDescriptorType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
    types.WrapperDescriptorType,
)


def _c_members(cls: type) -> set[str]:
    """What the C type itself defines (not what tallies.keyed installs on it)."""
    return {
        name
        for name, attr in vars(cls).items()
        if isinstance(attr, _C_MEMBERS)
        and (not name.startswith("__") or name in _PROTOCOL)
        and name != "__weakref__"
    }


def test_the_stub_names_everything_the_extension_has() -> None:
    native = _native()
    names, classes = _stub()
    public = {n for n in vars(native) if not n.startswith("__")}
    assert public - names == set(), "in the extension, missing from its .pyi"
    assert names - public == set(), "in the .pyi, not in the extension"
    for name, cls in vars(native).items():
        if inspect.isclass(cls) and not name.startswith("__"):
            missing = _c_members(cls) - classes[name]
            assert missing == set(), f"{name}: members missing from the .pyi"


def test_the_stub_check_catches_a_missing_member() -> None:
    """A negative control: the check above finds what a stub leaves out."""
    native = _native()
    assert {"increment", "decrement", "value", "__iadd__", "__int__"} <= _c_members(native.Counter)
    assert "most_common" not in _c_members(native.KeyedCounter)  # installed, not C
    assert "_keys" in _c_members(native.KeyedCounter)


def test_the_stub_check_reads_members_through_the_stub_only_bases() -> None:
    """Counter declares increment through ``_Adder``, a ``@type_check_only`` class
    that the extension does not have and the check does not ask it for."""
    names, classes = _stub()
    assert "_Adder" not in names
    assert "_Adder" not in vars(_native())
    assert {"increment", "__iadd__", "__int__", "value"} <= classes["Counter"]
    assert {"increment", "inflated", "value"} <= classes["ShardedCounter"]
