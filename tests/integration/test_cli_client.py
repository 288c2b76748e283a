"""The `graft` client commands against a real `graft serve`: the Iris flow from a terminal,
`--json` for scripts, and exit codes a script can branch on."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.datasets import load_iris

from tests.integration.conftest import ADMIN_KEY, LiveServer, ServerFactory

OK, JOB_FAILED, USAGE, REFUSED, AUTH, UNAVAILABLE = 0, 1, 2, 3, 4, 5


def graft(
    server: LiveServer | None, *args: str, key: str | None = ADMIN_KEY, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    env["GRAFT_URL"] = server.url if server else "http://127.0.0.1:9"
    if key is not None:
        env["GRAFT_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def document(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == OK, result.stderr
    return json.loads(result.stdout)


def lines(result: subprocess.CompletedProcess[str]) -> list[Any]:
    assert result.returncode == OK, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_the_iris_flow_from_the_command_line(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(workers=1)
    frame = load_iris(as_frame=True).frame
    frame["target"] = frame["target"].map(dict(enumerate(load_iris().target_names)))
    source_csv = tmp_path / "iris-source.csv"
    frame.iloc[:100].to_csv(source_csv, index=False)

    uploaded = document(
        graft(server, "datasets", "upload", str(source_csv), "--json", "--tag", "team=vision")
    )
    assert uploaded["tags"] == {"team": "vision"}
    assert uploaded["rows"] == 100 and uploaded["name"] == "iris-source"
    target = document(graft(server, "--json", "datasets", "builtin", "iris", "--start", "100"))
    listed = lines(graft(server, "datasets", "list", "--json"))
    assert {d["id"] for d in listed} == {uploaded["id"], target["id"]}
    table = graft(server, "datasets", "list")
    assert uploaded["id"] in table.stdout and "iris-source" in table.stdout
    assert f"{target['id']}  iris[100:]" in table.stdout

    # Train and follow it live: one JSON line per event, the last the final status.
    trained = graft(
        server, "train", "--dataset", uploaded["id"], "--target", "target",
        "--model", "iris-src", "--hidden", "10,10", "--epochs", "20", "--seed", "0",
        "--watch", "--json",
    )  # fmt: skip
    events = lines(trained)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["type"] == "metrics" for e in events) == 20
    assert events[-1]["data"]["status"] == "succeeded"

    # The same for a person: a line per event on stderr when it is not a terminal.
    tuned = graft(
        server, "fine-tune", "--base", "iris-src:1", "--dataset", target["id"],
        "--target", "target", "--model", "iris-ft", "--strategy", "parameter",
        "--epochs", "5", "--watch",
    )  # fmt: skip
    assert tuned.returncode == OK, tuned.stderr
    assert "succeeded: iris-ft v1" in tuned.stdout
    assert "[metrics] epoch 5" in tuned.stderr

    jobs = lines(graft(server, "jobs", "list", "--json"))
    assert [j["kind"] for j in jobs] == ["fine_tuning", "source_training"]
    # Tags: set and removed on any resource, and filtered on.
    tagged = document(graft(server, "tag", jobs[0]["id"], "--tag", "run=7", "--json"))
    assert tagged["tags"] == {"run": "7"}
    assert [j["id"] for j in lines(graft(server, "jobs", "list", "--tag", "run=7", "--json"))] == [
        jobs[0]["id"]
    ]
    graft(server, "tag", "iris-src:1", "--tag", "stage=ok", "--description", "first")
    assert document(graft(server, "tag", "iris-src:1", "--remove", "stage", "--json"))["tags"] == {}
    listed_tagged = lines(graft(server, "datasets", "list", "--tag", "team=vision", "--json"))
    assert [d["id"] for d in listed_tagged] == [uploaded["id"]]
    shown = document(graft(server, "jobs", "show", jobs[0]["id"], "--json"))
    assert shown["result"] == {"model_name": "iris-ft", "version": 1}
    # A finished job can be watched again: its whole history, and its outcome as exit code.
    assert lines(graft(server, "jobs", "watch", jobs[1]["id"], "--json")) == events

    moved = graft(server, "models", "alias", "iris-src", "production", "1")
    assert moved.returncode == OK and "iris-src@production -> version 1" in moved.stdout
    # A second version, the alias moved to it, and rolled back.
    retrained = graft(
        server, "train", "--dataset", uploaded["id"], "--target", "target",
        "--model", "iris-src", "--epochs", "2", "--watch",
    )  # fmt: skip
    assert retrained.returncode == OK, retrained.stderr
    assert graft(server, "models", "alias", "iris-src", "production", "2").returncode == OK
    rolled = graft(server, "models", "rollback", "iris-src", "production")
    assert rolled.returncode == OK and "-> version 1 (was 2)" in rolled.stdout
    changes = lines(graft(server, "models", "history", "iris-src", "production", "--json"))
    assert [(c["action"], c["previous_version"], c["version"]) for c in changes] == [
        ("rollback", 2, 1),
        ("set", 1, 2),
        ("set", None, 1),
    ]
    model = document(graft(server, "models", "show", "iris-src", "--json", "--limit", "1"))
    assert [v["version"] for v in model["versions"]] == [2]
    model = document(graft(server, "models", "show", "iris-src", "--json"))
    assert model["aliases"] == {"production": 1}
    assert [v["version"] for v in model["versions"]] == [2, 1]
    assert {m["name"] for m in lines(graft(server, "models", "list", "--json"))} == {
        "iris-src",
        "iris-ft",
    }

    # Predict a file in batches: non-input columns (an id, the label) are carried over.
    rows = frame.iloc[95:105].reset_index(drop=True)
    rows.insert(0, "row_id", range(len(rows)))
    rows_csv = tmp_path / "rows.csv"
    rows.to_csv(rows_csv, index=False)
    out_csv = tmp_path / "predicted.csv"
    predicted = graft(
        server, "predict", "iris-src", str(rows_csv), "-o", str(out_csv), "--batch-size", "3"
    )
    assert predicted.returncode == OK, predicted.stderr
    result = pd.read_csv(out_csv)
    assert list(result["row_id"]) == list(range(10))
    assert list(result.columns[:3]) == ["row_id", "target", "prediction"]
    with server.client() as client:
        features = rows.drop(columns=["row_id", "target"]).to_dict(orient="records")
        direct = client.post("/v1/models/iris-src/predict", json={"records": features}).json()
    assert list(result["prediction"]) == direct["predictions"]
    # The source saw rows 0-99: two classes, a probability column each.
    assert direct["classes"] == ["setosa", "versicolor"]
    probabilities = result[[f"probability_{c}" for c in direct["classes"]]]
    assert (abs(probabilities.to_numpy() - direct["probabilities"]) < 1e-6).all()
    # The version as a file: ONNX by default, named after it.
    written = graft(server, "export", "iris-src", "1", cwd=tmp_path)
    assert written.returncode == OK, written.stderr
    assert (tmp_path / "iris-src-v1.onnx").read_bytes()[:2] != b""
    archive = graft(server, "export", "iris-src", "1", "--format", "torchscript", "-o",
                    str(tmp_path / "m.pt"), "--json")  # fmt: skip
    assert document(archive)["path"] == str(tmp_path / "m.pt")
    assert graft(server, "export", "iris-src", "9").returncode == REFUSED
    # JSON Lines in and out, to stdout.
    rows_jsonl = tmp_path / "rows.jsonl"
    rows.iloc[:4].to_json(rows_jsonl, orient="records", lines=True)
    out = graft(server, "predict", "iris-ft", str(rows_jsonl), "--format", "jsonl")
    assert [r["row_id"] for r in lines(out)] == [0, 1, 2, 3]


def test_exit_codes_for_scripts(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(workers=0)
    assert graft(server, "jobs", "list", key=None).returncode == AUTH
    assert graft(server, "jobs", "list", key="graft-not-a-key").returncode == AUTH
    missing = graft(server, "jobs", "show", "job_nope")
    assert missing.returncode == REFUSED and "job_not_found" in missing.stderr
    with_json = graft(server, "jobs", "show", "job_nope", "--json")
    assert json.loads(with_json.stderr.splitlines()[0])["code"] == "job_not_found"
    assert graft(None, "jobs", "list").returncode == UNAVAILABLE
    assert graft(server, "train", "--dataset", "x").returncode == USAGE
    unsigned = graft(
        server, "train", "--dataset", "x", "--target", "t", "--model", "m",
        "--webhook-url", "https://hooks.example.com/x",
    )  # fmt: skip
    assert unsigned.returncode == REFUSED and "webhooks_not_configured" in unsigned.stderr
    bad = graft(server, "train", "--dataset", "x", "--target", "t", "--model", "m", "--param", "x")
    assert bad.returncode == USAGE and "NAME=VALUE" in bad.stderr
    # A job that ends cancelled: watching it exits 1.
    dataset = document(graft(server, "--json", "datasets", "builtin", "iris"))
    queued = document(
        graft(server, "train", "--dataset", dataset["id"], "--target", "target",
              "--model", "m", "--json")
    )  # fmt: skip
    assert document(graft(server, "jobs", "cancel", queued["id"], "--json"))["status"] == (
        "cancelled"
    )
    watched = graft(server, "jobs", "watch", queued["id"])
    assert watched.returncode == JOB_FAILED and "cancelled" in watched.stdout
    # The same key twice: the first job, not a second.
    again = [
        document(graft(server, "train", "--dataset", dataset["id"], "--target", "target",
                       "--model", "m", "--idempotency-key", "nightly-1", "--json"))["id"]
        for _ in range(2)
    ]  # fmt: skip
    assert again[0] == again[1]


@pytest.mark.parametrize("name", ["rows.csv", "rows.jsonl"])
def test_predict_names_the_missing_input_columns(
    server_factory: ServerFactory, tmp_path: Path, name: str
) -> None:
    server = server_factory(workers=1)
    dataset = document(graft(server, "--json", "datasets", "builtin", "iris"))
    trained = graft(
        server, "train", "--dataset", dataset["id"], "--target", "target", "--model", "m",
        "--epochs", "2", "--watch",
    )  # fmt: skip
    assert trained.returncode == OK, trained.stderr
    rows = pd.DataFrame({"sepal length (cm)": [5.1], "row_id": [1]})
    path = tmp_path / name
    if name.endswith(".csv"):
        rows.to_csv(path, index=False)
    else:
        rows.to_json(path, orient="records", lines=True)
    refused = graft(server, "predict", "m", str(path))
    assert refused.returncode == REFUSED
    assert "feature_mismatch" in refused.stderr and "petal width (cm)" in refused.stderr
