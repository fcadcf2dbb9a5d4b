"""Types of tallies.keyed._core, the C core under ``tallies.KeyedCounter``.

``KeyedCounter`` here is the very class users get as ``tallies.KeyedCounter``:
``tallies.keyed`` installs the collections.Counter API (``tallies.keyed.api``) on
it at import.  Each key's int64 count is stored inline in the counter's own
hash table (next to the key); counting an existing key is one probe and one
checked add.
"""

from collections.abc import Hashable
from typing import Any, SupportsIndex

FREE_THREADED_BUILD: int
"""1 when this extension was compiled for a free-threaded (no-GIL) CPython."""
ENTRY_SIZE: int
"""Bytes per entry of a table whose keys are all str (other keys: 8 more, for
the hash); the index adds 1 to 8 bytes per slot, as a dict's does."""
SHARES_CONTENDED: int
"""1 on free-threaded 3.13: a KeyedCounter that threads update at once stops
being reference counted (_c/_shared.h, _c/keyed.c)."""
HOT_SLOTS: int
"""Hot cells a contended key inflates into (free-threaded builds; 0 with a GIL)."""

def _shared_remaining() -> int:
    """How many more KeyedCounters may become immortal (0 where not 3.13t)."""

def _shared_bytes() -> tuple[int, int]:
    """(kept, budget): bytes of the tables of the immortal KeyedCounters, and the
    budget past which no more become immortal ((0, 0) where not 3.13t)."""

def _hot_keys(kc: KeyedCounter, /) -> int:
    """How many keys of kc's table have hot cells (always 0 with a GIL)."""

class Count(int):
    """What kc[key] returns: an int that remembers (counter, key, value read)."""

    @property
    def _tag(self) -> tuple[Any, Any, int]: ...

def _make_count(counter: Any, key: Any, v: int, /) -> Count:
    """A Count of v read from counter's key (internal)."""

class KeyedCounter:
    """Exact int64 counts by key.  Every method is atomic for its key."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any: ...
    def increment(self, key: Hashable, /, n: SupportsIndex = 1) -> None:
        """Add ``n`` (default 1) to key's count, inserting the key at 0 first
        when absent.  Overflow raises OverflowError and changes nothing."""
    def decrement(self, key: Hashable, /, n: SupportsIndex = 1) -> None:
        """Subtract ``n`` (default 1) from key's count."""
    def value(self, key: Hashable, /) -> int:
        """Key's count; 0 when absent (the key is not inserted)."""
    def pop(self, key: Hashable, default: Any = ..., /) -> Any:
        """Remove key and return its final count (KeyError or default when
        absent).  A concurrent increment of key lands in the returned count
        or in a fresh entry, never in neither."""
    def discard(self, key: Hashable, /) -> None:
        """Remove key if present."""
    def clear(self) -> None:
        """Remove every key (key by key)."""
    def _get(self, key: Hashable, default: Any, /) -> Any: ...
    def _setdefault(self, key: Hashable, v: SupportsIndex, /) -> int: ...
    def _set(self, key: Hashable, v: SupportsIndex, /) -> None: ...
    def _reset_key(self, key: Hashable, /) -> int: ...
    def _prune(self, key: Hashable, nonpositive: bool, /) -> bool: ...
    def _keys(self) -> list[Any]: ...
    def _items(self) -> list[tuple[Any, int]]: ...
    def _drain(self) -> list[tuple[Any, int]]: ...
    def _values(self) -> list[int]: ...
    def _total(self) -> int: ...
    def _most_common(self, n: int | None, /) -> list[tuple[Any, int]]: ...
    def __sizeof__(self) -> int: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object) -> bool: ...
    def __getitem__(self, key: Hashable) -> int: ...
    def __setitem__(self, key: Hashable, value: SupportsIndex) -> None: ...
    def __delitem__(self, key: Hashable) -> None: ...
