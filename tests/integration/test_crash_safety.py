"""Crash safety: SIGKILL the server mid-load; every write it acknowledged is on disk, intact.

Client threads run a mixed write load against a server with a worker (CSV uploads of random
tables whose sha256 the client computes, builtin creates, alias moves, job submissions, deletes
of their own uploads) and write down every request that got its 2xx. The server is killed
three times: once after a couple of seconds, from outside; twice by a client thread the instant
it gets a 2xx (the moment a write acknowledged before its commit would be lost). Each time, with
the server down, the SQLite file is checked directly (integrity, every acknowledged dataset's
bytes and hashes, every acknowledged job, every acknowledged alias move), the data folder holds
nothing unexpected, and after a restart the API answers for the same objects.
"""

import hashlib
import io
import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.integration.conftest import TINY_MLP, TINY_TRAINING, LiveServer, train_tiny_versions

pytestmark = pytest.mark.slow

THREADS = 4
ALIAS_MODEL = "crash"
ALIAS_VERSIONS = 3
# What a data folder may hold after a crash; anything else was left behind by someone.
EXPECTED_FILES = {
    "graft.db",
    "graft.db-wal",
    "graft.db-shm",
    "server.log",
    "graft.lock",
    "admin-key",
    "graft.db.keys-changed",  # change counters (app/db/changes.py)
    "graft.db.registry-changed",
    "graft.db.writer",  # where SQLite writers take turns (app/db/session.py)
}


@dataclass
class Ledger:
    """What the clients were told (2xx) and what was in flight when the server died."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    datasets: dict[str, str] = field(default_factory=dict)  # id -> sha256 the client expects
    deleted: set[str] = field(default_factory=set)  # deletes that got 204
    deleting: set[str] = field(default_factory=set)  # deletes sent but never answered
    jobs: set[str] = field(default_factory=set)  # jobs that got 202
    aliases: dict[str, list[int]] = field(default_factory=dict)  # alias -> acknowledged moves
    alias_in_flight: dict[str, int] = field(default_factory=dict)  # alias -> unanswered move
    acknowledged: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)  # answers other than the expected 2xx

    def live_datasets(self) -> dict[str, str]:
        return {
            d: sha
            for d, sha in self.datasets.items()
            if d not in self.deleted and d not in self.deleting
        }


def random_csv(rng: random.Random) -> bytes:
    columns = rng.randint(2, 6)
    header = [f"c{i}" for i in range(columns)]
    lines = [",".join([*header, "label"])]
    for _ in range(rng.randint(2, 40)):
        values = [f"{rng.gauss(0, 1000):.9g}" for _ in range(columns)]
        lines.append(",".join([*values, rng.choice(["red", "green", "blue"])]))
    return ("\n".join(lines) + "\n").encode()


class Load(threading.Thread):
    """One client thread: random writes until told to stop or the server goes away."""

    def __init__(
        self,
        index: int,
        server: LiveServer,
        ledger: Ledger,
        stop: threading.Event,
        base_dataset: str,
        kill_after_ack: threading.Event,
        seed: int,
    ) -> None:
        super().__init__(name=f"load-{index}", daemon=True)
        self.index = index
        self.server = server
        self.ledger = ledger
        self.stop = stop
        self.base_dataset = base_dataset
        self.kill_after_ack = kill_after_ack
        self.rng = random.Random(seed)
        self.alias = f"t{index}"
        self.uploads: list[str] = []  # this thread's own live uploads, the ones it may delete
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with self.server.client() as client:
                while not self.stop.is_set():
                    try:
                        self.one_write(client)
                    except httpx2.TransportError:
                        return  # the server is gone: whatever was in flight stays "maybe"
        except BaseException as exc:
            self.failure = exc

    def acknowledged(self, route: str) -> None:
        """Called once a 2xx is written down; the kill-after-ack round kills right here."""
        with self.ledger.lock:
            self.ledger.acknowledged[route] += 1
            kill = self.kill_after_ack.is_set()
            self.kill_after_ack.clear()
        if kill:
            self.server.kill()
            self.stop.set()

    def unexpected(self, route: str, response: httpx2.Response) -> None:
        with self.ledger.lock:
            self.ledger.unexpected.append(
                f"{route} -> {response.status_code}: {response.text[:300]}"
            )

    def one_write(self, client: httpx2.Client) -> None:
        roll = self.rng.random()
        if roll < 0.35:
            self.upload(client)
        elif roll < 0.55:
            self.builtin(client)
        elif roll < 0.75:
            self.move_alias(client)
        elif roll < 0.87 and self.uploads:
            self.delete_upload(client)
        else:
            self.submit_job(client)

    def upload(self, client: httpx2.Client) -> None:
        content = random_csv(self.rng)
        digest = hashlib.sha256(content).hexdigest()
        name = f"crash-{self.index}-{self.rng.randrange(10**9)}.csv"
        files = {"file": (name, io.BytesIO(content), "text/csv")}
        response = client.post("/v1/datasets", files=files)
        if response.status_code != 201:
            return self.unexpected("POST /v1/datasets", response)
        body = response.json()
        with self.ledger.lock:
            self.ledger.datasets[body["id"]] = digest
            if body["sha256"] != digest:
                self.ledger.unexpected.append(
                    f"POST /v1/datasets {name}: answered sha256 {body['sha256']}, sent {digest}"
                )
        self.uploads.append(body["id"])
        self.acknowledged("POST /v1/datasets")

    def builtin(self, client: httpx2.Client) -> None:
        start = self.rng.randrange(0, 140)
        request = {"name": "iris", "start": start, "stop": start + self.rng.randint(5, 10)}
        response = client.post("/v1/datasets/builtin", json=request)
        if response.status_code != 201:
            return self.unexpected("POST /v1/datasets/builtin", response)
        body = response.json()
        with self.ledger.lock:
            # The client did not make these bytes: the hash it holds is the one it was told.
            self.ledger.datasets[body["id"]] = body["sha256"]
        self.acknowledged("POST /v1/datasets/builtin")

    def move_alias(self, client: httpx2.Client) -> None:
        version = self.rng.randint(1, ALIAS_VERSIONS)
        with self.ledger.lock:
            self.ledger.alias_in_flight[self.alias] = version
        response = client.put(
            f"/v1/models/{ALIAS_MODEL}/aliases/{self.alias}", json={"version": version}
        )
        with self.ledger.lock:
            del self.ledger.alias_in_flight[self.alias]
            if response.status_code == 200:
                self.ledger.aliases.setdefault(self.alias, []).append(version)
        if response.status_code != 200:
            return self.unexpected("PUT /v1/models/{name}/aliases/{alias}", response)
        self.acknowledged("PUT /v1/models/{name}/aliases/{alias}")

    def delete_upload(self, client: httpx2.Client) -> None:
        dataset_id = self.uploads.pop(self.rng.randrange(len(self.uploads)))
        with self.ledger.lock:
            self.ledger.deleting.add(dataset_id)
        response = client.delete(f"/v1/datasets/{dataset_id}")
        with self.ledger.lock:
            self.ledger.deleting.discard(dataset_id)
            if response.status_code == 204:
                self.ledger.deleted.add(dataset_id)
        if response.status_code != 204:
            return self.unexpected(f"DELETE /v1/datasets/{dataset_id}", response)
        self.acknowledged("DELETE /v1/datasets/{id}")

    def submit_job(self, client: httpx2.Client) -> None:
        request = {
            "dataset_id": self.base_dataset,
            "target_column": "target",
            "model_name": f"crash-jobs-{self.index}",
            "architecture": TINY_MLP,
            "hyperparameters": TINY_TRAINING,
        }
        response = client.post("/v1/jobs/source-training", json=request)
        if response.status_code != 202:
            return self.unexpected("POST /v1/jobs/source-training", response)
        with self.ledger.lock:
            self.ledger.jobs.add(response.json()["id"])
        self.acknowledged("POST /v1/jobs/source-training")


def run_load_and_kill(
    server: LiveServer,
    ledger: Ledger,
    base_dataset: str,
    *,
    seconds: float,
    on_ack: bool,
    seed: int,
) -> float:
    """Load for `seconds`, then kill: from here, or (on_ack) from the next thread to get a 2xx.
    Returns how long the load ran."""
    stop = threading.Event()
    kill_after_ack = threading.Event()
    threads = [
        Load(i, server, ledger, stop, base_dataset, kill_after_ack, seed * 100 + i)
        for i in range(THREADS)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    if on_ack:
        kill_after_ack.set()
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
    server.kill()  # no-op when a thread already did it
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), f"{thread.name} did not stop after the kill"
        assert thread.failure is None, f"{thread.name} failed: {thread.failure!r}"
    return time.monotonic() - started


@dataclass
class OnDisk:
    files: list[str]
    datasets: dict[str, tuple[str, str]]  # id -> (sha256 column, sha256 of the content)
    jobs: set[str]
    aliases: dict[str, int]


def read_disk(data_dir: Path) -> OnDisk:
    """With the server down: the folder's contents, then the database file itself."""
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in data_dir.iterdir())
    connection = sqlite3.connect(f"file:{data_dir / 'graft.db'}?mode=rw", uri=True)
    try:
        integrity = connection.execute("PRAGMA integrity_check").fetchall()
        assert integrity == [("ok",)], f"PRAGMA integrity_check: {integrity}"
        digests: dict[str, Any] = {}
        stored: dict[str, str] = {}
        pieces = connection.execute(
            "SELECT d.id, d.sha256, p.content FROM datasets d"
            " JOIN dataset_parts p ON p.dataset_id = d.id ORDER BY d.id, p.seq"
        )
        for dataset_id, sha256, piece in pieces:
            digests.setdefault(dataset_id, hashlib.sha256()).update(piece)
            stored[dataset_id] = sha256
        datasets = {key: (stored[key], digest.hexdigest()) for key, digest in digests.items()}
        jobs = {row[0] for row in connection.execute("SELECT id FROM jobs")}
        aliases = dict(
            connection.execute(
                "SELECT alias, version FROM model_aliases WHERE model_name = ?", (ALIAS_MODEL,)
            ).fetchall()
        )
    finally:
        connection.close()
    return OnDisk(files=files, datasets=datasets, jobs=jobs, aliases=aliases)


def check_disk(disk: OnDisk, ledger: Ledger) -> list[str]:
    """Every acknowledged write, as the file holds it; returns what is wrong."""
    problems = []
    unexpected_files = sorted(set(disk.files) - EXPECTED_FILES)
    if unexpected_files:
        problems.append(f"unexpected files in the data folder: {unexpected_files}")
    for dataset_id, client_sha in ledger.datasets.items():
        if dataset_id in ledger.deleted:
            if dataset_id in disk.datasets:
                problems.append(f"dataset {dataset_id}: deleted (204) but still in the file")
            continue
        if dataset_id not in disk.datasets:
            if dataset_id not in ledger.deleting:
                problems.append(f"dataset {dataset_id}: created (201) but not in the file")
            continue
        column, content = disk.datasets[dataset_id]
        if not (column == content == client_sha):
            problems.append(
                f"dataset {dataset_id}: sha256 column {column}, sha256(content) {content}, "
                f"client's {client_sha}"
            )
    missing_jobs = sorted(ledger.jobs - disk.jobs)
    if missing_jobs:
        problems.append(
            f"{len(missing_jobs)} accepted (202) jobs not in the file: {missing_jobs[:5]}"
        )
    for alias in sorted(set(ledger.aliases) | set(ledger.alias_in_flight)):
        acknowledged = ledger.aliases.get(alias, [])
        allowed: set[int | None] = {acknowledged[-1] if acknowledged else None}
        if alias in ledger.alias_in_flight:
            allowed.add(ledger.alias_in_flight[alias])
        found = disk.aliases.get(alias)
        if found not in allowed:
            problems.append(
                f"alias {alias}: the file says {found}, acknowledged moves {acknowledged}, "
                f"in flight {ledger.alias_in_flight.get(alias)}"
            )
    return problems


def settle(disk: OnDisk, ledger: Ledger) -> None:
    """What was in flight at the kill is now decided by the file; later rounds build on it."""
    for dataset_id in list(ledger.deleting):
        if dataset_id in disk.datasets:
            ledger.deleting.discard(dataset_id)  # the delete never happened: it must stay
        else:
            ledger.deleting.discard(dataset_id)
            ledger.deleted.add(dataset_id)
    for alias, version in list(ledger.alias_in_flight.items()):
        if disk.aliases.get(alias) == version:
            ledger.aliases.setdefault(alias, []).append(version)
        del ledger.alias_in_flight[alias]


def check_api(server: LiveServer, ledger: Ledger, disk: OnDisk) -> list[str]:
    """After the restart: health, readiness, and the same objects through the API."""
    problems = []
    with server.client() as client:
        health = client.get("/healthz")
        if health.status_code != 200:
            problems.append(f"GET /healthz -> {health.status_code}: {health.text[:200]}")
        deadline = time.monotonic() + 60
        ready = client.get("/readyz")
        while ready.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            ready = client.get("/readyz")
        if ready.status_code != 200:
            problems.append(f"GET /readyz -> {ready.status_code}: {ready.text[:300]}")
        for dataset_id, sha in ledger.live_datasets().items():
            response = client.get(f"/v1/datasets/{dataset_id}")
            if response.status_code != 200:
                problems.append(f"GET /v1/datasets/{dataset_id} -> {response.status_code}")
            elif response.json()["sha256"] != sha:
                problems.append(
                    f"GET /v1/datasets/{dataset_id}: sha256 {response.json()['sha256']}"
                )
        for dataset_id in sorted(ledger.deleted):
            response = client.get(f"/v1/datasets/{dataset_id}")
            if response.status_code != 404:
                problems.append(
                    f"GET /v1/datasets/{dataset_id} (deleted) -> {response.status_code}"
                )
        for job_id in sorted(ledger.jobs):
            response = client.get(f"/v1/jobs/{job_id}")
            if response.status_code != 200:
                problems.append(f"GET /v1/jobs/{job_id} -> {response.status_code}")
        model = client.get(f"/v1/models/{ALIAS_MODEL}")
        if model.status_code != 200:
            problems.append(f"GET /v1/models/{ALIAS_MODEL} -> {model.status_code}")
        elif model.json()["aliases"] != disk.aliases:
            problems.append(
                f"GET /v1/models/{ALIAS_MODEL}: aliases {model.json()['aliases']}, "
                f"the file held {disk.aliases}"
            )
    return problems


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "live"
    data_dir.mkdir()
    server = LiveServer(data_dir, workers=1, worker_poll_seconds=0.1)
    server.start()
    try:
        with server.client() as client:
            base_dataset = train_tiny_versions(client, {ALIAS_MODEL: ALIAS_VERSIONS})
        ledger = Ledger()
        # (when, load seconds before the kill, kill from the thread that got the next 2xx)
        rounds = [
            ("on a timer, at 2 s", 2.0, False),
            ("right after a 2xx, past 1.2 s", 1.2, True),
            ("right after a 2xx, past 0.6 s", 0.6, True),
        ]
        report = []
        for number, (moment, seconds, on_ack) in enumerate(rounds, start=1):
            ran = run_load_and_kill(
                server, ledger, base_dataset, seconds=seconds, on_ack=on_ack, seed=number
            )
            disk = read_disk(data_dir)
            problems = [f"on disk: {p}" for p in check_disk(disk, ledger)]
            summary = (
                f"round {number} (kill {moment}): load ran {ran:.1f} s, acknowledged so far "
                f"{dict(ledger.acknowledged)}, in flight at the kill: deletes "
                f"{sorted(ledger.deleting)}, alias moves {ledger.alias_in_flight}; "
                f"files {disk.files}"
            )
            report.append(summary)
            settle(disk, ledger)
            server.start()
            problems += [f"after restart: {p}" for p in check_api(server, ledger, disk)]
            assert not problems, summary + "\n" + "\n".join(problems[:20])
            assert not ledger.unexpected, (
                f"{summary}\n{len(ledger.unexpected)} unexpected answers:\n"
                + "\n".join(ledger.unexpected[:10])
            )
        assert sum(ledger.acknowledged.values()) > 0, "the load never got a write through"
        print("\n".join(report))
    finally:
        server.stop()
