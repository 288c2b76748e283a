"""Issue 5 through the API: the new strategies, auto, the transfer report, validation."""

from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from app.db.session import Database
from app.ml import training
from tests.helpers import FAST, assert_problem, builtin, csv_bytes, run_pending_jobs, upload

# Two folds, one repeat: the cross-validation of every job stays a handful of tiny fits.
QUICK_CV = {**FAST, "cv_folds": 2, "cv_repeats": 1}

TARGET_ONLY = ("scratch", "linear", "structure")


def blobs_frame(rows: int, seed: int, *, shift: float = 0.0, flip: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(0.0, 1.5, size=rows) + shift
    x2 = rng.normal(0.0, 1.0, size=rows)
    above = (x1 - shift) > 0
    if flip:
        above = ~above
    return pd.DataFrame({"x1": x1, "x2": x2, "label": np.where(above, "a", "b")})


def source_and_target(
    client: TestClient, database: Database, *, shift: float = 0.0, flip: bool = False
) -> tuple[str, str]:
    """A source model on 150 rows, and a target dataset of 40 rows; returns both dataset ids."""
    source = upload(client, "source.csv", csv_bytes(blobs_frame(150, 0))).json()["id"]
    target_frame = blobs_frame(40, 1, shift=shift, flip=flip)
    target = upload(client, "target.csv", csv_bytes(target_frame)).json()["id"]
    response = client.post(
        "/v1/jobs/source-training",
        json={
            "dataset_id": source,
            "target_column": "label",
            "model_name": "src",
            "architecture": {"hidden_layers": [10, 10]},
            "hyperparameters": FAST,
        },
    )
    assert response.status_code == 202, response.text
    run_pending_jobs(database)
    return source, target


def request_fine_tuning(
    client: TestClient, target: str, name: str, strategy: str, *, base: str = "src", **extra: Any
) -> Any:
    body = {
        "base_model": {"name": base, "version": 1},
        "dataset_id": target,
        "target_column": "label",
        "model_name": name,
        "strategy": strategy,
        "hyperparameters": QUICK_CV,
        **extra,
    }
    return client.post("/v1/jobs/fine-tuning", json=body)


def fine_tune(client: TestClient, target: str, name: str, strategy: str, **extra: Any) -> str:
    response = request_fine_tuning(client, target, name, strategy, **extra)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    body = client.get(f"/v1/jobs/{job_id}/events?limit=200").json()
    found: list[dict[str, Any]] = body["data"]
    return found


def force_choice(monkeypatch: pytest.MonkeyPatch, members: list[str]) -> None:
    """auto runs its cross-validation and guard as shipped, then delivers `members` (blended
    when several) instead of the guard's choice: a test of what a delivery looks like."""
    from app.ml.transfer import selection as selection_module

    real_choose = selection_module.choose

    def choose(scores: Any, metric: str = "score", blender: Any = None) -> Any:
        choice = real_choose(scores, metric, blender)
        by_name = {s.candidate.name: s for s in scores}
        choice.chosen = blender([by_name[name] for name in members])
        return choice

    monkeypatch.setattr(selection_module, "choose", choose)


class TestStrategies:
    def test_each_new_strategy_trains_serves_and_reports(
        self, client: TestClient, database: Database
    ) -> None:
        _, target = source_and_target(client, database, shift=1.0)
        jobs = {s: fine_tune(client, target, f"t-{s}", s) for s in ("lp_ft", "l2_sp", "joint")}
        jobs["scratch"] = fine_tune(client, target, "t-scratch", "scratch")
        run_pending_jobs(database)
        for strategy, job_id in jobs.items():
            job = client.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "succeeded", job
            version = client.get(f"/v1/models/t-{strategy}/versions/1").json()
            assert version["strategy"] == strategy
            report = version["transfer_report"]
            assert report == job["metrics"]["transfer_report"]
            assert report["metric"] == "accuracy"
            assert report["cv"] == {"folds": 2, "repeats": 1}
            assert report["baseline"]["candidate"] == "scratch/target"
            assert report["transfer_gain"] == pytest.approx(
                report["score"]["mean"] - report["baseline"]["mean"]
            )
            assert report["uses_source"] is (strategy != "scratch")
            shift = report["domain_shift"]
            assert set(shift["standardised_mean_difference"]) == {"x1", "x2"}
            # x1 moved by one unit (source std 1.5): about 0.7 source standard deviations.
            assert 0.3 < shift["standardised_mean_difference"]["x1"] < 1.2
            assert 0.5 < shift["classifier_auc"] <= 1.0
            cv_events = [
                e
                for e in events(client, job_id)
                if (e["data"] or {}).get("phase") == "cross_validation"
            ]
            # The named strategy under the requested (default: source) scaling, and the
            # baseline; a target-only strategy always reads the target's own scaling.
            own = "target" if strategy in ("scratch", "linear", "structure") else "source"
            expected = {f"{strategy}/{own}", "scratch/target"}
            assert {e["data"]["candidate"] for e in cv_events} == expected
            prediction = client.post(
                f"/v1/models/t-{strategy}/predict", json={"instances": [[2.0, 0.0], [-2.0, 0.0]]}
            )
            assert prediction.status_code == 200, prediction.text
        joint_logs = [e["message"] for e in events(client, jobs["joint"])]
        assert any("joint: 150 source rows and 32 target rows" in m for m in joint_logs)

    def test_target_normalization_refits_and_is_served(
        self, client: TestClient, database: Database
    ) -> None:
        _, target = source_and_target(client, database, shift=3.0)
        fine_tune(client, target, "refit", "parameter", target_normalization="target")
        fine_tune(client, target, "kept", "parameter", target_normalization="source")
        run_pending_jobs(database)
        frame = blobs_frame(40, 1, shift=3.0)
        refit = client.get("/v1/models/refit/versions/1").json()
        kept = client.get("/v1/models/kept/versions/1").json()
        x1 = refit["preprocessing"]["features"]["columns"][0]
        assert x1["mean"] == pytest.approx(frame["x1"].mean())
        assert x1["std"] == pytest.approx(frame["x1"].std(ddof=0))
        assert kept["preprocessing"]["features"]["columns"][0]["mean"] != pytest.approx(x1["mean"])
        assert refit["transfer_report"]["target_normalization"] == "target"
        assert kept["transfer_report"]["target_normalization"] == "source"

    def test_normalization_auto_chooses_by_cross_validation(
        self, client: TestClient, database: Database
    ) -> None:
        _, target = source_and_target(client, database, shift=3.0)
        job_id = fine_tune(client, target, "either", "feature", target_normalization="auto")
        run_pending_jobs(database)
        version = client.get("/v1/models/either/versions/1").json()
        selection = version["metrics"]["selection"]
        names = [c["candidate"] for c in selection["candidates"]]
        assert names == ["feature/source", "feature/target"]
        # Two candidates of one strategy: no guard, the better selection score wins.
        best = max(
            selection["candidates"],
            key=lambda c: (c["selection_score"], c["candidate"] == names[0]),
        )
        assert selection["choice"] == best["candidate"]
        assert selection["best_target_only"] is None
        assert version["transfer_report"]["target_normalization"] == best["target_normalization"]
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


class TestAuto:
    def test_scores_every_candidate_picks_the_best_and_delivers_its_fold_models(
        self, client: TestClient, database: Database
    ) -> None:
        _, target = source_and_target(client, database, shift=1.0)
        job_id = fine_tune(client, target, "auto", "auto", target_normalization="auto")
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded", job
        version = client.get("/v1/models/auto/versions/1").json()
        selection = version["metrics"]["selection"]
        names = {c["candidate"] for c in selection["candidates"]}
        assert names == {
            "feature/source",
            "feature/target",
            "parameter/source",
            "parameter/target",
            "lp_ft/source",
            "lp_ft/target",
            "l2_sp/source",
            "l2_sp/target",
            "joint/source",
            "joint/target",
            "scratch/target",
            "linear/target",
        }
        for candidate in selection["candidates"]:
            assert 0.0 <= candidate["mean"] <= 1.0 and candidate["std"] >= 0.0
            assert candidate["folds"] == 2
        # The guard: the best transfer candidate by selection score, if its paired gain over
        # the best target-only one exceeds the noise, else that target-only one.
        by_name = {c["candidate"]: c for c in selection["candidates"]}
        transfer = [c for c in selection["candidates"] if c["strategy"] not in TARGET_ONLY]
        target_only = [c for c in selection["candidates"] if c["strategy"] in TARGET_ONLY]
        top = max(transfer, key=lambda c: c["selection_score"])
        floor = max(target_only, key=lambda c: c["selection_score"])
        # Each group's entry is its best, or the blend of its best and the candidates within
        # noise of it, best first.
        for entry, leader in (
            (selection["best_transfer"], top),
            (selection["best_target_only"], floor),
        ):
            assert entry == leader["candidate"] or entry.startswith(
                f"blend of {leader['candidate']} + "
            )
        threshold = max(
            selection["guard_standard_errors"] * selection["gain_standard_error"],
            selection["minimum_gain"],
        )
        transfer_won = selection["paired_gain"] > threshold
        expected = selection["best_transfer" if transfer_won else "best_target_only"]
        assert selection["choice"] == expected
        assert selection["rule"].startswith("transfer:" if transfer_won else "target-only:")
        assert version["transfer_report"]["decided_by"] == selection["rule"]
        assert version["transfer_report"]["members"] == selection["members"]
        assert version["strategy"] == by_name[selection["members"][0]]["strategy"]
        # Every candidate's score appeared as an event as it was computed.
        cv = [
            e
            for e in events(client, job_id)
            if (e["data"] or {}).get("phase") == "cross_validation"
        ]
        assert {e["data"]["candidate"] for e in cv} == names
        # auto delivers the chosen candidates' fold models: together they trained on all 40
        # rows, and each row is validated by the models that did not see it; the closed-form
        # linear model alone is fitted on every row and validates nothing.
        closed_form = selection["members"] == ["linear/target"]
        expected_rows = (
            {"train": 40, "validation": 0} if closed_form else {"train": 40, "validation": 40}
        )
        assert version["metrics"]["rows"] == expected_rows
        if not closed_form:
            assert version["architecture"]["type"] == "ensemble"
            assert version["metrics"]["validation"]["accuracy"] is not None
        prediction = client.post("/v1/models/auto/predict", json={"instances": [[2.0, 0.0]]})
        assert prediction.status_code == 200, prediction.text

    def test_regression_delivers_its_fold_models_with_out_of_fold_metrics(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import onnxruntime as ort

        # On a linear target the closed-form linear model may win, which has no folds to
        # deliver; a transfer candidate that has them is delivered instead.
        force_choice(monkeypatch, ["parameter/source"])
        rng = np.random.default_rng(3)

        def frame(rows: int, shift: float) -> pd.DataFrame:
            x1, x2 = rng.normal(shift, 1.0, rows), rng.normal(0.0, 1.0, rows)
            y = 3.0 * x1 - 2.0 * x2 + 50.0 + rng.normal(0.0, 0.3, rows)
            return pd.DataFrame({"x1": x1, "x2": x2, "y": y})

        source = upload(client, "src.csv", csv_bytes(frame(150, 0.0))).json()["id"]
        target = upload(client, "tgt.csv", csv_bytes(frame(40, 1.0))).json()["id"]
        response = client.post(
            "/v1/jobs/source-training",
            json={
                "dataset_id": source,
                "target_column": "y",
                "task": "regression",
                "model_name": "reg-src",
                "architecture": {"hidden_layers": [10, 10]},
                "hyperparameters": FAST,
            },
        )
        assert response.status_code == 202, response.text
        run_pending_jobs(database)
        response = client.post(
            "/v1/jobs/fine-tuning",
            json={
                "base_model": {"name": "reg-src", "version": 1},
                "dataset_id": target,
                "target_column": "y",
                "model_name": "reg-auto",
                "strategy": "auto",
                "hyperparameters": QUICK_CV,
            },
        )
        assert response.status_code == 202, response.text
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{response.json()['id']}").json()
        assert job["status"] == "succeeded", job
        version = client.get("/v1/models/reg-auto/versions/1").json()
        validation = version["metrics"]["validation"]
        assert version["metrics"]["selection"]["members"] == ["parameter/source"]
        assert version["architecture"]["type"] == "ensemble"
        assert version["architecture"]["combine"] == "mean"
        assert version["architecture"]["fold_models"] == [2]
        assert version["metrics"]["rows"] == {"train": 40, "validation": 40}
        # Out-of-fold R² and errors in the target's own units, like any version's.
        assert {"r2", "mae", "rmse"} <= set(validation)
        assert validation["r2"] > 0.5 and validation["rmse"] < 3.0
        rows = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, -1.0]], dtype=np.float32)
        answer = client.post("/v1/models/reg-auto/predict", json={"instances": rows.tolist()})
        assert answer.status_code == 200, answer.text
        predicted = np.array(answer.json()["predictions"], dtype=np.float64)
        assert np.abs(predicted - (3.0 * rows[:, 0] - 2.0 * rows[:, 1] + 50.0)).max() < 3.0
        exported = client.get("/v1/models/reg-auto/versions/1/export", params={"format": "onnx"})
        assert exported.status_code == 200, exported.text
        (values,) = ort.InferenceSession(exported.content).run(None, {"features": rows})
        assert np.abs(values - predicted).max() <= 1e-4 * np.abs(predicted).max()

    def test_target_only_pick_when_the_source_misleads(
        self, client: TestClient, database: Database
    ) -> None:
        # The target's labels contradict the source, so warm starts mislead; auto must say so.
        _, target = source_and_target(client, database, flip=True)
        job_id = fine_tune(
            client,
            target,
            "flip-auto",
            "auto",
            target_normalization="target",
            hyperparameters={**QUICK_CV, "l2_sp_alpha": 100.0},
        )
        run_pending_jobs(database)
        version = client.get("/v1/models/flip-auto/versions/1").json()
        selection = version["metrics"]["selection"]
        scores = {c["candidate"]: c["mean"] for c in selection["candidates"]}
        assert scores["l2_sp/target"] < scores["scratch/target"]
        assert version["transfer_report"]["uses_source"] is False
        logs = [e["message"] for e in events(client, job_id)]
        assert any("no transfer candidate's gain was larger than its noise" in m for m in logs)
        prediction = client.post(
            "/v1/models/flip-auto/predict", json={"instances": [[3.0, 0.0], [-3.0, 0.0]]}
        ).json()
        assert prediction["predictions"] == ["b", "a"]

    def test_linear_model_is_served_as_a_torch_module(
        self, client: TestClient, database: Database
    ) -> None:
        from sklearn.linear_model import LogisticRegression

        _, target = source_and_target(client, database, flip=True)
        fine_tune(client, target, "lin", "linear", target_normalization="target")
        run_pending_jobs(database)
        version = client.get("/v1/models/lin/versions/1").json()
        assert version["strategy"] == "linear"
        assert version["architecture"]["hidden_layers"] == []
        assert version["metrics"]["epochs_run"] == 0
        # Closed form: no epoch to pick, so no validation rows are held out.
        assert version["metrics"]["rows"] == {"train": 40, "validation": 0}
        # The served probabilities are scikit-learn's on the target-standardised inputs.
        frame = blobs_frame(40, 1, flip=True)
        x = frame[["x1", "x2"]].to_numpy()
        scaled = (x - x.mean(axis=0)) / x.std(axis=0)
        labels = (frame["label"] == "b").to_numpy().astype(int)
        expected = LogisticRegression(max_iter=1000).fit(scaled, labels)
        served = client.post("/v1/models/lin/predict", json={"instances": x[:5].tolist()}).json()
        assert np.allclose(served["probabilities"], expected.predict_proba(scaled[:5]), atol=1e-4)


class TestNegativeTransfer:
    def test_warning_when_transfer_loses_to_the_target_only_baseline(
        self, client: TestClient, database: Database
    ) -> None:
        _, target = source_and_target(client, database, flip=True)
        # A strong pull towards the source weights keeps the source's (now wrong) boundary.
        job_id = fine_tune(
            client,
            target,
            "pinned",
            "l2_sp",
            hyperparameters={**QUICK_CV, "l2_sp_alpha": 100.0},
        )
        run_pending_jobs(database)
        report = client.get("/v1/models/pinned/versions/1").json()["transfer_report"]
        assert report["negative_transfer"] is True and report["transfer_gain"] < -0.3
        warnings = [e for e in events(client, job_id) if e["type"] == "warning"]
        assert any("negative transfer" in w["message"] for w in warnings)
        assert warnings[-1]["data"]["transfer_gain"] == report["transfer_gain"]

    def test_no_warning_when_transfer_helps(self, client: TestClient, database: Database) -> None:
        _, target = source_and_target(client, database)
        job_id = fine_tune(client, target, "fine", "feature")
        run_pending_jobs(database)
        report = client.get("/v1/models/fine/versions/1").json()["transfer_report"]
        assert report["negative_transfer"] is False
        assert not any("negative transfer" in e["message"] for e in events(client, job_id))


class TestRegression:
    def test_r2_mae_rmse_in_original_units(self, client: TestClient, database: Database) -> None:
        from sklearn.datasets import load_diabetes

        frame = load_diabetes(as_frame=True).frame
        young, old = frame[frame["age"] < 0], frame[frame["age"] >= 0].iloc[:80]
        source = upload(client, "young.csv", csv_bytes(young)).json()["id"]
        target = upload(client, "old.csv", csv_bytes(old.reset_index(drop=True))).json()["id"]
        response = client.post(
            "/v1/jobs/source-training",
            json={
                "dataset_id": source,
                "target_column": "target",
                "model_name": "src",
                "architecture": {"hidden_layers": [16]},
                "hyperparameters": FAST,
            },
        )
        assert response.status_code == 202
        run_pending_jobs(database)
        response = client.post(
            "/v1/jobs/fine-tuning",
            json={
                "base_model": {"name": "src"},
                "dataset_id": target,
                "target_column": "target",
                "model_name": "old",
                "strategy": "lp_ft",
                "hyperparameters": QUICK_CV,
            },
        )
        assert response.status_code == 202, response.text
        run_pending_jobs(database)
        version = client.get("/v1/models/old/versions/1").json()
        validation = version["metrics"]["validation"]
        assert version["transfer_report"]["metric"] == "r2"
        assert version["transfer_report"]["domain_shift"]["standardised_mean_difference"]["age"] > 1
        # Recompute the validation metrics from served predictions on the same rows.
        _, val_idx = training.split_indices(80, QUICK_CV.get("validation_fraction", 0.2), 0, None)
        rows = old.reset_index(drop=True).iloc[val_idx]
        served = client.post(
            "/v1/models/old/predict",
            json={"instances": rows.drop(columns="target").to_numpy().tolist()},
        ).json()["predictions"]
        error = np.asarray(served) - rows["target"].to_numpy()
        assert validation["mae"] == pytest.approx(np.abs(error).mean(), rel=1e-4)
        assert validation["rmse"] == pytest.approx(np.sqrt((error**2).mean()), rel=1e-4)
        total = ((rows["target"] - rows["target"].mean()) ** 2).sum()
        assert validation["r2"] == pytest.approx(1 - (error**2).sum() / total, rel=1e-4, abs=1e-4)


class TestValidation:
    @pytest.mark.parametrize(
        ("field", "value", "named"),
        [
            ("strategy", "transfer-everything", "lp_ft"),
            ("target_normalization", "both", "target"),
        ],
    )
    def test_unknown_choice_names_the_choices(
        self, client: TestClient, field: str, value: str, named: str
    ) -> None:
        target = builtin(client, "iris", start=100, stop=150)
        body = {
            "base_model": {"name": "nobody"},
            "dataset_id": target["id"],
            "target_column": "target",
            "model_name": "m",
            "strategy": "auto",
            field: value,
        }
        problem = assert_problem(
            client.post("/v1/jobs/fine-tuning", json=body), 422, "validation_error"
        )
        assert named in str(problem["errors"])

    @pytest.mark.parametrize(
        "hyper",
        [
            {"layer_lr_decay": 1.5},
            {"layer_lr_decay": 0},
            {"lp_epochs_fraction": 0},
            {"ft_lr_factor": 2},
            {"l2_sp_alpha": -1},
            {"joint_target_weight": 0},
            {"cv_folds": 1},
            {"cv_repeats": 0},
        ],
    )
    def test_hyperparameters_out_of_range(self, client: TestClient, hyper: dict) -> None:
        target = builtin(client, "iris", start=100, stop=150)
        body = {
            "base_model": {"name": "nobody"},
            "dataset_id": target["id"],
            "target_column": "target",
            "model_name": "m",
            "strategy": "l2_sp",
            "hyperparameters": hyper,
        }
        problem = assert_problem(
            client.post("/v1/jobs/fine-tuning", json=body), 422, "validation_error"
        )
        assert next(iter(hyper)) in str(problem["errors"])

    def test_joint_needs_the_source_dataset(self, client: TestClient, database: Database) -> None:
        source, target = source_and_target(client, database)
        assert client.delete(f"/v1/datasets/{source}").status_code == 204
        body = {
            "base_model": {"name": "src", "version": 1},
            "dataset_id": target,
            "target_column": "label",
            "model_name": "j",
            "strategy": "joint",
        }
        problem = assert_problem(
            client.post("/v1/jobs/fine-tuning", json=body), 409, "source_dataset_unavailable"
        )
        assert source in problem["detail"]
        # Other strategies still work, and auto simply leaves joint out.
        job_id = fine_tune(client, target, "a", "auto")
        run_pending_jobs(database)
        selection = client.get("/v1/models/a/versions/1").json()["metrics"]["selection"]
        assert not any(c["strategy"] == "joint" for c in selection["candidates"])
        report = client.get("/v1/models/a/versions/1").json()["transfer_report"]
        assert report["domain_shift"]["classifier_auc"] is None
        assert any("joint left out" in e["message"] for e in events(client, job_id))

    @pytest.mark.parametrize(
        "choice", [{"strategy": "auto"}, {"strategy": "feature", "target_normalization": "auto"}]
    )
    def test_choosing_needs_enough_rows_for_cross_validation(
        self, client: TestClient, database: Database, choice: dict
    ) -> None:
        source_and_target(client, database)
        tiny = upload(client, "tiny.csv", csv_bytes(blobs_frame(3, 5))).json()["id"]
        body = {
            "base_model": {"name": "src"},
            "dataset_id": tiny,
            "target_column": "label",
            "model_name": "tiny",
            **choice,
        }
        problem = assert_problem(
            client.post("/v1/jobs/fine-tuning", json=body), 422, "dataset_too_small"
        )
        assert "at least 4" in problem["detail"]
        # A named strategy on the same rows is accepted; its report says why it has no CV.
        job_id = fine_tune(client, tiny, "tiny", "feature")
        run_pending_jobs(database)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        version = client.get("/v1/models/tiny/versions/1").json()
        assert version["transfer_report"]["score"] is None
        assert version["transfer_report"]["transfer_gain"] is None
        assert any("no transfer report" in e["message"] for e in events(client, job_id))


class TestBlend:
    """A blend that auto chooses is one version: served, exported and explained as one model,
    and refused as a fine-tuning base with a reason."""

    def test_a_blend_is_served_exported_and_refused_as_a_base(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import io
        import json

        import onnxruntime as ort
        import torch

        # A blend of a transfer candidate on the source's scaling and a target-only one on
        # the target's.
        members = ["parameter/source", "linear/target"]
        force_choice(monkeypatch, members)
        _, target = source_and_target(client, database, shift=1.0)
        job_id = fine_tune(client, target, "blend", "auto")
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded", job
        version = client.get("/v1/models/blend/versions/1").json()
        assert version["architecture"]["type"] == "ensemble"
        assert version["architecture"]["candidates"] == members
        assert version["metrics"]["selection"]["members"] == members
        assert version["transfer_report"]["members"] == members
        assert version["strategy"] == "parameter"
        messages = [e["message"] for e in events(client, job_id)]
        assert any(
            "served as one model: the mean of parameter/source (2), "
            "linear/target (fitted on every row)" in m
            for m in messages
        )
        # Epoch events and progress show the first fold model's training.
        assert any("epochs of the first fold model of parameter/source" in m for m in messages)
        assert job["progress"]["epoch"] >= 1

        rows = np.array([[2.0, 0.5], [-2.0, -0.5], [0.3, 0.0], [40.0, -9.0]], dtype=np.float32)
        answer = client.post("/v1/models/blend/predict", json={"instances": rows.tolist()})
        assert answer.status_code == 200, answer.text
        probabilities = np.array(answer.json()["probabilities"], dtype=np.float32)
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

        exported = client.get("/v1/models/blend/versions/1/export", params={"format": "onnx"})
        assert exported.status_code == 200, exported.text
        onnx_probabilities, _ = ort.InferenceSession(exported.content).run(None, {"features": rows})
        assert np.abs(onnx_probabilities - probabilities).max() <= 1e-5
        scripted = client.get(
            "/v1/models/blend/versions/1/export", params={"format": "torchscript"}
        )
        assert scripted.status_code == 200, scripted.text
        files = {"graft.json": ""}
        module = torch.jit.load(io.BytesIO(scripted.content), _extra_files=files)
        assert json.loads(files["graft.json"])["model"] == "blend"
        with torch.no_grad():
            assert np.abs(module(torch.from_numpy(rows), {}).numpy() - probabilities).max() <= 1e-5

        refused = request_fine_tuning(client, target, "from-blend", "parameter", base="blend")
        problem = assert_problem(refused, 422, "base_is_ensemble")
        assert "parameter/source, linear/target" in problem["detail"]
        assert "src version 1" in problem["detail"]


class TestForest:
    """The `forest` strategy: a target-only random forest served, exported and explained as
    any version, alone or as a member of auto's blend, and refused as a fine-tuning base."""

    @staticmethod
    def _check_served_and_exported(client: TestClient, name: str) -> np.ndarray:
        import io

        import onnxruntime as ort
        import torch

        rows = np.array([[2.0, 0.5], [-2.0, -0.5], [0.3, 0.0], [40.0, -9.0]], dtype=np.float32)
        answer = client.post(f"/v1/models/{name}/predict", json={"instances": rows.tolist()})
        assert answer.status_code == 200, answer.text
        probabilities = np.array(answer.json()["probabilities"], dtype=np.float32)
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        exported = client.get(f"/v1/models/{name}/versions/1/export", params={"format": "onnx"})
        assert exported.status_code == 200, exported.text
        onnx_probabilities, _ = ort.InferenceSession(exported.content).run(None, {"features": rows})
        assert np.abs(onnx_probabilities - probabilities).max() <= 1e-5
        scripted = client.get(
            f"/v1/models/{name}/versions/1/export", params={"format": "torchscript"}
        )
        assert scripted.status_code == 200, scripted.text
        module = torch.jit.load(io.BytesIO(scripted.content))
        with torch.no_grad():
            assert np.abs(module(torch.from_numpy(rows), {}).numpy() - probabilities).max() <= 1e-5
        return probabilities

    def test_a_forest_is_served_exported_and_refused_as_a_base(
        self, client: TestClient, database: Database
    ) -> None:
        _, target = source_and_target(client, database, shift=1.0)
        job_id = fine_tune(client, target, "trees", "forest")
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded", job
        version = client.get("/v1/models/trees/versions/1").json()
        assert version["strategy"] == "forest"
        assert version["architecture"]["type"] == "forest"
        assert version["architecture"]["trees"] == 100
        # Target-only: it reads the target's own scaling whatever the request said.
        cv_candidates = {
            e["data"]["candidate"]
            for e in events(client, job_id)
            if (e["data"] or {}).get("phase") == "cross_validation"
        }
        assert cv_candidates == {"forest/target", "scratch/target"}
        assert version["metrics"]["train"]["accuracy"] >= 0.9
        probabilities = self._check_served_and_exported(client, "trees")
        # x1 decides the label (a: x1 above the shift); the forest learned that much.
        assert probabilities[0].argmax() != probabilities[1].argmax()

        refused = request_fine_tuning(client, target, "from-trees", "parameter", base="trees")
        problem = assert_problem(refused, 422, "base_is_forest")
        assert "src version 1" in problem["detail"]

    def test_a_blend_with_a_forest_member_is_one_model(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import dataclasses

        from app.ml.transfer import registry

        # auto does not try the forest as shipped; a deployment that declared it a candidate
        # would blend it like any other.
        monkeypatch.setitem(
            registry._STRATEGIES,
            "forest",
            dataclasses.replace(registry.get("forest"), in_auto=True),
        )
        force_choice(monkeypatch, ["parameter/source", "forest/target"])
        _, target = source_and_target(client, database, shift=1.0)
        job_id = fine_tune(client, target, "blend-trees", "auto")
        run_pending_jobs(database)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        version = client.get("/v1/models/blend-trees/versions/1").json()
        assert version["architecture"]["type"] == "ensemble"
        architecture = version["architecture"]
        # The parameter candidate's fold models (2 folds x 1 repeat), then the forest grown on
        # every row.
        assert architecture["fold_models"] == [2, 1]
        assert [m["type"] for m in architecture["members"]] == ["mlp", "mlp", "forest"]
        self._check_served_and_exported(client, "blend-trees")
