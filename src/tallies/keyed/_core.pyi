"""Types of tallies.keyed._core, the C core under ``tallies.KeyedCounter``.

``KeyedCounter`` here is the very class users get as ``tallies.KeyedCounter``:
``tallies.keyed`` installs the collections.Counter API (``tallies.keyed.api``) on
it at import.  Each key's count lives in a 32-byte int64 cell; counting an
existing key is one dict lookup and one checked add.
"""

from collections.abc import Hashable
from typing import Any, SupportsIndex

FREE_THREADED_BUILD: int
"""1 when this extension was compiled for a free-threaded (no-GIL) CPython."""
CELL_SIZE: int
"""Bytes per key's cell object (on top of the dict entry)."""

def _register_count(cls: type[int], /) -> None:
    """Adopt tallies.keyed.api.Count as what kc[key] returns (internal)."""

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
    def __len__(self) -> int: ...
    def __contains__(self, key: object) -> bool: ...
    def __getitem__(self, key: Hashable) -> int: ...
    def __setitem__(self, key: Hashable, value: SupportsIndex) -> None: ...
    def __delitem__(self, key: Hashable) -> None: ...
