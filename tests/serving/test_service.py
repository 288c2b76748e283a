import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.db.session import Database
from app.errors import Invalid, NotFound
from app.services.predictions import BatchingOptions, PredictionService
from app.serving.cache import ModelCache
from app.serving.predictor import Predictor


@pytest.fixture
def database(tmp_path: Path, trained_template: Path) -> Iterator[Database]:
    shutil.copy(trained_template, tmp_path / "graft.db")
    db = Database(f"sqlite:///{tmp_path / 'graft.db'}")
    yield db
    db.dispose()


def _service(database: Database, **options: object) -> PredictionService:
    cache: ModelCache[Predictor] = ModelCache(max_entries=4)
    return PredictionService(database, cache, BatchingOptions(**options))  # type: ignore[arg-type]


class TestPredictionService:
    def test_a_burst_loads_once_and_each_caller_gets_its_own_rows(self, database: Database) -> None:
        rng = np.random.default_rng(7)
        requests = [
            (rng.normal(loc=4.0, scale=2.0, size=(int(rng.integers(1, 9)), 4))).round(2).tolist()
            for _ in range(40)
        ]
        passes: list[tuple[int, int]] = []
        # inline_max_work=0: every pass on a thread, so concurrent requests do queue up.
        batched = _service(database, inline_max_work=0)
        alone = _service(database, enabled=False)

        async def run(service: PredictionService) -> list[dict[str, object]]:
            resolved = await service.resolve("iris-source")
            results = await asyncio.gather(
                *(service.predict(resolved, instances=rows) for rows in requests)
            )
            return [r.as_dict() for r in results]

        batched.on_pass = lambda name, version, rows, count: passes.append((rows, count))
        together = asyncio.run(run(batched))
        separately = asyncio.run(run(alone))
        assert batched.cache.stats()["loads"] == 1
        assert max(count for _, count in passes) > 1  # the burst was really batched
        for mine, reference, rows in zip(together, separately, requests, strict=True):
            assert mine["predictions"] == reference["predictions"]
            assert len(mine["predictions"]) == len(rows)  # type: ignore[arg-type]
            np.testing.assert_allclose(
                mine["probabilities"], reference["probabilities"], rtol=1e-5, atol=1e-6
            )
        batched.close()
        alone.close()

    def test_resolution_errors_are_precise(self, database: Database) -> None:
        service = _service(database)

        async def resolve(name: str, **selector: object) -> object:
            return await service.resolve(name, **selector)  # type: ignore[arg-type]

        cases = [
            (("nope", {}), "model_not_found"),
            (("iris-source", {"version": 9}), "version_not_found"),
            (("iris-source", {"alias": "canary"}), "alias_not_found"),
        ]
        for (name, selector), code in cases:
            with pytest.raises(NotFound) as caught:
                asyncio.run(resolve(name, **selector))
            assert caught.value.code == code
        resolved = asyncio.run(service.resolve("iris-source", version=1))
        assert (resolved.name, resolved.version) == ("iris-source", 1)
        with pytest.raises(Invalid):
            asyncio.run(service.predict(resolved, instances=[]))
        service.close()
