"""The pickled name of the pure-Python KeyedCounter: ``tallies._pure_keyed.KeyedCounter``.

The class is ``tallies.keyed.fallback.KeyedCounter``; it keeps the dotted name
it had in tallies 0.1.0, so pickles written by either version load in both.
"""

from .keyed.fallback import KeyedCounter

__all__ = ["KeyedCounter"]
