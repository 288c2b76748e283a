"""The fine-tuning plan: from target rows and a request to a trained model and its report.

Pure: no database, no HTTP. The job runner loads the base version and the rows, calls
`fine_tune` and stores what it returns; `benchmarks/quality.py` calls the same function, so
the benchmark measures exactly what a job delivers.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.ml import training
from app.ml.errors import DataError
from app.ml.transfer import registry, selection
from app.ml.transfer.candidates import (
    Candidate,
    Settings,
    Trained,
    TransferData,
    holdout,
    train_candidate,
)

# kind ("log" | "metrics" | "warning"), message, data
Emit = Callable[[str, str, dict[str, Any] | None], None]

# The target-only model every transfer report compares against.
BASELINE = Candidate("scratch", "target")


@dataclass(frozen=True)
class Request:
    """What a fine-tuning request asks of the plan."""

    strategy: str
    normalization: str  # source | target | auto
    settings: Settings = field(default_factory=Settings)
    validation_fraction: float = 0.2
    cv_folds: int = 4
    cv_repeats: int | None = None

    @classmethod
    def from_job(cls, request: dict[str, Any]) -> "Request":
        hyper = request["hyperparameters"]
        return cls(
            strategy=request["strategy"],
            normalization=resolve_normalization(
                request["strategy"], request.get("target_normalization")
            ),
            settings=Settings.from_hyperparameters(hyper),
            validation_fraction=hyper.get("validation_fraction", 0.2),
            cv_folds=hyper.get("cv_folds") or 4,
            cv_repeats=hyper.get("cv_repeats"),
        )


@dataclass
class Result:
    """The trained model, which candidate it is, and what the version's metrics add."""

    trained: Trained
    choice: Candidate
    train_rows: int
    validation_rows: int
    extra_metrics: dict[str, Any]


def resolve_normalization(strategy: str, normalization: str | None) -> str:
    """The normalisation a request runs with: `auto` searches it too unless one was given."""
    if normalization is not None:
        return normalization
    return "auto" if strategy == registry.AUTO else "source"


def candidates_for(
    strategy: str, normalization: str, *, source_rows: bool, tabular: bool
) -> list[Candidate]:
    """The candidates a request scores: every `auto` strategy, or the one asked for, under
    each normalisation searched; a target-only strategy always on the target's own scaling."""
    norms = ("source", "target") if normalization == "auto" else (normalization,)
    if strategy == registry.AUTO:
        specs = [
            s
            for s in registry.specs()
            if s.in_auto
            and (source_rows or not s.needs_source_rows)
            and (tabular or not s.tabular_only)
        ]
    else:
        specs = [registry.get(strategy)]
    found: list[Candidate] = []
    for spec in specs:
        if spec.target_only:
            # Without source weights there is nothing the source's scaling is right for.
            found.append(Candidate(spec.name, "target"))
        else:
            found.extend(Candidate(spec.name, norm) for norm in norms)
    return found


def scored_candidates(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates plus the report's target-only baseline, each once."""
    return list(dict.fromkeys([*candidates, BASELINE]))


def fine_tune(
    data: TransferData,
    request: Request,
    *,
    on_epoch: Callable[[training.EpochMetrics], None] | None = None,
    on_batch: Callable[[], None] | None = None,
    check: Callable[[], None] | None = None,
    emit: Emit | None = None,
    report: bool = True,
) -> Result:
    """Score the request's candidates by cross-validation, choose, train, and report.

    `report=False` skips the cross-validation a single named candidate runs only for its
    transfer report (the model is the same); a choice between candidates always runs it.
    """

    def say(kind: str, message: str, payload: dict[str, Any] | None = None) -> None:
        if emit is not None:
            emit(kind, message, payload)

    strategy, normalization, settings = request.strategy, request.normalization, request.settings
    task = data.task
    candidates = candidates_for(
        strategy, normalization, source_rows=data.source_x is not None, tabular=data.tabular
    )
    if strategy == registry.AUTO and data.source_x is None:
        left_out = [s.name for s in registry.specs() if s.in_auto and s.needs_source_rows]
        if left_out:
            say("log", f"auto: {', '.join(left_out)} left out, the source rows are unavailable")
    scored = scored_candidates(candidates)
    chooses = len(candidates) > 1

    folds, repeats = selection.fold_plan(len(data.y), request.cv_folds, request.cv_repeats)
    try:
        splits = selection.fold_indices(data.y, task, folds, repeats, settings.seed)
        if not (report or chooses):
            splits = []
    except DataError as exc:
        if chooses:
            raise DataError(
                f"strategy {strategy!r} with target_normalization {normalization!r} chooses by "
                f"cross-validation, which failed: {exc}",
                code=exc.code,
            ) from exc
        splits = []
        say("warning", f"no transfer report: {exc}")

    metric = selection.score_name(task)
    scores: dict[Candidate, selection.Score] = {}
    if splits:
        say(
            "log",
            f"cross-validation: {len(scored)} candidate(s), {folds} folds x {repeats} repeat(s), "
            f"{settings.epochs} epochs each, scored by {metric}",
            {"candidates": [c.name for c in scored], "folds": folds, "repeats": repeats},
        )
        for candidate in scored:
            score = selection.cross_validate(
                candidate,
                data,
                settings,
                splits,
                validation_fraction=request.validation_fraction,
                check=check,
            )
            scores[candidate] = score
            say(
                "metrics",
                f"cv {candidate.name}: {metric} {score.mean:.4f} ± {score.std:.4f}",
                {"phase": "cross_validation", "metric": metric, **score.as_dict()},
            )

    choice_info: selection.Choice | None = None
    if chooses:
        choice_info = selection.choose(
            [scores[c] for c in candidates], selection.selection_score_name(task)
        )
        choice = choice_info.chosen.candidate
        say(
            "log",
            f"chose {choice.name} ({metric} {choice_info.chosen.mean:.4f} ± "
            f"{choice_info.chosen.std:.4f}); {choice_info.rule}",
            {"choice": choice.name, **choice_info.as_dict()},
        )
    else:
        choice = candidates[0]

    # The final model is what a job naming the chosen candidate delivers: trained on the
    # target rows less a validation share whose loss picks the best epoch, exactly as each
    # cross-validation fold trained it, so that its score estimates what is delivered.
    train_idx, val_idx = holdout(
        choice, data, np.arange(len(data.y)), request.validation_fraction, settings.seed
    )
    trained = train_candidate(
        choice, data, settings, train_idx, val_idx, on_epoch=on_epoch, on_batch=on_batch
    )
    for note in trained.notes:
        say("log", note)

    summary = _report(choice, scores, metric, folds, repeats, choice_info)
    if summary["negative_transfer"]:
        say(
            "warning",
            f"negative transfer: {choice.name} scores {metric} {summary['score']['mean']:.4f} "
            f"in cross-validation, below the target-only baseline "
            f"{BASELINE.name} at {summary['baseline']['mean']:.4f}"
            + (
                " (a gap smaller than the folds' spread, so possibly noise)"
                if -summary["transfer_gain"] < summary["score"]["std"]
                else ""
            )
            + "; consider strategy scratch or auto",
            {"transfer_gain": summary["transfer_gain"]},
        )
    if strategy == registry.AUTO and not choice.uses_source:
        say(
            "log",
            f"auto: chose the target-only {choice.name}; no transfer candidate's gain was "
            f"larger than its noise and than {selection.MIN_TRANSFER_GAIN:g} on these rows",
        )
    extra: dict[str, Any] = {"transfer_report": summary}
    if choice_info is not None:
        extra["selection"] = {
            "metric": metric,
            "candidates": [scores[c].as_dict() for c in candidates],
            **choice_info.as_dict(),
        }
    return Result(trained, choice, len(train_idx), len(val_idx), extra)


def _report(
    choice: Candidate,
    scores: dict[Candidate, selection.Score],
    metric: str,
    folds: int,
    repeats: int,
    choice_info: selection.Choice | None,
) -> dict[str, Any]:
    chosen = scores.get(choice)
    base = scores.get(BASELINE)
    gain = chosen.mean - base.mean if chosen is not None and base is not None else None
    return {
        "strategy": choice.strategy,
        "target_normalization": choice.normalization,
        "uses_source": choice.uses_source,
        "metric": metric,
        "cv": {"folds": folds, "repeats": repeats} if chosen is not None else None,
        "score": _mean_std(chosen),
        "baseline": {"candidate": BASELINE.name, **(_mean_std(base) or {})} if base else None,
        "transfer_gain": gain,
        "negative_transfer": bool(choice.uses_source and gain is not None and gain < 0),
        "decided_by": choice_info.rule if choice_info is not None else None,
    }


def _mean_std(score: selection.Score | None) -> dict[str, float] | None:
    return None if score is None else {"mean": score.mean, "std": score.std}
