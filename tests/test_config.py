"""The typed config: params.yaml loads, and every kind of bad value names its key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nirgan.cli import main as cli_main
from nirgan.config import Config, ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("params", ["params.yaml", "pipelines/expression/params.yaml"])
def test_every_value_in_the_repo_params_reaches_the_typed_config(params):
    """No key of a committed params file is dropped or read as something else on the way in."""
    raw = yaml.safe_load((REPO / params).read_text())
    cfg = load_config(REPO / params)
    dumped = cfg.model_dump(mode="json")
    for key, value in _leaves(raw):
        node = dumped
        for part in key.split("."):
            node = node[part]
        if isinstance(value, list):
            value = list(value)
            node = list(node)
        assert node == value or (isinstance(value, (int, float)) and float(node) == float(value)), key


def test_class_defaults_are_thesis_table_3_8():
    t = Config().train
    assert (t.batch_size, t.epochs_fixed, t.epochs_decay, t.latent_dim) == (12, 10, 10, 512)
    assert (t.lr_g, t.lr_d, t.lr_e, t.lr_l) == (1.5e-4, 4.5e-4, 1.5e-4, 4.5e-6)
    assert (t.beta1, t.beta2, t.init, t.width) == (0.5, 0.999, "xavier", 1.0)
    assert Config().clean.iqr_k == 1.5  # thesis 3.1.4


@pytest.mark.parametrize(
    "params, key",
    [
        ({"train": {"batch_size": "twelve"}}, "train.batch_size"),
        ({"train": {"lambda_lr": -1}}, "train.lambda_lr"),
        ({"train": {"adversarial_loss": "wasserstein"}}, "train.adversarial_loss"),
        ({"train": {"lamda_lr": 2}}, "train.lamda_lr"),
        ({"clean": {"iqr_k": 0}}, "clean.iqr_k"),
        ({"augment": {"scale": {"p": 0.7, "low": 1.3, "high": 1.2}}}, "augment.scale"),
        ({"collect": {"source": "folder"}}, "collect"),
        ({"collect": {"twin": {"subjects": 1}}}, "collect.twin.subjects"),
        ({"nonsense": {}}, "nonsense"),
        ({"generate": {"count": 0}}, "generate.count"),
        ({"generate": {"head_yaw": {"low": 5, "high": -5}}}, "generate.head_yaw"),
        ({"generate": {"glasses_fraction": 1.2}}, "generate.glasses_fraction"),
        ({"generate": {"rig": "folder"}}, "generate"),
        ({"generate": {"max_label_error_deg": 0}}, "generate.max_label_error_deg"),
    ],
)
def test_bad_values_name_the_key(params, key):
    with pytest.raises(ConfigError) as err:
        parse_config(params)
    assert key in str(err.value)


def test_cli_rejects_bad_params_before_any_work(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"train": {"width": 100}}))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["--params", str(bad), "stage", "collect"]) == 2
    assert "train.width" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_unreadable_params_file(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "p.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "p.yaml")


# ------------------------------------------------------------- issue 12, item 4: fail at config time
@pytest.mark.parametrize(
    "params, key",
    [
        ({"augment": {"image_size": 100}}, "augment.image_size"),  # the generator needs a multiple of 32
        ({"augment": {"image_size": 32}}, "augment.image_size"),
        ({"clean": {"iqr_k": "2.0"}}, "clean.iqr_k"),  # strict: a string is no number
        ({"train": {"batch_size": 12.0}}, "train.batch_size"),
        ({"train": {"log_model": "yes"}}, "train.log_model"),
        ({"collect": {"max_pixels": 10**12}}, "collect.max_pixels"),
        ({"train": {"lambda_kl": 0.01}}, "train.lambda_kl"),  # no identity reconstruction path to act on
        ({"train": {"lambda_kl": 0.01, "lambda_ir": 1, "style_mapping": True}}, "train.lambda_kl"),
    ],
)
def test_values_that_used_to_fail_late_are_rejected_now(params, key):
    with pytest.raises(ConfigError) as err:
        parse_config(params)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_strict_types_still_take_what_yaml_writes():
    cfg = load_config_text("clean:\n  iqr_k: 2\ncollect:\n  source: folder\n  path: some/dir\n  labels: l.csv\n"
                           "train:\n  perceptual_layers: [1, 2]\naugment:\n  image_size: 96\n")
    assert cfg.clean.iqr_k == 2.0 and isinstance(cfg.clean.iqr_k, float)
    assert cfg.collect.path == Path("some/dir") and cfg.collect.labels == Path("l.csv")
    assert cfg.train.perceptual_layers == (1, 2) and cfg.augment.image_size == 96


def load_config_text(text: str) -> Config:
    return parse_config(yaml.safe_load(text))


def _check_params(tmp_path: Path, params: dict) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "nirgan.cli", "check-params"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["missing", "a_file", "no_source_dir", "iqr_text", "size_100"])
def test_check_params_catches_what_collect_and_train_would_fail_on(tmp_path: Path, case: str):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "half" / "target").mkdir(parents=True)
    params, key = {
        "missing": ({"collect": {"source": "folder", "path": "nowhere"}}, "collect.path"),
        "a_file": ({"collect": {"source": "videos", "path": "afile"}}, "collect.path"),
        "no_source_dir": ({"collect": {"source": "folder", "path": "half"}}, "source/"),
        "iqr_text": ({"clean": {"iqr_k": "2.0"}}, "clean.iqr_k"),
        "size_100": ({"augment": {"image_size": 100}}, "augment.image_size"),
    }[case]
    proc = _check_params(tmp_path, params)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "params.yaml" in lines[0], proc.stderr


def test_check_params_accepts_an_existing_folder(tmp_path: Path):
    for domain in ("target", "source"):
        (tmp_path / "data_in" / domain).mkdir(parents=True)
    proc = _check_params(tmp_path, {"collect": {"source": "folder", "path": "data_in"}})
    assert proc.returncode == 0, proc.stderr


def test_check_params_says_a_missing_vgg19_file_before_any_stage_runs(tmp_path: Path):
    # The train stage checks the file before its first step, but under make repro collect to
    # baselines run first; check-params, which make repro runs before them, says it at once.
    home = tmp_path / "torch-home"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TORCH_HOME": str(home)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"perceptual": "vgg19"}}))
    command = [sys.executable, "-m", "nirgan.cli", "check-params"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert "params.yaml: train.perceptual: vgg19" in line and "vgg19-dcbb9e9d.pth" in line, line

    (home / "hub" / "checkpoints").mkdir(parents=True)
    (home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth").write_bytes(b"check-params looks for the file, not into it")
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
