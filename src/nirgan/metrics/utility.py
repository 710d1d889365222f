"""Train on synthetic, test on real (TSTR): is generated data worth anything to a pose/gaze model?

A feature distance can call blurred blobs "close to real"; a model trained on them cannot read
real faces. So the same head-pose/gaze estimator recipe (the evaluate stage's instrument:
:func:`nirgan.models.pose_estimator.train_pose_estimator` with the settings and working
resolution the stage uses) is trained three times per seed and tested on the real test targets:

- ``tstr``: on generated images only: every train-split source with its labels, k latents each
  (``G(y_i, z)``), paired with that source;
- ``trtr``: on the real train targets (the ceiling);
- ``tstr_untrained``: on an untrained generator's images for the same sources and labels (the
  floor: what the recipe learns from the sources' silhouettes alone).

The estimator's eye patches are supervised by the SOURCE renders' eye colour code. Generated
images are paired with their sources, so all three arms keep that supervision and differ only
in the images the estimator reads. Seed s retrains the estimator with ``settings.seed + s`` and
draws the latents from ``z_seed + s``.

The default run fits 5 estimators here (2 seeds x 3 arms; TRTR's first seed is the stage's
instrument). On a GPU those of one data size train as one
:class:`~nirgan.training.auxiliary.EstimatorBank` (each from its own seed and random streams, so
it learns what it would alone; G times fewer kernel launches); on a CPU one after another, which
is faster there (benchmarks/evaluate_speed.py --estimator-bank: the bank took 1.3x the CPU time).

Keys (degrees; ``<arm>`` is tstr, trtr, tstr_untrained; mean over seeds and population std, as
:func:`nirgan.metrics.aggregate_draws`):
  utility_<arm>_head_deg[_std]   mean abs error over head yaw/pitch/roll on the real test targets
  utility_<arm>_gaze_deg[_std]   mean abs error over gaze yaw/pitch
  utility_tstr_over_trtr_head, utility_tstr_over_trtr_gaze   ratio of the means (1 = as good as real)
  utility_seeds, utility_latents_per_source
Without pose/gaze labels every figure is the string "unavailable" and ``utility_reason`` says why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from nirgan.metrics import aggregate_draws
from nirgan.metrics.pose import angle_errors
from nirgan.models.pose_estimator import PoseEstimator, predict
from nirgan.training.auxiliary import EstimatorTraining, train_pose_estimator, train_pose_estimators

# (sources (n, 3, S, S) on [-1, 1], z, labels (n, 5) degrees) -> images (n, 1, S, S) on [-1, 1]. Here z
# is a tuple of (n, d) latents, one per seed, and the images a tuple too, one set per seed: the seeds
# draw over the same sources, and a generator computes what depends on the source alone once
# (Sampler.generate does both).
GenerateFn = Callable[[torch.Tensor, tuple[torch.Tensor, ...], np.ndarray], tuple[torch.Tensor, ...]]

ARMS = ("tstr", "trtr", "tstr_untrained")
FIGURES = tuple(f"utility_{arm}_{what}_deg{std}" for arm in ARMS for what in ("head", "gaze") for std in ("", "_std"))
RATIOS = ("utility_tstr_over_trtr_head", "utility_tstr_over_trtr_gaze")


def unavailable(reason: str) -> dict[str, object]:
    """Every utility figure marked as not computed, with the reason (the eval.json convention)."""
    return {**{k: "unavailable" for k in FIGURES + RATIOS}, "utility_reason": reason}


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(n, 1, S, S) on [-1, 1] -> uint8 (n, S, S): how the prepared targets are stored."""
    return ((images[:, 0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> [-1, 1] with the fixed scaling the models use (0 -> -1, 255 -> 1)."""
    return x.float().div(127.5).sub(1.0)


def generate_for_sources(generate: GenerateFn, sources: torch.Tensor, labels: np.ndarray, latents: int,
                         latent_dim: int, z_seeds: Sequence[int], batch_size: int = 50) -> list[torch.Tensor]:
    """For each of ``z_seeds``, uint8 (n * latents, S, S): ``latents`` images per uint8 (n, S, S, 3)
    source, source-major, from that seed's latents; each what a draw of its own would give."""
    reps = sources.repeat_interleave(latents, 0)
    labs = np.repeat(labels, latents, 0)
    zs = [torch.randn(len(reps), latent_dim, generator=torch.Generator().manual_seed(s)) for s in z_seeds]
    out: list[list[torch.Tensor]] = [[] for _ in zs]
    with torch.no_grad():
        for i in range(0, len(reps), batch_size):
            src = _model_range(reps[i : i + batch_size].permute(0, 3, 1, 2))
            drawn = generate(src, tuple(z[i : i + batch_size] for z in zs), labs[i : i + batch_size])
            for images, batch in zip(out, drawn, strict=True):
                images.append(to_uint8(batch.cpu()))
    return [torch.cat(images) for images in out]


def _use_bank(bank: bool | None, device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda" if bank is None else bank


def _fit_all(fits: list[tuple[torch.Tensor, EstimatorTraining]], sources: torch.Tensor, labels: np.ndarray,
             codes: torch.Tensor | None, resolution: int | None, device: torch.device | str,
             bank: bool) -> list[PoseEstimator]:
    """The estimators of ``fits`` (images uint8 (n * k, S, S) with k latents per source, recipe),
    in order: one after another, or those of one k as one bank."""
    models: dict[int, PoseEstimator] = {}
    by_k: dict[int, list[int]] = {}
    for i, (images, _) in enumerate(fits):
        by_k.setdefault(len(images) // len(sources), []).append(i)
    for k, members in by_k.items():
        data = (sources.repeat_interleave(k, 0), torch.as_tensor(np.repeat(labels, k, 0), dtype=torch.float32),
                None if codes is None else codes.repeat_interleave(k, 0))
        if bank:
            fitted = train_pose_estimators([fits[i][0] for i in members], *data, [fits[i][1] for i in members],
                                           device=device, resolution=resolution)
        else:
            fitted = [train_pose_estimator(fits[i][0], *data, fits[i][1], device=device, resolution=resolution)
                      for i in members]
        models.update(zip(members, fitted, strict=True))
    return [models[i] for i in range(len(fits))]


def tstr(
    train_targets: torch.Tensor,
    train_sources: torch.Tensor,
    train_labels: np.ndarray,
    test_targets: torch.Tensor,
    test_labels: np.ndarray,
    generate: GenerateFn | None,
    generate_untrained: GenerateFn | None,
    latent_dim: int,
    settings: EstimatorTraining,
    resolution: int | None = None,
    train_subjects: np.ndarray | None = None,
    seeds: int = 2,
    latents: int = 1,
    z_seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 50,
    trtr_first: torch.nn.Module | None = None,
    bank: bool | None = None,
    arms: Sequence[str] = ARMS,
) -> dict[str, object]:
    """TSTR, TRTR and untrained-generator TSTR (see the module docstring).

    ``train_targets`` uint8 (N, S, S), ``train_sources`` uint8 (N, S, S, 3), ``train_labels`` (N, 5)
    degrees; ``test_targets`` uint8 (M, S, S), ``test_labels`` (M, 5). ``settings`` and
    ``resolution`` are the estimator recipe (pass exactly the evaluate stage's); ``train_subjects``
    the subject names, used only if the recipe weighs its subject head. ``trtr_first``: an
    estimator already trained with this very recipe on these real train pairs with
    ``settings.seed`` (the evaluate stage's instrument); it stands in for the TRTR arm's first
    seed instead of training the same network again. ``bank``: fit the estimators of one data
    size as one :class:`~nirgan.training.auxiliary.EstimatorBank` (each learns what it would
    alone); default: on a GPU only, where it saves kernel launches (on a CPU it is slower).
    ``arms``: which of ARMS to fit (the others' figures are left out, and the ratios too unless
    both tstr and trtr are in); every arm of seed s draws from the same streams whichever others
    run, so the figures of separate calls merge into those of one call (:func:`with_ratios`).
    """
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"tstr: unknown arms {sorted(unknown)}; the arms are {', '.join(ARMS)}")
    for arm, generator in (("tstr", generate), ("tstr_untrained", generate_untrained)):
        if arm in arms and generator is None:
            raise ValueError(f"tstr: the {arm} arm needs its generator, got None")
    train_labels, test_labels = np.asarray(train_labels, np.float64), np.asarray(test_labels, np.float64)
    if len(train_targets) < 2 or len(test_targets) < 1:
        return unavailable(f"needs at least 2 train and 1 test pairs, got {len(train_targets)} and {len(test_targets)}")
    if not (np.isfinite(train_labels).all() and np.isfinite(test_labels).all()):
        return unavailable("pose/gaze labels are missing (NaN) in the split: no estimator error to measure")
    if not (len(train_targets) == len(train_sources) == len(train_labels)):
        raise ValueError(f"tstr: train targets, sources and labels differ in length "
                         f"({len(train_targets)}, {len(train_sources)}, {len(train_labels)})")
    codes = None
    if train_subjects is not None:
        codes = torch.as_tensor(np.unique(np.asarray(train_subjects).astype(str), return_inverse=True)[1])
    test_images = _model_range(test_targets[:, None])
    drawn = {arm: generate_for_sources(generator, train_sources, train_labels, latents, latent_dim,
                                       [z_seed + s for s in range(seeds)], batch_size)
             for arm, generator in (("tstr", generate), ("tstr_untrained", generate_untrained)) if arm in arms}
    # every fit of every seed and arm: (arm, images, recipe); TRTR's first seed is the instrument
    fits: list[tuple[str, torch.Tensor, EstimatorTraining | None]] = []
    for s in range(seeds):
        recipe = replace(settings, seed=settings.seed + s)
        for arm in ("tstr", "trtr", "tstr_untrained"):
            if arm not in arms:
                continue
            if arm == "trtr" and s == 0 and trtr_first is not None:
                fits.append((arm, train_targets, None))
                continue
            fits.append((arm, train_targets if arm == "trtr" else drawn[arm][s], recipe))
    models = _fit_all([(images, recipe) for _, images, recipe in fits if recipe is not None], train_sources,
                      train_labels, codes, resolution, device, _use_bank(bank, device))
    draws: dict[str, list[float]] = {}
    for arm, _, recipe in fits:
        model = trtr_first if recipe is None else models.pop(0)
        err = angle_errors(predict(model, test_images), test_labels, "e")
        draws.setdefault(f"utility_{arm}_head_deg", []).append(err["e_head_mean"])
        draws.setdefault(f"utility_{arm}_gaze_deg", []).append(err["e_gaze_mean"])
    out: dict[str, object] = dict(aggregate_draws(draws))
    out.update(utility_seeds=seeds, utility_latents_per_source=latents)
    return with_ratios(out) if {"tstr", "trtr"} <= set(arms) else out


def with_ratios(figures: dict[str, object]) -> dict[str, object]:
    """``figures`` plus utility_tstr_over_trtr_*: how far training on generated images falls
    short of training on real ones. Unavailable when either arm is."""
    out = dict(figures)
    for what in ("head", "gaze"):
        tstr_, trtr = out.get(f"utility_tstr_{what}_deg"), out.get(f"utility_trtr_{what}_deg")
        ok = all(isinstance(v, (int, float)) for v in (tstr_, trtr))
        out[f"utility_tstr_over_trtr_{what}"] = tstr_ / max(trtr, 1e-9) if ok else "unavailable"
    return out
