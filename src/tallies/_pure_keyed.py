"""The pickled name of the pure-Python KeyedCounter: ``tallies._pure_keyed.KeyedCounter``.

The fallback lives in ``tallies._pure.keyed``; its class keeps the dotted name
it had in tallies 0.1.0, so pickles written by either version load in both.
"""

from ._pure.keyed import KeyedCounter

__all__ = ["KeyedCounter"]
