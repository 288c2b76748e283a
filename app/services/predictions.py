"""Prediction use case: resolve the version, fetch its predictor, check inputs, predict.

Every protocol (the /v1 predict route, an Open Inference Protocol route) goes through one
`PredictionService`: `resolve` a name (and optional version or alias) to an immutable version,
then `predict` rows in signature order (`instances`) or keyed by name (`records`).

Longer than most: the hot path's steps (resolve, load once, check rows, batch, encode)
are kept beside each other because their costs are tuned together (README, serving).
"""

import asyncio
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from app.db.models import ModelVersion
from app.db.session import Database
from app.errors import Invalid
from app.ml.errors import DataError
from app.schemas.predictions import too_many_rows
from app.services import registry as registry_service
from app.serving.batching import Batcher
from app.serving.cache import ModelCache
from app.serving.predictor import Prediction, Predictor, VersionSpec


@dataclass(frozen=True)
class ResolvedVersion:
    """A version picked for one request: its immutable id (the cache key) and its number."""

    id: str
    name: str
    version: int


@dataclass(frozen=True)
class BatchingOptions:
    enabled: bool = True
    max_rows: int = 512
    max_wait_ms: float = 0.0
    # Passes whose rows x parameters stay at or under this run on the event loop.
    inline_max_work: int = 500_000


# Off the event loop, rows become a matrix this many values at a time: NumPy holds the GIL
# while it turns a list of lists into an array (a quarter of a second for 3 million values
# on a slow core), and the loop cannot run until it lets go. 32,768 values take about 3 ms.
STEP_VALUES = 32_768


def version_spec(version: ModelVersion) -> VersionSpec:
    return VersionSpec(
        name=version.model_name,
        version=version.version,
        task=version.task,
        inputs=version.signature["inputs"],
        target=version.signature.get("target", ""),
        architecture=version.architecture,
        preprocessing=version.preprocessing,
    )


class PredictionService:
    """Resolves versions, keeps their predictors loaded and batches their forward passes."""

    def __init__(
        self,
        database: Database,
        cache: ModelCache[Predictor],
        batching: BatchingOptions | None = None,
        *,
        max_rows: int | None = None,
    ) -> None:
        self.database = database
        self.cache = cache
        self.batching = batching or BatchingOptions()
        # Most rows in one request (GRAFT_MAX_PREDICT_ROWS); None: no limit.
        self.max_rows = max_rows
        self._lookup = registry_service.VersionLookup(database)
        self.registry_view = registry_service.RegistryView(database)
        self._executor = ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="graft-forward"
        )
        self._batchers: dict[str, tuple[Predictor, Batcher]] = {}
        # Told (model name, version, rows, requests) after every forward pass: batch metrics.
        self.on_pass: Callable[[str, int, int, int], None] | None = None
        self._loads: dict[str, asyncio.Future[Predictor]] = {}

    async def resolve(
        self, name: str, *, version: int | None = None, alias: str | None = None
    ) -> ResolvedVersion:
        """The version asked for: by number, by alias, else `production`, else the latest.

        Raises NotFound (model_not_found, version_not_found, alias_not_found), and
        Conflict (alias_mismatch) when both are given and the alias points elsewhere.
        """
        if version is not None and alias is not None:
            found_by_alias = await self.resolve(name, alias=alias)
            registry_service.check_alias_target(name, alias, found_by_alias.version, version)
            return found_by_alias
        view = self.registry_view
        found = view.get(name, version, alias)
        if found is None:
            generation = view.generation
            if self._lookup.is_sqlite:
                found = self._lookup.find(name, version, alias)
            else:
                found = await asyncio.to_thread(self._lookup.find, name, version, alias)
            if found is not None:
                view.remember(generation, (name, version, alias), found)
        if found is None:
            # Rare: work out which of model, version or alias is missing, for the 404.
            return await asyncio.to_thread(self._resolve_slowly, name, version, alias)
        return ResolvedVersion(id=found[0], name=name, version=found[1])

    def _resolve_slowly(self, name: str, version: int | None, alias: str | None) -> ResolvedVersion:
        with self.database.read_scope() as session:
            row = registry_service.resolve(session, name, version=version, alias=alias)
            return ResolvedVersion(id=row.id, name=row.model_name, version=row.version)

    async def predictor(self, resolved: ResolvedVersion) -> Predictor:
        """The loaded predictor; the first requests of a version share one load."""
        found = self.cache.get(resolved.id)
        if found is not None:
            return found
        pending = self._loads.get(resolved.id)
        if pending is None:
            pending = asyncio.ensure_future(
                asyncio.to_thread(self.cache.get_or_load, resolved.id, lambda: self._load(resolved))
            )
            self._loads[resolved.id] = pending
            pending.add_done_callback(lambda _: self._loads.pop(resolved.id, None))
        return await asyncio.shield(pending)

    def load_predictor(self, resolved: ResolvedVersion) -> Predictor:
        """The loaded predictor, for callers outside an event loop (loads in this thread)."""
        return self.cache.get_or_load(resolved.id, lambda: self._load(resolved))

    def _load(self, resolved: ResolvedVersion) -> Predictor:
        with self.database.read_scope() as session:
            row = registry_service.get_version(
                session, resolved.name, resolved.version, with_weights=True
            )
            return Predictor.load(version_spec(row), row.weights)

    async def predict(
        self,
        resolved: ResolvedVersion,
        *,
        instances: list[Any] | None = None,
        records: list[Any] | None = None,
        booleans_possible: bool = True,
        off_loop: bool = False,
    ) -> Prediction:
        """Predictions for rows in signature order (`instances`) or keyed by name (`records`).

        Raises Invalid (422) with a detail naming the row and feature when an input does not
        fit the version's signature, TooLarge (413 too_many_rows) for more rows than
        `max_rows`. `booleans_possible=False` promises that no value is a boolean, which
        spares the fast path a scan (see Predictor.features_from_instances).

        `off_loop=True` (for large requests) checks and encodes the rows, and turns the
        outputs into the response's values, on a worker thread and in steps (see
        STEP_VALUES), so that the event loop keeps serving other requests meanwhile.
        """
        if (instances is None) == (records is None):
            raise ValueError("give exactly one of instances or records")
        rows = instances if instances is not None else records
        if not rows:
            raise Invalid("no_rows", "no rows: expected at least one instance or record")
        self._check_rows(len(rows))
        predictor = await self.predictor(resolved)
        if off_loop:
            encoded = await asyncio.to_thread(
                _encoded_in_steps, predictor, instances, records, booleans_possible
            )
        else:
            encoded = _encoded(predictor, instances, records, booleans_possible)
        return await self._forward(resolved, predictor, encoded, off_loop)

    async def predict_matrix(
        self, resolved: ResolvedVersion, values: np.ndarray, *, off_loop: bool = False
    ) -> Prediction | None:
        """Predictions for a (rows, width) array of numeric inputs in signature order.

        None when the version needs the rows themselves to check them (see
        Predictor.features_from_matrix): the caller then calls predict with the instances.
        """
        self._check_rows(len(values))
        predictor = await self.predictor(resolved)
        if off_loop:
            encoded = await asyncio.to_thread(predictor.features_from_matrix, values)
        else:
            encoded = predictor.features_from_matrix(values)
        if encoded is None:
            return None
        return await self._forward(resolved, predictor, encoded, off_loop)

    def _check_rows(self, rows: int) -> None:
        if self.max_rows is not None and rows > self.max_rows:
            raise too_many_rows(rows, self.max_rows)

    async def _forward(
        self,
        resolved: ResolvedVersion,
        predictor: Predictor,
        encoded: np.ndarray,
        off_loop: bool = False,
    ) -> Prediction:
        raw = await self._batcher(resolved.id, predictor).submit(encoded)
        if off_loop:
            return await asyncio.to_thread(predictor.outputs, raw)
        return predictor.outputs(raw)

    def _batcher(self, key: str, predictor: Predictor) -> Batcher:
        entry = self._batchers.get(key)
        if entry is not None and entry[0] is predictor:
            return entry[1]
        # A version evicted from the cache takes its idle batcher with it.
        stale = [
            k
            for k, (_, batcher) in self._batchers.items()
            if k not in self.cache and not batcher.busy
        ]
        for k in stale:
            del self._batchers[k]
        options = self.batching
        batcher = Batcher(
            predictor.forward,
            enabled=options.enabled,
            max_rows=options.max_rows,
            max_wait_s=options.max_wait_ms / 1000,
            executor=self._executor,
            inline_rows=options.inline_max_work // max(1, predictor.parameter_count),
            on_pass=self._pass_listener(predictor),
        )
        self._batchers[key] = (predictor, batcher)
        return batcher

    def _pass_listener(self, predictor: Predictor) -> Callable[[int, int], None]:
        name, version = predictor.spec.name, predictor.spec.version

        def listener(rows: int, requests: int) -> None:
            if self.on_pass is not None:
                self.on_pass(name, version, rows, requests)

        return listener

    def close(self) -> None:
        self.registry_view.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._lookup.close()


def _encoded(
    predictor: Predictor,
    instances: list[Any] | None,
    records: list[Any] | None,
    booleans_possible: bool,
) -> np.ndarray:
    """The version's encoded float32 matrix for the rows; Invalid (422) names a bad value."""
    try:
        if instances is not None:
            return predictor.features_from_instances(instances, booleans_possible=booleans_possible)
        assert records is not None
        return predictor.features_from_records(records, booleans_possible=booleans_possible)
    except DataError as exc:
        raise Invalid(exc.code, str(exc)) from exc


def _encoded_in_steps(
    predictor: Predictor,
    instances: list[Any] | None,
    records: list[Any] | None,
    booleans_possible: bool,
) -> np.ndarray:
    """_encoded for many rows, in steps that each hold the GIL for a few milliseconds.

    Rows are independent, so they are encoded STEP_VALUES values at a time: rows of
    numbers in signature order (or records holding exactly the input names) with
    features_from_matrix, as features_from_instances would encode them, and any other step
    by _encoded, the version's own checks. An error names its row as for the whole request
    (the first bad row found, step by step); one this cannot place hands the whole request
    to _encoded. (In one call, NumPy turned 3.7 million numbers and a string into an array
    of strings before the checks even began: a second with the GIL held.)
    """
    rows = instances if instances is not None else records
    assert rows is not None
    if predictor.image_shape is not None:  # checked image by image in Python anyway
        return _encoded(predictor, instances, records, booleans_possible)
    is_records = records is not None
    step = max(1, STEP_VALUES // max(1, predictor.width))
    parts = []
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        part = _numeric_step(predictor, chunk, is_records)
        encoded = None if part is None else _matrix_step(predictor, part, booleans_possible)
        if encoded is None:
            encoded = _checked_step(predictor, chunk, is_records, booleans_possible, start)
        if encoded is None:
            return _encoded(predictor, instances, records, booleans_possible)
        parts.append(encoded)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _checked_step(
    predictor: Predictor, chunk: list[Any], records: bool, booleans_possible: bool, offset: int
) -> np.ndarray | None:
    """_encoded for the rows from `offset` on; its error, if any, names the row in the
    whole request. None for an error whose row this cannot tell."""
    try:
        if records:
            return _encoded(predictor, None, chunk, booleans_possible)
        return _encoded(predictor, chunk, None, booleans_possible)
    except Invalid as exc:
        detail = _shifted(exc.detail, offset)
        if detail is None:
            return None
        raise Invalid(exc.code, detail) from exc


# Where the version's errors name the row: "instance 3, feature ...", "record 3: ...", or
# "... got 3 in instance 7". Anchored, so that a feature name or a value cannot match.
_LEADING_ROW = re.compile(r"\A(?:instance|record) (\d+)\b")
_TRAILING_ROW = re.compile(r"\bin (?:instance|record) (\d+)\Z")


def _shifted(detail: str, offset: int) -> str | None:
    if offset == 0:
        return detail
    for pattern in (_LEADING_ROW, _TRAILING_ROW):
        found = pattern.search(detail)
        if found is not None:
            row = int(found.group(1)) + offset
            return detail[: found.start(1)] + str(row) + detail[found.end(1) :]
    return None


def _numeric_step(predictor: Predictor, rows: list[Any], records: bool) -> list[Any] | None:
    """The rows in signature order, or None when records do not hold exactly the inputs."""
    if not records:
        return rows
    names = predictor.input_names
    try:
        ordered = [[record[name] for name in names] for record in rows]
    except (KeyError, TypeError):
        return None
    # Every record holds every name, so equal totals mean no record has extra keys.
    if sum(map(len, rows)) != predictor.width * len(rows):
        return None
    return ordered


def _matrix_step(
    predictor: Predictor, rows: list[Any], booleans_possible: bool
) -> np.ndarray | None:
    try:
        values = np.array(rows)
    except (ValueError, TypeError):  # ragged rows, mixed nesting
        return None
    # Strings, None and nested values give other dtypes ('U', 'O') or shapes.
    if values.ndim != 2 or values.shape[1] != predictor.width or values.dtype.kind not in "iuf":
        return None
    if booleans_possible and bool in set(map(type, chain.from_iterable(rows))):
        return None  # NumPy reads booleans as 1 and 0; the version's checks refuse them
    return predictor.features_from_matrix(values)
