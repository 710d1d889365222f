"""Stage evaluate: thesis 3.3 and 3.5.3, plus the numbers the thesis only judged by eye.

Inputs: ``data/prepared`` arrays, ``data/split`` train/test manifests, ``models/generator.pt``
and ``models/encoder.pt`` (read through :mod:`nirgan.models.artifacts`; never a training
checkpoint), ``models/baselines`` (the baselines stage's record: the instrument and every
figure that does not read the trained generator; :mod:`nirgan.metrics.baselines`), ``data/raw``,
``data/crops`` and ``data/clean`` for the cleaning figures.

Outputs: ``metrics/eval.json`` (flat keys, listed in :mod:`nirgan.metrics`), ``plots/`` (PNGs
and the JSON/CSV files ``dvc plots`` reads, written atomically), and everything logged to the
training run in MLflow (``models/mlflow_run.json``) when there is one.

The stage is policy and I/O: the measures are :mod:`nirgan.metrics` (``realism``, ``identity``,
``cleaning``), the figures :mod:`nirgan.metrics.figures`, the MLflow logging
:mod:`nirgan.tracking`. Order of work, chosen for a 2-core CPU:

1. the baselines: the pose/gaze estimator trained on the real train-split targets (it is both
   the attribute-preservation instrument and the feature network of the always-available
   realism figures), calibrated here on the real test targets, and the reference arms of
   utility and judge. Read from the baselines stage's record when it was made from these very
   inputs (``baselines_from`` names it), else computed here;
2. for each of ``evaluate.seeds`` draws: one z per test source through the trained generator
   and through an untrained one (same architecture, same init, ``train.seed``), realism and
   pose errors against the source labels; N x M images for diversity;
3. utility: train-on-synthetic / test-on-real (:mod:`nirgan.metrics.utility`) with that very
   estimator recipe, beside the baselines' real-trained and untrained-generator-trained arms;
4. the realism judge, a real-vs-generated classifier two-sample test (:mod:`nirgan.metrics.judge`),
   beside the baselines' arms;
5. identity reconstruction, the cleaning figures, the figures.

Everything random draws from generators seeded by ``evaluate.seed`` (draw k uses seed + k),
so a rerun with the same inputs writes the same figures.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nirgan import tracking
from nirgan.augmentation import to_model_range
from nirgan.config import Config, DataError
from nirgan.devices import effective_precision, resolve_device
from nirgan.io import atomic_dir, file_sha256, stage_log, write_json
from nirgan.metrics import aggregate_draws, baselines
from nirgan.metrics.cleaning import evaluate_cleaning
from nirgan.metrics.data import Split, has_labels, load_train_test
from nirgan.metrics.feature_check import holdout_mask
from nirgan.metrics.figures import SWEEPS, draw_figures, write_plot_data
from nirgan.metrics.identity import code_scale, holdout_accuracy, reconstruction_cosines, reconstruction_l1, reconstructions
from nirgan.metrics.instrument import estimator_recipe, estimator_resolution
from nirgan.metrics.judge import realism_judge
from nirgan.metrics.laps import Laps
from nirgan.metrics.pose import angle_errors
from nirgan.metrics.realism import RealismReference, imagenet_networks, measure_draws, realism_protocol
from nirgan.metrics.utility import tstr, with_ratios
from nirgan.models.artifacts import (
    BASELINES,
    Sampler,
    load_encoder,
    load_baselines,
    load_identity_net,
    load_sampler,
    untrained_sampler,
)
from nirgan.models.pose_estimator import PoseEstimator, predict
from nirgan.training.identity import train_identity_net

log = logging.getLogger("nirgan.evaluate")

__all__ = ["SWEEPS", "run"]


def run(
    cfg: Config,
    raw_dir: Path,
    crops_dir: Path,
    clean_dir: Path,
    prepared_dir: Path,
    split_dir: Path,
    model_dir: Path,
    metrics_path: Path,
    plots_dir: Path,
) -> dict[str, Any]:
    raw_dir, crops_dir, clean_dir = Path(raw_dir), Path(crops_dir), Path(clean_dir)
    prepared_dir, split_dir, model_dir = Path(prepared_dir), Path(split_dir), Path(model_dir)
    e = cfg.evaluate
    lap = Laps(log, "evaluate")

    train, test = load_train_test(prepared_dir, split_dir)

    with stage_log("evaluate", train_pairs=len(train), test_pairs=len(test), seeds=e.seeds) as counts:
        device = resolve_device(e.device, "evaluate.device")
        # every image evaluate judges is drawn in evaluate.precision (the generate stage's default too)
        sampler = load_sampler(model_dir / "generator.pt", map_location=device).inference(e.precision, device)
        untrained = untrained_sampler(sampler.train_config, sampler.label_dim).inference(e.precision, device)
        encoder, encoder_from = load_encoder(model_dir / "encoder.pt", map_location=device)
        inception, lp, metrics = imagenet_networks(cfg, device)
        metrics.update(eval_test_pairs=len(test), eval_train_pairs=len(train), eval_seeds=e.seeds,
                       evaluate_precision=effective_precision(e.precision, device),
                       # which generator these figures are of: generate attaches them only to its datasets
                       generator_sha256=file_sha256(model_dir / "generator.pt"))
        lap("load", "inputs and networks loaded")
        real_test = test.targets()
        labelled = has_labels(train, test)

        # 1. the baselines stage's record (the instrument, and every figure the trained weights do
        #    not enter), or, when it is missing or was made from other inputs, the same computed here
        reference, baselines_from = _baselines(cfg, model_dir / BASELINES, train, test, untrained, device, labelled)
        estimator = reference.instrument
        metrics.update(reference.figures, baselines_from=baselines_from)
        how = "trained" if baselines_from.startswith("computed") else f"read from {baselines_from}"
        lap("baselines", f"pose estimator {how}, and the baseline figures" if labelled
            else f"feature network {how} (no pose/gaze labels), and the baseline figures")
        metrics["pose_gaze_from"] = ("eye patches (keypoints from the sources' eye colour code)" if estimator.eyes
                                     else "face trunk only (the sources carry no eye colour code)")
        est_pred_real = predict(estimator, real_test)
        if labelled:
            metrics.update(angle_errors(est_pred_real, test.labels, "pose_real"))
        else:
            metrics.update(pose_real="unavailable",
                           pose_reason="pose/gaze labels are missing (NaN) in the split: no estimator error")
        ref = RealismReference.of(real_test, estimator, inception, lp, e.batch_size)

        # 2. draws: realism (trained, untrained, real baseline), pose on generated, diversity
        draws, first_fakes = measure_draws(ref, sampler, untrained, test, labelled, e)
        metrics.update(aggregate_draws(draws), **realism_protocol(test.subjects, inception is not None))
        lap("draws", f"{e.seeds} draws")

        # 3. utility: the same estimator recipe trained on generated images, tested on real ones
        metrics.update(tstr(
            train.target, train.source, train.labels, test.target, test.labels, sampler.generate, None,
            sampler.latent_dim, estimator_recipe(cfg), resolution=estimator_resolution(cfg, train),
            train_subjects=train.subjects, seeds=e.utility_seeds, latents=e.utility_latents, z_seed=e.seed,
            device=device, arms=("tstr",)))
        metrics = with_ratios(metrics)  # TSTR over the baselines' TRTR
        lap("utility", f"utility (TSTR) not run: {metrics['utility_reason']}" if "utility_reason" in metrics
            else f"utility (TSTR), {e.utility_seeds} seeds")

        # 4. the realism judge: a real-vs-generated classifier on held-out halves
        judged, judge_curve = realism_judge(
            torch.cat([train.targets(), real_test]), torch.cat([train.sources(), test.sources()]),
            np.concatenate([train.labels, test.labels]), sampler.generate, None, sampler.latent_dim,
            seeds=e.judge_seeds, epochs=e.judge_epochs, seed=e.seed, device=device,
            few_shot_draws=e.judge_few_shot_draws, few_shot_steps=e.judge_few_shot_steps, precision=e.precision,
            baselines=False)
        metrics.update(judged)
        judge_curve = sorted([*reference.judge_rows, *judge_curve], key=lambda r: (r["arm"], r["images_per_class"]))
        lap("judge", f"realism judge not run: {judged['judge_reason']}" if "judge_reason" in judged
            else f"realism judge, {e.judge_seeds} seeds")

        # 5. identity reconstruction
        metrics.update(_identity(cfg, model_dir, train, test, sampler, encoder, encoder_from, device,
                                 estimator if labelled else None))
        lap("identity", f"identity not run: {metrics['identity_reason']}" if "identity_reason" in metrics
            else "identity")

        # 6. cleaning quality against the twin's ground truth
        metrics.update(evaluate_cleaning(raw_dir, crops_dir, clean_dir))
        lap("cleaning", f"cleaning not measured: {metrics['clean_reason']}" if "clean_reason" in metrics
            else "cleaning")

        # 7. figures and dvc plot data
        with atomic_dir(plots_dir) as tmp:
            draw_figures(tmp, test, train, sampler, encoder, estimator, first_fakes, est_pred_real, labelled, e.seed)
            write_plot_data(tmp, metrics, labelled, judge_curve)
        lap("figures")
        # JSON has no NaN: an undefined figure (e.g. the precision of a rule that flagged nothing) is null.
        metrics = {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in metrics.items()}
        # Wall seconds per phase; MLflow's come after this file is written and logged with the
        # run, so they are in the stage log only.
        metrics.update(lap.metrics())
        write_json(metrics_path, metrics)
        run_id = tracking.log_evaluation(model_dir / "mlflow_run.json", metrics, Path(plots_dir), Path(metrics_path))
        lap("mlflow")
        counts.update(keys=len(metrics), mlflow_run=run_id or "none", seconds=round(lap.total(), 1),
                      **({"encoder_from": encoder_from} if encoder is not None else {}))
    return dict(counts)


# ------------------------------------------------------------------------- baselines
def _baselines(cfg: Config, folder: Path, train: Split, test: Split, untrained: Sampler, device: torch.device,
               labelled: bool) -> tuple[baselines.Baselines, str]:
    """The baselines stage's record if it was made from these inputs, else the same computed
    here; with where they came from (``baselines_from``)."""
    nets = (untrained.generator, untrained.mapping)
    try:
        reference, why = baselines.from_record(*load_baselines(folder, device),
                                               baselines.fingerprint(cfg, train, test, nets))
    except (FileNotFoundError, DataError) as err:
        reference, why = None, str(err)
    if reference is not None:
        return reference, str(folder)
    log.warning("evaluate: computing the baselines here, not reading %s: %s", folder, why)
    return (baselines.compute(cfg, train, test, untrained.generate, untrained.latent_dim, nets, device, labelled),
            f"computed by evaluate, not read from {folder}: {why}")


# ------------------------------------------------------------------------- identity
def _identity_embedder(cfg: Config, model_dir: Path, train: Split, device: torch.device) -> tuple[Any, str, dict]:
    """The trainer's NIR identity network if it saved one; else one trained here (on targets
    area-downsampled to half size, which keeps it within the CPU budget; it is fully
    convolutional with global pooling, so it embeds the same way at any size). With it, its
    subject accuracy on held-out train frames where there are some (see nirgan.metrics.identity)."""
    path = model_dir / "identity_net.pt"
    if path.exists():
        net = load_identity_net(path, device)

        def embed_saved(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return torch.cat([net.embed(x[i : i + 64].to(device)).cpu() for i in range(0, len(x), 64)])

        return embed_saved, f"{path} (the training run's; it may have been a training loss)", {
            "identity_instrument_accuracy": "unavailable",
            "identity_instrument_accuracy_reason": "the training run's identity net saw every train frame"}
    if len(np.unique(train.subjects)) < 2:
        return None, "the train split holds fewer than 2 subjects: no identity network can be trained", {}
    small = torch.nn.functional.avg_pool2d(train.target[:, None].float(), 2).round().byte()[:, 0]
    held = holdout_mask(train.subjects, cfg.evaluate.seed)
    keep = torch.as_tensor(np.flatnonzero(~held))
    net = train_identity_net(small[keep], train.subjects[~held], epochs=cfg.evaluate.feature_epochs, device=device,
                             seed=cfg.evaluate.seed)
    _, codes = np.unique(train.subjects, return_inverse=True)  # the net's classes: held out never takes a subject whole
    accuracy = holdout_accuracy(net, to_model_range(small[torch.as_tensor(np.flatnonzero(held))][:, None]), codes[held])

    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net.embed(torch.nn.functional.avg_pool2d(x[i : i + 64], 2).to(device)).cpu()
                              for i in range(0, len(x), 64)])

    return embed, "trained here on the train-split targets (half size), some frames of each subject held out", accuracy


def _identity(cfg: Config, model_dir: Path, train: Split, test: Split, sampler: Any, encoder: Any,
              encoder_from: str, device: torch.device, estimator: PoseEstimator | None) -> dict[str, Any]:
    if encoder is None:
        return {"identity": "unavailable", "identity_reason": encoder_from,
                "pose_rec": "unavailable", "pose_rec_reason": encoder_from}
    e = cfg.evaluate
    x, codes, rec, rand = reconstructions(sampler, encoder, test, e.batch_size, e.seed)
    out: dict[str, Any] = reconstruction_l1(x, rec, rand)
    out.update(code_scale(sampler, codes, e.seed))
    # pose_gen read on G(y, E(x)) instead of G(y, z): the same G and sources, the style of the
    # real face. A gap to pose_gen is the cost of sampling z where G was not trained to draw.
    if estimator is not None:
        out.update(angle_errors(predict(estimator, rec), test.labels, "pose_rec"))
    else:
        out.update(pose_rec="unavailable", pose_rec_reason="pose/gaze labels are missing (NaN) in the split")
    embed, where, instrument = _identity_embedder(cfg, model_dir, train, device)
    if embed is None:
        out.update(identity_cosine="unavailable", identity_cosine_reason=where, identity_informative=False,
                   identity_informative_reason=f"not informative: {where}")
        return out
    out.update(reconstruction_cosines(embed, x, rec, rand, test, train, e.seed), **instrument, identity_net=where)
    return out
