"""What travels between the write-behind and a durable scope's backend.

The flush path goes one way down: a store (``sqlite.py``, ``redis.py``)
opens a backend and hands it to the write-behind (``writebehind.py``), which
calls the backend with the types defined here.  A backend imports this module
and ``base.py`` (the errors), never the module that drives it.

:class:`Backend` is the contract a new durable scope implements; the
write-behind's design comment explains why each method must be atomic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .._common import INT64_MAX, INT64_MIN

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_BACKOFF",
    "PRUNE_AFTER",
    "Backend",
    "Batch",
    "Kind",
    "Query",
    "Read",
    "Target",
]

Kind = Literal["counter", "keyed"]

PRUNE_AFTER = 86400.0
"""Seconds after which a writer's bookkeeping entry may be pruned."""

MAX_BACKOFF = 30.0
"""The background flusher's longest wait between two failed attempts."""


@dataclass(frozen=True)
class Target:
    """What a reset takes: a counter, a keyed counter (key None) or one key."""

    kind: Kind
    name: str
    key: str | None = None


@dataclass
class Batch:
    """Deltas numbered by the writer's sequence.  ``names`` are names this
    writer has not yet seen registered (with their kind).  A key of a keyed
    counter may carry a delta of 0: it is new to the backend, which then
    lists it at 0.  ``take`` marks a reset: then the deltas are this
    process's pending part of the target, returned to the caller and not
    applied by the backend."""

    seq: int
    counters: dict[str, int] = field(default_factory=dict)
    keyed: dict[str, dict[str, int]] = field(default_factory=dict)
    names: dict[str, Kind] = field(default_factory=dict)
    take: Target | None = None

    def has_deltas(self) -> bool:
        return bool(self.counters) or any(self.keyed.values())

    def describe(self) -> str:
        n = len(self.counters) + sum(len(m) for m in self.keyed.values())
        return f"batch {self.seq} ({n} delta(s))"


@dataclass(frozen=True)
class Query:
    """What to read: counter names, keyed names (every key), single keys.
    ``None`` means every name of that kind."""

    counters: Sequence[str] | None = ()
    keyed: Sequence[str] | None = ()
    keys: Sequence[tuple[str, str]] = ()


@dataclass
class Read:
    """A consistent read: ``seq`` is the writer's recorded sequence number in
    the same snapshot as the values (0 when the writer has no entry)."""

    seq: int
    counters: dict[str, int] = field(default_factory=dict)
    keyed: dict[str, dict[str, int]] = field(default_factory=dict)


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
