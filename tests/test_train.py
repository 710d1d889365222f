"""The train stage as a whole: MLflow record, resume after kill -9, non-finite stop.

All on a tiny prepared dataset (tests/train_helpers.py) on CPU, one intra-op thread, with a
temporary SQLite MLflow store shared by the module.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from train_helpers import (
    assert_same_state,
    checkpointed_at_least,
    kill9_when,
    make_dataset,
    small_config,
    state_tensors,
    write_params,
)

from nirgan.stages import train as train_stage
from nirgan.training.checkpoint import Checkpoint
from nirgan.training.trainer import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("train_data"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(cfg, dataset, root: Path) -> dict:
    prepared, split = dataset
    return train_stage.run(cfg, prepared, split, root / "models", root / "metrics" / "train.json")


def test_mlflow_run_has_params_metrics_grid_and_registered_model(store, dataset, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from nirgan.models.artifacts import load_generator

    from nirgan import tracking

    cfg = small_config(log_model=True, max_steps=3, log_every=2)
    os.environ["DVC_EXP_NAME"] = "exp-lr-two"  # as `dvc exp run -n` and the train-nir flow set it
    try:
        result = _run(cfg, dataset, tmp_path)
    finally:
        del os.environ["DVC_EXP_NAME"]
    assert result["steps"] == 3

    info = json.loads((tmp_path / "models" / "mlflow_run.json").read_text())
    assert info["tracking_uri"] == store
    client = MlflowClient(store)
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lambda_lr"] == "2.0"
    assert run.data.params["augment.image_size"] == "64"
    assert run.data.tags["git_commit"]
    # Found by experiment name; the thesis configuration (Tables 4.2-4.8) is a tag.
    # named by experiment, config and (where the cwd is a git checkout) short revision
    assert run.info.run_name.startswith("exp-lr-two (ED-LS-LR-2") and run.data.tags["thesis_config"] == "ED-LS-LR-2"
    for key in ("d_adv", "g_adv", "g_lr", "g_total", "lr_generator", "lr_discriminator", "pairs_per_s"):
        assert key in run.data.metrics, key
    # Losses every log_every steps (2) and at the end (3): two points, not one per step.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "g_total")] == [2, 3]

    # Grids under one fixed path per epoch (the compare page's common artifacts) and as an
    # image series with the training step.
    samples = [a.path for a in client.list_artifacts(run.info.run_id) if a.path.startswith("samples_")]
    assert samples == ["samples_epoch_001.png"]
    series = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any(p.startswith("images/samples+step+3+") for p in series), series
    # Registered only once evaluate succeeded on the finished run.
    assert not [v for v in client.search_model_versions("name='nirgan-generator'") if v.run_id == run.info.run_id]
    plots = tmp_path / "plots"
    plots.mkdir()
    (tmp_path / "eval.json").write_text("{}")
    assert tracking.log_evaluation(tmp_path / "models" / "mlflow_run.json", {"fid": 1.0}, plots,
                                   tmp_path / "eval.json") == run.info.run_id
    versions = client.search_model_versions("name='nirgan-generator'")
    assert any(v.run_id == run.info.run_id for v in versions)
    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert metrics["mlflow_run_id"] == run.info.run_id and metrics["steps"] == 3
    assert metrics["model_format"] in ("pt2", "pickle")
    assert math.isfinite(metrics["final_g_total"])
    assert len(pd.read_csv(tmp_path / "metrics" / "train_losses.csv")) == 2

    # The logged model serves (source, z) -> image, and generator.pt loads weights_only.
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/generator") if metrics["model_format"] == "pickle" \
        else mlflow.pytorch.load_model(versions[0].source)
    src, z = torch.rand(2, 3, 64, 64) * 2 - 1, torch.randn(2, 16)
    out = model(src, z)
    assert tuple(out.shape) == (2, 1, 64, 64)
    generator = load_generator(tmp_path / "models" / "generator.pt")
    with torch.no_grad():
        eager = generator(src, z)
    # the served model computes what generator.pt does (torch.export's writer rebuilds weights
    # that share storage from their slices, and warns that it did)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)


def test_kill9_then_resume_equals_uninterrupted(store, dataset, tmp_path):
    """'N steps, kill -9, resume, rest' gives bit-identical weights, EMA and Adam state."""
    steps = 6
    cfg = small_config(deterministic=True, max_steps=steps, checkpoint_every=1, ema_decay=0.5)
    _run(cfg, dataset, tmp_path / "reference")
    reference = Checkpoint(tmp_path / "reference" / "models" / "checkpoints").load()
    assert reference["step"] == steps

    # The interrupted run: a real process, killed with SIGKILL once it has checkpointed step >= 2.
    work = tmp_path / "interrupted"
    long_cfg = small_config(deterministic=True, max_steps=1000, checkpoint_every=1, ema_decay=0.5)
    proc = _train_process(work, dataset, long_cfg, {"MLFLOW_TRACKING_URI": store})
    ckpt = Checkpoint(work / "models" / "checkpoints")
    kill9_when(proc, lambda: checkpointed_at_least(ckpt, 2), timeout_s=240)
    killed_at = ckpt.load()["step"]
    assert 2 <= killed_at < steps, killed_at
    assert not (work / "models" / "generator.pt").exists()

    result = _run(cfg, dataset, work)  # same out_dir: resumes from checkpoints/latest
    assert result["steps"] == steps and result["steps_this_session"] == steps - killed_at
    resumed = ckpt.load()
    assert_same_state(reference, resumed)
    assert torch.equal(reference["data_order"], resumed["data_order"])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(store, dataset, tmp_path):
    # Adam moves each weight by about lr per step: after one step G overflows, and the next
    # step's losses (computed from its output) are NaN. check-params refuses such a learning
    # rate (train.lr_* <= 1), so the diverging run is made past validation, as a run that
    # diverges on its own would reach the loop.
    cfg = small_config(max_steps=6, checkpoint_every=1)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr_g": 1e30, "lr_e": 1e30})})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss: \w+ became NaN/inf at step (\d+)") as err:
        _run(cfg, dataset, tmp_path)
    bad_step = int(err.value.args[0].split(" at step ")[1].split()[0])
    ckpt = Checkpoint(tmp_path / "models" / "checkpoints")
    last = ckpt.load()
    assert 1 <= last["step"] < bad_step
    assert str(ckpt.latest()) in str(err.value)
    assert all(torch.isfinite(t).all() for t in state_tensors(last).values())
    assert not (tmp_path / "models" / "generator.pt").exists()


def test_changed_config_starts_afresh_instead_of_resuming(store, dataset, tmp_path):
    _run(small_config(max_steps=2), dataset, tmp_path)
    # Same run, longer: resumes. Different loss weight: the old checkpoint does not apply.
    assert _run(small_config(max_steps=3), dataset, tmp_path)["steps_this_session"] == 1
    changed = _run(small_config(max_steps=3, lambda_lr=1.0), dataset, tmp_path)
    assert changed["steps_this_session"] == 3
    assert Checkpoint(tmp_path / "models" / "checkpoints").load()["config"]["lambda_lr"] == 1.0


def test_rerun_of_a_finished_run_restores_its_sample_grid(store, dataset, tmp_path):
    # `dvc repro -f train` deletes the stage's non-persistent outputs but keeps the checkpoints.
    _run(small_config(max_steps=2), dataset, tmp_path)
    samples = tmp_path / "models" / "samples"
    shutil.rmtree(samples)
    first = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert _run(small_config(max_steps=2), dataset, tmp_path)["steps_this_session"] == 0
    assert sorted(p.name for p in samples.iterdir()) == ["epoch_001_step_00000002.png"]
    # and its metrics file still says what the run did (no empty losses, no NaN throughput)
    again = json.loads((tmp_path / "metrics" / "train.json").read_text())
    losses = {k: v for k, v in first.items() if k.startswith("final_")}
    assert losses and {k: again.get(k) for k in losses} == losses
    assert math.isfinite(again["pairs_per_s"]) and again["pairs_per_s"] > 0


def test_resume_after_dvc_deleted_the_samples_keeps_the_earlier_epochs_grids(store, dataset, tmp_path):
    # Issue 12 item 7: one epoch (24 pairs, batch 4: 6 steps) checkpointed, then the stage reruns
    # (DVC deletes models/samples, keeps the persistent checkpoints) and resumes into epoch 2.
    _run(small_config(max_steps=6), dataset, tmp_path)
    samples = tmp_path / "models" / "samples"
    shutil.rmtree(samples)
    assert _run(small_config(max_steps=8), dataset, tmp_path)["steps_this_session"] == 2
    assert sorted(p.name for p in samples.iterdir()) == ["epoch_001_step_00000006.png", "epoch_002_step_00000008.png"]


def _train_process(work: Path, dataset, cfg, env_extra: dict) -> subprocess.Popen:
    (work / "data").mkdir(parents=True)
    for name, src in zip(("prepared", "split"), dataset):
        (work / "data" / name).symlink_to(src)
    write_params(work / "params.yaml", cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.Popen([sys.executable, "-m", "nirgan.cli", "stage", "train"], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_checkpoint(proc: subprocess.Popen, ckpt: Checkpoint, at_least: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpointed_at_least(ckpt, at_least):
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint {at_least} before the process ended: {proc.stderr.read()[-2000:]}")


def test_sigterm_ends_the_run_killed_and_registers_no_model(store, dataset, tmp_path):
    # Issue 12 item 10: a stopped stage (SIGTERM from a cancelled task or worker) must not leave
    # its MLflow run RUNNING, and no model version comes from an unfinished run.
    from mlflow.tracking import MlflowClient

    work = tmp_path / "w"
    proc = _train_process(work, dataset, small_config(max_steps=1000, checkpoint_every=1, log_model=True),
                          {"MLFLOW_TRACKING_URI": store})
    ckpt = Checkpoint(work / "models" / "checkpoints")
    try:
        _wait_checkpoint(proc, ckpt, 2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    run_id = json.loads((work / "models" / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "KILLED"
    assert not [v for v in client.search_model_versions("name='nirgan-generator'") if v.run_id == run_id]


def test_kill9_then_a_fresh_start_ends_the_dead_run(store, dataset, tmp_path):
    # kill -9 leaves nothing to end the run with; the next start of the stage does, when it
    # does not continue that run (here: a changed config starts afresh).
    from mlflow.tracking import MlflowClient

    work = tmp_path / "w"
    proc = _train_process(work, dataset, small_config(max_steps=1000, checkpoint_every=1),
                          {"MLFLOW_TRACKING_URI": store})
    ckpt = Checkpoint(work / "models" / "checkpoints")
    try:
        _wait_checkpoint(proc, ckpt, 1)
    finally:
        proc.kill()
        proc.wait()
    dead = json.loads((work / "models" / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(store)
    assert client.get_run(dead).info.status == "RUNNING"
    _run(small_config(max_steps=2, lambda_lr=1.0), dataset, work)
    assert client.get_run(dead).info.status == "KILLED"
    assert json.loads((work / "models" / "mlflow_run.json").read_text())["run_id"] != dead
