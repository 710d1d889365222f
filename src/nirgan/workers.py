"""Jobs run by worker processes, their results read back in the jobs' order (:func:`ordered_map`).

The twin's renderer and generate's shard writer both fan work out over processes. Fresh
processes (spawn), not forks: a fork of a process whose OpenCV or OpenMP thread pool has run
inherits locks held by threads that do not exist in the child, and hangs (it did, under pytest).

Each worker has a pipe of its own and one job in flight, so a worker killed from outside (the
OOM killer, a kill -9) closes only its own pipe: the death is seen at once and raises. Neither a
multiprocessing.Pool (which starts another worker and waits forever for the lost job) nor a
ProcessPoolExecutor (whose workers share one result pipe: one killed halfway through sending its
result left the reader waiting for the rest and the others blocked on the pipe's lock, forever;
it happened under pytest) can promise that.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

from nirgan.cores import die_with_parent


class WorkerDied(RuntimeError):
    """A worker process ended without sending its job's result back."""


def ordered_map(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int, *, what: str,
                setup: Callable[[], None] | None = None) -> Iterator[Any]:
    """``fn(*job)`` for every job, computed in ``workers`` spawned processes, yielded in the jobs'
    order. ``fn`` and ``setup`` (run once in each worker) are module-level functions, so a child
    can import them. An exception in ``fn`` is raised here with the worker's traceback; a worker
    that dies raises :class:`WorkerDied`, naming ``what`` it was doing. At most ``2 * workers``
    jobs run ahead of the one being read, so a slow reader holds a bounded number of results.
    Workers die with this process, and closing the iterator early stops them."""
    workers = max(1, min(workers, len(jobs)))
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    busy: dict[int, int] = {}  # worker -> the job it runs
    try:
        for _ in range(workers):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker_loop, args=(theirs, os.getpid(), fn, setup), daemon=True)
            proc.start()
            theirs.close()  # so a dead worker's pipe reads as closed here
            procs.append(proc)
            conns.append(ours)
        idle, done, sent, nxt = list(range(workers)), {}, 0, 0
        while nxt < len(jobs):
            while idle and sent < min(len(jobs), nxt + 2 * workers):
                w = idle.pop()
                _send(conns[w], (sent, jobs[sent]), what)
                busy[w], sent = sent, sent + 1
            if nxt in done:
                yield done.pop(nxt)
                nxt += 1
                continue
            ready = mp.connection.wait([conns[w] for w in busy] + [procs[w].sentinel for w in busy])
            for w in [w for w in busy if conns[w] in ready]:
                try:
                    k, ok, result = conns[w].recv()
                except (EOFError, OSError) as exc:
                    raise _died(what, exc) from exc
                if not ok:
                    raise RuntimeError(f"{what} failed in a worker process:\n{result}")
                done[k] = result
                del busy[w]
                idle.append(w)
            if any(procs[w].sentinel in ready for w in busy):  # gone without its result
                raise _died(what, f"exit code {next(procs[w].exitcode for w in busy if procs[w].sentinel in ready)}")
    finally:
        for w, conn in enumerate(conns):
            if w not in busy:
                with contextlib.suppress(OSError):
                    conn.send(None)  # an idle worker's signal to exit
            conn.close()
        for w, proc in enumerate(procs):
            if w in busy:  # mid-job: its result is no longer wanted
                proc.kill()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _send(conn: Connection, job: tuple, what: str) -> None:
    try:
        conn.send(job)
    except OSError as exc:  # the worker died since its last job
        raise _died(what, exc) from exc


def _died(what: str, cause: object) -> WorkerDied:
    return WorkerDied(f"{what}: a worker process died ({cause}): killed from outside, e.g. by the out-of-memory "
                      "killer? (each worker runs one job at a time; NIRGAN_CPUS sets how many workers run)")


def _worker_loop(conn: Connection, parent: int, fn: Callable[..., Any], setup: Callable[[], None] | None) -> None:
    """A worker: run each job it is sent and send the result back, until told to stop."""
    die_with_parent(parent)  # a kill -9 of the parent leaves no worker behind
    if setup is not None:
        setup()
    while (job := conn.recv()) is not None:
        k, args = job
        try:
            result, ok = fn(*args), True
        except Exception:  # noqa: BLE001 - a bug, not a death: the parent raises it with this traceback
            result, ok = traceback.format_exc(), False
        conn.send((k, ok, result))
