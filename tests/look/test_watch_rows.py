"""What ``tallies watch`` computes for a refresh: rates from successive snapshots, sparklines."""

from __future__ import annotations

from tallies._export import read_series
from tallies.cli.watch import SPARK, History, rows, sparkline


def test_rate_comes_from_successive_snapshots_over_the_last_seconds() -> None:
    history = History()
    table = []
    for t in range(0, 11):  # 100 per second for 10 s
        snap = {"counters": {"jobs": 100 * t}, "keyed": {"kinds": {"a": 10 * t, "b": 3}}}
        table = list(rows(read_series(snap), history, float(t), top=1))
    jobs, kind_a, more = table
    assert (jobs.name, jobs.value, jobs.rate) == ("jobs", "1,000", "+100.0/s")
    assert (kind_a.key, kind_a.value, kind_a.rate) == ("a", "100", "+10.0/s")
    assert (more.key, more.value) == ("(1 more keys)", "3")


def test_first_refresh_has_no_rate_yet() -> None:
    (row,) = rows(read_series({"counters": {"x": 5}, "keyed": {}}), History(), 0.0, top=5)
    assert (row.value, row.rate) == ("5", "")


def test_sparkline_is_blank_before_the_data_and_follows_the_rate() -> None:
    points = [(float(t), 0 if t < 50 else (t - 50) * 100) for t in range(30, 61)]
    line = sparkline(points, now=60.0, width=20)
    assert len(line) == 20
    assert line[:9] == " " * 9  # the first 30 s of the minute: no samples yet
    assert set(line[10:16]) == {SPARK[0]}  # counting had not started
    assert line[-1] == SPARK[-1]  # the busiest 3 s


def test_rates_and_keyed_rates_show_count_and_per_second() -> None:
    snap = {
        "counters": {},
        "keyed": {},
        "rates": {
            "logins": {"window": 60.0, "resolution": 1.0, "count": 120, "per_second": 2.0,
                       "total": 9001},
        },
        "keyed_rates": {"errors": {"window": 10.0, "resolution": 1.0, "counts": {"db": 30}}},
    }  # fmt: skip
    rate, keyed = rows(read_series(snap), History(), 0.0, top=5)
    assert (rate.name, rate.key, rate.value, rate.rate, rate.spark) == (
        "logins", "(last 60 s)", "120", "2.00/s", "total 9,001"
    )  # fmt: skip
    assert (keyed.name, keyed.key, keyed.value, keyed.rate) == ("errors", "db", "30", "3.00/s")


def test_control_characters_in_names_are_escaped() -> None:
    (row,) = rows(read_series({"counters": {"a\x1b[2Jb": 1}}), History(), 0.0, top=5)
    assert row.name == "a\\x1b[2Jb"
