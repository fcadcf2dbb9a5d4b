"""The collections.Counter API of KeyedCounter, written once over a core.

A core (the C KeyedCounter type of ``_c/keyed.c`` or the pure
``tallies._pure.keyed.KeyedCore``; ``tallies._impl`` picks) provides exact per-key primitives:
``increment``, ``decrement``, ``value``, ``pop``, ``discard``, ``clear`` and a
few private ones (``_set``, ``_get``, ``_setdefault``, ``_reset_key``,
``_prune``, ``_keys``, ``_items``, ``_drain``).  ``KeyedCounterMixin`` builds
the rest of the ``collections.Counter`` API on them, so both implementations
behave identically by construction.

``kc[key] += n`` and threads
----------------------------
Python runs ``kc[key] += n`` as ``tmp = kc[key]; tmp = tmp + n; kc[key] = tmp``:
a read, then a write.  Between them another thread may count the same key,
and a plain assignment would overwrite that count (a lost update).  So
``kc[key]`` returns a ``Count``: an ``int`` subclass that remembers the
counter, the key and the value it read.  ``Count + n``, ``n + Count`` and
``Count - n`` return a ``Count`` that carries the same memory.  When
``kc[key] = value`` receives a ``Count`` made that way (by ``+`` or ``-``) from
a ``Count`` read from this counter and this key, it applies the difference
``value - read`` as one atomic increment, so every concurrent update
survives; any other value is a plain assignment, a ``Count`` read and
assigned back unchanged included (``saved = kc[k]; ...; kc[k] = saved``
restores ``saved``, as ``collections.Counter`` does).  Single threaded,
``read + (value - read) == value``: the behaviour is exactly that of
``collections.Counter``, except for a sum computed from ``kc[k]`` and
assigned later, after other changes to ``k``: that is applied as the
difference, as ``kc[k] += n`` is.  The costs: ``type(kc[key]) is not int`` (it is an
``int`` subclass: arithmetic, comparisons, hashing, formatting and JSON are
those of the int), reading with ``kc[key]`` allocates a small object and is
slower than ``value(key)``, and a ``Count`` keeps its counter alive while it
is referenced.  Copying or pickling a ``Count`` gives a plain ``int``.
Only ``+`` and ``-`` keep the memory: ``kc[k] = kc[k] * 2`` is a plain
assignment (read-modify-writes other than adding are not made atomic).
``dict(kc)`` reads through ``kc[key]`` too, so its values are ``Count``s;
``kc.snapshot()`` (a ``collections.Counter`` of plain ints) is the way to copy
the counts out.

Alternatives weighed: a plain ``int`` from ``kc[key]`` (then ``+=`` silently
loses updates under threads); a proxy object (not an int: breaks code that
does arithmetic, formatting or JSON with counts); inspecting the caller's
bytecode in ``__setitem__`` (fragile across Python versions, and it cannot
tell ``kc[k] = kc[k] + 1`` written out from a deliberate overwrite).  The
tagged int keeps every single-threaded result identical to
``collections.Counter`` and makes the additive idioms exact.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import operator
import sys
import types
from collections.abc import (
    Callable,
    Hashable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from typing import TYPE_CHECKING, Any, SupportsIndex, cast

from .._common import INT64_MAX, INT64_MIN, instance_state, to_int64
from .._impl import Count as _CCount
from .._impl import make_count as _c_make_count

__all__ = ["Count", "KeyedCounterMixin", "install", "register_kind"]

_MISSING: Any = object()


class _PyCount(int):
    """What ``kc[key]`` returns: the count as an ``int`` that remembers where
    it was read, so that ``kc[key] += n`` is applied as an atomic increment.

    Behaves as the int it equals; ``+`` and ``-`` with an int keep the
    memory, every other operation gives a plain int.  Pickling and copying
    give a plain int.  Only a Count made by ``+`` or ``-`` has ``_tag`` (and
    is applied as a difference by ``kc[key] = value``).
    """

    _src: tuple[Any, Any, int]  # (counter, key, value read)
    _tag: tuple[Any, Any, int]  # the same, set only on a Count made by + or -

    def _derived(self, r: int) -> _PyCount:
        c = _PyCount(r)
        c._src = c._tag = self._src
        return c

    def __add__(self, other: Any) -> Any:
        r = int.__add__(self, other)
        if r is NotImplemented:
            return r
        return self._derived(r)

    __radd__ = __add__

    def __sub__(self, other: Any) -> Any:
        r = int.__sub__(self, other)
        if r is NotImplemented:
            return r
        return self._derived(r)

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, (int(self),))

    def __copy__(self) -> int:
        return int(self)

    def __deepcopy__(self, memo: Any) -> int:
        return int(self)


def _py_make_count(counter: Any, key: Any, v: int) -> int:
    c = _PyCount(v)
    c._src = (counter, key, v)
    return c


# With the C core, Count is its C type (the tag in C fields, one allocation
# per kc[key]); both cores then return it, so that
# ``type(kc[key]) is tallies.keyed.api.Count`` holds for either.  The Python
# class above is the fallback's (TALLIES_PURE=1 or no extension).
Count: Any = _PyCount if _CCount is None else _CCount
_make_count: Any = _py_make_count if _c_make_count is None else _c_make_count


# The views iterate over a copy (see __iter__ below) and, as dict views do
# since Python 3.8, support reversed().
class _KeysView(KeysView[Any]):
    __slots__ = ()

    def __reversed__(self) -> Iterator[Any]:
        return reversed(cast(Any, self)._mapping._keys())  # type: ignore[no-any-return]


class _ValuesView(ValuesView[int]):
    __slots__ = ()

    def __iter__(self) -> Iterator[int]:
        return cast(Any, self)._mapping._iter_values()  # type: ignore[no-any-return]

    def __reversed__(self) -> Iterator[int]:
        return reversed(cast(Any, self)._mapping._values())  # type: ignore[no-any-return]


class _ItemsView(ItemsView[Any, int]):
    __slots__ = ()

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        key, value = item
        v = cast(Any, self)._mapping._get(key, _MISSING)
        return v is not _MISSING and (v is value or v == value)

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        return cast(Any, self)._mapping._iter_items()  # type: ignore[no-any-return]

    def __reversed__(self) -> Iterator[tuple[Any, int]]:
        return reversed(cast(Any, self)._mapping._items())  # type: ignore[no-any-return]


# The KeyedCounter classes (C and pure); tallies.keyed registers the C one,
# which carries the mixin's methods without inheriting from it.
_KINDS: tuple[type, ...] = ()


def register_kind(cls: type) -> None:
    """Make cls count as a KeyedCounter in operators and comparisons."""
    global _KINDS
    _KINDS = (*_KINDS, cls)
    MutableMapping.register(cls)


def _operators(pairs: str) -> tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]:
    """``c op other`` and ``other op c`` for the multiset operator whose pairs
    function is the method ``pairs`` (``_add_pairs`` for ``+``...)."""
    name = pairs[1:-6]  # add, sub, or, and

    def forward(self: Any, other: Any) -> Any:
        return self._binop(other, getattr(self, pairs), False)

    def reflected(self: Any, other: Any) -> Any:
        return self._binop(other, getattr(self, pairs), True)

    forward.__name__, reflected.__name__ = f"__{name}__", f"__r{name}__"
    for f in forward, reflected:
        f.__qualname__ = f"KeyedCounterMixin.{f.__name__}"
    return forward, reflected


def install(cls: type, *, skip: frozenset[str] = frozenset()) -> None:
    """Copy KeyedCounterMixin's methods onto cls (a C type with the core's
    primitives), except the names in skip, and register it."""
    for name, attr in vars(KeyedCounterMixin).items():
        if name in skip or name in {"__module__", "__dict__", "__weakref__", "__slots__"}:
            continue
        setattr(cls, name, attr)
    register_kind(cls)


def _items_of(other: Any) -> list[tuple[Any, Any]]:
    """A list of (key, count) pairs of a KeyedCounter or any mapping."""
    if isinstance(other, _KINDS):
        return cast(Any, other)._items()  # type: ignore[no-any-return]
    return list(other.items())


def _as_counter(other: Any) -> dict[Any, int] | None:
    """The counts of a multiset operand (Counter or KeyedCounter), else None."""
    if isinstance(other, _KINDS):
        return cast(Any, other)._dict()  # type: ignore[no-any-return]
    if isinstance(other, collections.Counter):
        return other
    return None


# The C core combines counters in C (_combine(other, opcode, reflected)) and
# compares them (_equal); these are the opcodes of the *_pairs functions.
_OPCODES = {"_add_pairs": 0, "_sub_pairs": 1, "_or_pairs": 2, "_and_pairs": 3}


# The core's primitives (increment, value, pop, _get, _keys, ...), as the type
# checker sees them: the C type's stub, which both cores implement.
if TYPE_CHECKING:
    from .._tallies import KeyedCounter as _Core
else:
    _Core = object


class KeyedCounterMixin(_Core):
    """KeyedCounter(iterable_or_mapping=None, /, **kwds)

    A thread-safe multiset of int64 counts by hashable key, with the API of
    ``collections.Counter`` where the counts are integers: the same
    constructor forms, ``update``, ``subtract``, ``elements``,
    ``most_common``, ``total``, the multiset operators (``+ - & |``, unary
    ``+ -``, in-place forms, and ``|`` with a plain dict), comparisons,
    ``reversed``, views, ``repr``, pickling, weak references.

    Every single-key update is atomic: ``increment``, ``decrement``,
    ``kc[key] += n`` and ``kc[key] -= n`` (see ``Count``), ``reset(key)``,
    ``pop`` and ``discard`` never lose or double-count a concurrent update.
    Operations over many keys (``update``, ``clear``, ``snapshot``, iteration)
    are made of per-key atomic steps, not one atomic step.  Iteration walks a
    copy of the keys taken at once, so other threads may insert and remove
    keys meanwhile: it never raises "changed size during iteration".  The
    operators and comparisons read each operand once, as such a copy (the
    keys of one instant, each count exact), never key by key while others
    change it.

    Counts are signed 64-bit: an update that would leave the range raises
    ``OverflowError`` and changes nothing.  Counts must be integers (objects
    with ``__index__``): anything else raises ``TypeError``.

    Differences from ``collections.Counter`` (everything else behaves as it
    does on Python 3.10 to 3.13):

    * It is not a ``dict``: ``isinstance(kc, dict)`` is False, so
      ``json.dumps(kc)`` and other code that requires a real dict raise
      ``TypeError``.  ``json.dumps(kc.snapshot())`` serialises it in one
      line (``snapshot()`` is a ``collections.Counter`` of plain ints).
    * Counts are int64 integers (see above); ``Counter`` takes any value.
    * ``kc[key]`` returns a ``Count``, an ``int`` subclass (so
      ``type(kc[key]) is not int``; ``dict(kc)`` holds Counts).
    * Iteration never raises for a concurrent change (see above).
    * Instances have no ``__dict__`` (a subclass may add one).
    """

    __slots__ = ()

    __class_getitem__: Any = classmethod(types.GenericAlias)

    def __init__(self, iterable: Any = None, /, **kwds: SupportsIndex) -> None:
        if iterable is not None or kwds:
            self.update(iterable, **kwds)

    @classmethod
    def fromkeys(cls, iterable: Any, v: Any = None) -> Any:
        # The same refusal as collections.Counter.fromkeys.
        raise NotImplementedError(
            f"{cls.__name__}.fromkeys() is undefined.  Use {cls.__name__}(iterable) instead."
        )

    # ---- reading -----------------------------------------------------------

    def __getitem__(self, key: Hashable) -> int:
        """The count of key as a ``Count`` (0 when absent; nothing inserted)."""
        return _make_count(self, key, self.value(key))  # type: ignore[no-any-return]

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The count of key, or default when absent (nothing inserted)."""
        return self._get(key, default)

    def snapshot(self) -> collections.Counter[Any]:
        """A ``collections.Counter`` of the current counts.

        Each key's count is exact: a value that count really had.  Across keys
        it is not one instant: keys are read one after another, so updates
        made meanwhile to keys already read are not in it, and those made to
        keys not yet read are.  Exact as a whole once writers are quiescent.
        """
        return collections.Counter(self._dict())

    def __iter__(self) -> Iterator[Any]:
        """Iterate over a copy of the keys taken at once (never raises
        "changed size during iteration")."""
        return self._iter_keys()

    def __reversed__(self) -> Iterator[Any]:
        """The keys, last inserted first (a copy taken at once), as reversed()
        of a dict or collections.Counter."""
        return reversed(self._keys())  # type: ignore[no-any-return, unused-ignore]

    def keys(self) -> KeysView[Any]:
        return _KeysView(self)

    def values(self) -> ValuesView[int]:
        return _ValuesView(self)

    def items(self) -> ItemsView[Any, int]:
        return _ItemsView(self)

    def most_common(self, n: Any = None) -> list[tuple[Any, int]]:
        """The n most common keys and counts, most common first (ties in
        insertion order); all of them when n is None.  Any n collections.Counter
        takes gives what it gives: an integer of any size (negative: none; at
        least len(self): all), or anything else heapq.nlargest accepts (1.0 as
        1; other floats raise TypeError, as there)."""
        if n is None:
            return self._most_common(None)
        try:
            k = operator.index(n)
        except TypeError:  # Counter's own path: heapq.nlargest(n, items), errors and all
            return heapq.nlargest(n, self._items(), key=operator.itemgetter(1))
        return self._most_common(max(-1, min(k, sys.maxsize)))

    def elements(self) -> Iterator[Any]:
        """Each key repeated as many times as its count (counts < 1: none)."""
        return itertools.chain.from_iterable(itertools.starmap(itertools.repeat, self._items()))

    def total(self) -> int:
        """The sum of the counts (per-key exact, not one instant)."""
        return self._total()

    # ---- writing -----------------------------------------------------------

    def __setitem__(self, key: Hashable, value: SupportsIndex) -> None:
        tag = getattr(value, "_tag", None) if type(value) is Count else None
        if tag is not None:
            counter, read_key, read = tag
            if counter is self and (read_key is key or read_key == key):
                # kc[key] += n: apply the difference atomically.
                delta = int(cast(int, value)) - read
                if delta == 2**63:  # kc[key] -= INT64_MIN
                    self.decrement(key, INT64_MIN)
                else:
                    self.increment(key, delta)
                return
        self._set(key, value)

    def __delitem__(self, key: Hashable) -> None:
        """Remove key; like collections.Counter, a missing key is no error."""
        self.discard(key)

    def setdefault(self, key: Hashable, default: SupportsIndex = 0) -> int:
        return self._setdefault(key, default)

    def reset(self, key: Hashable = _MISSING) -> Any:
        """``reset(key) -> int``: zero key's count and return what it held (0
        and nothing inserted when absent).  ``reset() -> collections.Counter``:
        zero every count and return what was taken.  Keys stay, at 0 (use
        ``clear`` or ``pop`` to remove them).  Each count is exchanged with 0
        atomically: every concurrent increment is either in what is returned
        or in the counter afterwards, never lost, never counted twice."""
        if key is _MISSING:
            return collections.Counter(dict(self._drain()))
        return self._reset_key(key)

    def popitem(self) -> tuple[Any, int]:
        for key in reversed(self._keys()):
            v = self.pop(key, _MISSING)
            if v is not _MISSING:
                return key, v
        raise KeyError("popitem(): dictionary is empty")

    def _apply(self, pairs: list[tuple[Any, int]]) -> None:
        """Add each (key, n); if one fails, undo those done and re-raise."""
        done: list[tuple[Any, int, bool]] = []
        try:
            for key, n in pairs:
                fresh = key not in self
                self.increment(key, n)
                done.append((key, n, fresh))
        except BaseException:
            for key, n, fresh in reversed(done):
                self.decrement(key, n)
                if fresh:
                    self._prune(key, False)
            raise

    @staticmethod
    def _checked(items: Iterable[tuple[Any, Any]], fname: str, sign: int) -> list[Any]:
        """(key, sign * amount) pairs, every key hashed and every amount an
        int64: raises before anything is changed."""
        pairs: list[tuple[Any, int]] = []
        for key, n in items:
            hash(key)
            v = sign * to_int64(n, fname)
            if not INT64_MIN <= v <= INT64_MAX:
                raise OverflowError(f"{fname}() amount {n!r} is outside the signed 64-bit range")
            pairs.append((key, v))
        return pairs

    def _pairs(self, iterable: Any, kwds: Mapping[str, Any], fname: str, sign: int) -> list[Any]:
        """The validated (key, amount) pairs of update() / subtract()."""
        pairs: list[tuple[Any, int]] = []
        if iterable is not None:
            if isinstance(iterable, Mapping):
                pairs = self._checked(_items_of(iterable), fname, sign)
            else:
                counts: dict[Any, int] = {}
                get = counts.get
                for key in iterable:
                    counts[key] = get(key, 0) + sign
                pairs = self._checked(counts.items(), fname, 1)
        if kwds:
            pairs += self._checked(kwds.items(), fname, sign)
        return pairs

    def update(self, iterable: Any = None, /, **kwds: SupportsIndex) -> None:
        """Count elements of an iterable, or add the counts of a mapping.

        All-or-nothing for bad input: every key is hashed and every amount
        checked first; an amount that would overflow a count undoes the
        call's earlier additions before OverflowError is raised.
        """
        if not kwds and iterable is not None and not isinstance(iterable, Mapping):
            self._count_iter(iterable, 1)  # the core counts the elements
            return
        pairs = self._pairs(iterable, kwds, "update", 1)
        self._apply(pairs)

    def subtract(self, iterable: Any = None, /, **kwds: SupportsIndex) -> None:
        """Like update, but subtracts (counts may go to zero or below)."""
        if not kwds and iterable is not None and not isinstance(iterable, Mapping):
            self._count_iter(iterable, -1)
            return
        pairs = self._pairs(iterable, kwds, "subtract", -1)
        self._apply(pairs)

    def copy(self) -> Any:
        return type(self)(self._dict())

    def __reduce__(self) -> tuple[Any, ...]:
        """The counts, and a subclass instance's ``__dict__`` and ``__slots__``
        values (pickle, copy.copy and copy.deepcopy keep them)."""
        state = instance_state(self, getattr(type(self), "_own_slots", frozenset()))
        if state is not None:
            return (type(self), (self._dict(),), state)
        return (type(self), (self._dict(),))

    def __repr__(self) -> str:
        name = type(self).__name__
        items = self.most_common()
        if not items:
            return f"{name}()"
        return f"{name}({dict(items)!r})"

    # ---- comparisons (collections.Counter's, Python 3.10+) -----------------

    def _cmp(self, other: Any) -> tuple[dict[Any, int], Mapping[Any, int]] | None:
        o = _as_counter(other)
        if o is None:
            return None
        return self._dict(), o

    def __eq__(self, other: object) -> bool:
        """Equal counts, missing counting as zero (collections.Counter's rule);
        with a plain dict: the same keys and counts (dict equality)."""
        equal = getattr(self, "_equal", None)
        if equal is not None and isinstance(other, (*_KINDS, collections.Counter)):
            res = equal(other)
            if res is not NotImplemented:
                return res  # type: ignore[no-any-return]
        pair = self._cmp(other)
        if pair is None:
            if isinstance(other, Mapping):
                return self._dict() == other
            return NotImplemented
        s, o = pair
        if dict.__eq__(s, cast(dict[Any, int], o)) is True:
            return True  # the same keys and counts: equal (fast, in C)
        return all(s.get(e, 0) == o.get(e, 0) for c in (s, o) for e in c)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __le__(self, other: Any) -> bool:
        pair = self._cmp(other)
        if pair is None:
            return NotImplemented
        s, o = pair
        return all(s.get(e, 0) <= o.get(e, 0) for c in (s, o) for e in c)

    def __ge__(self, other: Any) -> bool:
        pair = self._cmp(other)
        if pair is None:
            return NotImplemented
        s, o = pair
        return all(s.get(e, 0) >= o.get(e, 0) for c in (s, o) for e in c)

    def __lt__(self, other: Any) -> bool:
        pair = self._cmp(other)
        if pair is None:
            return NotImplemented
        s, o = pair
        le = all(s.get(e, 0) <= o.get(e, 0) for c in (s, o) for e in c)
        return le and not all(s.get(e, 0) == o.get(e, 0) for c in (s, o) for e in c)

    def __gt__(self, other: Any) -> bool:
        pair = self._cmp(other)
        if pair is None:
            return NotImplemented
        s, o = pair
        ge = all(s.get(e, 0) >= o.get(e, 0) for c in (s, o) for e in c)
        return ge and not all(s.get(e, 0) == o.get(e, 0) for c in (s, o) for e in c)

    __hash__ = None  # type: ignore[assignment]

    # ---- multiset operators (new counters; keep positive counts) -----------

    def _result(self, pairs: Any) -> Any:
        result = type(self)()
        result._set_many(pairs)
        return result

    # Each returns the result's counts as a dict, in collections.Counter's
    # order: the left operand's keys first, then the right one's new keys.
    @staticmethod
    def _add_pairs(s: Mapping[Any, int], o: Mapping[Any, int]) -> dict[Any, int]:
        get = o.get
        out = {e: n for e, c in s.items() if (n := c + get(e, 0)) > 0}
        out.update({e: c for e, c in o.items() if c > 0 and e not in s})
        return out

    @staticmethod
    def _sub_pairs(s: Mapping[Any, int], o: Mapping[Any, int]) -> dict[Any, int]:
        get = o.get
        out = {e: n for e, c in s.items() if (n := c - get(e, 0)) > 0}
        out.update({e: 0 - c for e, c in o.items() if c < 0 and e not in s})
        return out

    @staticmethod
    def _or_pairs(s: Mapping[Any, int], o: Mapping[Any, int]) -> dict[Any, int]:
        get = o.get
        out = {e: n for e, c in s.items() if (n := c if c >= (oc := get(e, 0)) else oc) > 0}
        out.update({e: c for e, c in o.items() if c > 0 and e not in s})
        return out

    @staticmethod
    def _and_pairs(s: Mapping[Any, int], o: Mapping[Any, int]) -> dict[Any, int]:
        get = o.get
        return {e: n for e, c in s.items() if (n := c if c <= (oc := get(e, 0)) else oc) > 0}

    def _binop(self, other: Any, op: Any, reflected: bool) -> Any:
        combine = getattr(self, "_combine", None)
        if combine is not None and isinstance(other, (*_KINDS, collections.Counter)):
            res = combine(other, _OPCODES[op.__name__], reflected)
            if res is not NotImplemented:
                return res
        o = _as_counter(other)
        if o is None:
            if op is _OR_PAIRS and isinstance(other, dict):
                # collections.Counter leaves `c | d` with a plain dict d to the
                # dict's own | (a dict: d's entries over c's): so does this.
                snapshot = self.snapshot()
                return other | snapshot if reflected else snapshot | other
            return NotImplemented
        s = self._dict()
        return self._result(op(o, s) if reflected else op(s, o))

    __add__, __radd__ = _operators("_add_pairs")
    __sub__, __rsub__ = _operators("_sub_pairs")
    __or__, __ror__ = _operators("_or_pairs")
    __and__, __rand__ = _operators("_and_pairs")

    def __pos__(self) -> Any:
        return self._binop(collections.Counter(), self._add_pairs, False)  # counts > 0

    def __neg__(self) -> Any:
        return self._binop(collections.Counter(), self._sub_pairs, True)  # 0 - counts < 0

    # ---- in-place operators: per-key atomic increments, then keep positive --

    def _keep_positive(self) -> Any:
        for key, count in self._items():
            if not count > 0:
                self._prune(key, True)  # a concurrent increment is kept, not lost
        return self

    def __iadd__(self, other: Any) -> Any:
        self._apply(self._checked(_items_of(other), "+=", 1))
        return self._keep_positive()

    def __isub__(self, other: Any) -> Any:
        self._apply(self._checked(_items_of(other), "-=", -1))
        return self._keep_positive()

    def __ior__(self, other: Any) -> Any:
        # Raise a count to the other's where that is larger; applied as an
        # increment by the difference, so a concurrent update is not lost.
        for key, other_count in _items_of(other):
            count = self.value(key)
            if other_count > count:
                self.increment(key, other_count - count)
        return self._keep_positive()

    def __iand__(self, other: Any) -> Any:
        # A KeyedCounter operand is read once (one snapshot, a missing key
        # counting 0), not key by key while other threads change it.
        counts = cast(Any, other)._dict() if isinstance(other, _KINDS) else None
        for key, count in self._items():
            other_count = counts.get(key, 0) if counts is not None else other[key]
            if other_count < count:
                self.decrement(key, count - other_count)
        return self._keep_positive()


_OR_PAIRS = KeyedCounterMixin._or_pairs
register_kind(KeyedCounterMixin)
