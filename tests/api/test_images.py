"""Images end to end through the API: .npz uploads, digits as images, CNN jobs, predictions."""

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load as load_safetensors
from sklearn.datasets import load_digits

from app.config import Settings
from app.db.session import Database
from app.main import create_app
from tests.helpers import STRATEGIES, assert_problem, builtin, run_pending_jobs, upload

NPZ = "application/octet-stream"
CNN = {"type": "cnn", "channels": [4, 8], "kernel_size": 3, "hidden_layers": [16]}
TINY = {"epochs": 3, "learning_rate": 0.01, "batch_size": 32, "seed": 0}
FINE_TUNING = {**TINY, "epochs": 10}


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def digits(low: int, high: int, start: int = 0, stop: int | None = None) -> tuple[Any, Any]:
    """sklearn's 8x8 digits whose label is in [low, high), rows [start, stop) of those."""
    bunch = load_digits()
    keep = (bunch.target >= low) & (bunch.target < high)
    return bunch.images[keep][start:stop], bunch.target[keep][start:stop]


def digits_npz(low: int, high: int, start: int = 0, stop: int | None = None) -> bytes:
    images, labels = digits(low, high, start, stop)
    return npz_bytes(X=images.astype(np.uint8), y=labels)


def submit_source(client: TestClient, dataset_id: str, name: str, **extra: Any) -> Any:
    body = {
        "dataset_id": dataset_id,
        "target_column": "y",
        "model_name": name,
        "architecture": CNN,
        "hyperparameters": TINY,
        **extra,
    }
    return client.post("/v1/jobs/source-training", json=body)


def submit_fine_tuning(client: TestClient, dataset_id: str, name: str, **extra: Any) -> Any:
    body = {
        "base_model": {"name": "digits-source", "version": 1},
        "dataset_id": dataset_id,
        "target_column": "y",
        "model_name": name,
        "strategy": "parameter",
        "hyperparameters": FINE_TUNING,
        **extra,
    }
    return client.post("/v1/jobs/fine-tuning", json=body)


def build_image_example(client: TestClient, database: Database) -> None:
    """A CNN trained on digits 0-4, fine-tuned on 5-9 with each strategy, and an Iris MLP."""
    source = upload(client, "low.npz", digits_npz(0, 5, 0, 300), NPZ).json()
    target = upload(client, "high.npz", digits_npz(5, 10, 0, 150), NPZ).json()
    assert submit_source(client, source["id"], "digits-source").status_code == 202
    iris = builtin(client, "iris")
    response = client.post(
        "/v1/jobs/source-training",
        json={
            "dataset_id": iris["id"],
            "target_column": "target",
            "model_name": "iris",
            "architecture": {"hidden_layers": [4]},
            "hyperparameters": TINY,
        },
    )
    assert response.status_code == 202, response.text
    run_pending_jobs(database)
    for strategy in STRATEGIES:
        response = submit_fine_tuning(client, target["id"], f"digits-{strategy}", strategy=strategy)
        assert response.status_code == 202, response.text
    run_pending_jobs(database)


@pytest.fixture(scope="module")
def image_template(tmp_path_factory: pytest.TempPathFactory, migrated_template: Path) -> Path:
    folder = tmp_path_factory.mktemp("images")
    shutil.copy(migrated_template, folder / "graft.db")
    settings = Settings(data_dir=folder, workers=0)
    with TestClient(create_app(settings)) as template_client:
        db = Database(settings.resolved_database_url)
        build_image_example(template_client, db)
        db.dispose()
    return folder / "graft.db"


@pytest.fixture
def images_client(tmp_path: Path, image_template: Path) -> Iterator[TestClient]:
    data_dir = tmp_path / "images"
    data_dir.mkdir()
    shutil.copy(image_template, data_dir / "graft.db")
    with TestClient(create_app(Settings(data_dir=data_dir, workers=0))) as test_client:
        yield test_client


@pytest.fixture
def images_database(images_client: TestClient, tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{(tmp_path / 'images' / 'graft.db').resolve()}")
    yield db
    db.dispose()


def dataset_id(client: TestClient, name: str) -> str:
    rows = client.get("/v1/datasets").json()["data"]
    return next(row["id"] for row in rows if row["name"] == name)


class TestUpload:
    def test_n_h_w_images_are_described_with_their_shape(self, client: TestClient) -> None:
        content = digits_npz(0, 10, 0, 40)
        response = upload(client, "digits.npz", content, NPZ)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["format"] == "npz"
        assert body["rows"] == 40
        assert body["name"] == "digits"
        assert body["columns"] == [
            {"name": "image", "dtype": "uint8", "shape": [1, 8, 8]},
            {"name": "y", "dtype": "int64"},
        ]
        assert body["size_bytes"] == len(content)
        assert client.get(f"/v1/datasets/{body['id']}").json() == body

    def test_n_c_h_w_images_with_text_labels_by_media_type(self, client: TestClient) -> None:
        x = np.random.default_rng(0).normal(size=(5, 3, 6, 4)).astype(np.float32)
        y = np.array(["cat", "dog", "cat", "dog", "cat"])
        response = upload(client, "pets", npz_bytes(X=x, y=y), "application/x-npz")
        assert response.status_code == 201, response.text
        assert response.json()["columns"] == [
            {"name": "image", "dtype": "float32", "shape": [3, 6, 4]},
            {"name": "y", "dtype": "string"},
        ]

    def test_tabular_columns_keep_their_two_fields(self, client: TestClient) -> None:
        body = builtin(client, "iris")
        assert all(set(column) == {"name", "dtype"} for column in body["columns"])

    def test_unknown_binary_files_are_415_naming_npz(self, client: TestClient) -> None:
        response = upload(client, "digits.bin", digits_npz(0, 10, 0, 5), NPZ)
        body = assert_problem(response, 415, "unsupported_media_type")
        assert ".npz" in body["detail"]

    @pytest.mark.parametrize(
        ("content", "detail"),
        [
            (b"X,y\n1,2\n", "not an .npz archive"),
            (npz_bytes(images=np.zeros((2, 4, 4)), y=np.zeros(2)), "lacks ['X']"),
            (npz_bytes(X=np.zeros((2, 4, 4))), "lacks ['y']"),
            (npz_bytes(X=np.zeros((3, 4, 4)), y=np.zeros(2)), "3 images but y holds 2 labels"),
            (npz_bytes(X=np.zeros((3, 16)), y=np.zeros(3)), "expected NxHxW or NxCxHxW"),
            (npz_bytes(X=np.full((2, 4, 4), np.nan), y=np.zeros(2)), "X[0, 0, 0, 0] is nan"),
            (npz_bytes(X=np.full((2, 4, 4), "a"), y=np.zeros(2)), "expected numbers"),
            (
                npz_bytes(X=np.zeros((2, 4, 4)), y=np.array([None, 1], dtype=object)),
                "pickle",
            ),
        ],
    )
    def test_invalid_archives_are_422_saying_what_is_wrong(
        self, client: TestClient, content: bytes, detail: str
    ) -> None:
        body = assert_problem(upload(client, "bad.npz", content, NPZ), 422, "invalid_upload")
        assert body["detail"].startswith("bad.npz: ")
        assert detail in body["detail"]
        assert client.get("/v1/datasets").json()["data"] == []

    def test_archives_that_decode_beyond_the_limit_are_refused(self, settings: Settings) -> None:
        bounded = settings.model_copy(update={"max_decoded_bytes": 10_000})
        buffer = io.BytesIO()
        np.savez_compressed(buffer, X=np.zeros((100, 8, 8)), y=np.zeros(100))
        with TestClient(create_app(bounded)) as client:
            body = assert_problem(
                upload(client, "zeros.npz", buffer.getvalue(), NPZ), 422, "invalid_upload"
            )
            assert "over the limit of 10000" in body["detail"]
            assert "GRAFT_MAX_DECODED_BYTES" in body["detail"]


class TestBuiltinDigitsAsImages:
    def test_digits_as_images(self, client: TestClient) -> None:
        body = builtin(client, "digits", start=0, stop=100, as_images=True)
        assert body["format"] == "npz"
        assert body["rows"] == 100
        assert body["name"] == "digits[0:100] images"
        assert body["columns"] == [
            {"name": "image", "dtype": "float32", "shape": [1, 8, 8]},
            {"name": "y", "dtype": "category"},
        ]

    def test_as_images_is_only_for_image_datasets(self, client: TestClient) -> None:
        response = client.post("/v1/datasets/builtin", json={"name": "iris", "as_images": True})
        body = assert_problem(response, 422, "validation_error")
        assert "as_images works for ['digits']" in body["detail"]

    def test_a_slice_still_knows_every_digit(self, client: TestClient, database: Database) -> None:
        dataset = builtin(client, "digits", start=0, stop=60, as_images=True)
        response = submit_source(client, dataset["id"], "builtin-digits")
        assert response.status_code == 202, response.text
        run_pending_jobs(database)
        version = client.get("/v1/models/builtin-digits/versions/1").json()
        assert version["signature"]["classes"] == list(range(10))
        assert version["signature"]["inputs"] == [
            {"name": "image", "dtype": "float32", "shape": [1, 8, 8]}
        ]


class TestSourceTrainingChecks:
    def test_without_an_architecture_an_image_dataset_gets_the_default_cnn(
        self, client: TestClient
    ) -> None:
        dataset = upload(client, "d.npz", digits_npz(0, 10, 0, 30), NPZ).json()
        response = client.post(
            "/v1/jobs/source-training",
            json={"dataset_id": dataset["id"], "target_column": "y", "model_name": "m"},
        )
        assert response.status_code == 202, response.text
        architecture = response.json()["request"]["architecture"]
        assert architecture["type"] == "cnn"
        assert architecture["channels"] == [16, 32]

    def test_an_mlp_cannot_read_images(self, client: TestClient) -> None:
        dataset = upload(client, "d.npz", digits_npz(0, 10, 0, 30), NPZ).json()
        response = submit_source(client, dataset["id"], "m", architecture={"type": "mlp"})
        body = assert_problem(response, 422, "architecture_mismatch")
        assert "1x8x8 images" in body["detail"]

    def test_a_cnn_needs_images(self, client: TestClient) -> None:
        iris = builtin(client, "iris")
        response = submit_source(client, iris["id"], "m", target_column="target")
        body = assert_problem(response, 422, "architecture_mismatch")
        assert "is a table" in body["detail"]

    def test_too_many_pooling_blocks_for_the_image_size(self, client: TestClient) -> None:
        dataset = upload(client, "d.npz", digits_npz(0, 10, 0, 30), NPZ).json()
        response = submit_source(
            client, dataset["id"], "m", architecture={**CNN, "channels": [4, 4, 4, 4]}
        )
        body = assert_problem(response, 422, "invalid_architecture")
        assert "8x8 images are too small for 4 convolutional blocks" in body["detail"]
        assert "at most 3" in body["detail"]

    @pytest.mark.parametrize(
        ("changes", "code", "detail"),
        [
            ({"target_column": "label"}, "column_not_found", "label column is 'y'"),
            ({"target_column": "image"}, "column_not_found", "'image' is not in"),
            ({"feature_columns": ["y"]}, "invalid_feature_columns", "one feature column"),
        ],
    )
    def test_image_datasets_have_one_feature_and_one_label(
        self, client: TestClient, changes: dict[str, Any], code: str, detail: str
    ) -> None:
        dataset = upload(client, "d.npz", digits_npz(0, 10, 0, 30), NPZ).json()
        body = assert_problem(submit_source(client, dataset["id"], "m", **changes), 422, code)
        assert detail in body["detail"]

    def test_regression_needs_numeric_labels(self, client: TestClient) -> None:
        content = npz_bytes(X=np.zeros((4, 4, 4)), y=np.array(list("abab")))
        dataset = upload(client, "t.npz", content, NPZ).json()
        response = submit_source(
            client,
            dataset["id"],
            "m",
            task="regression",
            architecture={**CNN, "channels": [2]},
        )
        assert_problem(response, 422, "invalid_target")

    @pytest.mark.parametrize(
        ("architecture", "loc"),
        [
            ({"type": "rnn"}, ["body", "architecture"]),
            ({"type": "cnn", "channels": [0]}, ["body", "architecture"]),
            ({"type": "cnn", "kernel_size": 11}, ["body", "architecture", "kernel_size"]),
            ({"type": "cnn", "pool": 2}, ["body", "architecture", "pool"]),
        ],
    )
    def test_invalid_cnn_fields_are_422(
        self, client: TestClient, architecture: dict[str, Any], loc: list[str]
    ) -> None:
        dataset = upload(client, "d.npz", digits_npz(0, 10, 0, 30), NPZ).json()
        response = submit_source(client, dataset["id"], "m", architecture=architecture)
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"] == loc

    def test_regression_on_images_trains(self, client: TestClient, database: Database) -> None:
        images, labels = digits(0, 10, 0, 80)
        content = npz_bytes(X=images, y=labels.astype(np.float64) / 2)
        dataset = upload(client, "r.npz", content, NPZ).json()
        response = submit_source(client, dataset["id"], "brightness", task="regression")
        assert response.status_code == 202, response.text
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{response.json()['id']}").json()
        assert job["status"] == "succeeded", job
        assert "r2" in job["metrics"]["validation"]
        result = client.post(
            "/v1/models/brightness/predict", json={"instances": [images[0].tolist()]}
        )
        assert result.status_code == 200, result.text
        assert isinstance(result.json()["predictions"][0], float)


class TestFineTuning:
    def test_every_strategy_gives_a_version_with_new_classes(
        self, images_client: TestClient
    ) -> None:
        source = images_client.get("/v1/models/digits-source/versions/1").json()
        assert source["signature"] == {
            "inputs": [{"name": "image", "dtype": "float32", "shape": [1, 8, 8]}],
            "classes": [0, 1, 2, 3, 4],
            "target": "y",
        }
        assert source["architecture"]["input_shape"] == [1, 8, 8]
        assert source["preprocessing"]["features"]["kind"] == "image"
        assert source["metrics"]["validation"]["accuracy"] > 0.6
        for strategy in STRATEGIES:
            version = images_client.get(f"/v1/models/digits-{strategy}/versions/1").json()
            assert version["kind"] == "fine_tuned"
            assert version["strategy"] == strategy
            assert version["parent"] == {"name": "digits-source", "version": 1}
            assert version["signature"]["classes"] == list(range(10))
            assert version["signature"]["inputs"] == source["signature"]["inputs"]
            # The source's scaling is reused on the target; a target-only model reads the
            # target's own.
            same = version["preprocessing"]["features"] == source["preprocessing"]["features"]
            assert same is (strategy not in ("structure", "scratch", "linear")), strategy
            assert version["architecture"]["output_dim"] == 10
            job = images_client.get(f"/v1/jobs/{version['job_id']}").json()
            events = images_client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
            messages = [event["message"] for event in events]
            assert any("head replaced" in m and "[5, 6, 7, 8, 9]" in m for m in messages)

    def test_feature_transfer_kept_the_convolutions_and_parameter_moved_them(
        self, images_client: TestClient
    ) -> None:
        def weights(name: str) -> dict[str, np.ndarray]:
            response = images_client.get(f"/v1/models/{name}/versions/1/weights")
            assert response.status_code == 200
            return load_safetensors(response.content)

        source = weights("digits-source")
        convolution = "trunk.1.weight"
        assert source[convolution].shape == (4, 1, 3, 3)
        trunk = [key for key in source if key.startswith("trunk.")]
        feature = weights("digits-feature")
        assert all(np.array_equal(feature[k], source[k]) for k in trunk)
        assert feature["head.weight"].shape == (10, 16)
        parameter = weights("digits-parameter")
        assert not np.array_equal(parameter[convolution], source[convolution])

    def test_images_of_another_shape_are_422(self, images_client: TestClient) -> None:
        content = npz_bytes(X=np.zeros((6, 7, 7)), y=np.arange(6) % 2)
        other = upload(images_client, "seven.npz", content, NPZ).json()
        body = assert_problem(
            submit_fine_tuning(images_client, other["id"], "t"), 422, "feature_mismatch"
        )
        assert "reads 1x8x8 images (CxHxW), but dataset" in body["detail"]
        assert "holds 1x7x7 images" in body["detail"]
        rgb = npz_bytes(X=np.zeros((6, 3, 8, 8)), y=np.arange(6) % 2)
        other = upload(images_client, "rgb.npz", rgb, NPZ).json()
        assert_problem(submit_fine_tuning(images_client, other["id"], "t"), 422, "feature_mismatch")

    def test_tables_and_images_do_not_mix(self, images_client: TestClient) -> None:
        iris = dataset_id(images_client, "iris")
        response = submit_fine_tuning(images_client, iris, "t", target_column="target")
        body = assert_problem(response, 422, "feature_mismatch")
        assert "is a table" in body["detail"]
        high = dataset_id(images_client, "high")
        response = submit_fine_tuning(
            images_client, high, "t", base_model={"name": "iris", "version": 1}
        )
        body = assert_problem(response, 422, "feature_mismatch")
        assert "tabular features" in body["detail"]

    def test_the_target_must_be_the_label_column(self, images_client: TestClient) -> None:
        high = dataset_id(images_client, "high")
        response = submit_fine_tuning(images_client, high, "t", target_column="target")
        assert_problem(response, 422, "column_not_found")


class TestPredict:
    def predict(
        self, client: TestClient, body: dict[str, Any], model: str = "digits-parameter"
    ) -> Any:
        return client.post(f"/v1/models/{model}/predict", json=body)

    def test_every_instance_form_gives_the_same_answer(self, images_client: TestClient) -> None:
        images, labels = digits(5, 10, 150, 190)
        hw = [image.tolist() for image in images]
        chw = [[image.tolist()] for image in images]
        flat = [image.ravel().tolist() for image in images]
        records = [{"image": image.tolist()} for image in images]
        answers = [
            self.predict(images_client, body).json()
            for body in (
                {"instances": hw},
                {"instances": chw},
                {"instances": flat},
                {"records": records},
            )
        ]
        assert all(answer == answers[0] for answer in answers[1:])
        answer = answers[0]
        assert answer["model"] == {"name": "digits-parameter", "version": 1}
        assert answer["classes"] == list(range(10))
        probabilities = np.asarray(answer["probabilities"])
        assert probabilities.shape == (40, 10)
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert answer["predictions"] == probabilities.argmax(axis=1).tolist()
        # Held-out digits 5-9: far above the 10% of guessing.
        assert np.mean(np.asarray(answer["predictions"]) == labels) > 0.7

    @pytest.mark.parametrize(
        ("instance", "code", "detail"),
        [
            (
                [[0] * 8] * 7,
                "feature_mismatch",
                "instance 0 has shape 7x8; expected one of 1x8x8, 8x8, 64",
            ),
            ([0] * 63, "feature_mismatch", "has shape 63;"),
            ([[0] * 8] * 7 + [[0] * 7], "feature_mismatch", "instance 0[7] is an array of shape 7"),
            (
                [[0] * 8] * 7 + [[0] * 7 + ["x"]],
                "invalid_data",
                "instance 0[7][7]: expected a number, got 'x'",
            ),
            ([[0] * 8] * 7 + [[0] * 7 + [None]], "invalid_data", "expected a number, got None"),
            ([[[[0]]]] * 8, "feature_mismatch", "more than 3 deep"),
        ],
    )
    def test_wrong_images_are_422_naming_the_place(
        self, images_client: TestClient, instance: Any, code: str, detail: str
    ) -> None:
        body = assert_problem(self.predict(images_client, {"instances": [instance]}), 422, code)
        assert detail in body["detail"]

    def test_records_need_the_image_field(self, images_client: TestClient) -> None:
        response = self.predict(images_client, {"records": [{"pixels": [0] * 64}]})
        body = assert_problem(response, 422, "feature_mismatch")
        assert "expected one field 'image'" in body["detail"]

    def test_a_tabular_model_rejects_nested_arrays(self, images_client: TestClient) -> None:
        response = self.predict(images_client, {"instances": [[[1], 2, 3, 4]]}, model="iris")
        body = assert_problem(response, 422, "invalid_data")
        assert "expected a number" in body["detail"]


class TestOpenInferenceProtocol:
    """Image versions through /v2: the tensor is the image batch, not a column per pixel."""

    def test_metadata_advertises_the_image_shape(self, images_client: TestClient) -> None:
        response = images_client.get("/v2/models/digits-parameter")
        assert response.status_code == 200, response.text
        inputs = response.json()["inputs"]
        assert inputs == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]

    def test_every_tensor_shape_gives_the_v1_answer(self, images_client: TestClient) -> None:
        images, _ = digits(5, 10, 150, 160)
        expected = images_client.post(
            "/v1/models/digits-parameter/predict",
            json={"instances": [image.tolist() for image in images]},
        ).json()["predictions"]
        forms = {
            "image": images.reshape(10, 1, 8, 8),
            "input": images.reshape(10, 8, 8),
        }
        forms_flat = images.reshape(10, 64)
        for name, tensor in [*forms.items(), ("image", forms_flat)]:
            body = {
                "inputs": [
                    {
                        "name": name,
                        "datatype": "FP32",
                        "shape": list(tensor.shape),
                        "data": tensor.ravel().tolist(),
                    }
                ]
            }
            response = images_client.post("/v2/models/digits-parameter/infer", json=body)
            assert response.status_code == 200, response.text
            outputs = {o["name"]: o for o in response.json()["outputs"]}
            assert outputs["predictions"]["data"] == expected
            assert outputs["probabilities"]["shape"] == [10, 10]

    def test_a_wrong_image_shape_is_a_protocol_error(self, images_client: TestClient) -> None:
        body = {
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 7, 8], "data": [0] * 56}]
        }
        response = images_client.post("/v2/models/digits-parameter/infer", json=body)
        assert response.status_code == 400
        assert "expected one of [-1, 1, 8, 8]" in response.json()["error"]
