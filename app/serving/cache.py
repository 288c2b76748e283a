"""A bounded LRU of loaded versions, keyed by the immutable version id."""

import threading
from collections import OrderedDict
from collections.abc import Callable

from app.serving.predictor import Predictor


class ModelCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Predictor] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.hits = 0
        self.misses = 0
        self.loads = 0
        self.evictions = 0

    def get_or_load(self, key: str, load: Callable[[], Predictor]) -> Predictor:
        """The cached predictor for `key`, loading it once even under concurrent first calls."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                found = self._entries.get(key)
                if found is not None:
                    self._entries.move_to_end(key)
                    return found
            predictor = load()
            with self._lock:
                self.loads += 1
                self._entries[key] = predictor
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
                    self.evictions += 1
                self._loading.pop(key, None)
            return predictor

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries
