"""Pinned malloc thresholds: a large forward pass's memory is reused, not faulted in anew."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.serving import memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Four 2.5 MB arrays at a time, the size of a 10,000-row request's activations in a 64-wide
# layer, allocated and freed over and over; prints page faults per round.
_ROUNDS = """
import resource, sys
import numpy as np
from app.serving.memory import pin_malloc_thresholds
if sys.argv[1] == "pinned":
    assert pin_malloc_thresholds()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    arrays = [np.ones(320_000) for _ in range(4)]; del arrays
before = faults()
for _ in range(50):
    arrays = [np.ones(320_000) for _ in range(4)]; del arrays
print((faults() - before) / 50)
"""


def _faults_per_round(mode: str) -> float:
    root = Path(__file__).resolve().parents[2]
    completed = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(completed.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_pinned_thresholds_reuse_large_blocks() -> None:
    # 2.5 MB blocks are 625 pages each: four a round, all faulted in again, would be 2,500.
    assert _faults_per_round("pinned") < 50
    # glibc's adaptive thresholds give fresh pages every round on this pattern (recorded as
    # a figure, not asserted: it depends on the glibc version).
    print("default thresholds, faults per round:", _faults_per_round("default"))


def test_without_glibc_nothing_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    # musl, macOS and Windows have no such thresholds (or no mallopt): a no-op there.
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("", ""))
    assert memory.pin_malloc_thresholds() is False
    monkeypatch.setattr(memory.platform, "system", lambda: "Darwin")
    assert memory.pin_malloc_thresholds() is False


@pytest.mark.parametrize("enabled", [True, False])
def test_the_api_pins_them_at_start_when_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    import app.main

    calls: list[bool] = []
    monkeypatch.setattr(app.main, "pin_malloc_thresholds", lambda: calls.append(True) or True)
    settings = Settings(data_dir=tmp_path, workers=0, pin_malloc_thresholds=enabled)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
    assert calls == ([True] if enabled else [])
