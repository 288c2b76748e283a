"""Webhooks on job end: an outbox row written with the job's final status, delivered by the
workers with a signature, retried with backoff, every attempt kept on the row.

The row is written in the transaction that ends the job (app/services/webhook_outbox.py), so
a webhook is owed exactly when the job has ended, whatever ended it (a worker, a cancel, the
sweep of a lost worker). Workers deliver after each job and on every sweep; a delivery is
claimed with a lease (a conditional UPDATE), so two workers never send it at once and one
that dies mid-send leaves it to be sent again after the lease.

The receiver checks `Graft-Signature: v1=<hex>`, HMAC-SHA256 with GRAFT_WEBHOOK_SECRET over
`<Graft-Webhook-Timestamp>.<body>`, and should refuse old timestamps (replays).
"""

import hashlib
import hmac
import json
import logging
import random
import time
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, update

from app.config import Settings
from app.db.models import WebhookDelivery
from app.db.session import Database
from app.ids import utcnow
from app.services.webhook_outbox import (
    DELIVERED,
    DELIVERING,
    FAILED,
    PENDING,
    UnsafeTarget,
    check_url,
)

log = logging.getLogger(__name__)

# A deliverer holds a delivery this long; past it, the delivery is anyone's again.
LEASE_SECONDS = 120
# Attempts kept on the row, newest last.
KEPT_ATTEMPTS = 20


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={digest.hexdigest()}"


def deliver_due(
    db: Database, settings: Settings, *, job_id: str | None = None, budget_seconds: float = 15.0
) -> int:
    """Send the deliveries that are due (of one job, or any); returns how many were sent
    successfully. Each is claimed first, so concurrent workers share the work.

    A worker calls this between jobs: it starts no new attempt after `budget_seconds`, so
    receivers that hang cost it at most that plus one attempt's timeout; the rest waits for
    the next sweep.
    """
    if settings.webhook_secret is None:
        return 0
    secret = settings.webhook_secret.get_secret_value()
    delivered = 0
    deadline = time.monotonic() + budget_seconds
    while time.monotonic() < deadline:
        delivery = _claim(db, job_id)
        if delivery is None:
            break
        delivered += _attempt(db, settings, secret, delivery)
    return delivered


def _claim(db: Database, job_id: str | None) -> WebhookDelivery | None:
    now = utcnow()
    due = or_(
        (WebhookDelivery.status == PENDING) & (WebhookDelivery.next_attempt_at <= now),
        (WebhookDelivery.status == DELIVERING) & (WebhookDelivery.lease_until < now),
    )
    with db.session_scope() as session:
        query = select(WebhookDelivery.id).where(due).order_by(WebhookDelivery.id).limit(1)
        if job_id is not None:
            query = query.where(WebhookDelivery.job_id == job_id)
        found = session.scalar(query)
        if found is None:
            return None
        claimed = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == found, due)
            .values(status=DELIVERING, lease_until=now + timedelta(seconds=LEASE_SECONDS))
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return session.get(WebhookDelivery, found)


def _attempt(db: Database, settings: Settings, secret: str, delivery: WebhookDelivery) -> int:
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    started = time.monotonic()
    status_code: int | None = None
    error: str | None = None
    try:
        check_url(delivery.url, allow_private=settings.webhook_allow_private, resolve=True)
        response = httpx.post(
            delivery.url,
            content=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "graft-webhooks",
                "Graft-Webhook-Id": str(delivery.id),
                "Graft-Webhook-Timestamp": str(timestamp),
                "Graft-Signature": signature(secret, timestamp, body),
            },
            timeout=settings.webhook_timeout_seconds,
            # A redirect could lead anywhere, past the address check.
            follow_redirects=False,
        )
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except UnsafeTarget as exc:
        error = str(exc)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    attempt = {
        "at": utcnow().isoformat().replace("+00:00", "Z"),
        "status_code": status_code,
        "error": error,
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
    }
    attempts = delivery.attempts + 1
    now = utcnow()
    values: dict[str, Any] = {
        "attempts": attempts,
        "attempt_log": [*(delivery.attempt_log or []), attempt][-KEPT_ATTEMPTS:],
        "last_status_code": status_code,
        "last_error": error,
        "lease_until": None,
    }
    if error is None:
        values |= {"status": DELIVERED, "delivered_at": now, "next_attempt_at": None}
    elif attempts >= settings.webhook_max_attempts:
        values |= {"status": FAILED, "next_attempt_at": None}
        log.warning(
            "webhook %s for job %s failed for good: %s", delivery.id, delivery.job_id, error
        )
    else:
        # Exponential backoff with jitter, so a receiver back from an outage is not hit by
        # every delivery at the same instant.
        delay = min(3600.0, settings.webhook_retry_seconds * 2 ** (attempts - 1))
        values |= {
            "status": PENDING,
            "next_attempt_at": now + timedelta(seconds=delay * random.uniform(0.8, 1.2)),
        }
    with db.session_scope() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id, WebhookDelivery.status == DELIVERING)
            .values(**values)
        )
    return 1 if error is None else 0
