"""benchmarks/suite_cpu.py: its hook records a real process's CPU time and imports, and the
summary sorts processes by kind (the tool that says where `make test`'s CPU time goes)."""

from __future__ import annotations

import os
import subprocess
import sys

import suite_cpu


def test_the_hook_records_a_process_and_the_summary_names_its_kind(tmp_path):
    code = suite_cpu.HOOK + "\nsum(i * i for i in range(3_000_000))\n"  # some CPU time to record
    env = {**os.environ, suite_cpu.ENV: str(tmp_path)}
    # -S: no site-packages, so only this hook runs, even under suite_cpu.py's own .pth hook
    subprocess.run([sys.executable, "-S", "-c", code], env=env, check=True, timeout=120)
    subprocess.run([sys.executable, "-S", "-c", suite_cpu.HOOK], env={**os.environ, suite_cpu.ENV: ""}, check=True,
                   timeout=120)  # unset: records nothing
    summary = suite_cpu.summarise(tmp_path)
    assert summary["processes"] == 1 and summary["cpu_s"] > 0.05, summary
    assert list(summary["by_kind"]) == ["other -c"], summary


def test_kinds():
    assert suite_cpu.kind(["/v/bin/nirgan", "stage", "train"], ["torch"]) == "nirgan stage train"
    assert suite_cpu.kind(["/v/bin/dvc", "exp", "run", "-n"], ["dvc"]) == "dvc exp run"
    assert suite_cpu.kind(["/r/src/nirgan/cli.py", "--params", "p.yaml", "export"], ["torch"]) == "nirgan --params p.yaml"
    assert suite_cpu.kind(["-c"], ["pytest", "torch"]) == "pytest (workers and main)"  # an xdist worker
    assert suite_cpu.kind(["-c"], ["torch"]) == "other -c"
    assert suite_cpu.kind(["/v/bin/prefect", "server", "start"], ["prefect"]) == "prefect server start"
