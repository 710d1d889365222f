"""The loop both families run (``nirgan.training.loop``, issue 20 item 2): the wall budget stops a
run of either family after a checkpoint of the step it reached, and the model is exported."""

from __future__ import annotations

import json

import pytest
from expression_helpers import synthetic_split
from train_helpers import make_dataset, small_config

from nirgan.config import Config
from nirgan.stages import train as train_stage
from nirgan.training.checkpoint import Checkpoint
from nirgan.expression.trainer import MODEL_FILE, train_expression

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BUDGET = 1e-6  # minutes: spent by the first step, so the loop must stop at its first check


def test_the_budget_stops_a_nir_run_at_its_first_check_with_a_checkpoint(store, tmp_path):
    prepared, split = make_dataset(tmp_path / "data")
    cfg = small_config(max_steps=12, max_minutes=BUDGET, log_every=3, checkpoint_every=100)
    result = train_stage.run(cfg, prepared, split, tmp_path / "models", tmp_path / "train.json")
    assert result["steps"] == 3 and result["steps_this_session"] == 3
    assert Checkpoint(tmp_path / "models" / "checkpoints").load()["step"] == 3
    assert (tmp_path / "models" / "generator.pt").exists()
    assert json.loads((tmp_path / "train.json").read_text())["steps"] == 3


def test_the_budget_stops_an_expression_run_at_its_first_check_with_a_checkpoint(store, tmp_path):
    # The check comes every min(log_every, checkpoint_every) steps, as in the NIR family.
    cfg = Config.model_validate({"task": "expression", "collect": {"source": "expression_twin"}, "expression_train": {
        "model": "cgan", "image_size": 32, "width": 0.25, "res_blocks": 1, "latent_dim": 16, "batch_size": 8,
        "steps": 12, "log_every": 5, "checkpoint_every": 2, "max_minutes": BUDGET, "device": "cpu",
        "log_model": False, "sample_inputs": 2}})
    split = synthetic_split(["happy", "sad"], size=32, per=2)
    result = train_expression(cfg, split, tmp_path / "models", tmp_path / "train.json")
    assert result["steps"] == 2 and result["steps_this_session"] == 2
    assert Checkpoint(tmp_path / "models" / "checkpoints").load()["step"] == 2
    assert (tmp_path / "models" / MODEL_FILE).exists()
    assert sorted(p.name for p in (tmp_path / "models" / "samples").iterdir()) == ["step_00000002.png"]


def test_epoch_grids_are_every_epoch_unless_epochs_are_shorter_than_log_every():
    from nirgan.training.loop import epoch_grid_due

    def grid_steps(steps_per_epoch: int, every: int, end: int) -> list[int]:
        return [s for s in range(1, end + 1) if epoch_grid_due(s, steps_per_epoch, every)]

    # the CPU default: 165 steps an epoch, losses every 10: a grid at every epoch's end, as before
    assert grid_steps(165, 10, 1320) == [165 * k for k in range(1, 9)]
    # a GPU's batch on a small set: 10 steps an epoch, losses every 50: one grid per 50 steps
    assert grid_steps(10, 50, 300) == [50, 100, 150, 200, 250, 300]
    assert grid_steps(30, 50, 300) == [60, 120, 150, 210, 270, 300]
