"""A storage for the ``limits`` package, hence for flask-limiter and slowapi.

    import tallies.limits  # registers the tallies+... storage schemes with limits

    limiter = Limiter(get_remote_address, app=app, storage_uri="tallies+shm://myapp")

``tallies+URL`` is the tallies store at ``URL``: ``tallies+shm://NAME`` (every
process on this machine: gunicorn's or uvicorn's workers share one limit),
``tallies+sqlite:///path.db`` (one file, every process on the machine),
``tallies+redis://host:6379`` (every machine; also ``tallies+rediss://``,
``tallies+redis+cluster://``), ``tallies+postgresql://user@host/db`` (every
machine, in PostgreSQL) and ``tallies+memory://`` (one process, as limits'
own ``memory://``).  Importing this module needs ``limits``
(``pip install tallies[limits]``); importing ``tallies`` never imports it.

What each of limits' strategies gets
------------------------------------
* ``fixed-window`` (flask-limiter's and slowapi's default): limits' own
  semantics exactly: a key's window starts at its first hit and lasts the
  limit's period; ``incr`` counts every hit (refused ones too, as limits
  does) and returns the count.  One atomic operation per hit: a lock in
  the ``shm://`` segment, a transaction on SQLite, a script on Redis (one
  round trip, as limits' own Redis storage).
* ``moving-window``: a tallies limiter (``store.limiter``): never more than
  the limit in any interval of the period, decided at a granularity of
  1/60 of the period (a hit stops counting between one period and one
  period plus 1/60 after it), so it refuses slightly more than limits' exact
  moving window and never admits more.  O(60) memory per key instead of
  O(limit), and on ``redis://`` most hits are decided locally from a lease
  (no round trip).  ``get_moving_window`` reports the count and the start
  of the window at that granularity.
* ``sliding-window-counter``: the same tallies limiter.  limits' sliding
  window counter *approximates* a moving window by weighting the previous
  fixed window (and may admit more than the limit in some intervals); here
  the exact-at-granularity window is used instead, so
  ``get_sliding_window`` reports everything as the current window
  ``(0, 0.0, count, seconds until the oldest hit stops counting)``: limits'
  ``test`` and ``get_window_stats`` then read the same count ``hit`` uses.

``reset()`` forgets the keys this storage object has used (a tallies store
does not list limiter keys); ``clear(key)`` forgets one key in every
strategy.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from limits.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage

from .stores import StoreError, schemes
from .stores import open as _open

__all__ = ["SCHEMES", "TalliesStorage"]

SCHEMES = [f"tallies+{s}" for s in schemes()]
"""The storage schemes registered with ``limits`` (``tallies+`` and a tallies scheme)."""


def _limit_of(key: str) -> int | None:
    """The limit's amount in a key made by limits' ``RateLimitItem.key_for``
    (``namespace/identifiers.../amount/multiples/granularity``)."""
    parts = key.split("/")
    if len(parts) >= 4 and parts[-3].isdigit() and parts[-2].isdigit():
        return int(parts[-3])
    return None


class TalliesStorage(Storage, MovingWindowSupport, SlidingWindowCounterSupport):
    """``limits``' storage interface over a tallies store (see the module docstring)."""

    STORAGE_SCHEME = SCHEMES

    def __init__(
        self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any
    ) -> None:
        if not uri or "+" not in uri.partition("://")[0]:
            raise ValueError(f"{uri!r} is not a tallies+SCHEME://... storage URI")
        self.store = _open(uri.partition("+")[2])
        self._windows = self.store._fixed_windows("limits")
        self._lock = threading.Lock()
        self._limiters: dict[tuple[str, int, int], Any] = {}
        self._used: dict[str, tuple[str, int, int] | None] = {}  # keys this object used
        self._limits: dict[tuple[str, int], int] = {}  # (key, expiry) -> limit seen
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return StoreError

    def _limiter(self, kind: str, limit: int, expiry: float) -> Any:
        sec = round(float(expiry) * 1000)
        ident = (kind, int(limit), sec)
        lim = self._limiters.get(ident)
        if lim is None:
            name = f"limits:{kind}:{int(limit)}/{sec}ms"
            lim = self.store.limiter(name, int(limit), sec / 1000)
            with self._lock:
                self._limiters[ident] = lim
        return lim

    def _note(self, key: str, ident: tuple[str, int, int] | None) -> None:
        if len(self._used) < 100_000:
            self._used[key] = ident

    # -- fixed window ----------------------------------------------------------------

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` to ``key``'s fixed window (started at its first hit,
        ``expiry`` seconds long); return the window's count."""
        count, _ = self._windows.incr(key, expiry, amount)
        self._note(key, None)
        return int(count)

    def get(self, key: str) -> int:
        return int(self._windows.get(key)[0])

    def get_expiry(self, key: str) -> float:
        return float(self._windows.get(key)[1])

    def check(self) -> bool:
        try:
            self.store.names()
        except StoreError:
            return False
        return True

    def reset(self) -> int | None:
        with self._lock:
            used, self._used = self._used, {}
        for key in used:
            self.clear(key)
        return len(used)

    def clear(self, key: str) -> None:
        self._windows.clear(key)
        for lim in list(self._limiters.values()):
            lim.reset(key)

    # -- moving window ---------------------------------------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Admit ``amount`` hits of ``key`` iff the window stays within ``limit``."""
        if amount > limit:
            return False
        lim = self._limiter("mw", limit, expiry)
        self._note(key, ("mw", limit, expiry))
        return bool(lim.hit(key, amount))

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        lim = self._limiter("mw", limit, expiry)
        used = limit - lim.remaining(key)
        now = time.time()
        if used <= 0:
            return now, 0
        return now + lim.reset_after(key) - expiry, used

    # -- sliding window counter ------------------------------------------------------

    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        if amount > limit:
            return False
        with self._lock:
            self._limits[(key, expiry)] = limit
        self._note(key, ("sw", limit, expiry))
        return bool(self._limiter("sw", limit, expiry).hit(key, amount))

    def _sw(self, key: str, expiry: int) -> Any:
        limit = self._limits.get((key, expiry)) or _limit_of(key)
        if limit is None:
            return None
        return self._limiter("sw", limit, expiry)

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        lim = self._sw(key, expiry)
        if lim is None:
            return 0, 0.0, 0, 0.0
        used = lim.limit - lim.remaining(key)
        if not used:
            return 0, 0.0, 0, 0.0
        # limits reports the reset as now + (current TTL % expiry)
        return 0, 0.0, used, expiry + min(lim.reset_after(key), expiry * 0.999999)

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        lim = self._sw(key, expiry)
        if lim is not None:
            lim.reset(key)

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.store.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__("tallies+" + state["uri"])  # type: ignore[misc]
