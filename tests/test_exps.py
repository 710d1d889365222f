"""flows.exps: one pipeline's DVC experiments (issue 24: `dvc exp show` mixes the NIR and the
expression experiments). A real git + DVC repo with the project's two pipeline folders, each a
one-stage pipeline, and real `dvc exp run` experiments of each."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from flows import exps

STAGE = textwrap.dedent("""\
    import json, sys, yaml
    section, key, out, metric = sys.argv[1:]
    value = yaml.safe_load(open("params.yaml"))[section][key]
    json.dump({metric: value * 1.5, "shared_metric": 1.0}, open(out, "w"))
""")


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exps")
    _run(["git", "init", "-q", "-b", "main"], root)
    _run(["git", "config", "user.email", "t@nirgan.local"], root)
    _run(["git", "config", "user.name", "t"], root)
    _run(["dvc", "init", "-q"], root)
    (root / "stage.py").write_text(STAGE)
    for folder, section, key, metric in ((".", "train", "seed", "fid"),
                                         ("pipelines/expression", "expression_train", "steps", "accuracy")):
        here = root / folder
        here.mkdir(parents=True, exist_ok=True)
        up = os.path.relpath(root, here)
        (here / "params.yaml").write_text(yaml.safe_dump({section: {key: 1}}))
        (here / "dvc.yaml").write_text(yaml.safe_dump({"stages": {section: {
            "cmd": f"python {up}/stage.py {section} {key} eval.json {metric}",
            "deps": [f"{up}/stage.py"], "params": [section], "metrics": [{"eval.json": {"cache": False}}]}}}))
        _run(["dvc", "repro", "-q"], here)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "two pipelines"], root)
    for name, value in (("nir-2", 2), ("nir-3", 3)):
        _run(["dvc", "exp", "run", "-q", "--temp", "-n", name, "-S", f"train.seed={value}"], root)
    for name, value in (("expr-5", 5), ("expr-7", 7)):
        _run(["dvc", "exp", "run", "-q", "--temp", "-n", name, "-S", f"expression_train.steps={value}"],
             root / "pipelines" / "expression")
    return root


def test_each_pipeline_shows_only_its_own_experiments_and_columns(repo):
    nir = exps.rows("nir", repo, [])
    expression = exps.rows("expression", repo, [])
    assert sorted(r["Experiment"] for r in nir) == ["nir-2", "nir-3"]
    assert sorted(r["Experiment"] for r in expression) == ["expr-5", "expr-7"]
    assert {r["Experiment"]: (r["train.seed"], r["fid"]) for r in nir} == {"nir-2": (2, 3.0), "nir-3": (3, 4.5)}
    assert {r["Experiment"]: (r["expression_train.steps"], r["accuracy"]) for r in expression} == \
        {"expr-5": (5, 7.5), "expr-7": (7, 10.5)}
    assert not any("accuracy" in r or "expression_train.steps" in r for r in nir)
    assert not any("fid" in r or "train.seed" in r for r in expression)


def test_the_table_keeps_the_columns_that_differ_and_all_with_all(repo):
    found = exps.rows("expression", repo, [])
    short = exps.table(found, every_column=False).splitlines()
    assert short[0].split() == ["Experiment", "rev", "Created", "expression_train.steps", "accuracy"]
    assert len(short) == 3
    assert "shared_metric" in exps.table(found, every_column=True).splitlines()[0]


def test_the_command_line_runs_from_inside_a_pipeline_folder(repo):
    out = _run([sys.executable, "-m", "flows.exps", "expression"], repo / "pipelines" / "expression")
    assert "expr-5" in out and "expr-7" in out and "nir-" not in out
    missing = subprocess.run([sys.executable, "-m", "flows.exps", "expression", "--rev", "no-such-rev"], cwd=repo,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
