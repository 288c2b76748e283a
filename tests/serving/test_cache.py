import threading
import time
from dataclasses import dataclass

import pytest

from app.serving.cache import ModelCache


@dataclass
class Entry:
    key: str
    memory_bytes: int = 100


class TestLoadOnce:
    def test_a_burst_of_threads_loads_a_version_once(self) -> None:
        cache: ModelCache[Entry] = ModelCache(max_entries=4)
        loads: list[str] = []
        barrier = threading.Barrier(16)
        results: list[Entry] = []

        def load() -> Entry:
            loads.append("v1")
            time.sleep(0.05)  # long enough for every thread to arrive while it loads
            return Entry("v1")

        def ask() -> None:
            barrier.wait()
            results.append(cache.get_or_load("v1", load))

        threads = [threading.Thread(target=ask) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert loads == ["v1"]
        assert len(results) == 16 and all(r is results[0] for r in results)
        stats = cache.stats()
        assert stats["loads"] == 1 and stats["hits"] + stats["misses"] == 16
        assert stats["misses"] >= 1

    def test_a_failed_load_lets_the_next_caller_retry(self) -> None:
        cache: ModelCache[Entry] = ModelCache(max_entries=2)

        def broken() -> Entry:
            raise OSError("database went away")

        with pytest.raises(OSError):
            cache.get_or_load("v1", broken)
        assert cache.get_or_load("v1", lambda: Entry("v1")).key == "v1"
        assert cache.stats()["loads"] == 1


class TestBounds:
    def test_evicts_least_recently_used_by_count(self) -> None:
        cache: ModelCache[Entry] = ModelCache(max_entries=2)
        cache.get_or_load("a", lambda: Entry("a"))
        cache.get_or_load("b", lambda: Entry("b"))
        assert cache.get("a") is not None  # a is now the most recently used
        cache.get_or_load("c", lambda: Entry("c"))
        assert cache.keys() == ["a", "c"]
        assert cache.stats()["evictions"] == 1

    def test_evicts_least_recently_used_by_bytes(self) -> None:
        cache: ModelCache[Entry] = ModelCache(max_entries=10, max_bytes=250)
        cache.get_or_load("a", lambda: Entry("a", 100))
        cache.get_or_load("b", lambda: Entry("b", 100))
        cache.get("a")
        cache.get_or_load("c", lambda: Entry("c", 100))  # 300 bytes > 250: b goes
        assert cache.keys() == ["a", "c"]
        assert cache.stats()["bytes"] == 200
        cache.get_or_load("d", lambda: Entry("d", 200))  # 400 > 250: a, then c go
        assert cache.keys() == ["d"]
        assert cache.stats() | {} == {
            "hits": 1,
            "misses": 4,
            "loads": 4,
            "evictions": 3,
            "entries": 1,
            "bytes": 200,
            "max_entries": 10,
            "max_bytes": 250,
        }

    def test_a_version_larger_than_the_byte_bound_is_kept_alone(self) -> None:
        cache: ModelCache[Entry] = ModelCache(max_entries=10, max_bytes=50)
        cache.get_or_load("a", lambda: Entry("a", 10))
        cache.get_or_load("big", lambda: Entry("big", 80))
        assert cache.keys() == ["big"]
        assert cache.get("big") is not None

    @pytest.mark.parametrize("entries, size", [(0, None), (1, 0)])
    def test_bounds_must_be_positive(self, entries: int, size: int | None) -> None:
        with pytest.raises(ValueError):
            ModelCache(max_entries=entries, max_bytes=size)
