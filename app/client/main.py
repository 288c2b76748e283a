"""The client's command line, every command registered: `graft` hands client commands here."""

from app.client import scoring  # noqa: F401  (registers its commands on the app)
from app.client.commands import app

__all__ = ["app"]
