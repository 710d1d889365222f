"""Compiled Python modules: cached once (the Makefile), and never a reason for DVC to rerun a stage.

Without a bytecode cache every stage, server and worker process compiles each module it imports
again (this CI image sets PYTHONDONTWRITEBYTECODE); with Python's default cache beside the
sources, a stage whose deps include a source folder went stale once another process imported
from that folder (and in a clone without the bytecode).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_make_recipes_cache_bytecode_under_the_venv_even_where_the_environment_forbids_it(tmp_path: Path):
    """The real Makefile, run by real make with PYTHONDONTWRITEBYTECODE=1 in the environment; the
    venv's `nirgan` is a stand-in that records the two variables its recipe hands it."""
    venv_bin, seen = tmp_path / ".venv" / "bin", tmp_path / "seen"
    venv_bin.mkdir(parents=True)
    for name in ("python", "nirgan"):
        (venv_bin / name).write_text(
            f'#!/bin/sh\necho "prefix=$PYTHONPYCACHEPREFIX dont=${{PYTHONDONTWRITEBYTECODE-unset}}" >> {seen}\n')
        (venv_bin / name).chmod(0o755)
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / ".venv" / ".installed").touch()  # newer than pyproject.toml: no install
    env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(["make", "-s", "check-params"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert seen.read_text().splitlines() == [f"prefix={tmp_path / '.venv' / 'pycache'} dont=unset"]


def test_bytecode_beside_a_stages_source_folder_leaves_the_pipeline_up_to_date(tmp_path: Path):
    """A real git + DVC repo with this project's .dvcignore and a stage that depends on a source
    folder and imports from it, with Python's default cache (``__pycache__`` beside the source)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env.update(DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "stage.py").write_text("open('out.txt', 'w').write('done')\n")
    shutil.copy(REPO / ".dvcignore", tmp_path / ".dvcignore")
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    (tmp_path / "dvc.yaml").write_text(
        f"stages:\n  stage:\n    cmd: {sys.executable} -c 'import pkg.stage'\n    deps: [pkg]\n    outs: [out.txt]\n")
    (tmp_path / "pkg" / "other.py").write_text("")
    run("dvc", "repro")
    assert list((tmp_path / "pkg" / "__pycache__").glob("stage.*.pyc")), "Python wrote no bytecode beside pkg"
    assert "up to date" in run("dvc", "status"), "the stage is stale after its own run"
    run(sys.executable, "-c", "import pkg.other")  # another stage, or a user, imports from the folder
    assert "up to date" in run("dvc", "status"), "the stage is stale once another process imported its code"
    shutil.rmtree(tmp_path / "pkg" / "__pycache__")  # a fresh clone has no bytecode
    assert "up to date" in run("dvc", "status"), "the stage is stale in a clone without bytecode"
