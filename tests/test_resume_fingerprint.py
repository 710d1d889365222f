"""Resume by content (issue 20 item 1): a finished run is continued only by a run on the same
data and the same training code, whatever the pair count and whatever else changed.

- a new split with the same number of training pairs (``dvc exp run -S split.seed=1``) trains
  afresh: a count-based fingerprint resumed the finished run and re-exported the old model;
- an edit of export-only code (the ONNX exporter) keeps the finished run: the code part of the
  fingerprint is the training step's import closure, not a folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from expression_helpers import synthetic_split
from train_helpers import make_dataset, small_config, write_params

from nirgan.config import Config
from nirgan.stages import split as split_stage
from nirgan.stages import train as train_stage
from nirgan.training.checkpoint import Checkpoint
from nirgan.expression.trainer import SESSION_MODULE as EXPRESSION_SESSION
from nirgan.expression.trainer import train_expression
from nirgan.training.fingerprint import SRC, code_digest, import_closure
from nirgan.training.resume import SESSION_MODULE as NIR_SESSION

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """make_dataset's prepared arrays: 4 subjects x 7 pairs."""
    prepared_dir, _ = make_dataset(tmp_path_factory.mktemp("fp_data"))
    return prepared_dir


def _split(prepared_dir: Path, out: Path, seed: int) -> pd.DataFrame:
    """The real split stage into ``out`` (replaced, as DVC's data/split is): one test subject of four."""
    cfg = small_config()
    cfg = cfg.model_copy(update={"split": cfg.split.model_copy(update={"seed": seed, "test_fraction": 0.25})})
    split_stage.run(cfg, prepared_dir, out)
    return pd.read_parquet(out / "train.parquet")


def test_a_new_split_with_the_same_pair_count_trains_afresh(store, prepared, tmp_path):
    split_dir, models, metrics = tmp_path / "split", tmp_path / "models", tmp_path / "metrics" / "train.json"
    cfg = small_config(max_steps=2)
    first = _split(prepared, split_dir, seed=0)
    assert train_stage.run(cfg, prepared, split_dir, models, metrics)["steps_this_session"] == 2
    # The same data again: the finished run is kept (this is what makes the next check mean something).
    assert train_stage.run(cfg, prepared, split_dir, models, metrics)["steps_this_session"] == 0
    old_fp = Checkpoint(models / "checkpoints").load()["fingerprint_data"]

    second = _split(prepared, split_dir, seed=1)  # dvc exp run -S split.seed=1
    assert len(second) == len(first) and set(second["pair_id"]) != set(first["pair_id"])
    result = train_stage.run(cfg, prepared, split_dir, models, metrics)
    assert result["steps_this_session"] == 2, "the finished run on the other split was resumed"
    new_fp = Checkpoint(models / "checkpoints").load()["fingerprint_data"]
    assert new_fp["data"] != old_fp["data"] and new_fp["code"] == old_fp["code"]


def _copy_src(dest: Path) -> Path:
    """A copy of src/nirgan to edit (the checkout itself is never edited by a test)."""
    shutil.copytree(SRC / "nirgan", dest / "nirgan", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_an_exporter_edit_keeps_a_finished_run(store, prepared, tmp_path):
    """Train to the end, edit the ONNX exporter, rerun the stage (a real ``nirgan stage train``
    process importing the edited copy): the finished run is kept, not trained again."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "prepared").symlink_to(prepared)
    _split(prepared, work / "data" / "split", seed=0)
    cfg = small_config(max_steps=2)
    write_params(work / "params.yaml", cfg)
    first = train_stage.run(cfg, work / "data" / "prepared", work / "data" / "split", work / "models",
                            work / "metrics" / "train.json")
    assert first["steps_this_session"] == 2
    ckpt_file = Checkpoint(work / "models" / "checkpoints").latest()
    run_id = json.loads((work / "metrics" / "train.json").read_text())["mlflow_run_id"]

    src = _copy_src(tmp_path / "src")
    _append(src / "nirgan" / "models" / "export_formats.py", "\n# an exporter edit\nEXPORTER_EDIT = 1\n")
    probe = "import nirgan.models.export_formats as e; print(e.EXPORTER_EDIT)"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(src)}
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout == "1\n"
    proc = subprocess.run([sys.executable, "-m", "nirgan.cli", "stage", "train"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting afresh" not in proc.stderr, proc.stderr[-3000:]
    assert Checkpoint(work / "models" / "checkpoints").latest() == ckpt_file and ckpt_file.exists()
    metrics = json.loads((work / "metrics" / "train.json").read_text())
    assert metrics["steps"] == 2 and metrics["mlflow_run_id"] == run_id


def test_the_code_part_is_the_steps_import_closure(tmp_path):
    """Edits to what the step runs change each family's code digest; edits to export-only code,
    the loop, MLflow logging or the other stages do not."""
    src = _copy_src(tmp_path)
    before = {m: code_digest(m, src) for m in (NIR_SESSION, EXPRESSION_SESSION)}
    closure = {p.relative_to(src).as_posix() for p in import_closure(NIR_SESSION, src)}
    # derived, not listed: the session's schedule / EMA module and what it imports are in ...
    assert {"nirgan/training/session.py", "nirgan/training/core.py", "nirgan/losses.py",
            "nirgan/models/networks.py", "nirgan/augmentation.py"} <= closure
    # ... and the exporters, the loop and tracking are not
    assert not closure & {"nirgan/models/export_formats.py", "nirgan/training/export.py",
                          "nirgan/training/trainer.py", "nirgan/training/loop.py", "nirgan/tracking/__init__.py"}

    for kept in ("models/export_formats.py", "training/export.py", "training/trainer.py", "training/loop.py",
                 "expression/trainer.py", "stages/evaluate.py"):
        _append(src / "nirgan" / kept, "\n# edited\n")
    assert {m: code_digest(m, src) for m in before} == before

    _append(src / "nirgan" / "training" / "session.py", "\n# edited\n")
    assert code_digest(NIR_SESSION, src) != before[NIR_SESSION]
    _append(src / "nirgan" / "expression" / "step.py", "\n# edited\n")
    assert code_digest(EXPRESSION_SESSION, src) != before[EXPRESSION_SESSION]


def _expr_config(**kw) -> Config:
    base = {"image_size": 32, "width": 0.25, "res_blocks": 1, "latent_dim": 16, "batch_size": 8, "steps": 2,
            "log_every": 1, "checkpoint_every": 2, "device": "cpu", "log_model": False, "sample_inputs": 3}
    return Config.model_validate({"task": "expression", "collect": {"source": "expression_twin"},
                                  "expression_train": {**base, **kw}})


def test_expression_faces_with_the_same_count_train_afresh(store, tmp_path):
    """The expression family shares the fingerprint: other training faces, same count, same labels."""
    names = ["happy", "sad"]
    cfg = _expr_config(model="cgan")
    out, metrics = tmp_path / "models", tmp_path / "train.json"
    split = synthetic_split(names, size=32, per=2, seed=0)
    assert train_expression(cfg, split, out, metrics)["steps_this_session"] == 2
    assert train_expression(cfg, split, out, metrics)["steps_this_session"] == 0
    other = synthetic_split(names, size=32, per=2, seed=1)
    assert other.train_images.shape == split.train_images.shape
    assert (other.train_labels == split.train_labels).all()
    assert train_expression(cfg, other, out, metrics)["steps_this_session"] == 2
