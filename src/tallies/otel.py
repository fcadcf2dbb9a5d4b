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
(``prefix=``), characters outside ``[-_./a-zA-Z0-9]`` become ``_``, and names
that then collide (OpenTelemetry compares them case-insensitively) get a
deterministic ``_`` + 8 hex digit suffix.  Names created in the store after
``observe()`` get instruments when you call ``refresh()`` on its result
(instruments cannot be created from inside a collection).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from typing import Any

from ._export import Series, map_names, read_series
from .stores import Store, redact_url

try:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
except ImportError as exc:  # pragma: no cover - exercised in a venv without the extra
    raise ImportError(
        "tallies.otel needs the OpenTelemetry API: pip install tallies[otel]"
    ) from exc

__all__ = ["Observed", "observe"]

OTEL_INVALID = re.compile(r"[^-_./a-zA-Z0-9]")
_ATTRIBUTE = re.compile(r"[^\x00]{1,255}\Z")


def _occupies(kind: str, base: str) -> list[str]:
    base = base.lower()  # instrument names are case-insensitive
    if kind in ("counter", "keyed"):
        return [base]
    if kind == "rate":
        return [base, base + ".window_count", base + ".per_second"]
    return [base + ".window_count", base + ".per_second"]


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

    def _is_up_down(self, name: str) -> bool:
        if isinstance(self.up_down, bool):
            return self.up_down
        return name in self.up_down

    def refresh(self) -> list[str]:
        """Register instruments for names that appeared in the store; returns their names."""
        series = read_series(self.store.snapshot())
        new = [(s.kind, s.name) for s in series if (s.kind, s.name) not in self.names]
        taken = [n for (kind, _), base in self.names.items() for n in _occupies(kind, base)]
        mapped = map_names(new, self.prefix, OTEL_INVALID, _occupies, taken=taken)
        added: list[str] = []
        for entry in sorted(mapped, key=lambda e: (e[1], e[0])):
            base = mapped[entry]
            self.names[entry] = base
            added += self._register(entry[0], entry[1], base)
        return added

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

    def _rate(self, name: str, kind: str) -> Series | None:
        for s in read_series(self.store.snapshot()):
            if s.kind == kind and s.name == name:
                return s
        return None

    def _register(self, kind: str, name: str, base: str) -> list[str]:
        store, attr = self.store, self.attribute
        if kind == "counter":

            def counter(options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(store.counter(name).value())]

            return [self._counter(base, name, counter)]
        if kind == "keyed":

            def keyed(options: CallbackOptions) -> Iterable[Observation]:
                counts = store.keyed(name).snapshot()
                return [Observation(v, {attr: k}) for k, v in counts.items()]

            return [self._counter(base, name, keyed)]
        what = f"tallies {kind.replace('_', ' ')} {name!r} in {redact_url(store.url)}"
        if kind == "rate":

            def window(options: CallbackOptions) -> Iterable[Observation]:
                s = self._rate(name, "rate")
                return [] if s is None else [Observation(s.value)]

            def per_second(options: CallbackOptions) -> Iterable[Observation]:
                s = self._rate(name, "rate")
                return [] if s is None else [Observation(s.per_second)]

            def total(options: CallbackOptions) -> Iterable[Observation]:
                s = self._rate(name, "rate")
                return [] if s is None or s.total is None else [Observation(s.total)]

            return [
                self._gauge(base + ".window_count", f"{what}: count in the window", window),
                self._gauge(base + ".per_second", f"{what}: per second", per_second),
                self._counter(base, name, total),
            ]

        def keyed_window(options: CallbackOptions) -> Iterable[Observation]:
            s = self._rate(name, "keyed_rate")
            return [] if s is None else [Observation(v, {attr: k}) for k, v in s.keys.items()]

        def keyed_per_second(options: CallbackOptions) -> Iterable[Observation]:
            s = self._rate(name, "keyed_rate")
            if s is None or s.window <= 0:
                return []
            return [Observation(v / s.window, {attr: k}) for k, v in s.keys.items()]

        return [
            self._gauge(base + ".window_count", f"{what}: count in the window", keyed_window),
            self._gauge(base + ".per_second", f"{what}: per second", keyed_per_second),
        ]


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
    if not isinstance(prefix, str) or not re.fullmatch(r"[a-zA-Z][-_./a-zA-Z0-9]*", prefix):
        raise ValueError(
            f"prefix {prefix!r} is not a valid instrument name start "
            "(a letter, then letters, digits, '-', '_', '.', '/')"
        )
    if not isinstance(attribute, str) or not _ATTRIBUTE.match(attribute):
        raise ValueError(f"attribute {attribute!r} must be a non-empty str")
    observed = Observed(store, meter, prefix=prefix, attribute=attribute, up_down=up_down)
    observed.refresh()
    return observed
