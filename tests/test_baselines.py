"""The baselines stage's record (src/nirgan/metrics/baselines.py): what makes it stale.

Evaluate uses the record only when its fingerprint matches its own inputs, and DVC reruns the
stage only when a declared dep changes. So two things must hold: the fingerprint moves with
everything the baselines read, and dvc.yaml declares every train key that moves the untrained
generator (else `dvc repro` would leave a record that evaluate then refuses, and recompute
silently slower). The end-to-end use of the record is in tests/test_evaluate.py.
"""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
import yaml

from nirgan.config import Config, DataError, TrainConfig
from nirgan.metrics import baselines
from nirgan.metrics.data import Split
from nirgan.models.artifacts import load_baselines, save_baselines, untrained_sampler
from nirgan.models.pose_estimator import PoseEstimator

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"width": 0.125, "latent_dim": 8}


def _split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(source=torch.from_numpy(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)),
                 target=torch.from_numpy(rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)),
                 labels=rng.uniform(-10, 10, (n, 5)), subjects=np.array([f"s{i % 2}" for i in range(n)]),
                 pair_ids=np.array([f"p{i}" for i in range(n)]))


def _fingerprint(cfg: Config, train: Split, test: Split) -> dict[str, str]:
    s = untrained_sampler(cfg.train, 0)
    return baselines.fingerprint(cfg, train, test, (s.generator, s.mapping))


def test_the_fingerprint_moves_with_what_the_baselines_read_and_nothing_else():
    cfg = Config(train=TrainConfig(**SMALL))
    train, test = _split(6, 0), _split(4, 1)
    base = _fingerprint(cfg, train, test)
    assert _fingerprint(cfg, _split(6, 0), _split(4, 1)) == base  # the same inputs, built again

    touched = _split(6, 0)
    touched.target[2, 3, 4] ^= 1
    assert _fingerprint(cfg, touched, test) == {**base, "split": _fingerprint(cfg, touched, test)["split"]} != base
    relabelled = _split(4, 1)
    relabelled.labels[0, 0] += 0.5
    assert _fingerprint(cfg, train, relabelled)["split"] != base["split"]

    def changed(**update) -> set[str]:
        other = Config(train=cfg.train.model_copy(update=update.pop("train", {})),
                       evaluate=cfg.evaluate.model_copy(update=update.pop("evaluate", {})))
        found = _fingerprint(other, train, test)
        return {k for k in base if found[k] != base[k]}

    assert changed(evaluate={"estimator_epochs": 7}) == {"params"}
    assert changed(evaluate={"judge_seeds": 5}) == {"params"}
    assert changed(evaluate={"seeds": 9, "diversity_sources": 3}) == set()  # evaluate's own draws only
    assert changed(train={"seed": 1}) == {"untrained_generator"}
    assert changed(train={"width": 0.25}) == {"untrained_generator"}
    assert changed(train={"lr_g": 1e-3, "max_steps": 5, "lambda_p": 2.0}) == set()


def _other_value(field: pydantic.fields.FieldInfo, value: object) -> list[object]:
    """Candidate values of another kind than ``value`` for a TrainConfig field."""
    if isinstance(value, bool):
        return [not value]
    args = typing.get_args(field.annotation)
    literal = [a for a in args if typing.get_origin(a) is typing.Literal] + (
        [field.annotation] if typing.get_origin(field.annotation) is typing.Literal else [])
    if literal:
        return [c for a in literal for c in typing.get_args(a) if c != value]
    if isinstance(value, int):
        return [value + 1, max(0, value - 1)]
    if isinstance(value, float):
        return [value * 2 + 0.5, value / 2]
    return []


def test_dvc_declares_every_key_that_moves_the_untrained_generator():
    """Each train key in turn set to another valid value: those that change the untrained
    generator's weights must be baselines params in dvc.yaml, and its evaluate params must be
    exactly baselines.KEYS (what the fingerprint holds)."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["baselines"]
    declared = set(stage["params"])
    assert {k for k in declared if k.startswith("evaluate.")} == {f"evaluate.{k}" for k in baselines.KEYS}

    train_cfg = TrainConfig(**SMALL)

    def digest(tc: TrainConfig) -> str:
        return _fingerprint(Config(train=tc), _split(4, 0), _split(2, 1))["untrained_generator"]

    base = digest(train_cfg)
    moving, tried = set(), 0
    for name, field in TrainConfig.model_fields.items():
        for value in _other_value(field, getattr(train_cfg, name)):
            try:
                other = TrainConfig(**{**train_cfg.model_dump(), name: value})
            except pydantic.ValidationError:
                continue
            tried += 1
            if digest(other) != base:
                moving.add(f"train.{name}")
            break
    assert tried > 30  # the loop reached most keys, not only a few that happen to validate
    assert {"train.seed", "train.width", "train.generator"} <= moving
    assert moving <= declared, f"dvc.yaml's baselines stage misses {sorted(moving - declared)}"
    assert "train.lr_g" not in declared and "train.max_steps" not in declared  # what a sweep varies


def test_a_record_is_used_only_whole_and_made_from_the_same_inputs(tmp_path):
    folder = tmp_path / "baselines"
    with pytest.raises(FileNotFoundError, match="run the baselines stage first"):
        load_baselines(folder)
    folder.mkdir()
    (folder / "record.json").write_text("{not json")
    with pytest.raises(DataError, match="record.json: unreadable"):
        load_baselines(folder)

    instrument = PoseEstimator(image_size=32, width=4, feature_dim=8)
    expected = {"params": "p", "split": "s", "untrained_generator": "u"}
    kept = baselines.Baselines(instrument, {"judge_auc_real_vs_real": 0.5}, [{"arm": "a"}], expected)
    save_baselines(folder, instrument, baselines.record(kept))
    loaded, saved = load_baselines(folder)
    found, why = baselines.from_record(loaded, saved, expected)
    assert why == "" and found.figures == kept.figures and found.judge_rows == kept.judge_rows
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), instrument.state_dict().values(),
                                                 strict=True))
    found, why = baselines.from_record(loaded, saved, {**expected, "split": "t", "params": "q"})
    assert found is None and why == "it was computed from other params, split than this evaluation's"
    found, why = baselines.from_record(loaded, {"fingerprint": expected}, expected)
    assert found is None and "lacks" in why
