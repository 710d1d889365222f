"""The stack's workers share the machine's cores (issue 22 item 5): each worker's environment,
which its flow runs and their stages inherit, gives it NIRGAN_CPUS = its share when as many runs
as the pool allows run at once. Without it two CPU runs on 2 cores each started two threads
(benchmarks/concurrent_train.py: 0.30-0.39x the work of one run alone, 0.98-1.35x with a core each)."""

from __future__ import annotations

import pytest

from flows.stack_services import worker_env
from flows.stack_settings import Stack
from nirgan.cores import available_cores


@pytest.mark.parametrize(("workers", "pool_limit", "cores", "share"), [
    (1, None, 16, 16),  # the default CPU stack: one worker, every core
    (4, None, 16, 4),  # one worker per GPU, all four running
    (2, 1, 16, 16),  # two workers, one slot: one run at a time keeps every core
    (3, 2, 16, 8),  # the pool, not the workers, bounds what runs at once
    (4, 8, 16, 4),  # a limit above the workers: each worker still takes one run at a time
    (3, None, 8, 2),  # a remainder core is left idle rather than oversubscribed
    (2, None, 1, 1),  # never below one
])
def test_each_run_gets_its_share_of_the_cores(workers, pool_limit, cores, share):
    assert Stack(gpus=[None] * workers, pool_limit=pool_limit).cores_per_run(cores) == share


def _stack(tmp_path, workers: int, pool_limit: int | None) -> Stack:
    return Stack(root=tmp_path, state=tmp_path / f"state-{workers}-{pool_limit}", gpus=[None] * workers,
                 pool_limit=pool_limit)


def test_a_workers_environment_carries_its_share(tmp_path, monkeypatch):
    monkeypatch.delenv("NIRGAN_CPUS", raising=False)  # the suite runs with 1: measure the machine's own
    cores = available_cores()
    assert worker_env(_stack(tmp_path, 2, None), None)["NIRGAN_CPUS"] == str(max(1, cores // 2))
    assert worker_env(_stack(tmp_path, 2, 1), None)["NIRGAN_CPUS"] == str(cores)
    gpu = worker_env(_stack(tmp_path, 2, None), "1")
    assert gpu["CUDA_VISIBLE_DEVICES"] == "1" and gpu["NIRGAN_CPUS"] == str(max(1, cores // 2))


def test_the_cores_given_to_the_stack_are_what_its_runs_share(tmp_path, monkeypatch):
    monkeypatch.setenv("NIRGAN_CPUS", "1")  # `NIRGAN_CPUS=1 make stack`: one core for all its runs
    assert worker_env(_stack(tmp_path, 2, None), None)["NIRGAN_CPUS"] == "1"
    assert worker_env(_stack(tmp_path, 1, None), None)["NIRGAN_CPUS"] == "1"
