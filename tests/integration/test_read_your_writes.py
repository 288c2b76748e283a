"""Read-your-writes over real HTTP: a write that got a 2xx is visible to the very next request,
on the same keep-alive connection and on another one.

1,000 write -> read pairs across every write route (dataset creates, uploads and deletes, alias
moves and deletes, job creates, cancels and deletes, version and model deletes). The write
always goes out on one keep-alive connection; its read goes out at once, alternately on that
same connection and on a second client. A read that misses the write (an object that is not
there yet: 404; an old value, or a deleted object still answering 200: stale) is counted, and
the test fails listing the first few of each.
"""

import hashlib
import io
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from tests.integration.conftest import (
    IRIS_INSTANCE,
    TINY_MLP,
    TINY_TRAINING,
    ServerFactory,
    train_tiny_versions,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PAIRS = 1000
MODEL = "rw"  # versions 1..3; its aliases move between them
LATEST = 3
VERSION_DELETES = "rw-versions"  # versions 1..3, deleted one by one, then the model itself
MODEL_DELETES = ("rw-gone-a", "rw-gone-b", "rw-gone-c")  # one version each, deleted whole
ALIASES = ("production", "staging")
PREDICT_BODY = {"instances": [IRIS_INSTANCE]}

Check = Callable[[httpx2.Response], str | None]


@dataclass
class Tally:
    """What went wrong, pair by pair: each entry is (the write's route, what happened)."""

    pairs: int = 0
    routes: Counter[str] = field(default_factory=Counter)
    stale: list[tuple[str, str]] = field(default_factory=list)
    not_found: list[tuple[str, str]] = field(default_factory=list)
    write_errors: list[tuple[str, str]] = field(default_factory=list)
    read_errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return (
            len(self.stale) + len(self.not_found) + len(self.write_errors) + len(self.read_errors)
        )

    def report(self, first: int = 5) -> str:
        lines = [f"{self.pairs} write->read pairs, by route: {dict(self.routes)}"]
        for label, entries in (
            ("stale reads", self.stale),
            ("404 reads", self.not_found),
            ("writes that did not get their 2xx", self.write_errors),
            ("reads with an unexpected status", self.read_errors),
        ):
            by_route = dict(Counter(route for route, _ in entries))
            lines.append(
                f"  {len(entries)} {label}" + (f", by route: {by_route}" if entries else "")
            )
            # The first few, plus the first of every other route, so that no route hides.
            shown = entries[:first]
            routes_shown = {route for route, _ in shown}
            for route, text in entries[first:]:
                if route not in routes_shown:
                    routes_shown.add(route)
                    shown.append((route, text))
            lines.extend(f"    {text}" for _, text in shown)
        return "\n".join(lines)


class Pairs:
    """Writes on `writer`; each write's reads at once, on `writer` or `other` in turn."""

    def __init__(self, writer: httpx2.Client, other: httpx2.Client) -> None:
        self.writer = writer
        self.other = other
        self.tally = Tally()
        self.route = ""
        self.write_label = ""
        self.reader = writer

    @property
    def done(self) -> bool:
        return self.tally.pairs >= PAIRS

    def write(
        self, route: str, method: str, url: str, expected: int, **request: Any
    ) -> httpx2.Response | None:
        """Send one write; None (and a recorded error) unless it answered `expected`."""
        self.tally.pairs += 1
        self.tally.routes[route] += 1
        self.route = route
        # Even pairs read on the connection that wrote, odd pairs on the other client.
        self.reader = self.writer if self.tally.pairs % 2 == 0 else self.other
        where = "same connection" if self.reader is self.writer else "other connection"
        self.write_label = f"pair {self.tally.pairs} ({where}): {method} {url}"
        response = self.writer.request(method, url, **request)
        if response.status_code != expected:
            self.tally.write_errors.append(
                (
                    route,
                    f"{self.write_label} -> {response.status_code} (expected {expected}): "
                    f"{response.text[:300]}",
                )
            )
            return None
        return response

    def read(self, method: str, url: str, check: Check, **request: Any) -> None:
        """One read right after the write; `check` says what is wrong with it, if anything."""
        response = self.reader.request(method, url, **request)
        label = f"{self.write_label}; then {method} {url} -> {response.status_code}"
        problem = check(response)
        if problem is None:
            return
        if problem == "404":
            self.tally.not_found.append((self.route, f"{label}: {response.text[:200]}"))
        elif problem.startswith("stale"):
            self.tally.stale.append((self.route, f"{label}: {problem}"))
        else:
            self.tally.read_errors.append(
                (self.route, f"{label}: {problem}: {response.text[:200]}")
            )

    def expect_found(self, url: str, check: Check | None = None, **request: Any) -> None:
        self.read(request.pop("method", "GET"), url, found(check), **request)

    def expect_gone(self, url: str) -> None:
        self.read("GET", url, gone)


def found(check: Check | None) -> Check:
    def checker(response: httpx2.Response) -> str | None:
        if response.status_code == 404:
            return "404"
        if response.status_code != 200:
            return "expected 200"
        return None if check is None else check(response)

    return checker


def gone(response: httpx2.Response) -> str | None:
    if response.status_code == 404:
        return None
    if response.status_code == 200:
        return "stale: the deleted object still answers 200"
    return "expected 404"


def field_is(name: str, expected: object) -> Check:
    def check(response: httpx2.Response) -> str | None:
        got = response.json().get(name)
        return None if got == expected else f"stale: {name} is {got!r}, expected {expected!r}"

    return check


def answered_by(version: int) -> Check:
    def check(response: httpx2.Response) -> str | None:
        got = response.json()["model"]
        expected = {"name": MODEL, "version": version}
        return None if got == expected else f"stale: answered by {got}, expected {expected}"

    return check


def job_listed(job_id: str) -> Check:
    def check(response: httpx2.Response) -> str | None:
        ids = [job["id"] for job in response.json()["data"]]
        return None if job_id in ids else f"stale: {job_id} not among the newest jobs {ids}"

    return check


def random_csv(rng: random.Random) -> bytes:
    rows = rng.randint(3, 12)
    lines = ["a,b,c,label"]
    for _ in range(rows):
        values = [f"{rng.uniform(-100, 100):.6f}" for _ in range(3)]
        lines.append(",".join([*values, rng.choice(["x", "y", "z"])]))
    return ("\n".join(lines) + "\n").encode()


class Workload:
    """One cycle of writes, each followed by its reads; repeated until PAIRS are done."""

    def __init__(self, pairs: Pairs) -> None:
        self.pairs = pairs
        self.rng = random.Random(20261204)
        self.aliases: dict[str, int] = {}
        self.version_deletes = [1, 2, 3]
        self.model_deletes = [VERSION_DELETES, *MODEL_DELETES]
        self.cycle = 0

    # The routes, each a write followed by the reads that must see it.

    def create_builtin(self) -> str | None:
        start = self.rng.randrange(0, 120)
        body = {"name": "iris", "start": start, "stop": start + self.rng.randint(20, 30)}
        response = self.pairs.write(
            "POST /v1/datasets/builtin", "POST", "/v1/datasets/builtin", 201, json=body
        )
        if response is None:
            return None
        created = response.json()
        self.pairs.expect_found(
            f"/v1/datasets/{created['id']}", field_is("sha256", created["sha256"])
        )
        dataset_id: str = created["id"]
        return dataset_id

    def upload(self) -> str | None:
        content = random_csv(self.rng)
        digest = hashlib.sha256(content).hexdigest()
        files = {"file": (f"table-{self.cycle}.csv", io.BytesIO(content), "text/csv")}
        response = self.pairs.write("POST /v1/datasets", "POST", "/v1/datasets", 201, files=files)
        if response is None:
            return None
        created = response.json()
        if created["sha256"] != digest:
            self.pairs.tally.write_errors.append(
                (
                    self.pairs.route,
                    f"{self.pairs.write_label}: stored sha256 {created['sha256']}, sent {digest}",
                )
            )
        self.pairs.expect_found(f"/v1/datasets/{created['id']}", field_is("sha256", digest))
        dataset_id: str = created["id"]
        return dataset_id

    def delete_dataset(self, dataset_id: str | None) -> None:
        if dataset_id is None or self.pairs.done:
            return
        url = f"/v1/datasets/{dataset_id}"
        if self.pairs.write("DELETE /v1/datasets/{id}", "DELETE", url, 204) is not None:
            self.pairs.expect_gone(url)

    def submit(self, kind: str, dataset_id: str | None) -> str | None:
        if dataset_id is None or self.pairs.done:
            return None
        body: dict[str, Any] = {
            "dataset_id": dataset_id,
            "target_column": "target",
            "model_name": f"rw-job-{self.cycle}",
            "hyperparameters": TINY_TRAINING,
        }
        if kind == "fine-tuning":
            body["base_model"] = {"name": MODEL, "version": self.rng.randint(1, LATEST)}
            body["strategy"] = self.rng.choice(["parameter", "feature", "structure"])
        else:
            body["architecture"] = TINY_MLP
        url = f"/v1/jobs/{kind}"
        response = self.pairs.write(f"POST {url}", "POST", url, 202, json=body)
        if response is None:
            return None
        job_id: str = response.json()["id"]
        self.pairs.expect_found(f"/v1/jobs/{job_id}", field_is("status", "queued"))
        self.pairs.expect_found("/v1/jobs?limit=10", job_listed(job_id))
        return job_id

    def cancel(self, job_id: str | None) -> None:
        if job_id is None or self.pairs.done:
            return
        url = f"/v1/jobs/{job_id}/cancel"
        if self.pairs.write("POST /v1/jobs/{id}/cancel", "POST", url, 202) is not None:
            self.pairs.expect_found(f"/v1/jobs/{job_id}", field_is("status", "cancelled"))

    def delete_job(self, job_id: str | None) -> None:
        if job_id is None or self.pairs.done:
            return
        url = f"/v1/jobs/{job_id}"
        if self.pairs.write("DELETE /v1/jobs/{id}", "DELETE", url, 204) is not None:
            self.pairs.expect_gone(url)

    def check_aliases(self) -> None:
        """The model's aliases, predict by each alias, and the default (production or latest)."""
        expected = dict(self.aliases)
        self.pairs.expect_found(f"/v1/models/{MODEL}", field_is("aliases", expected))
        predict = f"/v1/models/{MODEL}/predict"
        for alias, version in expected.items():
            self.pairs.expect_found(
                f"{predict}?alias={alias}", answered_by(version), method="POST", json=PREDICT_BODY
            )
        default = expected.get("production", LATEST)
        self.pairs.expect_found(predict, answered_by(default), method="POST", json=PREDICT_BODY)

    def move_alias(self) -> None:
        if self.pairs.done:
            return
        alias = ALIASES[self.cycle % len(ALIASES)]
        current = self.aliases.get(alias)
        version = self.rng.choice([v for v in range(1, LATEST + 1) if v != current])
        url = f"/v1/models/{MODEL}/aliases/{alias}"
        route = "PUT /v1/models/{name}/aliases/{alias}"
        if self.pairs.write(route, "PUT", url, 200, json={"version": version}) is None:
            return
        self.aliases[alias] = version
        self.check_aliases()

    def delete_alias(self) -> None:
        if self.pairs.done or not self.aliases:
            return
        alias = self.rng.choice(sorted(self.aliases))
        url = f"/v1/models/{MODEL}/aliases/{alias}"
        route = "DELETE /v1/models/{name}/aliases/{alias}"
        if self.pairs.write(route, "DELETE", url, 204) is None:
            return
        del self.aliases[alias]
        self.check_aliases()

    def delete_version(self) -> None:
        if self.pairs.done or not self.version_deletes:
            return
        version = self.version_deletes.pop(0)
        url = f"/v1/models/{VERSION_DELETES}/versions/{version}"
        route = "DELETE /v1/models/{name}/versions/{v}"
        if self.pairs.write(route, "DELETE", url, 204) is not None:
            self.pairs.expect_gone(url)

    def delete_model(self) -> None:
        # The model whose versions are deleted one by one goes last, once it has none.
        if self.pairs.done or not self.model_deletes:
            return
        if self.model_deletes[0] == VERSION_DELETES and self.version_deletes:
            self.model_deletes.append(self.model_deletes.pop(0))
        name = self.model_deletes.pop(0)
        url = f"/v1/models/{name}"
        if self.pairs.write("DELETE /v1/models/{name}", "DELETE", url, 204) is not None:
            self.pairs.expect_gone(url)

    def run_cycle(self) -> None:
        self.cycle += 1
        table = self.upload() if not self.pairs.done else None
        dataset = self.create_builtin() if not self.pairs.done else None
        source_job = self.submit("source-training", dataset)
        tuning_job = self.submit("fine-tuning", dataset)
        self.move_alias()
        self.cancel(source_job)
        self.cancel(tuning_job)
        self.delete_job(source_job)
        if self.cycle % 2 == 0:
            self.delete_job(tuning_job)
        self.delete_dataset(table)
        # The builtin goes once the jobs that use it are cancelled.
        self.delete_dataset(dataset)
        if self.cycle % 4 == 0:
            self.delete_alias()
        if self.cycle % 7 == 0:
            self.delete_version()
        if self.cycle % 9 == 0:
            self.delete_model()


def test_every_acknowledged_write_is_read_back_at_once(server_factory: ServerFactory) -> None:
    started = time.monotonic()
    # Set-up: a server with a worker trains the versions to alias, predict with and delete.
    trainer = server_factory(workers=1, worker_poll_seconds=0.1)
    with trainer.client() as client:
        train_tiny_versions(
            client,
            {MODEL: LATEST, VERSION_DELETES: 3, **{name: 1 for name in MODEL_DELETES}},
        )
    trainer.stop()
    # The pairs: a queued-only server, so created jobs stay queued until cancelled.
    server = server_factory()
    set_up = time.monotonic() - started
    one_connection = httpx2.Limits(max_connections=1, max_keepalive_connections=1)
    with server.client(limits=one_connection) as writer, server.client() as other:
        pairs = Pairs(writer, other)
        workload = Workload(pairs)
        while not pairs.done:
            workload.run_cycle()
    tally = pairs.tally
    elapsed = time.monotonic() - started
    print(f"set-up {set_up:.1f} s, {tally.pairs} pairs in {elapsed - set_up:.1f} s")
    print(tally.report())
    assert tally.pairs == PAIRS
    failures = tally.failures
    assert failures == 0, tally.report()
