"""The pose/gaze estimator's own training (single fits and banks); the NIR identity network's is
:mod:`nirgan.training.identity`.

Both serve two masters. The trainer uses them frozen, as the attribute-preservation loss
(``train.lambda_attr``) and the identity distance (``ir_distance`` / ``sd_image_distance:
identity``); evaluate trains fresh ones as its instruments (with seeds of their own, so the
instrument is never the network the generator learned to satisfy). The networks themselves
are pure modules in :mod:`nirgan.models`; their files are :mod:`nirgan.models.artifacts`'.

:mod:`nirgan.training.frozen_networks` is the trainer's side: it trains what the configuration
needs on rank 0 (or reloads it when resuming) and shares it with the other ranks through the file.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nirgan.augmentation import apply_params, draw_params, transform_points
from nirgan.config import AugmentConfig, RandomRange
from nirgan.devices import autocast
from nirgan.labels import FLIP_SIGN
from nirgan.models.pose_estimator import GAZE, PoseEstimator, eye_keypoints, has_eye_code

log = logging.getLogger("nirgan.train")


# ------------------------------------------------------------------------ pose estimator
@dataclass(frozen=True)
class EstimatorTraining:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    subject_weight: float = 0.1
    gaze_weight: float = 2.0  # the eye patches' gaze, on top of the trunk's five angles
    keypoint_weight: float = 1.0  # opening centres and patch keypoints (pixels of a 128 crop)
    jitter: float = 2.0  # pixels: how far training moves the patches off the true opening centres
    # Contrast and brightness draws (x -> c x + b on [-1, 1], c in 1 +/- this, b in +/- this). Without
    # them the estimator read head pose from brightness: real test faces made 20% brighter moved its
    # head error from 1.4 to 4.3 degrees, so a generated face of a new, darker or brighter identity
    # was scored on its shading. With them: 1.2 degrees on the brighter faces, 1.3 on the originals.
    photometric: float = 0.3
    seed: int = 0
    # bf16 autocast where bf16 is native (nirgan.devices.autocast); fp32 elsewhere
    precision: str = "fp32"


def augment_without_rotation(image_size: int) -> AugmentConfig:
    """Flips, small scale/shift and gamma draws, and no rotation: the thesis's augmentation keeps the
    roll label unchanged under rotation, which would teach the estimator wrong rolls."""
    return AugmentConfig(
        image_size=image_size,
        scale=RandomRange(p=0.5, low=1.0, high=1.06),
        shift=RandomRange(p=0.5, low=-0.02, high=0.02),
        rotation=RandomRange(p=0.0, low=0.0, high=0.0),
        gamma=RandomRange(p=0.5, low=90.0, high=110.0),
        hflip_p=0.5,
    )


def photometric_jitter(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image contrast and brightness, ``c x + b`` clamped to [-1, 1]; see EstimatorTraining."""
    if amount <= 0:
        return x
    shape = (x.shape[0], 1, 1, 1)
    c = 1 + (torch.rand(shape, generator=generator, device=x.device) * 2 - 1) * amount
    b = (torch.rand(shape, generator=generator, device=x.device) * 2 - 1) * amount
    return (x * c + b).clamp(-1, 1)


def _masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    loss = F.smooth_l1_loss(pred.float(), target.float(), beta=beta, reduction="none")
    mask = mask.expand_as(loss).float()
    return (loss * mask).sum() / mask.sum().clamp_min(1)


def _standardisation(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels with unknowns zeroed, known mask, mean, std) of (N, 5) degrees.

    Flips mirror the labels, so the standardisation is taken over both signs. Unknown angles
    (NaN) are left out of the loss; with none known only the subject head learns, which still
    gives the realism features something to see."""
    known = torch.isfinite(labels)
    labels = torch.where(known, labels, torch.zeros_like(labels)).float()
    both = torch.cat([labels, labels * torch.tensor(FLIP_SIGN)])
    both_known = torch.cat([known, known]).float()
    count = both_known.sum(0).clamp_min(1.0)
    mean = (both * both_known).sum(0) / count
    std = (((both - mean) ** 2 * both_known).sum(0) / count).sqrt().clamp_min(1e-3)
    std = torch.where(both_known.sum(0) > 1, std, torch.ones_like(std))
    return labels, known, mean, std


@dataclass
class _Fit:
    """What one estimator's training reads: its data, its label standardisation, its two
    random streams (batch order; augmentation and jitter draws) and its recipe."""

    targets: torch.Tensor
    sources: torch.Tensor
    labels: torch.Tensor
    known: torch.Tensor
    subjects: torch.Tensor | None
    mean: torch.Tensor
    std: torch.Tensor
    settings: EstimatorTraining
    device: torch.device

    def __post_init__(self) -> None:
        self.gen = torch.Generator().manual_seed(self.settings.seed)
        self.aug_gen = torch.Generator(device=self.device).manual_seed(self.settings.seed)
        self.aug_cfg = augment_without_rotation(self.targets.shape[-1])
        self._eye_points: tuple[torch.Tensor, torch.Tensor] | None = None

    def eye_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 4, 2) eye keypoints of every un-augmented source and (N, 4) their validity, found
        once. A batch moves them with its draws: resampling the three-channel sources and finding
        the keypoints again took 19 of a batch's 28 ms of preparation, a third of an estimator
        step on a CPU."""
        if self._eye_points is None:
            parts = [eye_keypoints(self.sources[i : i + 256].to(self.device).permute(0, 3, 1, 2).float()
                                   .div(255.0).mul(2.0).sub(1.0)) for i in range(0, len(self.sources), 256)]
            self._eye_points = torch.cat([p for p, _ in parts]), torch.cat([v for _, v in parts])
        return self._eye_points

    def batch(self, idx: torch.Tensor, eyes: bool) -> dict[str, torch.Tensor]:
        """One augmented training batch: ``x``, standardised ``y`` and its ``mask``; with eyes the
        true keypoints ``kp`` / ``kp_valid`` and the jittered ``openings`` that place the patches."""
        device, size, settings = self.device, self.targets.shape[-1], self.settings
        tgt = self.targets[idx.to(self.targets.device)].to(device)[:, None].float().div(255.0)
        params = draw_params(len(idx), self.aug_cfg, self.aug_gen, device)
        _, x, y = apply_params(None, tgt, self.labels[idx].to(device), params)
        x = photometric_jitter(x, settings.photometric, self.aug_gen)
        out = dict(x=x, y=(y - self.mean.to(device)) / self.std.to(device), mask=self.known[idx].to(device))
        if eyes:
            points, valid = (t[idx.to(t.device)] for t in self.eye_points())
            kp = transform_points(points, params, size)
            valid = valid & ((kp >= -0.5) & (kp <= size - 0.5)).all(-1)
            # a mirror swaps which eye is the image-left one (eye_keypoints' order)
            flip = params["flip"]
            kp = torch.where(flip[:, None, None], kp[:, [2, 3, 0, 1]], kp)
            kp_valid = torch.where(flip[:, None], valid[:, [2, 3, 0, 1]], valid)
            kp = (kp + 0.5) * 128 / size - 0.5  # pixels of a 128 crop
            true_openings = kp[:, 1::2]
            jitter = (torch.rand(true_openings.shape, generator=self.aug_gen, device=device) * 2 - 1) * settings.jitter
            out.update(kp=kp, kp_valid=kp_valid, openings=true_openings + jitter)
        if self.subjects is not None and settings.subject_weight > 0:
            out.update(subjects=self.subjects[idx].to(device))
        return out


def _loss(model: PoseEstimator, batch: dict[str, torch.Tensor], settings: EstimatorTraining) -> torch.Tensor:
    """The estimator's training loss on one batch (see :func:`train_pose_estimator`); a pure
    function of the model and the batch, so a bank evaluates it per member under ``vmap``."""
    y, mask = batch["y"], batch["mask"]
    if not model.eyes:
        out = model.outputs(batch["x"])
        loss = _masked_smooth_l1(out["trunk_angles"], y, mask, 0.5)
    else:
        kp, kp_valid = batch["kp"], batch["kp_valid"]
        out = model.outputs(batch["x"], openings=batch["openings"])
        loss = _masked_smooth_l1(out["trunk_angles"], y, mask, 0.5)
        loss = loss + settings.keypoint_weight * (
            _masked_smooth_l1(out["openings"] / 4, kp[:, 1::2] / 4, kp_valid[:, 1::2, None], 1.0)
            + _masked_smooth_l1(out["keypoints"], kp, kp_valid[..., None], 1.0))
        loss = loss + settings.gaze_weight * _masked_smooth_l1(out["angles"][:, GAZE], y[:, GAZE], mask[:, GAZE], 0.5)
    if "subjects" in batch:
        loss = loss + settings.subject_weight * F.cross_entropy(out["subject"], batch["subjects"])
    return loss


def _prepare(targets: torch.Tensor, sources: torch.Tensor, labels: torch.Tensor, subjects: torch.Tensor | None,
             settings: EstimatorTraining, width: int, feature_dim: int, device: torch.device,
             resolution: int | None) -> tuple[PoseEstimator, _Fit]:
    """One estimator's initial network (from ``settings.seed``, through the global RNG, as it
    always was) and what its training reads."""
    labels = labels.detach().float().cpu()
    subjects = subjects.detach().long().cpu() if subjects is not None else None
    torch.manual_seed(settings.seed)
    n_subjects = int(subjects.max()) + 1 if subjects is not None else 0
    model = PoseEstimator(resolution or targets.shape[-1], width, feature_dim, n_subjects,
                          eyes=has_eye_code(sources)).to(device)
    labels, known, mean, std = _standardisation(labels)
    model.label_mean.copy_(mean.to(device))
    model.label_std.copy_(std.to(device))
    return model, _Fit(targets, sources, labels, known, subjects, mean, std, settings, device)


def _schedule(params, settings: EstimatorTraining, n: int) -> tuple[torch.optim.Optimizer, object]:
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=settings.lr, total_steps=settings.epochs * math.ceil(n / settings.batch_size), pct_start=0.2)
    return opt, sched


def _batch_starts(n: int, settings: EstimatorTraining) -> list[int]:
    # a last batch of one image is skipped (BatchNorm needs two)
    return [s for s in range(0, n, settings.batch_size) if min(n, s + settings.batch_size) - s >= 2]


def train_pose_estimator(
    targets: torch.Tensor,
    sources: torch.Tensor,
    labels: torch.Tensor,
    subjects: torch.Tensor | None,
    settings: EstimatorTraining = EstimatorTraining(),
    width: int = 24,
    feature_dim: int = 128,
    device: torch.device | str = "cpu",
    resolution: int | None = None,
) -> PoseEstimator:
    """Fit on real pairs: ``targets`` uint8 (N, S, S), ``sources`` uint8 (N, S, S, 3) colour-coded
    renders (augmented with their targets; their eye codes supervise the eye patches),
    ``labels`` (N, 5) degrees, ``subjects`` (N,) int codes.

    Loss: smooth-L1 on standardised angles; with eye codes in the sources + ``keypoint_weight``
    x smooth-L1 on the opening centres and patch keypoints + ``gaze_weight`` x the patches' gaze;
    + ``subject_weight`` x cross-entropy on subjects. AdamW with a one-cycle learning rate;
    seeded, so the same inputs give the same network. ``resolution`` (divisible by 32, default:
    the data's size) is the trunk's working size: augmentation runs at full size, the trunk sees
    area-downsampled images and the eye patches are read at full size.
    """
    device = torch.device(device)
    model, fit = _prepare(targets, sources, labels, subjects, settings, width, feature_dim, device, resolution)
    n = targets.shape[0]
    opt, sched = _schedule(model.parameters(), settings, n)
    model.train()
    for _ in tqdm(range(settings.epochs), desc="pose estimator", disable=None):
        order = torch.randperm(n, generator=fit.gen)
        for start in _batch_starts(n, settings):
            batch = fit.batch(order[start : start + settings.batch_size], model.eyes)
            with autocast(settings.precision, device):
                loss = _loss(model, batch, settings)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


class _MemberLoss(nn.Module):
    """An estimator whose forward is its training loss: what the bank maps over its members."""

    def __init__(self, model: PoseEstimator):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], settings: EstimatorTraining) -> torch.Tensor:
        return _loss(self.model, batch, settings)


class EstimatorBank:
    """G :class:`PoseEstimator` s of one architecture as one network: their weights and BatchNorm
    statistics stacked (``torch.func.stack_module_state``), one forward for all through ``vmap``
    over ``functional_call`` (convolutions become grouped ones, BatchNorm normalises each member's
    batch on its own). Member g reads batch g and returns its own loss, so the summed losses give
    each member its own gradient."""

    def __init__(self, models: Sequence[PoseEstimator]):
        self.models = list(models)
        self.params, self.buffers = torch.func.stack_module_state(self.models)
        self.base = copy.deepcopy(self.models[0])
        self.base.layout = torch.contiguous_format  # vmap cannot lay out channels_last
        if self.base.eyes:
            self.base.patch_net.layout = torch.contiguous_format
        self.base.train()
        self.eyes = self.base.eyes
        self._loss = _MemberLoss(self.base)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def loss(self, batches: Sequence[dict[str, torch.Tensor]], settings: EstimatorTraining) -> torch.Tensor:
        """(G,) each member's :func:`_loss` on its batch, in training mode (running statistics updated)."""
        def member(p: dict, b: dict, batch: dict) -> torch.Tensor:
            state = {f"model.{k}": v for k, v in {**p, **b}.items()}
            return torch.func.functional_call(self._loss, state, (batch, settings), strict=True)

        stacked = {k: torch.stack([b[k] for b in batches]) for k in batches[0]}
        return torch.func.vmap(member)(self.params, self.buffers, stacked)

    @torch.no_grad()
    def unstack(self) -> list[PoseEstimator]:
        """The members as separate networks with the bank's weights and statistics, in eval mode."""
        for g, model in enumerate(self.models):
            model.load_state_dict({k: v[g] for k, v in {**self.params, **self.buffers}.items()})
        return [m.eval() for m in self.models]


def train_pose_estimators(
    targets: Sequence[torch.Tensor],
    sources: torch.Tensor,
    labels: torch.Tensor,
    subjects: torch.Tensor | None,
    settings: Sequence[EstimatorTraining],
    width: int = 24,
    feature_dim: int = 128,
    device: torch.device | str = "cpu",
    resolution: int | None = None,
) -> list[PoseEstimator]:
    """G estimators fitted as one bank, each as :func:`train_pose_estimator` would fit it alone on
    ``targets[g]`` with ``settings[g]`` (the same sources, labels and subjects for all; the recipes
    may differ in their seed only).

    Member g starts from the weights its seed gives, draws its batches and augmentation from its
    own generators, has its own BatchNorm statistics and its own loss mean; the members' losses
    are summed, so each gets its own gradient, and AdamW is elementwise, so each learns what it
    would alone (up to float summation order). The bank is ``torch.func.stack_module_state`` +
    ``vmap`` over ``functional_call``: one kernel per layer for all members, which pays where
    kernel launches dominate (a GPU); on a CPU the grouped convolutions it becomes are slower than
    G plain ones (benchmarks/evaluate_speed.py --estimator), so the evaluate stage banks on GPUs only.
    """
    device = torch.device(device)
    if len({t.shape for t in targets}) != 1 or len({replace(s, seed=0) for s in settings}) != 1:
        raise ValueError("train_pose_estimators: members must share their data shape and recipe but the seed")
    if len(targets) != len(settings):
        raise ValueError(f"train_pose_estimators: {len(targets)} target sets for {len(settings)} recipes")
    # the initial networks in member order, each from its seed: the global RNG ends where fitting
    # them one after another would leave it (training draws from the members' own generators only)
    members = [_prepare(t, sources, labels, subjects, s, width, feature_dim, device, resolution)
               for t, s in zip(targets, settings, strict=True)]
    models, fits = [m for m, _ in members], [f for _, f in members]
    bank, recipe, n = EstimatorBank(models), settings[0], targets[0].shape[0]
    opt, sched = _schedule(bank.parameters(), recipe, n)
    for _ in tqdm(range(recipe.epochs), desc=f"pose estimators x{len(models)}", disable=None):
        orders = [torch.randperm(n, generator=f.gen) for f in fits]
        for start in _batch_starts(n, recipe):
            batches = [f.batch(o[start : start + recipe.batch_size], bank.eyes)
                       for f, o in zip(fits, orders, strict=True)]
            with autocast(recipe.precision, device):
                loss = bank.loss(batches, recipe).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return bank.unstack()
