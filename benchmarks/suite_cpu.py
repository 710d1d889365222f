"""Where the test suite's CPU time goes, by kind of process (issue 22 item 7: `make test` ≤ 12 min).

It runs pytest as `make test` does (or with the arguments after ``--``) with a hook that makes
every Python process of the venv record, when it exits, its argv, its own CPU seconds (user +
system, children not included) and which of torch, mlflow, prefect and dvc it imported. It then
sums them by kind: the pytest workers (the tests' in-process work), each ``nirgan stage``, DVC,
Prefect and so on.

The hook is a ``.pth`` file in the venv's site-packages (a module on PYTHONPATH would miss the
many processes the tests start with a PYTHONPATH of their own), removed when the run ends; it
records only where ``NIRGAN_SUITE_CPU_DIR`` is set, so one left behind by a killed run does
nothing. What it cannot see: processes ended by a signal (the servers the tests stop, the stages
the drills kill). The total it prints beside the CPU time of all pytest's processes (from
``resource``, over the children waited for) says how much that is.

    .venv/bin/python benchmarks/suite_cpu.py [--out FILE] [-- pytest arguments]

Run it on an idle machine; it takes as long as the suite.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENV = "NIRGAN_SUITE_CPU_DIR"
HOOK_NAME = "nirgan_suite_cpu_hook"
HOOK = '''import atexit, json, os, sys, time, resource
_folder, _t0 = os.environ.get("NIRGAN_SUITE_CPU_DIR"), time.time()
def _record():
    try:
        r = resource.getrusage(resource.RUSAGE_SELF)
        mods = [m for m in ("torch", "mlflow", "prefect", "dvc", "pytest") if m in sys.modules]
        with open(os.path.join(_folder, f"{os.getpid()}_{int(_t0 * 1e6)}.json"), "w") as f:
            json.dump({"argv": sys.argv[:6], "cpu": r.ru_utime + r.ru_stime, "wall": time.time() - _t0,
                       "mods": mods}, f)
    except Exception:
        pass
if _folder:
    atexit.register(_record)
'''


def kind(argv: list[str], mods: list[str]) -> str:
    """A process's kind: the pytest workers, ``nirgan stage <name>``, ``dvc <command>``, ..."""
    words = " ".join(argv)
    if "pytest" in mods and ("pytest" in words or "xdist" in words or argv[:1] == ["-c"]):
        return "pytest (workers and main)"
    if "stage" in argv and "nirgan" in words and argv.index("stage") + 1 < len(argv):
        return f"nirgan stage {argv[argv.index('stage') + 1]}"
    program = Path(argv[0]) if argv else Path()
    program = "nirgan" if program.parts[-2:] == ("nirgan", "cli.py") else program.name  # python -m nirgan.cli
    for tool in ("nirgan", "dvc", "prefect", "mlflow"):
        if tool in program:
            return f"{tool} {' '.join(argv[1:3])}".strip()
    return "other " + " ".join(Path(a).name for a in argv[:3])


def summarise(folder: Path) -> dict:
    rows = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    by_kind: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for r in rows:
        k = by_kind[kind(r["argv"], r["mods"])]
        k[0] += 1
        k[1] += r["cpu"]
    torch_children = sum(1 for r in rows if "torch" in r["mods"] and "pytest" not in r["mods"])
    return {"processes": len(rows), "cpu_s": round(sum(r["cpu"] for r in rows), 1),
            "child_processes_importing_torch": torch_children,
            "by_kind": {k: {"processes": n, "cpu_s": round(c, 1), "cpu_s_each": round(c / n, 2)}
                        for k, (n, c) in sorted(by_kind.items(), key=lambda kv: -kv[1][1])}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the summary here as JSON as well")
    ap.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments (default: as `make test`)")
    args = ap.parse_args()
    from nirgan.cores import available_cores

    pytest_args = args.pytest_args or ["-q", "-n", str(min(4, available_cores() + 1)), "--dist", "loadfile",
                                       "--no-loadscope-reorder"]
    site_packages = Path(sysconfig.get_paths()["purelib"])
    hook, pth = site_packages / f"{HOOK_NAME}.py", site_packages / f"{HOOK_NAME}.pth"
    with tempfile.TemporaryDirectory() as records:
        hook.write_text(HOOK)
        pth.write_text(f"import {HOOK_NAME}\n")
        try:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT,
                                  env={**os.environ, ENV: records})
            wall = time.monotonic() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        finally:
            pth.unlink(missing_ok=True)
            hook.unlink(missing_ok=True)
        summary = summarise(Path(records))
    summary.update(pytest_exit_code=done.returncode, wall_s=round(wall, 1),
                   all_children_cpu_s=round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1))
    print(f"\n{summary['wall_s']} s wall; CPU {summary['all_children_cpu_s']} s in all, "
          f"{summary['cpu_s']} s in the {summary['processes']} processes that recorded themselves")
    for name, k in summary["by_kind"].items():
        print(f"{k['cpu_s']:8.1f} CPU s {k['processes']:5d} processes {k['cpu_s_each']:6.2f} each  {name}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
