"""Evaluations stored with versions: a version's list, and versions side by side."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ModelEvaluation, ModelVersion
from app.enums import Task
from app.errors import Invalid
from app.services import registry as registry_service
from app.services.pagination import paginate

MAX_COMPARED = 20
# Per version, the newest evaluations read for a comparison: enough to cover the datasets
# anyone compares on, bounded whatever the history.
_EVALUATIONS_PER_VERSION = 200
HEADLINE = {
    Task.CLASSIFICATION: ["accuracy", "f1_macro", "log_loss", "brier", "calibration_error"],
    Task.REGRESSION: ["r2", "rmse", "mae"],
}


def list_for_version(
    session: Session, name: str, version: int, *, limit: int, after: str | None
) -> tuple[list[ModelEvaluation], bool]:
    registry_service.get_version(session, name, version)
    query = select(ModelEvaluation).where(
        ModelEvaluation.model_name == name, ModelEvaluation.version == version
    )
    return paginate(
        session,
        query,
        created_at=ModelEvaluation.created_at,
        key=ModelEvaluation.id,
        limit=limit,
        after=after,
    )


def parse_versions(text: str) -> list[int]:
    """`1,2,5` as numbers, in order, without repeats; 422 naming what is wrong."""
    numbers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise Invalid(
                "invalid_versions",
                f"versions must be version numbers separated by commas (e.g. 1,2); got {part!r}",
            )
        if int(part) not in numbers:
            numbers.append(int(part))
    if len(numbers) > MAX_COMPARED:
        raise Invalid(
            "invalid_versions", f"at most {MAX_COMPARED} versions at once; got {len(numbers)}"
        )
    return numbers


def _headline(task: str, metrics: dict[str, Any]) -> dict[str, Any]:
    shown = {key: metrics.get(key) for key in HEADLINE[Task(task)] if key in metrics}
    if task == Task.CLASSIFICATION:
        calibration = metrics.get("calibration") or {}
        shown["calibration_error"] = calibration.get("expected_calibration_error")
    shown["rows"] = metrics.get("rows")
    return shown


def compare(
    session: Session, name: str, numbers: list[int], *, include_base: bool
) -> dict[str, Any]:
    """The versions (and their bases) with their training figures, and per dataset their
    latest evaluation scores side by side."""
    registry_service.get_model(session, name)
    versions: list[tuple[ModelVersion, str]] = []
    for number in numbers:
        versions.append((registry_service.get_version(session, name, number), "requested"))
    if include_base:
        for version, _ in list(versions):
            if version.parent_name is None or version.parent_version is None:
                continue
            base = session.scalar(
                select(ModelVersion).where(
                    ModelVersion.model_name == version.parent_name,
                    ModelVersion.version == version.parent_version,
                )
            )
            known = {(v.model_name, v.version) for v, _ in versions}
            if base is not None and (base.model_name, base.version) not in known:
                versions.append((base, "base"))
    tasks = {version.task for version, _ in versions}
    if len(tasks) > 1:
        raise Invalid(
            "mixed_tasks",
            f"versions {numbers} mix classification and regression; compare like with like",
        )
    task = tasks.pop()
    evaluations = _latest_evaluations(session, [version for version, _ in versions])
    return {
        "name": name,
        "headline_metrics": HEADLINE[Task(task)],
        "versions": [_compared_version(version, role) for version, role in versions],
        "datasets": _by_dataset(task, versions, evaluations),
    }


def _latest_evaluations(
    session: Session, versions: list[ModelVersion]
) -> dict[tuple[str, int], list[ModelEvaluation]]:
    found: dict[tuple[str, int], list[ModelEvaluation]] = {}
    for version in versions:
        rows = session.scalars(
            select(ModelEvaluation)
            .where(
                ModelEvaluation.model_name == version.model_name,
                ModelEvaluation.version == version.version,
            )
            .order_by(ModelEvaluation.created_at.desc(), ModelEvaluation.id.desc())
            .limit(_EVALUATIONS_PER_VERSION)
        )
        found[(version.model_name, version.version)] = list(rows)
    return found


def _compared_version(version: ModelVersion, role: str) -> dict[str, Any]:
    metrics = version.metrics or {}
    report = metrics.get("transfer_report") or None
    transfer = None
    if report:
        transfer = {
            key: report.get(key)
            for key in ("score", "baseline", "transfer_gain", "negative_transfer", "decided_by")
        }
    parent = None
    if version.parent_name is not None and version.parent_version is not None:
        parent = {"name": version.parent_name, "version": version.parent_version}
    return {
        "name": version.model_name,
        "version": version.version,
        "role": role,
        "kind": version.kind,
        "strategy": version.strategy,
        "parent": parent,
        "created_at": version.created_at,
        "task": version.task,
        "validation": metrics.get("validation"),
        "transfer": transfer,
    }


def _by_dataset(
    task: str,
    versions: list[tuple[ModelVersion, str]],
    evaluations: dict[tuple[str, int], list[ModelEvaluation]],
) -> list[dict[str, Any]]:
    # Keyed by dataset and target column: scores on other labels are not comparable.
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for version, _ in versions:
        seen: set[tuple[str, str]] = set()
        for evaluation in evaluations[(version.model_name, version.version)]:
            key = (evaluation.dataset_id, evaluation.target_column)
            if key in seen:
                continue  # an older evaluation of this version on the same data
            seen.add(key)
            group = groups.setdefault(
                key,
                {
                    "dataset": {
                        "id": evaluation.dataset_id,
                        "name": evaluation.dataset_name,
                        "sha256": evaluation.dataset_sha256,
                    },
                    "target_column": evaluation.target_column,
                    "scores": [],
                    "newest": evaluation.created_at,
                },
            )
            group["newest"] = max(group["newest"], evaluation.created_at)
            group["scores"].append(
                {
                    "name": version.model_name,
                    "version": version.version,
                    "evaluation_id": evaluation.id,
                    "created_at": evaluation.created_at,
                    "metrics": _headline(task, evaluation.metrics),
                }
            )
    ordered = sorted(groups.values(), key=lambda group: group["newest"], reverse=True)
    headline = "accuracy" if task == Task.CLASSIFICATION else "r2"
    for group in ordered:
        del group["newest"]
        scored = [s for s in group["scores"] if s["metrics"].get(headline) is not None]
        best = max(scored, key=lambda s: s["metrics"][headline], default=None)
        group["best"] = None if best is None else {"name": best["name"], "version": best["version"]}
    return ordered


def to_read(evaluation: ModelEvaluation) -> dict[str, Any]:
    return {
        "id": evaluation.id,
        "name": evaluation.model_name,
        "version": evaluation.version,
        "job_id": evaluation.job_id,
        "dataset": {
            "id": evaluation.dataset_id,
            "name": evaluation.dataset_name,
            "sha256": evaluation.dataset_sha256,
        },
        "target_column": evaluation.target_column,
        "task": evaluation.task,
        "metrics": evaluation.metrics,
        "created_at": evaluation.created_at,
        "created_by": evaluation.created_by,
    }
