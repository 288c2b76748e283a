"""`graft datasets|train|fine-tune|jobs|predict|models`: the service, from a terminal.

Each command reads GRAFT_URL and GRAFT_API_KEY (or --url/--key), prints a table or, with
--json, the API's JSON (one document, or one per line for streams and lists), and exits
with a code a script can branch on (see `ExitCode`).

The command-line client's commands in one Typer app, grouped by noun (datasets, jobs,
models); long because each command documents its options for `--help`. Batch prediction,
evaluation and downloads are in scoring.py.
"""

import csv
import json
import sys
from collections.abc import Callable, Iterator
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from app.client.http import DEFAULT_URL, ApiError, Event, GraftClient, Unreachable


class ExitCode(IntEnum):
    OK = 0
    # The job (watched with `jobs watch`, or --watch) ended failed or cancelled.
    JOB_FAILED = 1
    # Click's own code for a command line it cannot parse.
    USAGE = 2
    # The service refused the request: not found, conflict, invalid (4xx but 401/403/429).
    REFUSED = 3
    # No key, an unknown or revoked key, or a key without the scope the route needs.
    AUTH = 4
    # Unreachable, an error on the service's side (5xx), or 429 after the retries.
    UNAVAILABLE = 5


# Piped into a file or another program, tables are not cut to 80 columns: ids stay whole.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
err = Console(stderr=True, soft_wrap=True)


class Context:
    def __init__(self, url: str, key: str | None, as_json: bool) -> None:
        self.url, self.key, self.as_json = url, key, as_json

    def client(self) -> GraftClient:
        return GraftClient(self.url, self.key)


def _fail(message: str, code: ExitCode) -> NoReturn:
    err.print(Text("graft: ", style="red") + Text(message), highlight=False)
    raise typer.Exit(code)


def _run(ctx: typer.Context, action: Callable[[GraftClient, Context], Any]) -> Any:
    """Call the service; its errors become a message on stderr and an exit code."""
    settings: Context = ctx.obj
    try:
        with settings.client() as client:
            return action(client, settings)
    except ApiError as exc:
        detail = exc.problem.get("detail") or exc.problem.get("title") or ""
        if settings.as_json:
            print(json.dumps(exc.problem), file=sys.stderr)
        if exc.status in (401, 403):
            _fail(f"{exc.code} ({exc.status}): {detail}", ExitCode.AUTH)
        if exc.status == 429 or exc.status >= 500:
            _fail(f"{exc.code} ({exc.status}): {detail}", ExitCode.UNAVAILABLE)
        _fail(f"{exc.code} ({exc.status}): {detail}", ExitCode.REFUSED)
    except Unreachable as exc:
        _fail(f"cannot reach the service: {exc}", ExitCode.UNAVAILABLE)


def _emit(settings: Context, document: Any, table: Callable[[], Any] | None = None) -> None:
    if settings.as_json or table is None:
        print(json.dumps(document, indent=None if settings.as_json else 2))
    else:
        out.print(table())


def _lines(
    settings: Context, items: Iterator[Any], columns: dict[str, Callable[[Any], Any]]
) -> None:
    """A list: one JSON document per line with --json, else a table."""
    if settings.as_json:
        for item in items:
            print(json.dumps(item))
        return
    table = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for item in items:
        # Text, not markup: a name like iris[100:] is data, not a style tag.
        table.add_row(*(Text(_text(get(item))) for get in columns.values()))
    out.print(table)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _details(document: dict[str, Any], fields: list[str]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    for name in fields:
        if name in document:
            value = document[name]
            shown = json.dumps(value) if isinstance(value, dict | list) else _text(value)
            table.add_row(Text(name, style="bold"), Text(shown))
    return table


app = typer.Typer(
    help="Graft's client: datasets, training, jobs, predictions and the model registry.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="GRAFT_URL", help="the service's base URL")
    ] = DEFAULT_URL,
    key: Annotated[
        str | None,
        typer.Option(envvar="GRAFT_API_KEY", help="API key (Bearer)", show_default=False),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the API's JSON (one document per line for lists)")
    ] = False,
) -> None:
    ctx.obj = Context(url, key, as_json)


# --- tags -------------------------------------------------------------------------------

SetTags = Annotated[
    list[str] | None,
    typer.Option("--tag", help="a tag to set, KEY=VALUE; repeat for several"),
]
FilterTags = Annotated[
    list[str] | None,
    typer.Option("--tag", help="only items with this tag, KEY=VALUE; repeat (all must hold)"),
]
DescriptionOption = Annotated[str | None, typer.Option(help="free text for people")]


def _tags(pairs: list[str] | None) -> dict[str, str]:
    tags = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--tag")
        tags[key] = value
    return tags


def _tag_filter(pairs: list[str] | None) -> dict[str, Any]:
    """`--tag k=v` as the API's `?tag=k:v` (repeated)."""
    return {"tag": [f"{k}:{v}" for k, v in _tags(pairs).items()]} if pairs else {}


# --- datasets ---------------------------------------------------------------------------

datasets = typer.Typer(help="Upload and list datasets.", no_args_is_help=True)
app.add_typer(datasets, name="datasets")

_DATASET_FIELDS = ["id", "name", "format", "rows", "size_bytes", "sha256", "created_at", "columns"]


def _dataset_table(dataset: dict[str, Any]) -> Table:
    shown = dict(dataset)
    shown["columns"] = ", ".join(f"{c['name']} ({c['dtype']})" for c in dataset.get("columns", []))
    return _details(shown, _DATASET_FIELDS)


@datasets.command("upload")
def datasets_upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str | None, typer.Option(help="a name (default: the file's)")] = None,
    tag: SetTags = None,
    description: DescriptionOption = None,
) -> None:
    """Upload a CSV, Parquet, JSON Lines or .npz file; prints the new dataset."""
    tags = _tags(tag)
    dataset = _run(ctx, lambda client, _: client.upload(file, name, tags, description))
    _emit(ctx.obj, dataset, lambda: _dataset_table(dataset))


@datasets.command("builtin")
def datasets_builtin(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="iris, wine, breast_cancer, digits, diabetes, ...")],
    start: Annotated[int | None, typer.Option(help="first row")] = None,
    stop: Annotated[int | None, typer.Option(help="row after the last")] = None,
    shuffle_seed: Annotated[int | None, typer.Option(help="shuffle first, with this seed")] = None,
    tag: SetTags = None,
    description: DescriptionOption = None,
) -> None:
    """Make a dataset from one shipped with scikit-learn (optionally a row range of it)."""
    fields = {"name": name, "start": start, "stop": stop, "shuffle_seed": shuffle_seed}
    body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    body |= {"tags": _tags(tag), "description": description}
    dataset = _run(ctx, lambda client, _: client.json("POST", "/v1/datasets/builtin", json=body))
    _emit(ctx.obj, dataset, lambda: _dataset_table(dataset))


@datasets.command("list")
def datasets_list(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(help="at most this many (default: all)")] = None,
    tag: FilterTags = None,
) -> None:
    """Datasets, newest first."""

    def action(client: GraftClient, settings: Context) -> None:
        _lines(
            settings,
            client.pages("/v1/datasets", _tag_filter(tag), limit),
            {
                "ID": lambda d: d["id"],
                "NAME": lambda d: d["name"],
                "ROWS": lambda d: d["rows"],
                "COLUMNS": lambda d: len(d["columns"]),
                "CREATED": lambda d: d["created_at"][:19],
            },
        )

    _run(ctx, action)


@datasets.command("show")
def datasets_show(ctx: typer.Context, dataset_id: str) -> None:
    """One dataset: its columns, rows and hash."""
    dataset = _run(ctx, lambda client, _: client.json("GET", f"/v1/datasets/{dataset_id}"))
    _emit(ctx.obj, dataset, lambda: _dataset_table(dataset))


# --- training -----------------------------------------------------------------------------


def _hyperparameters(
    epochs: int | None,
    learning_rate: float | None,
    batch_size: int | None,
    seed: int | None,
    extra: list[str] | None,
) -> dict[str, Any]:
    chosen: dict[str, Any] = {
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "seed": seed,
    }
    for item in extra or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--param")
        try:
            chosen[name] = json.loads(value)
        except ValueError:
            chosen[name] = value
    return {k: v for k, v in chosen.items() if v is not None}


Epochs = Annotated[int | None, typer.Option(help="epochs (default: the service's)")]
LearningRate = Annotated[float | None, typer.Option("--learning-rate", "--lr")]
BatchSize = Annotated[int | None, typer.Option()]
Seed = Annotated[int | None, typer.Option()]
Params = Annotated[
    list[str] | None,
    typer.Option("--param", help="any other hyperparameter, NAME=VALUE (VALUE as JSON); repeat"),
]
Watch = Annotated[
    bool, typer.Option("--watch", help="follow the job to its end (exit 1 if it fails)")
]
WebhookUrl = Annotated[
    str | None,
    typer.Option(help="called (signed) when the job ends; the server must have a webhook secret"),
]
IdempotencyKey = Annotated[
    str | None,
    typer.Option(help="repeating the command with the same key returns the first job"),
]


def _submit(
    ctx: typer.Context, path: str, body: dict[str, Any], watch: bool, idempotency_key: str | None
) -> None:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    job = _run(ctx, lambda client, _: client.json("POST", path, json=body, headers=headers))
    settings: Context = ctx.obj
    if not watch:
        _emit(settings, job, lambda: _job_table(job))
        return
    if not settings.as_json:
        err.print(f"queued {job['id']}", highlight=False)
    _watch(ctx, job["id"])


@app.command("train")
def train(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="the source dataset's id")],
    target: Annotated[str, typer.Option(help="the column to predict")],
    model: Annotated[str, typer.Option(help="the registered model that gets the new version")],
    features: Annotated[
        str | None,
        typer.Option(help="comma-separated feature columns (default: all but the target)"),
    ] = None,
    task: Annotated[str | None, typer.Option(help="classification or regression")] = None,
    hidden: Annotated[
        str | None, typer.Option(help="MLP hidden layer sizes, comma-separated, e.g. 64,64")
    ] = None,
    epochs: Epochs = None,
    learning_rate: LearningRate = None,
    batch_size: BatchSize = None,
    seed: Seed = None,
    param: Params = None,
    watch: Watch = False,
    idempotency_key: IdempotencyKey = None,
    tag: SetTags = None,
    description: DescriptionOption = None,
    webhook_url: WebhookUrl = None,
) -> None:
    """Queue a source-training job (and, with --watch, follow it to its end). Its tags and
    description go to the version it registers too."""
    body: dict[str, Any] = {
        "dataset_id": dataset,
        "target_column": target,
        "model_name": model,
        "tags": _tags(tag),
        "description": description,
        "webhook_url": webhook_url,
    }
    if features:
        body["feature_columns"] = [name.strip() for name in features.split(",") if name.strip()]
    if task:
        body["task"] = task
    if hidden:
        try:
            layers = [int(size) for size in hidden.split(",")]
        except ValueError:
            raise typer.BadParameter(
                f"{hidden!r}: expected sizes like 64,64", param_hint="--hidden"
            ) from None
        body["architecture"] = {"type": "mlp", "hidden_layers": layers}
    body["hyperparameters"] = _hyperparameters(epochs, learning_rate, batch_size, seed, param)
    _submit(ctx, "/v1/jobs/source-training", body, watch, idempotency_key)


def _base_ref(base: str) -> dict[str, Any]:
    """NAME, NAME:VERSION or NAME@ALIAS."""
    if "@" in base:
        name, alias = base.split("@", 1)
        return {"name": name, "alias": alias}
    if ":" in base:
        name, version = base.rsplit(":", 1)
        if not version.isdigit():
            raise typer.BadParameter(
                f"{base!r}: expected NAME:VERSION with a number", param_hint="--base"
            )
        return {"name": name, "version": int(version)}
    return {"name": base}


@app.command("fine-tune")
def fine_tune(
    ctx: typer.Context,
    base: Annotated[str, typer.Option(help="the base version: NAME, NAME:VERSION or NAME@ALIAS")],
    dataset: Annotated[str, typer.Option(help="the target dataset's id")],
    target: Annotated[str, typer.Option(help="the column to predict")],
    model: Annotated[str, typer.Option(help="the registered model that gets the new version")],
    strategy: Annotated[
        str, typer.Option(help="parameter, feature, structure, ... or auto")
    ] = "auto",
    target_normalization: Annotated[str | None, typer.Option(help="source, target or auto")] = None,
    epochs: Epochs = None,
    learning_rate: LearningRate = None,
    batch_size: BatchSize = None,
    seed: Seed = None,
    param: Params = None,
    watch: Watch = False,
    idempotency_key: IdempotencyKey = None,
    tag: SetTags = None,
    description: DescriptionOption = None,
    webhook_url: WebhookUrl = None,
) -> None:
    """Queue a fine-tuning job from a base version (and, with --watch, follow it)."""
    body: dict[str, Any] = {
        "tags": _tags(tag),
        "description": description,
        "webhook_url": webhook_url,
        "base_model": _base_ref(base),
        "dataset_id": dataset,
        "target_column": target,
        "model_name": model,
        "strategy": strategy,
        "hyperparameters": _hyperparameters(epochs, learning_rate, batch_size, seed, param),
    }
    if target_normalization:
        body["target_normalization"] = target_normalization
    _submit(ctx, "/v1/jobs/fine-tuning", body, watch, idempotency_key)


# --- jobs ---------------------------------------------------------------------------------

jobs = typer.Typer(help="List, show, cancel and watch jobs.", no_args_is_help=True)
app.add_typer(jobs, name="jobs")

_JOB_FIELDS = [
    "id", "kind", "status", "created_at", "started_at", "finished_at", "progress",
    "metrics", "result", "result_dataset_id", "error", "base_model", "attempts", "created_by",
]  # fmt: skip


def _job_table(job: dict[str, Any]) -> Table:
    return _details(job, _JOB_FIELDS)


def _result(job: dict[str, Any]) -> str:
    if job.get("result"):
        return f"{job['result']['model_name']} v{job['result']['version']}"
    if job.get("error"):
        return job["error"]["code"]
    if job.get("result_dataset_id"):
        return f"dataset {job['result_dataset_id']}"
    progress = job.get("progress") or {}
    if progress.get("rows_total") is not None:
        return f"rows {progress.get('rows_done') or 0:,}/{progress['rows_total']:,}"
    if job.get("kind") == "evaluation" and job.get("status") == "succeeded":
        return "scores stored"
    return f"epoch {progress.get('epoch', 0)}/{progress.get('epochs', 0)}"


@jobs.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="source_training, fine_tuning, ...")] = None,
    limit: Annotated[int | None, typer.Option(help="at most this many (default: 50)")] = 50,
    tag: FilterTags = None,
) -> None:
    """Jobs, newest first."""
    params: dict[str, Any] = {k: v for k, v in {"status": status, "kind": kind}.items() if v}
    params |= _tag_filter(tag)

    def action(client: GraftClient, settings: Context) -> None:
        _lines(
            settings,
            client.pages("/v1/jobs", params, limit),
            {
                "ID": lambda j: j["id"],
                "KIND": lambda j: j["kind"],
                "STATUS": lambda j: j["status"],
                "MODEL": lambda j: j["request"].get("model_name"),
                "RESULT": _result,
                "CREATED": lambda j: j["created_at"][:19],
            },
        )

    _run(ctx, action)


@jobs.command("show")
def jobs_show(ctx: typer.Context, job_id: str) -> None:
    """One job: status, progress, metrics, result or error."""
    job = _run(ctx, lambda client, _: client.json("GET", f"/v1/jobs/{job_id}"))
    _emit(ctx.obj, job, lambda: _job_table(job))


@jobs.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a queued job at once, a running one at the end of its epoch."""
    job = _run(ctx, lambda client, _: client.json("POST", f"/v1/jobs/{job_id}/cancel"))
    _emit(ctx.obj, job, lambda: _job_table(job))


@jobs.command("watch")
def jobs_watch(ctx: typer.Context, job_id: str) -> None:
    """Follow a job live (epoch, loss, ETA) until it ends; exit 1 if it failed or was
    cancelled. A dropped connection is resumed where it left off."""
    _watch(ctx, job_id)


def _watch(ctx: typer.Context, job_id: str) -> None:
    settings: Context = ctx.obj

    def action(client: GraftClient, _: Context) -> dict[str, Any]:
        job = client.json("GET", f"/v1/jobs/{job_id}")
        if settings.as_json:
            for event in client.events(job_id):
                print(json.dumps(_event_json(event)), flush=True)
        else:
            _follow(client, job)
        final: dict[str, Any] = client.json("GET", f"/v1/jobs/{job_id}")
        return final

    job = _run(ctx, action)
    if not settings.as_json:
        out.print(f"{job['id']} {job['status']}: {_result(job)}", highlight=False)
    if job["status"] != "succeeded":
        raise typer.Exit(ExitCode.JOB_FAILED)


def _event_json(event: Event) -> dict[str, Any]:
    return {"seq": event.seq, "type": event.type, "message": event.message, "data": event.data}


def _follow(client: GraftClient, job: dict[str, Any]) -> None:
    """A progress bar on a terminal; elsewhere (a log file, CI) one line per event."""
    progress_now = job.get("progress") or {}
    # Training counts epochs; batch prediction and evaluation count rows.
    counts_rows = progress_now.get("rows_total") is not None
    total_now = progress_now.get("rows_total" if counts_rows else "epochs")
    epochs = int(total_now or 0) or None
    events = client.events(job["id"])
    if not err.is_terminal:
        for event in events:
            err.print(
                f"[{event.type}] {event.message} {_metrics_text(event.data)}".rstrip(),
                highlight=False,
                markup=False,
            )
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn(
            ("rows {task.completed:,.0f}/{task.total:,.0f}")
            if counts_rows
            else "epoch {task.completed:.0f}/{task.total:.0f}"
        ),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        bar = progress.add_task(job["id"], total=epochs, loss="")
        for event in events:
            data = event.data
            if event.type == "metrics" and "epoch" in data:
                total = data.get("epochs") or epochs
                progress.update(bar, completed=data["epoch"], total=total, loss=_metrics_text(data))
            elif event.type == "metrics" and "rows_done" in data:
                progress.update(bar, completed=data["rows_done"], total=data.get("rows_total"))
            elif event.type == "status":
                progress.update(bar, description=f"{job['id']} {data.get('status', '')}")
            elif event.type in ("warning", "log"):
                progress.console.print(
                    f"[{event.type}] {event.message}", highlight=False, markup=False
                )


def _metrics_text(data: dict[str, Any]) -> str:
    shown = []
    for name in ("train_loss", "val_loss", "val_accuracy", "val_r2"):
        if isinstance(data.get(name), int | float):
            shown.append(f"{name} {data[name]:.4f}")
    return "  ".join(shown)


# --- predictions --------------------------------------------------------------------------


def _read_rows(path: Path, batch: int) -> Iterator[list[dict[str, Any]]]:
    """Batches of rows from a CSV or JSON Lines file, read as they are needed."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open() as file:
            rows: list[dict[str, Any]] = []
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise typer.BadParameter(f"{path}, line {number}: not JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise typer.BadParameter(f"{path}, line {number}: expected a JSON object")
                rows.append(record)
                if len(rows) == batch:
                    yield rows
                    rows = []
            if rows:
                yield rows
        return
    import pandas as pd

    for chunk in pd.read_csv(path, chunksize=batch):
        # NaN is not JSON: a missing value goes as null, and the service names the row.
        yield json.loads(chunk.to_json(orient="records"))


def _resolve(
    client: GraftClient, name: str, version: int | None, alias: str | None
) -> dict[str, Any]:
    """The version predict would use, pinned for the whole file: an alias moved midway must
    not mix two versions in one output."""
    if version is None:
        model = client.json("GET", f"/v1/models/{name}")
        aliases = model.get("aliases") or {}
        if alias is not None:
            if alias not in aliases:
                raise ApiError(
                    404,
                    {"code": "alias_not_found", "detail": f"model {name!r} has no alias {alias!r}"},
                )
            version = aliases[alias]
        else:
            version = aliases.get("production", model.get("latest_version"))
    found: dict[str, Any] = client.json("GET", f"/v1/models/{name}/versions/{version}")
    return found


@app.command("predict")
def predict(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="the registered model's name")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="rows: .csv or .jsonl")],
    version: Annotated[int | None, typer.Option(help="a version number")] = None,
    alias: Annotated[
        str | None, typer.Option(help="an alias (default: production, else the latest)")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="write here (.csv or .jsonl; default: stdout)"),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format", help="csv or jsonl (default: the output's extension, else the input's)"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="rows per request")] = 1000,
) -> None:
    """Predict every row of a file. Columns that are not the model's inputs (ids, labels)
    are carried to the output beside `prediction` (and `probability_<class>`)."""
    if version is not None and alias is not None:
        raise typer.BadParameter("give --version or --alias, not both")
    chosen = (
        output_format or (output.suffix.lstrip(".") if output else None) or file.suffix.lstrip(".")
    )
    chosen = {"ndjson": "jsonl"}.get(chosen.lower(), chosen.lower())
    if chosen not in ("csv", "jsonl"):
        raise typer.BadParameter(f"{chosen!r}: expected csv or jsonl", param_hint="--format")

    def action(client: GraftClient, _: Context) -> int:
        pinned = _resolve(client, model, version, alias)
        inputs = [column["name"] for column in pinned["signature"]["inputs"]]
        sink = output.open("w", newline="") if output else sys.stdout
        writer: Any = None
        count = 0
        try:
            for rows in _read_rows(file, batch_size):
                missing = sorted({name for row in rows for name in inputs if name not in row})
                if missing:
                    raise ApiError(
                        422,
                        {
                            "code": "feature_mismatch",
                            "detail": f"{file} lacks the model's input column(s) {missing}; "
                            f"it expects {inputs}",
                        },
                    )
                body = {"records": [{name: row[name] for name in inputs} for row in rows]}
                answer = client.json(
                    "POST",
                    f"/v1/models/{model}/predict",
                    params={"version": pinned["version"]},
                    json=body,
                )
                for index, row in enumerate(rows):
                    result = {k: v for k, v in row.items() if k not in inputs}
                    result["prediction"] = answer["predictions"][index]
                    for label, p in zip(
                        answer.get("classes") or [],
                        (answer.get("probabilities") or [[]] * len(rows))[index],
                        strict=False,
                    ):
                        result[f"probability_{label}"] = p
                    if chosen == "jsonl":
                        sink.write(json.dumps(result) + "\n")
                    else:
                        if writer is None:
                            writer = csv.DictWriter(sink, fieldnames=list(result))
                            writer.writeheader()
                        writer.writerow(result)
                count += len(rows)
        finally:
            if output:
                sink.close()
        return count

    count = _run(ctx, action)
    if output is not None and not ctx.obj.as_json:
        err.print(f"{count} predictions by {model} written to {output}", highlight=False)


@app.command("export")
def export_version(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="the registered model's name")],
    version: Annotated[int, typer.Argument(help="the version number")],
    export_format: Annotated[str, typer.Option("--format", help="onnx or torchscript")] = "onnx",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="the file to write (default: NAME-vN.onnx|.pt)"),
    ] = None,
) -> None:
    """Download a version as one self-contained file (preprocessing included)."""

    def action(client: GraftClient, _: Context) -> tuple[Path, int]:
        response = client.request(
            "GET",
            f"/v1/models/{model}/versions/{version}/export",
            params={"format": export_format},
        )
        disposition = response.headers.get("content-disposition", "")
        default = (
            disposition.split('filename="')[-1].rstrip('"') if 'filename="' in disposition else None
        )
        target = output or Path(default or f"{model}-v{version}.{export_format}")
        target.write_bytes(response.content)
        return target, len(response.content)

    target, size = _run(ctx, action)
    if ctx.obj.as_json:
        print(json.dumps({"path": str(target), "bytes": size}))
    else:
        out.print(
            f"{model} version {version} written to {target} ({size:,} bytes)", highlight=False
        )


# --- models -------------------------------------------------------------------------------

models = typer.Typer(help="Registered models, their versions and aliases.", no_args_is_help=True)
app.add_typer(models, name="models")


@models.command("list")
def models_list(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(help="at most this many (default: all)")] = None,
    tag: FilterTags = None,
) -> None:
    """Registered models, newest first."""

    def action(client: GraftClient, settings: Context) -> None:
        _lines(
            settings,
            client.pages("/v1/models", _tag_filter(tag), limit),
            {
                "NAME": lambda m: m["name"],
                "LATEST": lambda m: m.get("latest_version"),
                "ALIASES": lambda m: m.get("aliases"),
                "CREATED": lambda m: m["created_at"][:19],
            },
        )

    _run(ctx, action)


@models.command("show")
def models_show(
    ctx: typer.Context,
    name: str,
    limit: Annotated[int | None, typer.Option(help="versions to list (default: 20)")] = 20,
) -> None:
    """A model and its versions (newest first), with strategy, parent and metrics."""

    def action(client: GraftClient, settings: Context) -> None:
        model = client.json("GET", f"/v1/models/{name}")
        versions = list(
            client.pages(f"/v1/models/{name}/versions", {}, limit, cursor=lambda v: v["version"])
        )
        if settings.as_json:
            print(json.dumps({**model, "versions": versions}))
            return
        out.print(_details(model, ["name", "created_at", "latest_version", "aliases"]))
        _lines(
            settings,
            iter(versions),
            {
                "VERSION": lambda v: v["version"],
                "KIND": lambda v: v["kind"],
                "STRATEGY": lambda v: v.get("strategy"),
                "PARENT": lambda v: (
                    f"{v['parent']['name']}:{v['parent']['version']}" if v.get("parent") else None
                ),
                "ALIASES": lambda v: ",".join(v.get("aliases") or []) or None,
                "METRICS": lambda v: {
                    k: round(x, 4) if isinstance(x, float) else x
                    for k, x in (v.get("metrics") or {}).items()
                    if not isinstance(x, dict | list)
                },
                "CREATED": lambda v: v["created_at"][:19],
            },
        )

    _run(ctx, action)


@models.command("alias")
def models_alias(ctx: typer.Context, name: str, alias: str, version: int) -> None:
    """Point ALIAS of model NAME at VERSION (moved atomically)."""
    moved = _run(
        ctx,
        lambda client, _: client.json(
            "PUT", f"/v1/models/{name}/aliases/{alias}", json={"version": version}
        ),
    )
    if ctx.obj.as_json:
        print(json.dumps(moved))
    else:
        out.print(f"{name}@{alias} -> version {version}", highlight=False)


@app.command("tag")
def tag_command(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(help="dataset ID, job ID, model NAME or version NAME:VERSION"),
    ],
    tag: SetTags = None,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", help="a tag key to remove")
    ] = None,
    description: DescriptionOption = None,
) -> None:
    """Set or remove tags, or set the description, of a dataset, job, model or version."""
    if target.startswith("ds_"):
        path = f"/v1/datasets/{target}"
    elif target.startswith("job_"):
        path = f"/v1/jobs/{target}"
    elif ":" in target:
        name, version = target.rsplit(":", 1)
        path = f"/v1/models/{name}/versions/{version}"
    else:
        path = f"/v1/models/{target}"
    changes: dict[str, str | None] = {**_tags(tag), **dict.fromkeys(remove or [])}
    body: dict[str, Any] = {"tags": changes}
    if description is not None:
        body["description"] = description
    updated = _run(ctx, lambda client, _: client.json("PATCH", path, json=body))
    if ctx.obj.as_json:
        print(json.dumps(updated))
    else:
        out.print(_details(updated, ["tags", "description"]))


@models.command("rollback")
def models_rollback(ctx: typer.Context, name: str, alias: str) -> None:
    """Move ALIAS of model NAME back to the version its last change replaced."""
    moved = _run(
        ctx, lambda client, _: client.json("POST", f"/v1/models/{name}/aliases/{alias}/rollback")
    )
    if ctx.obj.as_json:
        print(json.dumps(moved))
    else:
        out.print(
            f"{name}@{alias} -> version {moved['version']} (was {moved['previous_version']})",
            highlight=False,
        )


@models.command("history")
def models_history(
    ctx: typer.Context,
    name: str,
    alias: str,
    limit: Annotated[int | None, typer.Option(help="at most this many (default: 50)")] = 50,
) -> None:
    """ALIAS's changes, newest first: from which version to which, when, by which key."""

    def action(client: GraftClient, settings: Context) -> None:
        _lines(
            settings,
            client.pages(f"/v1/models/{name}/aliases/{alias}/history", {}, limit),
            {
                "WHEN": lambda c: c["changed_at"][:19],
                "ACTION": lambda c: c["action"],
                "FROM": lambda c: c["previous_version"],
                "TO": lambda c: c["version"],
                "BY": lambda c: c["changed_by"],
            },
        )

    _run(ctx, action)
