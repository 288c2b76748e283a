"""Transfer quality benchmark: every strategy, `auto`, and target-only baselines, per task.

Tasks are built from data that ships in packages (scikit-learn; palmerpenguins and statsmodels
when the optional `bench` extra is installed). Each task has a source domain and a shifted target
domain; per seed a few labelled target rows are drawn for training and the remaining target
rows are the test set. The script calls app.ml directly (no HTTP, no database), exactly the
code a fine-tuning job runs.

    .venv/bin/python benchmarks/quality.py --workers 6  # full: 5 seeds, a process per task
    .venv/bin/python benchmarks/quality.py --quick    # smoke run: 2 seeds, small budget

Prints one table (rows: methods, columns: tasks, cells: mean ± std of the test score over
the seeds: accuracy, or R² for regression), then auto's picks, the bar check and auto's cost.
"""

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml import architectures, tabular, training, transfer


@dataclass
class Task:
    name: str
    source: pd.DataFrame
    target: pd.DataFrame
    features: list[str]
    label: str
    kind: str  # classification | regression
    train_per_class: int = 0  # few-shot draw for classification
    train_rows: int = 0  # draw for regression
    note: str = ""


# Task builders.


def _digits() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    frame: pd.DataFrame = load_digits(as_frame=True).frame
    return frame


def digits_new_classes() -> Task:
    frame = _digits()
    pixels = [c for c in frame.columns if c != "target"]
    return Task(
        "digits 0-4 → 5-9",
        frame[frame.target < 5].reset_index(drop=True),
        frame[frame.target >= 5].reset_index(drop=True),
        pixels,
        "target",
        "classification",
        train_per_class=5,
        note="new classes: the head is replaced",
    )


def digits_pixel_shift() -> Task:
    frame = _digits()
    pixels = [c for c in frame.columns if c != "target"]
    order = np.random.default_rng(0).permutation(len(frame))
    source = frame.iloc[order[: len(frame) // 2]].reset_index(drop=True)
    target = frame.iloc[order[len(frame) // 2 :]].reset_index(drop=True).copy()
    # A different scanner: weaker contrast, a brighter background, an image shifted one
    # pixel to the right.
    images = target[pixels].to_numpy(dtype=np.float64).reshape(-1, 8, 8)
    images = np.roll(images, 1, axis=2)
    images[:, :, 0] = 0.0
    target[pixels] = (0.5 * images + 4.0).reshape(-1, 64)
    return Task(
        "digits pixel shift",
        source,
        target,
        pixels,
        "target",
        "classification",
        train_per_class=3,
        note="contrast 0.5x, +4 background, 1-pixel shift",
    )


def wine_lab() -> Task:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    columns = [c for c in frame.columns if c != "target"]
    order = np.random.default_rng(1).permutation(len(frame))
    source = frame.iloc[order[:100]].reset_index(drop=True)
    target = frame.iloc[order[100:]].reset_index(drop=True).copy()
    rng = np.random.default_rng(2)
    scale = rng.uniform(0.7, 1.4, size=len(columns))
    offset = rng.normal(0.0, 0.5, size=len(columns)) * target[columns].std().to_numpy()
    target[columns] = target[columns].to_numpy() * scale + offset
    return Task(
        "wine miscalibrated lab",
        source,
        target,
        columns,
        "target",
        "classification",
        train_per_class=4,
        note="every feature scaled 0.7-1.4x and offset",
    )


def penguins_body_size() -> Task | str:
    try:
        from palmerpenguins import load_penguins
    except ImportError:
        return "palmerpenguins is not installed (pip install -e '.[bench]')"
    frame = load_penguins().dropna().reset_index(drop=True)
    frame["year"] = frame["year"].astype("int64")
    median = frame["body_mass_g"].median()
    features = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "island"]
    return Task(
        "penguins body size",
        frame[frame.body_mass_g < median].reset_index(drop=True),
        frame[frame.body_mass_g >= median].reset_index(drop=True),
        features,
        "species",
        "classification",
        train_per_class=4,
        note="species; source lighter than the median, target heavier",
    )


def affairs_marriage_length() -> Task | str:
    try:
        import statsmodels.api as sm
    except ImportError:
        return "statsmodels is not installed (pip install -e '.[bench]')"
    frame = sm.datasets.fair.load_pandas().data.copy()
    frame["had_affair"] = np.where(frame.pop("affairs") > 0, "yes", "no")
    features = [c for c in frame.columns if c != "had_affair"]
    young = frame[frame.yrs_married < 6].sample(n=1000, random_state=0)
    return Task(
        "affairs marriage length",
        young.reset_index(drop=True),
        frame[frame.yrs_married >= 13].reset_index(drop=True),
        features,
        "had_affair",
        "classification",
        train_per_class=15,
        note="statsmodels' Fair data; marriages under 6 years -> 13 years and more",
    )


def diabetes_age() -> Task:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    median = frame["age"].median()
    return Task(
        "diabetes age shift (R²)",
        frame[frame.age < median].reset_index(drop=True),
        frame[frame.age >= median].reset_index(drop=True),
        features,
        "target",
        "regression",
        train_rows=40,
        note="regression; source younger than the median, target older",
    )


def iris_design() -> Task:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    return Task(
        "iris design split",
        frame.iloc[:100].reset_index(drop=True),
        frame.iloc[100:].reset_index(drop=True),
        features,
        "target",
        "classification",
        train_per_class=10,
        note="the design's split: rows 0-99 (setosa, versicolor) -> 100-149 (all virginica)",
    )


TASKS: list[Callable[[], Task | str]] = [
    digits_new_classes,
    digits_pixel_shift,
    wine_lab,
    penguins_body_size,
    diabetes_age,
    affairs_marriage_length,
    iris_design,
]


# One task.


@dataclass
class Budget:
    seeds: int
    epochs: int
    source_epochs: int
    cv_folds: int
    cv_repeats: int | None
    hidden: list[int]


def draw(task: Task, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    if task.kind == "classification":
        train: list[int] = []
        for label in sorted(task.target[task.label].unique()):
            rows = np.flatnonzero(task.target[task.label].to_numpy() == label)
            train.extend(rng.choice(rows, min(task.train_per_class, len(rows) - 1), replace=False))
        train_idx = np.sort(np.asarray(train))
    else:
        train_idx = np.sort(rng.choice(len(task.target), task.train_rows, replace=False))
    test_idx = np.setdiff1d(np.arange(len(task.target)), train_idx)
    return train_idx, test_idx


def train_source(task: Task, budget: Budget) -> tuple[Any, dict, dict]:
    spec = tabular.fit_features(task.source, task.features)
    target_spec = tabular.fit_target(task.source[task.label], task.kind)
    x = tabular.transform_features(spec, task.source)
    y = tabular.encode_target(target_spec, task.source[task.label])
    output_dim = len(target_spec["classes"]) if task.kind == "classification" else 1
    training.set_seed(0)
    architecture = {
        "type": "mlp",
        "hidden_layers": budget.hidden,
        "input_dim": spec["input_dim"],
        "output_dim": output_dim,
    }
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
        epochs=budget.source_epochs,
        batch_size=32,
        learning_rate=0.01,
        weight_decay=0.0,
        optimizer="adam",
        early_stopping_patience=10,
        seed=0,
    )
    return model, spec, {**target_spec, "_architecture": architecture}


def score_of(task_kind: str, metrics: dict[str, Any]) -> float:
    value = metrics["accuracy" if task_kind == "classification" else "r2"]
    return float(value) if value is not None else 0.0


def run_task(task: Task, budget: Budget, log: Callable[[str], None]) -> dict[str, Any]:
    source_model, spec, source_target = train_source(task, budget)
    architecture = source_target.pop("_architecture")
    if task.kind == "classification":
        target_classes = tabular.fit_target(task.target[task.label], "classification")["classes"]
        classes = tabular.merge_classes(source_target["classes"], target_classes)
        target_spec = {**source_target, "classes": classes}
        keep_head = classes == source_target["classes"]
    else:
        target_spec, keep_head = source_target, True
    output_dim = len(target_spec["classes"]) if task.kind == "classification" else 1
    architecture = {**architecture, "output_dim": output_dim}
    source_x = tabular.transform_features(spec, task.source)
    source_y = tabular.encode_target(target_spec, task.source[task.label])

    results: dict[str, list[float]] = {}
    picks: list[str] = []
    auto_scores: list[float] = []
    auto_seconds: list[float] = []
    parameter_seconds: list[float] = []
    for seed in range(budget.seeds):
        train_idx, test_idx = draw(task, seed)
        train_frame = task.target.iloc[train_idx]
        test_frame = task.target.iloc[test_idx]
        refit = tabular.refit_scaling(spec, train_frame)
        x_train = {
            "source": tabular.transform_features(spec, train_frame),
            "target": tabular.transform_features(refit, train_frame),
        }
        x_test = {
            "source": tabular.transform_features(spec, test_frame),
            "target": tabular.transform_features(refit, test_frame),
        }
        y_train = tabular.encode_target(target_spec, train_frame[task.label])
        y_test = tabular.encode_target(target_spec, test_frame[task.label])
        data = transfer.TransferData(
            target_spec=target_spec,
            x=x_train,
            y=y_train,
            source_model=source_model,
            architecture=architecture,
            keep_head=keep_head,
            source_x=source_x,
            source_y=source_y,
        )
        settings = transfer.Settings(
            epochs=budget.epochs, batch_size=16, learning_rate=0.01, seed=seed
        )
        candidates = transfer.auto_candidates(data, ("source", "target"), joint_available=True)
        every_row = np.arange(len(y_train))
        no_rows = np.zeros(0, dtype=np.int64)
        test_score: dict[transfer.Candidate, float] = {}
        for candidate in candidates:
            started = time.perf_counter()
            trained = transfer.train_candidate(candidate, data, settings, every_row, no_rows)
            if candidate == transfer.Candidate("parameter", "source"):
                parameter_seconds.append(time.perf_counter() - started)
            metrics = training.evaluate(
                trained.model, x_test[candidate.normalization], y_test, target_spec
            )
            test_score[candidate] = score_of(task.kind, metrics)
            results.setdefault(candidate.name, []).append(test_score[candidate])

        # auto: cross-validation on the target training rows only, then its pick's model,
        # which is the candidate above trained on every target row with the same seed.
        started = time.perf_counter()
        folds, repeats = transfer.fold_plan(len(y_train), budget.cv_folds, budget.cv_repeats)
        splits = transfer.fold_indices(y_train, task.kind, folds, repeats, seed)
        scores = [transfer.cross_validate(c, data, settings, splits) for c in candidates]
        best = transfer.choose(scores).candidate
        # The final fit's time is the pick's training time (measured above: redo it here).
        transfer.train_candidate(best, data, settings, every_row, no_rows)
        auto_seconds.append(time.perf_counter() - started)
        picks.append(best.name)
        auto_scores.append(test_score[best])

        found = baselines(
            task.kind, x_train["target"], y_train, x_test["target"], y_test, target_spec, seed
        )
        for name, score in found.items():
            results.setdefault(name, []).append(score)
        log(f"  seed {seed}: auto picked {best.name} ({test_score[best]:.3f})")
    results["auto"] = auto_scores
    return {
        "results": results,
        "picks": picks,
        "auto_seconds": float(np.mean(auto_seconds)),
        "parameter_seconds": float(np.mean(parameter_seconds)),
        "train_rows": len(draw(task, 0)[0]),
    }


BASELINES = ("baseline: logistic/ridge", "baseline: random forest")


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


# Report.


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def report(outcomes: dict[str, dict[str, Any]]) -> list[str]:
    tasks = list(outcomes)
    methods: list[str] = []
    for outcome in outcomes.values():
        for name in outcome["results"]:
            if name not in methods and name != "auto" and name not in BASELINES:
                methods.append(name)
    rows = [*methods, *BASELINES, "auto"]
    width = max(len(r) for r in rows) + 2
    col = max(18, *(len(t) + 2 for t in tasks))
    lines = ["".ljust(width) + "".join(t.rjust(col) for t in tasks)]
    for method in rows:
        line = method.ljust(width)
        for task in tasks:
            values = outcomes[task]["results"].get(method)
            line += (cell(values) if values else "-").rjust(col)
        lines.append(line)
    lines.append("")
    lines.append("auto's picks per seed, and the bar (auto within 1 std of the oracle, and not")
    lines.append("below the best target-only baseline by more than 1 std):")
    for task in tasks:
        outcome = outcomes[task]
        results = outcome["results"]
        auto = results["auto"]
        oracle = max((m for m in results if m != "auto"), key=lambda m: np.mean(results[m]))
        baseline = max(BASELINES, key=lambda m: np.mean(results[m]))
        oracle_ok = np.mean(auto) >= np.mean(results[oracle]) - np.std(results[oracle])
        baseline_ok = np.mean(auto) >= np.mean(results[baseline]) - np.std(results[baseline])
        verdict = "PASS" if oracle_ok and baseline_ok else "FAIL"
        lines.append(
            f"- {task}: auto {cell(auto)}; oracle {oracle} {cell(results[oracle])}; best "
            f"baseline {baseline.split(': ')[1]} {cell(results[baseline])} -> {verdict}"
        )
        lines.append(f"    picks: {', '.join(outcome['picks'])}")
        ratio = outcome["auto_seconds"] / max(outcome["parameter_seconds"], 1e-9)
        lines.append(
            f"    cost: auto {outcome['auto_seconds']:.1f} s vs one parameter fit "
            f"{outcome['parameter_seconds']:.2f} s ({ratio:.0f}x), "
            f"{outcome['train_rows']} target training rows"
        )
    return lines


def _run_quietly(task: Task, budget: Budget) -> dict[str, Any]:
    torch.set_num_threads(1)
    return run_task(task, budget, lambda message: None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, small budget")
    parser.add_argument("--seeds", type=int, help="override the number of seeds")
    parser.add_argument("--tasks", help="comma-separated substrings of task names to run")
    parser.add_argument(
        "--workers", type=int, default=1, help="run this many tasks at once, one process each"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        budget = Budget(seeds=2, epochs=20, source_epochs=40, cv_folds=3, cv_repeats=1, hidden=[32])
    else:
        budget = Budget(
            seeds=5, epochs=40, source_epochs=150, cv_folds=4, cv_repeats=None, hidden=[64]
        )
    if args.seeds:
        budget.seeds = args.seeds
    wanted = [w.strip().lower() for w in args.tasks.split(",")] if args.tasks else None
    tasks: list[Task] = []
    for build in TASKS:
        task = build()
        if isinstance(task, str):
            print(f"skipped {build.__name__}: {task}")
        elif not wanted or any(w in task.name.lower() for w in wanted):
            tasks.append(task)
    started = time.perf_counter()
    outcomes: dict[str, dict[str, Any]] = {}
    if args.workers > 1:
        # One process per task, each on one torch thread: the tasks are independent.
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = {t.name: pool.submit(_run_quietly, t, budget) for t in tasks}
            for name, future in futures.items():
                outcomes[name] = future.result()
                print(f"{name}: done", flush=True)
    else:
        for task in tasks:
            print(f"{task.name}: {task.note}; {len(task.source)} source rows", flush=True)
            outcomes[task.name] = run_task(task, budget, lambda m: print(m, flush=True))
    print()
    print(
        f"Test score (accuracy; R² for regression) on held-out target rows, mean ± std over "
        f"{budget.seeds} seeds; {budget.epochs} epochs per fit; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    print("\n".join(report(outcomes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
