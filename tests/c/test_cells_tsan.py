"""The cell engine (src/tallies/_c/_cells.h) hammered by pthreads, under ThreadSanitizer.

``tests/c/stress_cells.c`` checks its own exact results (see its header) and
prints ``ok <section>`` per section.  It is built into a temporary directory:

* with ``-fsanitize=thread -O1``: every section must pass and TSan must report
  nothing;
* with ``-O2`` and no sanitizer, more threads and iterations;
* against mutants of the engine's header (a copy of ``_cells.h`` in which
  ``tl_add`` is a plain read-modify-write, or ``tl_store`` a relaxed store,
  so a spinlock released with it publishes nothing): TSan must report a data
  race with the mutated function or the data it should have ordered in the
  report, which shows that this harness really fails;
* as a negative control: ``tl_add_serial`` used from many threads must lose
  updates, which the program's exact check reports.  (TSan does not flag that
  one: ``tl_add_serial`` uses relaxed *atomic* loads and stores, which C11 does
  not call a data race; the exact check is what catches it.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _tsan import HEADER_DIR, ROOT, TSAN, TSAN_WARNING, require_tsan
from _tsan import compile_c as _compile
from _tsan import run as _run

STRESS_C = ROOT / "tests" / "c" / "stress_cells.c"
SECTIONS = ["sanity", "add", "edge_max", "edge_min", "striped", "caslock", "publish"]


def compile_c(out: Path, flags: list[str], include: Path = HEADER_DIR) -> None:
    _compile(STRESS_C, out, flags, include)


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(binary, *args, tsan_options="halt_on_error=0 exitcode=66 history_size=4")


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary directory for the binaries, once TSan is known to work here."""
    require_tsan()
    return tmp_path_factory.mktemp("stress_cells")


def assert_all_sections_pass(proc: subprocess.CompletedProcess[str]) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for section in SECTIONS:
        assert any(line.startswith(f"ok {section}") for line in proc.stdout.splitlines()), out
    assert "FAIL" not in proc.stdout
    assert "PASSED failures=0" in proc.stdout


def test_cell_engine_under_tsan(bin_dir: Path) -> None:
    binary = bin_dir / "stress_tsan"
    compile_c(binary, TSAN)
    proc = run(binary, "12", "20000")
    assert TSAN_WARNING not in proc.stdout + proc.stderr, proc.stderr
    assert_all_sections_pass(proc)
    striped = next(line for line in proc.stdout.splitlines() if line.startswith("ok striped"))
    assert "inflated=1" in striped


def test_cell_engine_at_o2_with_more_iterations(bin_dir: Path) -> None:
    binary = bin_dir / "stress_o2"
    compile_c(binary, ["-O2"])
    proc = run(binary, "16", "400000")
    assert_all_sections_pass(proc)


# Mutants of _cells.h: (function whose body changes, text in it, replacement).
PLAIN_ADD = (
    "tl_add(tl_cell *c",
    """    int64_t old = atomic_load_explicit(c, memory_order_relaxed), new_;
    do {
        if (TL_UNLIKELY(sub ? TL_SUB_OVERFLOWS(old, n, &new_)
                            : TL_ADD_OVERFLOWS(old, n, &new_))) {
            *out = old;
            return TL_OVERFLOW;
        }
    } while (!atomic_compare_exchange_weak_explicit(
        c, &old, new_, memory_order_seq_cst, memory_order_relaxed));""",
    """    int64_t *plain = (int64_t *)c, old = *plain, new_; /* mutant: no atomics */
    if (sub ? TL_SUB_OVERFLOWS(old, n, &new_) : TL_ADD_OVERFLOWS(old, n, &new_)) {
        *out = old;
        return TL_OVERFLOW;
    }
    *plain = new_;""",
)
RELAXED_STORE = (
    "tl_store(tl_cell *c",
    "atomic_store_explicit(c, v, memory_order_release);",
    "atomic_store_explicit(c, v, memory_order_relaxed); /* mutant */",
)


def mutant_header(folder: Path, function: str, old: str, new: str) -> Path:
    """A copy of the engine's headers with one function's body changed."""
    folder.mkdir()
    src = (HEADER_DIR / "_cells.h").read_text()
    start = src.index(function)
    end = src.index("\n}\n", start)
    body = src[start:end]
    assert body.count(old) == 1, f"{function}: the text to mutate is not there once"
    (folder / "_cells.h").write_text(src[:start] + body.replace(old, new) + src[end:])
    return folder


@pytest.mark.parametrize(
    ("mutant", "section", "in_report"),
    [
        pytest.param(PLAIN_ADD, "add", "tl_add", id="tl_add-plain"),
        pytest.param(RELAXED_STORE, "caslock", "caslock_worker", id="tl_store-relaxed"),
    ],
)
def test_tsan_reports_a_mutant_of_the_engine(
    bin_dir: Path, mutant: tuple[str, str, str], section: str, in_report: str
) -> None:
    include = mutant_header(bin_dir / f"mutant_{section}_h", *mutant)
    binary = bin_dir / f"mutant_{section}"
    compile_c(binary, TSAN, include=include)
    proc = run(binary, "8", "20000", section)
    assert f"ok {section}" in proc.stdout or f"bad {section}" in proc.stdout, proc.stdout
    report = proc.stderr
    assert "WARNING: ThreadSanitizer: data race" in report, proc.stdout + report
    assert in_report in report, report
    assert proc.returncode == 66  # TSAN_OPTIONS exitcode: reports were made


def test_negative_control_serial_updates_are_lost(bin_dir: Path) -> None:
    binary = bin_dir / "neg_serial"
    compile_c(binary, [*TSAN, "-DNEG_SERIAL"])
    # On a loaded 2-CPU machine the threads may happen to run one after
    # another: then nothing is lost and the run proves nothing, so it runs
    # again, longer (each run either exact or losing, nothing else).
    runs = []
    for iters in ("200000", "1000000", "4000000"):
        proc = run(binary, "8", iters)
        runs.append((iters, proc.returncode))
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
        if proc.returncode == 1:
            break
    assert proc.returncode == 1, f"no run lost an update: {runs}"
    assert "FAIL serial: lost updates" in proc.stdout
