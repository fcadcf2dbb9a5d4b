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
from types import ModuleType

import pytest
from _support import unavailable


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


class RateModel:
    """The documented semantics, event by event.

    An event at clock time t goes to bucket max(floor(t / r), newest bucket so
    far).  count(w) at time now counts the buckets j_min..cur where
    cur = floor(now / r), j_min = floor((now - w) / r) + 1 (the current bucket
    and the buckets fully inside (now - w, now]); a clock reading before the
    newest bucket reads at the same offset inside the newest bucket; at least
    the current bucket, at most `buckets` of them.
    """

    def __init__(self, window: float, resolution: float) -> None:
        self.window = window
        self.r = resolution
        self.nb = math.ceil(window / resolution)
        self.events: list[tuple[int, int, float]] = []  # (bucket, n, clock time)
        self.latest: int | None = None
        self.total = 0

    def add(self, t: float, n: int) -> None:
        slot = math.floor(t / self.r)
        if self.latest is None or slot > self.latest:
            self.latest = slot
        self.events.append((self.latest, n, t))
        self.total += n

    def reset(self, t: float) -> int:
        slot = math.floor(t / self.r)
        if self.latest is None or slot > self.latest:
            self.latest = slot
        old, self.total, self.events = self.total, 0, []
        return old

    def first(self, now: float, w: float) -> tuple[int, int]:
        cur = math.floor(now / self.r)
        j = math.floor((now - w) / self.r) + 1
        if self.latest is not None and cur < self.latest:
            j += self.latest - cur
            cur = self.latest
        return max(min(j, cur), cur - self.nb + 1), cur

    def count(self, now: float, w: float) -> int:
        j, cur = self.first(now, w)
        return sum(n for b, n, _ in self.events if j <= b <= cur)

    def sliding(self, now: float, w: float) -> int:
        """A true sliding window: events at times in (now - w, now]."""
        return sum(n for _, n, t in self.events if now - w < t <= now)

    def edge_bucket(self, now: float, w: float) -> int:
        """|events| of the one bucket that holds the window's old edge."""
        edge = math.floor((now - w) / self.r)
        return sum(abs(n) for b, n, _ in self.events if b == edge)
