"""Evaluate's baselines: every figure that does not depend on what training learned.

Evaluate reads the trained generator against references: the instrument (the pose/gaze estimator
trained on real faces, :mod:`nirgan.metrics.instrument`), estimators trained on real images
(TRTR) and on an untrained generator's images, and realism judges of real against real, blurred
real and untrained-generator images. None of them reads the trained weights. They depend on the
split, on the evaluate params that set their protocol (:data:`KEYS`) and on the untrained
generator, which is the run's architecture at its initialisation (``train.seed``). On the
default CPU run they are about half of evaluate's work.

The baselines stage computes them before train (dvc.yaml), so a ``dvc exp run`` over learning
rates, steps or loss weights reuses them and only evaluate's own half runs after training.

A record names what it was computed from (:func:`fingerprint`: the evaluate params it read, a
digest of the split's arrays and one of the untrained generator's weights). Evaluate checks it
against its own inputs and, when the record is missing or was made from anything else, computes
the baselines itself and says why in ``baselines_from``: a stale record can never pass for
current figures. DVC declares every train key that builds the untrained generator
(tests/test_baselines.py and tests/test_stage_params.py check it), so under ``dvc repro`` that
fallback does not happen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nirgan.config import Config
from nirgan.metrics.data import Split
from nirgan.metrics.instrument import estimator_recipe, estimator_resolution, train_instrument
from nirgan.metrics.judge import realism_judge
from nirgan.metrics.utility import GenerateFn, tstr
from nirgan.models.pose_estimator import PoseEstimator
from nirgan.digest import data_digest

# The evaluate params the baselines read; a change to any other leaves them valid.
KEYS = ("device", "precision", "seed", "estimator_epochs", "estimator_resolution", "utility_seeds", "utility_latents",
        "judge_seeds", "judge_epochs", "judge_few_shot_draws", "judge_few_shot_steps")
BASELINE_ARMS = ("trtr", "tstr_untrained")  # utility arms that do not read the trained generator


@dataclass
class Baselines:
    instrument: PoseEstimator
    figures: dict[str, object]  # eval.json keys: the baseline arms of utility and judge, the feature check
    judge_rows: list[dict[str, object]]  # the baseline arms' rows of the judge curve
    fingerprint: dict[str, str]


def fingerprint(cfg: Config, train: Split, test: Split, untrained: Sequence[nn.Module | None]) -> dict[str, str]:
    """What the baselines were computed from: the params read, the split's arrays and the
    untrained generator's weights (``untrained``: its networks, the style mapping included)."""
    arrays = {f"{part}.{name}": getattr(split, name) for part, split in (("train", train), ("test", test))
              for name in ("source", "target", "labels", "subjects")}
    weights = {f"{i}.{name}": t.detach().cpu() for i, m in enumerate(untrained) if m is not None
               for name, t in m.state_dict().items()}
    return {"params": json.dumps({k: getattr(cfg.evaluate, k) for k in KEYS}, sort_keys=True),
            "split": data_digest(arrays), "untrained_generator": data_digest(weights)}


def compute(cfg: Config, train: Split, test: Split, generate_untrained: GenerateFn, latent_dim: int,
            untrained: Sequence[nn.Module | None], device: torch.device, labelled: bool) -> Baselines:
    """The instrument and every baseline figure. ``generate_untrained`` draws the untrained
    generator's images (as evaluate draws them), ``untrained`` is that generator's networks."""
    e = cfg.evaluate
    instrument, figures = train_instrument(cfg, train, device, labelled)
    figures.update(tstr(
        train.target, train.source, train.labels, test.target, test.labels, None, generate_untrained,
        latent_dim, estimator_recipe(cfg), resolution=estimator_resolution(cfg, train),
        train_subjects=train.subjects, seeds=e.utility_seeds, latents=e.utility_latents, z_seed=e.seed,
        device=device, trtr_first=instrument, arms=BASELINE_ARMS))
    judged, rows = realism_judge(
        torch.cat([train.targets(), test.targets()]), torch.cat([train.sources(), test.sources()]),
        np.concatenate([train.labels, test.labels]), None, generate_untrained, latent_dim,
        seeds=e.judge_seeds, epochs=e.judge_epochs, seed=e.seed, device=device,
        few_shot_draws=e.judge_few_shot_draws, few_shot_steps=e.judge_few_shot_steps, precision=e.precision,
        baselines=True)
    figures.update(judged)
    return Baselines(instrument, figures, rows, fingerprint(cfg, train, test, untrained))


def record(baselines: Baselines) -> dict[str, object]:
    """What the baselines stage writes beside the instrument (models/baselines/record.json)."""
    return {"fingerprint": baselines.fingerprint, "figures": baselines.figures, "judge_rows": baselines.judge_rows}


def from_record(instrument: PoseEstimator, saved: dict, expected: dict[str, str]) -> tuple[Baselines | None, str]:
    """The saved baselines if they were computed from ``expected``; else None and what differs."""
    try:
        found, figures, rows = dict(saved["fingerprint"]), dict(saved["figures"]), list(saved["judge_rows"])
    except (KeyError, TypeError, ValueError) as err:
        return None, f"the record lacks {err}"
    differ = sorted(k for k in expected if found.get(k) != expected[k])
    if differ:
        return None, f"it was computed from other {', '.join(differ)} than this evaluation's"
    return Baselines(instrument, figures, rows, found), ""
