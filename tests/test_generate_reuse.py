"""nirgan generate's output folder and inputs, as the generate audit found them (real files, real
runs of a tiny untrained generator): reusing --out keeps the same dataset (whatever its count
and workers) and refuses another one unless --overwrite; a second run into a folder being
written stops at once; unreadable bookkeeping, spec headers without a mapping and post-parse spec
errors are one line naming the file; the card carries eval metrics only of its own generator;
unused labels-table rows are counted; outside a project no MLflow files appear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from train_helpers import write_params

from nirgan.cli import main
from nirgan.config import OutputError, TrainConfig, parse_config
from nirgan.io import file_sha256
from nirgan.labels import LABELS
from nirgan.models.artifacts import save_generator
from nirgan.models.networks import build_networks
from nirgan.stages import generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 64


def _generator(folder: Path, seed: int) -> Path:
    """An untrained generator that reads the five labels: what is tested here is the folder and
    the bookkeeping around the images, not what they show."""
    folder.mkdir(parents=True)
    tcfg = TrainConfig(width=0.125, latent_dim=16)
    torch.manual_seed(seed)
    nets = build_networks(tcfg, len(LABELS))
    save_generator(folder / "generator.pt", nets.generator, tcfg, len(LABELS), mapping=nets.mapping)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reuse_models")
    return {"a": _generator(root / "a", 0), "b": _generator(root / "b", 1)}


@pytest.fixture(autouse=True)
def outside(tmp_path, monkeypatch):
    """Runs in a folder outside any project with no tracking store: generate then records nothing
    in MLflow (and so leaves the project's mlflow.db alone)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


def gen_config(**generate):
    base = dict(count=12, shard_size=5, batch_size=4, image_size=SIZE, seed=1, workers=1,
                head_yaw={"low": -30.0, "high": 30.0})
    base.update(generate)
    return parse_config({"generate": base})


def _run(models, out: Path, model: str = "a", **spec) -> dict:
    return generate.run(gen_config(**spec), out, str(models[model]), metrics_path=None)["card"]


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    """Each shard table's inode and mtime: a table rewritten (atomically, a new file) changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "shards").glob("*.parquet")}


def _assert_same_dataset(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_parquet(a / "labels.parquet"), pd.read_parquet(b / "labels.parquet"))
    files = sorted(p.relative_to(a) for p in (a / "images").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in (b / "images").rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert sorted(p.name for p in (a / "shards").iterdir()) == sorted(p.name for p in (b / "shards").iterdir())


def _params(tmp_path: Path, cfg) -> Path:
    """Beside the working folder, not in or above it: that folder stays outside any project."""
    (tmp_path / "conf").mkdir(exist_ok=True)
    return write_params(tmp_path / "conf" / "params.yaml", cfg)


def _cli(models, out: Path, *extra: str, model: str = "a", params: Path | None = None) -> list[str]:
    params = params or _params(out.parent, gen_config())
    return ["--params", str(params), "generate", "--model", str(models[model]), "--out", str(out), *extra]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nirgan: "), err
    return err


# ------------------------------------------------------------------------- reusing --out
def test_a_larger_count_extends_the_dataset_and_a_smaller_one_keeps_the_shards_it_wants(models, tmp_path, caplog):
    out = tmp_path / "ds"
    _run(models, out, count=12)  # shards of 5, 5, 2
    first = _stamps(out)
    _run(models, out, count=17)  # 5, 5, 5, 2: the cut-short shard 2 is rewritten, 0 and 1 kept
    extended = _stamps(out)
    assert extended["00000.parquet"] == first["00000.parquet"] and extended["00001.parquet"] == first["00001.parquet"]
    assert extended["00002.parquet"] != first["00002.parquet"]
    _run(models, tmp_path / "fresh17", count=17)
    _assert_same_dataset(out, tmp_path / "fresh17")

    with caplog.at_level("WARNING", logger="nirgan"):
        _run(models, out, count=7)  # 5, 2: shard 0 kept, 1 cut (rewritten), 2 and 3 removed
    shrunk = _stamps(out)
    assert shrunk["00000.parquet"] == first["00000.parquet"] and shrunk["00001.parquet"] != extended["00001.parquet"]
    assert sorted(shrunk) == ["00000.parquet", "00001.parquet"]
    assert any("count 17: --count 7 keeps the 5 images" in r.getMessage() for r in caplog.records), caplog.text
    _run(models, tmp_path / "fresh7", count=7)
    _assert_same_dataset(out, tmp_path / "fresh7")
    assert json.loads((out / "dataset.json").read_text())["counts"]["images"] == 7


def test_a_killed_run_resumed_with_other_workers_keeps_its_complete_shards(models, tmp_path):
    out = tmp_path / "ds"
    _run(models, out, count=15)
    labels = pd.read_parquet(out / "labels.parquet")
    # what a kill before shard 2's commit leaves: its table and the finished files are missing
    for name in ("shards/00002.parquet", "labels.parquet", "dataset.json"):
        (out / name).unlink()
    before = _stamps(out)
    _run(models, out, count=15, workers=2)
    after = _stamps(out)
    assert {k: after[k] for k in before} == before and "00002.parquet" in after
    pd.testing.assert_frame_equal(pd.read_parquet(out / "labels.parquet"), labels)


def test_a_folder_of_another_dataset_is_refused_naming_what_differs_unless_overwrite(models, tmp_path, capsys):
    out = tmp_path / "ds"
    first, second = tmp_path / "seed1.yaml", tmp_path / "seed2.yaml"
    first.write_text(yaml.safe_dump({"seed": 1}))
    second.write_text(yaml.safe_dump({"seed": 2, "batch_size": 3}))
    assert main(_cli(models, out, "--spec", str(first))) == 0
    (out / "NOTES.txt").write_text("mine")
    labels = (out / "labels.parquet").read_bytes()
    capsys.readouterr()

    assert main(_cli(models, out, "--spec", str(second))) == 2
    err = _one_line(capsys)
    assert str(out) in err and "generate.batch_size 4 -> 3" in err and "generate.seed 1 -> 2" in err, err
    assert "--overwrite" in err and (out / "labels.parquet").read_bytes() == labels
    assert main(_cli(models, out, "--spec", str(first), model="b")) == 2  # the same spec, another generator
    err = _one_line(capsys)
    assert f"generator sha256 {file_sha256(models['a'] / 'generator.pt')[:12]} -> " in err, err
    assert (out / "labels.parquet").read_bytes() == labels

    assert main(_cli(models, out, "--spec", str(second), "--overwrite")) == 0
    assert json.loads((out / "dataset.json").read_text())["spec"]["seed"] == 2
    assert len(list((out / "images").rglob("*.png"))) == 12 and (out / "NOTES.txt").read_text() == "mine"


def test_unreadable_bookkeeping_is_one_line_naming_the_file(models, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(_cli(models, out)) == 0
    (out / ".plan.json").write_text('{"spec": ')  # cut short
    capsys.readouterr()
    assert main(_cli(models, out)) == 2
    err = _one_line(capsys)
    assert f"{out / '.plan.json'}: unreadable (JSONDecodeError" in err and "--overwrite" in err, err
    assert main(_cli(models, out, "--overwrite")) == 0
    assert len(pd.read_parquet(out / "labels.parquet")) == 12

    (out / "shards" / "00001.parquet").write_bytes(b"PAR1 not a table")
    capsys.readouterr()
    assert main(_cli(models, out)) == 2
    err = _one_line(capsys)
    assert f"{out / 'shards' / '00001.parquet'}: unreadable shard table" in err and "delete it and rerun" in err, err


HOLDER = """
import sys
from nirgan.config import load_config
from nirgan.generation.dataset import open_dataset

with open_dataset(load_config(sys.argv[1]), sys.argv[2], {"generator": sys.argv[3]}):
    print("holding", flush=True)
    sys.stdin.read()
"""


@pytest.mark.timeout(300)
def test_a_second_run_into_a_folder_being_written_stops_at_once_naming_the_holder(models, tmp_path, capsys):
    out = tmp_path / "ds"
    params = _params(tmp_path, gen_config())
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(params), str(out), str(models["a"] / "generator.pt")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        assert main(_cli(models, out, params=params)) == 2
        assert time.monotonic() - started < 60  # no waiting for the holder
        err = _one_line(capsys)
        assert f"{out}: another nirgan generate (PID {holder.pid})" in err, err
        assert not (out / "shards").exists()
    finally:
        holder.kill()  # as kill -9: the kernel drops its lock
        holder.wait()
    assert main(_cli(models, out, params=params)) == 0
    assert len(pd.read_parquet(out / "labels.parquet")) == 12


# ------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("text, says", [
    ("generate:\n", "generate: holds nothing, not a mapping"),
    ("generate: 5\n", "generate: holds 5, not a mapping"),
    ("generate: [count, 3]\n", "generate: holds ['count', 3], not a mapping"),
    ("head_yaw: {low: -120, high: 30}\n", "generate.head_yaw: [-120, 30] degrees is outside the built-in rig's range"),
    ("labels_table: /nonexistent.csv\n", "generate.labels_table: /nonexistent.csv does not exist"),
])
def test_a_bad_spec_is_one_line_naming_the_spec_file(models, tmp_path, capsys, text, says):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert main(_cli(models, tmp_path / "ds", "--spec", str(spec))) == 2
    err = _one_line(capsys)
    assert err.startswith(f"nirgan: {spec}: ") and says in err, err
    assert not (tmp_path / "ds").exists()


def test_the_card_carries_eval_metrics_only_of_its_own_generator(models, tmp_path):
    sha = file_sha256(models["a"] / "generator.pt")
    metrics = tmp_path / "eval.json"
    metrics.write_text(json.dumps({"pose_gen_head_mean": 5.5, "generator_sha256": sha}))
    config = gen_config(count=2)
    own = generate.run(config, tmp_path / "a", str(models["a"]), metrics_path=metrics)["card"]
    assert own["eval_metrics"]["pose_gen_head_mean"] == 5.5
    other = generate.run(config, tmp_path / "b", str(models["b"]), metrics_path=metrics)["card"]
    assert other["eval_metrics"] == "unavailable"
    reason = other["eval_metrics_reason"]
    assert f"{metrics} are those of another generator (sha256 {sha[:12]})" in reason and \
        str(models["b"] / "generator.pt") in reason, reason
    metrics.write_text(json.dumps({"pose_gen_head_mean": 5.5}))  # from an evaluate that did not record it
    model = generate.resolve_model(str(models["a"]), tmp_path / "fetched", metrics)
    assert model["metrics"] == {} and "do not say which generator they measured" in model["metrics_reason"]


def test_a_registry_models_card_carries_its_runs_metrics_only_when_they_measured_it(models, store, tmp_path,
                                                                                     monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from nirgan import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    client = MlflowClient(store, store)
    client.create_registered_model(tracking.REGISTERED_MODEL)

    def version(evaluated: Path) -> str:
        """A version of generator a whose run holds eval metrics of ``evaluated``."""
        with tracking.start_run({"x": 1}, system_metrics=False) as run:
            tracking.log_model_files([models["a"] / "generator.pt"])
            mlflow.log_metric("eval.pose_gen_head_mean", 5.5)
            mlflow.set_tag("eval.generator_sha256", file_sha256(evaluated))
        return client.create_model_version(tracking.REGISTERED_MODEL, f"{run.info.artifact_uri}/files",
                                           run.info.run_id).version

    own, other = version(models["a"] / "generator.pt"), version(models["b"] / "generator.pt")
    model = generate.resolve_model(f"models:/{tracking.REGISTERED_MODEL}/{own}", tmp_path / "own")
    assert model["metrics"] == {"pose_gen_head_mean": 5.5}
    model = generate.resolve_model(f"models:/{tracking.REGISTERED_MODEL}/{other}", tmp_path / "other")
    assert model["metrics"] == {}
    assert f"version {other}'s run" in model["metrics_reason"] and "another generator" in model["metrics_reason"]


def test_unused_labels_table_rows_are_logged_and_counted_on_the_card(models, tmp_path, caplog):
    table = tmp_path / "rows.csv"
    pd.DataFrame({"head_yaw": np.linspace(-20, 20, 50), "head_pitch": 0.0, "head_roll": 0.0, "gaze_yaw": 0.0,
                  "gaze_pitch": 0.0, "glasses": [k % 2 == 0 for k in range(50)]}).to_csv(table, index=False)
    with caplog.at_level("INFO", logger="nirgan"):
        card = _run(models, tmp_path / "ds", count=20, labels_table=str(table))
    assert card["table_rows"] == {"table": str(table), "rows": 50, "used": 20, "unused": 30}
    assert any(r.levelname == "WARNING" and "20 of the 50 rows" in r.getMessage() and "30 were not" in r.getMessage()
               for r in caplog.records), caplog.text


def test_outside_a_project_generate_makes_no_mlflow_files(models, tmp_path):
    params = _params(tmp_path, gen_config(count=2))
    here = tmp_path / "elsewhere"  # no params.yaml or dvc.yaml here or above, no MLFLOW_TRACKING_URI
    here.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "nirgan.cli", "--params", str(params), "generate", "--out"]
    local = subprocess.run([*command, str(here / "ds"), "--model", str(models["a"])], cwd=here, env=env,
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr
    assert "the dataset is not recorded in MLflow" in local.stderr
    assert sorted(p.name for p in here.iterdir()) == ["ds"]
    registry = subprocess.run([*command, str(here / "ds2"), "--model", "models:/nirgan-generator@champion"], cwd=here,
                              env=env, capture_output=True, text=True, timeout=300)
    assert registry.returncode == 2
    err = registry.stderr.strip()
    assert len(err.splitlines()) == 1 and "not inside a nirgan project" in err and "MLFLOW_TRACKING_URI" in err, err
    assert sorted(p.name for p in here.iterdir()) == ["ds"]


def test_plan_dataset_refuses_another_dataset(models, tmp_path):
    """The library entry (the generate-nir flow's) refuses as the command does."""
    from nirgan.generation.dataset import plan_dataset

    model = {"generator": models["a"] / "generator.pt"}
    plan_dataset(gen_config(seed=1), tmp_path / "ds", model)
    with pytest.raises(OutputError, match=r"holds another dataset \(generate.seed 1 -> 2\)"):
        plan_dataset(gen_config(seed=2), tmp_path / "ds", model)
    assert plan_dataset(gen_config(seed=2), tmp_path / "ds", model, overwrite=True).spec.seed == 2


def test_a_labels_table_edited_in_place_is_another_dataset(models, tmp_path):
    from nirgan.generation.dataset import plan_dataset

    table = tmp_path / "rows.csv"
    rows = pd.DataFrame({**{c: [0.0, 5.0] for c in LABELS}, "glasses": [True, False]})
    rows.to_csv(table, index=False)
    model, config = {"generator": models["a"] / "generator.pt"}, gen_config(count=4, labels_table=str(table))
    plan_dataset(config, tmp_path / "ds", model)
    rows.assign(head_yaw=[0.0, 10.0]).to_csv(table, index=False)  # same path, other rows
    with pytest.raises(OutputError, match="generate.labels_table content sha256"):
        plan_dataset(config, tmp_path / "ds", model)
