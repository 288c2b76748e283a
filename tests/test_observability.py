"""/metrics: the series exist, carry bounded labels, and move with the traffic."""

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.datastructures import State

from app.config import Settings
from app.main import create_app
from app.observability import Metrics
from app.observability.collectors import ModelCacheCollector
from tests.helpers import builtin

SETOSA = [5.1, 3.5, 1.4, 0.2]
PREDICT = "/v1/models/{name}/predict"


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def predict(client: TestClient, name: str = "iris-source", rows: int = 1) -> None:
    response = client.post(f"/v1/models/{name}/predict", json={"instances": [SETOSA] * rows})
    assert response.status_code == 200, response.text


class TestRequests:
    def test_counted_by_route_template_and_status(self, trained_client: TestClient) -> None:
        before = scrape(trained_client)
        predict(trained_client)
        predict(trained_client)
        trained_client.post("/v1/models/nope/predict", json={"instances": [SETOSA]})
        trained_client.get("/v1/no/such/path/123")
        after = scrape(trained_client)
        ok = {"method": "POST", "route": PREDICT, "status": "200"}
        assert (
            value(after, "graft_http_requests_total", **ok)
            - value(before, "graft_http_requests_total", **ok)
            == 2
        )
        missing = {"method": "POST", "route": PREDICT, "status": "404"}
        assert value(after, "graft_http_requests_total", **missing) == 1
        unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
        assert value(after, "graft_http_requests_total", **unmatched) == 1
        # No raw path ever becomes a label value.
        routes = {dict(labels).get("route") for _, labels in after}
        assert not any(route and ("iris-source" in route or "123" in route) for route in routes)

    def test_latency_histogram(self, trained_client: TestClient) -> None:
        predict(trained_client)
        samples = scrape(trained_client)
        labels = {"method": "POST", "route": PREDICT}
        count = value(samples, "graft_http_request_duration_seconds_count", **labels)
        assert count == 1
        assert value(samples, "graft_http_request_duration_seconds_sum", **labels) > 0
        assert (
            value(samples, "graft_http_request_duration_seconds_bucket", le="+Inf", **labels) == 1
        )
        assert (
            value(samples, "graft_http_request_duration_seconds_bucket", le="10.0", **labels) == 1
        )

    def test_scrapes_are_counted_too(self, client: TestClient) -> None:
        scrape(client)
        samples = scrape(client)
        labels = {"method": "GET", "route": "/metrics", "status": "200"}
        assert value(samples, "graft_http_requests_total", **labels) == 1

    def test_each_app_has_its_own_registry(
        self, trained_client: TestClient, client: TestClient
    ) -> None:
        predict(trained_client)
        labels = {"model": "iris-source", "version": "1"}
        assert value(scrape(trained_client), "graft_predictions_total", **labels) == 1
        assert value(scrape(client), "graft_predictions_total", **labels) == 0


class TestPredictions:
    def test_per_version_counts_rows_and_latency(self, trained_client: TestClient) -> None:
        predict(trained_client, rows=3)
        predict(trained_client, rows=5)
        predict(trained_client, "iris-feature")
        samples = scrape(trained_client)
        source = {"model": "iris-source", "version": "1"}
        assert value(samples, "graft_predictions_total", **source) == 2
        assert value(samples, "graft_prediction_rows_total", **source) == 8
        assert value(samples, "graft_prediction_duration_seconds_count", **source) == 2
        feature = {"model": "iris-feature", "version": "1"}
        assert value(samples, "graft_predictions_total", **feature) == 1

    def test_batch_sizes(self, trained_client: TestClient) -> None:
        predict(trained_client, rows=3)
        predict(trained_client, rows=100)
        samples = scrape(trained_client)
        labels = {"model": "iris-source", "version": "1"}
        assert value(samples, "graft_batch_rows_count", **labels) == 2
        assert value(samples, "graft_batch_rows_sum", **labels) == 103
        assert value(samples, "graft_batch_rows_bucket", le="4.0", **labels) == 1
        assert value(samples, "graft_batch_rows_bucket", le="128.0", **labels) == 2
        # Unbatched: every forward pass serves exactly one request.
        assert value(samples, "graft_batch_requests_bucket", le="1.0", **labels) == 2
        assert value(samples, "graft_batch_requests_sum", **labels) == 2

    def test_v2_infer_is_recorded(self, trained_client: TestClient) -> None:
        body = {
            "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": SETOSA * 2}]
        }
        assert trained_client.post("/v2/models/iris-source/infer", json=body).status_code == 200
        samples = scrape(trained_client)
        labels = {"model": "iris-source", "version": "1"}
        assert value(samples, "graft_prediction_rows_total", **labels) == 2
        route = {"method": "POST", "route": "/v2/models/{name}/infer", "status": "200"}
        assert value(samples, "graft_http_requests_total", **route) == 1

    def test_record_batch_for_the_batcher(self, trained_client: TestClient) -> None:
        metrics: Metrics = trained_client.app.state.metrics  # type: ignore[attr-defined]
        metrics.record_batch("iris-source", 1, rows=40, requests=7)
        samples = scrape(trained_client)
        labels = {"model": "iris-source", "version": "1"}
        assert value(samples, "graft_batch_requests_bucket", le="4.0", **labels) == 0
        assert value(samples, "graft_batch_requests_bucket", le="8.0", **labels) == 1
        assert value(samples, "graft_batch_rows_sum", **labels) == 40


class TestModelCache:
    def test_hits_misses_loads(self, trained_client: TestClient) -> None:
        predict(trained_client)
        first = scrape(trained_client)
        assert value(first, "graft_model_cache_misses_total") == 1
        assert value(first, "graft_model_cache_loads_total") == 1
        assert value(first, "graft_model_cache_hits_total") == 0
        assert value(first, "graft_model_cache_entries") == 1
        predict(trained_client)
        predict(trained_client)
        second = scrape(trained_client)
        assert value(second, "graft_model_cache_hits_total") == 2
        assert value(second, "graft_model_cache_loads_total") == 1

    def test_evictions(self, tmp_path: Path, trained_template: Path) -> None:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        (data_dir / "graft.db").write_bytes(trained_template.read_bytes())
        settings = Settings(data_dir=data_dir, workers=0, model_cache_size=1)
        with TestClient(create_app(settings)) as client:
            predict(client, "iris-source")
            predict(client, "iris-feature")
            predict(client, "iris-source")
            samples = scrape(client)
        assert value(samples, "graft_model_cache_loads_total") == 3
        assert value(samples, "graft_model_cache_evictions_total") == 2
        assert value(samples, "graft_model_cache_entries") == 1

    def test_reads_stats_when_the_cache_offers_them(self) -> None:
        class CacheWithStats:
            def stats(self) -> dict[str, int]:
                return {
                    "hits": 5,
                    "misses": 2,
                    "loads": 2,
                    "evictions": 1,
                    "entries": 1,
                    "bytes": 4096,
                }

        state = State()
        state.model_cache = CacheWithStats()
        collected = {
            sample.name: sample.value
            for family in ModelCacheCollector(state).collect()
            for sample in family.samples
        }
        assert collected == {
            "graft_model_cache_hits_total": 5,
            "graft_model_cache_misses_total": 2,
            "graft_model_cache_loads_total": 2,
            "graft_model_cache_evictions_total": 1,
            "graft_model_cache_entries": 1,
            "graft_model_cache_bytes": 4096,
        }


class TestJobs:
    def test_jobs_by_status(self, client: TestClient) -> None:
        empty = scrape(client)
        queued = {"status": "queued", "kind": "source_training"}
        assert (("graft_jobs", frozenset(queued.items()))) in empty
        assert value(empty, "graft_jobs", **queued) == 0
        dataset = builtin(client, "iris")
        body = {"dataset_id": dataset["id"], "target_column": "target", "model_name": "m"}
        first = client.post("/v1/jobs/source-training", json=body).json()
        client.post("/v1/jobs/source-training", json=body)
        assert value(scrape(client), "graft_jobs", **queued) == 2
        client.post(f"/v1/jobs/{first['id']}/cancel")
        samples = scrape(client)
        assert value(samples, "graft_jobs", **queued) == 1
        assert value(samples, "graft_jobs", status="cancelled", kind="source_training") == 1
        assert value(samples, "graft_jobs", status="queued", kind="fine_tuning") == 0


def test_prediction_series_expose_what_prometheus_client_would() -> None:
    """The plain-list series of one process write the same exposition as prometheus_client's
    own counters and histograms fed the same observations."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from app.observability import series

    ours = series.PredictionSeries()
    reference = CollectorRegistry()
    labels = ["model", "version"]
    count = Counter("graft_predictions", "x", labels, registry=reference)
    rows = Counter("graft_prediction_rows", "x", labels, registry=reference)
    duration = Histogram(
        "graft_prediction_duration_seconds",
        "x",
        labels,
        buckets=series.LATENCY_BUCKETS,
        registry=reference,
    )
    batch_rows = Histogram(
        "graft_batch_rows", "x", labels, buckets=series.ROW_BUCKETS, registry=reference
    )
    batch_requests = Histogram(
        "graft_batch_requests",
        "x",
        labels,
        buckets=series.REQUEST_BUCKETS,
        registry=reference,
    )
    for model, version, n, seconds, requests in [
        ("iris", 1, 1, 0.0004, 1),
        ("iris", 1, 64, 0.003, 3),
        ("iris", 2, 10_000, 0.25, 1),
        ("iris", 1, 1, 0.0005, 300),
        ("digits", 7, 70_000, 12.0, 2),
    ]:
        ours.observe_prediction(model, version, n, seconds)
        ours.record_batch(model, version, n, requests)
        count.labels(model, str(version)).inc()
        rows.labels(model, str(version)).inc(n)
        duration.labels(model, str(version)).observe(seconds)
        batch_rows.labels(model, str(version)).observe(n)
        batch_requests.labels(model, str(version)).observe(requests)

    def samples(registry: CollectorRegistry) -> set[tuple[str, frozenset[Any], float]]:
        text = generate_latest(registry).decode()
        return {
            (sample.name, frozenset(sample.labels.items()), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    mine = CollectorRegistry()
    mine.register(ours)
    assert samples(mine) == samples(reference)
