"""A fine-tuning job from data to a trained model: strategy, normalisation, report, auto.

The runner hands over the target rows, labels and callbacks; this module loads the base version and
(when it is still there) the source rows from the base's lineage, scores candidates by
cross-validation, trains the chosen one and writes the transfer report.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from app.db.models import Job
from app.db.session import Database
from app.enums import EventType, Task, VersionKind
from app.errors import AppError
from app.ml import features, inputs, serialization, tabular, training, transfer
from app.ml.errors import DataError
from app.ml.linear import linear_architecture
from app.services import datasets as datasets_service
from app.services import registry as registry_service

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
    hyper = request["hyperparameters"]
    settings = transfer.Settings.from_hyperparameters(hyper)
    strategy = request["strategy"]
    normalization = request.get("target_normalization") or "source"
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
    )

    # Candidates: every strategy for auto, else the one asked for (both normalisations when
    # auto), and the target-only baseline the report compares against.
    normalizations = ("source", "target") if normalization == "auto" else (normalization,)
    baseline = transfer.Candidate("scratch", "target")
    if strategy == "auto":
        candidates = transfer.auto_candidates(
            data, normalizations, joint_available=source.x is not None
        )
        if source.x is None:
            emit(EventType.LOG, "auto: joint left out, the source rows are unavailable", None)
    elif strategy in transfer.TARGET_ONLY:
        only = "target" if normalization == "auto" else normalization
        candidates = [transfer.Candidate(strategy, only)]
    else:
        candidates = [transfer.Candidate(strategy, norm) for norm in normalizations]
    scored = list(dict.fromkeys([*candidates, baseline]))

    folds, repeats = transfer.fold_plan(len(y), hyper.get("cv_folds") or 4, hyper.get("cv_repeats"))
    strata = y if task == Task.CLASSIFICATION else None
    try:
        splits = transfer.fold_indices(y, task, folds, repeats, settings.seed)
    except DataError as exc:
        if strategy == "auto" or len(candidates) > 1:
            raise DataError(
                f"strategy {strategy!r} with target_normalization {normalization!r} chooses by "
                f"cross-validation, which failed: {exc}",
                code=exc.code,
            ) from exc
        splits = []
        emit(EventType.WARNING, f"no transfer report: {exc}", None)

    metric = transfer.score_name(task)
    scores: dict[transfer.Candidate, transfer.Score] = {}
    if splits:
        emit(
            EventType.LOG,
            f"cross-validation: {len(scored)} candidate(s), {folds} folds x {repeats} repeat(s), "
            f"{settings.epochs} epochs each, scored by {metric}",
            {"candidates": [c.name for c in scored], "folds": folds, "repeats": repeats},
        )
        for candidate in scored:
            score = transfer.cross_validate(candidate, data, settings, splits, check=check)
            scores[candidate] = score
            emit(
                EventType.METRICS,
                f"cv {candidate.name}: {metric} {score.mean:.4f} ± {score.std:.4f}",
                {"phase": "cross_validation", "metric": metric, **score.as_dict()},
            )

    selection: dict[str, Any] | None = None
    if len(candidates) > 1:
        best = transfer.choose([scores[c] for c in candidates])
        choice = best.candidate
        selection = {
            "metric": metric,
            "candidates": [scores[c].as_dict() for c in candidates],
            "choice": choice.name,
            "rule": transfer.SELECTION_RULE,
        }
        emit(
            EventType.LOG,
            f"chose {choice.name} ({metric} {best.mean:.4f} ± {best.std:.4f}); "
            f"rule: {transfer.SELECTION_RULE}",
            {"choice": choice.name},
        )
    else:
        choice = candidates[0]

    # The final model: auto retrains its pick on every target row; a named strategy keeps the
    # usual train/validation split and early stopping.
    if strategy == "auto":
        train_idx, val_idx = np.arange(len(y)), np.zeros(0, dtype=np.int64)
    else:
        train_idx, val_idx = training.split_indices(
            len(y), hyper["validation_fraction"], settings.seed, strata
        )
    trained = transfer.train_candidate(
        choice, data, settings, train_idx, val_idx, on_epoch=on_epoch, on_batch=on_batch
    )
    for note in trained.notes:
        emit(EventType.LOG, note, None)

    report = _report(choice, baseline, scores, metric, folds, repeats)
    report["domain_shift"] = transfer.domain_shift(
        source_features, x["source"], source.x, settings.seed
    )
    if report["negative_transfer"]:
        emit(
            EventType.WARNING,
            f"negative transfer: {choice.name} scores {metric} {report['score']['mean']:.4f} "
            f"in cross-validation, below the target-only baseline "
            f"{baseline.name} at {report['baseline']['mean']:.4f}"
            + (
                " (a gap smaller than the folds' spread, so possibly noise)"
                if -report["transfer_gain"] < report["score"]["std"]
                else ""
            )
            + "; consider strategy scratch or auto",
            {"transfer_gain": report["transfer_gain"]},
        )
    if strategy == "auto" and not choice.uses_source:
        emit(
            EventType.LOG,
            f"auto: no transfer candidate beat the target-only {choice.name}; transfer did not "
            "help on this data",
            None,
        )

    if choice.strategy == "linear":
        input_dim = int(x["source"].reshape(len(y), -1).shape[1])
        architecture = linear_architecture(input_dim, output_dim)
    extra: dict[str, Any] = {"transfer_report": report}
    if selection is not None:
        extra["selection"] = selection
    draft = VersionDraft(
        model=trained.model,
        task=task,
        feature_spec=refit_features if choice.normalization == "target" else source_features,
        target_spec=target_spec,
        architecture=architecture,
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
        rows={"train": len(train_idx), "validation": len(val_idx)},
        extra_metrics=extra,
    )


def _report(
    choice: transfer.Candidate,
    baseline: transfer.Candidate,
    scores: dict[transfer.Candidate, transfer.Score],
    metric: str,
    folds: int,
    repeats: int,
) -> dict[str, Any]:
    chosen = scores.get(choice)
    base = scores.get(baseline)
    gain = chosen.mean - base.mean if chosen is not None and base is not None else None
    return {
        "strategy": choice.strategy,
        "target_normalization": choice.normalization,
        "uses_source": choice.uses_source,
        "metric": metric,
        "cv": {"folds": folds, "repeats": repeats} if chosen is not None else None,
        "score": _mean_std(chosen),
        "baseline": {"candidate": baseline.name, **(_mean_std(base) or {})} if base else None,
        "transfer_gain": gain,
        "negative_transfer": bool(choice.uses_source and gain is not None and gain < 0),
    }


def _mean_std(score: transfer.Score | None) -> dict[str, float] | None:
    return None if score is None else {"mean": score.mean, "std": score.std}


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
