"""Does a rerun reproduce the committed figures? Bit for bit, within seed spread, or not at all.

    .venv/bin/python benchmarks/figures_vs_committed.py [--rev HEAD] [--file metrics/eval.json] [--k 3]
                                                        [--training-spread FILE]

Compares each number of the working copy's metrics file with the one committed at ``--rev``:

- A count (an integer: pairs, flagged frames) must match exactly: the data stages give the same
  bytes on every CPU.
- A figure evaluate measures over several seeds carries its spread as ``<name>_std``; it agrees
  when the two values differ by at most ``k`` times the larger spread (``--k``, default 3).
- Any other number is a single-fit reading and must match to ``--rel`` (default 0.25) relative.
- When the trained generator differs (``generator_sha256``: another CPU rounds differently and
  trains in fp32 where bf16 is not native), what was trained is another sample of the training
  seed's spread, which the ``_std`` over evaluation seeds under-reads: a figure then agrees
  within ``k`` times its spread over training seeds (``--training-spread``, written by
  ``seed_spread.py --spread-file``), where that is larger.
- What names the run rather than measures it (the generator's digest, the precision that ran:
  :data:`RUN_FACTS`), and the sentences that explain a figure (``*_reason``, which quote numbers
  compared on their own, such as "0.745 < 0.75"), are printed when they differ and never counted
  as figures.

Spreads (``*_std``) and timings (``evaluate_seconds_*``) are not compared. Prints one line per
figure that is not identical and a summary; exits 1 if any figure is outside its tolerance. Use
it after ``make repro`` on another machine: same-machine reruns are identical, other CPUs agree
within the spread.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The default run's spread over training seeds 0-2 (seed_spread.py --spread-file; the machine
# and code it was measured on are in the file).
TRAINING_SPREAD = ROOT / "benchmarks" / "results" / "training_seed_spread.json"
RUN_FACTS = ("generator_sha256", "evaluate_precision")  # what ran, not what was measured
NOT_COUNTED = "  --- "  # the prefix of a line shown but not counted


def compare(old: dict, new: dict, k: float, rel: float,
            training_spread: dict[str, float] | None = None) -> tuple[list[str], int, int, int]:
    """(a line per value that is not identical; how many figures are identical, within tolerance,
    outside it)."""
    lines, identical, within, outside = [], 0, 0, 0
    retrained = old.get("generator_sha256") != new.get("generator_sha256")
    for name in sorted(set(old) | set(new)):
        if name.startswith("evaluate_seconds_") or name.endswith("_std"):
            continue  # timings, and spreads (a spread over 3 seeds is itself too noisy to compare)
        a, b = old.get(name), new.get(name)
        if name in RUN_FACTS or name.endswith("_reason"):
            if a != b:
                what = "what ran" if name in RUN_FACTS else "explains a figure compared on its own"
                lines.append(f"{NOT_COUNTED}{name}: {a!r} -> {b!r}  ({what}, not a figure)")
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            if a != b:
                lines.append(f"  OUT {name}: {a!r} -> {b!r}  (not a number on one side)")
                outside += 1
            else:
                identical += 1
            continue
        if a == b or (math.isnan(a) and math.isnan(b)):
            identical += 1
            continue
        spread = max(abs(old.get(f"{name}_std", 0.0) or 0.0), abs(new.get(f"{name}_std", 0.0) or 0.0))
        seeds = (training_spread or {}).get(name, 0.0) if retrained else 0.0
        exact = isinstance(a, int) and isinstance(b, int)  # counts
        if exact:
            tol, how = 0.0, "exact (a count)"
        elif seeds > spread:
            tol, how = k * seeds, f"{k:g} x training-seed spread {seeds:.3g}"
        elif spread > 0:
            tol, how = k * spread, f"{k:g} x spread {spread:.3g}"
        else:
            tol, how = rel * max(abs(a), abs(b)), f"relative {rel:g}"
        ok = abs(b - a) <= tol
        within, outside = within + ok, outside + (not ok)
        lines.append(f"  {'ok ' if ok else 'OUT'} {name}: {a:.6g} -> {b:.6g}  (|diff| {abs(b - a):.3g}, tolerance {how})")
    return lines, identical, within, outside


def load_training_spread(path: Path) -> dict[str, float]:
    """{figure: sample std over training seeds} from a seed_spread.py --spread-file; {} without one."""
    if not path.is_file():
        return {}
    return {name: float(std) for name, std in json.loads(path.read_text())["std"].items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--file", default="metrics/eval.json")
    ap.add_argument("--k", type=float, default=3.0)
    ap.add_argument("--rel", type=float, default=0.25)
    ap.add_argument("--training-spread", type=Path, default=TRAINING_SPREAD,
                    help="seed_spread.py --spread-file output; used where the trained generator differs")
    args = ap.parse_args()
    committed = subprocess.run(["git", "show", f"{args.rev}:{args.file}"], cwd=ROOT, capture_output=True, text=True)
    if committed.returncode != 0:
        print(f"{args.file} is not committed at {args.rev}: {committed.stderr.strip()}", file=sys.stderr)
        return 2
    path = ROOT / args.file
    if not path.is_file():
        print(f"{path} does not exist: run the pipeline first (make repro)", file=sys.stderr)
        return 2
    old, new = json.loads(committed.stdout), json.loads(path.read_text())
    lines, identical, within, outside = compare(old, new, args.k, args.rel, load_training_spread(args.training_spread))
    print(f"{args.file} against {args.rev}: {identical} identical, {within} within tolerance, {outside} outside")
    if "generator_sha256" in old:
        same = old.get("generator_sha256") == new.get("generator_sha256")
        print(f"the trained generator: {'bit for bit the committed one' if same else 'differs from the committed one'}")
    print("\n".join(lines))
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
