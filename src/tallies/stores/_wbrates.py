"""Rates in write-behind stores: ``store.rate()`` / ``store.keyed_rate()``.

Read ``writebehind.py``'s docstring first: rates ride on the same batches.

Buckets are wall-clock slots
----------------------------
A durable store is shared by processes on several machines, and they must
agree on bucket boundaries: the bucket of an event is its *wall-clock* slot,
``time.time_ns() // res_ns``, so every writer cuts time the same way, and a
count read on one machine sums buckets written on all of them.  What clock
skew does: an event is counted in the bucket of its writer's clock, so a
writer whose clock is off by ``d`` seconds puts its events ``d`` seconds
early or late (into a neighbouring bucket when ``d`` is below the
resolution; a reader counts buckets by its own clock, so events from a
writer whose clock runs ahead show up when the reader's clock reaches their
bucket).  A clock stepped backwards counts the next events in the newest
bucket the writer has seen (as ``RateCounter`` does in-process) until it
catches up.
Keep machines in NTP sync; skew never loses or doubles an event (``total()``
is exact), it only moves events between buckets.

Increments, flushes, reads
--------------------------
An increment adds to this process's pending delta of the current bucket (no
I/O).  A flush drains every rate's pending buckets into the batch
(``Batch.rates`` / ``Batch.keyed_rates``: name -> slot -> delta), which the
backend applies exactly once with the batch's counters (the seq protocol of
``writebehind.py``), adding each bucket's delta to the stored bucket and a
plain rate's total by their sum, and pruning the buckets that have left the
window (SQLite and PostgreSQL delete rows older than two windows; Redis
gives each bucket key an expiry a window after it left the window, at least
a minute).
``count()`` reads the stored buckets of the window and adds this process's
pending ones (cells, held deltas, batches the read does not include yet), as
``value()`` does for counters: read-your-writes, each batch counted once.

A rate's window and resolution are fixed by its first ``rate()`` in the
store (recorded by the backend); a name is a counter, a keyed counter, a
rate or a keyed rate, never two of them.  Durable rates have at most
:data:`MAX_BUCKETS` buckets (``window / resolution``).

``reset()`` of a plain rate takes its total and deletes its stored buckets
in one backend transaction (the write-behind's take); keyed rates have no
reset, as in-process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, SupportsIndex

from .._common import INT64_MAX, INT64_MIN, _Spec, most_common, to_int64
from .._common import add_into as add_buckets
from ._protocol import RateKind, RateQuery, RateSpec, Read, set_apart
from .base import check_key

if TYPE_CHECKING:
    from .writebehind import WriteBehind

__all__ = ["MAX_BUCKETS", "BufferedKeyedRate", "BufferedRate", "rate_spec"]

MAX_BUCKETS = 4096
"""The most buckets a rate of a write-behind store may have."""


def rate_spec(kind: RateKind, window: object, resolution: object) -> tuple[RateSpec, _Spec]:
    """Validate ``rate()`` arguments exactly as in-process (same messages)."""
    fname = "RateCounter" if kind == "rate" else "KeyedRateCounter"
    sp = _Spec(fname, window, resolution, None)
    if sp.nb > MAX_BUCKETS:
        raise ValueError(
            f"{fname}() window / resolution needs {sp.nb} buckets; a write-behind store's "
            f"rates have at most {MAX_BUCKETS}"
        )
    return RateSpec(kind, sp.window_ns, sp.res_ns), sp


def _add_checked(m: dict[int, int], slot: int, v: int, op: str, n: int, what: str) -> None:
    d = m.get(slot, 0) + v
    if not INT64_MIN <= d <= INT64_MAX:
        raise OverflowError(
            f"{op}({n}) would move this process's pending delta of {what} outside the "
            "signed 64-bit range; nothing was changed"
        )
    if d:
        m[slot] = d
    else:
        m.pop(slot, None)


#: unpickling a rate: ``writebehind._rebuild_rate`` (handed over by
#: writebehind.py, which imports this module: no import back)
rebuild_rate: Callable[..., Any] | None = None


class _RateBase:
    """What both kinds share: the spec, the clock, reads through the write-behind."""

    _kind: RateKind = "rate"

    def __init__(self, wb: WriteBehind, name: str, spec: RateSpec, sp: _Spec) -> None:
        self._init(wb, name, spec, sp)
        self._lock = threading.Lock()
        # None (the wall clock) or a callable returning integer nanoseconds
        # (an attribute, so that tests can drive it)
        self.clock: Callable[[], int] | None = None

    def _init(self, wb: WriteBehind, name: str, spec: RateSpec, sp: _Spec) -> None:
        self._wb = wb
        self._name = name
        self._spec = spec
        self._sp = sp
        self._closed = False

    def _now(self) -> int:
        clock = self.clock
        return time.time_ns() if clock is None else int(clock())

    @property
    def name(self) -> str:
        return self._name

    @property
    def window(self) -> float:
        return float(self._sp.window)

    @property
    def resolution(self) -> float:
        return float(self._sp.resolution)

    @property
    def buckets(self) -> int:
        return int(self._sp.nb)

    @property
    def spec(self) -> RateSpec:
        return self._spec

    def _closed_error(self) -> ValueError:
        what = "rate" if self._kind == "rate" else "keyed rate"
        return ValueError(f"{what} {self._name!r}: its store {self._wb.shown!r} is closed")

    def _close(self) -> None:
        with self._lock:
            self._closed = True

    def _forked(self) -> None:
        """In a forked child: the pending events are the parent's."""
        self._lock = threading.Lock()
        self._drain()

    def _drain(self) -> Any:
        raise NotImplementedError

    def _range(self, window: object, fname: str) -> tuple[float, int, int]:
        """(w, lo, hi): the buckets a read of ``window`` counts now."""
        w, w_ns = self._sp.width(window, fname)
        ns = self._now()
        cur = ns // self._spec.res_ns
        lo = (ns - w_ns) // self._spec.res_ns + 1
        lo = max(min(lo, cur), cur - self._sp.nb + 1)
        return w, lo, cur

    def __reduce__(self) -> tuple[Any, ...]:
        assert rebuild_rate is not None  # set when writebehind.py is imported
        return (
            rebuild_rate,
            (self._wb.url, self._name, self._kind, self.window, self.resolution),
        )


class BufferedRate(_RateBase):
    """``store.rate(name)`` of a write-behind store (``tallies.RateCounter``'s
    API): increments add to this process's pending bucket (no I/O); reads
    add the stored buckets (see the module docstring)."""

    _kind: RateKind = "rate"

    def __init__(self, wb: WriteBehind, name: str, spec: RateSpec, sp: _Spec) -> None:
        super().__init__(wb, name, spec, sp)
        self._pending: dict[int, int] = {}
        self._latest = INT64_MIN  # the newest bucket seen (a clock going back counts there)

    def _add(self, n: SupportsIndex, sign: int, op: str) -> None:
        v = to_int64(n, op)
        if self._wb.write_through:
            self._wb.rate_write_through(lambda: self._add_local(v, sign, op))
        else:
            self._add_local(v, sign, op)

    def _add_local(self, v: int, sign: int, op: str) -> None:
        slot = self._now() // self._spec.res_ns
        with self._lock:
            if self._closed:
                raise self._closed_error()
            slot = self._latest = max(slot, self._latest)
            _add_checked(self._pending, slot, sign * v, op, v, repr(self._name))

    def increment(self, n: SupportsIndex = 1) -> None:
        """Count ``n`` events now (this process's pending bucket; no I/O)."""
        self._add(n, 1, "increment")

    def decrement(self, n: SupportsIndex = 1) -> None:
        """Count ``-n`` events now."""
        self._add(n, -1, "decrement")

    def _drain(self) -> dict[int, int]:
        with self._lock:
            out, self._pending = self._pending, {}
            return out

    def _items(self) -> dict[int, int]:
        with self._lock:
            return dict(self._pending)

    def count(self, window: float | None = None) -> int:
        """Events in the current bucket and the buckets fully inside the last
        ``window`` seconds, every writer's (default and maximum: the window)."""
        _, lo, hi = self._range(window, "count")
        return self._wb.rate_read(self, lo, hi)[0]

    def per_second(self, window: float | None = None) -> float:
        """``count(window) / window``."""
        w, lo, hi = self._range(window, "per_second")
        return self._wb.rate_read(self, lo, hi)[0] / w

    def total(self) -> int:
        """Events since the rate was created or last reset, every writer's."""
        _, _, hi = self._range(None, "total")
        return self._wb.rate_read(self, hi + 1, hi)[1]

    def reset(self) -> int:
        """Take the total (every writer's) and empty every bucket, in one
        backend transaction; returns what the total was."""
        if self._closed:
            raise self._closed_error()
        return int(self._wb.rate_take(self))

    def __repr__(self) -> str:
        if self._closed:
            return f"BufferedRate({self._name!r}, closed)"
        return f"BufferedRate({self._name!r}, {self._sp.repr_args()})"


class BufferedKeyedRate(_RateBase):
    """``store.keyed_rate(name)`` of a write-behind store (str keys;
    ``tallies.KeyedRateCounter``'s API)."""

    _kind: RateKind = "keyed_rate"

    def __init__(self, wb: WriteBehind, name: str, spec: RateSpec, sp: _Spec) -> None:
        super().__init__(wb, name, spec, sp)
        self._pending: dict[str, dict[int, int]] = {}
        self._known: set[str] = set()

    def _add(self, key: object, n: SupportsIndex, sign: int, op: str) -> None:
        k = key if key in self._known else check_key(key)
        assert isinstance(k, str)
        v = to_int64(n, op)
        if self._wb.write_through:
            self._wb.rate_write_through(lambda: self._add_local(k, v, sign, op))
        else:
            self._add_local(k, v, sign, op)

    def _add_local(self, k: str, v: int, sign: int, op: str) -> None:
        slot = self._now() // self._spec.res_ns
        with self._lock:
            if self._closed:
                raise self._closed_error()
            m = self._pending.get(k)
            if m is None:
                m = self._pending[k] = {}
            try:
                _add_checked(m, slot, sign * v, op, v, f"{self._name!r}[{k!r}]")
            finally:
                if not m:
                    del self._pending[k]
            if len(self._known) < 65536:
                self._known.add(k)

    def increment(self, key: str, n: SupportsIndex = 1) -> None:
        """Count ``n`` events of ``key`` now (no I/O)."""
        self._add(key, n, 1, "increment")

    def decrement(self, key: str, n: SupportsIndex = 1) -> None:
        self._add(key, n, -1, "decrement")

    def _drain(self) -> dict[str, dict[int, int]]:
        with self._lock:
            out, self._pending = self._pending, {}
            self._known = set()
            return out

    def _items(self) -> dict[str, dict[int, int]]:
        with self._lock:
            return {k: dict(m) for k, m in self._pending.items()}

    def count(self, key: str, window: float | None = None) -> int:
        """``key``'s events in the window, every writer's."""
        k = check_key(key)
        _, lo, hi = self._range(window, "count")
        return self._wb.keyed_rate_read(self, lo, hi, k).get(k, 0)

    def per_second(self, key: str, window: float | None = None) -> float:
        k = check_key(key)
        w, lo, hi = self._range(window, "per_second")
        return self._wb.keyed_rate_read(self, lo, hi, k).get(k, 0) / w

    def snapshot(self, window: float | None = None) -> dict[str, int]:
        """Every key's events in the window (keys at 0 left out)."""
        _, lo, hi = self._range(window, "snapshot")
        return {k: v for k, v in self._wb.keyed_rate_read(self, lo, hi, None).items() if v}

    most_common = most_common

    def keys(self) -> list[str]:
        return list(self.snapshot())

    def __len__(self) -> int:
        return len(self.snapshot())

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())

    def __repr__(self) -> str:
        if self._closed:
            return f"BufferedKeyedRate({self._name!r}, closed)"
        return f"BufferedKeyedRate({self._name!r}, {self._sp.repr_args()})"


# ---- merging a read with this process's pending buckets ---------------------------


def sum_buckets(buckets: dict[int, int], lo: int, hi: int) -> int:
    return sum(v for s, v in buckets.items() if lo <= s <= hi)


def query(r: _RateBase, lo: int, hi: int, key: str | None = None) -> RateQuery:
    return RateQuery(r.name, r.spec, lo, hi, key)


def stored(read: Read, name: str) -> tuple[int, dict[str, dict[int, int]]]:
    return read.rates.get(name, (0, {}))


# ---- what a backend's flush of rates shares (SQLite, PostgreSQL) ------------------


def bucket_rows(batch: Any) -> list[tuple[str, int, str, int]]:
    """Every bucket delta of ``batch`` as ``(name, slot, key, delta)``, sorted
    (a plain rate's key is ``""``): the rows a backend adds, in its lock order."""
    rows = [(name, slot, "", d) for name, m in batch.rates.items() for slot, d in m.items()]
    for name, km in batch.keyed_rates.items():
        rows += [(name, slot, k, d) for k, m in km.items() for slot, d in m.items()]
    rows.sort()
    return rows


def total_rows(batch: Any) -> list[tuple[str, int]]:
    """``(name, delta of its total)`` of every plain rate of ``batch``, sorted."""
    return sorted((name, sum(m.values())) for name, m in batch.rates.items())


def prune_below(batch: Any) -> list[tuple[str, int]]:
    """``(name, slot)``: each written rate's buckets before ``slot`` (two
    windows before its newest bucket in the batch) may be deleted."""
    out: list[tuple[str, int]] = []
    for name in sorted(batch.rates.keys() | batch.keyed_rates.keys()):
        spec = batch.rate_specs.get(name)
        if spec is None:
            continue
        slots = list(batch.rates.get(name, {}))
        for m in batch.keyed_rates.get(name, {}).values():
            slots += list(m)
        out.append((name, max(slots) - 2 * spec.nb))
    return out


def overflow(bad: list[tuple[str, str | None]], where: str) -> Exception:
    """The CountOverflowError of a flush that would move rate buckets or
    totals (``bad``: ``(name, key or None)``) outside int64."""
    from .base import CountOverflowError

    bad = list(dict.fromkeys(bad))
    return CountOverflowError(
        f"{where}adding the pending delta would move rate {bad[0][0]!r} outside the signed "
        "64-bit range; nothing of this flush was applied",
        bad,
    )


# ---- what the write-behind calls (see its methods rate, rate_read, ...) -----------


def open_rate(
    wb: WriteBehind, name: str, kind: RateKind, window: object, resolution: object
) -> Any:
    """Create this process's object for rate ``name``, registering it in the
    backend (which keeps the first spec asked for)."""
    from .base import RatesUnsupportedError

    spec, sp = rate_spec(kind, window, resolution)
    have = wb._kinds.get(name)
    be = wb._be()
    if not hasattr(be, "register_rate"):
        raise RatesUnsupportedError(f"{wb.shown}: this store's backend does not support rates")
    if have is None:
        have = be.kind_of(name)
    if have is not None:
        what = "a counter" if have == "counter" else "a keyed counter"
        raise ValueError(f"{name!r} is {what} in {wb.shown}")
    stored: RateSpec = be.register_rate(name, spec)
    if stored != spec:
        raise _mismatch(wb, name, stored, spec)
    with wb._state:
        r = wb._rates.get(name)
        if r is None:
            if kind == "keyed_rate":
                r = BufferedKeyedRate(wb, name, spec, sp)
            elif CBufferedRate is not None and not wb.write_through:
                r = CBufferedRate(spec.window_ns, spec.res_ns)
                r._init(wb, name, spec, sp)
            else:
                r = BufferedRate(wb, name, spec, sp)
            wb._rates[name] = r
    return r


def _what(kind: RateKind) -> str:
    return "a rate" if kind == "rate" else "a keyed rate"


def _mismatch(wb: WriteBehind, name: str, have: RateSpec, want: RateSpec) -> ValueError:
    if have.kind != want.kind:
        return ValueError(f"{name!r} is {_what(have.kind)} in {wb.shown}")
    return ValueError(
        f"{name!r} is a rate with window={have.window_ns / 1e9!r}, "
        f"resolution={have.res_ns / 1e9!r} in {wb.shown}, not window="
        f"{want.window_ns / 1e9!r}, resolution={want.res_ns / 1e9!r}"
    )


def check_same(wb: WriteBehind, r: Any, kind: RateKind, window: object, resolution: object) -> Any:
    """``rate()`` of a name already open here: the same kind and spec, or ValueError."""
    if r._kind != kind:
        raise ValueError(f"{r.name!r} is {_what(r._kind)} in {wb.shown}")
    spec, _ = rate_spec(kind, window, resolution)
    if spec != r.spec:
        raise _mismatch(wb, r.name, r.spec, spec)
    return r


def drain(
    wb: WriteBehind,
) -> tuple[dict[str, dict[int, int]], dict[str, dict[str, dict[int, int]]], dict[str, RateSpec]]:
    """Every rate's pending buckets plus the held ones, for a batch (the
    caller holds the state lock)."""
    rates: dict[str, dict[int, int]] = {}
    keyed: dict[str, dict[str, dict[int, int]]] = {}
    specs: dict[str, RateSpec] = {}
    for name, r in wb._rates.items():
        if r._kind == "rate":
            m = r._drain()
            held = wb._held_r.pop(name, None)
            if held:
                add_buckets(m, held)
            if m:
                rates[name] = m
                specs[name] = r.spec
        else:
            km = r._drain()
            for k, b in wb._held_kr.pop(name, {}).items():
                add_buckets(km.setdefault(k, {}), b)
            km = {k: b for k, b in km.items() if b}
            if km:
                keyed[name] = km
                specs[name] = r.spec
    return rates, keyed, specs


def hold(wb: WriteBehind, batch: Any, rest: Any, bad: set[tuple[str, str | None]]) -> None:
    """A CountOverflowError named ``bad``: hold those rate buckets (still
    counted by reads, sent again by every flush); the rest goes on (caller
    holds the state lock)."""

    def held(name: str, key: str | None, buckets: dict[int, int]) -> None:
        if key is None:
            add_buckets(wb._held_r.setdefault(name, {}), buckets)
        else:
            add_buckets(wb._held_kr.setdefault(name, {}).setdefault(key, {}), buckets)

    rest.rates, rest.keyed_rates = set_apart(bad, batch.rates, batch.keyed_rates, held)
    rest.rate_specs = batch.rate_specs


def hold_all(wb: WriteBehind, batch: Any) -> None:
    """A take that did not happen: its pending part is pending again."""
    for name, m in batch.rates.items():
        add_buckets(wb._held_r.setdefault(name, {}), m)


def take_pending(wb: WriteBehind, batch: Any, name: str) -> None:
    """A reset of rate ``name``: this process's pending buckets go with the
    take (returned, not applied; caller holds the state lock)."""
    r = wb._rates.get(name)
    m = r._drain() if r is not None else {}
    add_buckets(m, wb._held_r.pop(name, {}))
    if m:
        batch.rates[name] = m
    if r is not None:
        batch.rate_specs[name] = r.spec


def pending_plain(wb: WriteBehind, rate: Any, seq: int) -> dict[int, int]:
    """This process's buckets of ``rate`` that a read at recorded seq ``seq``
    does not include (caller holds the state lock)."""
    out: dict[int, int] = rate._items()
    add_buckets(out, wb._held_r.get(rate.name, {}))
    for b in wb._unseen(seq):
        add_buckets(out, b.rates.get(rate.name, {}))
    return out


def pending_keyed(wb: WriteBehind, rate: Any, seq: int) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = rate._items()
    for k, b in wb._held_kr.get(rate.name, {}).items():
        add_buckets(out.setdefault(k, {}), b)
    for batch in wb._unseen(seq):
        for k, b in batch.keyed_rates.get(rate.name, {}).items():
            add_buckets(out.setdefault(k, {}), b)
    return out


def stored_rate_specs(wb: WriteBehind) -> dict[str, RateSpec]:
    be = wb._be()
    if not hasattr(be, "rate_specs"):
        return {}
    specs: dict[str, RateSpec] = be.rate_specs()
    return specs


def snapshot(wb: WriteBehind, snap: Any) -> None:
    """Add the "rates" / "keyed_rates" sections (every rate in the store)."""
    from ._rates import snapshot_rates

    specs = stored_rate_specs(wb)
    rates: dict[str, Any] = {}
    for name in sorted(set(specs) | set(wb._rates)):
        r = wb._rates.get(name)
        if r is None:
            sp = specs[name]
            r = wb.rate(name, sp.kind, sp.window_ns / 1e9, sp.res_ns / 1e9)
        rates[name] = r
    snapshot_rates(snap, rates)


# ---- the C rate (the extension's BufferedRate: increment in C) ----------------------


def _install() -> Any:
    """The extension's rate type with the Python side of BufferedRate on it,
    or None without the extension."""
    from ._limiter import _native

    native = _native()
    if native is None:
        return None
    t = native.BufferedRate
    skip = {"__init__", "__dict__", "__weakref__", "__module__", "__doc__", "__slots__"}
    skip |= {"increment", "decrement", "_add", "_add_local", "_drain", "_items", "_close"}
    skip |= {"_forked", "_now"}
    for klass in (_RateBase, BufferedRate):
        for attr, value in klass.__dict__.items():
            if attr not in skip:
                setattr(t, attr, value)

    def _close(self: Any) -> None:
        self._closed = True
        self._close_with(str(self._closed_error()))

    def _forked(self: Any) -> None:
        self._restart()

    def _now(self: Any) -> int:
        clock = self.clock
        return time.time_ns() if clock is None else int(clock())

    t._close, t._forked, t._now = _close, _forked, _now
    return t


CBufferedRate = _install()
