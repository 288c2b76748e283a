"""The Compose file keeps its secrets out of the repository."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = (ROOT / "docker-compose.yml").read_text()


def test_every_secret_comes_from_the_environment() -> None:
    services = yaml.safe_load(COMPOSE)["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")
    api = services["api"]["environment"]
    assert "${POSTGRES_PASSWORD" in api["GRAFT_DATABASE_URL"]
    assert "${REDIS_PASSWORD" in api["GRAFT_BROKER_URL"]
    assert api["GRAFT_ADMIN_KEY"].startswith("${GRAFT_ADMIN_KEY:?")
    assert "--requirepass" in " ".join(services["redis"]["command"])
    # No user:password@ pair written out literally.
    assert not re.search(r"://[^:/@$]*:[^$@]+@", COMPOSE)


def test_the_example_env_file_names_every_required_variable() -> None:
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE))
    example = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^([A-Z_]+)=", example, flags=re.MULTILINE))
    assert required and required <= named
    assert all(line.endswith("=") for line in example.splitlines() if "PASSWORD=" in line)
