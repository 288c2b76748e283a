"""Transfer quality benchmark: `auto`, every strategy and target-only baselines, per task.

The tasks (`benchmarks/quality_tasks.py`) are built from data that ships in packages; each has
a source domain and a shifted target domain. Per seed a few labelled target rows are drawn for
training and the remaining target rows are the test set. Everything runs with Graft's default
settings, as a new user's job would: the source model is an MLP [64, 64] trained for 100
epochs (Adam, learning rate 1e-3, batches of 32, 20% validation), and every fine-tuning fit
takes the fine-tuning defaults. `auto` is `app.ml.transfer.fine_tune`, the function a job runs
(no HTTP, no database); each strategy under each normalisation is the same function with that
strategy named, so its model is what a job naming it delivers; the scikit-learn baselines see
the target rows alone.

The tasks are split once into a tuning half and a held-out half (the rule is in
quality_tasks.py). Decisions about auto are made on the tuning half; the held-out half is
reported beside it and never used to choose.

    .venv/bin/python benchmarks/quality.py --workers 2               # every task, 3 seeds
    .venv/bin/python benchmarks/quality.py --split held-out --seeds 5
    .venv/bin/python benchmarks/quality.py --quick                   # smoke run: 3 tasks, 1 seed
    .venv/bin/python benchmarks/quality.py --tasks wine,iris --output results.json

Per task it prints auto, the best method after the fact (any strategy, normalisation or
baseline), the best target-only method, auto's regret and the two checks: auto within one
standard deviation (over seeds) of the best, and not below the best target-only method by
more than its standard deviation. Then the count per half, auto's picks and its cost.
"""

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml import architectures, tabular, training, transfer
from benchmarks import quality_tasks
from benchmarks.quality_tasks import Task

# Graft's defaults (app/schemas/jobs.py): the source job and every fine-tuning fit.
SOURCE_HIDDEN = [64, 64]
SOURCE_EPOCHS = 100
LEARNING_RATE = 1e-3
BATCH_SIZE = 32
BASELINES = ("sklearn logistic/ridge", "sklearn random forest")
TARGET_ONLY_METHODS = ("scratch/target", "linear/target", *BASELINES)


def draw(task: Task, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labelled target rows for this seed (per class, or a number of rows), and the test rows."""
    rng = np.random.default_rng(1000 + seed)
    if task.kind == "classification":
        train: list[int] = []
        labels = task.target[task.label].to_numpy()
        for label in sorted(task.target[task.label].unique()):
            rows = np.flatnonzero(labels == label)
            train.extend(rng.choice(rows, min(task.train_per_class, len(rows) - 1), replace=False))
        train_idx = np.sort(np.asarray(train))
    else:
        train_idx = np.sort(rng.choice(len(task.target), task.train_rows, replace=False))
    return train_idx, np.setdiff1d(np.arange(len(task.target)), train_idx)


def train_source(task: Task, epochs: int) -> tuple[Any, dict[str, Any], dict[str, Any], dict]:
    """The source model as a source-training job with default settings trains it."""
    spec = tabular.fit_features(task.source, task.features)
    target_spec = tabular.fit_target(task.source[task.label], task.kind)
    x = tabular.transform_features(spec, task.source)
    y = tabular.encode_target(target_spec, task.source[task.label])
    output_dim = len(target_spec["classes"]) if task.kind == "classification" else 1
    architecture = {
        "type": "mlp",
        "hidden_layers": SOURCE_HIDDEN,
        "input_dim": spec["input_dim"],
        "output_dim": output_dim,
    }
    training.set_seed(0)
    model = architectures.build_model(architecture, spec["input_dim"], output_dim)
    labels = y if task.kind == "classification" else None
    train_idx, val_idx = training.split_indices(len(y), 0.2, 0, labels)
    training.fit(
        model,
        x[train_idx],
        y[train_idx],
        x[val_idx],
        y[val_idx],
        target_spec=target_spec,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        optimizer="adam",
        early_stopping_patience=None,
        seed=0,
    )
    return model, spec, target_spec, architecture


def score_of(kind: str, metrics: dict[str, Any]) -> float:
    value = metrics["accuracy" if kind == "classification" else "r2"]
    return float(value) if value is not None else 0.0


@dataclass
class Seeded:
    """One seed's draw of a task: what `fine_tune` reads, and the test rows to score on."""

    data: transfer.TransferData
    x_test: dict[str, np.ndarray]
    y_test: np.ndarray


class Prepared:
    """A task's source model (trained once) and the label space fine-tuning works in."""

    def __init__(self, task: Task) -> None:
        self.task = task
        source_model, self.spec, source_target, architecture = train_source(task, SOURCE_EPOCHS)
        if task.kind == "classification":
            observed = tabular.fit_target(task.target[task.label], "classification")["classes"]
            classes = tabular.merge_classes(source_target["classes"], observed)
            self.target_spec = {**source_target, "classes": classes}
            self.keep_head = classes == source_target["classes"]
        else:
            self.target_spec, self.keep_head = source_target, True
        output_dim = len(self.target_spec["classes"]) if task.kind == "classification" else 1
        self.architecture = {**architecture, "output_dim": output_dim}
        self.source_model = source_model
        self.source_x = tabular.transform_features(self.spec, task.source)
        self.source_y = tabular.encode_target(self.target_spec, task.source[task.label])

    def seeded(self, seed: int) -> Seeded:
        """This seed's labelled target rows under both scalings, and its test rows."""
        task = self.task
        train_idx, test_idx = draw(task, seed)
        train_frame, test_frame = task.target.iloc[train_idx], task.target.iloc[test_idx]
        refit = tabular.refit_scaling(self.spec, train_frame)
        x_train = {
            "source": tabular.transform_features(self.spec, train_frame),
            "target": tabular.transform_features(refit, train_frame),
        }
        x_test = {
            "source": tabular.transform_features(self.spec, test_frame),
            "target": tabular.transform_features(refit, test_frame),
        }
        # One per seed, so every candidate reuses the frozen trunk's features.
        data = transfer.TransferData(
            target_spec=self.target_spec,
            x=x_train,
            y=tabular.encode_target(self.target_spec, train_frame[task.label]),
            source_model=self.source_model,
            architecture=self.architecture,
            keep_head=self.keep_head,
            source_x=self.source_x,
            source_y=self.source_y,
            scalings={
                "source": tabular.encoded_scaling(self.spec),
                "target": tabular.encoded_scaling(refit),
            },
        )
        return Seeded(data, x_test, tabular.encode_target(self.target_spec, test_frame[task.label]))


def run_task(task: Task, seeds: int, epochs: int, log: Callable[[str], None]) -> dict[str, Any]:
    prepared = Prepared(task)
    target_spec = prepared.target_spec
    results: dict[str, list[float]] = {}
    picks: list[str] = []
    rules: list[str] = []
    auto_seconds: list[float] = []
    parameter_seconds: list[float] = []
    for seed in range(seeds):
        seeded = prepared.seeded(seed)
        data, x_test, y_test = seeded.data, seeded.x_test, seeded.y_test
        x_train, y_train = data.x, data.y
        settings = transfer.Settings(
            epochs=epochs, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE, seed=seed
        )
        candidates = transfer.candidates_for("auto", "auto", source_rows=True, tabular=True)
        for candidate in candidates:
            # What a job naming this strategy and normalisation delivers (its transfer
            # report's cross-validation left out: it does not change the model).
            started = time.perf_counter()
            named = transfer.Request(candidate.strategy, candidate.normalization, settings)
            trained = transfer.fine_tune(data, named, report=False).trained
            if candidate == transfer.Candidate("parameter", "source"):
                parameter_seconds.append(time.perf_counter() - started)
            metrics = training.evaluate(
                trained.model, x_test[candidate.normalization], y_test, target_spec
            )
            results.setdefault(candidate.name, []).append(score_of(task.kind, metrics))

        # auto, exactly as a job with strategy "auto" and default settings runs it.
        started = time.perf_counter()
        outcome = transfer.fine_tune(data, transfer.Request("auto", "auto", settings))
        auto_seconds.append(time.perf_counter() - started)
        choice = outcome.choice
        metrics = training.evaluate(
            outcome.trained.model, x_test[choice.normalization], y_test, target_spec
        )
        results.setdefault("auto", []).append(score_of(task.kind, metrics))
        picks.append(outcome.extra_metrics["selection"]["choice"])
        rules.append(outcome.extra_metrics["selection"]["rule"])

        found = baselines(
            task.kind, x_train["target"], y_train, x_test["target"], y_test, target_spec, seed
        )
        for name, score in found.items():
            results.setdefault(name, []).append(score)
        log(f"  seed {seed}: auto picked {choice.name} ({results['auto'][-1]:.3f})")
    return {
        "task": task.name,
        "shift": task.shift,
        "kind": task.kind,
        "results": results,
        "picks": picks,
        "rules": rules,
        "auto_seconds": float(np.mean(auto_seconds)),
        "parameter_seconds": float(np.mean(parameter_seconds)),
        "train_rows": len(draw(task, 0)[0]),
    }


def baselines(
    kind: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    target_spec: dict[str, Any],
    seed: int,
) -> dict[str, float]:
    """scikit-learn target-only models on the target-standardised inputs."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score

    if kind == "classification":
        if len(np.unique(y_train)) < 2:
            constant = float((y_test == y_train[0]).mean())
            return dict.fromkeys(BASELINES, constant)
        linear = LogisticRegression(max_iter=2000).fit(x_train, y_train)
        forest = RandomForestClassifier(n_estimators=200, random_state=seed).fit(x_train, y_train)
        return {
            BASELINES[0]: float(accuracy_score(y_test, linear.predict(x_test))),
            BASELINES[1]: float(accuracy_score(y_test, forest.predict(x_test))),
        }
    ridge = Ridge(alpha=1.0).fit(x_train, y_train)
    forest = RandomForestRegressor(n_estimators=200, random_state=seed).fit(x_train, y_train)
    return {
        BASELINES[0]: float(r2_score(y_test, ridge.predict(x_test))),
        BASELINES[1]: float(r2_score(y_test, forest.predict(x_test))),
    }


# Judging.


def verdict(outcome: dict[str, Any]) -> dict[str, Any]:
    """Auto against the best method after the fact and the best target-only method."""
    results = outcome["results"]
    mean = {m: float(np.mean(v)) for m, v in results.items()}
    std = {m: float(np.std(v)) for m, v in results.items()}
    best = max((m for m in results if m != "auto"), key=lambda m: mean[m])
    target_only = max(TARGET_ONLY_METHODS, key=lambda m: mean.get(m, -np.inf))
    auto = mean["auto"]
    return {
        "auto": (auto, std["auto"]),
        "best": (best, mean[best], std[best]),
        "target_only": (target_only, mean[target_only], std[target_only]),
        "regret": mean[best] - auto,
        "within_best": auto >= mean[best] - std[best],
        "not_below_target_only": auto >= mean[target_only] - std[target_only],
    }


def cell(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def report(outcomes: dict[str, dict[str, Any]], splits: dict[str, str]) -> list[str]:
    lines = []
    header = (
        f"{'task':36} {'split':9} {'auto':>15} {'best after the fact':>36} "
        f"{'best target-only':>38} {'regret':>7}  within  not-below"
    )
    for half in ("tuning", "held-out"):
        names = [n for n in outcomes if splits[n] == half]
        if not names:
            continue
        lines += ["", header]
        within = not_below = 0
        for name in names:
            v = verdict(outcomes[name])
            within += v["within_best"]
            not_below += v["not_below_target_only"]
            best, target_only = v["best"], v["target_only"]
            lines.append(
                f"{name:36} {half:9} {cell(*v['auto']):>15} "
                f"{best[0] + ' ' + cell(best[1], best[2]):>36} "
                f"{target_only[0] + ' ' + cell(target_only[1], target_only[2]):>38} "
                f"{v['regret']:>7.3f}  {'yes' if v['within_best'] else 'NO':6}  "
                f"{'yes' if v['not_below_target_only'] else 'NO'}"
            )
        lines.append(
            f"{half}: auto within 1 std of the best on {within}/{len(names)} tasks "
            f"({100 * within / len(names):.0f}%); below the best target-only method by more "
            f"than 1 std on {len(names) - not_below}"
        )
    lines += ["", "auto's picks per seed and its cost against one parameter fit:"]
    for name, outcome in outcomes.items():
        ratio = outcome["auto_seconds"] / max(outcome["parameter_seconds"], 1e-9)
        lines.append(
            f"- {name} ({outcome['shift']}, {outcome['train_rows']} target rows): "
            f"{', '.join(outcome['picks'])}; {outcome['auto_seconds']:.1f} s vs "
            f"{outcome['parameter_seconds']:.2f} s ({ratio:.0f}x)"
        )
    return lines


def select_tasks(split: str, wanted: list[str] | None) -> tuple[list[Task], dict[str, str]]:
    """The tasks of `split` ("all", "tuning" or "held-out") whose names contain one of
    `wanted` (any, if None), and each one's half; a task whose data is missing is skipped,
    saying why."""
    tasks: list[Task] = []
    splits: dict[str, str] = {}
    for build in quality_tasks.BUILDERS:
        half = quality_tasks.split_of(build)
        if split != "all" and half != split:
            continue
        task = build()
        if isinstance(task, str):
            print(f"skipped {build.__name__}: {task}")
            continue
        if wanted and not any(w in task.name.lower() for w in wanted):
            continue
        tasks.append(task)
        splits[task.name] = half
    return tasks, splits


def _run_quietly(task: Task, seeds: int, epochs: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    return run_task(task, seeds, epochs, lambda message: None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 tasks, 1 seed")
    parser.add_argument("--seeds", type=int, default=3, help="target draws per task (3)")
    parser.add_argument("--split", choices=("all", "tuning", "held-out"), default="all")
    parser.add_argument("--tasks", help="comma-separated substrings of task names to run")
    parser.add_argument(
        "--workers", type=int, default=1, help="tasks run at once, one process each"
    )
    parser.add_argument("--output", help="write every score to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds, epochs = (1, 20) if args.quick else (args.seeds, 100)
    wanted = [w.strip().lower() for w in args.tasks.split(",")] if args.tasks else None
    tasks, splits = select_tasks(args.split, wanted)
    if args.quick and not wanted:
        tasks = [t for t in tasks if t.name.startswith(("iris", "wine mis", "diabetes age"))]
    started = time.perf_counter()
    outcomes: dict[str, dict[str, Any]] = {}
    if args.workers > 1:
        # One process per task, each on one torch thread: the tasks are independent.
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = {t.name: pool.submit(_run_quietly, t, seeds, epochs) for t in tasks}
            for name, future in futures.items():
                outcomes[name] = future.result()
                print(f"{name}: done", flush=True)
    else:
        for task in tasks:
            print(f"{task.name}: {task.note}; {len(task.source)} source rows", flush=True)
            outcomes[task.name] = run_task(task, seeds, epochs, lambda m: print(m, flush=True))
    print()
    print(
        f"Test score (accuracy; R² for regression) on held-out target rows, mean ± std over "
        f"{seeds} seed(s); {epochs} epochs per fit, Graft's default settings; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    print("\n".join(report(outcomes, splits)))
    if args.output:
        Path(args.output).write_text(json.dumps({"splits": splits, "outcomes": outcomes}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
