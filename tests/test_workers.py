"""nirgan.workers.ordered_map, the process fan-out under the twin's renderer and generate's shard
writer: results in the jobs' order, a worker's exception raised with its traceback, a killed
worker an error at once (not a hang), and no worker left once the reader stops. The jobs are
standard-library functions, so the spawned children import them as the stages' are."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time

import pytest

from nirgan.workers import WorkerDied, ordered_map


@pytest.mark.timeout(120)
def test_results_come_in_the_jobs_order_whatever_finishes_first():
    # the first job sleeps longest, so the workers finish out of order
    jobs = [(0.6,), (0.0,), (0.2,), (0.0,), (0.1,)]
    assert list(ordered_map(time.sleep, jobs, 3, what="sleeping")) == [None] * 5
    assert list(ordered_map(math.factorial, [(n,) for n in range(12)], 2, what="factorials")) == \
        [math.factorial(n) for n in range(12)]


@pytest.mark.timeout(120)
def test_an_exception_in_a_job_is_raised_with_the_workers_traceback():
    with pytest.raises(RuntimeError, match=r"(?s)factorials failed in a worker process:.*ValueError"):
        list(ordered_map(math.factorial, [(3,), (-1,), (4,)], 2, what="factorials"))


@pytest.mark.timeout(120)
def test_a_killed_worker_is_an_error_naming_the_work_not_a_hang():
    results = ordered_map(time.sleep, [(0.0,)] + [(30.0,)] * 4, 2, what="twin rendering")
    assert next(results) is None
    for child in multiprocessing.active_children():
        os.kill(child.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(WorkerDied, match="twin rendering: a worker process died"):
        next(results)
    assert time.monotonic() - started < 10
    assert not multiprocessing.active_children()


@pytest.mark.timeout(120)
def test_a_reader_that_stops_early_leaves_no_worker_behind():
    results = ordered_map(time.sleep, [(0.0,)] * 2 + [(30.0,)] * 4, 2, what="sleeping")
    next(results)
    assert len(multiprocessing.active_children()) == 2
    results.close()
    assert not multiprocessing.active_children()
