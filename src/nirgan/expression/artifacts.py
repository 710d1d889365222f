"""The expression family's model file, ``expression_generator.pt``.

    {"kind", "names", "image_size", "latent_dim", "config" (the run's ExpressionTrainConfig),
     "generator" (state dict; the EMA one when the run has it), "encoder" (state dict,
     cgan_encoder only; else absent)}

How the file is written and read safely is :mod:`nirgan.models.files`' (shared with the NIR
family's :mod:`nirgan.models.artifacts`); what it holds is this module's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nirgan.config import DataError, ExpressionTrainConfig
from nirgan.expression.models.build import build_expression_networks
from nirgan.expression.models.translator import ExpressionTranslator
from nirgan.io import atomic_file
from nirgan.models.files import build_from, cpu_state, load_payload


def save_expression_generator(path: str | Path, translator: ExpressionTranslator, cfg: ExpressionTrainConfig) -> None:
    payload = {"kind": translator.kind, "names": list(translator.names), "image_size": translator.image_size,
               "latent_dim": translator.latent_dim, "config": cfg.model_dump(mode="json"),
               "generator": cpu_state(translator.generator)}
    if translator.encoder is not None:
        payload["encoder"] = cpu_state(translator.encoder)
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def load_expression_translator(path: str | Path, map_location: str | torch.device = "cpu") -> ExpressionTranslator:
    """The :class:`ExpressionTranslator` of expression_generator.pt, in eval mode; ``.config`` is its
    ExpressionTrainConfig."""
    path = Path(path)
    payload = load_payload(path, "expression generator")
    missing = ({"kind", "names", "image_size", "latent_dim", "config", "generator"} - set(payload)
               if isinstance(payload, dict) else {"all keys"})
    if missing:
        raise DataError(f"{path}: not a nirgan expression generator file, missing {sorted(missing)}")

    def build() -> ExpressionTranslator:
        cfg = ExpressionTrainConfig.model_validate(payload["config"])
        with torch.random.fork_rng(devices=[]):
            nets = build_expression_networks(cfg, len(payload["names"]))
        nets.generator.load_state_dict(payload["generator"])
        encoder = None
        if payload["kind"] == "cgan_encoder":
            if "encoder" not in payload:
                raise DataError(f"{path}: a cgan_encoder file without its encoder E")
            encoder = nets.encoder
            encoder.load_state_dict(payload["encoder"])
        translator = ExpressionTranslator(payload["kind"], nets.generator, payload["names"],
                                          int(payload["image_size"]), int(payload["latent_dim"]), encoder)
        translator.config = cfg
        return translator

    return build_from(path, "expression generator", build).to(map_location).eval()
