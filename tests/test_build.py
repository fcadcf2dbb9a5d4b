"""``tallies.BUILD`` says which build runs, and a fallback nobody chose is never silent.

The fallback install below is real: tallies is built from a copy of the
sources with ``CC=false`` (every compile fails, as with no compiler), installed
into a folder of its own, and run from there in fresh interpreters.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from _support import FREE_THREADED, unavailable

import tallies

ROOT = Path(__file__).resolve().parents[1]


def expected_internals() -> tuple[str, ...]:
    """src/tallies/_c/_internals.h's rule: CPython internals only on the
    interpreters CI runs the whole suite on, and never in a public-API build."""
    if os.environ.get("TALLIES_PUBLIC_API") == "1":
        return ()
    version = sys.version_info[:2]
    if FREE_THREADED:
        return ("int-layout", "immortal-shared") if version == (3, 13) else ()
    return ("int-layout", "str-hash-cache") if (3, 10) <= version <= (3, 15) else ()


def test_build_names_the_running_implementation() -> None:
    build = tallies.BUILD
    assert build.implementation == tallies.IMPLEMENTATION
    assert build.free_threaded == bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert (build.fallback_reason is None) == (build.implementation == "c")


def test_cpython_internals_are_on_only_where_ci_runs_them() -> None:
    if tallies.IMPLEMENTATION != "c":
        unavailable("the C core is not built here")
    assert tallies.BUILD.cpython_internals == expected_internals()


def run_python(
    code: str, *, path: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter, from a folder where only ``path`` (if
    given) provides tallies; TALLIES_* from this process are left out."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("TALLIES_")}
    if path is not None:
        full["PYTHONPATH"] = str(path)
    full.update(env)
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        env=full,
        cwd=path or ROOT,
        timeout=120,
    )


def test_the_c_core_imports_without_a_word() -> None:
    if tallies.IMPLEMENTATION != "c":
        unavailable("the C core is not built here")
    r = run_python("import tallies; assert tallies.BUILD.implementation == 'c'")
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr


def test_a_chosen_fallback_imports_without_a_word() -> None:
    r = run_python(
        "import tallies; b = tallies.BUILD; "
        "assert (b.implementation, b.fallback_reason) == ('python', 'TALLIES_PURE=1 chose it'), b",
        TALLIES_PURE="1",
    )
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def without_c(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tallies installed (pip --target) from a build whose compiler always fails."""
    tmp = tmp_path_factory.mktemp("no-compiler")
    src = tmp / "tallies-src"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    target = tmp / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLIES_")}
    env["CC"] = "false"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
         "--no-cache-dir", "--target", str(target), str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )  # fmt: skip
    if r.returncode != 0 and "No module named pip" in r.stderr:
        unavailable(f"no pip in {sys.executable}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list((target / "tallies").rglob("*.so")), "CC=false built an extension?"
    return target


def test_a_failed_build_warns_once_at_import_with_the_reason_and_the_remedy(
    without_c: Path,
) -> None:
    r = run_python(
        "import tallies, tallies.keyed, tallies.rates, tallies.stores, tallies.counter\n"
        "assert tallies.BUILD.implementation == 'python', tallies.BUILD",
        path=without_c,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("RuntimeWarning") == 1, r.stderr
    warning = r.stderr
    assert "tallies is running on its pure-Python fallback" in warning
    assert "its build failed when tallies was installed: command 'false' failed" in warning
    assert "pip install --force-reinstall --no-cache-dir tallies" in warning
    assert "TALLIES_NO_WARN=1 silences this warning" in warning


def test_the_warning_is_silenced_by_no_warn_or_by_choosing_the_fallback(without_c: Path) -> None:
    for env in ({"TALLIES_NO_WARN": "1"}, {"TALLIES_PURE": "1"}):
        r = run_python("import tallies", path=without_c, **env)
        assert r.returncode == 0 and "Warning" not in r.stderr, (env, r.stderr)


def test_a_core_missing_without_a_recorded_failure_still_warns(
    without_c: Path, tmp_path: Path
) -> None:
    """An install that never tried to build (copied files, say) has no
    _build_failed.txt: the warning says the core was not built."""
    site = tmp_path / "site"
    shutil.copytree(without_c, site)
    (site / "tallies" / "_build_failed.txt").unlink()
    r = run_python("import tallies", path=site)
    assert "the C core is missing: it was not built when tallies was installed" in r.stderr


def test_demo_and_the_benchmarks_say_it_first(without_c: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLIES_")}
    env.update(PYTHONPATH=str(without_c), TALLIES_NO_WARN="1")  # the screen says it anyway
    demo = subprocess.run(
        [sys.executable, "-m", "tallies", "demo", "--threads", "2", "--increments", "1000",
         "--processes", "0"],
        capture_output=True, text=True, env=env, cwd=without_c, timeout=300,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    assert demo.stderr.startswith("NOTE: tallies is running on its pure-Python fallback"), (
        demo.stderr
    )
    # The benchmarks (benchmarks/, ./tallies bench) say it before they measure
    # anything: their first line is enough.
    env["PYTHONPATH"] = os.pathsep.join([str(without_c), str(ROOT)])
    with subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=without_c,
    ) as bench:
        assert bench.stderr is not None
        first = bench.stderr.readline()
        bench.kill()
    assert first.startswith("NOTE: tallies is running on its pure-Python fallback"), first
