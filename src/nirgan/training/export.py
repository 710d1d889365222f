"""What a finished (or resumed-to-the-end) run leaves behind: the model files, the metrics, the
loss history for ``dvc plots``, and the generator logged to MLflow (rank 0 only)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nirgan import tracking
from nirgan.config import Config, TrainConfig
from nirgan.io import atomic_file, write_json
from nirgan.models.artifacts import save_encoder, save_generator
from nirgan.training.session import TrainSession


def thesis_name(train_cfg: TrainConfig) -> str:
    """The thesis's configuration naming (Tables 4.2-4.8), e.g. ED-LS-LR-2."""
    parts = ["ED" if train_cfg.generator == "encoder_decoder" else "Mult",
             {"original": "O", "least_squares": "LS", "hinge": "H"}[train_cfg.adversarial_loss]]
    if train_cfg.perceptual != "none":
        parts.append("P" + {"discriminator": "D", "vgg19": "VGG"}[train_cfg.perceptual])
    for tag, lam in (("LR", train_cfg.lambda_lr), ("SD", train_cfg.lambda_sd), ("IR", train_cfg.lambda_ir)):
        if lam > 0:
            parts.append(f"{tag}-{lam:g}")
    if train_cfg.style_mapping:
        parts.append("SM")
    return "-".join(parts)


def export_run(session: TrainSession, cfg: Config, out_dir: Path, metrics_path: Path,
               history: list[dict[str, float]], result: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """Write out_dir/{generator.pt, encoder.pt}, ``metrics_path`` and the losses CSV beside it;
    when ``train.log_model``, log the generator to MLflow as a model and both files as they are
    (under ``files/``, what ``nirgan generate`` fetches from the registry). Returns {"model_format": ...}."""
    name = thesis_name(cfg.train)
    sampler = session.sampler().cpu().eval()
    save_generator(out_dir / "generator.pt", sampler.generator, cfg.train, session.label_dim, sampler.mapping)
    # E has no EMA copy: the trained one is the one evaluate reconstructs identities with.
    encoder = session.raw.get("encoder")
    save_encoder(out_dir / "encoder.pt", encoder)

    model_format = None
    if cfg.train.log_model:
        model_format = tracking.log_generator_model(sampler, _example_inputs(session), session.data.image_size)
        tracking.log_model_files([out_dir / "generator.pt", out_dir / "encoder.pt"])
    sampler.to(session.device)

    metrics = {
        "config": name,
        "steps": result["steps"],
        "epochs": result["epochs"],
        # The whole run's, over every session that trained it (as wall_s): a rerun of a finished
        # run trains no step, and its file must still say what the run did.
        "pairs_per_s": result["steps"] * session.global_batch / max(result["total_wall_s"], 1e-9),
        "wall_s": result["total_wall_s"],
        "mlflow_run_id": run_id,
        "model_format": model_format,
        **{f"final_{k}": v for k, v in result["losses"].items()},
    }
    write_json(metrics_path, metrics)
    if history:
        with atomic_file(metrics_path.with_name(metrics_path.stem + "_losses.csv")) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
    if math.isfinite(result["pairs_per_s"]):
        tracking.log_metrics({"final_pairs_per_s": result["pairs_per_s"]})
    tracking.set_tag("thesis_config", name)
    return {"model_format": model_format}


def _example_inputs(session: TrainSession) -> dict[str, np.ndarray]:
    """Two fixed samples in the forward's argument order (labels in degrees, when conditioned)."""
    n, d = 2, session.tc.latent_dim
    inputs = {
        "source": session.data.sample_source[:1].expand(n, -1, -1, -1).float().cpu().numpy().copy(),
        "z": np.random.default_rng(0).standard_normal((n, d)).astype(np.float32),
    }
    if session.label_dim:
        inputs["labels"] = np.zeros((n, session.label_dim), np.float32)
    return inputs
