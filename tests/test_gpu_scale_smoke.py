"""benchmarks/gpu_scale.sh --smoke: the GPU-scale script (NIR pipeline with generate, then the
expression pipeline) runs end to end on a CPU at a tiny size,
so it cannot rot; its wall budget (train.max_minutes) is what ends the training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_gpu_scale_smoke(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_scale.sh"), "--smoke", "--train-minutes", "0.05"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for name in ("eval.json", "train.json", "samples.png", "gpu_scale.log"):
        assert (out / name).stat().st_size > 0, name
    # the budget, not max steps, ended training: 50 epochs would be far more steps
    train = json.loads((out / "train.json").read_text())
    assert 1 <= train["steps"] < summary["pairs"] * 50 // 4
    assert train["wall_s"] >= 0.05 * 60
    assert summary["pairs_per_s"] > 0
    m = summary["figures"]
    for key in ("utility_tstr_head_deg", "utility_trtr_head_deg", "utility_tstr_over_trtr_gaze", "judge_auc",
                "judge_auc_real_vs_real", "judge_auc_blurred_real", "judge_auc_untrained"):
        assert isinstance(m[key], float), (key, m.get(key))
    assert "pose_gen_head_mean" in m
    assert summary["generate"]["images"] == 8 and summary["generate"]["images_per_s"] > 0
    expression = summary["expression"]
    assert set(expression["stage_seconds"]) >= {"collect", "train_expression", "evaluate_expression"}
    assert isinstance(expression["figures"]["expr_target_accuracy"], float)
    assert (out / "eval_expression.json").stat().st_size > 0
