"""Conflicting requests sent at the same moment, many times over, against a real server.

The database decides every conflict (row locks, constraints, conditional updates), so of two
requests that cannot both succeed exactly one wins, the other gets a clear 4xx with a stable
`code`, and the store read back through the API agrees with the winner. Each race fires its
two requests from two threads, each with its own keep-alive client, released together by a
barrier; each test repeats its race for a number of rounds, on SQLite and on PostgreSQL.
"""

import random
import statistics
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import fresh_postgres_database
from tests.integration.conftest import LiveServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROUNDS = 40
FINAL = {"succeeded", "failed", "cancelled"}
TINY = {"epochs": 2, "learning_rate": 0.02, "batch_size": 32, "seed": 0}
ARCHITECTURE = {"type": "mlp", "hidden_layers": [8]}

Call = Callable[[httpx2.Client], httpx2.Response]


# --- the store, its server, and the racing clients ----------------------------------------


class Store:
    """One test's database (SQLite file or fresh PostgreSQL DB) and the server running on it."""

    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.server: LiveServer | None = None

    def serve(self, workers: int) -> LiveServer:
        """(Re)start the server on this store with `workers` worker processes."""
        self.stop()
        self.server = LiveServer(
            self.data_dir, self.database_url, workers=workers, worker_poll_seconds=0.1
        )
        self.server.start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def log(self) -> str:
        return self.server.log() if self.server is not None else ""


@pytest.fixture
def store(tmp_path: Path, db_backend: str) -> Iterator[Store]:
    data_dir = tmp_path / "live"
    data_dir.mkdir()
    with ExitStack() as stack:
        url = None
        if db_backend == "postgresql":
            url = stack.enter_context(fresh_postgres_database("conflicts"))
        result = Store(data_dir, url)
        stack.callback(result.stop)
        yield result


def show(response: httpx2.Response | BaseException) -> str:
    if isinstance(response, BaseException):
        return f"raised {type(response).__name__}: {response}"
    request = response.request
    return f"{request.method} {request.url.path} -> {response.status_code} {response.text[:300]}"


def code(response: httpx2.Response) -> str | None:
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return None
    found: str | None = response.json().get("code")
    return found


def is_problem(response: httpx2.Response, status: int, problem_code: str) -> bool:
    return response.status_code == status and code(response) == problem_code


class Racer:
    """Two threads, each with its own keep-alive client, released together by a barrier."""

    def __init__(self, store: Store) -> None:
        assert store.server is not None
        self.store = store
        self.clients = (store.server.client(), store.server.client())
        for client in self.clients:
            client.timeout = httpx2.Timeout(30)
            client.get("/healthz")  # open the pooled connection before the first race
        self.pool = ThreadPoolExecutor(2)

    def race(
        self, label: str, first: Call, second: Call, lag: float = 0.0
    ) -> tuple[httpx2.Response, ...]:
        """Both calls at once (`second` `lag` seconds after `first`, when `lag` is given)."""
        barrier = threading.Barrier(2, timeout=30)

        def run(call: Call, client: httpx2.Client, wait: float) -> httpx2.Response | BaseException:
            barrier.wait()
            if wait:
                time.sleep(wait)
            try:
                return call(client)
            except Exception as exc:  # a hang or a dropped connection is a finding too
                return exc

        futures = [
            self.pool.submit(run, call, client, wait)
            for call, client, wait in zip((first, second), self.clients, (0.0, lag), strict=True)
        ]
        results = [future.result(timeout=90) for future in futures]
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, f"{label}: {' | '.join(show(r) for r in results)}"
        responses = tuple(r for r in results if isinstance(r, httpx2.Response))
        server_errors = [r for r in responses if r.status_code >= 500]
        assert not server_errors, (
            f"{label}: 5xx: {' | '.join(show(r) for r in responses)}\n"
            f"server log:\n{self.store.log()[-2500:]}"
        )
        return responses

    def close(self) -> None:
        self.pool.shutdown()
        for client in self.clients:
            client.close()


@pytest.fixture
def racers() -> Iterator[Callable[[Store], Racer]]:
    made: list[Racer] = []

    def make(store: Store) -> Racer:
        racer = Racer(store)
        made.append(racer)
        return racer

    yield make
    for racer in made:
        racer.close()


# --- API helpers ---------------------------------------------------------------------------


def ok(response: httpx2.Response, status: int = 200) -> Any:
    assert response.status_code == status, show(response)
    return response.json() if response.content else None


def builtin(client: httpx2.Client, start: int = 0, stop: int = 100) -> str:
    body = ok(
        client.post("/v1/datasets/builtin", json={"name": "iris", "start": start, "stop": stop}),
        201,
    )
    dataset_id: str = body["id"]
    return dataset_id


def source_body(dataset_id: str, model_name: str, **hyper: Any) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "target_column": "target",
        "model_name": model_name,
        "architecture": ARCHITECTURE,
        "hyperparameters": {**TINY, **hyper},
    }


def fine_tuning_body(
    name: str, version: int, dataset_id: str, strategy: str, model_name: str
) -> dict[str, Any]:
    return {
        "base_model": {"name": name, "version": version},
        "dataset_id": dataset_id,
        "target_column": "target",
        "model_name": model_name,
        "strategy": strategy,
        "hyperparameters": TINY,
    }


def submit(client: httpx2.Client, body: dict[str, Any]) -> str:
    job_id: str = ok(client.post("/v1/jobs/source-training", json=body), 202)["id"]
    return job_id


def wait_jobs(client: httpx2.Client, job_ids: list[str], timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [ok(client.get(f"/v1/jobs/{job_id}")) for job_id in job_ids]
        if all(job["status"] in FINAL for job in jobs):
            return jobs
        assert time.monotonic() < deadline, f"jobs did not end in {timeout} s: {jobs}"
        time.sleep(0.02)


def train(client: httpx2.Client, model_name: str, dataset_ids: list[str]) -> list[int]:
    """One tiny source-training job per dataset; their version numbers, in dataset order."""
    job_ids = [submit(client, source_body(d, model_name)) for d in dataset_ids]
    jobs = wait_jobs(client, job_ids, timeout=120)
    assert all(job["status"] == "succeeded" for job in jobs), jobs
    return [job["result"]["version"] for job in jobs]


def all_jobs(client: httpx2.Client) -> list[dict]:
    jobs: list[dict] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if after is not None:
            params["after"] = after
        page = ok(client.get("/v1/jobs", params=params))
        jobs.extend(page["data"])
        if not page["has_more"]:
            return jobs
        after = page["data"][-1]["id"]


def versions_of(client: httpx2.Client, name: str) -> list[dict]:
    page = ok(client.get(f"/v1/models/{name}/versions", params={"limit": 200}))
    assert not page["has_more"]
    versions: list[dict] = page["data"]
    return versions


def aliases(client: httpx2.Client, name: str) -> dict[str, int]:
    found: dict[str, int] = ok(client.get(f"/v1/models/{name}"))["aliases"]
    return found


def seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run_time(client: httpx2.Client, body: dict[str, Any], samples: int = 3) -> float:
    """Median seconds from a job's creation to its end, on an idle one-worker server."""
    times = []
    for _ in range(samples):
        (job,) = wait_jobs(client, [submit(client, body)])
        assert job["status"] == "succeeded", job
        times.append(seconds(job["created_at"], job["finished_at"]))
    return statistics.median(times)


def report(what: str, counts: Counter[str], started: float) -> None:
    """The outcome split, shown with -s (and kept by -rA)."""
    print(f"{what}: {dict(counts)} in {time.monotonic() - started:.1f} s")


_lags = random.Random(1)


def lag(round_number: int) -> float:
    """Even rounds send both requests at once; odd ones hold the delete back 0-15 ms, since
    job creation validates more before it reaches the rows it shares with the delete."""
    return 0.0 if round_number % 2 == 0 else _lags.uniform(0, 0.015)


def delays(rounds: int, typical: float, seed: int) -> list[float]:
    """Delays spread evenly over [0, 2 * typical], in a shuffled order."""
    spread = [2 * typical * i / (rounds - 1) for i in range(rounds)]
    random.Random(seed).shuffle(spread)
    return spread


# --- 1. dataset deletion vs a job that trains on it -------------------------------------------


def test_delete_dataset_races_source_training_job(
    store: Store, racers: Callable[[Store], Racer]
) -> None:
    store.serve(workers=0)
    racer = racers(store)
    client = racer.clients[0]
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    for i in range(ROUNDS):
        dataset_id = builtin(client)
        body = source_body(dataset_id, "r1")
        wait = lag(i)
        label = f"round {i} (dataset {dataset_id}, delete {wait * 1000:.1f} ms later)"
        job, deleted = racer.race(
            label,
            lambda c, b=body: c.post("/v1/jobs/source-training", json=b),
            lambda c, d=dataset_id: c.delete(f"/v1/datasets/{d}"),
            wait,
        )
        label = f"{label}: {show(deleted)} | {show(job)}"
        if job.status_code == 202 and is_problem(deleted, 409, "dataset_in_use"):
            outcomes["job"] += 1
            ok(client.get(f"/v1/datasets/{dataset_id}"))
            queued = ok(client.get(f"/v1/jobs/{job.json()['id']}"))
            assert queued["status"] == "queued", f"{label}; job now {queued}"
        elif deleted.status_code == 204 and is_problem(job, 404, "dataset_not_found"):
            outcomes["delete"] += 1
            gone = client.get(f"/v1/datasets/{dataset_id}")
            assert is_problem(gone, 404, "dataset_not_found"), f"{label}; {show(gone)}"
            rows = [j for j in all_jobs(client) if j["request"]["dataset_id"] == dataset_id]
            assert not rows, f"{label}; jobs on the deleted dataset: {rows}"
        else:
            pytest.fail(f"{label}: not one clear winner (outcomes so far {dict(outcomes)})")
    report("delete dataset vs source job", outcomes, started)


# --- 2. source-dataset deletion vs a joint fine-tuning job that trains on it too -----------


def test_delete_source_dataset_races_joint_fine_tuning(
    store: Store, racers: Callable[[Store], Racer]
) -> None:
    server = store.serve(workers=2)
    with server.client() as client:
        sources = [builtin(client) for _ in range(ROUNDS)]
        versions = train(client, "base", sources)
        target = builtin(client, 100, 150)
    store.serve(workers=0)  # from here on, jobs stay queued
    racer = racers(store)
    client = racer.clients[0]
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    for i, (source, version) in enumerate(zip(sources, versions, strict=True)):
        body = fine_tuning_body("base", version, target, "joint", "joint")
        wait = lag(i)
        label = (
            f"round {i} (base version {version}, source dataset {source}, "
            f"delete {wait * 1000:.1f} ms later)"
        )
        job, deleted = racer.race(
            label,
            lambda c, b=body: c.post("/v1/jobs/fine-tuning", json=b),
            lambda c, d=source: c.delete(f"/v1/datasets/{d}"),
            wait,
        )
        label = f"{label}: {show(deleted)} | {show(job)}"
        if job.status_code == 202 and is_problem(deleted, 409, "dataset_in_use"):
            outcomes["job"] += 1
            ok(client.get(f"/v1/datasets/{source}"))
            queued = ok(client.get(f"/v1/jobs/{job.json()['id']}"))
            assert queued["status"] == "queued", f"{label}; job now {queued}"
        elif deleted.status_code == 204 and is_problem(job, 409, "source_dataset_unavailable"):
            outcomes["delete"] += 1
            gone = client.get(f"/v1/datasets/{source}")
            assert is_problem(gone, 404, "dataset_not_found"), f"{label}; {show(gone)}"
            base = {"name": "base", "version": version}
            rows = [j for j in all_jobs(client) if j.get("base_model") == base]
            assert not rows, f"{label}; joint jobs on the deleted source dataset: {rows}"
        else:
            pytest.fail(f"{label}: not one clear winner (outcomes so far {dict(outcomes)})")
    report("delete source dataset vs joint job", outcomes, started)


# --- 3. version deletion vs an alias pointed at it ------------------------------------------


def test_delete_version_races_alias(store: Store, racers: Callable[[Store], Racer]) -> None:
    server = store.serve(workers=2)
    with server.client() as client:
        dataset = builtin(client)
        spare, *versions = train(client, "m", [dataset] * (ROUNDS + 1))
        ok(client.put("/v1/models/m/aliases/moving", json={"version": spare}))
    store.serve(workers=0)
    racer = racers(store)
    client = racer.clients[0]
    moving = spare  # where the alias `moving` points now
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    for i, version in enumerate(versions):
        # Even rounds create an alias (INSERT), odd rounds move one (UPDATE).
        alias = f"fresh{i}" if i % 2 == 0 else "moving"
        wait = lag(i // 2)
        label = f"round {i} (version {version}, alias {alias}, delete {wait * 1000:.1f} ms later)"
        put, deleted = racer.race(
            label,
            lambda c, a=alias, v=version: c.put(f"/v1/models/m/aliases/{a}", json={"version": v}),
            lambda c, v=version: c.delete(f"/v1/models/m/versions/{v}"),
            wait,
        )
        label = f"{label}: {show(deleted)} | {show(put)}"
        now = aliases(client, "m")
        if put.status_code == 200 and is_problem(deleted, 409, "version_aliased"):
            outcomes["alias"] += 1
            assert put.json()["version"] == version, label
            kept = ok(client.get(f"/v1/models/m/versions/{version}"))
            assert alias in kept["aliases"], f"{label}; version now {kept['aliases']}"
            assert now.get(alias) == version, f"{label}; aliases now {now}"
            if alias == "moving":
                moving = version
        elif deleted.status_code == 204 and is_problem(put, 404, "version_not_found"):
            outcomes["delete"] += 1
            gone = client.get(f"/v1/models/m/versions/{version}")
            assert is_problem(gone, 404, "version_not_found"), f"{label}; {show(gone)}"
            expected = moving if alias == "moving" else None
            assert now.get(alias) == expected, f"{label}; aliases now {now}"
            assert version not in now.values(), f"{label}; aliases now {now}"
        else:
            pytest.fail(f"{label}: not one clear winner (outcomes so far {dict(outcomes)})")
    report("delete version vs alias", outcomes, started)


# --- 4. version deletion vs a fine-tuning job built on it -----------------------------------


def test_delete_version_races_fine_tuning_job(
    store: Store, racers: Callable[[Store], Racer]
) -> None:
    server = store.serve(workers=2)
    with server.client() as client:
        dataset = builtin(client)
        versions = train(client, "m", [dataset] * ROUNDS)
        target = builtin(client, 100, 150)
    store.serve(workers=0)
    racer = racers(store)
    client = racer.clients[0]
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    for i, version in enumerate(versions):
        body = fine_tuning_body("m", version, target, "parameter", "ft")
        wait = lag(i)
        label = f"round {i} (version {version}, delete {wait * 1000:.1f} ms later)"
        job, deleted = racer.race(
            label,
            lambda c, b=body: c.post("/v1/jobs/fine-tuning", json=b),
            lambda c, v=version: c.delete(f"/v1/models/m/versions/{v}"),
            wait,
        )
        label = f"{label}: {show(deleted)} | {show(job)}"
        if job.status_code == 202 and is_problem(deleted, 409, "version_in_use"):
            outcomes["job"] += 1
            ok(client.get(f"/v1/models/m/versions/{version}"))
            queued = ok(client.get(f"/v1/jobs/{job.json()['id']}"))
            assert queued["status"] == "queued", f"{label}; job now {queued}"
        elif deleted.status_code == 204 and is_problem(job, 404, "version_not_found"):
            outcomes["delete"] += 1
            gone = client.get(f"/v1/models/m/versions/{version}")
            assert is_problem(gone, 404, "version_not_found"), f"{label}; {show(gone)}"
            base = {"name": "m", "version": version}
            rows = [j for j in all_jobs(client) if j.get("base_model") == base]
            assert not rows, f"{label}; jobs on the deleted version: {rows}"
        else:
            pytest.fail(f"{label}: not one clear winner (outcomes so far {dict(outcomes)})")
    report("delete version vs fine-tuning job", outcomes, started)


# --- 5. two PUTs of one alias ---------------------------------------------------------------


def test_concurrent_alias_puts(store: Store, racers: Callable[[Store], Racer]) -> None:
    server = store.serve(workers=2)
    with server.client() as client:
        one, two = train(client, "m", [builtin(client)] * 2)
        ok(client.put("/v1/models/m/aliases/moving", json={"version": one}))
    store.serve(workers=0)
    racer = racers(store)
    client = racer.clients[0]
    landed: Counter[str] = Counter()
    started = time.monotonic()
    for i in range(30):
        cases = [
            (f"new{i}", one, two),  # a new alias, two versions: both INSERT
            (f"same{i}", one, one),  # a new alias, the same version twice
            ("moving", one, two),  # an existing alias moved both ways: both UPDATE
        ]
        for alias, first, second in cases:
            label = f"round {i} (alias {alias} -> {first} | {second})"
            responses = racer.race(
                label,
                lambda c, a=alias, v=first: c.put(f"/v1/models/m/aliases/{a}", json={"version": v}),
                lambda c, a=alias, v=second: c.put(
                    f"/v1/models/m/aliases/{a}", json={"version": v}
                ),
            )
            label = f"{label}: {' | '.join(show(r) for r in responses)}"
            assert all(r.status_code == 200 for r in responses), label
            assert [r.json()["version"] for r in responses] == [first, second], label
            now = aliases(client, "m").get(alias)
            assert now in {first, second}, f"{label}; alias now {now}"
            landed[f"{alias.rstrip('0123456789')}->{now}"] += 1
    report("concurrent alias PUTs, where the alias ended up", landed, started)


# --- 6. two jobs creating the same new model at once ----------------------------------------


def test_two_jobs_create_the_same_new_model(store: Store, racers: Callable[[Store], Racer]) -> None:
    store.serve(workers=2)
    racer = racers(store)
    client = racer.clients[0]
    dataset = builtin(client)
    started = time.monotonic()
    for i in range(6):
        name = f"twin{i}"
        body = source_body(dataset, name)
        label = f"round {i} (model {name})"
        responses = racer.race(
            label,
            lambda c, b=body: c.post("/v1/jobs/source-training", json=b),
            lambda c, b=body: c.post("/v1/jobs/source-training", json=b),
        )
        label = f"{label}: {' | '.join(show(r) for r in responses)}"
        assert all(r.status_code == 202 for r in responses), label
        jobs = wait_jobs(client, [r.json()["id"] for r in responses])
        assert all(job["status"] == "succeeded" for job in jobs), f"{label}; jobs {jobs}"
        assert sorted(job["result"]["version"] for job in jobs) == [1, 2], f"{label}; {jobs}"
        versions = versions_of(client, name)
        by_number = {v["version"]: v["job_id"] for v in versions}
        expected = {job["result"]["version"]: job["id"] for job in jobs}
        assert by_number == expected, f"{label}; versions {by_number}, jobs {expected}"
        model = ok(client.get(f"/v1/models/{name}"))
        assert model["latest_version"] == 2, f"{label}; model {model}"
        models = ok(client.get("/v1/models", params={"limit": 200}))["data"]
        assert [m["name"] for m in models].count(name) == 1, f"{label}; models {models}"
    print(f"two jobs on one new model: 6 rounds in {time.monotonic() - started:.1f} s")


# --- 7. cancel vs the job completing --------------------------------------------------------


def test_cancel_races_completion(store: Store) -> None:
    server = store.serve(workers=1)
    client = server.client()
    client.timeout = httpx2.Timeout(30)
    dataset = builtin(client)
    body = source_body(dataset, "c", epochs=10, batch_size=16)
    typical = run_time(client, body)
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    rounds = 40
    for i, delay in enumerate(delays(rounds, typical, seed=7)):
        job_id = submit(client, body)
        time.sleep(delay)
        cancel = client.post(f"/v1/jobs/{job_id}/cancel")
        (job,) = wait_jobs(client, [job_id])
        label = f"round {i} (delay {delay:.3f} s of typical {typical:.3f} s): {show(cancel)}"
        mine = [v for v in versions_of(client, "c") if v["job_id"] == job_id]
        if cancel.status_code == 202:
            outcomes[f"cancelled while {cancel.json()['status']}"] += 1
            assert job["status"] == "cancelled", f"{label}; job ended {job}"
            assert job["result"] is None, f"{label}; job ended {job}"
            assert not mine, f"{label}; versions of the cancelled job {mine}"
        elif is_problem(cancel, 409, "job_finished"):
            outcomes["finished"] += 1
            assert job["status"] == "succeeded", f"{label}; job ended {job}"
            assert job["result"] is not None, f"{label}; job ended {job}"
            assert [v["version"] for v in mine] == [job["result"]["version"]], f"{label}; {mine}"
        else:
            pytest.fail(f"{label}; job ended {job}\nserver log:\n{store.log()[-2500:]}")
    report(f"cancel vs completion (typical run {typical:.3f} s)", outcomes, started)
    if not (outcomes["finished"] and sum(outcomes.values()) > outcomes["finished"]):
        # The invariants above held either way; on a machine much busier than during the
        # calibration every cancel may land on the same side, which is no failure of Graft.
        warnings.warn(f"only one outcome over {rounds} rounds: {dict(outcomes)}", stacklevel=1)
    client.close()


# --- 8. job deletion vs the job finishing ---------------------------------------------------


def test_delete_job_races_completion(store: Store) -> None:
    server = store.serve(workers=1)
    client = server.client()
    client.timeout = httpx2.Timeout(30)
    dataset = builtin(client)
    body = source_body(dataset, "d", epochs=10, batch_size=16)
    typical = run_time(client, body)
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    rounds = 40
    for i, delay in enumerate(delays(rounds, typical, seed=8)):
        job_id = submit(client, body)
        time.sleep(delay)
        deleted = client.delete(f"/v1/jobs/{job_id}")
        label = f"round {i} (delay {delay:.3f} s of typical {typical:.3f} s): {show(deleted)}"
        if is_problem(deleted, 409, "job_active"):
            outcomes["active"] += 1
            (job,) = wait_jobs(client, [job_id])
            assert job["status"] == "succeeded", f"{label}; job ended {job}"
            again = client.delete(f"/v1/jobs/{job_id}")
            assert again.status_code == 204, f"{label}; once finished: {show(again)}"
        elif deleted.status_code == 204:
            outcomes["finished"] += 1
        else:
            pytest.fail(f"{label}\nserver log:\n{store.log()[-2500:]}")
        gone = client.get(f"/v1/jobs/{job_id}")
        assert is_problem(gone, 404, "job_not_found"), f"{label}; then {show(gone)}"
        # A finished job's version stays; a job deleted while it ran would have none.
        deadline = time.monotonic() + 30
        while any(j["status"] not in FINAL for j in all_jobs(client)):
            assert time.monotonic() < deadline, f"{label}; the worker did not go idle"
            time.sleep(0.02)
        mine = [v for v in versions_of(client, "d") if v["job_id"] == job_id]
        assert len(mine) == 1, f"{label}; versions of the deleted job {mine}"
    report(f"delete job vs completion (typical run {typical:.3f} s)", outcomes, started)
    if not (outcomes["active"] and outcomes["finished"]):
        warnings.warn(f"only one outcome over {rounds} rounds: {dict(outcomes)}", stacklevel=1)
    client.close()
