"""A real folder of faces without labels (``collect.source: folder``, thesis layout
target/<subject>_<camera>/<frame>.png + source/...) through collect..evaluate under real DVC
(issue 12 items 5, 6): every plot dvc.yaml declares exists and `dvc plots show` works, and the
realism figures that use the estimator as feature network say whether it learned anything."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from pipeline_project import make_project, project_env, run

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(1500)
def test_unlabelled_folder_gives_every_plot_and_an_honest_feature_net(tmp_path):
    # No MLflow model: its export (torch.export, about 8 CPU seconds) and registration are tested
    # where they are the subject (tests/test_train.py, tests/test_registry.py, the orchestration).
    root = make_project(tmp_path / "project", {"train": {"log_model": False}})
    env = project_env(root)
    # The faces: the twin's rendered pairs, copied out as a plain folder with no labels table.
    run(["dvc", "repro", "--single-item", "collect"], root, env)
    faces = tmp_path / "faces"
    for domain in ("source", "target"):
        shutil.copytree(root / "data" / "raw" / domain, faces / domain)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["collect"].update(source="folder", path=str(faces))
    params["collect"].pop("labels", None)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    run(["dvc", "repro"], root, env)
    metrics = json.loads((root / "metrics" / "eval.json").read_text())
    assert metrics["pose_real"] == "unavailable"

    declared = [p for entry in yaml.safe_load((root / "dvc.yaml").read_text())["plots"]
                for p in ([entry] if isinstance(entry, str) else
                          [f for v in entry.values() for f in (v.get("y") or {})])]
    missing = [p for p in declared if not (root / p).is_file()]
    assert not missing, missing
    shown = run(["dvc", "plots", "show", "--json"], root, env, check=False)
    assert shown.returncode == 0 and "failed to load" not in (shown.stdout + shown.stderr).lower(), \
        shown.stdout[-2000:] + shown.stderr[-2000:]

    # Item 6: the feature net's subject accuracy on frames it did not train on, against chance.
    acc, chance = metrics["realism_nirfeat_subject_accuracy"], metrics["realism_nirfeat_subject_chance"]
    assert 0.0 <= acc <= 1.0 and 0.0 < chance < 1.0
    assert isinstance(metrics["realism_nirfeat_informative"], bool)
    if not metrics["realism_nirfeat_informative"]:
        assert "chance" in metrics["realism_nirfeat_reason"]
