"""The typed config: params.yaml loads, and every kind of bad value names its key."""

from pathlib import Path

import pytest
import yaml

from nirgan.cli import main as cli_main
from nirgan.config import Config, ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_load_and_keep_thesis_configuration():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.train.generator == "encoder_decoder"
    assert cfg.train.adversarial_loss == "least_squares"
    assert cfg.train.lambda_lr == 2.0  # ED-LS-LR-2


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
