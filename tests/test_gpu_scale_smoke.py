"""benchmarks/gpu_scale.sh --smoke: the device check's deadline logic, on a CPU at a tiny size.

Two real runs of the script (real stages, real worker process, real MTCNN): one with a deadline
far too short for the full plan, which must still end on time with every phase reported and a
valid summary.json; one with room, whose summary must hold every stage's seconds, pairs/s,
TFLOP/s, the curve and the figures. Plus the plan's arithmetic, which needs no run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# benchmarks/ is on sys.path by pyproject.toml's pytest `pythonpath`
from gpu_scale_figures import peak_bf16_tflops
from gpu_scale_plan import PHASES, SMOKE_RATES, Sizes, phase_cost, plan

STATUSES = {"ok", "shortened", "cut", "skipped", "failed"}


def _check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict, float]:
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable,
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_scale.sh"), "--smoke", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((out / "summary.json").read_text()), wall


def _phases(summary: dict) -> dict[str, dict]:
    rows = [r for r in summary["phases"] if r["phase"] != "restart"]  # a worker after a failed phase
    names = [r["phase"] for r in rows]
    assert len(names) == len(set(names)), names  # each phase reported once
    return {r["phase"]: r for r in rows}


def _face_folder(where: Path) -> Path:
    """A folder source in the README's layout, without labels: a tiny twin's frames copied out."""
    from nirgan.config import parse_config
    from nirgan.stages.collect import run as collect

    collect(parse_config({"collect": {"twin": {"subjects": 4, "cameras": 1, "frames": 10}}}), out_dir=where / "raw")
    for domain in ("source", "target"):
        shutil.copytree(where / "raw" / domain, where / "faces" / domain)
    return where / "faces"


@pytest.mark.e2e
def test_short_deadline_ends_on_time_and_reports_every_phase(tmp_path):
    deadline = 45
    faces = _face_folder(tmp_path)
    proc, summary, wall = _check(tmp_path, "--deadline-s", str(deadline), "--expression-minutes", "0.05",
                                 "--collect-path", str(faces))
    # on time: the deadline counts from the script's start; bash and tee exit within a second
    assert wall <= deadline + 2, wall
    assert summary["total_seconds"] <= deadline
    phases = _phases(summary)
    assert ["install", "start", *PHASES] == list(phases)
    for name, row in phases.items():
        assert row["status"] in STATUSES, row
        assert f"gpu_scale: {name} {row['status']}" in proc.stdout  # one line as it ended
        if row["status"] == "skipped":
            assert row["reason"] and row["seconds"] is None, row
        else:
            assert row["seconds"] is not None and row["seconds"] >= 0, row
        if row["status"] == "shortened":
            assert row["cut"], row
        if row["status"] == "cut":
            assert "deadline" in row["reason"], row
    assert phases["collect"]["status"] in ("ok", "shortened")
    assert summary["source"] == {"kind": "folder", "path": str(faces.resolve()), "frames": 40, "labels": None}
    # the full plan does not fit 45 s: something was given up, and said so
    assert any(r["status"] in ("shortened", "cut", "skipped") for n, r in phases.items() if n != "scaling")
    assert "0 card(s)" in phases["scaling"]["reason"]
    assert sum(r["seconds"] or 0 for r in phases.values()) <= summary["total_seconds"] + 1


@pytest.mark.e2e
def test_room_for_every_phase_reports_speed_curve_and_figures(tmp_path):
    proc, summary, wall = _check(tmp_path, "--deadline-s", "240", "--train-minutes", "0.05")
    phases = _phases(summary)
    for name in ("collect", "detect", "clean", "augment", "split", "flops", "train", "evaluate", "curve", "generate"):
        assert phases[name]["status"] == "ok", phases[name]
        assert summary["stage_seconds"][name] > 0
    assert phases["expression"]["status"] == "skipped"  # not asked for
    out = tmp_path / "out"
    for name in ("eval.json", "train.json", "samples.png", "gpu_scale.log", "train_grid.png"):
        assert (out / name).stat().st_size > 0, name
    train = summary["train"]
    # the budget, not the 500 epochs, ended training
    assert 1 <= train["steps"] < summary["pairs"] * 500 // 4
    assert train["pairs_per_s_steady"] > 0 and train["gflop_per_pair"] > 0 and train["tflops"] > 0
    assert train["peak_fraction"] == "unavailable" and "CPU" in train["peak_fraction_reason"]
    points = summary["curve"]["points"]
    assert len(points) >= 3 and points[0]["train_s"] == 0.0
    assert [p["step"] for p in points] == sorted({p["step"] for p in points})
    assert all(isinstance(p["pose_gen_head_mean"], float) and p["realism_swd_laplacian"] > 0 for p in points)
    m = summary["figures"]
    for key in ("utility_tstr_head_deg", "utility_trtr_head_deg", "utility_tstr_over_trtr_gaze", "judge_auc",
                "judge_auc_real_vs_real", "judge_auc_blurred_real", "judge_auc_untrained", "pose_gen_head_mean"):
        assert isinstance(m[key], float), (key, m.get(key))
    assert summary["generate"]["images"] == 8 and summary["generate"]["images_per_s"] > 0


# ---------------------------------------------------------------------------- the plan
def _sizes(**kw) -> Sizes:
    base = dict(frames=40, subjects=4, frames_per_subject=10,
                evaluate={"seeds": 3, "estimator_epochs": 20, "utility_seeds": 1, "judge_seeds": 3, "judge_epochs": 20},
                generate_count=20000, curve_points=6, expression=True, expression_s=60, cards=1)
    return Sizes(**{**base, **kw})


def test_plan_gives_training_the_rest_and_cuts_nothing_when_there_is_room():
    s = plan(_sizes(), SMOKE_RATES, list(PHASES), 100_000, smoke=True)
    assert s.cuts == []
    spent = sum(phase_cost(p, s, SMOKE_RATES) for p in PHASES)
    assert spent == pytest.approx(100_000 - SMOKE_RATES.reserve)


def test_plan_cuts_repetitions_before_data_and_names_each_cut():
    s = plan(_sizes(subjects=40, frames=400), SMOKE_RATES, list(PHASES), 120, smoke=True)
    texts = [t for _, t in s.cuts]
    assert texts[:2] == ["evaluate.seeds 3 -> 1", "evaluate.judge_seeds 3 -> 1"]
    assert s.subjects < 40 and any(t.startswith("twin subjects 40 -> ") for t in texts)
    assert sum(t.startswith("twin subjects") for t in texts) == 1  # one line per knob
    assert s.train_s >= SMOKE_RATES.train_min
    # after collect, the data size is what it is: no subject cut any more
    later = plan(_sizes(subjects=40, frames=400), SMOKE_RATES, ["train", "evaluate", "curve", "generate"], 60,
                 smoke=True)
    assert later.subjects == 40


def test_peak_is_known_for_h100_and_h200_only_by_name():
    assert peak_bf16_tflops("NVIDIA H200")[0] == 989.0
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert peak_bf16_tflops("NVIDIA H100 PCIe")[0] == 756.0
    peak, why = peak_bf16_tflops("NVIDIA H100 NVL")
    assert peak is None and "NVIDIA H100 NVL" in why
    assert peak_bf16_tflops("NVIDIA GeForce RTX 4090")[0] is None


def test_a_folder_without_target_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "faces" / "source").mkdir(parents=True)
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_scale.sh"), "--smoke", "--collect-path",
                           str(tmp_path / "faces")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "has no target/ folder" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
