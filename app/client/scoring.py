"""`graft batch-predict | evaluate`, `graft datasets download`, `graft models compare`:
predictions over stored datasets and scores side by side, from a terminal."""

import json
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import httpx
import typer
from rich.table import Table
from rich.text import Text

from app.client.commands import (
    Context,
    DescriptionOption,
    IdempotencyKey,
    SetTags,
    Watch,
    WebhookUrl,
    _base_ref,
    _run,
    _submit,
    _tags,
    _text,
    app,
    datasets,
    models,
    out,
)
from app.client.http import GraftClient


@app.command("batch-predict")
def batch_predict(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS")],
    dataset: Annotated[str, typer.Argument(help="the id of the dataset to predict")],
    id_column: Annotated[
        list[str] | None,
        typer.Option("--id-column", help="an input column copied into the result (repeatable)"),
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "csv",
    probabilities: Annotated[
        bool, typer.Option(help="a probability column per class (classification)")
    ] = True,
    chunk_rows: Annotated[int | None, typer.Option(help="rows per chunk")] = None,
    name: Annotated[str | None, typer.Option(help="the result dataset's name")] = None,
    watch: Watch = False,
    idempotency_key: IdempotencyKey = None,
    tag: SetTags = None,
    description: DescriptionOption = None,
    webhook_url: WebhookUrl = None,
) -> None:
    """Predict every row of a stored dataset into a new dataset (a background job)."""
    body: dict[str, Any] = {
        "model": _base_ref(model),
        "dataset_id": dataset,
        "id_columns": id_column or [],
        "output_format": output_format,
        "probabilities": probabilities,
        "tags": _tags(tag),
        "description": description,
        "webhook_url": webhook_url,
    }
    if chunk_rows is not None:
        body["chunk_rows"] = chunk_rows
    if name is not None:
        body["result_name"] = name
    _submit(ctx, "/v1/jobs/batch-prediction", body, watch, idempotency_key)


@app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="the id of a labelled dataset")],
    model: Annotated[list[str], typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS, ...")],
    target: Annotated[
        str | None, typer.Option(help="the label column (default: each version's target)")
    ] = None,
    include_base: Annotated[
        bool, typer.Option(help="also score each fine-tuned version's base")
    ] = False,
    watch: Watch = False,
    idempotency_key: IdempotencyKey = None,
    tag: SetTags = None,
    description: DescriptionOption = None,
    webhook_url: WebhookUrl = None,
) -> None:
    """Score versions on a labelled dataset; the scores are stored with each version."""
    body: dict[str, Any] = {
        "models": [_base_ref(ref) for ref in model],
        "dataset_id": dataset,
        "target_column": target,
        "include_base": include_base,
        "tags": _tags(tag),
        "description": description,
        "webhook_url": webhook_url,
    }
    _submit(ctx, "/v1/jobs/evaluation", body, watch, idempotency_key)


@datasets.command("download")
def datasets_download(
    ctx: typer.Context,
    dataset_id: str,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="the file to write (default: the dataset's name)"),
    ] = None,
) -> None:
    """Download a dataset's file (a batch prediction's result, an upload), streamed."""

    written: list[Path] = []

    def open_target(response: httpx.Response) -> BinaryIO:
        disposition = response.headers.get("content-disposition", "")
        named = (
            disposition.split('filename="')[-1].rstrip('"') if "filename=" in disposition else ""
        )
        # The server's name, without any directory it might carry.
        target = output or Path(Path(named).name or dataset_id)
        written.append(target)
        return target.open("wb")

    def action(client: GraftClient, _: Context) -> tuple[Path, int]:
        size = client.download(f"/v1/datasets/{dataset_id}/content", open_target)
        return written[0], size

    target, size = _run(ctx, action)
    if ctx.obj.as_json:
        print(json.dumps({"path": str(target), "bytes": size}))
    else:
        out.print(f"dataset {dataset_id} written to {target} ({size:,} bytes)", highlight=False)


@models.command("compare")
def models_compare(
    ctx: typer.Context,
    name: str,
    versions: Annotated[str, typer.Argument(help="version numbers, comma-separated: 1,2")],
    base: Annotated[bool, typer.Option(help="include each fine-tune's base")] = True,
) -> None:
    """Versions side by side: their latest scores on each dataset they were evaluated on."""
    params = {"versions": versions, "include_base": str(base).lower()}
    compared = _run(
        ctx, lambda client, _: client.json("GET", f"/v1/models/{name}/compare", params=params)
    )
    if ctx.obj.as_json:
        print(json.dumps(compared))
        return
    metrics = compared["headline_metrics"]
    if not compared["datasets"]:
        out.print(
            "no evaluations yet: `graft evaluate DATASET MODEL:VERSION --include-base`",
            highlight=False,
        )
    for group in compared["datasets"]:
        dataset = group["dataset"]
        table = Table(
            "VERSION", *[m.upper() for m in metrics], "ROWS", box=None, header_style="bold"
        )
        best = group.get("best") or {}
        for score in group["scores"]:
            label = f"{score['name']} v{score['version']}"
            if (score["name"], score["version"]) == (best.get("name"), best.get("version")):
                label += " *"
            values = [_text(score["metrics"].get(m)) for m in metrics]
            table.add_row(
                Text(label), *(Text(v) for v in values), Text(_text(score["metrics"].get("rows")))
            )
        out.print(
            Text(
                f"{dataset['name']} ({dataset['id']}), labels {group['target_column']!r}:",
                style="bold",
            )
        )
        out.print(table)
