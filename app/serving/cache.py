"""A bounded LRU of loaded versions, keyed by the immutable version id.

Versions never change once registered, so an entry never goes stale: it only leaves when the
bounds (entry count and bytes) need room, least recently used first.
"""

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar


class Sized(Protocol):
    """What the cache holds: anything that says how much memory it takes."""

    @property
    def memory_bytes(self) -> int: ...


T = TypeVar("T", bound=Sized)


class ModelCache(Generic[T]):
    def __init__(self, max_entries: int, max_bytes: int | None = None) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, T] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.hits = 0
        self.misses = 0
        self.loads = 0
        self.evictions = 0

    def get(self, key: str) -> T | None:
        """The entry for `key` if it is loaded (a hit), else None; never loads."""
        with self._lock:
            return self._hit(key)

    def _hit(self, key: str) -> T | None:
        # The caller holds self._lock.
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return found

    def get_or_load(self, key: str, load: Callable[[], T]) -> T:
        """The entry for `key`, loading it once even when many threads ask for it together.

        Callers that arrive while another thread loads the same key wait for that load
        instead of starting their own; a failed load lets the next caller try again.
        """
        with self._lock:
            found = self._hit(key)
            if found is not None:
                return found
            self.misses += 1
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                found = self._entries.get(key)
                if found is not None:
                    self._entries.move_to_end(key)
                    return found
            try:
                entry = load()
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                self.loads += 1
                self._entries[key] = entry
                self._bytes += entry.memory_bytes
                self._evict(keep=key)
                self._loading.pop(key, None)
            return entry

    def _evict(self, keep: str) -> None:
        # The newest entry always stays, even alone over the byte bound: serving it from
        # memory beats reloading it on every request.
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_entries
            or (self.max_bytes is not None and self._bytes > self.max_bytes)
        ):
            oldest_key = next(iter(self._entries))
            if oldest_key == keep:
                break
            oldest = self._entries.pop(oldest_key)
            self._bytes -= oldest.memory_bytes
            self.evictions += 1

    def stats(self) -> dict[str, Any]:
        """Counters and sizes, for metrics: hits, misses, loads, evictions, entries, bytes."""
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "loads": self.loads,
                "evictions": self.evictions,
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_entries": self.max_entries,
                "max_bytes": self.max_bytes,
            }

    def keys(self) -> list[str]:
        """Loaded keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries
