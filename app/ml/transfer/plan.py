"""The fine-tuning plan: from target rows and a request to a trained model and its report.

Pure: no database, no HTTP. The job runner loads the base version and the rows, calls
`fine_tune` and stores what it returns; `benchmarks/quality.py` calls the same function, so
the benchmark measures exactly what a job delivers.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app.ml import architectures, training
from app.ml import metrics as metrics_module
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
# `auto` delivers the fold models of this many cross-validation repeats (at most folds x
# BAG_REPEATS models per chosen candidate). Every repeat's models did a little better on the
# quality benchmark's tuning half (mean regret 0.017 against 0.019 for two repeats' and
# 0.021 for one's); two bound what a prediction costs at 8 small networks per candidate.
BAG_REPEATS = 2


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
    # A choice on rows x features delivers the chosen candidates' fold models (see `_bag`);
    # each candidate keeps those of its first BAG_REPEATS repeats while it is scored.
    bagging = chooses and data.tabular and bool(splits)
    bag_size = min(len(splits), BAG_REPEATS * folds)
    fold_fits: dict[Candidate, list[Trained]] = {}
    if splits:
        say(
            "log",
            f"cross-validation: {len(scored)} candidate(s), {folds} folds x {repeats} repeat(s), "
            f"{settings.epochs} epochs each, scored by {metric}",
            {"candidates": [c.name for c in scored], "folds": folds, "repeats": repeats},
        )
        for candidate in scored:
            fits: list[Trained] | None = [] if bagging and not candidate.spec.closed_form else None
            score = selection.cross_validate(
                candidate,
                data,
                settings,
                splits,
                validation_fraction=request.validation_fraction,
                check=check,
                fits=fits,
                keep=bag_size,
            )
            scores[candidate] = score
            if fits is not None:
                fold_fits[candidate] = fits
            say(
                "metrics",
                f"cv {candidate.name}: {metric} {score.mean:.4f} ± {score.std:.4f}",
                {"phase": "cross_validation", "metric": metric, **score.as_dict()},
            )

    def blender(members: list[selection.Score]) -> selection.Score:
        if data.scalings is None:
            # Without a per-input map between the scalings, one model reads one of them.
            first = members[0].candidate.normalization
            members = [m for m in members if m.candidate.normalization == first]
        return selection.blend(members, task, data.y, splits)

    choice_info: selection.Choice | None = None
    chosen: selection.Score | None = scores.get(candidates[0])
    members = [candidates[0]]
    if chooses:
        choice_info = selection.choose(
            [scores[c] for c in candidates], selection.selection_score_name(task), blender
        )
        chosen = choice_info.chosen
        members = [m.candidate for m in chosen.members] or [chosen.candidate]
        say(
            "log",
            f"chose {chosen.name} ({metric} {chosen.mean:.4f} ± {chosen.std:.4f}); "
            f"{choice_info.rule}",
            {"choice": chosen.name, **choice_info.as_dict()},
        )
    choice = members[0]

    every_row = np.arange(len(data.y))
    if bagging and chosen is not None:
        # auto on rows x features delivers the fold models its cross-validation trained
        # (`_bag`): together they trained on every row, and validated each row by the models
        # that did not see it; a closed-form model alone saw every row.
        trained = _bag(members, fold_fits, chosen, splits[:folds], data, request, say)
        out_of_fold = any(not m.spec.closed_form for m in members)
        train_idx, val_idx = every_row, every_row if out_of_fold else every_row[:0]
        if on_epoch is not None and trained.result.history:
            # The job's epoch events and progress show a delivered model's training, as for
            # a single fit: the first fold model's, recorded while it was cross-validated.
            say("log", f"epochs of the first fold model of {members[0].name}:")
            for entry in trained.result.history:
                on_epoch(_epoch_metrics(entry))
    else:
        # What a job naming the chosen candidate delivers: trained on the target rows less a
        # validation share whose loss picks the best epoch, exactly as each cross-validation
        # fold trained it, so that its score estimates what is delivered. A blend delivers
        # each member so trained, served as one model.
        train_idx, val_idx = holdout(
            choice, data, every_row, request.validation_fraction, settings.seed
        )
        if len(members) == 1:
            trained = train_candidate(
                choice, data, settings, train_idx, val_idx, on_epoch=on_epoch, on_batch=on_batch
            )
            for note in trained.notes:
                say("log", note)
        else:
            trained = _train_blend(
                members, data, request, train_idx, val_idx, on_epoch, on_batch, say
            )

    summary = _report(choice, chosen, scores, metric, folds, repeats, choice_info)
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


def _bag(
    members: list[Candidate],
    fold_fits: dict[Candidate, list[Trained]],
    chosen: selection.Score,
    first_repeat: list[tuple[np.ndarray, np.ndarray]],
    data: TransferData,
    request: Request,
    say: Callable[..., None],
) -> Trained:
    """The chosen candidates' cross-validation fold models, served as one `Ensemble`.

    Each fold model was trained, as a job naming its candidate trains, on a fold's rows less
    a validation share; together they have seen every target row, and their mean varies less
    than one model fitted on 80 % of 10 to 40 rows (tuning half of the quality benchmark:
    mean regret 0.028 -> 0.022 with the same choices, no task more or fewer within reach of
    the best). Closed-form candidates (`linear`) are fitted on every row instead: they hold
    nothing out, so one fit on all rows is already what their folds approximate. Each
    candidate weighs the same in the mean, whatever its number of fold models.
    """
    parts: list[tuple[Candidate, list[Trained]]] = []
    for member in members:
        fits = fold_fits.get(member)
        if not fits:
            every_row = np.arange(len(data.y))
            fits = [train_candidate(member, data, request.settings, every_row, every_row[:0])]
        parts.append((member, fits))
    if len(parts) == 1 and len(parts[0][1]) == 1:
        for note in parts[0][1][0].notes:
            say("log", note)
        return parts[0][1][0]
    model, architecture = _ensemble(parts, data)
    architecture["fold_models"] = [len(fits) for _, fits in parts]
    primary = members[0].normalization
    x = data.x[primary]
    metrics = {
        "train": training.evaluate(model, x, data.y, data.target_spec),
        # Every row is scored by the chosen entry's fold models that did not train on it.
        "validation": _out_of_fold_metrics(chosen, first_repeat, data),
    }
    first = parts[0][1][0].result
    result = training.TrainResult(
        first.epochs_run, first.best_epoch, first.stopped_early, first.history, metrics
    )
    described = ", ".join(
        f"{m.name} (fitted on every row)" if m.spec.closed_form else f"{m.name} ({len(f)})"
        for m, f in parts
    )
    notes = [
        f"served as one model: the mean of {described}; fold models were trained during "
        "cross-validation"
    ]
    say("log", notes[0])
    return Trained(model, result, notes, architecture=architecture)


def _epoch_metrics(entry: dict[str, Any]) -> training.EpochMetrics:
    """An epoch of a training history (`EpochMetrics.as_dict`) as the progress callback
    takes it."""
    standard = {"epoch", "epochs", "train_loss", "val_loss"}
    score_name = next((k for k in entry if k not in standard), "score")
    return training.EpochMetrics(
        entry["epoch"],
        entry["epochs"],
        entry["train_loss"],
        entry.get("val_loss"),
        entry.get(score_name),
        score_name,
    )


def _out_of_fold_metrics(
    chosen: selection.Score,
    first_repeat: list[tuple[np.ndarray, np.ndarray]],
    data: TransferData,
) -> dict[str, Any]:
    """Loss and task metrics of the chosen entry's out-of-fold predictions over one repeat
    (each row predicted once, by models that did not train on it)."""
    rows = np.concatenate([test for _, test in first_repeat])
    predicted = np.concatenate(
        [np.asarray(p, np.float64) for p in chosen.predictions[: len(first_repeat)]]
    )
    y = data.y[rows]
    if data.task == "classification":
        picked = np.clip(predicted[np.arange(len(rows)), y.astype(np.int64)], 1e-12, None)
        loss = float(-np.log(picked).mean())
        return metrics_module.classification_metrics(loss, y, predicted)
    loss = float(np.mean((predicted.reshape(-1) - y) ** 2))
    return metrics_module.regression_metrics(loss, data.target_spec, y, predicted.reshape(-1))


def _train_blend(
    members: list[Candidate],
    data: TransferData,
    request: Request,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    on_epoch: Callable[[training.EpochMetrics], None] | None,
    on_batch: Callable[[], None] | None,
    say: Callable[..., None],
) -> Trained:
    """Each member trained as a job naming it trains it, then served as one `Ensemble` that
    reads the first member's scaling and maps it to each other member's. The job's epoch
    progress follows the first member, as it follows a single pick."""
    primary = members[0].normalization
    trained_members: list[Trained] = []
    for position, member in enumerate(members, start=1):
        say("log", f"training blend member {position} of {len(members)}: {member.name}")
        fit_idx, fit_val = holdout(
            member, data, np.arange(len(data.y)), request.validation_fraction, request.settings.seed
        )
        trained = train_candidate(
            member,
            data,
            request.settings,
            fit_idx,
            fit_val,
            on_epoch=on_epoch if position == 1 else None,
            on_batch=on_batch,
        )
        for note in trained.notes:
            say("log", f"{member.name}: {note}")
        trained_members.append(trained)
    model, architecture = _ensemble(
        [(m, [t]) for m, t in zip(members, trained_members, strict=True)], data
    )
    first = trained_members[0].result
    x = data.x[primary]
    metrics = {
        "train": training.evaluate(model, x[train_idx], data.y[train_idx], data.target_spec),
        "validation": (
            training.evaluate(model, x[val_idx], data.y[val_idx], data.target_spec)
            if len(val_idx)
            else None
        ),
    }
    result = training.TrainResult(
        first.epochs_run, first.best_epoch, first.stopped_early, first.history, metrics
    )
    notes = [f"served as one model: the mean of {', '.join(m.name for m in members)}"]
    say("log", notes[0])
    return Trained(model, result, notes, architecture=architecture)


def _ensemble(
    parts: list[tuple[Candidate, list[Trained]]], data: TransferData
) -> tuple[architectures.Ensemble, dict[str, Any]]:
    """Each candidate's models as one `Ensemble` reading the first candidate's scaling (an
    exact per-input map to each other candidate's), each candidate weighing the same."""
    primary = parts[0][0].normalization
    models, weights, members = [], [], []
    for _, fits in parts:
        for fit in fits:
            models.append(fit.model)
            weights.append(1.0 / len(fits))
            members.append(fit.architecture or data.architecture)
    width = int(data.architecture["input_dim"])
    combine = "probabilities" if data.task == "classification" else "mean"
    model = architectures.Ensemble(models, weights, combine, width)
    position = 0
    for candidate, fits in parts:
        if candidate.normalization != primary:
            scale, shift = _rescaling(data, primary, candidate.normalization)
            for i in range(position, position + len(fits)):
                model.input_scale[i] = torch.as_tensor(scale, dtype=torch.float32)
                model.input_shift[i] = torch.as_tensor(shift, dtype=torch.float32)
        position += len(fits)
    model.eval()
    architecture = {
        "type": "ensemble",
        "members": members,
        "weights": weights,
        "combine": combine,
        "candidates": [candidate.name for candidate, _ in parts],
        "input_dim": width,
        "output_dim": data.output_dim,
    }
    return model, architecture


def _rescaling(data: TransferData, source: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) that turn inputs standardised as `source` into inputs standardised as
    `target`: x_t = (x_s * std_s + mean_s - mean_t) / std_t."""
    if data.scalings is None:
        raise ValueError("blending normalisations needs the inputs' scalings")
    mean_s, std_s = data.scalings[source]
    mean_t, std_t = data.scalings[target]
    return std_s / std_t, (mean_s - mean_t) / std_t


def _report(
    choice: Candidate,
    chosen: selection.Score | None,
    scores: dict[Candidate, selection.Score],
    metric: str,
    folds: int,
    repeats: int,
    choice_info: selection.Choice | None,
) -> dict[str, Any]:
    base = scores.get(BASELINE)
    gain = chosen.mean - base.mean if chosen is not None and base is not None else None
    uses_source = chosen.uses_source if chosen is not None else choice.uses_source
    return {
        "strategy": choice.strategy,
        "target_normalization": choice.normalization,
        "members": [m.candidate.name for m in (chosen.members or [chosen])]
        if chosen is not None
        else [choice.name],
        "uses_source": uses_source,
        "metric": metric,
        "cv": {"folds": folds, "repeats": repeats} if chosen is not None else None,
        "score": _mean_std(chosen),
        "baseline": {"candidate": BASELINE.name, **(_mean_std(base) or {})} if base else None,
        "transfer_gain": gain,
        "negative_transfer": bool(uses_source and gain is not None and gain < 0),
        "decided_by": choice_info.rule if choice_info is not None else None,
    }


def _mean_std(score: selection.Score | None) -> dict[str, float] | None:
    return None if score is None else {"mean": score.mean, "std": score.std}
