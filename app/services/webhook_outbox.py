"""Webhooks owed on job end: the URL rule a job's webhook_url must pass, and the outbox row
written in the transaction that ends the job.

The row is written with the job's final status (`job_events.add_event`), so a webhook is
owed exactly when the job has ended, whatever ended it (a worker, a cancel, the sweep of a
lost worker). The workers deliver it (app/jobs/webhooks.py).
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, WebhookDelivery
from app.ids import utcnow

PENDING, DELIVERING, DELIVERED, FAILED = "pending", "delivering", "delivered", "failed"


class UnsafeTarget(ValueError):
    """The URL points somewhere a server must not be made to call (SSRF)."""


def _refused_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_url(url: str, *, allow_private: bool, resolve: bool) -> None:
    """http(s) with a host; unless private targets are allowed, no loopback, private,
    link-local (cloud metadata), multicast or reserved address — checked on the literal
    address at submission, and on every address the name resolves to before each send."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget(f"webhook_url {url!r}: expected an http or https URL with a host")
    if allow_private:
        return
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        raise UnsafeTarget(f"webhook_url {url!r} points at this machine")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if _refused_address(str(literal)):
            raise UnsafeTarget(f"webhook_url {url!r} is a private or local address")
        return
    if not resolve:
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
    except OSError as exc:
        raise UnsafeTarget(f"webhook_url host {host!r} does not resolve ({exc})") from exc
    for info in infos:
        if _refused_address(str(info[4][0])):
            raise UnsafeTarget(f"webhook_url host {host!r} resolves to a private or local address")


def owe(session: Session, job_id: str, status: str) -> None:
    """Queue the webhook of a job that has just ended, if it asked for one (same
    transaction as its final status)."""
    url = session.scalar(select(Job.webhook_url).where(Job.id == job_id))
    if not url:
        return
    job = session.get(Job, job_id)
    assert job is not None
    now = utcnow()
    payload = {
        "type": f"job.{status}",
        "job": {
            "id": job.id,
            "kind": job.kind,
            "status": status,
            "model_name": job.model_name,
            "result": (
                {"model_name": job.result_model_name, "version": job.result_version}
                if job.result_model_name is not None
                else None
            ),
            "error": (
                {"code": job.error_code, "message": job.error_message or ""}
                if job.error_code is not None
                else None
            ),
            "result_dataset_id": job.result_dataset_id if status == "succeeded" else None,
            "tags": job.tags or {},
        },
        "created_at": now.isoformat().replace("+00:00", "Z"),
    }
    session.add(
        WebhookDelivery(
            job_id=job_id,
            url=url,
            event=f"job.{status}",
            payload=payload,
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            attempt_log=[],
            created_at=now,
        )
    )
