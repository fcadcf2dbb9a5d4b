"""``tallies bench --scale``: a small run (``--max-keys``) has every store at every size
up to it, every one of issue 19's targets with a verdict (those at 10^6 keys
inconclusive, saying why), and exact counts; a store that could not be measured
says why instead of a number.  Speed is never asserted: figures on a shared
machine are noise."""

from __future__ import annotations

import json

import pytest
from _bench_support import bench
from _redis_support import need_redis

from benchmarks import scale
from benchmarks.harness import INCONCLUSIVE, MET, MISSED, Row, format_targets

TOP = max(scale.SIZES)
SMALL = min(scale.SIZES)

#: Every target of issue 19, as (the row's store and size, what it checks).
TARGETS = [
    *[(f"shm://, {n:,} keys", "first increment") for n in (SMALL,)],
    *[
        (f"{s}, {SMALL:,} keys", "increment of an existing key")
        for s in ("shm://", "sqlite://", "redis://")
    ],
    *[(f"{s}, {TOP:,} keys: read <= 2 ms", "one-key read") for s in ("sqlite://", "redis://")],
    *[
        (f"{s}, {TOP:,} keys: read vs {SMALL:,} keys", "one-key read")
        for s in ("sqlite://", "redis://")
    ],
    (f"sqlite://, {TOP:,} keys: flush <= 2 s", "flush()"),
    (f"redis://, {TOP:,} keys: flush <= 3 s", "flush()"),
    (f"redis://, {TOP:,} keys: Redis blocked per script call", "flush()"),
    *[(f"{s}, {TOP:,} keys: snapshot <= 1.5 s", "snapshot()") for s in ("sqlite://", "redis://")],
    *[
        (f"{s}, {TOP:,} keys: private memory per key vs KeyedCounter", "resident memory")
        for s in ("shm://", "sqlite://", "redis://")
    ],
    ("shm://, 100,000 keys: disk used", "disk used"),
    (f"shm://, {TOP:,} keys: disk used", "disk used"),
]


@pytest.fixture(scope="module")
def small_run() -> list[Row]:
    need_redis()
    return scale.run(quick=True, max_keys=SMALL)


def _row(rows: list[Row], name: str, part: str) -> Row:
    (row,) = [r for r in rows if r.name == name and r.part.startswith(f"scale: {part}")]
    return row


def test_every_target_of_issue_19_is_in_the_report_with_a_verdict(small_run: list[Row]) -> None:
    for name, part in TARGETS:
        row = _row(small_run, name, part)
        assert row.target and row.verdict in {MET, MISSED, INCONCLUSIVE}, row
    text = format_targets(small_run)
    assert all(name in text for name, _ in TARGETS)


def test_targets_above_max_keys_are_inconclusive_saying_why(small_run: list[Row]) -> None:
    at_top = [r for r in small_run if f"{TOP:,} keys:" in r.name]
    assert at_top
    for row in at_top:
        assert row.value is None and row.verdict == INCONCLUSIVE, row
        assert row.reason.startswith(f"not measured: --max-keys stops at {SMALL:,} keys"), row


def test_every_store_is_measured_at_the_sizes_run(small_run: list[Row]) -> None:
    for part in (
        "first increment",
        "increment of an existing key",
        "one-key read",
        "snapshot",
        "resident memory",
    ):
        for store in scale.STORES:
            row = _row(small_run, f"{store}, {SMALL:,} keys" + (
                ", after flush()" if part == "one-key read" else ""), part)  # fmt: skip
            assert row.value is not None and row.value >= 0, row
    for store in ("shm://", "sqlite://", "redis://"):
        increment = _row(small_run, f"{store}, {SMALL:,} keys", "increment of an existing key")
        assert len(increment.ratios) == 3 and increment.of == "KeyedCounter"  # a ratio a round
        flush = _row(small_run, f"{store}, {SMALL:,} keys", "flush()")
        assert flush.value is not None and flush.value > 0
    for store in ("shm://", "sqlite://"):
        disk = _row(small_run, f"{store}, {SMALL:,} keys", "disk used")
        assert disk.value is not None and disk.value > 0
    redis_flush = _row(small_run, f"redis://, {SMALL:,} keys", "flush()")
    assert redis_flush.data["script_calls"] > 0  # Redis's own account of the flush


def test_counts_are_exact_in_every_store(small_run: list[Row]) -> None:
    exact = [r for r in small_run if r.target == "exact"]
    assert {r.name for r in exact} == {f"{s}, {SMALL:,} keys" for s in scale.STORES[1:]}
    assert all(r.verdict == MET for r in exact), exact


def test_a_store_that_failed_says_why_and_its_targets_are_inconclusive() -> None:
    results: dict[str, dict[int, dict[str, object]]] = {
        s: {n: {"error": "killed after 900 s"} for n in scale.SIZES} for s in scale.STORES
    }
    rows = scale.rows_of(results, list(scale.SIZES), {"redis://": "not measured: no server"})
    judged = [r for r in rows if r.target]
    assert judged and all(r.verdict == INCONCLUSIVE for r in judged)
    shm = _row(rows, f"shm://, {TOP:,} keys: disk used", "disk used")
    assert shm.reason == "not measured: killed after 900 s"
    redis = _row(rows, f"redis://, {TOP:,} keys: flush <= 3 s", "flush()")
    assert redis.reason == "not measured: no server"
    assert all(r.value is None for r in rows)


def test_the_command_prints_json_with_its_provenance() -> None:
    need_redis()
    run = json.loads(bench("--scale", "--max-keys", "1000", "--quick", "--json").stdout)
    assert run["command"] == "tallies bench --scale --max-keys 1000 --quick"
    assert run["date"] and run["machine"]["cpus"] and run["commit"]
    parts = {r["part"] for r in run["rows"]}
    for part in ("first increment", "one-key read", "flush()", "snapshot()", "disk used"):
        assert any(p.startswith(f"scale: {part}") for p in parts), (part, parts)
    assert {r["verdict"] for r in run["rows"] if r["target"]} <= {MET, MISSED, INCONCLUSIVE}


def test_max_keys_belongs_to_scale() -> None:
    done = bench("--max-keys", "1000", status=2)
    assert "--max-keys applies to --scale only" in done.stderr
