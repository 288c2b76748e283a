"""Training work is bounded before it is queued: parameters, activation memory, optimizer steps,
the cardinality of what a request names, and job messages without tracebacks or paths."""

import io
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db.models import Dataset
from app.db.session import Database
from app.main import create_app
from app.ml import architectures, frames, tabular, training
from app.ml.errors import DataError
from app.schemas.jobs import FineTuningCreate, SourceTrainingCreate
from app.services import job_drafts, work_estimate
from tests.helpers import assert_problem, builtin, csv_bytes, run_pending_jobs, train_source, upload

SOURCE = "/v1/jobs/source-training"
FINE_TUNING = "/v1/jobs/fine-tuning"
PARQUET = "application/vnd.apache.parquet"


def source_body(dataset_id: str, **extra: Any) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "target_column": "target", "model_name": "m", **extra}


def fine_tuning_body(dataset_id: str, strategy: str = "parameter", **extra: Any) -> dict[str, Any]:
    return {
        "base_model": {"name": "src", "version": 1},
        "dataset_id": dataset_id,
        "target_column": "target",
        "model_name": "t",
        "strategy": strategy,
        **extra,
    }


@pytest.fixture
def big_table(client: TestClient) -> dict[str, Any]:
    """100,000 rows, one numeric feature and a numeric (regression) target."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.integers(0, 100, 100_000), "target": rng.random(100_000)})
    response = upload(client, "big.parquet", frames.to_parquet_bytes(frame), PARQUET)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def npz_upload(client: TestClient, count: int, side: int = 64) -> dict[str, Any]:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (count, side, side), dtype=np.uint8)
    np.savez(buffer, X=images, y=np.arange(count) % 3)
    response = upload(client, "images.npz", buffer.getvalue(), "application/x-npz")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


class TestWorkTooLarge:
    def test_a_250m_parameter_mlp_is_refused_naming_parameters(self, client: TestClient) -> None:
        iris = builtin(client, "iris")["id"]
        body = source_body(iris, architecture={"hidden_layers": [4096] * 16})
        problem = assert_problem(client.post(SOURCE, json=body), 422, "work_too_large")
        detail = problem["detail"]
        # The metadata says the target holds categories, not how many: at most one per row.
        expected = work_estimate.mlp_parameters(4, 150, [4096] * 16)
        assert expected > 250_000_000
        assert f"{expected:,} parameters (input width 4; output width up to 150)" in detail
        assert "over the limit of 50,000,000 (GRAFT_MAX_MODEL_PARAMETERS)" in detail
        assert "hidden_layers" in detail
        assert client.get("/v1/jobs").json()["data"] == []  # nothing was queued

    def test_a_cnn_with_a_huge_dense_layer_is_refused(self, client: TestClient) -> None:
        images = npz_upload(client, 10)["id"]
        architecture = {"type": "cnn", "channels": [512] * 3, "hidden_layers": [4096]}
        body = {**source_body(images, architecture=architecture), "target_column": "y"}
        detail = assert_problem(client.post(SOURCE, json=body), 422, "work_too_large")["detail"]
        assert "parameters" in detail and "GRAFT_MAX_MODEL_PARAMETERS" in detail
        assert "channels" in detail

    def test_a_cnn_of_512_channels_on_64x64_images_is_refused_for_memory(
        self, client: TestClient
    ) -> None:
        images = npz_upload(client, 130)["id"]
        architecture = {"type": "cnn", "channels": [512] * 3}
        body = {
            **source_body(images, architecture=architecture),
            "target_column": "y",
            "hyperparameters": {"batch_size": 128},
        }
        detail = assert_problem(client.post(SOURCE, json=body), 422, "work_too_large")["detail"]
        # 104 training rows per batch (130 less the validation fifth).
        assert "bytes of activations (104 rows x " in detail
        assert "GRAFT_MAX_ACTIVATION_BYTES" in detail and "batch_size" in detail
        body["hyperparameters"] = {"batch_size": 16}
        assert client.post(SOURCE, json=body).status_code == 202

    def test_800_million_steps_are_refused_naming_steps(
        self, client: TestClient, big_table: dict[str, Any]
    ) -> None:
        body = source_body(big_table["id"], hyperparameters={"epochs": 10_000, "batch_size": 1})
        detail = assert_problem(client.post(SOURCE, json=body), 422, "work_too_large")["detail"]
        assert "training would take 800,000,000 optimizer steps" in detail
        assert "10,000 epochs x 80,000 batches of 1" in detail
        assert "over the limit of 50,000,000 (GRAFT_MAX_TRAINING_STEPS)" in detail
        assert "fewer epochs or a larger batch_size" in detail

    def test_activation_memory_of_huge_batches_is_refused(
        self, client: TestClient, big_table: dict[str, Any]
    ) -> None:
        body = source_body(
            big_table["id"],
            architecture={"hidden_layers": [4096, 4096]},
            hyperparameters={"batch_size": 65_536},
        )
        detail = assert_problem(client.post(SOURCE, json=body), 422, "work_too_large")["detail"]
        assert "65,536 rows x 8,194 values x 4 bytes x 3 for the backward pass" in detail
        assert f"{65_536 * 8_194 * 12:,} bytes" in detail
        assert "over the limit of 2,147,483,648 (GRAFT_MAX_ACTIVATION_BYTES)" in detail
        # The same layers in batches of 1,024 fit.
        body["hyperparameters"] = {"batch_size": 1_024}
        assert client.post(SOURCE, json=body).status_code == 202

    def test_the_limits_are_settings(self, settings: Settings) -> None:
        tight = settings.model_copy(
            update={"max_model_parameters": 100, "max_training_steps": 10**9}
        )
        with TestClient(create_app(tight), raise_server_exceptions=False) as client:
            diabetes = builtin(client, "diabetes")["id"]  # 10 features, a numeric target
            body = source_body(diabetes, architecture={"hidden_layers": [10, 10]})
            detail = assert_problem(client.post(SOURCE, json=body), 422, "work_too_large")["detail"]
            assert "231 parameters (input width 10; output width up to 1)" in detail
            assert "limit of 100 (GRAFT_MAX_MODEL_PARAMETERS)" in detail
            body["architecture"] = {"hidden_layers": []}  # 11 parameters
            assert client.post(SOURCE, json=body).status_code == 202

    def test_auto_multiplies_the_steps(self, settings: Settings, database: Database) -> None:
        tight = settings.model_copy(update={"max_training_steps": 5_000})
        with TestClient(create_app(tight), raise_server_exceptions=False) as client:
            source = builtin(client, "iris", start=0, stop=100)["id"]
            target = builtin(client, "iris", start=100, stop=150)["id"]
            train_source(client, database, source)
            hyper = {"epochs": 30, "batch_size": 16}
            ok = client.post(FINE_TUNING, json=fine_tuning_body(target, hyperparameters=hyper))
            assert ok.status_code == 202, ok.text
            body = fine_tuning_body(
                target, "auto", target_normalization="auto", hyperparameters=hyper
            )
            detail = assert_problem(client.post(FINE_TUNING, json=body), 422, "work_too_large")[
                "detail"
            ]
            assert "cross-validation of 12 fit(s) x 4 folds x 3 repeat(s)" in detail
            assert "100 source rows for joint" in detail
            assert "a named strategy, fewer cv_folds or cv_repeats" in detail


class TestReadmeExamplesStillPass:
    def test_the_iris_walk_through(self, client: TestClient, database: Database) -> None:
        source = builtin(client, "iris", start=0, stop=100)["id"]
        target = builtin(client, "iris", start=100, stop=150)["id"]
        body = {
            **source_body(source, model_name="iris-source"),
            "architecture": {"type": "mlp", "hidden_layers": [10, 10]},
            "hyperparameters": {"epochs": 60, "learning_rate": 0.01, "seed": 0},
        }
        assert client.post(SOURCE, json=body).status_code == 202
        run_pending_jobs(database)
        hyper = {"epochs": 30, "learning_rate": 0.01}
        requests = [
            {"strategy": strategy, "hyperparameters": hyper}
            for strategy in ("parameter", "feature", "structure", "lp_ft", "l2_sp", "joint")
        ] + [{"strategy": "auto", "target_normalization": "auto", "hyperparameters": hyper}]
        for extra in requests:
            body = {
                **fine_tuning_body(target, model_name="iris-t"),
                "base_model": {"name": "iris-source", "version": 1},
                **extra,
            }
            response = client.post(FINE_TUNING, json=body)
            assert response.status_code == 202, response.text

    def test_the_digits_cnn(self, client: TestClient) -> None:
        digits = builtin(client, "digits", start=0, stop=1000, as_images=True)["id"]
        body = {
            **source_body(digits, model_name="digits-cnn"),
            "target_column": "y",
            "architecture": {
                "type": "cnn",
                "channels": [16, 32],
                "kernel_size": 3,
                "hidden_layers": [64],
                "dropout": 0.0,
            },
            "hyperparameters": {"epochs": 15, "learning_rate": 0.005, "seed": 0},
        }
        assert client.post(SOURCE, json=body).status_code == 202
        # With no architecture an image dataset gets the default CNN, at the default budget.
        body.pop("architecture")
        assert client.post(SOURCE, json=body).status_code == 202


class TestFeatureColumns:
    def test_25000_names_are_refused_at_once(self, client: TestClient) -> None:
        iris = builtin(client, "iris")["id"]
        body = source_body(iris, feature_columns=[f"column {i}" for i in range(25_000)])
        started = time.perf_counter()
        response = client.post(SOURCE, json=body)
        elapsed = time.perf_counter() - started
        problem = assert_problem(response, 422, "validation_error")
        assert "at most 10000 items" in problem["detail"]
        assert len(response.content) < 5_000  # the detail does not echo the names
        assert elapsed < 2.0

    def test_a_name_longer_than_200_characters_is_refused(self, client: TestClient) -> None:
        iris = builtin(client, "iris")["id"]
        body = source_body(iris, feature_columns=["x" * 201])
        problem = assert_problem(client.post(SOURCE, json=body), 422, "validation_error")
        assert problem["errors"][0]["loc"][-2:] == ["feature_columns", 0]

    def test_duplicates_are_named(self, client: TestClient) -> None:
        iris = builtin(client, "iris")["id"]
        names = ["petal width (cm)", "sepal length (cm)", "sepal length (cm)", "petal width (cm)"]
        body = source_body(iris, feature_columns=names)
        detail = assert_problem(client.post(SOURCE, json=body), 422, "invalid_feature_columns")[
            "detail"
        ]
        assert detail == "feature column(s) ['petal width (cm)', 'sepal length (cm)'] repeated"

    def test_the_checks_are_linear(self) -> None:
        """50,000 names (five times what a request may give) and a 20,000-column dataset: the
        quadratic duplicate count took 0.9 s for 10,000 names here; a linear one milliseconds."""
        columns = [{"name": f"c{i}", "dtype": "float64"} for i in range(20_000)]
        columns.append({"name": "target", "dtype": "int64"})
        dataset = Dataset(id="ds_x", rows=10, columns=columns)

        def timed(names: list[str]) -> tuple[float, str]:
            request = SourceTrainingCreate.model_construct(  # past the schema's max_length
                dataset_id="ds_x", target_column="target", model_name="m", feature_columns=names
            )
            started = time.perf_counter()
            with pytest.raises(Exception) as caught:
                job_drafts.check_source_request(dataset, request)
            return time.perf_counter() - started, str(caught.value)

        repeated, detail = timed([f"c{i % 5_000}" for i in range(50_000)])
        assert repeated < 0.5
        assert "(5,000 in all)" in detail and len(detail) < 1_000
        missing, detail = timed([f"nope{i}" for i in range(50_000)])
        assert missing < 0.5
        assert "(50,000 in all)" in detail and "(20,001 in all)" in detail


class TestCapsAtTraining:
    def test_a_target_with_too_many_classes_fails_the_job(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(work_estimate, "MAX_CLASSES", 50)
        frame = pd.DataFrame({"a": np.arange(60.0), "target": [f"id-{i}" for i in range(60)]})
        dataset = upload(client, "ids.csv", csv_bytes(frame)).json()["id"]
        job = client.post(SOURCE, json=source_body(dataset)).json()
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job['id']}").json()
        assert job["status"] == "failed"
        assert job["error"]["code"] == "too_many_classes"
        assert "60 classes, over the limit of 50" in job["error"]["message"]

    def test_a_text_column_with_too_many_values_fails_the_job(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(work_estimate, "MAX_CATEGORIES", 40)
        frame = pd.DataFrame({"name": [f"n{i}" for i in range(60)], "target": np.arange(60.0)})
        dataset = upload(client, "names.csv", csv_bytes(frame)).json()["id"]
        job = client.post(SOURCE, json=source_body(dataset)).json()
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job['id']}").json()
        assert job["error"]["code"] == "too_many_categories"
        assert "column 'name' holds 60 distinct values" in job["error"]["message"]

    def test_fine_tuning_counts_the_base_classes_and_the_new_ones(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        train_source(client, database, builtin(client, "iris", start=0, stop=100)["id"])
        monkeypatch.setattr(work_estimate, "MAX_CLASSES", 2)
        target = builtin(client, "iris", start=100, stop=150)["id"]
        job = client.post(FINE_TUNING, json=fine_tuning_body(target)).json()
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job['id']}").json()
        assert job["error"]["code"] == "too_many_classes"
        assert "3 classes" in job["error"]["message"]


class TestPublicMessages:
    def test_an_internal_error_keeps_its_traceback_in_the_log(
        self,
        client: TestClient,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        def explode(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("cannot open /srv/graft/secret/weights.bin")

        monkeypatch.setattr(tabular, "fit_features", explode)
        job_id = client.post(SOURCE, json=source_body(builtin(client, "iris")["id"])).json()["id"]
        with caplog.at_level(logging.ERROR, logger="app.jobs.runner"):
            run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job_id}").json()
        message = job["error"]["message"]
        assert job["error"]["code"] == "internal_error"
        assert message == (
            "the job failed because of an internal error (RuntimeError); the server log has "
            f"the details under job {job_id}"
        )
        events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
        assert not any("/srv" in e["message"] or "Traceback" in e["message"] for e in events)
        logged = [r for r in caplog.records if job_id in r.getMessage()]
        assert logged and logged[0].exc_info is not None  # the traceback is in the log

    def test_data_errors_carry_no_server_paths(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def unreadable(*_args: object, **_kwargs: object) -> None:
            raise DataError("cannot read '/srv/graft/tmp/x.parquet' (see /usr/lib/a.py)")

        monkeypatch.setattr(tabular, "fit_features", unreadable)
        job_id = client.post(SOURCE, json=source_body(builtin(client, "iris")["id"])).json()["id"]
        run_pending_jobs(database)
        message = client.get(f"/v1/jobs/{job_id}").json()["error"]["message"]
        assert message == "cannot read '<path>' (see <path>)"


# The estimates on their own, against torch.


@pytest.mark.parametrize(
    ("architecture", "input_dim", "output_dim"),
    [
        ({"type": "mlp", "hidden_layers": [10, 10]}, 4, 3),
        ({"type": "mlp", "hidden_layers": []}, 7, 1),
        ({"type": "mlp", "hidden_layers": [64, 32, 16], "dropout": 0.5}, 100, 10),
        (
            {"type": "cnn", "channels": [16, 32], "hidden_layers": [64], "input_shape": [1, 8, 8]},
            64,
            5,
        ),
        (
            {
                "type": "cnn",
                "channels": [8, 16, 4],
                "kernel_size": 5,
                "hidden_layers": [],
                "batch_norm": True,
                "input_shape": [3, 17, 33],
            },
            3 * 17 * 33,
            2,
        ),
        (
            {
                "type": "cnn",
                "channels": [4],
                "kernel_size": 1,
                "hidden_layers": [7, 9],
                "input_shape": [2, 9, 9],
            },
            2 * 9 * 9,
            4,
        ),
    ],
)
def test_parameter_count_matches_torch(
    architecture: dict[str, Any], input_dim: int, output_dim: int
) -> None:
    model = architectures.build_model(architecture, input_dim, output_dim)
    expected = sum(p.numel() for p in model.parameters())
    assert work_estimate.parameters(architecture, input_dim, output_dim) == expected


def test_activation_values_follow_the_layers() -> None:
    mlp = {"type": "mlp", "hidden_layers": [10, 20]}
    assert work_estimate.values_per_row(mlp, 4, 3) == 4 + 10 + 20 + 3
    cnn = {"type": "cnn", "channels": [16, 32], "hidden_layers": [64], "input_shape": [1, 8, 8]}
    # input 64, block 1 at 8x8, block 2 at 4x4, then the dense layer and the head
    assert work_estimate.values_per_row(cnn, 64, 5) == 64 + 16 * 64 + 32 * 16 + 64 + 5


def _source(rows: int, columns: list[dict[str, Any]], **request: Any) -> work_estimate.Estimate:
    body = SourceTrainingCreate.model_validate(
        {"dataset_id": "d", "target_column": "target", "model_name": "m", **request}
    )
    return work_estimate.source_training(body, columns, rows)


def test_text_columns_and_class_labels_are_bounded_by_the_caps() -> None:
    columns = [
        {"name": "x", "dtype": "float64"},
        {"name": "colour", "dtype": "string"},
        {"name": "target", "dtype": "string"},
    ]
    small = _source(50, columns, architecture={"hidden_layers": []})
    assert small.parameters == (1 + 50 + 1) * 50  # 50 rows: at most 50 values and classes
    big = _source(10**6, columns, architecture={"hidden_layers": []})
    inputs = 1 + work_estimate.MAX_CATEGORIES
    assert big.parameters == (inputs + 1) * work_estimate.MAX_CLASSES
    regression = _source(10**6, columns, architecture={"hidden_layers": []}, task="regression")
    assert regression.parameters == inputs + 1


def test_steps_count_epochs_batches_and_the_validation_split() -> None:
    columns = [{"name": "x", "dtype": "float64"}, {"name": "target", "dtype": "float64"}]
    estimate = _source(1_000, columns, hyperparameters={"epochs": 7, "batch_size": 30})
    assert estimate.steps == 7 * math.ceil(800 / 30)
    assert estimate.batch_rows == 30
    assert _source(10, columns, hyperparameters={"batch_size": 512}).batch_rows == 8


def _fine_tuning(rows: int, source_rows: int | None, **request: Any) -> work_estimate.Estimate:
    body = FineTuningCreate.model_validate(
        {
            "base_model": {"name": "b"},
            "dataset_id": "d",
            "target_column": "target",
            "model_name": "m",
            **request,
        }
    )
    architecture = {"type": "mlp", "hidden_layers": [10], "input_dim": 4, "output_dim": 3}
    return work_estimate.fine_tuning(body, architecture, "classification", rows, source_rows)


def test_auto_candidates_follow_the_transfer_module() -> None:
    assert work_estimate.fine_tuning_candidates("parameter", "source", joint_available=True) == [
        ("parameter", "source"),
        ("scratch", "target"),
    ]
    auto = work_estimate.fine_tuning_candidates("auto", "auto", joint_available=True)
    assert len(auto) == 12 and ("joint", "target") in auto
    assert len(work_estimate.fine_tuning_candidates("auto", "auto", joint_available=False)) == 10
    # Target-only candidates read the target's scaling whatever was asked, and the scratch
    # baseline is one of them.
    assert len(work_estimate.fine_tuning_candidates("auto", "source", joint_available=True)) == 7
    # auto searches both scalings unless told otherwise.
    assert len(work_estimate.fine_tuning_candidates("auto", None, joint_available=True)) == 12


def test_auto_and_joint_multiply_the_steps() -> None:
    hyper = {"hyperparameters": {"epochs": 10, "batch_size": 10}}
    named = _fine_tuning(100, 1_000, strategy="parameter", **hyper)
    # 100 rows: 4 folds x 2 repeats of 75 rows for parameter and scratch, then 80 rows.
    assert named.steps == 2 * 4 * 2 * 10 * 8 + 10 * 8
    auto = _fine_tuning(100, 1_000, strategy="auto", target_normalization="auto", **hyper)
    assert auto.steps > 10 * named.steps
    joint = _fine_tuning(100, 1_000, strategy="joint", **hyper)
    assert joint.steps == 4 * 2 * 10 * (108 + 8) + 10 * 108
    assert joint.batch_rows == 10 * math.ceil(1_075 / 75)  # batches grow with the source
    assert _fine_tuning(100, None, strategy="linear", **hyper).steps == 4 * 2 * 10 * 8


class TestStepsAgainstTraining:
    """The estimate against the optimizer steps the jobs actually take."""

    @pytest.fixture
    def counted(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
        steps: list[int] = []
        real = training.fit

        def counting(model: Any, x_train: Any, *args: Any, **kwargs: Any) -> Any:
            # In batches of the request's 16 rows, as the estimate counts joint's larger ones.
            steps.append(kwargs["epochs"] * math.ceil(len(x_train) / 16))
            return real(model, x_train, *args, **kwargs)

        monkeypatch.setattr(training, "fit", counting)
        yield steps

    @pytest.mark.parametrize(
        ("strategy", "normalization"), [("parameter", "source"), ("auto", "auto")]
    )
    def test_fine_tuning(
        self,
        client: TestClient,
        database: Database,
        counted: list[int],
        strategy: str,
        normalization: str,
    ) -> None:
        source = builtin(client, "iris", start=0, stop=100)["id"]
        target = builtin(client, "iris", start=100, stop=150)["id"]
        train_source(client, database, source)
        counted.clear()
        hyper = {"epochs": 3, "batch_size": 16, "cv_folds": 2, "cv_repeats": 1}
        body = fine_tuning_body(
            target, strategy, target_normalization=normalization, hyperparameters=hyper
        )
        job_id = client.post(FINE_TUNING, json=body).json()["id"]
        run_pending_jobs(database)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        request = FineTuningCreate.model_validate(body)
        architecture = client.get("/v1/models/src/versions/1").json()["architecture"]
        estimate = work_estimate.fine_tuning(request, architecture, "classification", 50, 100)
        actual = sum(counted)
        # An upper bound: exact but for auto's final fit, counted as its dearest candidate.
        assert actual <= estimate.steps <= actual + 3 * math.ceil(150 / 16)
