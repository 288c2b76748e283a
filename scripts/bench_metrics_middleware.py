"""What the request-metrics middleware costs per request, measured in-process over ASGI.

First the middleware alone, around an ASGI app that does nothing, so that what is measured
is its own cost. Then two FastAPI apps with the same nested routers (`/v1` +
`/models/{name}/predict`, as Graft has) answering a tiny response, one wrapped in the
middleware. Calls go straight to the ASGI callable (no sockets), alternating between the two
in rounds; the best and the median round of each are printed, with the differences.

    .venv/bin/python scripts/bench_metrics_middleware.py                # full: 20 x 20,000
    .venv/bin/python scripts/bench_metrics_middleware.py --rounds 3 --requests 2000  # smoke
"""

import argparse
import asyncio
import statistics
import time
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.datastructures import State
from starlette.responses import Response
from starlette.types import ASGIApp, Message

from app.observability import Metrics, RequestMetricsMiddleware


def build_app(with_metrics: bool) -> ASGIApp:
    app = FastAPI()
    models = APIRouter(prefix="/models")

    @models.post("/{name}/predict")
    async def predict(name: str) -> Response:
        return Response(b'{"predictions":[1]}', media_type="application/json")

    v1 = APIRouter(prefix="/v1")
    v1.include_router(models)
    app.include_router(v1)
    if with_metrics:
        app.add_middleware(RequestMetricsMiddleware, metrics=Metrics(State()))
    return app


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/models/iris/predict",
        "raw_path": b"/v1/models/iris/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"{}", "more_body": False}


async def send(message: Message) -> None:
    if message["type"] == "http.response.start":
        assert message["status"] == 200, message


async def per_request_seconds(app: ASGIApp, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        await app(scope(), receive, send)
    return (time.perf_counter() - started) / requests


class _Route:
    path = "/models/{name}/predict"


async def bare_endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least an ASGI app can do: what is left around it is the middleware's own cost."""
    scope["route"] = _ROUTE
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


_ROUTE = _Route()


async def compare(label: str, bare: ASGIApp, measured: ASGIApp, rounds: int, requests: int) -> None:
    for app in (bare, measured):  # warm up: route tables, the OpenAPI lookup, label caches
        await per_request_seconds(app, 200)
    bare_times, measured_times = [], []
    for _ in range(rounds):
        bare_times.append(await per_request_seconds(bare, requests))
        measured_times.append(await per_request_seconds(measured, requests))
    print(f"{label} ({rounds} rounds x {requests} requests; best round, median round):")
    for name, times in (("without middleware", bare_times), ("with middleware", measured_times)):
        print(f"  {name:20} {min(times) * 1e6:8.2f} us  {statistics.median(times) * 1e6:8.2f} us")
    best = (min(measured_times) - min(bare_times)) * 1e6
    median = (statistics.median(measured_times) - statistics.median(bare_times)) * 1e6
    print(f"  {'overhead':20} {best:8.2f} us  {median:8.2f} us")


async def main(rounds: int, requests: int) -> None:
    metrics = Metrics(State())
    metrics_only = RequestMetricsMiddleware(bare_endpoint, metrics=metrics)
    metrics_only._documented_paths = frozenset({"/v1/models/{name}/predict"})
    await compare("middleware alone", bare_endpoint, metrics_only, rounds, requests)
    await compare("FastAPI app", build_app(False), build_app(True), rounds, requests)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=20_000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.requests))
