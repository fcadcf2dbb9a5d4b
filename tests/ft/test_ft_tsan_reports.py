"""scripts/tsan_reports.py: how scripts/ft-tsan tells tallies' races from CPython's."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "tsan_reports.py"

OURS = """==================
WARNING: ThreadSanitizer: data race (pid=4242)
  Write of size 8 at 0x7f0000000010 by thread T2:
    #0 tl_try_add /w/src/tallies/_c/_cells.h:137:9 (_tallies.cpython-313t-x86_64-linux-gnu.so+0x1)
    #1 _PyEval_EvalFrameDefault /b/Python/generated_cases.c.h:1 (python3.13t+0x2)
  Previous read of size 8 at 0x7f0000000010 by thread T1:
    #0 Sharded_value ??:0 (_tallies.cpython-313t-x86_64-linux-gnu.so+0x3)
SUMMARY: ThreadSanitizer: data race /w/src/tallies/_c/_cells.h:137:9 in tl_try_add
==================
"""
THEIRS = """==================
WARNING: ThreadSanitizer: data race (pid=4242)
  Write of size 8 at 0x7f0000000020 by thread T3:
    #0 mi_page_free /b/Objects/mimalloc/page.c:10 (python3.13t+0x4)
SUMMARY: ThreadSanitizer: data race /b/Objects/mimalloc/page.c:10 in mi_page_free
==================
"""
PATTERN = r"src/tallies/|[(]_(core|shm|buffered)[.]cpython-"  # as scripts/ft-tsan has it


@pytest.fixture(scope="module")
def reports() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tsan_reports", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_report_with_a_tallies_frame_fails_the_run(
    reports: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "tallies.4242"
    log.write_text("noise\n" + THEIRS + OURS)
    assert reports.main([PATTERN, str(log)]) == 1
    out = capsys.readouterr().out
    assert "tl_try_add" in out and "note (not ours)" in out and "mi_page_free" in out
    assert out.rstrip().endswith("1 report(s) in " + repr(PATTERN) + ", 1 elsewhere")


def test_reports_only_in_cpython_are_notes(
    reports: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "tallies.1"
    log.write_text(THEIRS)
    assert reports.main([PATTERN, str(log)]) == 0
    assert "0 report(s)" in capsys.readouterr().out


def test_a_report_cut_short_still_counts(reports: ModuleType) -> None:
    cut = OURS[: OURS.index("SUMMARY")]
    assert len(reports.reports(cut)) == 1
    assert reports.reports("no reports at all\n") == []
