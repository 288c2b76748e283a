import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.serving.batching import Batcher

WEIGHTS = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)


def rowwise(x: np.ndarray) -> np.ndarray:
    """A forward pass whose row i depends on input row i only, slow enough to queue behind."""
    time.sleep(0.002)
    return np.tanh(x @ WEIGHTS)


@pytest.fixture
def passes() -> list[tuple[int, int]]:
    """(rows, requests) of every pass of a batcher built with `on_pass=recorder(passes)`."""
    return []


def recorder(seen: list[tuple[int, int]]) -> Callable[[int, int], None]:
    return lambda rows, requests: seen.append((rows, requests))


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


async def _submit_all(
    batcher: Batcher, requests: list[np.ndarray], delays: list[float]
) -> list[np.ndarray]:
    async def one(rows: np.ndarray, delay: float) -> np.ndarray:
        await asyncio.sleep(delay)
        return await batcher.submit(rows)

    return await asyncio.gather(*(one(r, d) for r, d in zip(requests, delays, strict=True)))


class TestEachCallerGetsItsOwnRows:
    @settings(max_examples=25, deadline=None)
    @given(
        sizes=st.lists(st.integers(1, 12), min_size=1, max_size=24),
        delays=st.lists(st.sampled_from([0.0, 0.0005, 0.001, 0.003]), min_size=24, max_size=24),
        max_rows=st.integers(1, 40),
        seed=st.integers(0, 2**16),
    )
    def test_concurrent_requests_match_unbatched_predictions(
        self,
        executor: ThreadPoolExecutor,
        sizes: list[int],
        delays: list[float],
        max_rows: int,
        seed: int,
    ) -> None:
        rng = np.random.default_rng(seed)
        requests = [rng.normal(size=(n, 4)).astype(np.float32) for n in sizes]
        seen: list[tuple[int, int]] = []
        batcher = Batcher(rowwise, max_rows=max_rows, executor=executor, on_pass=recorder(seen))
        answers = asyncio.run(_submit_all(batcher, requests, delays[: len(sizes)]))
        for rows, answer in zip(requests, answers, strict=True):
            np.testing.assert_allclose(answer, np.tanh(rows @ WEIGHTS), rtol=1e-5, atol=1e-6)
        assert sum(count for _, count in seen) == len(requests)
        assert sum(rows for rows, _ in seen) == sum(sizes)
        for rows, count in seen:
            assert count == 1 or rows <= max_rows
        assert not batcher.busy

    def test_a_burst_is_grouped_into_few_passes(
        self, executor: ThreadPoolExecutor, passes: list[tuple[int, int]]
    ) -> None:
        rng = np.random.default_rng(1)
        requests = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(30)]
        batcher = Batcher(rowwise, on_pass=recorder(passes), max_rows=512, executor=executor)
        answers = asyncio.run(_submit_all(batcher, requests, [0.0] * 30))
        for rows, answer in zip(requests, answers, strict=True):
            np.testing.assert_allclose(answer, np.tanh(rows @ WEIGHTS), rtol=1e-5, atol=1e-6)
        # All 30 reach the batcher before the pass the first one started gets to run.
        assert passes == [(30, 30)]


class TestAdaptive:
    def test_a_lone_request_waits_for_nobody(
        self, executor: ThreadPoolExecutor, passes: list[tuple[int, int]]
    ) -> None:
        batcher = Batcher(
            rowwise, on_pass=recorder(passes), max_rows=512, max_wait_s=5.0, executor=executor
        )
        start = time.perf_counter()
        asyncio.run(batcher.submit(np.ones((2, 4), dtype=np.float32)))
        assert time.perf_counter() - start < 1.0
        assert passes == [(2, 1)]

    def test_max_wait_holds_a_queue_until_it_fills_max_rows(
        self, executor: ThreadPoolExecutor, passes: list[tuple[int, int]]
    ) -> None:
        batcher = Batcher(
            rowwise, on_pass=recorder(passes), max_rows=4, max_wait_s=0.5, executor=executor
        )
        rows = np.ones((1, 4), dtype=np.float32)
        # One runs at once; of the rest, the first queue fills 4 rows and runs without waiting;
        # the last one is held for company until max_wait runs out.
        delays = [0.0, 0.0005, 0.0005, 0.0005, 0.0005, 0.0005]
        start = time.perf_counter()
        asyncio.run(_submit_all(batcher, [rows] * 6, delays))
        assert passes[:2] == [(1, 1), (4, 4)]
        assert passes[2:] == [(1, 1)]
        assert time.perf_counter() - start >= 0.45

    def test_max_rows_splits_a_queue_but_never_a_request(
        self, executor: ThreadPoolExecutor, passes: list[tuple[int, int]]
    ) -> None:
        batcher = Batcher(rowwise, on_pass=recorder(passes), max_rows=5, executor=executor)
        sizes = [1, 3, 2, 7, 2]  # all queued before the first pass: 1+3, then 2, 7, 2
        requests = [np.full((n, 4), n, dtype=np.float32) for n in sizes]
        answers = asyncio.run(_submit_all(batcher, requests, [0.0] * 5))
        assert [len(a) for a in answers] == sizes
        assert passes == [(4, 2), (2, 1), (7, 1), (2, 1)]

    def test_cheap_passes_run_at_once_on_the_loop(self, passes: list[tuple[int, int]]) -> None:
        batcher = Batcher(rowwise, on_pass=recorder(passes), executor=None)
        requests = [np.ones((1, 4), dtype=np.float32)] * 5
        answers = asyncio.run(_submit_all(batcher, requests, [0.0] * 5))
        assert passes == [(1, 1)] * 5 and len(answers) == 5

    def test_disabled_runs_every_request_alone(
        self, executor: ThreadPoolExecutor, passes: list[tuple[int, int]]
    ) -> None:
        batcher = Batcher(rowwise, on_pass=recorder(passes), enabled=False, executor=executor)
        requests = [np.ones((1, 4), dtype=np.float32)] * 10
        asyncio.run(_submit_all(batcher, requests, [0.0] * 10))
        assert passes == [(1, 1)] * 10

    def test_a_failing_pass_fails_its_callers_and_the_batcher_recovers(
        self, executor: ThreadPoolExecutor
    ) -> None:
        calls = 0

        def flaky(x: np.ndarray) -> np.ndarray:
            nonlocal calls
            calls += 1
            time.sleep(0.002)
            if calls == 1:
                raise RuntimeError("boom")
            return x

        batcher = Batcher(flaky, executor=executor)

        async def run() -> list[object]:
            rows = np.ones((1, 4), dtype=np.float32)
            first = await asyncio.gather(
                *(batcher.submit(rows) for _ in range(5)), return_exceptions=True
            )
            later = await batcher.submit(rows)
            return [*first, later]

        results = asyncio.run(run())
        assert all(isinstance(r, RuntimeError) for r in results[:5])  # one shared pass failed
        assert isinstance(results[5], np.ndarray) and not batcher.busy

    def test_listener_errors_do_not_fail_predictions(self) -> None:
        def broken_hook(rows: int, requests: int) -> None:
            raise ValueError("metrics backend down")

        out = asyncio.run(Batcher(np.negative, on_pass=broken_hook).submit(np.ones((1, 2))))
        assert out.tolist() == [[-1.0, -1.0]]
