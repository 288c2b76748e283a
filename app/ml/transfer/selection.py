"""Cross-validation on the target rows, and the guarded choice between candidates.

The choice has two steps. Each group of candidates (those that use the source, those that
train on the target alone) is represented by its best candidate by mean score, blended with
every candidate of the group whose paired shortfall from it is within 1.5 standard errors:
candidates the rows cannot tell apart are averaged (their class probabilities, or their
regression outputs) into one entry, scored on the same splits from their out-of-fold
predictions. The transfer entry then replaces the target-only one only if its paired gain,
split by split, is larger than the noise of that gain: more than one standard error of the
mean difference (the one-standard-error rule), and more than a negligible
`MIN_TRANSFER_GAIN`. So transfer is delivered only when the target rows show that it helps,
and `auto` does not trade a target-only model for a transfer one on noise. A chosen blend is
delivered as one `Ensemble` model (see `plan.py`).

Decided on the quality benchmark's tuning half (benchmarks/quality.py): comparing by the
Brier score rather than accuracy or log-loss, and one standard error rather than none, half,
two or a corrected (Nadeau-Bengio) one, kept auto within reach of the best method on the most
tuning tasks. So did training each fold as the delivered model is trained (a validation share
picks the best epoch): fixed 100-epoch fits on all of a fold's rows ranked candidates by how
little they overfit, not by what a job delivers (tuning half: 6 -> 7 of 11 within one std of
the best, 1 -> 0 below target-only). Blending each group's candidates within noise, instead
of taking the simplest of them, took the tuning half from 7 to 8 of 11 with none below
target-only, at a guard of 1 or 1.5 standard errors and a minimum gain of 0 or 0.005 alike
(`benchmarks/auto_rules.py`); blends of a fixed top 3 or 5, of every candidate, stacking
weights fitted to the out-of-fold predictions, and the guard over singles and blends together
reached 4 to 7 of 11, each with at least one task below target-only. Once the pick was
delivered as its fold models (plan.py), widening the blend from 1 to 1.5 standard errors
lowered the tuning half's mean regret (0.022 -> 0.019) with the same counts.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.ml import training
from app.ml.errors import DataError
from app.ml.transfer.candidates import (
    Candidate,
    Settings,
    Trained,
    TransferData,
    holdout,
    train_candidate,
)

# How many standard errors a transfer candidate's paired gain over the best
# target-only candidate must exceed.
GUARD_STANDARD_ERRORS = 1.0
# Below this paired gain (Brier score, or R²) transfer is not worth delivering even when the
# folds agree on it: a hundredth of a Brier point changes no prediction a user would see.
# Neutral on the tuning half (7 of 11 either way) and it keeps a run on 2 splits, whose
# standard error is itself a guess, from trading a perfect target-only model for a
# transfer one on rounding.
MIN_TRANSFER_GAIN = 0.005
# A group's entry blends every candidate whose paired shortfall from the group's best is
# within this many standard errors (tuning half, fold models delivered as in plan.py: 1.5
# kept 8 of 11 tasks within one std of the best with none below target-only, as 1 did, at a
# mean regret of 0.019 against 0.022; 2 let one task fall below target-only, 3 two).
BLEND_STANDARD_ERRORS = 1.5
# The proper scoring rule classification candidates are compared by (see `fold_score`).
SELECTION_SCORE = "brier"


def _proper_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Higher is better: minus the Brier score (squared error of the probability vector)."""
    truth = np.zeros_like(probabilities)
    truth[np.arange(len(labels)), labels] = 1.0
    return -float(((probabilities - truth) ** 2).sum(axis=1).mean())


def fold_plan(n: int, requested_folds: int, repeats: int | None) -> tuple[int, int]:
    """(folds, repeats) for `n` rows: fewer rows get more repeats, so the estimate steadies."""
    folds = max(2, min(requested_folds, n // 2))
    if repeats is None:
        # Below 40 rows a test fold holds under ten rows and its accuracy moves in steps of
        # more than 0.1; more repeats there separate candidates that fewer leave tied.
        repeats = 5 if n < 40 else 3 if n < 60 else 2 if n < 200 else 1
    return folds, repeats


def fold_indices(
    y: np.ndarray, task: str, folds: int, repeats: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of stratified k-fold, repeated with fresh shuffles.

    Classification stratifies on the label, regression on quantile bins of the target; a
    class with fewer rows than folds lands in as many folds as it has rows.
    """
    n = len(y)
    if n < 4:
        raise DataError(
            f"cross-validation needs at least 4 target rows, got {n}", code="too_few_rows"
        )
    if task == "classification":
        strata = np.asarray(y)
    else:
        ranks = np.argsort(np.argsort(np.asarray(y, dtype=np.float64), kind="stable"))
        strata = ranks * folds // n
    splits = []
    for repeat in range(repeats):
        rng = np.random.default_rng([seed, repeat])
        assignment = np.empty(n, dtype=np.int64)
        offset = int(rng.integers(folds))
        for stratum in np.unique(strata):
            members = rng.permutation(np.flatnonzero(strata == stratum))
            # Continuing the fold counter across strata keeps fold sizes within one row.
            assignment[members] = (offset + np.arange(len(members))) % folds
            offset = (offset + len(members)) % folds
        for fold in range(folds):
            test = np.flatnonzero(assignment == fold)
            train = np.flatnonzero(assignment != fold)
            if len(test) and len(train):
                splits.append((train, test))
    return splits


@dataclass
class Score:
    """A candidate's scores on each split, in the order of the splits (so two can be paired).

    `scores` are the score users read (accuracy, or R²); `selection` are the ones the choice
    compares (see `fold_score`).
    """

    candidate: Candidate
    scores: list[float]
    selection: list[float] = field(default_factory=list)
    # Out-of-fold predictions per split (what a blend of candidates averages).
    predictions: list[np.ndarray] = field(default_factory=list, repr=False)
    # A blend's members, best first (`candidate` is the first); empty for one candidate.
    members: list["Score"] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.selection:
            self.selection = list(self.scores)

    @property
    def name(self) -> str:
        if self.members:
            return "blend of " + " + ".join(m.candidate.name for m in self.members)
        return self.candidate.name

    @property
    def uses_source(self) -> bool:
        return any(m.candidate.uses_source for m in self.members or [self])

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))

    @property
    def selection_mean(self) -> float:
        return float(np.mean(self.selection))

    def as_dict(self) -> dict[str, Any]:
        found = {
            "candidate": self.name,
            "strategy": self.candidate.strategy,
            "target_normalization": self.candidate.normalization,
            "mean": self.mean,
            "std": self.std,
            "selection_score": self.selection_mean,
            "folds": len(self.scores),
        }
        if self.members:
            found["members"] = [m.candidate.name for m in self.members]
        return found


def score_name(task: str) -> str:
    return "accuracy" if task == "classification" else "r2"


def selection_score_name(task: str) -> str:
    return SELECTION_SCORE if task == "classification" else "r2"


def fold_score(
    task: str, y_test: np.ndarray, predicted: np.ndarray, y_all: np.ndarray
) -> tuple[float, float]:
    """One split's (reported, selection) scores.

    Classification reports accuracy, but chooses by a proper scoring rule of the predicted
    probabilities: a test fold of a few rows moves accuracy in steps of 1/rows, so candidates
    tie or swap on one row, while the probabilities still say how sure each model was of the
    right class. Regression uses R² against the variance of every target row for both: a fold
    of a handful of rows has a variance of its own that swings from fold to fold, so its own
    R² ranks candidates by which rows it drew; against the variance of all the target rows the
    score is 1 - MSE / Var(y), the same yardstick on every split.
    """
    if task == "classification":
        probabilities = np.asarray(predicted, dtype=np.float64)
        labels = np.asarray(y_test, dtype=np.int64)
        accuracy = float((probabilities.argmax(axis=1) == labels).mean())
        return accuracy, _proper_score(probabilities, labels)
    variance = float(np.var(np.asarray(y_all, dtype=np.float64)))
    error = float(np.mean((np.asarray(predicted, np.float64) - y_test) ** 2))
    if not math.isfinite(error):
        return 0.0, -math.inf
    score = 1.0 - error / variance if variance > 0 else -error
    return score, score


def out_of_fold(
    candidate: Candidate,
    data: TransferData,
    settings: Settings,
    splits: list[tuple[np.ndarray, np.ndarray]],
    *,
    validation_fraction: float = 0.2,
    check: Callable[[], None] | None = None,
    fits: list[Trained] | None = None,
    keep: int = 0,
) -> list[np.ndarray]:
    """The candidate's predictions of each split's test rows, each fold trained as a job
    naming the candidate trains on its rows.

    A fold's training rows are split again into training and validation rows, and the
    epoch with the lowest validation loss is kept, as a named job does; its predictions of
    the fold's test rows, which took no part in that, show what such a job delivers. (Fixed
    full-length fits overfit 20 noisy rows, and would rank the candidates by who overfits
    least rather than by what the delivered model does.)
    """
    predictions: list[np.ndarray] = []
    # `fits` collects the first `keep` folds' trained models (auto delivers them as a bag).
    for train_idx, test_idx in splits:
        if check is not None:
            check()
        fit_idx, val_idx = holdout(candidate, data, train_idx, validation_fraction, settings.seed)
        trained = train_candidate(candidate, data, settings, fit_idx, val_idx)
        if fits is not None and len(fits) < keep:
            fits.append(trained)
        x_test = data.x[candidate.normalization][test_idx]
        predictions.append(training.predict_batch(trained.model, x_test, data.task))
    return predictions


def score_splits(
    candidate: Candidate,
    task: str,
    y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    predictions: list[np.ndarray],
) -> Score:
    """The candidate's Score from its out-of-fold predictions on `splits`."""
    scores: list[float] = []
    selection: list[float] = []
    for (_, test_idx), predicted in zip(splits, predictions, strict=True):
        reported, chosen_by = fold_score(task, y[test_idx], predicted, y)
        scores.append(reported)
        selection.append(chosen_by)
    return Score(candidate, scores, selection, list(predictions))


def blend(
    members: list[Score],
    task: str,
    y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
) -> Score:
    """The equal-weight blend of `members` (best first), scored on the same splits from the
    mean of their out-of-fold predictions (class probabilities, or regression outputs)."""
    if len(members) == 1:
        return members[0]
    predictions = [
        np.mean([np.asarray(m.predictions[i], np.float64) for m in members], axis=0)
        for i in range(len(splits))
    ]
    blended = score_splits(members[0].candidate, task, y, splits, predictions)
    blended.members = list(members)
    return blended


def cross_validate(
    candidate: Candidate,
    data: TransferData,
    settings: Settings,
    splits: list[tuple[np.ndarray, np.ndarray]],
    *,
    validation_fraction: float = 0.2,
    check: Callable[[], None] | None = None,
    fits: list[Trained] | None = None,
    keep: int = 0,
) -> Score:
    """The candidate's held-out score on every split (see `out_of_fold`)."""
    predictions = out_of_fold(
        candidate,
        data,
        settings,
        splits,
        validation_fraction=validation_fraction,
        check=check,
        fits=fits,
        keep=keep,
    )
    return score_splits(candidate, data.task, data.y, splits, predictions)


# Blends the candidates of a group that the rows cannot tell apart into one entry.
Blender = Callable[[list[Score]], Score]


@dataclass
class Choice:
    """What the guarded selection chose, and the numbers that decided it."""

    chosen: Score
    best_transfer: Score | None
    best_target_only: Score | None
    gain: float | None
    standard_error: float | None
    rule: str
    metric: str = "score"

    def as_dict(self) -> dict[str, Any]:
        return {
            "choice": self.chosen.name,
            "members": [m.candidate.name for m in self.chosen.members or [self.chosen]],
            "best_transfer": self.best_transfer.name if self.best_transfer else None,
            "best_target_only": self.best_target_only.name if self.best_target_only else None,
            "paired_gain": self.gain,
            "gain_standard_error": self.standard_error,
            "guard_standard_errors": GUARD_STANDARD_ERRORS,
            "minimum_gain": MIN_TRANSFER_GAIN,
            "selection_metric": self.metric,
            "rule": self.rule,
        }


def _rank(score: Score) -> tuple[float, int, str, int]:
    spec = score.candidate.spec
    return (
        -round(score.selection_mean, 9),
        spec.simplicity,
        spec.name,
        0 if score.candidate.normalization == "source" else 1,
    )


def best(scores: list[Score]) -> Score:
    """The highest mean selection score; ties go to the simpler strategy, then to the source's
    scaling."""
    if not scores:
        raise ValueError("no candidate was scored")
    return min(scores, key=_rank)


def within_noise(scores: list[Score], width: float = 1.0) -> list[Score]:
    """The group's best and every candidate whose paired shortfall from it is within `width`
    standard errors of that shortfall, best first: the candidates these rows cannot tell
    apart."""
    top = best(scores)
    close = [top]
    for score in sorted(scores, key=_rank):
        if score is not top:
            shortfall, error = paired_gain(top, score)
            if shortfall <= width * error:
                close.append(score)
    return close


def simplest_within_noise(scores: list[Score]) -> Score:
    """The one-standard-error rule within a group: the simplest candidate whose paired
    shortfall from the group's best is within one standard error of it.

    On 10 to 40 rows the best mean is often ahead by noise alone, and which candidate that is
    changes with the draw; the simplest of those the data cannot tell apart is the steadier
    pick (and the cheaper model). Where out-of-fold predictions can be blended, `choose`
    blends those candidates instead (see the module's docstring).
    """
    close = within_noise(scores)
    return min(close, key=lambda score: (score.candidate.spec.simplicity, _rank(score)))


def representative(scores: list[Score], blender: Blender | None) -> Score:
    """A group's entry in the guard: the blend of the candidates within noise of its best, or,
    without a blender, the simplest of them."""
    if blender is None:
        return simplest_within_noise(scores)
    return blender(within_noise(scores, BLEND_STANDARD_ERRORS))


def paired_gain(better: Score, other: Score) -> tuple[float, float]:
    """Mean per-split difference of the selection scores, and its standard error.

    Both candidates were scored on the same splits, so the split-to-split swing that both
    share (an easy fold, a hard fold) cancels in the difference; what is left is the noise
    of the comparison itself.
    """
    diff = np.asarray(better.selection) - np.asarray(other.selection)
    splits = len(diff)
    if splits < 2:
        return float(diff.mean()) if splits else 0.0, math.inf
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(splits))


def choose(scores: list[Score], metric: str = "score", blender: Blender | None = None) -> Choice:
    """The guarded choice: the transfer group's entry only when it beats the target-only
    group's entry by more than the noise of the difference (see `representative`)."""
    transfer = [s for s in scores if s.candidate.uses_source]
    target_only = [s for s in scores if not s.candidate.uses_source]
    if not transfer or not target_only:
        # Nothing to guard against (a named strategy with both normalisations, say).
        chosen = best(scores)
        rule = f"highest mean cross-validated {metric}"
        return Choice(chosen, None, None, None, None, rule, metric)
    top_transfer = representative(transfer, blender)
    top_target = representative(target_only, blender)
    gain, error = paired_gain(top_transfer, top_target)
    noise = GUARD_STANDARD_ERRORS * error
    bar = (
        f"{GUARD_STANDARD_ERRORS:g} standard error ({error:.4f})"
        if noise >= MIN_TRANSFER_GAIN
        else f"the minimum gain {MIN_TRANSFER_GAIN:g} (1 standard error: {error:.4f})"
    )
    if gain > max(noise, MIN_TRANSFER_GAIN):
        rule = (
            f"transfer: {top_transfer.name} beats the best target-only entry "
            f"{top_target.name} by {gain:+.4f} {metric} per split, more than {bar}"
        )
        chosen = top_transfer
    else:
        rule = (
            f"target-only: the best transfer entry {top_transfer.name} gains "
            f"{gain:+.4f} {metric} per split over {top_target.name}, not more than "
            f"{bar}"
        )
        chosen = top_target
    return Choice(chosen, top_transfer, top_target, gain, error, rule, metric)
