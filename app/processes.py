"""Whether a process id names a running process this one may signal."""

import os


def is_running(pid: int) -> bool:
    """True for a live process of this user; False when it is gone, or belongs to someone
    else (its pid was reused, so it is not the process that was recorded)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
