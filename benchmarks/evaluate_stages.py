"""Evaluate before and after the baselines stage, side by side on the default run's files.

Three ways of getting ``metrics/eval.json`` from the same data and the same trained generator,
each in its own child process with the threads the stage gets, alternating, ``--repeats`` times:

  before     the evaluate stage of commit ``--before`` (everything in one stage);
  fresh      this code as a fresh ``dvc repro`` runs it: the baselines stage, then evaluate;
  reuse      this code as a ``dvc exp run`` over a training param runs it: evaluate alone,
             reading the baselines stage's record (the fresh arm's).

Inputs are the working copy's ``data/`` and ``models/generator.pt`` / ``encoder.pt`` (run
``dvc repro`` first); outputs go to a temporary folder, and no arm logs to MLflow (the copies
carry no ``mlflow_run.json``). Prints each arm's seconds as it lands, then the ratios, and the
figures of each arm against ``before``'s (benchmarks/figures_vs_committed.py's tolerance).

    python benchmarks/evaluate_stages.py --before c21f227 [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from figures_vs_committed import compare  # noqa: E402

CHILD = """
import sys, time, json
from pathlib import Path
from nirgan.config import load_config
cfg = load_config(Path({params!r}))
data, out = Path({data!r}), Path({out!r})
stages = {stages!r}
seconds = {{}}
for name in stages:
    started = time.perf_counter()
    if name == "baselines":
        from nirgan.stages import baselines
        baselines.run(cfg, data / "prepared", data / "split", out / "models")
    else:
        from nirgan.stages import evaluate
        evaluate.run(cfg, data / "raw", data / "crops", data / "clean", data / "prepared", data / "split",
                     out / "models", out / "metrics" / "eval.json", out / "plots")
    seconds[name] = time.perf_counter() - started
print("SECONDS " + json.dumps(seconds))
"""


def run_arm(src: Path, stages: list[str], out: Path) -> dict[str, float]:
    code = CHILD.format(params=str(ROOT / "params.yaml"), data=str(ROOT / "data"), out=str(out), stages=stages)
    env = {**__import__("os").environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=out, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{stages} under {src} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("SECONDS ")][-1]
    return json.loads(line[len("SECONDS "):])


def fresh_models(out: Path) -> None:
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    for name in ("generator.pt", "encoder.pt"):
        shutil.copy2(ROOT / "models" / name, models / name)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the commit whose evaluate stage is the baseline")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args(argv)
    if not (ROOT / "models" / "generator.pt").exists():
        raise SystemExit("no models/generator.pt: run `dvc repro` first")
    rows: dict[str, list[dict[str, float]]] = {"before": [], "fresh": [], "reuse": []}
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(f"git archive {args.before} src | tar -x -C {tmp}", shell=True, cwd=ROOT, check=True)
        old_src = tmp / "src"
        for r in range(args.repeats):
            for arm in ("before", "fresh", "reuse"):
                out = tmp / f"{arm}{r}"
                if arm == "reuse":  # the fresh arm's record, as dvc exp run finds it
                    shutil.copytree(tmp / f"fresh{r}" / "models", out / "models")
                else:
                    fresh_models(out)
                stages = {"before": ["evaluate"], "fresh": ["baselines", "evaluate"], "reuse": ["evaluate"]}[arm]
                seconds = run_arm(old_src if arm == "before" else ROOT / "src", stages, out)
                rows[arm].append(seconds)
                figures[arm] = json.loads((out / "metrics" / "eval.json").read_text())
                print(f"repeat {r + 1} {arm:6s} " + "  ".join(f"{k} {v:6.1f} s" for k, v in seconds.items()),
                      flush=True)
                if arm == "reuse":
                    assert figures[arm]["baselines_from"] == str(out / "models" / "baselines"), figures[arm]["baselines_from"]

    def best(arm: str) -> float:
        return min(sum(s.values()) for s in rows[arm])

    print(f"\nbest of {args.repeats}: before {best('before'):.1f} s; fresh (baselines + evaluate) {best('fresh'):.1f} s "
          f"({best('before') / best('fresh'):.2f}x); reuse (evaluate with the record) {best('reuse'):.1f} s "
          f"({best('before') / best('reuse'):.2f}x)")
    result = {"before": args.before, "seconds": rows, **compare_arms(figures)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def compare_arms(figures: dict[str, dict]) -> dict[str, object]:
    """Each arm's figures against before's, and reuse's against fresh's (figures_vs_committed's
    tolerance), printed and returned."""
    out: dict[str, object] = {"figures_vs_before": {}}
    for arm in ("fresh", "reuse"):
        lines, identical, within, outside = compare(figures["before"], figures[arm], 3.0, 0.25)
        print(f"\n{arm} against before: {identical} identical, {within} within tolerance, {outside} outside")
        print("\n".join(lines))
        out["figures_vs_before"][arm] = {"identical": identical, "within": within, "outside": outside, "lines": lines}
    lines, identical, within, outside = compare(figures["fresh"], figures["reuse"], 3.0, 0.25)
    print(f"\nreuse against fresh: {identical} identical, {outside} outside" + ("\n" + "\n".join(lines) if lines else ""))
    out["reuse_vs_fresh"] = {"identical": identical, "within": within, "outside": outside, "lines": lines}
    return out


if __name__ == "__main__":
    main()
