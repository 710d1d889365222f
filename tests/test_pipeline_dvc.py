"""The whole pipeline under real DVC: repro, no-op repro, and an experiment that reruns
only what its parameter touches."""

import json
import re

import pandas as pd
import pytest
import yaml

from pipeline_project import make_project, project_env, run

STAGES = ["collect", "detect", "clean", "augment", "split", "baselines", "train", "evaluate", "generate"]


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([a-z]+)'", output)


@pytest.mark.e2e
def test_dvc_repro_noop_and_experiment(tmp_path):
    root = make_project(tmp_path / "project")
    env = project_env(root)

    first = run(["dvc", "repro"], cwd=root, env=env)
    assert ran_stages(first.stdout) == STAGES, first.stdout

    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)
    metrics = json.loads((root / "metrics/eval.json").read_text())
    assert metrics, "evaluate wrote no metrics"
    raw = pd.read_parquet(root / "data/raw/manifest.parquet")
    crops = pd.read_parquet(root / "data/crops/manifest.parquet")
    crop_rejects = pd.read_parquet(root / "data/crops/rejects.parquet")
    assert len(crops) + crop_rejects["pair_id"].nunique() == len(raw)  # every pair accounted for
    assert (root / "mlflow.db").exists()
    generated = pd.read_parquet(root / "data/generated/labels.parquet")  # the demo dataset, from the new model
    assert len(generated) == 20 and (root / "models/label_estimator.pt").exists()

    again = run(["dvc", "repro"], cwd=root, env=env)
    assert ran_stages(again.stdout) == [], again.stdout

    assert metrics["baselines_from"] == "models/baselines", metrics["baselines_from"]

    # a training param: the baselines stage's record is reused, and evaluate uses it
    exp = run(["dvc", "exp", "run", "-n", "lr-g", "-S", "train.lr_g=0.0001"], cwd=root, env=env)
    assert ran_stages(exp.stdout) == ["train", "evaluate", "generate"], exp.stdout
    assert json.loads((root / "metrics/eval.json").read_text())["baselines_from"] == "models/baselines"
    shown = run(["dvc", "exp", "show", "--json"], cwd=root, env=env).stdout
    assert "lr-g" in shown
    diff = run(["dvc", "metrics", "show", "--json"], cwd=root, env=env).stdout
    assert "eval.json" in diff


EXPRESSION_STAGES = ["collect_expression", "detect_expression", "clean_expression", "augment_expression", "split_expression",
                     "train_expression", "evaluate_expression"]


@pytest.mark.e2e
def test_expression_pipeline_repro_and_experiment(tmp_path):
    # Issue 13: `dvc repro` and `dvc exp run` of the second pipeline, in its own folder.
    root = make_project(tmp_path / "project")
    here, env = root / "pipelines" / "expression", project_env(root)

    first = run(["dvc", "repro"], cwd=here, env=env)
    assert re.findall(r"Running stage '([a-z_]+)'", first.stdout) == EXPRESSION_STAGES, first.stdout
    metrics = json.loads((here / "metrics/eval_expression.json").read_text())
    assert 0.0 <= metrics["expr_target_accuracy"] <= 1.0 and len(metrics["expr_labels"].split(",")) == 7
    raw = pd.read_parquet(here / "data/raw/manifest.parquet")
    assert len(raw) == 4 * 7 * 2 and not (root / "data" / "raw").exists(), "wrote into the NIR pipeline's data"
    status = run(["dvc", "status", "dvc.yaml"], cwd=here, env=env).stdout
    assert "up to date" in status, status

    exp = run(["dvc", "exp", "run", "-n", "expr-lr-d", "-S", "expression_train.lr_d=5e-4"], cwd=here, env=env)
    assert re.findall(r"Running stage '([a-z_]+)'", exp.stdout) == ["train_expression", "evaluate_expression"], \
        exp.stdout
    shown = run(["dvc", "exp", "show", "--json"], cwd=here, env=env).stdout
    assert "expr-lr-d" in shown and "eval_expression.json" in shown
