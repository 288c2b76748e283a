"""The README's Iris walk-through, driven only by a client generated from /openapi.json.

A generated SDK is how many teams will call Graft, so the document has to be one that a common
generator (openapi-python-client) turns into working calls: every operation generated, every
body expressible, every answer parsed. The document is fetched from a real `graft serve`, as a
user's generator would fetch it.
"""

import importlib
import inspect
import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, get_type_hints

import httpx2
import pytest
from sklearn.datasets import load_iris

from tests.integration.conftest import ADMIN_KEY, FINAL_JOB_STATUSES, LiveServer

GENERATOR = Path(sys.executable).parent / "openapi-python-client"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not GENERATOR.exists(),
        reason=f"openapi-python-client is not installed in this environment ({GENERATOR})",
    ),
]

WALKTHROUGH_OPERATIONS = (
    "create_dataset",
    "create_builtin_dataset",
    "create_source_training_job",
    "create_fine_tuning_job",
    "get_job",
    "predict",
)
JOB_TIMEOUT_SECONDS = 120


@dataclass
class GeneratedClient:
    generator_exit_code: int
    generator_output: str = field(repr=False)
    package: ModuleType | None
    # Operation id -> its generated module, for the walk-through's operations it emitted.
    operations: dict[str, ModuleType] = field(repr=False)

    def operation(self, operation_id: str) -> Any:
        assert operation_id in self.operations, (
            f"openapi-python-client generated no `{operation_id}` operation; its output:\n"
            + self.generator_output
        )
        return self.operations[operation_id]


@pytest.fixture(scope="module")
def training_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with one local worker, so that the walk-through's jobs really run."""
    server = LiveServer(tmp_path_factory.mktemp("generated-client-server"), workers=1)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def generated(
    training_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GeneratedClient]:
    folder = tmp_path_factory.mktemp("generated-client")
    response = httpx2.get(training_server.url + "/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    document_path = folder / "openapi.json"
    document_path.write_bytes(response.content)
    # The default post-hooks run ruff from PATH: formatting the output is not under test.
    config_path = folder / "generator.json"
    config_path.write_text(json.dumps({"post_hooks": []}))
    # Unique, so that it cannot clash with another module of the session.
    package_name = f"graft_client_{uuid.uuid4().hex[:12]}"
    package_dir = folder / package_name
    result = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(document_path),
            "--output-path",
            str(package_dir),
            "--meta",
            "none",
            "--config",
            str(config_path),
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0 or not package_dir.is_dir():
        yield GeneratedClient(result.returncode, output, None, {})
        return
    sys.path.insert(0, str(folder))
    try:
        package = importlib.import_module(package_name)
        # Only the walk-through's modules: a user imports the operations they call, and
        # this generator writes some others (v2 `infer`, two body media types) that do
        # not import at all.
        operations = {
            module_path.stem: importlib.import_module(
                f"{package_name}.api.{module_path.parent.name}.{module_path.stem}"
            )
            for operation_id in WALKTHROUGH_OPERATIONS
            for module_path in package_dir.glob(f"api/*/{operation_id}.py")
        }
        yield GeneratedClient(result.returncode, output, package, operations)
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m.partition(".")[0] == package_name]:
            del sys.modules[name]


def request_body(operation: Any, payload: dict[str, Any]) -> Any:
    """The operation's generated body model, built from the JSON the README sends."""
    body_type = get_type_hints(operation.sync_detailed)["body"]
    return body_type.from_dict(payload)


def wait_until_succeeded(get_job: Any, client: Any, job_id: str) -> Any:
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while True:
        response = get_job.sync_detailed(job_id=job_id, client=client)
        assert response.status_code == 200, response.content
        job = response.parsed
        if str(job.status) in FINAL_JOB_STATUSES:
            break
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after the timeout"
        time.sleep(0.2)
    error = job.error.to_dict() if job.error else None
    assert str(job.status) == "succeeded", (job_id, str(job.status), error)
    return job


def test_the_generator_emits_every_walkthrough_operation(generated: GeneratedClient) -> None:
    print(generated.generator_output)  # its warnings about the document, shown on failure
    assert generated.generator_exit_code == 0, generated.generator_output
    skipped = [op for op in WALKTHROUGH_OPERATIONS if op not in generated.operations]
    assert skipped == [], f"not generated: {skipped} (the generator's output is printed above)"
    predict = generated.operation("predict")
    assert "body" in inspect.signature(predict.sync_detailed).parameters


def test_the_generated_upload_sends_a_file(generated: GeneratedClient) -> None:
    assert generated.package is not None, generated.generator_output
    create_dataset = generated.operation("create_dataset")
    body_type = get_type_hints(create_dataset.sync_detailed)["body"]
    upload = generated.package.types.File(
        payload=io.BytesIO(b"a,b\n1,2\n"), file_name="rows.csv", mime_type="text/csv"
    )
    parts = dict(body_type(file=upload).to_multipart())
    # A part without a file name reaches FastAPI as a text field, not an UploadFile (422).
    assert parts["file"][0] == "rows.csv", (
        f"{body_type.__name__}.file is generated as "
        f"{inspect.get_annotations(body_type)['file']!r} and sent as the text form field "
        f"{parts['file']!r}, not as a file"
    )


def test_the_iris_walkthrough_with_the_generated_client(
    training_server: LiveServer, generated: GeneratedClient
) -> None:
    assert generated.package is not None, generated.generator_output
    get_job = generated.operation("get_job")
    iris = load_iris(as_frame=True)
    source_rows = iris.data.iloc[0:100].copy()
    # Class names, as the builtin slice has them: integer codes would be other classes.
    source_rows["target"] = iris.target_names[iris.target.iloc[0:100]]
    upload = generated.package.types.File(
        payload=io.BytesIO(source_rows.to_csv(index=False).encode()),
        file_name="iris-0-100.csv",
        mime_type="text/csv",
    )
    client = generated.package.AuthenticatedClient(
        base_url=training_server.url, token=ADMIN_KEY, timeout=60.0
    )
    with client:
        create_dataset = generated.operation("create_dataset")
        upload_body = get_type_hints(create_dataset.sync_detailed)["body"](
            file=upload, name="iris rows 0-99"
        )
        uploaded = create_dataset.sync_detailed(client=client, body=upload_body)
        assert uploaded.status_code == 201, uploaded.content
        source_id = uploaded.parsed.id

        create_builtin_dataset = generated.operation("create_builtin_dataset")
        builtin = create_builtin_dataset.sync_detailed(
            client=client,
            body=request_body(create_builtin_dataset, {"name": "iris", "start": 100, "stop": 150}),
        )
        assert builtin.status_code == 201, builtin.content
        target_id = builtin.parsed.id

        create_source_training_job = generated.operation("create_source_training_job")
        source_job = create_source_training_job.sync_detailed(
            client=client,
            body=request_body(
                create_source_training_job,
                {
                    "dataset_id": source_id,
                    "target_column": "target",
                    "model_name": "iris-source",
                    "architecture": {"type": "mlp", "hidden_layers": [10, 10]},
                    "hyperparameters": {"epochs": 30, "learning_rate": 0.02, "seed": 0},
                },
            ),
        )
        assert source_job.status_code == 202, source_job.content
        trained = wait_until_succeeded(get_job, client, source_job.parsed.id)
        assert (trained.result.model_name, trained.result.version) == ("iris-source", 1)

        create_fine_tuning_job = generated.operation("create_fine_tuning_job")
        fine_tuning_job = create_fine_tuning_job.sync_detailed(
            client=client,
            body=request_body(
                create_fine_tuning_job,
                {
                    "base_model": {"name": "iris-source", "version": 1},
                    "dataset_id": target_id,
                    "target_column": "target",
                    "model_name": "iris-feature",
                    "strategy": "feature",
                    "hyperparameters": {"epochs": 10, "learning_rate": 0.02, "seed": 0},
                },
            ),
        )
        assert fine_tuning_job.status_code == 202, fine_tuning_job.content
        wait_until_succeeded(get_job, client, fine_tuning_job.parsed.id)

        predict = generated.operation("predict")
        predicted = predict.sync_detailed(
            name="iris-feature",
            client=client,
            body=request_body(predict, {"instances": [[6.7, 3.0, 5.2, 2.3]]}),
        )
    assert predicted.status_code == 200, predicted.content
    prediction = predicted.parsed
    assert len(prediction.predictions) == 1
    assert len(prediction.classes) == 3
    [probabilities] = prediction.probabilities
    assert len(probabilities) == 3
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
