"""What travels between the write-behind and a durable scope's backend.

The flush path goes one way down: a store (``sqlite.py``, ``redis.py``)
opens a backend and hands it to the write-behind (``writebehind.py``), which
calls the backend with the types defined here.  A backend imports this module
and ``base.py`` (the errors), never the module that drives it.

:class:`Backend` is the contract a new durable scope implements; the
write-behind's design comment explains why each method must be atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from .._common import INT64_MAX, INT64_MIN

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_BACKOFF",
    "PRUNE_AFTER",
    "Backend",
    "Batch",
    "Grant",
    "Kind",
    "LimitSpec",
    "Query",
    "RateKind",
    "RateQuery",
    "RateSpec",
    "Read",
    "Target",
]

Kind = Literal["counter", "keyed"]
RateKind = Literal["rate", "keyed_rate"]

PRUNE_AFTER = 86400.0
"""Seconds after which a writer's bookkeeping entry may be pruned."""

MAX_BACKOFF = 30.0
"""The background flusher's longest wait between two failed attempts."""


@dataclass(frozen=True)
class Target:
    """What a reset takes: a counter, a keyed counter (key None) or one key."""

    kind: Kind | Literal["rate"]
    name: str
    key: str | None = None


@dataclass
class Batch:
    """Deltas numbered by the writer's sequence.  ``names`` are names this
    writer has not yet seen registered (with their kind).  A key of a keyed
    counter may carry a delta of 0: it is new to the backend, which then
    lists it at 0.  ``take`` marks a reset: then the deltas are this
    process's pending part of the target, returned to the caller and not
    applied by the backend.

    ``rates`` are bucket deltas of rates (name -> wall-clock slot -> delta;
    a plain rate's stored total grows by their sum) and ``keyed_rates`` of
    keyed rates (name -> key -> slot -> delta); ``rate_specs`` gives the
    spec of every rate name of the batch (the backend prunes buckets that
    have left the window with it).  A bucket delta is never 0."""

    seq: int
    counters: dict[str, int] = field(default_factory=dict)
    keyed: dict[str, dict[str, int]] = field(default_factory=dict)
    names: dict[str, Kind] = field(default_factory=dict)
    take: Target | None = None
    rates: dict[str, dict[int, int]] = field(default_factory=dict)
    keyed_rates: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    rate_specs: dict[str, RateSpec] = field(default_factory=dict)

    def has_deltas(self) -> bool:
        return (
            bool(self.counters)
            or any(self.keyed.values())
            or any(self.rates.values())
            or any(self.keyed_rates.values())
        )

    def describe(self) -> str:
        n = len(self.counters) + sum(len(m) for m in self.keyed.values())
        n += sum(len(m) for m in self.rates.values())
        n += sum(len(b) for m in self.keyed_rates.values() for b in m.values())
        return f"batch {self.seq} ({n} delta(s))"


@dataclass(frozen=True)
class RateSpec:
    """A rate as a backend stores it: its kind, and its window and bucket
    width in whole nanoseconds (``nb`` buckets of ``res_ns`` cover the
    window).  Buckets are wall-clock slots: ``time_ns() // res_ns``."""

    kind: RateKind
    window_ns: int
    res_ns: int

    @property
    def nb(self) -> int:
        return -(-self.window_ns // self.res_ns)

    def keep_ms(self, slot: int) -> int:
        """When a backend may drop bucket ``slot`` (Unix ms): a window after
        it left the window, at least a minute (writers' clocks may differ)."""
        end_ns = (slot + 1) * self.res_ns + self.window_ns
        return -(-(end_ns + max(self.window_ns, 60_000_000_000)) // 1_000_000)


@dataclass(frozen=True)
class RateQuery:
    """Read rate ``name``'s buckets ``lo..hi`` (slots); a keyed rate's every
    key, or only ``key``.  Plain rates also return their total."""

    name: str
    spec: RateSpec
    lo: int
    hi: int
    key: str | None = None


@dataclass(frozen=True)
class LimitSpec:
    """A limiter as a backend applies it: at most ``limit`` units in the
    ``buckets + 1`` slots of ``res_ns`` nanoseconds ending at the backend's
    current slot (slots are the backend clock's ``time_ns() // res_ns``;
    ``buckets * res_ns >= per``)."""

    name: str
    limit: int
    per_ns: int
    res_ns: int
    buckets: int


@dataclass
class Grant:
    """What the backend answers a limiter call: ``granted`` units reserved in
    bucket ``slot`` now (0: none), ``used`` the units in the window after it
    (granted ones included), ``oldest`` the oldest slot of the window that
    holds units (None when none does), and the backend clock's ``now_ns``."""

    granted: int
    used: int
    slot: int
    now_ns: int
    oldest: int | None


@dataclass(frozen=True)
class Query:
    """What to read: counter names, keyed names (every key), single keys.
    ``None`` means every name of that kind."""

    counters: Sequence[str] | None = ()
    keyed: Sequence[str] | None = ()
    keys: Sequence[tuple[str, str]] = ()
    rates: Sequence[RateQuery] = ()


@dataclass
class Read:
    """A consistent read: ``seq`` is the writer's recorded sequence number in
    the same snapshot as the values (0 when the writer has no entry)."""

    seq: int
    counters: dict[str, int] = field(default_factory=dict)
    keyed: dict[str, dict[str, int]] = field(default_factory=dict)
    # per rate query: (total or 0 for a keyed rate, {key or "": {slot: count}})
    rates: dict[str, tuple[int, dict[str, dict[int, int]]]] = field(default_factory=dict)


class Backend(Protocol):
    """What a durable scope implements.  Every method is atomic on the
    backend; any exception means "outcome unknown" except where stated."""

    def apply(self, writer_id: str, batch: Batch) -> None:
        """Atomically: if ``batch.seq`` <= the writer's recorded seq, only
        refresh its last-seen time (already applied); else register
        ``batch.names``, add every delta, record (seq, now), and prune writer
        entries not seen for more than PRUNE_AFTER seconds.  Two failures
        have a known outcome, NOTHING applied and the seq not recorded:
        :class:`~tallies.stores.base.CountOverflowError` when a stored count
        would leave int64, and :class:`~tallies.stores.base.KindClashError`
        when a name of the batch is registered with the other kind; each
        lists every offending ``(name, key)`` (key None for a whole name)."""

    def take(self, writer_id: str, seq: int, target: Target) -> int | dict[str, int]:
        """Atomically read and zero ``target`` (a keyed name: every key, which
        stay listed at 0) and record the seq; return what was stored (0 / {}
        when absent)."""

    def fence(self, writer_id: str, seq: int) -> bool:
        """Atomically: True if ``seq`` <= the recorded seq; else record it
        (so it can never apply later) and return False."""

    def read(self, writer_id: str, query: Query) -> Read:
        """The queried values and the writer's recorded seq, consistently."""

    def names(self) -> list[tuple[str, Kind]]:
        """Every registered name with its kind."""

    def kind_of(self, name: str) -> Kind | None:
        """The kind a name is registered with, or None."""

    def close(self) -> None:
        """Release connections (never called on a connection inherited
        across fork)."""


_V = TypeVar("_V")


def set_apart(
    bad: set[tuple[str, str | None]],
    plain: dict[str, _V],
    keyed: dict[str, dict[str, _V]],
    hold: Callable[[str, str | None, _V], None],
) -> tuple[dict[str, _V], dict[str, dict[str, _V]]]:
    """The deltas of a batch's ``plain`` and ``keyed`` maps that ``bad`` (a
    CountOverflowError's (name, key) pairs, key None for a plain name) does
    not name; each one it names goes to ``hold(name, key, delta)``."""
    rest: dict[str, _V] = {}
    for name, v in plain.items():
        if (name, None) in bad:
            hold(name, None, v)
        else:
            rest[name] = v
    rest_keyed: dict[str, dict[str, _V]] = {}
    for name, m in keyed.items():
        keep = {}
        for key, v in m.items():
            if (name, key) in bad:
                hold(name, key, v)
            else:
                keep[key] = v
        if keep:
            rest_keyed[name] = keep
    return rest, rest_keyed
