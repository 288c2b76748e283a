"""The `graft` command-line client: talks to a running service over HTTP (httpx), never
to its database. Commands are in app/client/commands.py, the HTTP layer in http.py."""
