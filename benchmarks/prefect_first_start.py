"""What a migrated Prefect database saves a server's start: tests/prefect_db.py's reason.

A Prefect server on a new SQLite database runs every migration before it answers. The tests whose
subject is not that first start copy a database that ``prefect server database upgrade`` migrated
once per session. Two arms, alternating, each a real ``prefect server start`` on a free loopback
port in a new PREFECT_HOME, timed from launch until ``/api/health`` answers, and its CPU seconds
(user + system, read from /proc before it is stopped):
- ``new``: an empty PREFECT_HOME, as on a fresh clone;
- ``migrated``: a PREFECT_HOME holding a copy of the migrated database.

    .venv/bin/python benchmarks/prefect_first_start.py [--rounds 4]

Run it on an idle machine: the columns are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from flows.stack_services import free_port  # noqa: E402
from flows.stack_settings import BIN  # noqa: E402
from prefect_db import build, seed_prefect_home  # noqa: E402  (the tests' own builder and copy)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def start_once(home: Path) -> tuple[float, float]:
    """(seconds until healthy, CPU seconds by then) of one server in ``home``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > 180:
                raise RuntimeError("prefect server not healthy in 180 s")
            time.sleep(0.1)
        wall = time.monotonic() - t0
        cpu = _cpu_seconds(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "template").mkdir()
        build(tmp / "template")
        rows: dict[str, list[tuple[float, float]]] = {"new": [], "migrated": []}
        for r in range(args.rounds):
            for arm in ("new", "migrated") if r % 2 == 0 else ("migrated", "new"):
                home = tmp / f"{arm}-{r}"
                if arm == "migrated":
                    seed_prefect_home(home, tmp / "template" / "prefect.db")
                rows[arm].append(start_once(home))
                shutil.rmtree(home, ignore_errors=True)
                print(f"round {r} {arm:8s} healthy after {rows[arm][-1][0]:5.1f} s, {rows[arm][-1][1]:5.1f} CPU s",
                      flush=True)
    med = {arm: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for arm, v in rows.items()}
    summary = {"rounds": args.rounds, **{f"{arm}_{k}": round(x, 2) for arm, (w, c) in med.items()
                                          for k, x in (("healthy_s", w), ("cpu_s", c))},
               "saved_s": round(med["new"][0] - med["migrated"][0], 2),
               "saved_cpu_s": round(med["new"][1] - med["migrated"][1], 2)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
