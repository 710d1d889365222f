"""Does a rerun reproduce the committed figures? Bit for bit, within seed spread, or not at all.

    .venv/bin/python benchmarks/figures_vs_committed.py [--rev HEAD] [--file metrics/eval.json] [--k 3]

Compares each number of the working copy's metrics file with the one committed at ``--rev``.
A figure that evaluate measures over several seeds carries its spread as ``<name>_std``; it
agrees when the two values differ by at most ``k`` times the larger of the two spreads
(``--k``, default 3). A count (an integer: pairs, flagged frames) must match exactly, since
the data stages give the same bytes on every CPU; any other figure without a spread is a
single-fit reading (one estimator, one ratio) and must match to ``--rel`` (default 0.25)
relative. Spreads (``*_std``) and timings (``evaluate_seconds_*``) are not compared. Prints one line per figure that is not identical
and a summary; exits 1 if any figure is outside its tolerance. Use it after ``make repro`` on
another machine: same-machine reruns are identical, other CPUs agree within the spread.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def compare(old: dict, new: dict, k: float, rel: float) -> tuple[list[str], int, int]:
    lines, identical, outside = [], 0, 0
    for name in sorted(set(old) | set(new)):
        if name.startswith("evaluate_seconds_") or name.endswith("_std"):
            continue  # timings, and spreads (a spread over 3 seeds is itself too noisy to compare)
        a, b = old.get(name), new.get(name)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            if a != b:
                lines.append(f"  {name}: {a!r} -> {b!r}  (not a number on one side)")
                outside += 1
            else:
                identical += 1
            continue
        if a == b or (math.isnan(a) and math.isnan(b)):
            identical += 1
            continue
        spread = max(abs(old.get(f"{name}_std", 0.0) or 0.0), abs(new.get(f"{name}_std", 0.0) or 0.0))
        exact = isinstance(a, int) and isinstance(b, int)  # counts
        tol = 0.0 if exact else k * spread if spread > 0 else rel * max(abs(a), abs(b))
        ok = abs(b - a) <= tol
        outside += not ok
        how = "exact (a count)" if exact else f"{k:g} x spread {spread:.3g}" if spread > 0 else f"relative {rel:g}"
        lines.append(f"  {'ok ' if ok else 'OUT'} {name}: {a:.6g} -> {b:.6g}  (|diff| {abs(b - a):.3g}, tolerance {how})")
    return lines, identical, outside


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--file", default="metrics/eval.json")
    ap.add_argument("--k", type=float, default=3.0)
    ap.add_argument("--rel", type=float, default=0.25)
    args = ap.parse_args()
    committed = subprocess.run(["git", "show", f"{args.rev}:{args.file}"], cwd=ROOT, capture_output=True, text=True)
    if committed.returncode != 0:
        print(f"{args.file} is not committed at {args.rev}: {committed.stderr.strip()}", file=sys.stderr)
        return 2
    path = ROOT / args.file
    if not path.is_file():
        print(f"{path} does not exist: run the pipeline first (make repro)", file=sys.stderr)
        return 2
    lines, identical, outside = compare(json.loads(committed.stdout), json.loads(path.read_text()), args.k, args.rel)
    print(f"{args.file} against {args.rev}: {identical} identical, {len(lines) - outside} within tolerance, {outside} outside")
    print("\n".join(lines))
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
