"""nirgan.cores: the cores a process may use are the least of its affinity mask, its cgroup CPU
quota and NIRGAN_CPUS, read from real files laid out as the kernel lays them out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nirgan.cores import available_cores, size_threads

AFFINITY = len(os.sched_getaffinity(0))


def _cgroup_v2(root, content: str):
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(content)
    return root


def test_no_quota_and_no_override_is_the_affinity_mask(tmp_path):
    assert available_cores({}, _cgroup_v2(tmp_path, "max 100000\n")) == AFFINITY
    assert available_cores({}, tmp_path / "no_cgroup_here") == AFFINITY


def test_cgroup_v2_quota_rounds_up_and_never_exceeds_the_mask(tmp_path):
    assert available_cores({}, _cgroup_v2(tmp_path / "a", "50000 100000\n")) == 1  # half a CPU still runs
    assert available_cores({}, _cgroup_v2(tmp_path / "b", "150000 100000\n")) == min(AFFINITY, 2)
    assert available_cores({}, _cgroup_v2(tmp_path / "c", "6400000 100000\n")) == AFFINITY  # 64 CPUs of quota


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores({}, tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no quota"
    assert available_cores({}, tmp_path) == AFFINITY


def test_env_override_lowers_but_never_raises(tmp_path):
    root = _cgroup_v2(tmp_path, "max 100000\n")
    assert available_cores({"NIRGAN_CPUS": "1"}, root) == 1
    assert available_cores({"NIRGAN_CPUS": " 4096 "}, root) == AFFINITY
    assert available_cores({"NIRGAN_CPUS": ""}, root) == AFFINITY
    quota = _cgroup_v2(tmp_path / "q", "100000 100000\n")
    assert available_cores({"NIRGAN_CPUS": "8"}, quota) == 1  # the quota still bounds it


@pytest.mark.parametrize("bad", ["two", "0", "-1", "1.5"])
def test_a_bad_override_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="NIRGAN_CPUS"):
        available_cores({"NIRGAN_CPUS": bad})


def test_size_threads_sets_torch_and_the_children_env():
    before = torch.get_num_threads()
    try:
        env = {"NIRGAN_CPUS": "1"}
        assert size_threads(env) == 1 and torch.get_num_threads() == 1
        assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
        pinned = {"OMP_NUM_THREADS": "1"}  # a user's pin is kept, never raised to the cores
        assert size_threads(pinned) == 1 and pinned["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def test_every_nirgan_command_sizes_its_threads(tmp_path):
    """The CLI's entry: a bad NIRGAN_CPUS ends the command with one line and exit 2, before any
    stage runs; a good one reaches torch (checked in a child, whose pool we can read)."""
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    env = {**os.environ, "NIRGAN_CPUS": "zero"}
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-m", "nirgan.cli", "--params", str(params), "check-params"],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "NIRGAN_CPUS='zero'" in done.stderr
    # in a child whose torch pool starts at 3 threads: the command brings it to NIRGAN_CPUS
    code = (f"import torch; from nirgan import cli; torch.set_num_threads(3); "
            f"rc = cli.main(['--params', {str(params)!r}, 'check-params']); print(rc, torch.get_num_threads())")
    env["NIRGAN_CPUS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split()[-1] == "1", out.stdout + out.stderr
