"""The fallback's KeyedCounter: the collections.Counter API (``api.py``) over
the pure-Python core (``tallies._pure.keyed.KeyedCore``).

``tallies.keyed`` uses it where the C core is not in use (``tallies._impl``
decides).  It exists either way: pickles the fallback writes (and tallies
0.1.0 wrote) name it ``tallies._pure_keyed.KeyedCounter``, and they load
wherever tallies is installed.
"""

from __future__ import annotations

from .._pure.keyed import KeyedCore
from .api import KeyedCounterMixin

__all__ = ["KeyedCounter"]


class KeyedCounter(KeyedCounterMixin, KeyedCore):
    __slots__ = ()
    __module__ = "tallies._pure_keyed"  # 0.1.0 pickles name it so
    __doc__ = KeyedCounterMixin.__doc__
