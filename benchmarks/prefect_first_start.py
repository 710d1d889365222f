"""What a migrated Prefect database saves a server's start: tests/prefect_db.py's reason.

A Prefect server on a new SQLite database runs every migration before it answers. The tests whose
subject is not that first start copy a database that ``prefect server database upgrade`` migrated
once per session. Two arms, alternating, each the stack's own Prefect server (``start_prefect``,
as the tests start it) on a free loopback port in a new state folder, timed until its health check
answers (``wait_healthy``), and its CPU seconds (user + system, read from /proc before it is
stopped by PID):
- ``new``: an empty PREFECT_HOME, as on a fresh clone;
- ``migrated``: a PREFECT_HOME holding a copy of the migrated database.

    .venv/bin/python benchmarks/prefect_first_start.py [--rounds 4]

Run it on an idle machine: the columns are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from flows import stack as stack_mod  # noqa: E402
from flows.stack_services import free_port, start_prefect, wait_healthy  # noqa: E402
from prefect_db import build, seed_prefect_home  # noqa: E402  (the tests' own builder and copy)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def start_once(state: Path, template: Path | None) -> tuple[float, float]:
    """(seconds until healthy, CPU seconds by then) of one Prefect server with its state in
    ``state``, on a copy of ``template`` or (None) a new database."""
    st = stack_mod.Stack(root=ROOT, state=state, prefect_port=free_port(), mlflow_port=free_port(), ui=False)
    if template is not None:
        seed_prefect_home(Path(st.env()["PREFECT_HOME"]), template)
    try:
        pid = start_prefect(st)
        wall = wait_healthy(st, "prefect-server", f"{st.prefect_api}/health", "true", timeout=180)
        return wall, _cpu_seconds(pid)
    finally:
        stack_mod.down(state)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "template").mkdir()
        build(tmp / "template")
        rows: dict[str, list[tuple[float, float]]] = {"new": [], "migrated": []}
        for r in range(args.rounds):
            for arm in ("new", "migrated") if r % 2 == 0 else ("migrated", "new"):
                template = tmp / "template" / "prefect.db" if arm == "migrated" else None
                rows[arm].append(start_once(tmp / f"{arm}-{r}", template))
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
