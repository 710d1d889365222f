"""evaluate.run end to end on a tiny fixture: arrays + manifests + an untrained generator.pt,
logged into a real (temporary) MLflow run; every key present, no NaN, reproducible."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nirgan.config import Config, EvaluateConfig, RandomRange, TrainConfig
from nirgan.labels import LABELS
from nirgan.models.artifacts import save_generator
from nirgan.models.networks import build_networks
from nirgan.models.artifacts import save_encoder
from nirgan.stages import baselines as baselines_stage
from nirgan.stages import evaluate

SIZE = 64
TCFG = TrainConfig(width=0.125, latent_dim=16, style_mapping=True)  # the fixture's generator.pt


def _fixture(root, with_mlflow: bool) -> dict:
    rng = np.random.default_rng(0)
    subjects, frames = ("s0", "s1", "s2"), 8
    rows, sources, targets = [], [], []
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for si, subject in enumerate(subjects):
        for f in range(frames):
            labels = rng.uniform(-15, 15, 5)
            cx, cy = SIZE / 2 + labels[0] * SIZE / 80, SIZE / 2 - labels[1] * SIZE / 80
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (SIZE / 5) ** 2
            targets.append(np.where(disc, 120 + 40 * si, 30).astype(np.uint8))
            src = np.zeros((SIZE, SIZE, 3), np.uint8)
            src[disc, 0] = 200
            sources.append(src)
            rows.append(dict(pair_id=f"{subject}_c0/{f:05d}", subject=subject, camera="c0", frame=f,
                             **dict(zip(LABELS, labels, strict=True))))
    df = pd.DataFrame(rows)
    dirs = {n: root / n for n in ("raw", "crops", "clean", "prepared", "split", "models")}
    for d in dirs.values():
        d.mkdir(parents=True)
    kinds = ["none"] * len(df)
    kinds[3], kinds[12] = "blur", "misaligned"
    pd.DataFrame({"pair_id": df.pair_id, "disturbance": kinds}).to_parquet(dirs["raw"] / "disturbances.parquet")
    df.to_parquet(dirs["crops"] / "manifest.parquet")
    removed = df.pair_id.isin([df.pair_id[3], df.pair_id[12], df.pair_id[5]])
    pd.DataFrame({"pair_id": df.pair_id[removed], "subject": df.subject[removed], "camera": "c0",
                  "rule": ["iqr_target", "iqr_source", "misalignment"], "value": 0.0, "lower": 0.0,
                  "upper": 1.0, "reason": "fixture"}).to_parquet(dirs["clean"] / "outliers.parquet")
    kept = df[~removed].reset_index(drop=True)
    kept.to_parquet(dirs["clean"] / "manifest.parquet")
    kept["index"] = np.arange(len(kept))
    keep_idx = np.flatnonzero(~removed.to_numpy())
    np.save(dirs["prepared"] / "source.npy", np.stack(sources)[keep_idx])
    np.save(dirs["prepared"] / "target.npy", np.stack(targets)[keep_idx])
    kept[kept.subject != "s2"].to_parquet(dirs["split"] / "train.parquet")
    kept[kept.subject == "s2"].to_parquet(dirs["split"] / "test.parquet")

    torch.manual_seed(0)
    nets = build_networks(TCFG)
    # the trainer's layout: L inside generator.pt, E in encoder.pt
    save_generator(dirs["models"] / "generator.pt", nets.generator, TCFG, 0, mapping=nets.mapping)
    save_encoder(dirs["models"] / "encoder.pt", nets.encoder)
    if with_mlflow:
        from nirgan.tracking import start_run, write_run_info

        with start_run({"train": TCFG.model_dump(mode="json")}, system_metrics=False) as run:
            write_run_info(dirs["models"] / "mlflow_run.json", run)
    return dirs


def _config() -> Config:
    return Config(train=TCFG, evaluate=EvaluateConfig(
        seeds=2, batch_size=16, diversity_sources=2, diversity_latents=3, estimator_epochs=2, feature_epochs=1,
        judge_few_shot_draws=1, judge_few_shot_steps=20,
    ))


def _run(root, dirs):
    out = evaluate.run(_config(), dirs["raw"], dirs["crops"], dirs["clean"], dirs["prepared"], dirs["split"],
                       dirs["models"], root / "metrics" / "eval.json", root / "plots")
    return out, json.loads((root / "metrics" / "eval.json").read_text())


@pytest.mark.timeout(600)
def test_evaluate_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    dirs = _fixture(tmp_path, with_mlflow=True)
    baselines_stage.run(_config(), dirs["prepared"], dirs["split"], dirs["models"])
    out, m = _run(tmp_path, dirs)
    assert m["baselines_from"] == str(dirs["models"] / "baselines")  # the stage's record, made from these inputs

    assert m["fid"] == "unavailable" and "pt_inception" in m["fid_reason"]
    assert m["lpips"] == "unavailable" and "alexnet" in m["lpips_reason"]
    expected = {"eval_test_pairs", "eval_seeds", "diversity_msssim", "diversity_msssim_std",
                "identity_l1", "identity_l1_random_z", "identity_cosine", "identity_cosine_random_z",
                "identity_cosine_same_subject_real", "identity_cosine_different_subject_real",
                "clean_precision", "clean_recall", "clean_iqr_precision", "clean_iqr_recall",
                "clean_misalignment_precision", "clean_misalignment_recall",
                "latent_code_rms_real", "latent_code_rms_sampled", "realism_set_size",
                "identity_instrument_accuracy", "identity_instrument_chance", "identity_instrument_holdout_frames"}
    for base in ("realism_fid_nirfeat", "realism_kid_nirfeat", "realism_swd_laplacian"):
        expected |= {base, f"{base}_std", f"{base}_untrained", f"{base}_real_baseline"}
    for name in (*LABELS, "head", "gaze"):
        expected |= {f"pose_real_{name}_mean", f"pose_gen_{name}_mean", f"pose_gen_{name}_mean_std",
                     f"pose_rec_{name}_mean"}
    for name in LABELS:
        expected |= {f"pose_real_{name}_p90", f"pose_gen_{name}_p90", f"pose_rec_{name}_p90"}
    assert expected <= set(m), sorted(expected - set(m))
    numbers = {k: v for k, v in m.items() if k in expected}
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers.values()), numbers
    assert 0 < m["diversity_msssim"] <= 1
    assert m["pose_gaze_from"].startswith("face trunk only")  # the fixture's red discs carry no eye code
    # fixture: 3 removed, 2 of them planted; 2 planted in all
    assert m["clean_precision"] == pytest.approx(2 / 3) and m["clean_recall"] == 1.0
    assert m["realism_swd_laplacian_real_baseline"] < m["realism_swd_laplacian_untrained"]
    # one test subject (8 pairs): random halves of 4, the reference and the baseline
    assert m["realism_halves"].startswith("at random") and m["realism_set_size"] == 4
    # generator.pt here IS the untrained network (build_networks at train.seed 0, which the untrained
    # arm rebuilds): from the same half's sources and z both arms must read alike
    for base in ("realism_fid_nirfeat", "realism_kid_nirfeat", "realism_swd_laplacian"):
        assert m[base] == pytest.approx(m[f"{base}_untrained"], rel=1e-5, abs=1e-9), base
    # identity: two train subjects with 6 and 7 frames, 2 of each held out of the identity net;
    # one test subject, so no different-subject pair to verify it on: unavailable, not informative
    assert m["identity_instrument_holdout_frames"] == 4 and m["identity_instrument_chance"] == 0.5
    assert m["identity_instrument_auc"] == "unavailable" and m["identity_instrument_auc_reason"]
    assert m["identity_informative"] is False and m["identity_informative_reason"].startswith("not informative")

    # the instrument is kept for generate's label check, and reads like the pose_real figures say
    from nirgan.models.artifacts import load_pose_estimator
    from nirgan.models.pose_estimator import predict

    instrument = load_pose_estimator(dirs["models"] / "label_estimator.pt")
    test_rows = pd.read_parquet(dirs["split"] / "test.parquet")
    targets = torch.from_numpy(np.load(dirs["prepared"] / "target.npy")[test_rows["index"].to_numpy()])
    err = np.abs(predict(instrument, targets[:, None].float() / 127.5 - 1) - test_rows[list(LABELS)].to_numpy())
    assert err[:, 0].mean() == pytest.approx(m["pose_real_head_yaw_mean"], rel=1e-4)
    # pose_rec reads G(y, E(x)): the test faces' own styles through the same generator
    from nirgan.models.artifacts import load_encoder, load_sampler

    sampler, (encoder, _) = load_sampler(dirs["models"] / "generator.pt"), load_encoder(dirs["models"] / "encoder.pt")
    x = targets[:, None].float() / 127.5 - 1
    sources = torch.from_numpy(np.load(dirs["prepared"] / "source.npy")[test_rows["index"].to_numpy()])
    with torch.no_grad():
        codes = encoder(x)
    rec = sampler.generate(sources.permute(0, 3, 1, 2).float() / 127.5 - 1, codes, style=True)
    err = np.abs(predict(instrument, rec) - test_rows[list(LABELS)].to_numpy())
    assert err[:, 0].mean() == pytest.approx(m["pose_rec_head_yaw_mean"], rel=1e-4)
    assert m["latent_code_rms_real"] == pytest.approx(float(codes.square().mean().sqrt()), rel=1e-5)

    plots = tmp_path / "plots"
    for name in ("samples.png", "interpolation.png", "arithmetic.png", "realism_diversity.json",
                 "pose_error.json", *[f"sweep_{a}.{ext}" for a in evaluate.SWEEPS for ext in ("png", "csv")]):
        assert (plots / name).stat().st_size > 0, name
    bars = json.loads((plots / "realism_diversity.json").read_text())
    assert {b["metric"] for b in bars} >= {"realism_fid_nirfeat", "realism_fid_nirfeat_untrained", "diversity_msssim"}
    pose = json.loads((plots / "pose_error.json").read_text())
    assert [p["attribute"] for p in pose] == [a for a in LABELS for _ in range(2)]
    assert {p["images"] for p in pose} == {"real", "generated"}
    assert pose[0]["mean_deg"] == m["pose_real_head_yaw_mean"] and pose[1]["p90_deg"] == m["pose_gen_head_yaw_p90"]
    curve = pd.read_csv(plots / "judge_curve.csv")
    assert curve.columns[0] == "images_per_class" and "judge_auc" in curve.columns and len(curve) >= 2
    assert curve["judge_auc"].iloc[-1] == pytest.approx(m["judge_auc"])
    assert (m["judge_few_shot_draws"], m["judge_few_shot_steps"]) == (1, 20)  # the params reach the judge
    # the few-shot figure is the mean of the curve's few-shot rows (equal draws per k), arm by arm
    few = curve[curve["images_per_class"] < m["judge_images_per_class_train"]]
    assert list(few["images_per_class"]) == [int(k) for k in m["judge_few_shot_images_per_class"].split(",")]
    for arm in ("judge_auc", "judge_auc_untrained", "judge_auc_real_vs_real", "judge_auc_blurred_real"):
        assert m[f"{arm}_few_shot"] == pytest.approx(few[arm].mean(), rel=1e-9), arm
    sweep = pd.read_csv(plots / "sweep_head_yaw.csv")
    assert list(sweep.columns) == ["pair_id", "true_deg", "estimated_real_deg", "estimated_generated_deg"]
    assert sweep["true_deg"].is_monotonic_increasing

    from mlflow.tracking import MlflowClient

    run_id = json.loads((dirs["models"] / "mlflow_run.json").read_text())["run_id"]
    assert out["mlflow_run"] == run_id
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics["eval.realism_fid_nirfeat"] == pytest.approx(m["realism_fid_nirfeat"])
    assert run.data.tags["eval.fid"] == "unavailable"
    # which generator the figures are of, for generate's dataset cards (eval.json and the run's tag)
    from nirgan.io import file_sha256

    assert m["generator_sha256"] == file_sha256(dirs["models"] / "generator.pt")
    assert run.data.tags["eval.generator_sha256"] == m["generator_sha256"]
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, "evaluate")}
    assert {"evaluate/samples.png", "evaluate/eval.json"} <= artifacts

    # each phase's wall seconds, and they add up to the stage's
    phases = {k: v for k, v in m.items() if k.startswith("evaluate_seconds_") and k != "evaluate_seconds_total"}
    assert set(phases) == {f"evaluate_seconds_{p}" for p in ("load", "baselines", "draws", "utility", "judge",
                                                                  "identity", "cleaning", "figures")}
    assert all(v >= 0 for v in phases.values()) and phases["evaluate_seconds_judge"] > 0
    assert sum(phases.values()) == pytest.approx(m["evaluate_seconds_total"], abs=0.1)

    # A record made from other inputs (here: other split arrays) is not used: evaluate computes the
    # baselines itself and says why. Same inputs, same seeds: the same figures as with the stage's
    # record (the seconds and where the baselines came from are not figures).
    record = dirs["models"] / "baselines" / "record.json"
    stale = json.loads(record.read_text())
    stale["fingerprint"]["split"] = "0" * 64
    record.write_text(json.dumps(stale))
    _, again = _run(tmp_path, dirs)
    assert again["baselines_from"].startswith("computed by evaluate") and "other split" in again["baselines_from"]

    def figures(metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if not k.startswith("evaluate_seconds_") and k != "baselines_from"}

    assert figures(again) == figures(m)


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("one_torch_thread")
def test_label_conditioned_generation_train_to_evaluate(tmp_path, monkeypatch):
    """train.condition_on_labels end to end: the train stage writes generator.pt, evaluate reads it
    through the same sampler, and both feed the network the same labels. The trainer's last sample
    grid (drawn inside training from degrees in the split) must come out of the file evaluate loads,
    pixel for pixel; a sampler that fed evaluate's degrees unscaled would draw other faces."""
    from train_helpers import small_config

    from nirgan.augmentation import to_model_range
    from nirgan.io import read_image
    from nirgan.models.artifacts import load_sampler
    from nirgan.stages import train as train_stage
    from nirgan.training.data import load_data
    from nirgan.training.session import TrainSession

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    dirs = _fixture(tmp_path, with_mlflow=False)
    trained = small_config(condition_on_labels=True, width=0.125, max_steps=3)
    cfg = trained.model_copy(update={"evaluate": EvaluateConfig(
        seeds=1, batch_size=16, diversity_sources=2, diversity_latents=2, estimator_epochs=1, feature_epochs=1,
        judge_seeds=1, judge_epochs=2, judge_few_shot_draws=1, judge_few_shot_steps=10)})
    train_stage.run(cfg, dirs["prepared"], dirs["split"], dirs["models"], tmp_path / "metrics" / "train.json")
    out = evaluate.run(cfg, dirs["raw"], dirs["crops"], dirs["clean"], dirs["prepared"], dirs["split"],
                       dirs["models"], tmp_path / "metrics" / "eval.json", tmp_path / "plots")
    m = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert out["mlflow_run"] != "none"
    assert math.isfinite(m["pose_gen_head_mean"]) and math.isfinite(m["identity_l1"])
    assert (tmp_path / "plots" / "sweep_head_yaw.png").stat().st_size > 0

    sampler = load_sampler(dirs["models"] / "generator.pt")
    assert sampler.label_dim == len(LABELS)
    # What the network read in a training step (augmentation off, so the labels are the split's)
    # and what it reads from evaluate's side for the same pairs: the same numbers.
    still = cfg.augment.model_copy(update={k: RandomRange(p=0.0, low=0.0, high=0.0) for k in
                                           ("scale", "shift", "rotation", "gamma")} | {"hflip_p": 0.0})
    data = load_data(dirs["prepared"], dirs["split"], torch.device("cpu"), cfg.train.sample_sources)
    session = TrainSession(cfg.model_copy(update={"augment": still}), data, torch.device("cpu"))
    in_training, in_evaluate = [], []
    hook = session.raw["generator"].register_forward_pre_hook(lambda _, args: in_training.append(args[2]))
    session.train_step()
    hook.remove()
    pairs = session.perm[: cfg.train.batch_size]
    sampler.generator.register_forward_pre_hook(lambda _, args: in_evaluate.append(args[2]))
    sampler.generate(to_model_range(data.source[pairs].permute(0, 3, 1, 2)),
                     torch.zeros(len(pairs), cfg.train.latent_dim), data.labels[pairs].numpy())
    assert torch.equal(in_training[0], in_evaluate[0]), (in_training[0][0], in_evaluate[0][0])

    grid = read_image(sorted((dirs["models"] / "samples").glob("*.png"))[-1], channels=3)
    z = session.sample_z
    assert torch.isfinite(data.sample_labels).all() and data.sample_labels.abs().max() > 1

    def to_uint8(x: torch.Tensor) -> np.ndarray:
        return x.add(1).mul(127.5).clamp(0, 255).round().byte()[:, 0].numpy()

    m_z, size = len(z), SIZE
    with torch.no_grad():
        for i in range(len(data.sample_source)):
            src = data.sample_source[i : i + 1].expand(m_z, -1, -1, -1)
            degrees = data.sample_labels[i : i + 1].expand(m_z, -1)
            drawn = grid[i * size : (i + 1) * size, 2 * size :, 0]
            tiles = np.concatenate(list(to_uint8(sampler(src, z, degrees))), axis=1)
            assert np.abs(tiles.astype(int) - drawn.astype(int)).max() <= 1, f"row {i}: evaluate's generator differs"
            # the labels matter: the network fed unscaled degrees draws other faces
            unscaled = np.concatenate(list(to_uint8(sampler.generator(src, sampler.style(z), degrees))), axis=1)
            assert np.abs(unscaled.astype(int) - drawn.astype(int)).mean() > 1


def test_without_an_encoder_identity_and_pose_rec_are_unavailable_with_the_reason():
    reason = "train.lambda_lr and train.lambda_ir are 0: the run has no latent encoder"
    out = evaluate._identity(Config(), Path("models"), None, None, None, None, reason, torch.device("cpu"), None)
    assert out == {"identity": "unavailable", "identity_reason": reason, "pose_rec": "unavailable",
                   "pose_rec_reason": reason}
