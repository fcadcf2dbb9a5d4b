"""What the rate tests share: the implementation fixture, a driven clock, the exact model.

``rates_impl`` is the module under test, ``tallies._tallies`` (the C core)
then ``tallies._pure.rate`` (the fallback); tests build ``impl.RateCounter``
and ``impl.KeyedRateCounter``.  ``RateModel`` is the specification of what
``count(w)`` returns, written from the README's definition (not from the
ring's marks): a list of (bucket, n, time) events.
"""

from __future__ import annotations

import importlib
import math
from fractions import Fraction
from types import ModuleType

import pytest
from _support import unavailable
from hypothesis import strategies as st


def _c_rates() -> ModuleType:
    try:
        return importlib.import_module("tallies._tallies")
    except ImportError as exc:
        reason = f"the C core tallies._tallies is not importable: {exc!r}"
        unavailable(reason)


@pytest.fixture(params=["c", "pure"])
def rates_impl(request: pytest.FixtureRequest) -> ModuleType:
    """The C core, then the pure fallback."""
    return _c_rates() if request.param == "c" else importlib.import_module("tallies._pure.rate")


class Clock:
    """A clock the test drives: ``clock.t`` is what it returns."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ns(seconds: float) -> int:
    """Seconds in whole nanoseconds, rounded half up from the float's exact
    value (the README's rule), computed with exact fractions."""
    return math.floor(Fraction(seconds) * 10**9 + Fraction(1, 2))


class RateModel:
    """The documented semantics, event by event, in whole nanoseconds.

    Window and resolution are rounded to whole nanoseconds (W, R) once, and a
    clock reading t to N = ns(t).  An event at N goes to bucket
    max(N // R, newest bucket so far).  count(w) at N counts the buckets
    j_min..cur where cur = N // R, j_min = (N - ns(w)) // R + 1 (the current
    bucket and the buckets fully inside (N - w, N]); a clock reading before
    the newest bucket reads at the same offset inside the newest bucket; at
    least the current bucket.  ``nb`` = ceil(W / R) is the ring size the
    implementation may use; the model never needs it to cut a window (that
    would be a window the ring does not cover), it is only reported.
    """

    def __init__(self, window: float, resolution: float) -> None:
        self.window = window
        self.W = ns(window)
        self.R = ns(resolution)
        self.nb = -(-self.W // self.R)
        self.events: list[tuple[int, int, int]] = []  # (bucket, n, clock ns)
        self.latest: int | None = None
        self.total = 0

    def add(self, t: float, n: int) -> None:
        self.add_ns(ns(t), n)

    def add_ns(self, at: int, n: int) -> None:
        slot = at // self.R
        if self.latest is None or slot > self.latest:
            self.latest = slot
        self.events.append((self.latest, n, at))
        self.total += n

    def reset(self, t: float) -> int:
        slot = ns(t) // self.R
        if self.latest is None or slot > self.latest:
            self.latest = slot
        old, self.total, self.events = self.total, 0, []
        return old

    def first_ns(self, at: int, w_ns: int) -> tuple[int, int]:
        cur = at // self.R
        j = (at - w_ns) // self.R + 1
        if self.latest is not None and cur < self.latest:
            j += self.latest - cur
            cur = self.latest
        return min(j, cur), cur

    def first(self, now: float, w: float) -> tuple[int, int]:
        return self.first_ns(ns(now), ns(w))

    def count(self, now: float, w: float) -> int:
        return self.count_ns(ns(now), ns(w))

    def count_ns(self, at: int, w_ns: int) -> int:
        j, cur = self.first_ns(at, w_ns)
        return sum(n for b, n, _ in self.events if j <= b <= cur)

    def sliding(self, now: float, w: float) -> int:
        """A true sliding window: events at times in (now - w, now]."""
        n = ns(now)
        return sum(k for _, k, at in self.events if n - ns(w) < at <= n)

    def edge_bucket(self, now: float, w: float) -> int:
        """|events| of the one bucket that holds the window's old edge."""
        edge = (ns(now) - ns(w)) // self.R
        return sum(abs(k) for b, k, _ in self.events if b == edge)


#: Windows for the (window, resolution) property tests: any float in range,
#: thirds, and the cases of issue 26.
WINDOWS = st.one_of(
    st.floats(1e-9, 1e9),
    st.integers(1, 3 * 10**9).map(lambda k: k / 3),
    st.sampled_from([2e-6, 1e-3, 1e6 / 3, 60.0, 1.0]),
)


@st.composite
def window_pairs(draw: st.DrawFn) -> tuple[float, float]:
    """(window, resolution): bucket counts from 1 to past the 1,000,000 cap,
    free floats (some below 1 ns, some above the window), and odd fixed widths."""
    window = draw(WINDOWS)
    how = draw(st.sampled_from(["ratio", "free", "fixed"]))
    if how == "ratio":
        resolution = window / draw(st.floats(1.0, 3e6))
    elif how == "free":
        resolution = draw(st.floats(5e-10, 1e3))
    else:
        resolution = draw(st.sampled_from([1.4e-9, 1e-9, 1 / 3, 0.6e-9, 1.5e-9]))
    return window, resolution
