"""A fine-tuning job's loading and storing around the pure plan in `app.ml.transfer`.

The runner hands over the target rows, labels and callbacks; this module loads the base version
and (when it is still there) the source rows from the base's lineage, encodes the target under
both scalings, and hands them to `transfer.fine_tune`, which scores candidates, chooses, trains
and reports. What comes back becomes the version draft the runner registers.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from app.db.models import Job, ModelVersion
from app.db.session import Database
from app.enums import EventType, Task, VersionKind
from app.errors import AppError
from app.ml import features, inputs, serialization, tabular, training, transfer
from app.ml.errors import DataError
from app.services import datasets as datasets_service
from app.services import registry as registry_service
from app.services import work_estimate

log = logging.getLogger(__name__)

Emit = Callable[[EventType, str, dict[str, Any] | None], None]


@dataclass
class VersionDraft:
    """The version a job will register, before training: its model and how it reads data."""

    model: Any
    task: Task
    feature_spec: dict[str, Any]
    target_spec: dict[str, Any]
    architecture: dict[str, Any]
    signature: dict[str, Any]
    version_fields: dict[str, Any]


@dataclass
class Outcome:
    """What the runner registers: the trained draft, its training result and metrics."""

    draft: VersionDraft
    result: training.TrainResult
    rows: dict[str, int]
    extra_metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Source:
    x: np.ndarray | None
    y: np.ndarray | None
    note: str | None


def run(
    db: Database,
    job: Job,
    rows: Any,
    labels: pd.Series,
    request: dict[str, Any],
    *,
    on_epoch: Callable[[training.EpochMetrics], None],
    on_batch: Callable[[], None] | None = None,
    check: Callable[[], None],
    emit: Emit,
) -> Outcome:
    """Train the fine-tuned model the request asks for and report how transfer did.

    `rows` are the target's inputs in whatever form `features.encode` reads for the base's
    preprocessing (a DataFrame for tabular specs); `labels` is the target column.
    """
    assert job.base_model_name is not None and job.base_model_version is not None
    with db.read_scope() as session:
        base = registry_service.get_version(
            session, job.base_model_name, job.base_model_version, with_weights=True
        )
    plan = transfer.Request.from_job(request)
    target = request["target_column"]
    task = Task(base.task)
    source_features = base.preprocessing["features"]
    source_target = base.preprocessing["target"]
    emit(
        EventType.LOG,
        f"base model {base.model_name} version {base.version}; reusing its preprocessing",
        None,
    )

    # The label space and whether the source head still fits it.
    if task == Task.CLASSIFICATION:
        observed = tabular.fit_target(labels, task)["classes"]
        classes = tabular.merge_classes(source_target["classes"], observed)
        target_spec = {**source_target, "classes": classes}
        keep_head = classes == source_target["classes"]
        if not keep_head:
            new = classes[len(source_target["classes"]) :]
            emit(EventType.LOG, f"output head replaced: the target brings new classes {new}", None)
        if labels.dropna().nunique() == 1:
            emit(
                EventType.WARNING,
                f"the training data holds a single class ({labels.dropna().iloc[0]!r}): "
                "the model can only learn to predict that class; add rows of other classes "
                "for a useful classifier",
                None,
            )
    else:
        target_spec = source_target
        keep_head = True

    # The target rows under the source's scaling and under scaling refitted on the target.
    refit_features = features.refit_scaling(source_features, rows)
    x = {
        "source": features.encode(source_features, rows),
        "target": features.encode(refit_features, rows),
    }
    y = tabular.encode_target(target_spec, labels)
    output_dim = len(target_spec["classes"]) if task == Task.CLASSIFICATION else 1
    architecture = {**base.architecture, "output_dim": output_dim}
    source_model = serialization.load_model(
        base.architecture,
        base.architecture["input_dim"],
        base.architecture["output_dim"],
        base.weights,
    )
    source = _source_rows(
        db, base.dataset_id, base.signature["target"], source_features, target_spec
    )
    if source.note:
        emit(EventType.LOG, source.note, None)
    data = transfer.TransferData(
        target_spec=target_spec,
        x=x,
        y=y,
        source_model=source_model,
        architecture=architecture,
        keep_head=keep_head,
        source_x=source.x,
        source_y=source.y,
        scalings=_scalings(source_features, refit_features),
    )

    result = transfer.fine_tune(
        data,
        plan,
        on_epoch=on_epoch,
        on_batch=on_batch,
        check=check,
        emit=lambda kind, message, payload: emit(EventType(kind), message, payload),
    )
    choice, trained = result.choice, result.trained
    result.extra_metrics["transfer_report"]["domain_shift"] = transfer.domain_shift(
        source_features, x["source"], source.x, plan.settings.seed
    )
    draft = VersionDraft(
        model=trained.model,
        task=task,
        feature_spec=refit_features if choice.normalization == "target" else source_features,
        target_spec=target_spec,
        architecture=trained.architecture or architecture,
        signature={**base.signature, "classes": target_spec.get("classes"), "target": target},
        version_fields={
            "kind": VersionKind.FINE_TUNED,
            "strategy": choice.strategy,
            "parent_name": base.model_name,
            "parent_version": base.version,
        },
    )
    return Outcome(
        draft=draft,
        result=trained.result,
        rows={"train": result.train_rows, "validation": result.validation_rows},
        extra_metrics=result.extra_metrics,
    )


def _scalings(
    source_features: dict[str, Any], refit_features: dict[str, Any]
) -> dict[str, tuple[Any, Any]] | None:
    """Each normalisation's per-input (mean, std), where the preprocessing has them."""
    source, target = (
        features.encoded_scaling(source_features),
        features.encoded_scaling(refit_features),
    )
    if source is None or target is None:
        return None
    return {"source": source, "target": target}


def _source_rows(
    db: Database,
    dataset_id: str,
    target_column: str,
    feature_spec: dict[str, Any],
    target_spec: dict[str, Any],
) -> _Source:
    """The base version's training rows, encoded as the base encodes them, if still usable."""
    try:
        rows, labels = load_rows(db, dataset_id, target_column)
        x = features.encode(feature_spec, rows)
        y = tabular.encode_target(target_spec, labels)
    except (AppError, DataError, KeyError) as exc:
        reason = getattr(exc, "detail", None) or str(exc)
        return _Source(None, None, f"source rows from dataset {dataset_id} unavailable: {reason}")
    return _Source(x, y, f"source rows: {len(y)} from dataset {dataset_id}")


def load_rows(db: Database, dataset_id: str, target_column: str) -> tuple[Any, pd.Series]:
    """A dataset's inputs (as `features.encode` reads them) and its target column."""
    with db.read_scope() as session:
        data = datasets_service.load_data(session, dataset_id)
    return data, inputs.labels(data, target_column)


def check_classes(db: Database, job: Job, labels: pd.Series) -> None:
    """The class cap of app/services/work_estimate.py on the base's and the target's classes."""
    with db.read_scope() as session:
        signature = session.scalar(
            select(ModelVersion.signature).where(
                ModelVersion.model_name == job.base_model_name,
                ModelVersion.version == job.base_model_version,
            )
        )
    classes = (signature or {}).get("classes")
    if classes is not None:
        work_estimate.check_class_count(work_estimate.merged_class_count(classes, labels))
