"""OpenTelemetry metrics for any tallies store (``pip install tallies[otel]``).

    from opentelemetry import metrics
    import tallies
    from tallies.otel import observe

    observed = observe(tallies.open("shm://web"), metrics.get_meter("web"))

:func:`observe` registers one asynchronous (observable) instrument per name in
the store; the SDK calls its callback at each collection, and the callback
reads the store then (nothing is pushed, the writers pay nothing):

=========================  ================================================
in the store               instrument
=========================  ================================================
counter ``requests``       ObservableCounter ``tallies.requests``: the value,
                           cumulative
keyed counter ``status``   ObservableCounter ``tallies.status``: one
                           observation per key, the key in the attribute
                           ``key`` (``attribute=``)
rate ``logins``            ObservableGauge ``tallies.logins.window_count``
                           and ``tallies.logins.per_second``;
                           ObservableCounter ``tallies.logins`` (all time)
keyed rate ``errors``      ObservableGauge ``tallies.errors.window_count``
                           and ``tallies.errors.per_second``, per key
=========================  ================================================

Counters that go down (``decrement``, ``reset``) should be observed as
up-down counters: ``up_down=True`` for all, or a collection of names.

Instrument names follow the rule in ``tallies._export``: prefix ``tallies.``
(``prefix=``); a name depends on the store name alone, and no two store names
share one (OpenTelemetry compares names case-insensitively).  A lowercase name
valid as it is keeps it (``tallies.api.errors``); any other is escaped
reversibly (``U__``, ``_`` as ``__``, other characters and capitals as
``_<hex>_``: ``Api`` is ``tallies.U___41_pi``), and one still longer than the
255 characters OpenTelemetry allows (with ``.window_count``) ends in a hash.
Names created in the store after ``observe()`` get instruments when you call
``refresh()`` on its result (instruments cannot be created from inside a
collection).

A collection reads the store once: the first callback a collection calls takes
one ``snapshot()``, and every other instrument's callback reads that same
snapshot (a callback called again starts the next collection's read).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection, Iterable
from typing import Any

from ._export import Series, missing_extra, otel_base, read_series
from .stores import Store, redact_url

try:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
except ImportError as exc:  # pragma: no cover - exercised in a venv without the extra
    raise missing_extra("tallies.otel", "the OpenTelemetry API", "otel") from exc

__all__ = ["Observed", "instrument_name", "observe"]

_ATTRIBUTE = re.compile(r"[^\x00]{1,255}\Z")


def instrument_name(name: str, prefix: str = "tallies.") -> str:
    """The base instrument name of the store name ``name`` (the module's rule);
    a rate adds ``.window_count`` and ``.per_second``."""
    return otel_base(name, prefix)


class Observed:
    """What :func:`observe` registered: ``names`` maps ``(kind, name)`` to an instrument name."""

    def __init__(
        self,
        store: Store,
        meter: Meter,
        *,
        prefix: str,
        attribute: str,
        up_down: bool | Collection[str],
    ) -> None:
        self.store = store
        self.meter = meter
        self.prefix = prefix
        self.attribute = attribute
        self.up_down = up_down
        self.names: dict[tuple[str, str], str] = {}
        self.instruments: list[Any] = []
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], Series] | None = None
        self._served: set[int] = set()
        self._callbacks: list[str] = []  # one token per callback
        self.reads = 0
        """How many times a collection read the store (one per collection)."""

    def _is_up_down(self, name: str) -> bool:
        if isinstance(self.up_down, bool):
            return self.up_down
        return name in self.up_down

    def refresh(self) -> list[str]:
        """Register instruments for names that appeared in the store; returns their names."""
        added: list[str] = []
        for s in read_series(self.store.snapshot()):
            entry = (s.kind, s.name)
            if entry not in self.names:
                base = self.names[entry] = instrument_name(s.name, self.prefix)
                added += self._register(s.kind, s.name, base)
        return added

    def _read(self, token: int) -> dict[tuple[str, str], Series]:
        """The collection's snapshot: read when a callback is called a second
        time since the last read (a new collection), else shared."""
        with self._lock:
            if self._series is None or token in self._served:
                self._series = {(s.kind, s.name): s for s in read_series(self.store.snapshot())}
                self._served = set()
                self.reads += 1
            self._served.add(token)
            return self._series

    def _counter(self, base: str, name: str, callback: Callable[..., Iterable[Observation]]) -> str:
        what = f"tallies {name!r} in {redact_url(self.store.url)}"
        make = (
            self.meter.create_observable_up_down_counter
            if self._is_up_down(name)
            else self.meter.create_observable_counter
        )
        self.instruments.append(make(base, callbacks=[callback], description=what))
        return base

    def _gauge(self, base: str, what: str, callback: Callable[..., Iterable[Observation]]) -> str:
        self.instruments.append(
            self.meter.create_observable_gauge(base, callbacks=[callback], description=what)
        )
        return base

    def _register(self, kind: str, name: str, base: str) -> list[str]:
        attr = self.attribute
        single = kind in ("counter", "rate")

        def reader(part: str) -> Callable[[], Series | None]:
            token = len(self._callbacks)
            self._callbacks.append(part)

            def get() -> Series | None:
                return self._read(token).get((kind, name))

            return get

        def observer(
            part: str, field: str, per_second: bool = False
        ) -> Callable[[CallbackOptions], Iterable[Observation]]:
            """The callback of ``part``: the series' ``field`` for a counter or a
            rate; for a keyed one, each key's count (divided by the window when
            ``per_second``), with the key as attribute."""
            get = reader(part)

            def observations(options: CallbackOptions) -> Iterable[Observation]:
                s = get()
                if s is None:
                    return []
                if single:
                    return [Observation(getattr(s, field))]
                if per_second and s.window <= 0:
                    return []
                return [
                    Observation(v / s.window if per_second else v, {attr: k})
                    for k, v in s.keys.items()
                ]

            return observations

        if kind in ("counter", "keyed"):
            return [self._counter(base, name, observer("value", "value"))]
        what = f"tallies {kind.replace('_', ' ')} {name!r} in {redact_url(self.store.url)}"
        window = observer("window", "value")
        per_second = observer("per_second", "per_second", per_second=True)

        made = [
            self._gauge(base + ".window_count", f"{what}: count in the window", window),
            self._gauge(base + ".per_second", f"{what}: per second", per_second),
        ]
        if kind == "rate":
            get_total = reader("total")

            def total(options: CallbackOptions) -> Iterable[Observation]:
                s = get_total()
                return [] if s is None or s.total is None else [Observation(s.total)]

            made.append(self._counter(base, name, total))
        return made


def observe(
    store: Store,
    meter: Meter,
    *,
    prefix: str = "tallies.",
    attribute: str = "key",
    up_down: bool | Collection[str] = False,
) -> Observed:
    """Register an observable instrument for every name now in ``store`` (see the module doc)."""
    if not isinstance(store, Store):
        raise TypeError(f"observe() expects a tallies Store, not {type(store).__name__!r}")
    if not isinstance(prefix, str) or not re.fullmatch(r"[a-zA-Z][-_./a-zA-Z0-9]{0,99}", prefix):
        raise ValueError(
            f"prefix {prefix!r} is not a valid instrument name start "
            "(a letter, then letters, digits, '-', '_', '.', '/'; at most 100 characters)"
        )
    if not isinstance(attribute, str) or not _ATTRIBUTE.match(attribute):
        raise ValueError(f"attribute {attribute!r} must be a non-empty str")
    observed = Observed(store, meter, prefix=prefix, attribute=attribute, up_down=up_down)
    observed.refresh()
    return observed
