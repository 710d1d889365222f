"""One pipeline's DVC experiments (issue 24): ``dvc exp show`` lists every experiment of the
baseline, whichever dvc.yaml made it, with the params and metrics of both pipelines as columns,
and DVC 3.67 has no option that selects rows by pipeline (``--keep``/``--drop``/``--only-changed``
select columns; running it inside ``pipelines/expression`` changes nothing).

An experiment belongs to a pipeline when its commit changed that pipeline's ``dvc.lock``: what
``dvc exp run`` or ``dvc exp save`` of that pipeline writes, as the train-nir and train-expression
flows do. The table is DVC's own ``dvc exp show --json`` cut to those experiments and to the
files of that pipeline (its params.yaml and metrics), and, as ``--only-changed`` does, to the
columns whose values differ between them::

    python -m flows.exps expression           # the expression pipeline's experiments of HEAD
    python -m flows.exps nir -A --all         # every NIR experiment in the repo, every column
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PIPELINES = {"nir": ".", "expression": "pipelines/expression"}  # name -> folder of its dvc.yaml
_BESIDE = Path(sys.executable).parent / "dvc"
DVC = str(_BESIDE) if _BESIDE.exists() else "dvc"  # this environment's, as the flows run it


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed in {cwd}: {last}")
    return proc.stdout


def owner(path: str) -> str:
    """The pipeline a file of the repo belongs to: the one whose folder holds it most closely."""
    holding = [n for n, f in PIPELINES.items() if f == "." or path == f or path.startswith(f + "/")]
    return max(holding, key=lambda n: len(PIPELINES[n]))


def pipelines_of(commit: str, root: Path) -> set[str]:
    """The pipelines whose dvc.lock the experiment commit changed against its baseline."""
    changed = set(_run(["git", "diff", "--name-only", f"{commit}^1", commit], root).split())
    return {name for name, folder in PIPELINES.items() if str(Path(folder) / "dvc.lock") in changed}


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def rows(pipeline: str, root: Path, show_args: list[str]) -> list[dict[str, Any]]:
    """One row per experiment of ``pipeline`` among those ``dvc exp show <show_args>`` lists: its
    name, revision, time, and the params and metrics of that pipeline's own files."""
    shown = json.loads(_run([DVC, "exp", "show", "--json", "--hide-workspace", *show_args], root) or "[]")
    out = []
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                if not data or pipeline not in pipelines_of(rev["rev"], root):
                    continue
                row = {"Experiment": rev.get("name") or exp.get("name") or rev["rev"][:7],
                       "rev": rev["rev"][:7], "Created": (data.get("timestamp") or "")[:16]}
                for kind in ("params", "metrics"):
                    for path, content in sorted((data.get(kind) or {}).items()):
                        if owner(path) == pipeline:
                            row.update(_flat((content or {}).get("data") or {}))
                out.append(row)
    return out


def table(found: list[dict[str, Any]], every_column: bool) -> str:
    """Aligned text; without ``every_column``, the params and metrics that differ between rows."""
    columns = list(dict.fromkeys(k for row in found for k in row))
    if not every_column and len(found) > 1:
        fixed = ["Experiment", "rev", "Created"]
        columns = fixed + [c for c in columns if c not in fixed and len({repr(r.get(c)) for r in found}) > 1]
    cells = [[str(r.get(c, "-")) for c in columns] for r in found]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one pipeline's DVC experiments, as `dvc exp show` lists them")
    parser.add_argument("pipeline", choices=sorted(PIPELINES))
    parser.add_argument("--all", action="store_true", help="every column, not only those that differ")
    args, show_args = parser.parse_known_args(argv)  # the rest goes to `dvc exp show` (-A, --rev, -n)
    try:
        root = Path(_run(["git", "rev-parse", "--show-toplevel"], Path.cwd()).strip())
        found = rows(args.pipeline, root, show_args)
    except RuntimeError as exc:
        print(f"exps: {exc}", file=sys.stderr)
        return 2
    print(table(found, args.all) if found else f"no experiments of the {args.pipeline} pipeline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
