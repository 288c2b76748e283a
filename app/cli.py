"""`graft serve | worker | migrate | backup | restore | keys` (run beside the service, on its
database), and the client commands `graft datasets | train | fine-tune | jobs | predict |
models` (anywhere, over HTTP: app/client)."""

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.config import Settings, get_settings


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Alembic announces each of its plugins at INFO when it is imported.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _migrate() -> None:
    from app.db import migrate

    settings = get_settings()
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)
    print(f"database at revision {migrate.head_revision()}", file=sys.stderr)


@contextmanager
def _using_data_dir(settings: Settings) -> Iterator[None]:
    """While a process has the SQLite file open, `graft restore` must not swap it: the
    process would keep writing to the old, unlinked file and those writes would be lost."""
    from app.db.backup import hold_data_dir_lock, sqlite_file

    database = sqlite_file(settings.resolved_database_url)
    if database is None:
        yield
        return
    with hold_data_dir_lock(database.parent):
        yield


def _serve(args: argparse.Namespace) -> None:
    from app import server

    settings = get_settings()
    if args.processes is not None and not 1 <= args.processes <= 64:
        print(f"graft: --processes {args.processes}: expected 1 to 64", file=sys.stderr)
        sys.exit(2)
    processes = args.processes or settings.api_processes or server.default_processes()
    with _using_data_dir(settings):
        if not args.no_migrate:
            _migrate()
        server.serve(
            settings,
            processes=processes,
            host=args.host or settings.host,
            port=args.port or settings.port,
        )


def _worker(args: argparse.Namespace) -> None:
    settings = get_settings()
    if args.executor is not None:
        settings = settings.model_copy(update={"executor": args.executor})
    if settings.executor == "celery":
        from app.jobs.celery_app import run_celery_worker

        run_celery_worker(settings)
        return
    from app.jobs.worker import run_worker

    with _using_data_dir(settings):
        run_worker(settings)


def _backup(args: argparse.Namespace) -> None:
    from app.db.backup import backup

    report = backup(get_settings().resolved_database_url, args.path, force=args.force)
    print(f"backup written to {report.path}")
    print(report.describe())


def _restore(args: argparse.Namespace) -> None:
    from sqlalchemy import make_url

    from app.db.backup import restore, sqlite_file

    url = get_settings().resolved_database_url
    report = restore(args.path, url, force=args.force)
    target = sqlite_file(url) or make_url(url).render_as_string(hide_password=True)
    print(f"restored {report.path} into {target}")
    print(report.describe())


def _keys(args: argparse.Namespace) -> None:
    from datetime import timedelta

    from app.db.session import Database
    from app.errors import AppError
    from app.ids import utcnow
    from app.services import keys as keys_service

    settings = get_settings()
    database = Database(settings.resolved_database_url)
    try:
        with database.session_scope() as session:
            if args.keys_command == "create":
                expires = None
                if args.expires_in_days is not None:
                    expires = utcnow() + timedelta(days=args.expires_in_days)
                row, secret = keys_service.create_key(
                    session, name=args.name, scopes=args.scope, expires_at=expires
                )
                print(f"created {row.id} ({row.name}) with scopes {', '.join(row.scopes)}")
                print("secret (shown once, keep it safe):", file=sys.stderr)
                print(secret)
            elif args.keys_command == "revoke":
                keys_service.revoke_key(session, args.key_id)
                print(f"revoked {args.key_id}")
            else:
                rows, _ = keys_service.list_keys(
                    session, limit=200, after=None, include_revoked=True
                )
                for row in rows:
                    state = "revoked" if row.revoked_at else "active"
                    expiry = row.expires_at.isoformat() if row.expires_at else "never"
                    print(
                        f"{row.id}  {row.prefix}…  {state:7}  {','.join(row.scopes):24}  "
                        f"expires {expiry}  {row.name}"
                    )
    except AppError as exc:
        print(f"graft: {exc.detail}", file=sys.stderr)
        sys.exit(2)
    finally:
        database.dispose()


# Handed to the HTTP client (app/client/commands.py, Typer): they need no database.
CLIENT_COMMANDS = (
    "datasets",
    "train",
    "fine-tune",
    "jobs",
    "predict",
    "batch-predict",
    "evaluate",
    "models",
    "export",
    "tag",
)
_CLIENT_OPTIONS = ("--url", "--key", "--json")


def _is_client_command(arguments: list[str]) -> bool:
    """`graft jobs list`, or the client's own options first: `graft --json jobs list`."""
    if not arguments:
        return False
    first = arguments[0].split("=", 1)[0]
    return first in CLIENT_COMMANDS or first in _CLIENT_OPTIONS


def _global_options_first(arguments: list[str]) -> list[str]:
    """`graft jobs list --json` as well as `graft --json jobs list`: the client's own
    options are moved in front of the command, where Typer reads them."""
    front: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if argument == "--":
            rest.extend(arguments[index:])
            break
        name = argument.split("=", 1)[0]
        if name == "--json":
            front.append(argument)
        elif name in _CLIENT_OPTIONS:
            front.append(argument)
            if "=" not in argument and index + 1 < len(arguments):
                index += 1
                front.append(arguments[index])
        else:
            rest.append(argument)
        index += 1
    return front + rest


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if _is_client_command(arguments):
        from app.client.main import app as client

        client(args=_global_options_first(arguments), prog_name="graft")
        return
    parser = argparse.ArgumentParser(
        prog="graft",
        description="Graft transfer-learning service",
        epilog="client commands (over HTTP, GRAFT_URL and GRAFT_API_KEY): "
        + ", ".join(CLIENT_COMMANDS)
        + "; `graft datasets --help` and so on",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="apply migrations, start the API and its workers")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--no-migrate", action="store_true", help="skip `graft migrate`")
    serve.add_argument(
        "--processes",
        type=int,
        default=None,
        help="API processes sharing the port (default: GRAFT_API_PROCESSES, else the cores "
        "available, at most 8)",
    )
    worker = commands.add_parser("worker", help="run one worker process (claims and runs jobs)")
    worker.add_argument(
        "--executor",
        choices=["local", "celery"],
        default=None,
        help="local: poll the database; celery: take job ids from GRAFT_BROKER_URL "
        "(default: GRAFT_EXECUTOR)",
    )
    commands.add_parser("migrate", help="bring the database schema to the newest migration")
    backup = commands.add_parser(
        "backup",
        help="write a consistent copy of the database (datasets, models, jobs) to PATH; "
        "safe while the service runs",
        description="Copy the whole Graft database, which holds every dataset and model "
        "weight, to one file. SQLite: the online backup API, checked with integrity_check; "
        "PostgreSQL: pg_dump --format=custom. The service may keep running.",
    )
    backup.add_argument("path", type=Path, help="backup file to write")
    backup.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    restore = commands.add_parser(
        "restore",
        help="replace the database with the backup at PATH and migrate it; stop the service first",
        description="Replace the configured database with a file written by `graft backup`, "
        "then bring its schema to the newest migration. Stop `graft serve` and workers "
        "first (SQLite refuses while they run). PostgreSQL: pg_restore.",
    )
    restore.add_argument("path", type=Path, help="backup file to read")
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace the database even if it already holds datasets, models or jobs",
    )
    keys = commands.add_parser("keys", help="create, list or revoke API keys (in the database)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="a new key; prints its secret once")
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=["read", "predict", "train", "admin"],
        help="repeat for several scopes",
    )
    create.add_argument("--expires-in-days", type=float, default=None)
    keys_commands.add_parser("list", help="every key (never their secrets)")
    revoke = keys_commands.add_parser("revoke", help="revoke a key, in every API process")
    revoke.add_argument("key_id")
    args = parser.parse_args(arguments)
    _configure_logging(get_settings().log_level)
    if args.command in ("backup", "restore"):
        from app.db.backup import BackupError

        try:
            if args.command == "backup":
                _backup(args)
            else:
                _restore(args)
        except BackupError as exc:
            print(f"graft: {exc}", file=sys.stderr)
            sys.exit(2)
    elif args.command == "keys":
        _keys(args)
    elif args.command == "serve":
        _serve(args)
    elif args.command == "worker":
        _worker(args)
    else:
        _migrate()


if __name__ == "__main__":
    main()
