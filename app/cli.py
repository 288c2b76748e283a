"""`graft serve | worker | migrate`."""

import argparse
import logging
import sys

from app.config import get_settings


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


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from app.main import create_app

    settings = get_settings()
    if not args.no_migrate:
        _migrate()
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level,
        # Event streams stay open while their job runs; on shutdown, end them after a
        # moment (clients resume with Last-Event-ID) instead of waiting for every job.
        timeout_graceful_shutdown=5,
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

    run_worker(settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="graft", description="Graft transfer-learning service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="apply migrations, start the API and its workers")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--no-migrate", action="store_true", help="skip `graft migrate`")
    worker = commands.add_parser("worker", help="run one worker process (claims and runs jobs)")
    worker.add_argument(
        "--executor",
        choices=["local", "celery"],
        default=None,
        help="local: poll the database; celery: take job ids from GRAFT_BROKER_URL "
        "(default: GRAFT_EXECUTOR)",
    )
    commands.add_parser("migrate", help="bring the database schema to the newest migration")
    args = parser.parse_args(argv)
    _configure_logging(get_settings().log_level)
    if args.command == "serve":
        _serve(args)
    elif args.command == "worker":
        _worker(args)
    else:
        _migrate()


if __name__ == "__main__":
    main()
