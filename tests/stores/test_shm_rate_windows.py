"""shm:// rates: every accepted (window, resolution) counts exactly its window; a refused one
changes nothing; a rate left unusable by an older tallies spoils only itself.

Before, one ``st.rate("fast", window=2e-6, resolution=1.4e-9)`` registered a
name whose stored bucket count (from the floats) disagreed with its bucket
width (rounded nanoseconds), and every later ``snapshot()`` of the whole
segment raised CorruptSegmentError, after reopening too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from _rates_support import RateModel, ns, window_pairs
from _shm_support import new_url
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tallies
from tallies.stores import CapacityError, CorruptSegmentError


class _DrivenNs:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


def _bytes(url: str) -> bytes:
    with tallies.open(url) as s:
        return Path(s.path).read_bytes()  # type: ignore[attr-defined]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=window_pairs(),
    cap=st.sampled_from([64, 4096, 1_000_002]),
    start_ms=st.integers(0, 10**9),
    events=st.lists(st.tuples(st.floats(0.0, 1.5), st.integers(1, 9)), min_size=1, max_size=10),
    reads=st.lists(st.tuples(st.floats(0.0, 2.5), st.floats(0.0, 1.0)), min_size=1, max_size=6),
)
def test_every_accepted_shm_rate_counts_exactly_its_window(
    pair: tuple[float, float],
    cap: int,
    start_ms: int,
    events: list[tuple[float, int]],
    reads: list[tuple[float, float]],
) -> None:
    window, resolution = pair
    url = new_url(f"?names=4&keys=4&slabs=1&buckets={cap}")
    try:
        with tallies.open(url) as s:
            s.counter("requests").increment(5)
            before = Path(s.path).read_bytes()  # type: ignore[attr-defined]
            snap = s.snapshot()
            try:
                r = s.rate("fast", window=window, resolution=resolution)
            except (ValueError, CapacityError) as exc:
                event(f"refused: {type(exc).__name__}")
                # refused: nothing registered, not one byte of the segment changed
                assert Path(s.path).read_bytes() == before  # type: ignore[attr-defined]
                assert s.snapshot() == snap and s.names() == ["requests"]
                W, R = ns(window), ns(resolution)
                if isinstance(exc, CapacityError):
                    assert cap < -(-W // R) + 2
                return
            event("accepted")
            model = RateModel(window, resolution)
            assert r.buckets == model.nb and (r.window, r.resolution) == (
                model.W / 10**9,
                model.R / 10**9,
            )
            assert s.snapshot()["rates"]["fast"]["count"] == 0  # the segment stays readable
            clock = _DrivenNs(start_ms * 10**6)
            r._ring.now = clock
            ops = sorted(
                [(clock.ns + round(f * model.W), "inc", n) for f, n in events]
                + [(clock.ns + round(f * model.W), "read", g) for f, g in reads]
            )
            for at, op, arg in ops:
                clock.ns = at
                if op == "inc":
                    r.increment(int(arg))
                    model.add_ns(at, int(arg))
                else:
                    w = max(arg * window, 1e-9)
                    assert r.count(w) == model.count_ns(at, ns(w)), (at, w)
                    assert r.count() == model.count_ns(at, model.W)
        with tallies.open(url) as s:  # and after reopening
            assert s.rate("fast", window=window, resolution=resolution).buckets == model.nb
            assert set(s.snapshot()["rates"]) == {"fast"}
    finally:
        tallies.destroy(url.partition("?")[0])


def test_the_issue_cases_are_usable_and_the_segment_stays_readable() -> None:
    url = new_url("?slabs=1&buckets=1002000")
    try:
        with tallies.open(url) as s:
            s.counter("requests").increment(5)
            fast = s.rate("fast", window=2e-6, resolution=1.4e-9)
            assert (fast.window, fast.resolution, fast.buckets) == (2e-6, 1e-9, 2000)
            # 333,333,333,333,333 ns in buckets of 333,333,333 ns needs 1,000,001 buckets:
            # refused, registering nothing
            with pytest.raises(ValueError, match="needs 1000001 buckets; the limit is 1000000"):
                s.rate("daily", window=1e6 / 3, resolution=1 / 3)
            daily = s.rate("daily", window=1e6 / 3, resolution=1 / 2.9999)
            assert daily.buckets == 999_967
            snap = s.snapshot()
            assert snap["counters"] == {"requests": 5}
            assert set(snap["rates"]) == {"fast", "daily"}
        with tallies.open(url) as s:
            assert set(s.snapshot()["rates"]) == {"fast", "daily"}
            assert s.names() == ["daily", "fast", "requests"]  # sorted (docs/contract.md)
    finally:
        tallies.destroy(url.partition("?")[0])


def test_a_rate_bricked_by_an_older_tallies_spoils_only_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A segment written by the old rule (1,429 buckets of 1 ns for a 2,000 ns
    window): rate() names the rate in a clear error, snapshot() leaves it out
    with a warning and shows everything else."""
    url = new_url("?slabs=2")
    try:
        with tallies.open(url) as s:
            s.counter("requests").increment(5)
            s.rate("fast", window=2e-6, resolution=1e-9).increment()
            s.keyed_rate("status", 60, 1).increment("200")
            seg = s._seg  # type: ignore[attr-defined]
            idx = [n for n, _ in seg.names].index("fast")  # the segment's entry
            seg.c.store(seg.L.rmeta(idx), 1429)  # what the old float rule stored
        with tallies.open(url) as s:
            with caplog.at_level(logging.WARNING, logger="tallies.stores"):
                snap = s.snapshot()
            assert snap["counters"] == {"requests": 5}
            assert snap["keyed_rates"]["status"]["counts"] == {"200": 1}
            assert "rates" not in snap
            assert "the rate 'fast' was created by an older tallies" in caplog.text
            with pytest.raises(CorruptSegmentError) as info:
                s.rate("fast", window=2e-6, resolution=1e-9)
            msg = str(info.value)
            assert "'fast'" in msg and "1429 buckets of 1 ns" in msg and "destroy" in msg
            assert s.names() == ["fast", "requests", "status"]
    finally:
        tallies.destroy(url.partition("?")[0])


def test_a_ring_longer_than_needed_is_read_with_its_own_geometry() -> None:
    """The old rule also stored counts above ceil(window_ns / res_ns) (buckets of
    0.6e-9 s rounded up to 1 ns): such a ring covers the window, so it is used as
    it was laid out (before: CorruptSegmentError for the whole segment)."""
    url = new_url("?slabs=2")
    try:
        with tallies.open(url) as s:
            r = s.rate("r", window=60.0, resolution=1.0)
            seg = s._seg  # type: ignore[attr-defined]
            idx = s.names().index("r")
            # as if created with 61 buckets (the units: hand the extra one out too)
            seg.c.store(seg.L.rmeta(idx), 61)
            seg.c.store(272, seg.c.load(272) + 1)
            del r
        with tallies.open(url) as s:
            r = s.rate("r", window=60.0, resolution=1.0)
            assert r.buckets == 61
            r.increment(3)
            assert r.count() == 3 and s.snapshot()["rates"]["r"]["count"] == 3
    finally:
        tallies.destroy(url.partition("?")[0])


def test_refused_rates_leave_the_file_byte_for_byte_unchanged() -> None:
    url = new_url("?names=4&slabs=1&buckets=100")
    try:
        with tallies.open(url) as s:
            s.counter("a").increment()
            path = s.path  # type: ignore[attr-defined]
            before = Path(path).read_bytes()
            for args, exc in [
                ((2e-6, 1.4e-10), ValueError),  # below 1 ns
                ((100, 1e-5), ValueError),  # 10,000,000 buckets
                ((98.5, 1.0), CapacityError),  # 99 buckets + 2 units > 100
                ((60.0, "1"), TypeError),
            ]:
                with pytest.raises(exc):
                    s.rate("bad", *args)
                assert Path(path).read_bytes() == before, args
            assert s.names() == ["a"] and os.path.exists(path)
    finally:
        tallies.destroy(url.partition("?")[0])
