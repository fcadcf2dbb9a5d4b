"""``./tallies bench``: the whole report in one go, its JSON, its usage errors.

The report runs for real in a subprocess (``python -m benchmarks``, which
``./tallies bench`` runs), with small sizes.  Correctness is asserted (every
count adds up); speed is not: the verdicts are checked to exist, never to pass.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
from _bench_support import bench

import tallies
from benchmarks.__main__ import main

THREAD_SAFE = {"seed ThreadSafeCounter (Lock)", "tallies.Counter", "tallies.ShardedCounter"}
PEERS = {
    "cereggii": ["cereggii AtomicInt64 +=", "cereggii AtomicInt64.increment_and_get"],
    "atomicx": ["atomicx AtomicInt.inc"],
    "fastcounter": ["fastcounter FastReadCounter", "fastcounter FastWriteCounter"],
    "prometheus_client": ["prometheus_client Counter.inc"],
}


def test_quick_json_has_the_run_facts_numbers_and_a_verdict_per_target() -> None:
    report: dict[str, Any] = json.loads(bench("--quick", "--json").stdout)
    assert report["quick"] is True
    assert report["tallies"]["implementation"] == tallies.IMPLEMENTATION
    assert {"date", "machine", "commit", "python"} <= report.keys()
    assert report["machine"]["cpus"] >= 1 and report["python"]["version"]
    rows = report["rows"]

    single = {r["name"]: r for r in rows if r["part"] == "single thread: ns per call"}
    for name in ("floor: [].clear()", *THREAD_SAFE, "itertools.count"):
        assert single[name]["value"] > 0
    for name in THREAD_SAFE:
        assert len(single[name]["ratios"]) == 3  # one ratio per round
        assert single[name]["ratio"] > 0
    for module, names in PEERS.items():
        installed = importlib.util.find_spec(module) is not None
        for name in names:
            if installed:
                assert single[name]["value"] > 0, single[name]
            else:
                assert single[name]["value"] is None
                assert single[name]["detail"].endswith(f"not installed ({module})")

    workload = [r for r in rows if r["part"].startswith("seed workload")]
    measured = [r for r in workload if r["unit"] == "s" and r["value"] is not None]
    assert {r["name"] for r in measured} >= THREAD_SAFE
    for r in measured:
        assert r["data"]["finals"] == [100_000] * 3, r  # 10 threads x 10,000, 3 runs, exact
        assert r["ratios"][0] > 0

    sizes = {r["name"]: r for r in rows if r["part"].startswith("sizes")}
    assert sizes["Counter()"]["value"] > 0 and sizes["ShardedCounter()"]["value"] > 0

    judged = [r for r in rows if r["target"]]
    cereggii = importlib.util.find_spec("cereggii") is not None
    for r in judged:
        if "cereggii" in r["name"] and not cereggii:
            assert (r["verdict"], r["reason"]) == ("inconclusive", "cereggii not installed")
        else:
            assert r["verdict"] in {"met", "missed"}, r
    parts = {r["part"] for r in judged}
    assert {"KeyedCounter, 1 thread: ns per op", "rates: 1 thread, ns per op"} <= parts
    assert len([r for r in judged if r["part"].startswith("KeyedCounter")]) >= 4
    assert all(r["reason"] != "WRONG RESULT" for r in rows)


def test_quick_text_lists_every_part_and_ends_with_the_targets() -> None:
    out = bench("--quick").stdout
    for heading in (
        "single thread",
        "seed workload",
        "sizes",
        "KeyedCounter",
        "rates",
        "Targets (checked against this run)",
    ):
        assert heading in out
    assert "interpreter: " in out and "commit " in out
    targets = out[out.index("Targets (checked against this run)") :].splitlines()[1:]
    assert len(targets) >= 8
    assert all(line.split()[0] in {"met", "missed", "inconclusive"} for line in targets)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "0"], "argument --threads: expected thread counts from 1"),
        (["--threads", "2,x"], "such as 2,4,8, not '2,x'"),
        (["--threads", "--rounds", "0"], "argument --rounds: expected a positive"),
        (["--frob"], "unrecognized arguments: --frob"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "tallies bench: error:" in err


def test_rounds_without_threads_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rounds", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "tallies bench: --rounds applies to --threads only\n"
    assert captured.out == ""


def test_part_without_stores_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--part", "redis-wait"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "tallies bench: --part applies to --stores only\n"
    assert captured.out == ""


def test_stores_runs_only_the_parts_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import stores
    from benchmarks.harness import Row

    ran: list[str] = []

    def fake(name: str) -> Any:
        def run(quick: bool) -> list[Row]:
            ran.append(name)
            return [Row(name, "a row", 1.0, "ms")]

        return run

    monkeypatch.setattr(
        stores, "PARTS", [stores.StorePart(p.name, fake(p.name)) for p in stores.PARTS]
    )
    assert main(["--stores", "--part", "redis-wait", "--json"]) == 0
    assert ran == ["redis-wait"]
    assert '"command": "tallies bench --stores --part redis-wait"' in capsys.readouterr().out
