"""`graft serve`: the API on one port, in one process or in N that share it.

With N > 1 (GRAFT_API_PROCESSES, `--processes`), uvicorn's supervisor starts N API
processes, restarting any that dies; on Linux each accepts from a socket of its own
(`ReusePortListener`), elsewhere they share one the supervisor binds. This process
stays their parent: it runs the local job workers once for all of them (not once per API
process), and makes a runtime folder that they all share:
- `metrics/`: prometheus_client's multiprocess files, so any process's `/metrics` sums all;
- `workers.json` and `jobs-queued`: the workers' pids (readiness) and their wake-up counter;
- the change counters of app/db/changes.py where the database is not a local SQLite file.
Key revocations and alias moves reach every process before its next request through those
change counters, which is what lets each keep keys and aliases in memory.
"""

import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from app.config import Settings
from app.db import changes

log = logging.getLogger(__name__)

# More API processes than this rarely serve more: each holds its own copy of the loaded
# models, and the forward passes already use more than one core each.
MAX_DEFAULT_PROCESSES = 8


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, cpuset), further bounded by
    a cgroup v2 CPU quota (`docker run --cpus`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period) + 0.5)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_processes() -> int:
    return min(available_cores(), MAX_DEFAULT_PROCESSES)


def serve(settings: Settings, *, processes: int, host: str, port: int) -> None:
    import uvicorn

    options = {
        "host": host,
        "port": port,
        "log_level": settings.log_level,
        # Graft writes its own access log (GRAFT_ACCESS_LOG), off the request path.
        "access_log": False,
        # Event streams stay open while their job runs; on shutdown, end them after a
        # moment (clients resume with Last-Event-ID) instead of waiting for every job.
        "timeout_graceful_shutdown": 5,
    }
    if processes == 1:
        from app.main import create_app

        uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]
        return
    runtime = Path(tempfile.mkdtemp(prefix="graft-serve-"))
    (runtime / "metrics").mkdir()
    # Read by the API processes uvicorn spawns, and by the workers below: set first.
    os.environ[changes.RUNTIME_DIR_ENV] = str(runtime)
    # prometheus_client's own variable: it picks its multiprocess values when imported.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(runtime / "metrics")
    pool = None
    if settings.executor == "local" and settings.workers > 0:
        from app.jobs.worker import LocalWorkerPool

        pool = LocalWorkerPool(settings, runtime_dir=runtime)
        pool.start()
    log.info("serving on %s:%d with %d API processes", host, port, processes)
    try:
        if sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT"):
            from uvicorn.supervisors import Multiprocess

            config = uvicorn.Config(
                "app.main:create_supervised_app",
                factory=True,
                workers=processes,
                **options,  # type: ignore[arg-type]
            )
            try:
                listener = ReusePortListener.reserve(host, port)
            except OSError as exc:
                log.error("cannot listen on %s:%d: %s", host, port, exc)
                raise SystemExit(3) from exc
            log.info(
                "Uvicorn running on http://%s:%d, one listening socket per process", host, port
            )
            Multiprocess(config, sockets=[listener]).run()
        else:
            # Elsewhere SO_REUSEPORT does not spread connections: one shared socket.
            uvicorn.run(
                "app.main:create_supervised_app",
                factory=True,
                workers=processes,
                **options,  # type: ignore[arg-type]
            )
    finally:
        if pool is not None:
            pool.stop()
        shutil.rmtree(runtime, ignore_errors=True)


class ReusePortListener(socket.socket):
    """A port reserved in the parent, opened anew in each API process that unpickles it.

    uvicorn hands its workers the sockets it is given; they reach a spawned child pickled. A
    plain socket arrives as a duplicate of the parent's, so every process accepts from one
    queue, and accepts go in bursts to whichever process is awake (measured: 87 % and 30 % of
    a core at 16 clients). This one unpickles as a new socket bound to the same address with
    SO_REUSEPORT, so each process has a queue of its own and the kernel spreads connections
    over them by their address hash. The parent's socket is bound, never listening: it holds
    the port (and fails fast if it is taken) without taking connections itself.
    """

    @classmethod
    def reserve(cls, host: str, port: int) -> "ReusePortListener":
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = cls(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        return sock

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        host, port = self.getsockname()[:2]
        return _listener_in_child, (host, port)


def _listener_in_child(host: str, port: int) -> socket.socket:
    return ReusePortListener.reserve(host, port)
