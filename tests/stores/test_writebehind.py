"""The write-behind machinery (tallies.stores.writebehind) against a tiny
in-memory backend with fault injection: apply() failing before it commits
(nothing applied) and after (applied, but the caller sees an error: a lost
reply).  The durable scopes (sqlite://, redis://) test the same machinery
against real files and servers."""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from typing import Any

import pytest
from _support import INT64_MAX, REQUIRE_C
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tallies.stores import writebehind as wbmod
from tallies.stores.base import CountOverflowError, FlushError
from tallies.stores.writebehind import (
    Batch,
    Kind,
    Query,
    Read,
    Target,
    WriteBehind,
)


class Fault(Exception):
    """An injected backend failure."""


class MemBackend:
    """The Backend protocol over dicts, atomic under one lock.

    ``fail`` is a list of (method, when) consumed one per call: when
    "before" the call raises without changing anything, when "after" it
    changes state and then raises (the reply is lost)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.keyed: dict[str, dict[str, int]] = {}
        self.kinds: dict[str, Kind] = {}
        self.writers: dict[str, int] = {}
        self.fail: list[tuple[str, str]] = []
        self.calls = collections.Counter[str]()
        self.applied_seqs: list[tuple[str, int]] = []

    def _fault(self, method: str, when: str) -> None:
        if self.fail and self.fail[0] == (method, when):
            self.fail.pop(0)
            raise Fault(f"injected: {method} {when}")

    def apply(self, writer_id: str, batch: Batch) -> None:
        with self.lock:
            self.calls["apply"] += 1
            self._fault("apply", "before")
            if batch.seq <= self.writers.get(writer_id, 0):
                self._fault("apply", "after")
                return
            bad = []
            for name, d in batch.counters.items():
                if not -(2**63) <= self.counters.get(name, 0) + d <= INT64_MAX:
                    bad.append((name, None))
            for name, m in batch.keyed.items():
                for key, d in m.items():
                    if not -(2**63) <= self.keyed.get(name, {}).get(key, 0) + d <= INT64_MAX:
                        bad.append((name, key))
            if bad:
                raise CountOverflowError("overflow", bad)
            for name, kind in batch.names.items():
                self.kinds.setdefault(name, kind)
                if kind == "counter":
                    self.counters.setdefault(name, 0)
                else:
                    self.keyed.setdefault(name, {})
            for name, d in batch.counters.items():
                self.counters[name] = self.counters.get(name, 0) + d
            for name, m in batch.keyed.items():
                km = self.keyed.setdefault(name, {})
                for key, d in m.items():
                    km[key] = km.get(key, 0) + d
            self.writers[writer_id] = batch.seq
            self.applied_seqs.append((writer_id, batch.seq))
            self._fault("apply", "after")

    def take(self, writer_id: str, seq: int, target: Target) -> int | dict[str, int]:
        with self.lock:
            self._fault("take", "before")
            assert seq > self.writers.get(writer_id, 0)
            out: int | dict[str, int]
            if target.kind == "counter":
                out = self.counters.get(target.name, 0)
                if target.name in self.counters:
                    self.counters[target.name] = 0
            elif target.key is None:
                m = self.keyed.get(target.name, {})
                out = dict(m)
                for k in m:
                    m[k] = 0
            else:
                m = self.keyed.get(target.name, {})
                out = m.get(target.key, 0)
                if target.key in m:
                    m[target.key] = 0
            self.writers[writer_id] = seq
            self._fault("take", "after")
            return out

    def fence(self, writer_id: str, seq: int) -> bool:
        with self.lock:
            self._fault("fence", "before")
            if seq <= self.writers.get(writer_id, 0):
                return True
            self.writers[writer_id] = seq
            return False

    def read(self, writer_id: str, query: Query) -> Read:
        with self.lock:
            self._fault("read", "before")
            r = Read(self.writers.get(writer_id, 0))
            names = self.counters if query.counters is None else query.counters
            for n in names:
                r.counters[n] = self.counters.get(n, 0)
            knames = self.keyed if query.keyed is None else query.keyed
            for n in knames:
                r.keyed[n] = dict(self.keyed.get(n, {}))
            for n, k in query.keys:
                r.keyed.setdefault(n, {})[k] = self.keyed.get(n, {}).get(k, 0)
            return r

    def names(self) -> list[tuple[str, Kind]]:
        with self.lock:
            return list(self.kinds.items())

    def kind_of(self, name: str) -> Kind | None:
        with self.lock:
            return self.kinds.get(name)

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True, params=["c", "python"])
def counter_class(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every test runs with the C BufferedCounter and with the Python one."""
    if request.param == "python":
        cls: Any = wbmod.PyBufferedCounter
    else:
        cls = wbmod._counter_class()
        if cls is wbmod.PyBufferedCounter:
            if REQUIRE_C:
                pytest.fail("TALLIES_REQUIRE_C=1 but the C BufferedCounter is not in use")
            pytest.skip("the C core is not in use here")
    monkeypatch.setattr(wbmod, "_counter_class", lambda: cls)
    return cls


@pytest.fixture
def be() -> MemBackend:
    return MemBackend()


def make(be: MemBackend, interval: float = 3600.0) -> WriteBehind:
    return WriteBehind(be, lambda: be, interval=interval, url="mem://test")


def test_increments_buffer_and_flush_applies(be: MemBackend) -> None:
    wb = make(be)
    c = wb.counter("hits")
    kc = wb.keyed("status")
    c.increment()
    c += 4
    c.decrement(2)
    kc.increment("200", 5)
    kc.decrement("404")
    assert be.calls["apply"] == 0  # nothing left the process
    assert c.value() == 3  # read-your-writes before any flush
    assert kc.value("200") == 5 and kc["404"] == -1
    wb.flush()
    assert be.counters == {"hits": 3} and be.keyed == {"status": {"200": 5, "404": -1}}
    assert c.value() == 3 and kc.snapshot() == {"200": 5, "404": -1}
    assert c._pending() == 0
    wb.close()


def test_lost_reply_is_not_applied_twice(be: MemBackend) -> None:
    wb = make(be)
    c = wb.counter("n")
    c.increment(10)
    be.fail.append(("apply", "after"))  # commits, then the caller sees an error
    with pytest.raises(FlushError) as info:
        wb.flush()
    assert isinstance(info.value.__cause__, Fault)
    assert be.counters["n"] == 10  # it did commit
    assert c.value() == 10  # and the read does not count it twice
    c.increment(5)  # new deltas wait in the cells
    assert c.value() == 15
    wb.flush()  # retries the same batch first (recognised), then the new one
    assert be.counters["n"] == 15
    seqs = [s for _, s in be.applied_seqs]
    assert seqs == [1, 2]
    assert c.value() == 15
    wb.close()


def test_failure_before_commit_keeps_everything(be: MemBackend) -> None:
    wb = make(be)
    c = wb.counter("n")
    kc = wb.keyed("k")
    c.increment(7)
    kc.increment("a", 3)
    be.fail.append(("apply", "before"))
    with pytest.raises(FlushError):
        wb.flush()
    assert be.counters == {} and c.value() == 7 and kc.value("a") == 3
    c.increment()
    wb.flush()
    assert be.counters == {"n": 8} and be.keyed == {"k": {"a": 3}}
    wb.close()


def test_retry_sends_the_same_batch_not_a_merged_one(be: MemBackend) -> None:
    wb = make(be)
    c = wb.counter("n")
    c.increment(1)
    be.fail[:] = [("apply", "before"), ("apply", "before")]
    for _ in range(2):
        with pytest.raises(FlushError):
            wb.flush()
        c.increment(1)
    wb.flush()
    # batch 1 (the first delta) was applied alone, then batch 2 with the rest
    assert be.applied_seqs == [(wb.writer_id, 1), (wb.writer_id, 2)]
    assert be.counters["n"] == 3
    wb.close()


def test_overflow_holds_the_offending_delta_and_sends_the_rest(be: MemBackend) -> None:
    be.counters["big"] = INT64_MAX - 1
    be.kinds["big"] = "counter"
    wb = make(be)
    big = wb.counter("big")
    other = wb.counter("other")
    big.increment(5)
    other.increment(2)
    with pytest.raises(CountOverflowError) as info:
        wb.flush()
    assert info.value.items == [("big", None)]
    assert be.counters["big"] == INT64_MAX - 1  # nothing of it applied
    assert be.counters["other"] == 2  # the rest went through
    assert big.value() == INT64_MAX + 4  # still counted locally, not lost
    with pytest.raises(CountOverflowError):  # every flush says so again
        wb.flush()
    big.decrement(4)
    wb.flush()  # now INT64_MAX - 1 + 1 fits
    assert be.counters["big"] == INT64_MAX
    assert big.value() == INT64_MAX
    wb.close()


def test_overflow_resolved_by_reset(be: MemBackend) -> None:
    be.keyed["k"] = {"x": INT64_MAX}
    be.kinds["k"] = "keyed"
    wb = make(be)
    kc = wb.keyed("k")
    kc.increment("x", 3)
    with pytest.raises(CountOverflowError):
        wb.flush()
    assert kc.reset("x") == INT64_MAX + 3
    assert kc.value("x") == 0
    wb.flush()
    assert be.keyed["k"]["x"] == 0
    wb.close()


def test_reset_returns_stored_plus_pending(be: MemBackend) -> None:
    wb = make(be)
    c = wb.counter("n")
    c.increment(4)
    wb.flush()
    c.increment(3)
    assert c.reset() == 7
    assert c.value() == 0 and be.counters["n"] == 0
    kc = wb.keyed("k")
    kc.increment("a", 2)
    kc.increment("b", 1)
    wb.flush()
    kc.increment("a", 1)
    assert kc.reset() == collections.Counter({"a": 3, "b": 1})
    assert kc.snapshot() == {"a": 0, "b": 0}
    wb.close()


@pytest.mark.parametrize("when", ["before", "after"])
def test_failed_reset_is_settled_by_the_next_flush(be: MemBackend, when: str) -> None:
    wb = make(be)
    c = wb.counter("n")
    c.increment(4)
    wb.flush()
    c.increment(3)
    be.fail.append(("take", when))
    with pytest.raises(FlushError):
        c.reset()
    c.increment(1)
    wb.flush()  # fences the reset's seq, then flushes
    if when == "before":  # it did not happen: the pending 3 is kept
        assert be.counters["n"] == 8 and c.value() == 8
    else:  # it happened: stored and pending were taken (the call's result is lost)
        assert be.counters["n"] == 1 and c.value() == 1
    wb.close()


def test_fence_failure_keeps_the_reset_in_flight(be: MemBackend) -> None:
    wb = make(be)
    c = wb.counter("n")
    c.increment(2)
    be.fail[:] = [("take", "before"), ("fence", "before")]
    with pytest.raises(FlushError):
        c.reset()
    with pytest.raises(FlushError):
        wb.flush()
    assert c.value() == 2
    wb.flush()
    assert be.counters["n"] == 2
    wb.close()


def test_names_kinds_and_clashes(be: MemBackend) -> None:
    wb = make(be)
    wb.counter("a")
    wb.keyed("b")
    with pytest.raises(ValueError, match="is a counter"):
        wb.keyed("a")
    assert wb.names() == ["a", "b"]
    wb.flush()
    assert be.kinds == {"a": "counter", "b": "keyed"}
    wb2 = make(be)
    with pytest.raises(ValueError, match="is a keyed counter"):
        wb2.counter("b")
    with pytest.raises(TypeError):
        wb.keyed("b").increment(1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        wb.keyed("b").increment("")
    wb.close()
    wb2.close()


def test_close_flushes_and_closed_counters_refuse(be: MemBackend) -> None:
    wb = make(be)
    c = wb.counter("n")
    kc = wb.keyed("k")
    c.increment(3)
    kc.increment("x")
    wb.close()
    assert be.counters == {"n": 3} and be.keyed == {"k": {"x": 1}}
    with pytest.raises(ValueError, match="closed"):
        c.increment()
    with pytest.raises(ValueError, match="closed"):
        c += 1
    with pytest.raises(ValueError, match="closed"):
        kc.increment("x")
    with pytest.raises(ValueError, match="closed"):
        kc.increment("new")
    wb.close()  # again: nothing


def test_failed_close_keeps_retrying_in_the_background(
    be: MemBackend, caplog: pytest.LogCaptureFixture
) -> None:
    wb = make(be, interval=0.01)
    c = wb.counter("n")
    c.increment(3)
    be.fail[:] = [("apply", "before")] * 3
    with caplog.at_level(logging.WARNING, logger="tallies.stores"):
        with pytest.raises(FlushError):
            wb.close()
        deadline = time.monotonic() + 10
        while be.counters.get("n") != 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert be.counters["n"] == 3
    assert any("background flush" in r.getMessage() for r in caplog.records)
    wb.close()


def test_background_flusher_backs_off_and_recovers(
    be: MemBackend, caplog: pytest.LogCaptureFixture
) -> None:
    wb = make(be, interval=0.01)
    c = wb.counter("n")
    be.fail[:] = [("apply", "after"), ("apply", "before"), ("apply", "after")]
    with caplog.at_level(logging.WARNING, logger="tallies.stores"):
        for _ in range(100):
            c.increment()
        deadline = time.monotonic() + 10
        while (be.fail or wb.failures or be.counters.get("n") != 100) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
    assert be.counters["n"] == 100
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("failed" in m for m in msgs) >= 3
    assert any("succeed again" in m for m in msgs)
    wb.close()


def test_reads_are_exact_while_the_flusher_runs(be: MemBackend) -> None:
    """A reader racing with flushes (and lost replies) never counts a batch
    twice nor misses one: with a single writer thread the value it reads
    never goes down and never exceeds what was counted."""
    wb = make(be, interval=0.0005)
    c = wb.counter("n")
    kc = wb.keyed("k")
    n = 20000
    done = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        last = lastk = 0
        while not done.is_set():
            v = c.value()
            vk = kc.value("x")
            if v < last or v > n or vk < lastk or vk > n:
                errors.append(f"{last}->{v} {lastk}->{vk}")
            last, lastk = v, vk

    def faults() -> None:
        while not done.is_set():
            with be.lock:
                be.fail.append(("apply", "after"))
            time.sleep(0.002)

    threads = [threading.Thread(target=reader), threading.Thread(target=faults)]
    for t in threads:
        t.start()
    for _ in range(n):
        c.increment()
        kc.increment("x")
    done.set()
    for t in threads:
        t.join()
    be.fail.clear()
    wb.flush()
    assert errors == []
    assert be.counters["n"] == n and be.keyed["k"]["x"] == n
    assert c.value() == n
    wb.close()


def test_threads_exact(be: MemBackend) -> None:
    wb = make(be, interval=0.001)
    c = wb.counter("n")
    kc = wb.keyed("k")

    def work(i: int) -> None:
        for j in range(5000):
            c.increment()
            kc.increment(str(j % 7))
            if j % 1000 == 0:
                wb.flush()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wb.close()
    assert be.counters["n"] == 40000
    assert sum(be.keyed["k"].values()) == 40000


FAULTS = st.sampled_from(["ok", "before", "after"])
ops = st.lists(
    st.one_of(
        st.tuples(st.just("inc"), st.sampled_from("ab"), st.integers(-5, 5)),
        st.tuples(st.just("kinc"), st.sampled_from("xyz"), st.integers(-5, 5)),
        st.tuples(st.just("flush"), st.sampled_from(["ok", "before", "after"])),
        st.tuples(st.just("reset"), st.sampled_from("ab"), FAULTS),
        st.tuples(st.just("kreset"), st.sampled_from(["x", None]), FAULTS),
        st.tuples(st.just("reopen")),
    ),
    max_size=40,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops)
def test_model(program: list[tuple[Any, ...]]) -> None:
    """Against a plain dict: every read equals the model; after a clean flush
    the backend holds the model exactly.  A reset that failed after it
    happened took its counts (its result was lost to the caller); one that
    failed before did not."""
    be = MemBackend()
    wb = make(be)
    model: dict[str, int] = collections.Counter()
    kmodel: dict[str, int] = collections.Counter()
    for op in program:
        kind = op[0]
        if kind == "inc":
            wb.counter(op[1]).increment(op[2])
            model[op[1]] += op[2]
        elif kind == "kinc":
            wb.keyed("k").increment(op[1], op[2])
            kmodel[op[1]] += op[2]
        elif kind == "flush":
            if op[1] != "ok":
                be.fail.append(("apply", op[1]))
            try:
                wb.flush()
            except FlushError:
                assert op[1] != "ok"
            be.fail.clear()
        elif kind == "reset":
            if op[2] != "ok":
                be.fail.append(("take", op[2]))
            try:
                got = wb.counter(op[1]).reset()
            except FlushError:
                be.fail.clear()
                wb.flush()  # settles it
                if op[2] == "after":
                    model[op[1]] = 0
            else:
                assert got == model[op[1]]
                model[op[1]] = 0
        elif kind == "kreset":
            if op[2] != "ok":
                be.fail.append(("take", op[2]))
            kc = wb.keyed("k")
            try:
                got = kc.reset(op[1])
            except FlushError:
                be.fail.clear()
                wb.flush()
                if op[2] == "after" and op[1] is None:
                    kmodel.clear()
                elif op[2] == "after":
                    kmodel[op[1]] = 0
            else:
                if op[1] is None:
                    assert {k: v for k, v in got.items() if v} == {
                        k: v for k, v in kmodel.items() if v
                    }
                    kmodel.clear()
                else:
                    assert got == kmodel[op[1]]
                    kmodel[op[1]] = 0
        elif kind == "reopen":
            wb.close()
            wb = make(be)
        for name in "ab":
            assert wb.counter(name).value() == model[name]
        snap = wb.keyed("k").snapshot()
        assert {k: v for k, v in snap.items() if v} == {k: v for k, v in kmodel.items() if v}
    wb.close()
    assert {k: v for k, v in be.counters.items() if v} == {k: v for k, v in model.items() if v}
    assert {k: v for k, v in be.keyed.get("k", {}).items() if v} == {
        k: v for k, v in kmodel.items() if v
    }


def _count_until_closed(
    c: Any,
    kc: Any,
    i: int,
    started: threading.Barrier,
    done: list[int],
    errors: list[BaseException],
) -> None:
    """Count (odd i: the counter; even i: a new key each time) until ValueError."""
    started.wait()
    j = 0
    while True:
        try:
            if i % 2:
                c.increment()
            else:
                kc.increment(f"{i}-{j}")
        except ValueError:
            return
        except BaseException as exc:  # pragma: no cover - the bug
            errors.append(exc)
            return
        done[i] += 1
        j += 1


def test_updates_racing_close_land_in_the_final_flush_or_raise(be: MemBackend) -> None:
    """close() from one thread while others count (the keyed ones each on a
    new key: its first use): every update that returned is in the backend,
    every other one raised ValueError.  A tiny switch interval makes threads
    stop between a check and the update it guards."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for r in range(12):
            wb = make(be)
            c = wb.counter(f"n{r}")
            kc = wb.keyed(f"k{r}")
            done = [0] * 4
            errors: list[BaseException] = []
            started = threading.Barrier(5)
            threads = [
                threading.Thread(target=_count_until_closed, args=(c, kc, i, started, done, errors))
                for i in range(4)
            ]
            for t in threads:
                t.start()
            started.wait()
            time.sleep(0.01)
            wb.close()
            for t in threads:
                t.join()
            assert errors == []
            assert be.counters.get(f"n{r}", 0) == done[1] + done[3]
            assert sum(be.keyed.get(f"k{r}", {}).values()) == done[0] + done[2]
    finally:
        sys.setswitchinterval(old)
