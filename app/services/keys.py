"""API keys: created with a secret shown once, stored as its sha256, checked from memory.

Every API process keeps all keys in a `KeyRing` (a dict from hash to key), so a request's
check is one hash and one lookup, never a query. A create or revoke in any process reaches
the others before their next request through the `keys` change signal (app/db/changes.py).
"""

import contextlib
import hashlib
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import changes
from app.db.models import ApiKey
from app.db.session import Database
from app.errors import Conflict, Invalid, NotFound
from app.ids import new_id, utcnow
from app.services.locking import insert_for
from app.services.pagination import paginate

log = logging.getLogger(__name__)

SCOPES = ("read", "predict", "train", "admin")
ENV_ADMIN_KEY_ID = "key_env_admin"
SECRET_PREFIX = "graft_"
# last_used_at is written at most this often per key: a write per request would cost more
# than the request.
_LAST_USED_EVERY_SECONDS = 60.0
# Header values remembered for the hot path (see KeyRing.lookup_header).
_MAX_REMEMBERED = 10_000


def hash_secret(secret: str) -> str:
    # The secrets are 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyRecord:
    """What a request's check needs of a key."""

    id: str
    name: str
    scopes: frozenset[str]
    expires_at: datetime | None
    revoked: bool

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    @property
    def expires_ts(self) -> float:
        return math.inf if self.expires_at is None else self.expires_at.timestamp()


def _record(row: ApiKey) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        scopes=frozenset(row.scopes),
        expires_at=row.expires_at,
        revoked=row.revoked_at is not None,
    )


def check_scopes(scopes: Iterable[str]) -> list[str]:
    chosen = sorted(set(scopes))
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise Invalid(
            "invalid_scopes",
            f"scopes {unknown or chosen} are not valid; expected one or more of {list(SCOPES)}",
        )
    return chosen


def create_key(
    session: Session,
    *,
    name: str,
    scopes: Iterable[str],
    expires_at: datetime | None = None,
    created_by: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its secret (the only time the secret exists outside the client)."""
    if expires_at is not None and expires_at <= utcnow():
        raise Invalid("invalid_expiry", f"expires_at {expires_at.isoformat()} is in the past")
    secret = new_secret()
    row = ApiKey(
        id=new_id("key"),
        name=name,
        scopes=check_scopes(scopes),
        secret_hash=hash_secret(secret),
        prefix=secret[: len(SECRET_PREFIX) + 6],
        created_at=utcnow(),
        created_by=created_by,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    changes.mark(session, changes.KEYS)
    return row, secret


def list_keys(
    session: Session, *, limit: int, after: str | None, include_revoked: bool = False
) -> tuple[list[ApiKey], bool]:
    query = select(ApiKey)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return paginate(
        session,
        query,
        created_at=ApiKey.created_at,
        key=ApiKey.id,
        limit=limit,
        after=after,
    )


def get_key(session: Session, key_id: str, *, include_revoked: bool = False) -> ApiKey:
    """A key; a revoked one is gone (404 key_revoked) unless `include_revoked`.

    A DELETE answered 204 means the key is gone for clients, as for every other resource;
    its row stays for the record (`created_by` ids elsewhere keep their meaning), and an
    admin auditing keys reads it with include_revoked.
    """
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound("key_not_found", f"no API key with id {key_id!r}")
    if row.revoked_at is not None and not include_revoked:
        raise NotFound(
            "key_revoked",
            f"API key {key_id!r} was revoked at {row.revoked_at.isoformat()}; "
            "GET /v1/keys?include_revoked=true lists it",
        )
    return row


def revoke_key(session: Session, key_id: str) -> None:
    """Revoke a key (idempotent); the row stays, so `created_by` ids keep their meaning."""
    if key_id == ENV_ADMIN_KEY_ID:
        raise Conflict(
            "key_from_environment",
            "this key comes from GRAFT_ADMIN_KEY and would come back at the next start; "
            "change or unset GRAFT_ADMIN_KEY instead",
        )
    get_key(session, key_id, include_revoked=True)
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    changes.mark(session, changes.KEYS)


def ensure_admin_keys(database: Database, settings: Settings) -> None:
    """The key of GRAFT_ADMIN_KEY, or a first admin key written to <data dir>/admin-key."""
    with database.session_scope() as session:
        if settings.admin_key is not None:
            secret = settings.admin_key.get_secret_value()
            values = {
                "name": "admin (GRAFT_ADMIN_KEY)",
                "scopes": ["admin"],
                "secret_hash": hash_secret(secret),
                "prefix": secret[:12],
                "revoked_at": None,
            }
            session.execute(
                insert_for(session, ApiKey)
                .values(id=ENV_ADMIN_KEY_ID, created_at=utcnow(), **values)
                .on_conflict_do_update(index_elements=["id"], set_=values)
            )
            changes.mark(session, changes.KEYS)
            return
        now = utcnow()
        admins = session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))).all()
        if any(
            "admin" in k.scopes and (k.expires_at is None or k.expires_at > now) for k in admins
        ):
            return
        row, secret = create_key(session, name="first admin key", scopes=["admin"])
    path = settings.data_dir.resolve() / "admin-key"
    _write_private(path, secret + "\n")
    log.warning(
        "no GRAFT_ADMIN_KEY and no admin key yet: generated admin key %s, written to %s "
        "(mode 0600); use it to create keys for applications",
        row.id,
        path,
    )


def _write_private(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


class KeyRing:
    """Every key of the database in memory, kept current across processes (see module)."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_header: dict[bytes, KeyRecord] = {}
        self._lock = threading.Lock()
        self._changes = changes.ChangeWatcher(database.url, changes.KEYS)
        self._last_used: dict[str, float] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graft-key-use")
        try:
            self.reload()
        except DBAPIError:
            # An unmigrated or unreachable database: /readyz says so; retried per request.
            log.error("could not load the API keys; every key check fails until it can")
            self._changes.invalidate()

    def lookup_header(self, value: bytes) -> KeyRecord | None:
        """The key of a raw `Authorization: Bearer <secret>` header value (revoked or
        expired ones too), or None.

        The hot path: a header seen before maps straight to its key (a known key only, and
        at most _MAX_REMEMBERED of them, so random keys cannot grow it), so a request costs
        one stat and one dictionary lookup.
        """
        self._refresh_if_changed()
        found = self._by_header.get(value)
        if found is None:
            secret = _bearer_secret(value)
            if secret is None:
                return None
            found = self._by_hash.get(hash_secret(secret))
            if found is None:
                return None
            if len(self._by_header) >= _MAX_REMEMBERED:
                self._by_header.clear()
            self._by_header[value] = found
        if not found.revoked:
            self._note_use(found.id)
        return found

    def reload(self) -> None:
        # Acknowledged first: a change that lands while this reads is seen by the next check.
        self._changes.acknowledge()
        with self._database.read_scope() as session:
            rows = session.scalars(select(ApiKey)).all()
            fresh = {row.secret_hash: _record(row) for row in rows}
        with self._lock:
            self._by_hash = fresh
            self._by_header = {}

    def changed(self) -> None:
        """Called after this process committed a key change: its next check must see it
        even where the change signal is asynchronous (PostgreSQL's NOTIFY)."""
        self.reload()

    def close(self) -> None:
        self._changes.close()
        self._writer.shutdown(wait=False, cancel_futures=True)

    def _refresh_if_changed(self) -> None:
        if self._changes.changed():
            try:
                self.reload()
            except DBAPIError:
                self._changes.invalidate()
                raise

    def _note_use(self, key_id: str) -> None:
        now = time.monotonic()
        if now - self._last_used.get(key_id, -_LAST_USED_EVERY_SECONDS) < _LAST_USED_EVERY_SECONDS:
            return
        self._last_used[key_id] = now
        with contextlib.suppress(RuntimeError):  # shutting down
            self._writer.submit(self._write_last_used, key_id)

    def _write_last_used(self, key_id: str) -> None:
        try:
            with self._database.session_scope() as session:
                session.execute(
                    update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow())
                )
        except Exception:  # a missed timestamp must never fail a request
            log.warning("could not record the use of key %s", key_id, exc_info=True)


def _bearer_secret(value: bytes) -> str | None:
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
