"""The ``tallies`` console script: ``tallies demo`` and ``tallies bench``.

The commands run for real in a subprocess (``python -m tallies``), with small
sizes.  Correctness is asserted (every count adds up; thread-safe counters lose
nothing); speed is not: the bench's verdicts are checked to exist, never to pass.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tallies
from tallies.cli import main
from tallies.cli.demo_keyed import _events_for

SRC = str(Path(tallies.__file__).resolve().parent.parent)
THREAD_SAFE = {
    "seed ThreadSafeCounter (Lock)",
    "tallies.Counter",
    "tallies.ShardedCounter",
}
UNSAFE = {"seed ThreadUnsafeCounter", "ValidatingUnsafeCounter"}
IMPLEMENTATIONS = [
    pytest.param({}, tallies.IMPLEMENTATION, id=tallies.IMPLEMENTATION),
    pytest.param({"TALLIES_PURE": "1"}, "python", id="pure"),
]


def run_tallies(*args: str, env: dict[str, str] | None = None) -> str:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, environ.get("PYTHONPATH")]))
    environ.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "tallies", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---------------------------------------------------------------- demo


@pytest.mark.parametrize(("env", "implementation"), IMPLEMENTATIONS)
def test_demo_json_rows_add_up_and_safe_counters_lose_nothing(
    env: dict[str, str], implementation: str
) -> None:
    rows: list[dict[str, Any]] = json.loads(
        run_tallies("demo", "--threads", "4", "--increments", "20000", "--json", env=env)
    )
    assert isinstance(rows, list)
    assert {row["name"] for row in rows} >= THREAD_SAFE | UNSAFE
    for row in rows:
        assert {"name", "expected", "final", "lost", "seconds"} <= row.keys()
        # Rows CPython makes slow without the GIL count fewer events (demo_keyed says so).
        assert row["expected"] == 4 * _events_for(row["name"], 20000)
        assert row["final"] == row["expected"] - row["lost"]
        assert 0 <= row["lost"] <= row["expected"]
        assert row["seconds"] > 0
        if row["name"] in THREAD_SAFE:
            assert row["lost"] == 0, row


@pytest.mark.parametrize(("env", "implementation"), IMPLEMENTATIONS)
def test_demo_text_names_interpreter_implementation_and_switch_interval(
    env: dict[str, str], implementation: str
) -> None:
    out = run_tallies("demo", "--threads", "2", "--increments", "2000", env=env)
    interpreter = f"{platform.python_implementation()} {platform.python_version()}"
    assert f"interpreter: {interpreter}" in out
    assert f"tallies implementation: {implementation} " in out
    for name in THREAD_SAFE | UNSAFE:
        assert name in out
    assert "sys.setswitchinterval(1e-06)" in out
    assert "restored" in out


def test_demo_can_keep_the_switch_interval() -> None:
    out = run_tallies("demo", "--threads", "2", "--increments", "2000", "--switch-interval", "0")
    assert "setswitchinterval" not in out


def test_demo_restores_the_switch_interval(capsys: pytest.CaptureFixture[str]) -> None:
    before = sys.getswitchinterval()
    assert main(["demo", "--threads", "2", "--increments", "2000", "--json"]) == 0
    assert sys.getswitchinterval() == before
    rows = json.loads(capsys.readouterr().out)
    assert [row for row in rows if row["name"] in THREAD_SAFE and row["lost"] != 0] == []


# ---------------------------------------------------------------- bench


def test_bench_quick_json_has_numbers_and_a_verdict_per_target() -> None:
    report: dict[str, Any] = json.loads(run_tallies("bench", "--quick", "--json"))
    assert report["quick"] is True
    assert report["implementation"] == tallies.IMPLEMENTATION

    single = {row["name"]: row for row in report["single_thread"]["rows"]}
    for name in ("floor: [].clear()", "tallies.Counter", "tallies.ShardedCounter"):
        assert single[name]["ns"] > 0
        assert single[name]["ratio_to_floor"] > 0
    assert single["seed ThreadSafeCounter (Lock)"]["ns"] > 0
    assert single["itertools.count"]["ns"] > 0
    peers = {
        "cereggii": ["cereggii AtomicInt64 +=", "cereggii AtomicInt64.increment_and_get"],
        "atomicx": ["atomicx AtomicInt.inc"],
        "fastcounter": ["fastcounter FastReadCounter", "fastcounter FastWriteCounter"],
        "prometheus_client": ["prometheus_client Counter.inc"],
    }
    for module, names in peers.items():
        installed = importlib.util.find_spec(module) is not None
        for name in names:
            row = single[name]
            if installed:
                assert row["status"] == "ok", row
                assert row["ns"] > 0
            else:
                assert row["status"].startswith("not installed")
                assert row["ns"] is None

    workload = report["workload"]
    total = workload["threads"] * workload["increments_per_thread"]
    measured = [row for row in workload["rows"] if row["seconds"] is not None]
    assert {row["name"] for row in measured} >= THREAD_SAFE
    for row in measured:
        assert row["seconds"] > 0
        assert row["one_thread_seconds"] > 0
        assert row["ratio_to_one_thread"] > 0
        assert row["final"] == total, row
        assert row["exact"] is True

    assert report["sizes"]["Counter"] > 0
    assert report["sizes"]["ShardedCounter"] > 0

    keyed = [t for t in report["targets"] if t["name"].startswith("KeyedCounter ")]
    targets = [
        t for t in report["targets"] if not t["name"].startswith(("KeyedCounter ", "rates: "))
    ]
    assert len(targets) == 8
    assert len(keyed) >= 4
    for target in keyed:
        assert target["verdict"] in {"PASS", "FAIL"}, target
        assert "target" in target["detail"]
    assert all(row.get("verdict") != "WRONG RESULT" for row in report["keyed"]["rows"])
    cereggii = importlib.util.find_spec("cereggii") is not None
    for target in targets:
        if "cereggii" in target["name"] and not cereggii:
            assert target["verdict"] == "SKIP"
        else:
            assert target["verdict"] in {"PASS", "FAIL"}, target
            assert target["measured"] > 0


def test_bench_quick_text_lists_every_part() -> None:
    out = run_tallies("bench", "--quick")
    for heading in ("Single thread", "Seed workload", "Sizes", "KeyedCounter", "Targets"):
        assert heading in out
    assert out.count("PASS") + out.count("FAIL") + out.count("SKIP") >= 8


# ---------------------------------------------------------------- usage


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["frob"], "invalid choice: 'frob'"),
        (["demo", "--threads", "0"], "argument --threads: expected a positive integer, not '0'"),
        (["demo", "--increments", "many"], "argument --increments: expected a positive integer"),
        (
            ["demo", "--switch-interval", "-1"],
            "argument --switch-interval: expected a non-negative",
        ),
        (["bench", "--threads", "0"], "argument --threads: expected thread counts from 1"),
        (["bench", "--threads", "2,x"], "such as 2,4,8, not '2,x'"),
        (["bench", "--threads", "--rounds", "0"], "argument --rounds: expected a positive"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tallies {tallies.__version__}"


def test_show_prints_every_counter_and_key_of_a_segment(shm_url: str) -> None:
    with tallies.open(shm_url) as store:
        store.counter("requests").increment(12)
        status = store.keyed("status")
        status.increment("200", 10)
        status.increment("404", 2)
    table = run_tallies("show", shm_url)
    assert table.splitlines()[0] == shm_url
    rows = [line.split() for line in table.splitlines()[2:]]
    assert rows == [["requests", "12"], ["status", "200", "10"], ["status", "404", "2"]]
    data = json.loads(run_tallies("show", shm_url, "--json"))
    assert data["counters"] == {"requests": 12}
    assert data["keyed"] == {"status": {"200": 10, "404": 2}}


def test_show_of_a_missing_segment_is_a_clear_error_and_creates_nothing() -> None:
    url = f"shm://tallies-test-missing-{os.getpid()}"
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "tallies", "show", url],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2  # a user's mistake, as in serve and watch (issue 24, 9)
    assert done.stderr.startswith("tallies show: ")
    assert "no segment" in done.stderr
    with pytest.raises(tallies.StoreNotFoundError):
        tallies.open(url, create=False)


def test_bench_processes_quick_json_counts_exactly() -> None:
    report = json.loads(run_tallies("bench", "--processes", "--quick", "--json"))
    assert report["shm_total"] == report["shm_expected"]
    assert report["shm_ns"] > 0 and report["core_ns"] > 0
    assert report["lone_s"] > 0 and all(t > 0 for t in report["pair_s"])


def test_rounds_without_threads_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--rounds", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "tallies bench: --rounds applies to --threads only\n"
    assert captured.out == ""
