"""Two families over one core (issue 20 item 3), in DVC's own terms: an edit to one family's code
reruns none of the other family's stages.

The repository (its committed params, dvc.yaml files and dvc.lock files, no data) is copied into a
fresh git repo, one network file of a family is edited, and ``dvc status`` says which stages of
both pipelines that edit changes. tests/test_structure.py checks the same statically, for every
module, through the import graph (the code deps of every stage are its import closure).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPRESSION = "pipelines/expression/"
OUTPUTS = ("data/", "models/", "metrics/", "plots/")


def _copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        inner = rel[len(EXPRESSION):] if rel.startswith(EXPRESSION) else rel
        if inner.startswith(OUTPUTS) or not (REPO / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def _stages_changed_by(root: Path, edited: str) -> set[str]:
    """The stages (``pipelines/expression/dvc.yaml:<name>`` for the expression pipeline) whose
    deps ``dvc status`` reports changed at ``edited``."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(root)}
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "--json"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tail = edited.removeprefix("src/")
    changed = set()
    for stage, entries in json.loads(proc.stdout or "{}").items():
        deps = [d for e in entries if isinstance(e, dict) for d in e.get("changed deps", {})]
        if any(d.endswith(tail) for d in deps):
            changed.add(stage)
    return changed


@pytest.mark.parametrize(("edited", "family"), [
    ("src/nirgan/expression/models/stargan.py", "expression"),
    ("src/nirgan/models/multinorm.py", "nir"),
])
def test_an_edit_to_one_familys_network_reruns_only_that_familys_stages(tmp_path: Path, edited: str, family: str):
    _copy(tmp_path)
    assert not _stages_changed_by(tmp_path, edited), "the copy is not the committed state"
    with (tmp_path / edited).open("a") as f:
        f.write("\n# an edit\n")
    changed = _stages_changed_by(tmp_path, edited)
    expression = {s for s in changed if s.startswith(EXPRESSION)}
    nir = changed - expression
    ours, theirs = (expression, nir) if family == "expression" else (nir, expression)
    assert ours, f"editing {edited} reruns none of its own family's stages: {changed}"
    assert not theirs, f"editing {edited} ({family}) reruns the other family's stages {sorted(theirs)}"
