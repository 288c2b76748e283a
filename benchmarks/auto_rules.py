"""Selection rules for `auto`, compared offline on the quality benchmark's tasks.

`benchmarks/quality.py` judges the rule Graft ships; this study decides which rule to ship.
It trains, once per task and seed, what every rule needs: each `auto` candidate's
out-of-fold predictions on the very splits `auto` uses (every fold trained as
`selection.cross_validate` trains it) and the test predictions of the model a job naming
that candidate delivers. Then it applies each rule to those predictions, without training
again, and prints, per half, how often the rule's test score is within one std of the best
method after the fact and how often it is below the best target-only method (the judgement
of `benchmarks/quality.py`, with the same methods and baselines).

Rules are decided on the tuning half; `--split held-out` only reports.

    .venv/bin/python benchmarks/auto_rules.py --split tuning --workers 2 --dump tuning.pkl
    .venv/bin/python benchmarks/auto_rules.py --load tuning.pkl       # rules again, no training
"""

import argparse
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml import training, transfer
from app.ml.transfer import selection
from benchmarks import quality
from benchmarks.quality_tasks import Task

FOREST = "forest/target"


def collect(task: Task, seeds: int, epochs: int, repeat_scale: int = 1) -> dict[str, Any]:
    """Per seed: every candidate's per-split out-of-fold predictions and test predictions,
    on `repeat_scale` times auto's repeats (a rule reads the first repeats it wants)."""
    torch.set_num_threads(1)
    prepared = quality.Prepared(task)
    per_seed = []
    for seed in range(seeds):
        seeded = prepared.seeded(seed)
        data = seeded.data
        settings = transfer.Settings(
            epochs=epochs,
            batch_size=quality.BATCH_SIZE,
            learning_rate=quality.LEARNING_RATE,
            seed=seed,
        )
        request = transfer.Request("auto", "auto", settings)
        folds, repeats = selection.fold_plan(len(data.y), request.cv_folds, request.cv_repeats)
        splits = selection.fold_indices(data.y, task.kind, folds, repeats * repeat_scale, seed)
        per_repeat = len(selection.fold_indices(data.y, task.kind, folds, 1, seed))
        candidates = transfer.candidates_for("auto", "auto", source_rows=True, tabular=True)
        # The forest is studied beside auto's candidates (variants with "+forest" use it).
        candidates += [c for c in [transfer.Candidate("forest", "target")] if c not in candidates]
        oof: dict[str, list[np.ndarray]] = {}
        test: dict[str, np.ndarray] = {}
        bagged: dict[str, list[np.ndarray]] = {}
        for candidate in candidates:
            fits: list[transfer.Trained] = []
            oof[candidate.name] = selection.out_of_fold(
                candidate,
                data,
                settings,
                splits,
                validation_fraction=request.validation_fraction,
                fits=fits,
                keep=len(splits),
            )
            bagged[candidate.name] = [
                training.predict_batch(f.model, seeded.x_test[candidate.normalization], task.kind)
                for f in fits
            ]
            named = transfer.Request(candidate.strategy, candidate.normalization, settings)
            model = transfer.fine_tune(data, named, report=False).trained.model
            test[candidate.name] = training.predict_batch(
                model, seeded.x_test[candidate.normalization], task.kind
            )
        found = quality.baselines(
            task.kind,
            data.x["target"],
            data.y,
            seeded.x_test["target"],
            seeded.y_test,
            prepared.target_spec,
            seed,
        )
        per_seed.append(
            {
                "y_train": data.y,
                "y_test": seeded.y_test,
                "splits": splits,
                "repeats": repeats,
                "per_repeat": per_repeat,
                "oof": oof,
                "test": test,
                "bagged": bagged,
                "baselines": found,
            }
        )
    return {"task": task.name, "kind": task.kind, "seeds": per_seed}


def test_score(kind: str, y_test: np.ndarray, predicted: np.ndarray) -> float:
    if kind == "classification":
        return float((np.asarray(predicted).argmax(axis=1) == y_test).mean())
    residual = float(np.mean((np.asarray(predicted, np.float64) - y_test) ** 2))
    return 1.0 - residual / float(np.var(y_test))


def judge(
    outcome: dict[str, Any],
    rule: Any,
    repeat_scale: float = 1,
    forest: bool = False,
    bag: str = "0",
) -> dict[str, Any]:
    """The rule's test scores per seed beside every method's, judged as quality.py judges.

    The rule sees `repeat_scale` times auto's repeats (as many as were collected at most) and,
    with `forest`, the random forest as one more target-only candidate."""
    kind = outcome["kind"]
    results: dict[str, list[float]] = {}
    for run in outcome["seeds"]:
        y_train, y_test = run["y_train"], run["y_test"]
        for name, predicted in run["test"].items():
            if name != FOREST:
                results.setdefault(name, []).append(test_score(kind, y_test, predicted))
        for name, score in run["baselines"].items():
            results.setdefault(name, []).append(score)
        repeats = max(1, round(run.get("repeats", 1) * repeat_scale))
        kept = repeats * run.get("per_repeat", len(run["splits"]))
        oof = {n: p[:kept] for n, p in run["oof"].items() if forest or n != FOREST}
        weights = rule(kind, y_train, run["splits"][:kept], oof)

        blended = blend(kind, [(delivered(run, n, kept, bag), w) for n, w in weights.items()])
        results.setdefault("auto", []).append(test_score(kind, y_test, blended))
    return quality.verdict({"results": results})


def delivered(run: dict[str, Any], name: str, kept: int, bag: str) -> np.ndarray:
    """The test predictions of what auto delivers for candidate `name`.

    bag "0": the model a job naming it delivers; "1": the mean of its fold models (every
    fold the rule saw); "f": of the first repeat's, "2".."9": of the first so many repeats'.
    Closed-form candidates keep their all-row fit.
    """
    if bag == "0" or candidate(name).spec.closed_form or not run.get("bagged"):
        return np.asarray(run["test"][name])
    per_repeat = run.get("per_repeat") or kept
    count = kept if bag == "1" else per_repeat * (1 if bag == "f" else int(bag))
    return np.mean([np.asarray(f, np.float64) for f in run["bagged"][name][:count]], axis=0)


# Rules: each maps (kind, y, splits, oof) to {candidate name: weight}.


def blend(kind: str, weighted: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """The weighted mean of predictions (class probabilities, or regression outputs)."""
    total = sum(w for _, w in weighted)
    return sum(np.asarray(p, np.float64) * (w / total) for p, w in weighted)  # type: ignore[return-value]


def candidate(name: str) -> transfer.Candidate:
    strategy, normalization = name.split("/")
    return transfer.Candidate(strategy, normalization)


def split_scores(kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any]) -> list[Any]:
    return [selection.score_splits(candidate(n), kind, y, splits, p) for n, p in oof.items()]


def blended_selection(
    kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any], weights: dict[str, float]
) -> np.ndarray:
    """Per split, the selection score of the weighted blend of out-of-fold predictions."""
    out = []
    for i, (_, test_idx) in enumerate(splits):
        predicted = blend(kind, [(oof[n][i], w) for n, w in weights.items()])
        out.append(selection.fold_score(kind, y[test_idx], predicted, y)[1])
    return np.asarray(out)


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    diff = a - b
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def within_one_se(scores: list[Any], se: float = 1.0, most: int | None = None) -> list[Any]:
    """The best and every score within `se` standard errors of it, best first; at most
    `most` of them."""
    top = selection.best(scores)
    close = [top]
    for score in sorted(scores, key=lambda s: -s.selection_mean):
        if score is not top:
            gain, error = paired(np.asarray(top.selection), np.asarray(score.selection))
            if gain <= se * error:
                close.append(score)
    return close[:most]


def stack_weights(
    kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any], names: list[str]
) -> dict[str, float]:
    """Simplex weights minimising the pooled out-of-fold squared error (Brier), by
    exponentiated gradient."""
    preds, truth = [], []
    for i, (_, test_idx) in enumerate(splits):
        preds.append(np.stack([np.asarray(oof[n][i], np.float64) for n in names]))
        if kind == "classification":
            t = np.zeros_like(preds[-1][0])
            t[np.arange(len(test_idx)), y[test_idx]] = 1.0
        else:
            t = np.asarray(y[test_idx], np.float64)
        truth.append(t)
    p = np.concatenate(preds, axis=1)  # members x rows (x classes)
    t = np.concatenate(truth, axis=0)
    w = np.full(len(names), 1.0 / len(names))
    for _ in range(300):
        mix = np.tensordot(w, p, axes=1)
        grad = np.array([np.mean(2 * (mix - t) * p[k]) for k in range(len(names))])
        w = w * np.exp(-2.0 * grad / (np.abs(grad).max() + 1e-12))
        w /= w.sum()
    return {n: float(x) for n, x in zip(names, w, strict=True) if x > 1e-3}


def guarded_pool(
    kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any], pool: dict[str, dict[str, float]]
) -> dict[str, float]:
    """The guard over singles and blends alike: the best source-using entry must beat the
    best target-only single by more than one standard error of the paired gain."""
    uses = {n: candidate(n).uses_source for n in oof}
    entries = {
        name: (weights, blended_selection(kind, y, splits, oof, weights))
        for name, weights in pool.items()
    }
    transfer_entries = {n: e for n, e in entries.items() if any(uses[m] for m in e[0])}
    target_entries = {n: e for n, e in entries.items() if not any(uses[m] for m in e[0])}
    best_t = max(transfer_entries, key=lambda n: transfer_entries[n][1].mean())
    best_o = max(target_entries, key=lambda n: target_entries[n][1].mean())
    gain, error = paired(transfer_entries[best_t][1], target_entries[best_o][1])
    if gain > max(error, selection.MIN_TRANSFER_GAIN):
        return transfer_entries[best_t][0]
    return target_entries[best_o][0]


def rules() -> dict[str, Any]:
    def shipped(kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any]) -> dict[str, float]:
        chosen = selection.choose(
            split_scores(kind, y, splits, oof),
            blender=lambda members: selection.blend(members, kind, y, splits),
        ).chosen
        return {m.candidate.name: 1.0 for m in chosen.members or [chosen]}

    def single(kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any]) -> dict[str, float]:
        return {selection.choose(split_scores(kind, y, splits, oof)).chosen.candidate.name: 1.0}

    def uniform_all(kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any]) -> dict:
        return dict.fromkeys(oof, 1.0)

    def uniform_transfer(kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any]) -> dict:
        return {n: 1.0 for n in oof if candidate(n).uses_source}

    def top(k: int) -> Any:
        def rule(kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any]) -> dict:
            scores = sorted(split_scores(kind, y, splits, oof), key=lambda s: -s.selection_mean)
            return {s.candidate.name: 1.0 for s in scores[:k]}

        return rule

    def close_to_best(se: float) -> Any:
        def rule(kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any]) -> dict:
            close = within_one_se(split_scores(kind, y, splits, oof), se)
            return {s.candidate.name: 1.0 for s in close}

        return rule

    def stacked(kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any]) -> dict:
        return stack_weights(kind, y, splits, oof, list(oof))

    def guarded_blends(kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any]) -> dict:
        scores = split_scores(kind, y, splits, oof)
        pool = {s.candidate.name: {s.candidate.name: 1.0} for s in scores}
        pool["all"] = dict.fromkeys(oof, 1.0)
        pool["close"] = {s.candidate.name: 1.0 for s in within_one_se(scores)}
        ranked = sorted(scores, key=lambda s: -s.selection_mean)
        pool["top3"] = {s.candidate.name: 1.0 for s in ranked[:3]}
        return guarded_pool(kind, y, splits, oof, pool)

    def guarded_close_within(width: float, most: int | None = None) -> Any:
        def rule(kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any]) -> dict:
            """The shipped guard between groups, but each group delivers the blend of its
            members within `width` standard errors of its best (at most `most`)."""
            scores = split_scores(kind, y, splits, oof)
            tr = [s for s in scores if s.candidate.uses_source]
            to = [s for s in scores if not s.candidate.uses_source]
            pool = {
                "transfer": {s.candidate.name: 1.0 for s in within_one_se(tr, width, most)},
                "target": {s.candidate.name: 1.0 for s in within_one_se(to, width, most)},
            }
            return guarded_pool(kind, y, splits, oof, pool)

        return rule

    guarded_close = guarded_close_within(1.0)

    def best_single(kind: str, y: np.ndarray, splits: Any, oof: dict[str, Any]) -> dict:
        return {selection.best(split_scores(kind, y, splits, oof)).candidate.name: 1.0}

    return {
        "shipped: guard between blends within 1 SE": shipped,
        "until 2026-12-07: guard, simplest single": single,
        "best single by CV": best_single,
        "uniform blend of all": uniform_all,
        "uniform blend of transfer": uniform_transfer,
        "top 3": top(3),
        "top 5": top(5),
        "within 1 SE of best": close_to_best(1.0),
        "within 2 SE of best": close_to_best(2.0),
        "stacked (simplex, OOF Brier)": stacked,
        "guard over singles and blends": guarded_blends,
        "guard, groups blend within 1 SE": guarded_close,
        "guard, groups blend within 1.5 SE": guarded_close_within(1.5),
        "guard, groups blend within 2 SE": guarded_close_within(2.0),
        "guard, groups blend within 3 SE": guarded_close_within(3.0),
        "guard, groups blend within 1.5 SE, at most 2": guarded_close_within(1.5, 2),
        "guard, groups blend within 1.5 SE, at most 3": guarded_close_within(1.5, 3),
        "guard, groups blend within 1.5 SE, at most 4": guarded_close_within(1.5, 4),
        "guard, groups blend within 2 SE, at most 3": guarded_close_within(2.0, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--split", choices=("all", "tuning", "held-out"), default="tuning")
    parser.add_argument("--tasks", help="comma-separated substrings of task names")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--dump", help="write the collected predictions to this pickle")
    parser.add_argument("--load", help="read collected predictions instead of training")
    parser.add_argument(
        "--repeat-scale", type=int, default=1, help="collect this many times auto's repeats"
    )
    parser.add_argument("--only", help="comma-separated substrings of the rules to apply")
    parser.add_argument(
        "--variants",
        default="1:0:0",
        help="repeat scale:forest:bag, e.g. 1:0:0,2:1:f (bag 0: the all-row fit; 1: the mean "
        "of the fold models; f: of the first repeat's)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.load:
        saved = pickle.loads(Path(args.load).read_bytes())
        splits = saved["splits"]
        outcomes = {n: o for n, o in saved["outcomes"].items() if args.split in ("all", splits[n])}
    else:
        wanted = [w.strip().lower() for w in args.tasks.split(",")] if args.tasks else None
        tasks, splits = quality.select_tasks(args.split, wanted)
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
            futures = {
                t.name: pool.submit(collect, t, args.seeds, args.epochs, args.repeat_scale)
                for t in tasks
            }
            outcomes = {}
            for name, future in futures.items():
                outcomes[name] = future.result()
                print(f"{name}: collected", flush=True)
        if args.dump:
            Path(args.dump).write_bytes(pickle.dumps({"outcomes": outcomes, "splits": splits}))
    for half in ("tuning", "held-out"):
        names = [n for n in outcomes if splits[n] == half]
        if not names:
            continue
        print(f"\n{half} half, {len(names)} tasks:")
        chosen_rules = {
            n: r
            for n, r in rules().items()
            if not args.only or any(w in n for w in args.only.split(","))
        }
        variants = [
            (float(v.split(":")[0]), v.split(":")[1] == "1", [*v.split(":"), "0"][2])
            for v in args.variants.split(",")
        ]
        for (rule_name, rule), (scale, forest, bag) in (
            (r, v) for r in chosen_rules.items() for v in variants
        ):
            verdicts = {n: judge(outcomes[n], rule, scale, forest, bag) for n in names}
            within = sum(v["within_best"] for v in verdicts.values())
            below = sum(not v["not_below_target_only"] for v in verdicts.values())
            regret = np.mean([v["regret"] for v in verdicts.values()])
            misses = ", ".join(
                f"{n} ({v['regret']:+.3f})" for n, v in verdicts.items() if not v["within_best"]
            )
            print(
                f"  {rule_name:44} x{scale:g}{' +forest' if forest else ''} bag {bag} "
                f"within {within:2}/{len(names)}  below {below}  "
                f"mean regret {regret:.3f}\n      misses: {misses}"
            )
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
