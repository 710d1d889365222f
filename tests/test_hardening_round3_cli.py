"""Issue 23, hardening round 3, at the command line: what check-params catches up front, model
files that are not what they claim, and files that are not ours (export's --out, promote's store).

Real files and real subprocesses of ``python -m nirgan.cli``; helpers shared with
``test_hardening_round3.py`` (the data side).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nirgan.config import ConfigError, DataError, parse_config
from nirgan.labels import LABELS
from test_hardening_round3 import SRC, _assert_one_line_error, _cli, _folder_cfg

# ------------------------------------------------------------------------ check-params up front
REPO = SRC.parent


def _check(tmp_path: Path, params: dict, pipeline: bool = False) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    if pipeline:
        (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    return _cli(tmp_path, "check-params")


def test_check_params_refuses_non_finite_numbers(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("train:\n  lr_g: .inf\nevaluate:\n  seeds: 3\n")
    _assert_one_line_error(_cli(tmp_path, "check-params"), "params.yaml", "train.lr_g", "finite")
    with pytest.raises(ConfigError, match=r"generate\.glasses_fraction.*finite"):
        parse_config({"generate": {"glasses_fraction": float("nan")}})
    # finite but out of range: an Adam step past any weight's scale; a seed numpy cannot take
    for section, key, value in (("train", "lr_g", 1e9), ("expression_train", "lr_d", 5.0), ("train", "seed", -1),
                                ("split", "seed", 2**40)):
        with pytest.raises(ConfigError, match=rf"{section}\.{key}: Input should be"):
            parse_config({section: {key: value}})


def test_check_params_refuses_a_cuda_device_that_is_not_there(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        assert _check(tmp_path, {"train": {"device": "cuda"}}).returncode == 0
        return
    from nirgan.devices import DEVICE_KEYS, check_devices

    # through the command for every device key: it asks torch only when a section's `device` is cuda
    for key in DEVICE_KEYS:
        section, field = key.split(".")
        _assert_one_line_error(_check(tmp_path, {section: {field: "cuda"}}), f"params.yaml: {key}",
                               "no CUDA device")
    for key in ("detect", "expression_train", "evaluate"):
        with pytest.raises(ConfigError, match=rf"params: {key}\.device is 'cuda' but no CUDA device"):
            check_devices(parse_config({key: {"device": "cuda"}}))


def test_check_params_on_cpu_params_does_not_load_torch_or_pandas(tmp_path: Path):
    # Importing them was most of check-params' 2 s, which every train-nir workspace pays.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"device": "auto"}, "evaluate": {"device": "cpu"}}))
    code = ("import sys; from nirgan.cli import main; assert main(['check-params']) == 0; "
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout


def test_check_params_finds_a_section_the_pipeline_declares_but_the_file_lacks(tmp_path: Path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["detect"]
    _assert_one_line_error(_check(tmp_path, params, pipeline=True), "params.yaml", "detect", "dvc.yaml")


def test_the_readme_bring_your_own_data_params_pass_every_stage(tmp_path: Path):
    """README "Bring your own data", as written: the collect section replaced, the rest kept.
    The generate stage used to declare collect.twin, which DVC then missed at the last stage."""
    data = tmp_path / "nir-pairs"
    (data / "target").mkdir(parents=True)
    (data / "source").mkdir()
    pd.DataFrame(columns=["pair_id", *LABELS, "glasses"]).to_csv(data / "labels.csv", index=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["collect"] = {"source": "folder", "path": str(data), "labels": "labels.csv"}
    proc = _check(tmp_path, params, pipeline=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "params.yaml: ok"
    # and DVC itself finds every stage's params (what `dvc repro` checks as it reaches a stage)
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    with Repo(str(tmp_path)) as repo:
        deps = [d for stage in repo.index.stages for d in stage.deps if isinstance(d, ParamsDependency)]
        assert {d.stage.name for d in deps} >= {"collect", "detect", "train", "evaluate", "generate"}
        for dep in deps:
            dep.get_hash()  # MissingParamsError names what a stage lacks


def test_check_params_reads_the_subject_table_header(tmp_path: Path):
    faces = tmp_path / "faces"
    (faces / "happy").mkdir(parents=True)
    pd.DataFrame({"path": ["happy/a.png"], "subject": ["s1"]}).to_csv(tmp_path / "subjects.csv", index=False)
    proc = _check(tmp_path, {"task": "expression",
                             "collect": {"source": "label_folders", "path": str(faces), "labels": "subjects.csv"}})
    _assert_one_line_error(proc, "collect.labels", "subjects.csv", "lacks column(s) file")


def test_generate_count_zero_blames_the_flag(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("{}\n")
    line = _assert_one_line_error(_cli(tmp_path, "generate", "--count", "0"), "--count 0", "generate.count")
    assert "params.yaml" not in line


# ------------------------------------------------------------------------ model files
def _tiny_generator(path: Path) -> None:
    from nirgan.config import TrainConfig
    from nirgan.models.artifacts import save_generator
    from nirgan.models.networks import build_generator

    train_cfg = TrainConfig(width=0.125, latent_dim=4, style_mapping=False)
    save_generator(path, build_generator(train_cfg, 0), train_cfg, 0, None)


def _bad_models(root: Path) -> dict[str, Path]:
    import argparse

    import torch

    models = {name: root / name / "generator.pt" for name in ("garbage", "empty", "pickle", "wrong_shape")}
    for path in models.values():
        path.parent.mkdir(parents=True)
    models["garbage"].write_bytes(np.random.default_rng(0).bytes(3000))
    models["empty"].write_bytes(b"")
    # a pickle of an arbitrary object: torch's own error advises weights_only=False for it
    torch.save({"state_dict": argparse.Namespace(run="code"), "train_config": {}, "label_dim": 0}, models["pickle"])
    _tiny_generator(models["wrong_shape"])
    payload = torch.load(models["wrong_shape"], weights_only=True)
    payload["state_dict"] = {k: v[..., :1] if v.dim() else v for k, v in payload["state_dict"].items()}
    torch.save(payload, models["wrong_shape"])
    return models


def test_generate_and_export_refuse_a_bad_model_file_in_one_line(tmp_path: Path):
    from nirgan.models.artifacts import load_sampler

    models = _bad_models(tmp_path / "m")
    for name, path in models.items():  # every kind, in process
        with pytest.raises(DataError, match=str(path)) as caught:
            load_sampler(path)
        assert "weights_only" not in str(caught.value), name
    # and through the CLI, as a user meets them
    (tmp_path / "params.yaml").write_text("{}\n")
    for name in ("pickle",):
        rel = str(models[name].relative_to(tmp_path))
        _assert_one_line_error(_cli(tmp_path, "generate", "--model", str(models[name].parent), "--count", "2",
                                    "--out", f"out_{name}"), rel)
        assert not (tmp_path / f"out_{name}").exists(), name
    for name in ("empty",):
        rel = str(models[name].relative_to(tmp_path))
        _assert_one_line_error(_cli(tmp_path, "export", "--model", rel, "--out", f"exp_{name}",
                                    "--format", "torchscript"), rel)
        assert not (tmp_path / f"exp_{name}").exists(), name


def test_export_never_replaces_or_hides_what_the_user_has(tmp_path: Path):
    from nirgan.config import OutputError
    from nirgan.models.export_formats import export_generator

    (tmp_path / "params.yaml").write_text("{}\n")
    _tiny_generator(tmp_path / "generator.pt")
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"holiday")
    # as the user meets it: one line, exit 2, the file as it was
    _assert_one_line_error(_cli(tmp_path, "export", "--model", "generator.pt", "--out", "notes.txt",
                                "--format", "torchscript"), "notes.txt", "not a folder")
    # a folder of other things; a folder that cannot be made (a file in the way; a place this
    # user cannot write)
    unwritable = tmp_path / "locked"
    unwritable.mkdir(mode=0o500)
    cannot = Path("/sys/nirgan-export") if os.geteuid() == 0 else unwritable / "export"
    for out, says in ((folder, "not a nirgan export"), (mine / "export", "cannot write"), (cannot, "cannot write")):
        with pytest.raises(OutputError, match=says):
            export_generator(tmp_path / "generator.pt", out, ["torchscript"], 64)
    assert mine.read_text() == "my notes" and (folder / "a.jpg").read_bytes() == b"holiday"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.pt", "locked", "notes.txt", "params.yaml",
                                                          "photos"]
    # a previous export is still replaced, as before
    for _ in range(2):
        card = export_generator(tmp_path / "generator.pt", tmp_path / "exp", ["torchscript"], 64)
    assert card["files"] == {"torchscript": "generator.torchscript.pt"}
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["export.json", "generator.torchscript.pt"]


def test_promote_outside_a_project_creates_no_database(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "nirgan.cli", "promote"], cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=300)
    _assert_one_line_error(proc, "not inside a nirgan project", "MLFLOW_TRACKING_URI")
    assert list(tmp_path.iterdir()) == []


def test_the_dataset_card_says_why_there_is_no_label_check(tmp_path: Path):
    """evaluate leaves an "absent" label_estimator.pt saying why; the card passes that on instead
    of claiming there is no file."""
    from nirgan.config import GenerateConfig
    from nirgan.generation.report import dataset_card
    from nirgan.models.artifacts import save_absent
    from nirgan.stages.generate import resolve_model

    _tiny_generator(tmp_path / "generator.pt")
    save_absent(tmp_path / "label_estimator.pt", "the split has no pose/gaze labels: no label estimator")
    model = resolve_model(str(tmp_path), tmp_path / "fetched", None)
    assert model["label_estimator"] is None
    card = dataset_card(GenerateConfig(), model, 1, {"images": 2, "dropped": 0}, 1, None, precision="fp32")
    assert card["label_check"] == {"estimator": "unavailable",
                                   "reason": "the split has no pose/gaze labels: no label estimator"}


def test_generate_says_which_rig_it_uses_and_that_it_checks_no_label(tmp_path: Path, caplog):
    from nirgan.models.artifacts import save_absent
    from nirgan.stages.generate import announce, resolve_model

    _tiny_generator(tmp_path / "generator.pt")
    save_absent(tmp_path / "label_estimator.pt", "the split has no pose/gaze labels: no label estimator")
    model = resolve_model(str(tmp_path), tmp_path / "fetched", None)
    (tmp_path / "in/target").mkdir(parents=True)
    (tmp_path / "in/source").mkdir()
    cfg = _folder_cfg(tmp_path / "in")
    with caplog.at_level("WARNING", logger="nirgan"):
        notes = announce(cfg, model)
    assert len(notes) == 2 and [r.getMessage() for r in caplog.records] == notes
    assert "built-in twin rig" in notes[0] and "collect.source=folder" in notes[0]
    assert "no label check (the split has no pose/gaze labels" in notes[1]
    assert announce(parse_config({}), {**model, "label_estimator": tmp_path / "label_estimator.pt"}) == []
