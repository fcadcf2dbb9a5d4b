"""The ``tallies`` console script: ``tallies demo``, ``show``, and what ``bench`` says.

The commands run for real in a subprocess (``python -m tallies``), with small
sizes.  Correctness is asserted (every count adds up; thread-safe counters lose
nothing).  The benchmarks themselves are tests/benchmarks/: they are not in the
package, and the installed ``tallies bench`` says where they are.
"""

from __future__ import annotations

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


def tallies_command(
    *args: str, env: dict[str, str] | None = None, status: int = 0
) -> subprocess.CompletedProcess[str]:
    """``python -m tallies ARGS`` in a subprocess; it must exit with ``status``."""
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
    assert done.returncode == status, done.stderr
    return done


def run_tallies(*args: str, env: dict[str, str] | None = None) -> str:
    return tallies_command(*args, env=env).stdout


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


@pytest.mark.parametrize("args", [[], ["--threads", "2,4", "--json"], ["--quick"]])
def test_the_installed_bench_says_where_the_benchmarks_are(args: list[str]) -> None:
    """The package holds no benchmark: ``tallies bench`` (any flags) is one line on
    stderr, exit 2, never a traceback."""
    done = tallies_command("bench", *args, status=2)
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("tallies bench: the benchmarks are not part of the installed")
    assert "benchmarks/ folder" in done.stderr and "./tallies bench" in done.stderr


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
        (["demo", "--frob"], "unrecognized arguments: --frob"),
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
    # a user's mistake: status 2, as in serve and watch (issue 24, 9)
    done = tallies_command("show", url, status=2)
    assert done.stderr.startswith("tallies show: ")
    assert "no segment" in done.stderr
    with pytest.raises(tallies.StoreNotFoundError):
        tallies.open(url, create=False)
