"""What the C core and the pure fallback share in Python: one copy of each rule.

The int64 range and the conversion of amounts (``to_int64``: the messages of
``_c/_pyargs.h`` word for word), what a subclass instance pickles besides its
counts (``instance_state``, as ``_c/counter.c``'s ``subclass_state`` does),
the rate settings (``_Spec``: window, resolution, buckets and clock,
validated as ``_c/rate.c`` validates them; ``shm://`` rates use it for their
rings in shared memory) and ``KeyedRateCounter.most_common``, which
``tallies.rates`` installs on the C type and the fallback's class alike.
``tallies._pure`` is only the fallback; both paths import these from here.
"""

from __future__ import annotations

import contextlib
import copyreg
import math
import operator
import time
from collections.abc import Callable, Mapping
from itertools import repeat
from operator import itemgetter
from typing import Any, SupportsIndex, TypeVar

__all__ = [
    "COARSE_GRANULARITY_NS",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_BUCKETS",
    "NONE",
    "add_into",
    "instance_state",
    "most_common",
    "sum_into",
    "to_int64",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def to_int64(obj: object, fname: str) -> int:
    """Convert an object with ``__index__`` to an int in the int64 range."""
    if isinstance(obj, int) or hasattr(type(obj), "__index__"):
        v = operator.index(obj)  # type: ignore[arg-type]
    else:
        raise TypeError(f"{fname}() expects an integer, not {type(obj).__name__!r}")
    if not INT64_MIN <= v <= INT64_MAX:
        raise OverflowError(f"{fname}() argument {obj!r} is outside the signed 64-bit range")
    return v


def instance_state(obj: object, own: frozenset[str] = frozenset()) -> Any:
    """What pickle and copy restore on a subclass instance besides its counts:
    its ``__dict__`` and the values of its ``__slots__`` (the names
    ``copyreg._slotnames`` gives, less the implementation's own slots ``own``),
    in the state format they understand: the dict, or ``(dict or None, {slot:
    value})``; None when there is nothing.  The C core does the same
    (``subclass_state`` in ``_c/counter.c``)."""
    state = getattr(obj, "__dict__", None) or None
    slots = {}
    for name in copyreg._slotnames(type(obj)):  # type: ignore[attr-defined]
        if name not in own:
            with contextlib.suppress(AttributeError):  # a slot never set: skipped
                slots[name] = getattr(obj, name)
    return (state, slots) if slots else state


# ---- rates ---------------------------------------------------------------------

MAX_BUCKETS = 1_000_000
MAX_WINDOW = 1e9
MIN_RESOLUTION = 1e-9
NONE = INT64_MIN  # "no slot"

_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", None)
COARSE_GRANULARITY_NS = -1
if _COARSE is not None:
    try:
        _res = time.clock_getres(_COARSE)
        if _res < 1:
            COARSE_GRANULARITY_NS = round(_res * 1e9)
    except OSError:  # pragma: no cover
        _COARSE = None


def _seconds(obj: object, fname: str, what: str) -> float:
    if isinstance(obj, (str, bytes, complex)) or obj is None:
        raise TypeError(f"{fname}() {what} must be a number of seconds, not {type(obj).__name__!r}")
    try:
        return float(obj)  # type: ignore[arg-type]
    except OverflowError:
        return math.inf
    except TypeError:
        if hasattr(type(obj), "__index__"):
            try:
                return float(obj.__index__())  # type: ignore[attr-defined]
            except OverflowError:
                return math.inf
        raise TypeError(
            f"{fname}() {what} must be a number of seconds, not {type(obj).__name__!r}"
        ) from None


def most_common(
    self: Any, n: SupportsIndex | None = None, window: float | None = None
) -> list[tuple[Any, int]]:
    """The ``n`` keys with the most events in the window (all when ``n`` is None),
    highest first; ties keep first-counted order; keys at 0 are left out."""
    k = None
    if n is not None:
        if isinstance(n, bool) or not hasattr(type(n), "__index__"):
            raise TypeError(f"most_common() n must be an integer or None, not {type(n).__name__!r}")
        k = max(operator.index(n), 0)
    items = sorted(self.snapshot(window).items(), key=itemgetter(1), reverse=True)
    return items if k is None else items[:k]


def seconds_ns(seconds: float) -> int:
    """A finite number of seconds in whole nanoseconds, rounded half up, exactly
    (from the float's exact value, as ``_c/rate.c``'s ``seconds_ns`` does)."""
    p, q = seconds.as_integer_ratio()
    return (2 * p * 1_000_000_000 + q) // (2 * q)


class _Spec:
    """The window and resolution, validated and normalised once.

    Both are kept in whole nanoseconds (rounded half up from the float given);
    the ring has ``ceil(window_ns / res_ns)`` buckets, so it always covers the
    whole window; ``.window`` and ``.resolution`` report the rounded values.
    The C core (``parse_spec`` in ``_c/rate.c``) and ``shm://`` (which uses
    this class) apply the same rule, with the same messages.
    """

    __slots__ = ("clk", "clock", "nb", "res_ns", "resolution", "window", "window_ns")

    def __init__(self, fname: str, window: object, resolution: object, clock: object) -> None:
        w = _seconds(window, fname, "window")
        r = _seconds(resolution, fname, "resolution")
        if not 0.0 < w <= MAX_WINDOW:
            raise ValueError(
                f"{fname}() window must be a number of seconds > 0 and <= 1e9, not {w!r}"
            )
        if not MIN_RESOLUTION <= r <= w:
            raise ValueError(
                f"{fname}() resolution must be a number of seconds >= 1e-9 and <= "
                f"the window ({w!r}), not {r!r}"
            )
        if clock is not None and not callable(clock):
            raise TypeError(
                f"{fname}() clock must be a callable returning seconds, or None, "
                f"not {type(clock).__name__!r}"
            )
        self._set(fname, seconds_ns(w), seconds_ns(r))
        self.clock: Callable[[], Any] | None = clock

    @classmethod
    def from_ns(cls, fname: str, window_ns: int, res_ns: int) -> _Spec:
        """The spec of a rate stored as whole nanoseconds (``shm://``'s meta);
        ValueError when they are out of range or need too many buckets."""
        sp = cls.__new__(cls)
        if not (0 < window_ns <= 10**18 and 1 <= res_ns <= window_ns):
            raise ValueError(f"{fname}() window {window_ns} ns, resolution {res_ns} ns")
        sp._set(fname, window_ns, res_ns)
        sp.clock = None
        return sp

    def _set(self, fname: str, window_ns: int, res_ns: int) -> None:
        nb = -(-window_ns // res_ns)
        if nb > MAX_BUCKETS:
            raise ValueError(
                f"{fname}() window / resolution needs {nb} buckets; the limit is {MAX_BUCKETS}"
            )
        self.window_ns = window_ns
        self.res_ns = res_ns
        self.nb = nb
        self.window = window_ns / 10**9  # exactly rounded (int / int)
        self.resolution = res_ns / 10**9
        coarse = _COARSE is not None and 0 < COARSE_GRANULARITY_NS * 10 <= res_ns
        self.clk: int = _COARSE if coarse and _COARSE is not None else time.CLOCK_MONOTONIC

    def width(self, window: object, fname: str) -> tuple[float, int]:
        """(w, w_ns) of a read; None: the configured window."""
        if window is None:
            return self.window, self.window_ns
        w = _seconds(window, fname, "window")
        if not (0.0 < w <= MAX_WINDOW and seconds_ns(w) <= self.window_ns):
            raise ValueError(
                f"{fname}() window must be a number of seconds > 0 and <= {self.window!r}, "
                f"not {w!r}"
            )
        return w, seconds_ns(w)

    def now(self) -> tuple[int, int]:
        """(ns, slot): the clock in whole nanoseconds and its bucket."""
        if self.clock is None:
            ns = time.clock_gettime_ns(self.clk)
            return ns, ns // self.res_ns
        v = self.clock()
        if isinstance(v, (str, bytes)) or v is None:
            raise TypeError(f"clock() must return a number of seconds, not {type(v).__name__!r}")
        try:
            t = float(v)
        except TypeError:
            raise TypeError(
                f"clock() must return a number of seconds, not {type(v).__name__!r}"
            ) from None
        except OverflowError:
            t = math.inf
        if math.isfinite(t) and abs(t) <= 4e18:
            ns = seconds_ns(t)
            slot = ns // self.res_ns
            if abs(slot) < 4e18:
                return ns, slot
        raise ValueError(
            f"clock() returned {t!r}; expected a finite number of seconds within 4e18 buckets of 0"
        )

    def first_slot(self, now: tuple[int, int], w_ns: int, latest: int) -> int:
        """The oldest bucket a read of w_ns counts: the current one and every
        bucket fully inside (now - w, now], at most ``nb`` of them."""
        ns, cur = now
        j = (ns - w_ns) // self.res_ns + 1
        if latest != NONE and cur < latest:
            j += latest - cur
            cur = latest
        return max(min(j, cur), cur - self.nb + 1)

    def repr_args(self) -> str:
        return f"window={self.window!r}, resolution={self.resolution!r}"


_K = TypeVar("_K")


def add_into(dst: dict[_K, int], src: Mapping[_K, int]) -> None:
    """Add ``src``'s counts into ``dst``, dropping the entries that reach 0."""
    for k, v in src.items():
        t = dst.get(k, 0) + v
        if t:
            dst[k] = t
        else:
            dst.pop(k, None)


def sum_into(dst: dict[_K, int], src: Mapping[_K, int]) -> dict[_K, int]:
    """``dst`` with ``src``'s counts added (in place; entries at 0 kept), one
    pass in C: ``dict.update`` fed by ``map``s, no Python code a key (a
    snapshot merges up to a million pending deltas into its stored counts:
    0.3 us a key in a Python loop, about half in C)."""
    if not dst:
        dst.update(src)
    elif src:
        added = map(operator.add, map(dst.get, src, repeat(0)), src.values())
        dst.update(zip(src, added, strict=True))
    return dst


class _RateSettings:
    """``window``, ``resolution`` and ``buckets`` of a rate counter whose
    settings are ``self._sp`` (the fallback's rates and ``shm://``'s)."""

    __slots__ = ()
    _sp: _Spec

    @property
    def window(self) -> float:
        return self._sp.window

    @property
    def resolution(self) -> float:
        return self._sp.resolution

    @property
    def buckets(self) -> int:
        return self._sp.nb
