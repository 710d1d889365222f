"""How many CPU cores this process may really use, sizing torch's threads to them, and worker
processes that die with their parent (:func:`die_with_parent`).

``os.cpu_count()`` reports the host's cores, not this process's share: inside a container with
a CPU quota, or a worker pinned to some cores, a torch pool sized to the host oversubscribes the
machine (two default trains on 2 cores slowed from 3 steps/s to 0.04). The share is the
smallest of the affinity mask, the cgroup CPU quota and the ``NIRGAN_CPUS`` override.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

ENV = "NIRGAN_CPUS"


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max``, else v1 ``cfs_quota_us``), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores(env: dict[str, str] | None = None, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: affinity, cgroup quota and ``NIRGAN_CPUS``, the least."""
    env = os.environ if env is None else env
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    raw = env.get(ENV, "").strip()
    if raw:
        try:
            wanted = int(raw)
        except ValueError:
            raise ValueError(f"{ENV}={raw!r} is not a whole number of CPUs") from None
        if wanted < 1:
            raise ValueError(f"{ENV}={raw!r} must be at least 1")
        cores = min(cores, wanted)
    return max(1, cores)


def size_threads(env: dict[str, str] | None = None) -> int:
    """Size torch's intra-op pool (which is also its OpenMP and MKL pool) to :func:`available_cores`,
    and pass the count on to child processes; an ``OMP_NUM_THREADS`` the user set is never raised.
    Called once at the start of every ``nirgan`` command. Returns the thread count.

    torch is not imported for this: a stage without it (collect, clean, split) would pay 1.7 s
    to start. torch sizes its pool from ``OMP_NUM_THREADS`` when it loads, so the variable is
    lowered to the count here (in ``os.environ`` that is this process's own); a torch that is
    already loaded is sized directly."""
    env = os.environ if env is None else env
    cores = available_cores(env)
    pinned = env.get("OMP_NUM_THREADS", "").strip()
    if pinned.isdigit() and int(pinned) >= 1:
        cores = min(cores, int(pinned))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = env.get(name, "").strip()
        if not (value.isdigit() and 1 <= int(value) <= cores):
            env[name] = str(cores)  # unset, unreadable or above this process's share
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(cores)
    return cores


def die_with_parent(parent: int) -> None:
    """In a worker process: be killed when ``parent`` (the process that started it) dies, so a
    ``kill -9`` of a stage leaves no worker behind (Linux; PR_SET_PDEATHSIG). Without it a
    spawned pool worker whose parent was killed sleeps on forever."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
