"""Where tallies 0.1.0's pure-Python KeyedCounter lived; kept so its pickles load.

The fallback is in ``tallies._pure.keyed`` now.  Pickles written by 0.1.0 name
``tallies._pure_keyed.KeyedCounter``; this alias resolves them.
"""

from ._pure.keyed import KeyedCounter

__all__ = ["KeyedCounter"]
