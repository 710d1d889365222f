"""Paired random augmentation of thesis Table 3.1: one draw per pair, the same geometry for both images.

A library, not a stage: the augment stage's preview, the trainer's batches and the auxiliary
networks' training (pose estimator, identity net) all call :func:`paired_augment` (or its two
halves, :func:`draw_params` and :func:`apply_params`), so a pair is "never seen twice in exactly
the same way" (thesis 3.1.5) under one definition of the transform.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nirgan.config import AugmentConfig, RandomRange
from nirgan.labels import FLIP_SIGN, LABELS


def _as_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float 0..1 -> float 0..1."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """Un-augmented images to the model's [-1, 1]: uint8 (0..255) or float (0..1).

    The scaling is fixed (0 -> -1, 255 -> 1), not per-image min-max: a per-image stretch would
    undo the mu0/mu normalisation of the targets and make brightness meaningless.
    """
    return _as_unit(x).mul(2.0).sub(1.0)


def _draw(spec: RandomRange, u_apply: torch.Tensor, u_value: torch.Tensor, identity: float) -> torch.Tensor:
    value = spec.low + (spec.high - spec.low) * u_value
    return torch.where(u_apply < spec.p, value, torch.full_like(value, identity))


def draw_params(
    batch: int, aug_cfg: AugmentConfig, generator: torch.Generator | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """One draw of Table 3.1 per pair, identity where a transform is not applied.

    All uniforms come from one ``torch.rand`` call on the generator's device (so a CPU
    generator drives a GPU batch, and a seed gives the same draws on any device), moved to
    ``device`` without a host sync.
    """
    gen_device = generator.device if generator is not None else device
    u = torch.rand(batch, 10, generator=generator, device=gen_device).to(device, non_blocking=True)
    return dict(
        scale=_draw(aug_cfg.scale, u[:, 0], u[:, 5], 1.0),
        shift_x=_draw(aug_cfg.shift, u[:, 1], u[:, 6], 0.0),
        shift_y=_draw(aug_cfg.shift, u[:, 1], u[:, 7], 0.0),
        rotation=_draw(aug_cfg.rotation, u[:, 2], u[:, 8], 0.0),
        gamma=_draw(aug_cfg.gamma, u[:, 3], u[:, 9], 100.0),
        flip=u[:, 4] < aug_cfg.hflip_p,
    )


def affine_theta(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 2, 3) ``F.affine_grid`` matrices for flip, then rotation, then scale, then shift.

    The forward map on normalised coordinates (-1..1, so a shift of a fraction f of the side
    is 2 f) is p_out = s R(a) M p_in + 2 t, with M the mirror. ``affine_grid`` wants the inverse
    (where each output pixel samples from): p_in = M R(-a) (p_out - 2 t) / s.
    """
    s, a = params["scale"], params["rotation"]
    m = torch.where(params["flip"], -1.0, 1.0).to(s.dtype)
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    # M R(-a) / s, with R(-a) = [[cos, sin], [-sin, cos]]
    a00, a01 = m * cos, m * sin
    a10, a11 = -sin, cos
    tx, ty = 2.0 * params["shift_x"], 2.0 * params["shift_y"]
    b0 = -(a00 * tx + a01 * ty)
    b1 = -(a10 * tx + a11 * ty)
    return torch.stack([torch.stack([a00, a01, b0], 1), torch.stack([a10, a11, b1], 1)], 1)


def _label_vector(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """A constant per-label vector on ``like``'s device, filled in place: ``torch.tensor`` of a
    Python list would copy from the host and synchronise with the GPU on every batch."""
    out = torch.zeros(len(values), dtype=like.dtype, device=like.device)
    for i, value in enumerate(values):
        if value:
            out[i] = value
    return out


def transform_points(points: torch.Tensor, params: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Where the geometry of ``params`` moves (B, K, 2) pixel (x, y) of an S x S image (pixel i
    centred at i): the forward map of :func:`affine_theta`, whose matrices map back."""
    theta = affine_theta(params).to(points.dtype)
    (a, b), (c, d) = theta[:, 0, :2].unbind(1), theta[:, 1, :2].unbind(1)
    u = (2 * points + 1) / size - 1 - theta[:, None, :, 2]  # align_corners=False normalisation
    det = (a * d - b * c)[:, None]
    out = torch.stack([(d[:, None] * u[..., 0] - b[:, None] * u[..., 1]) / det,
                       (a[:, None] * u[..., 1] - c[:, None] * u[..., 0]) / det], -1)
    return ((out + 1) * size - 1) / 2


def _grid_axis(n: int, device: torch.device) -> torch.Tensor:
    """``affine_grid``'s pixel centres on -1..1 (align_corners=False), float32: ATen's
    ``linspace(-1, 1, n)``, whose vector kernels fuse its multiply-add (its scalar kernel, on a
    CPU without AVX2, does not), rebuilt from float64 steps that are exact, times (n - 1) / n."""
    if n == 1:
        return torch.zeros(1, device=device)
    i = torch.arange(n, dtype=torch.float64, device=device)
    step = float(np.float32(2.0 / (n - 1)))
    line = torch.where(i < n // 2, -1.0 + step * i, 1.0 - step * (n - 1 - i)).float()
    return line * (n - 1) / n


def sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, height, width), align_corners=False)``, with the same bits on
    every CPU.

    ``affine_grid`` multiplies its base grid by ``theta`` in a batched matrix product, which MKL
    computes with kernels chosen by the CPU: here its AVX-512 and AVX2 paths (``MKL_CBWR=AVX2``)
    gave different last bits, which most likely is why ``data/prepared`` (through the augment
    stage's preview) hashed differently on an AMD Zen 4 than on an Intel Xeon (no Zen 4 was at
    hand to confirm it). Each value here is what the AVX-512 path
    computes, round(round(round(a x) + b y) + c), the middle step fused, taken in float64 (where
    a product of float32 numbers is exact) and rounded to float32 where that path rounds: IEEE
    operations that no CPU does differently. Equal to that path on 15.6 million values at 64, 100
    and 128 px (MKL's kernels for tiny images differ again). ``theta`` is (B, 2, 3) float32;
    returns (B, height, width, 2).
    """
    x = _grid_axis(width, theta.device).double()[None, None, :]
    y = _grid_axis(height, theta.device).double()[None, :, None]
    t = theta.double()[..., None, None]  # (B, 2, 3, 1, 1)

    def coordinate(k: int) -> torch.Tensor:
        ax = (t[:, k, 0] * x).float().double()  # (B, 1, W): the rows share it
        return (t[:, k, 1] * y + ax).float() + theta[:, k, 2, None, None]  # the last add in float32

    return torch.stack([coordinate(0), coordinate(1)], dim=-1)


def apply_params(
    source: torch.Tensor | None, target: torch.Tensor, labels: torch.Tensor | None, params: dict[str, torch.Tensor]
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Apply given draws (see :func:`draw_params`); inputs in [0, 1], outputs in [-1, 1]. With no
    ``source`` only the target (and labels) are transformed, by the same draws."""
    target = _as_unit(target)
    both = target if source is None else torch.cat([_as_unit(source), target], dim=1)
    grid = sampling_grid(affine_theta(params).to(both.dtype), both.shape[-2], both.shape[-1])
    both = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    source, target = (None, both) if source is None else (both[:, :3], both[:, 3:])
    # Gamma on the target only: it models the NIR camera's response, a photometric property
    # of the target domain. The thesis applies every augmentation to both images "in order to
    # preserve their alignment", which gamma does not touch; on the source it would only
    # shift the class colours of the rig's mask and leak the target's exposure into the
    # condition the generator sees.
    gamma = (params["gamma"] / 100.0).to(target.dtype).view(-1, 1, 1, 1)
    target = target.clamp(0.0, 1.0).pow(gamma)
    if labels is not None:
        sign = _label_vector(FLIP_SIGN, labels)
        labels = torch.where(params["flip"].view(-1, 1), labels * sign, labels)
        # The image turns clockwise by the drawn angle (y points down), i.e. the head turns
        # counter-clockwise by minus that angle. With R = Rz(roll) Rx(-pitch) Ry(yaw) (the twin's
        # convention, roll counter-clockwise in the image) a turn about the optical axis only
        # adds to roll: yaw, pitch and the gaze (in head coordinates) stay exact.
        roll = _label_vector(tuple(float(name == "head_roll") for name in LABELS), labels)
        labels = labels - torch.rad2deg(params["rotation"]).to(labels.dtype)[:, None] * roll
    return None if source is None else to_model_range(source.clamp(0.0, 1.0)), to_model_range(target), labels


def paired_augment(
    source: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor | None,
    aug_cfg: AugmentConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Thesis Table 3.1, one random draw per pair, the same geometry for both of its images.

    ``source`` (B, 3, S, S) and ``target`` (B, 1, S, S) float in [0, 1] (uint8 is accepted),
    ``labels`` (B, 5) in ``nirgan.labels.LABELS`` order or None. Scale, shift, rotation and
    horizontal flip form ONE affine grid per pair, sampled bilinearly with zero padding from
    the stacked source and target, so the pair cannot drift apart. Gamma x ** (g/100) is
    applied to the target only (see :func:`apply_params`). Labels follow the geometry: a flip
    multiplies them by ``FLIP_SIGN`` (head yaw, head roll and gaze yaw change sign) and a
    rotation by angle a (clockwise in the image) changes head roll by -a in degrees (roll is
    counter-clockwise positive, as in the twin); scale and shift leave them unchanged. The
    thesis used no labels; without the roll update a label-conditioned model or a pose
    estimator would learn rolls up to 45 degrees off.

    Returns (source, target, labels) with images in [-1, 1], on the inputs' device, batched,
    with no host synchronisation and no Python loop over the batch.
    """
    if source.shape[0] != target.shape[0]:
        raise ValueError(f"paired_augment: {source.shape[0]} sources but {target.shape[0]} targets")
    params = draw_params(source.shape[0], aug_cfg, generator, source.device)
    return apply_params(source, target, labels, params)
