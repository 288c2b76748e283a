"""The import contracts (pyproject.toml, [tool.importlinter]) hold, and they do catch a wrong
arrow: each one is broken on a copy of the code and lint-imports must fail naming it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_contracts_hold() -> None:
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        ("app/ml/metrics.py", "import sqlalchemy", "app.ml is pure"),
        ("app/ml/metrics.py", "from app.services import jobs", "app.ml is pure"),
        ("app/api/routes/keys.py", "from app.db.models import ApiKey", "through the services"),
        ("app/services/jobs.py", "from app.jobs import queue", "Layers"),
        ("app/serving/predictor.py", "from app.services import registry", "Layers"),
    ],
)
def test_a_wrong_import_breaks_its_contract(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    shutil.copytree(REPO / "app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # deliberately wrong\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    # Long names wrap: read the report as one line, the contract's verdict after its name.
    report = " ".join(result.stdout.split())
    verdict = report[report.index(contract) :]
    kept = verdict.find("KEPT")
    assert "BROKEN" in verdict, result.stdout
    assert kept == -1 or verdict.index("BROKEN") < kept, result.stdout
