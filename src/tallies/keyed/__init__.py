"""tallies.KeyedCounter: exact counts by key from many threads.

    >>> from tallies import KeyedCounter
    >>> kc = KeyedCounter("abracadabra")
    >>> kc.increment("z")
    >>> kc["a"] += 2
    >>> kc.most_common(2)
    [('a', 7), ('b', 2)]

``collections.Counter``'s API wherever the counts are integers, with every
single-key update atomic (see ``tallies.keyed.api`` for how ``kc[key] += n``
stays exact under threads).  It is not a ``dict``: ``KeyedCounter.__doc__``
lists what differs from ``collections.Counter`` (``json.dumps(kc.snapshot())``
serialises it).  The per-key primitives are C (``_c/keyed.c``) or the
pure-Python ``tallies._pure.keyed``, as ``tallies._impl`` decides; both run the
same Python code for the ``collections.Counter`` API (``api.py``; the
fallback's class is ``fallback.py``).

Free-threading: with ``Py_GIL_DISABLED`` the C core's table (``_c/_ktable.h``,
read its header comment) looks keys up without a lock, adds to counts
atomically in place, and inserts, removes and resizes under a mutex with a
protocol that loses and doubles nothing; a key that threads update at the
same instant inflates into per-CPU hot cells, and keys inserted one after
another never share a cache line.  On 3.13t a KeyedCounter that threads
update at once stops being reference counted (it becomes immortal: never
freed; ``_c/_shared.h``).  The table is stressed from pthreads under
ThreadSanitizer (``tests/c/stress_keyed.c``, with mutants it must catch), and
the whole suite, with free-threaded stresses of its own (``tests/ft``), runs on
a free-threaded CPython 3.13 built by ``scripts/free-threaded``, and under
ThreadSanitizer by ``scripts/ft-tsan``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._impl import IMPLEMENTATION, KeyedCore
from .api import Count, install

__all__ = ["IMPLEMENTATION", "Count", "KeyedCounter"]

if TYPE_CHECKING or IMPLEMENTATION != "c":
    from .fallback import KeyedCounter
else:
    # The C type itself is the class (not a Python subclass of it), so that
    # kc.increment(key) takes CPython's fast path for C methods; the
    # collections.Counter API is installed on it.  Its C __getitem__,
    # __setitem__ and __delitem__ stay (kc[key] makes the C Count).
    KeyedCounter = KeyedCore
    install(KeyedCounter, skip=frozenset({"__getitem__", "__setitem__", "__delitem__"}))
