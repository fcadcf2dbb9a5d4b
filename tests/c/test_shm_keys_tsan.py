"""The lock-free key insert of shm:// segments (src/tallies/_c/_shmkeys.h), stressed
from pthreads under ThreadSanitizer: tests/c/stress_shm_keys.c (its header says what
it checks: every key published once, found complete, the same entry for every thread).

Two mutants of the header must be caught:

* the CAS that publishes a hash slot made relaxed: a reader that finds the slot
  is no longer ordered after the writes of the key's bytes, a data race that
  ThreadSanitizer must report (the -O2 build cannot see it);
* an insert whose CAS lost a slot no longer checks whether the winner holds its
  own key: two racing inserts of one key publish it twice, which the stress's
  own check reports, under ThreadSanitizer and at -O2 alike.

and three of the process's key -> cell cache (src/tallies/_c/_shmcache.h), each a
data race ThreadSanitizer must report:

* a slot's key stored relaxed: a lookup that finds the key is no longer ordered
  after the write of its cell;
* a grown table freeing the one it replaced: a lookup still probing the old
  table reads freed memory;
* the listing that ``KeyedCells.cells`` is built from taken without the lock:
  it reads slots while an insert writes them.

With TALLIES_REQUIRE_C=1 (CI, ./run-tests) a missing compiler or ThreadSanitizer
runtime fails these tests instead of skipping them (tests/c/_tsan.py).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import Callable

import pytest
from _tsan import HEADER_DIR as HEADERS
from _tsan import ROOT, TSAN_WARNING, compile_c, compiler, require_tsan, run

STRESS = ROOT / "tests" / "c" / "stress_shm_keys.c"
TSAN_OPTIONS = "halt_on_error=1 exitcode=66"

RELAXED_NEEDLE = """(uint32_t)(j + 1) | TKD_TAG(h),
                                                    memory_order_release,
                                                    memory_order_acquire)"""
RELAXED_MUTANT = """(uint32_t)(j + 1) | TKD_TAG(h),
                                                    memory_order_relaxed,
                                                    memory_order_relaxed)"""
TWICE_NEEDLE = "int64_t other = tkd_slot_entry(d, expected, h, owner, key, len);"
TWICE_MUTANT = "int64_t other = TKD_ABSENT; /* mutant: never the same key */"
SLOT_NEEDLE = "if (tsc_put_in(t, key, word, memory_order_release)) {"
SLOT_MUTANT = "if (tsc_put_in(t, key, word, memory_order_relaxed)) {"
FREE_NEEDLE = "atomic_store_explicit(&c->table, nt, memory_order_release); /* publishes all */"
FREE_MUTANT = FREE_NEEDLE + " nt->older = NULL; TSC_FREE(t); /* mutant: no reader left? */"
ITEMS_NEEDLE = """    TSC_LOCK(&c->lock);
    int64_t n = tsc_copy(c, keys, cells);
    TSC_UNLOCK(&c->lock);"""
ITEMS_MUTANT = "    int64_t n = tsc_copy(c, keys, cells); /* mutant: unlocked */"


def _build(include: pathlib.Path, out: pathlib.Path, tsan: bool) -> None:
    if tsan:
        require_tsan()
    compiler()
    compile_c(STRESS, out, ["-O1", "-fsanitize=thread"] if tsan else ["-O2"], include=include)


def _mutant(
    tmp_path: pathlib.Path, needle: str, replacement: str, header: str = "_shmkeys.h"
) -> pathlib.Path:
    folder = tmp_path / "mutant"
    folder.mkdir()
    shutil.copy(HEADERS / "_cells.h", folder / "_cells.h")
    src = (HEADERS / header).read_text()
    assert src.count(needle) == 1
    (folder / header).write_text(src.replace(needle, replacement))
    return folder


@pytest.mark.parametrize("tsan", [True, False], ids=["tsan", "o2"])
def test_racing_inserts_publish_each_key_once_and_complete(
    tmp_path: pathlib.Path, tsan: bool
) -> None:
    exe = tmp_path / "stress_shm_keys"
    _build(HEADERS, exe, tsan)
    res = run(exe, tsan_options=TSAN_OPTIONS)
    assert "ThreadSanitizer" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stdout + res.stderr
    assert "consistent" in res.stdout and "INCONSISTENT" not in res.stdout
    assert "rounds 40," in res.stdout and ", cached " in res.stdout


def _until_caught(
    exe: pathlib.Path, tries: int, caught: Callable[[subprocess.CompletedProcess[str]], bool]
) -> list[subprocess.CompletedProcess[str]]:
    """Run a mutant's stress up to ``tries`` times, stopping at the first run
    that ``caught`` it; every run's outcome, the last one last."""
    outcomes: list[subprocess.CompletedProcess[str]] = []
    for _ in range(tries):
        outcomes.append(run(exe, tsan_options=TSAN_OPTIONS))
        if caught(outcomes[-1]):
            break
    return outcomes


def _tsan_warned(res: subprocess.CompletedProcess[str]) -> bool:
    return TSAN_WARNING in res.stderr


def test_the_stress_catches_a_relaxed_publish(tmp_path: pathlib.Path) -> None:
    exe = tmp_path / "stress_shm_keys_relaxed"
    _build(_mutant(tmp_path, RELAXED_NEEDLE, RELAXED_MUTANT), exe, tsan=True)
    outcomes = _until_caught(exe, 4, _tsan_warned)
    res = outcomes[-1]
    assert res.returncode == 66, [r.stdout for r in outcomes]
    assert TSAN_WARNING in res.stderr and "memcpy" in res.stderr, res.stderr[-3000:]


@pytest.mark.parametrize("tsan", [True, False], ids=["tsan", "o2"])
def test_the_stress_catches_a_key_published_twice(tmp_path: pathlib.Path, tsan: bool) -> None:
    exe = tmp_path / "stress_shm_keys_twice"
    _build(_mutant(tmp_path, TWICE_NEEDLE, TWICE_MUTANT), exe, tsan)
    outcomes = _until_caught(exe, 6, lambda res: "INCONSISTENT" in res.stdout)
    assert outcomes[-1].returncode != 0, [r.stdout for r in outcomes]
    assert "INCONSISTENT" in outcomes[-1].stdout, [r.stdout for r in outcomes]


@pytest.mark.parametrize(
    ("needle", "mutant", "racers"),
    [
        (SLOT_NEEDLE, SLOT_MUTANT, ("tsc_get",)),
        (FREE_NEEDLE, FREE_MUTANT, ("tsc_get",)),
        # the listing's side of the race may be the access whose stack TSan
        # could not restore ("failed to restore the stack", under load)
        (ITEMS_NEEDLE, ITEMS_MUTANT, ("tsc_copy", "tsc_put")),
    ],
    ids=["relaxed-slot", "freed-table", "unlocked-listing"],
)
def test_the_stress_catches_a_racy_key_cache(
    tmp_path: pathlib.Path, needle: str, mutant: str, racers: tuple[str, ...]
) -> None:
    exe = tmp_path / "stress_shm_keys_cache"
    _build(_mutant(tmp_path, needle, mutant, "_shmcache.h"), exe, tsan=True)
    outcomes = _until_caught(exe, 4, _tsan_warned)
    res = outcomes[-1]
    assert res.returncode == 66, [r.stdout for r in outcomes]
    assert TSAN_WARNING in res.stderr, res.stderr[-3000:]
    assert any(racer in res.stderr for racer in racers), res.stderr[-3000:]
