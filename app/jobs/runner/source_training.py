"""Source training: a new model fitted on a dataset, as the job's request describes it."""

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from app.db.session import Database
from app.enums import EventType, Task, VersionKind
from app.jobs.runner import fine_tuning
from app.jobs.runner.epochs import EpochReporter
from app.ml import architectures, inputs, tabular, training
from app.services import work_estimate
from app.services.job_events import add_event

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    """Everything source training needs, built from the job's request and its data."""

    draft: fine_tuning.VersionDraft
    target: str
    warnings: list[str]
    notes: list[str]


def _signature(data: inputs.Data, features: list[str], target: str, target_spec: dict) -> dict:
    return {
        "inputs": inputs.signature_inputs(data, features),
        "classes": target_spec.get("classes"),
        "target": target,
    }


def _class_warnings(labels: pd.Series) -> list[str]:
    observed = labels.dropna().unique()
    if len(observed) == 1:
        return [
            f"the training data holds a single class ({observed[0]!r}): the model can only "
            "learn to predict that class; add rows of other classes for a useful classifier"
        ]
    return []


def prepare(data: inputs.Data, request: dict[str, Any], seed: int) -> _Prepared:
    target = request["target_column"]
    labels = inputs.labels(data, target)
    features = inputs.feature_names(data, target, request.get("feature_columns"))
    task = Task(request.get("task") or tabular.infer_task(labels))
    feature_spec = inputs.fit_features(data, features)
    target_spec = tabular.fit_target(labels, task)
    work_estimate.check_fitted(feature_spec, target_spec)  # the caps the estimate assumed
    output_dim = len(target_spec["classes"]) if task == Task.CLASSIFICATION else 1
    architecture = {
        **request["architecture"],
        "input_dim": feature_spec["input_dim"],
        "output_dim": output_dim,
        **inputs.architecture_inputs(feature_spec),
    }
    training.set_seed(seed)
    model = architectures.build_model(architecture, feature_spec["input_dim"], output_dim)
    draft = fine_tuning.VersionDraft(
        model=model,
        task=task,
        feature_spec=feature_spec,
        target_spec=target_spec,
        architecture=architecture,
        signature=_signature(data, features, target, target_spec),
        version_fields={
            "kind": VersionKind.SOURCE,
            "strategy": None,
            "parent_name": None,
            "parent_version": None,
        },
    )
    return _Prepared(
        draft=draft,
        target=target,
        warnings=_class_warnings(labels) if task == Task.CLASSIFICATION else [],
        notes=[f"task: {task}; {len(features)} features -> {feature_spec['input_dim']} inputs"],
    )


def train(
    db: Database,
    job_id: str,
    data: inputs.Data,
    request: dict[str, Any],
    reporter: EpochReporter,
) -> fine_tuning.Outcome:
    hyper = request["hyperparameters"]
    prepared = prepare(data, request, hyper["seed"])
    with db.session_scope() as session:
        for note in prepared.notes:
            add_event(session, job_id, EventType.LOG, note)
        for warning in prepared.warnings:
            add_event(session, job_id, EventType.WARNING, warning)
    draft = prepared.draft
    x, y = inputs.encode(data, draft.feature_spec, draft.target_spec, prepared.target)
    labels = y if draft.task == Task.CLASSIFICATION else None
    train_idx, val_idx = training.split_indices(
        len(y), hyper["validation_fraction"], hyper["seed"], labels
    )
    result = training.fit(
        draft.model,
        x[train_idx],
        y[train_idx],
        x[val_idx],
        y[val_idx],
        target_spec=draft.target_spec,
        epochs=hyper["epochs"],
        batch_size=hyper["batch_size"],
        learning_rate=hyper["learning_rate"],
        weight_decay=hyper["weight_decay"],
        optimizer=hyper["optimizer"],
        early_stopping_patience=hyper["early_stopping_patience"],
        seed=hyper["seed"],
        on_epoch=reporter,
        on_batch=reporter.check_deadline,
    )
    return fine_tuning.Outcome(
        draft=draft, result=result, rows={"train": len(train_idx), "validation": len(val_idx)}
    )
