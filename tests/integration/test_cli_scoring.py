"""`graft batch-predict | evaluate`, `datasets download`, `models compare` against a real
`graft serve` with a worker process: the job runs there, the files come back over HTTP."""

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris

from tests.integration.conftest import ServerFactory
from tests.integration.test_cli_client import OK, REFUSED, document, graft, lines


def test_batch_prediction_evaluation_and_compare_from_the_command_line(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory(workers=1)
    frame = load_iris(as_frame=True).frame
    frame["target"] = frame["target"].map(dict(enumerate(load_iris().target_names)))
    source_csv, target_csv = tmp_path / "source.csv", tmp_path / "target.csv"
    frame.iloc[:100].to_csv(source_csv, index=False)
    frame.sample(frac=1.0, random_state=0).iloc[:60].to_csv(target_csv, index=False)
    source = document(graft(server, "datasets", "upload", str(source_csv), "--json"))
    target = document(graft(server, "datasets", "upload", str(target_csv), "--json"))
    trained = graft(
        server, "train", "--dataset", source["id"], "--target", "target", "--model", "src",
        "--epochs", "10", "--watch",
    )  # fmt: skip
    assert trained.returncode == OK, trained.stderr
    tuned = graft(
        server, "fine-tune", "--base", "src:1", "--dataset", target["id"], "--target", "target",
        "--model", "ft", "--strategy", "parameter", "--epochs", "10", "--watch",
    )  # fmt: skip
    assert tuned.returncode == OK, tuned.stderr

    rows = frame.drop(columns="target").sample(5_000, replace=True, random_state=1)
    rows.insert(0, "row_id", range(len(rows)))
    rows_csv = tmp_path / "rows.csv"
    rows.to_csv(rows_csv, index=False)
    uploaded = document(graft(server, "datasets", "upload", str(rows_csv), "--json"))
    predicted = graft(
        server, "batch-predict", "ft", uploaded["id"], "--id-column", "row_id",
        "--chunk-rows", "1000", "--watch",
    )  # fmt: skip
    assert predicted.returncode == OK, predicted.stderr
    assert "rows 5,000/5,000" in predicted.stderr or "5,000 of 5,000 rows" in predicted.stderr
    job = lines(graft(server, "jobs", "list", "--json"))[0]
    assert job["kind"] == "batch_prediction" and job["status"] == "succeeded"
    result_id = job["result_dataset_id"]
    assert f"dataset {result_id}" in predicted.stdout

    out = tmp_path / "predictions.csv"
    downloaded = document(
        graft(server, "datasets", "download", result_id, "-o", str(out), "--json")
    )
    assert downloaded == {"path": str(out), "bytes": out.stat().st_size}
    got = pd.read_csv(out)
    assert got["row_id"].tolist() == list(range(5_000))
    with server.client() as client:
        sample = rows.iloc[:50].drop(columns="row_id").to_dict(orient="records")
        direct = client.post("/v1/models/ft/predict", json={"records": sample}).json()
    assert got["prediction"].iloc[:50].tolist() == direct["predictions"]
    columns = [f"probability_{c}" for c in direct["classes"]]
    assert np.allclose(got[columns].iloc[:50].to_numpy(), direct["probabilities"], atol=1e-6)
    # Without -o the file takes the name the server gives it, in the working directory.
    named = graft(server, "datasets", "download", result_id, "--json", cwd=tmp_path)
    assert Path(document(named)["path"]).suffix == ".csv"

    evaluated = graft(server, "evaluate", target["id"], "ft:1", "--include-base", "--watch")
    assert evaluated.returncode == OK, evaluated.stderr
    compared = document(graft(server, "models", "compare", "ft", "1", "--json"))
    (scores,) = compared["datasets"]
    assert [(s["name"], s["version"]) for s in scores["scores"]] == [("ft", 1), ("src", 1)]
    table = graft(server, "models", "compare", "ft", "1")
    assert table.returncode == OK and "ACCURACY" in table.stdout and "src v1" in table.stdout
    assert graft(server, "models", "compare", "ft", "7").returncode == REFUSED
    assert graft(server, "batch-predict", "ft", "ds_nope").returncode == REFUSED
