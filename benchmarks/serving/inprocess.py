"""CPU per request of each app's ASGI callable, called directly: no HTTP server, no sockets.

The three apps (Graft, the idiomatic FastAPI app, the Starlette ceiling) run in one process,
interleaved in short bursts, and the best burst of each counts. On a machine shared with
other work this is the steadiest comparison of what each app itself costs per request; the
wrk figures add the HTTP server, the network stack and the noise.

`python -m benchmarks.serving.inprocess --graft-data-dir D --model-dir M --body-dir B`
prints one JSON line: microseconds of CPU per request by app and body rows.
"""

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from starlette.types import ASGIApp, Message

from app.config import Settings
from app.main import create_app
from benchmarks.serving.baselines import ceiling_app, idiomatic_app

PATH = "/v1/models/bench-small/predict"
# Graft is measured as shipped, keys checked: an admin key, so that no rate limit applies.
BENCH_KEY = "graft-benchmark-in-process-key-0123456789"


def _scope(body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"authorization", b"Bearer " + BENCH_KEY.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def _one(app: ASGIApp, body: bytes) -> None:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(_scope(body), receive, send)
    if statuses != [200]:
        raise RuntimeError(f"unexpected response {statuses}")


def _graft(data_dir: Path, *, access_log: bool) -> Any:
    return create_app(
        Settings(
            data_dir=data_dir,
            workers=0,
            log_level="warning",
            auth="enabled",
            admin_key=SecretStr(BENCH_KEY),
            allowed_hosts=["bench"],
            access_log=access_log,
        )
    )


async def _measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    # As shipped, with its access log on (its lines go to a sink, not to the stdout that
    # carries this script's result), and the same with the log off.
    graft = _graft(args.graft_data_dir, access_log=True)
    unlogged = _graft(args.graft_data_dir, access_log=False)
    sink = open(os.devnull, "w")  # noqa: SIM115 (open for the whole measurement)
    graft.state.access_log.stream = sink
    apps: dict[str, ASGIApp] = {
        "graft": graft,
        "graft-nolog": unlogged,
        "idiomatic": idiomatic_app(args.model_dir),
        "ceiling": ceiling_app(args.model_dir),
    }
    bodies = {rows: (args.body_dir / f"small-{rows}.json").read_bytes() for rows in (1, 64)}
    best: dict[str, dict[str, float]] = {name: {} for name in apps}
    async with graft.router.lifespan_context(graft), unlogged.router.lifespan_context(unlogged):
        for round_index in range(args.rounds):
            for name, app in apps.items():
                for rows, body in bodies.items():
                    if round_index == 0:
                        for _ in range(50):
                            await _one(app, body)
                    # process_time counts every thread: the access log's writer too.
                    start = time.process_time()
                    for _ in range(args.burst):
                        await _one(app, body)
                    per_request = (time.process_time() - start) / args.burst * 1e6
                    key = str(rows)
                    best[name][key] = min(best[name].get(key, per_request), per_request)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graft-data-dir", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--body-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    import uvloop

    print(json.dumps(uvloop.run(_measure(args))))


if __name__ == "__main__":
    main()
