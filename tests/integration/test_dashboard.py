"""The dashboard in a real headless Chromium against a real `graft serve` with a worker:
sign in with a key, start the Iris flow from the page, watch the jobs finish live, move an
alias and roll it back, predict, preview a dataset. A failing test leaves a screenshot in
the test's temporary folder (its path is in the failure message)."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.integration.conftest import ADMIN_KEY, LiveServer, ServerFactory

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("GRAFT_TEST_CHROMIUM") or shutil.which("chromium") or ""
if not CHROMIUM:
    pytest.skip(
        "no Chromium: install Debian's chromium (apt-get install -y chromium) or set "
        "GRAFT_TEST_CHROMIUM to a Chromium binary to run the dashboard tests",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api")

# Chromium in a sandbox-less container, with nothing reaching out to the network.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(tmp_path: Path) -> Iterator["sync_api.Page"]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            yield page
            assert not errors, f"script errors on the page: {errors}"
        except BaseException:
            shot = tmp_path / "dashboard-failure.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failure: {shot}")
            raise
        finally:
            browser.close()


def sign_in(page: "sync_api.Page", server: LiveServer, key: str = ADMIN_KEY) -> None:
    page.goto(server.url + "/ui")
    page.fill("#key", key)
    page.click("#login-form button")


def test_the_iris_flow_from_the_dashboard(
    server_factory: ServerFactory, page: "sync_api.Page"
) -> None:
    expect = sync_api.expect
    server = server_factory(workers=1)
    # A wrong key is refused and the page says so.
    sign_in(page, server, key="not-a-key")
    expect(page.locator("#login-error")).to_contain_text("401")
    sign_in(page, server)
    expect(page.locator("#jobs-table")).to_contain_text("No jobs yet")

    page.click("a[data-nav=start]")
    page.click("#add-iris")
    expect(page.locator("#start-message")).to_contain_text("iris[0:100]")
    with server.client() as client:
        datasets = {d["name"]: d["id"] for d in client.get("/v1/datasets").json()["data"]}
    page.select_option("#source-dataset", datasets["iris[0:100]"])
    page.fill("#source-model", "iris-source")
    page.fill("#source-epochs", "40")
    page.click("#train-form button")
    # The job page follows the run live and ends with the version it made.
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=120_000)
    expect(page.locator("#job-result")).to_contain_text("iris-source v1")
    expect(page.locator("#loss-chart path[data-series=train_loss]")).to_have_count(1)
    expect(page.locator("#job-log")).to_contain_text("job succeeded")

    page.click("a[data-nav=start]")
    # The strategies offered are the registry's (the OpenAPI document's enum), auto first.
    from app.ml.transfer import registry

    offered = page.locator("#ft-strategy option").all_inner_texts()
    assert offered == ["auto", *registry.names()]
    page.select_option("#ft-base", "iris-source")
    page.select_option("#ft-dataset", datasets["iris[100:150]"])
    page.select_option("#ft-strategy", "feature")
    page.fill("#ft-model", "iris-feature")
    page.fill("#ft-epochs", "20")
    page.click("#fine-tune-form button")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=120_000)
    # The transfer report: the strategy's score beside the baseline, and the shift.
    expect(page.locator("#transfer-report")).to_contain_text("Chosen: feature")
    expect(page.locator("#transfer-report")).to_have_count(1)
    expect(page.locator("#transfer-report svg[aria-label='domain shift']")).to_have_count(1)

    # Opened again once it has finished: its history, drawn once.
    page.reload()
    expect(page.locator("#transfer-report")).to_have_count(1)
    expect(page.locator("#job-log")).to_contain_text("job succeeded")

    page.click("a[data-nav=jobs]")
    expect(page.locator("#jobs-table tr[data-job]")).to_have_count(2)
    expect(page.locator("#jobs-table")).to_contain_text("iris-feature v1")

    # The model: lineage from the dataset (with its hash) to the version, an alias moved and
    # rolled back, a prediction.
    page.goto(server.url + "/ui#/models/iris-feature")
    expect(page.locator("#lineage")).to_contain_text("iris[100:150]")
    expect(page.locator("#lineage")).to_contain_text("iris-source v1")
    expect(page.locator("#lineage")).to_contain_text("sha256")
    page.fill("#alias-name", "production")
    page.select_option("#alias-version", "1")
    page.click("#alias-form button")
    expect(page.locator("#alias-message")).to_contain_text("production → v1")
    expect(page.locator("tr[data-alias=production] .alias-target")).to_have_text("v1")
    with server.client() as client:
        assert client.get("/v1/models/iris-feature").json()["aliases"] == {"production": 1}
    page.fill("#predict-records", '[{"sepal length (cm)": 6.7, "sepal width (cm)": 3.0, '
              '"petal length (cm)": 5.2, "petal width (cm)": 2.3}]')  # fmt: skip
    page.click("#predict-form button")
    expect(page.locator("#predict-result")).to_contain_text('"predictions"')

    # Scored on the target beside its base, from the page, and shown side by side.
    expect(page.locator("#compare")).to_contain_text("No evaluations yet")
    page.select_option("#evaluate-dataset", datasets["iris[100:150]"])
    page.click("#evaluate-form button")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=120_000)
    expect(page.locator("#evaluation")).to_contain_text("iris-source v1")
    page.goto(server.url + "/ui#/models/iris-feature")
    table = page.locator(f".compare-table[data-dataset={datasets['iris[100:150]']}]")
    expect(table.locator("tr[data-version]")).to_have_count(2)
    expect(table.locator("tr[data-version='iris-source v1']")).to_contain_text("(base)")
    with server.client() as client:
        compared = client.get("/v1/models/iris-feature/compare?versions=1").json()
    (group,) = compared["datasets"]
    accuracy = group["scores"][0]["metrics"]["accuracy"]
    expect(table.locator("tr[data-version='iris-feature v1'] td").nth(1)).to_have_text(
        str(round(accuracy, 3)).rstrip("0").rstrip(".") if accuracy % 1 else str(int(accuracy))
    )

    # A second source version, the alias moved to it, then rolled back in one click.
    page.goto(server.url + "/ui#/models/iris-source")
    page.fill("#alias-name", "production")
    page.select_option("#alias-version", "1")
    page.click("#alias-form button")
    expect(page.locator("tr[data-alias=production] .alias-target")).to_have_text("v1")
    with server.client() as client:
        body = {
            "dataset_id": datasets["iris[0:100]"],
            "target_column": "target",
            "model_name": "iris-source",
            "hyperparameters": {"epochs": 2},
        }
        job = client.post("/v1/jobs/source-training", json=body).json()
    page.goto(server.url + f"/ui#/jobs/{job['id']}")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=120_000)
    page.goto(server.url + "/ui#/models/iris-source")
    page.select_option("#alias-version", "2")
    page.click("#alias-form button")
    expect(page.locator("tr[data-alias=production] .alias-target")).to_have_text("v2")
    page.click("button[data-rollback=production]")
    expect(page.locator("#alias-message")).to_contain_text("rolled back to v1")
    expect(page.locator("tr[data-alias=production] .alias-target")).to_have_text("v1")

    # Datasets: the first rows and a summary of each column.
    page.goto(server.url + f"/ui#/datasets/{datasets['iris[100:150]']}")
    expect(page.locator("#preview-table tr")).to_have_count(21)
    expect(page.locator("#summary-table")).to_contain_text("virginica (50)")


def test_the_page_and_its_files_need_no_key_but_every_call_does(
    server_factory: ServerFactory, page: "sync_api.Page"
) -> None:
    server = server_factory(workers=0)
    with httpx2.Client(base_url=server.url) as anonymous:
        served = anonymous.get("/ui")
        assert served.status_code == 200
        assert "frame-ancestors 'none'" in served.headers["content-security-policy"]
        assert anonymous.get("/ui/assets/app.js").status_code == 200
        assert anonymous.get("/v1/datasets").status_code == 401
    # The key lives in the tab: a new tab (session storage is per tab) asks again.
    sign_in(page, server)
    sync_api.expect(page.locator("#nav")).to_be_visible()
    other = page.context.new_page()
    other.goto(server.url + "/ui")
    sync_api.expect(other.locator("#login")).to_be_visible()
