"""Opaque, prefixed, time-ordered ids (`ds_…`, `job_…`) and UTC timestamps."""

import os
import time
from datetime import UTC, datetime

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rest = divmod(value, 32)
        chars.append(_ALPHABET[rest])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """Return `prefix_` + 26 chars whose lexical order follows creation time (ULID-like)."""
    millis = time.time_ns() // 1_000_000
    randomness = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_base32(millis, 10)}{_base32(randomness, 16)}"


def utcnow() -> datetime:
    return datetime.now(UTC)
