"""A model-based test of shm://: the store against a dict of expected counts.

Model: ``counts[name]`` and ``keyed[name][key]`` are plain ints.  Rules act on
the segment from this process, from short-lived forked children (whose slabs
then belong to dead processes), fold dead slabs, reset and set; after every
step the segment's snapshot must equal the model exactly.
"""

from __future__ import annotations

import collections
import os

from _shm_support import new_url
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import tallies

NAMES = st.sampled_from(["a", "b"])
KEYED = st.sampled_from(["k", "m"])
KEYS = st.sampled_from(["x", "y", "{", "ü"])  # "" is no key (docs/contract.md)
AMOUNTS = st.integers(-(10**12), 10**12)


def _in_child(fn: object) -> None:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


class ShmModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.url = new_url("?names=8&keys=16&slabs=8")
        self.store = tallies.open(self.url)
        self.counts: dict[str, int] = {}
        self.keyed: dict[str, dict[str, int]] = {}

    def teardown(self) -> None:
        self.store.close()
        tallies.destroy(self.url.partition("?")[0])

    def _c(self, name: str) -> object:
        self.counts.setdefault(name, 0)
        return self.store.counter(name)

    def _k(self, name: str) -> object:
        self.keyed.setdefault(name, {})
        return self.store.keyed(name)

    @rule(name=NAMES, n=AMOUNTS)
    def increment_here(self, name: str, n: int) -> None:
        self._c(name).increment(n)  # type: ignore[attr-defined]
        self.counts[name] += n

    @rule(name=NAMES, n=AMOUNTS)
    def decrement_in_a_child(self, name: str, n: int) -> None:
        c = self._c(name)
        _in_child(lambda: c.decrement(n))  # type: ignore[attr-defined]
        self.counts[name] -= n

    @rule(name=KEYED, key=KEYS, n=AMOUNTS)
    def keyed_increment_here(self, name: str, key: str, n: int) -> None:
        self._k(name).increment(key, n)  # type: ignore[attr-defined]
        self.keyed[name][key] = self.keyed[name].get(key, 0) + n

    @rule(name=KEYED, key=KEYS, n=AMOUNTS)
    def keyed_increment_in_a_child(self, name: str, key: str, n: int) -> None:
        k = self._k(name)
        _in_child(lambda: k.increment(key, n))  # type: ignore[attr-defined]
        self.keyed[name][key] = self.keyed[name].get(key, 0) + n

    @rule(name=NAMES)
    def reset(self, name: str) -> None:
        assert self._c(name).reset() == self.counts[name]  # type: ignore[attr-defined]
        self.counts[name] = 0

    @rule(name=NAMES, v=AMOUNTS)
    def set(self, name: str, v: int) -> None:
        self._c(name).set(v)  # type: ignore[attr-defined]
        self.counts[name] = v

    @rule(name=KEYED, key=KEYS)
    def keyed_reset_one(self, name: str, key: str) -> None:
        assert self._k(name).reset(key) == self.keyed[name].get(key, 0)  # type: ignore[attr-defined]
        if key in self.keyed[name]:
            self.keyed[name][key] = 0

    @rule(name=KEYED)
    def keyed_reset_all(self, name: str) -> None:
        taken = self._k(name).reset()  # type: ignore[attr-defined]
        assert taken == collections.Counter(self.keyed[name])
        self.keyed[name] = dict.fromkeys(self.keyed[name], 0)

    @rule()
    def fold(self) -> None:
        self.store.fold()  # type: ignore[attr-defined]
        assert all(sl["alive"] for sl in self.store.info()["slabs"])  # type: ignore[attr-defined]

    @invariant()
    def snapshot_matches_the_model(self) -> None:
        assert self.store.snapshot() == {"counters": self.counts, "keyed": self.keyed}


ShmModel.TestCase.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
test_shm_store_matches_its_model = ShmModel.TestCase
