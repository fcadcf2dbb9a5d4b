"""The gate under write-behind counters (src/tallies/_c/_gate.h): a store's close()
must wait for the updates that got through, so that its flush takes them.

tests/c/stress_gate.c (its header says what it checks) runs the header's code from
pthreads: under ThreadSanitizer (no report allowed), at -O2, and as a mutant whose
close does not wait, which its own ledger must catch.  With TALLIES_REQUIRE_C=1
(CI, ./run-tests) a missing compiler or TSan runtime fails instead of skipping
(tests/c/_tsan.py).
"""

from __future__ import annotations

import pathlib
import shutil

from _tsan import HEADER_DIR, ROOT, TSAN_WARNING, compile_c, require_tsan, run

STRESS = ROOT / "tests" / "c" / "stress_gate.c"


def test_the_gate_balances_under_tsan(tmp_path: pathlib.Path) -> None:
    require_tsan()
    exe = tmp_path / "stress_gate"
    compile_c(STRESS, exe, ["-O1", "-fsanitize=thread"])
    res = run(exe, tsan_options="halt_on_error=1 exitcode=66")
    assert TSAN_WARNING not in res.stdout + res.stderr, res.stderr
    assert res.returncode == 0 and "balanced" in res.stdout, res.stdout + res.stderr


def test_the_gate_balances_at_o2(tmp_path: pathlib.Path) -> None:
    exe = tmp_path / "stress_gate_o2"
    compile_c(STRESS, exe, ["-O2"])
    res = run(exe, tsan_options="")
    assert res.returncode == 0 and "balanced" in res.stdout, res.stdout + res.stderr


def test_the_stress_catches_a_close_that_does_not_wait(tmp_path: pathlib.Path) -> None:
    mutant = tmp_path / "mutant"
    mutant.mkdir()
    shutil.copy(HEADER_DIR / "_cells.h", mutant / "_cells.h")
    src = (HEADER_DIR / "_gate.h").read_text()
    needle = "while (atomic_load_explicit(&f->stripes[i].n, memory_order_seq_cst) != 0) {"
    assert src.count(needle) == 1
    (mutant / "_gate.h").write_text(src.replace(needle, "while ((void)f, 0) {"))
    exe = tmp_path / "stress_gate_mutant"
    compile_c(STRESS, exe, ["-O2"], include=mutant)
    outcomes = []
    for _ in range(6):  # real threads: one run may by chance miss it
        outcomes.append(run(exe, tsan_options=""))
        if "LOST OR ADDED AFTER CLOSE" in outcomes[-1].stdout:
            break
    assert outcomes[-1].returncode != 0, [r.stdout for r in outcomes]
    assert "LOST OR ADDED AFTER CLOSE" in outcomes[-1].stdout
