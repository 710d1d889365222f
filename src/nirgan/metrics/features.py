"""Realism and diversity measures that need no downloaded weights.

These are the figures every machine can compute, so every key built on them says what it
is (``realism_fid_nirfeat``, ``realism_swd_laplacian``, ``diversity_msssim``) and can never
be mistaken for the ImageNet FID or LPIPS of thesis 3.3:

- :func:`frechet_distance` and :func:`kernel_inception_distance` are the FID formula
  (thesis eq. 3.6) and the unbiased KID (Binkowski et al. 2018, cubic polynomial kernel)
  applied to any feature vectors (the Frechet distance is pytorch-fid's own function); evaluate
  feeds them the penultimate features of the pose/identity estimator trained in the pipeline on
  real training targets.
- :func:`sliced_wasserstein_laplacian` is ProGAN's SWD (Karras et al. 2018, appendix D):
  7x7 patches from each level of a Laplacian pyramid, each descriptor set normalised by its
  own per-level mean and std, sliced Wasserstein distance over random projections. It looks
  at local texture and edges at every scale, with no network at all.
- :func:`ms_ssim` is multi-scale SSIM (Wang et al. 2003), used as AC-GAN's diversity score:
  mean pairwise MS-SSIM between images generated from one source; lower means more diverse.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

# Wang et al. 2003, Table 1 weights for 5 scales.
MSSSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# --------------------------------------------------------------------------- Frechet / KID
def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Thesis eq. 3.6 on two (N, D) feature sets: pytorch-fid's own formula on their means and
    covariances, so the figure is the one FID papers compute, not a re-derivation of it."""
    # imported here: pytorch_fid.fid_score imports torchvision, which imports torch._dynamo
    # (about 3 s of every stage process that only needs this module's other functions)
    from pytorch_fid.fid_score import calculate_frechet_distance
    from scipy import linalg

    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    with warnings.catch_warnings():
        # pytorch-fid 0.3.0 passes scipy's deprecated ``disp`` to sqrtm (hence scipy<1.18 in pyproject)
        warnings.filterwarnings("ignore", message="The `disp` argument is deprecated", category=DeprecationWarning)
        # With fewer images than feature dimensions (the default run: 36 against 128) both covariances
        # are singular and scipy's sqrtm warns that its result "might be inaccurate". It is not, here:
        # the trace term equals the one from a symmetric eigendecomposition, exact for singular
        # matrices, to about 1e-8 relative at 36 x 128 (tests/test_realism.py). The figure's dependence on
        # the set size is another matter: compare it only at one realism_set_size.
        warnings.filterwarnings("ignore", message="Matrix is singular", category=linalg.LinAlgWarning)
        return float(calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))


def kernel_inception_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, over the full sets.

    Unlike the Frechet distance it is unbiased in the sample size, which matters here: the
    default test split holds only some dozens of images.
    """
    a = feats_a.astype(np.float64)
    b = feats_b.astype(np.float64)
    d = a.shape[1]
    k_aa = (a @ a.T / d + 1.0) ** 3
    k_bb = (b @ b.T / d + 1.0) ** 3
    k_ab = (a @ b.T / d + 1.0) ** 3
    m, n = len(a), len(b)
    term_aa = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    term_bb = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(term_aa + term_bb - 2.0 * k_ab.mean())


# ------------------------------------------------------------------------------- SWD
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def separable_filter(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """'Valid' filtering of (..., H, W) with the separable kernel taps x taps, as two banded
    matrix products: on CPU this is far faster than PyTorch's depthwise convolution."""
    k = len(taps)

    def band(n: int) -> torch.Tensor:
        m = torch.zeros(n - k + 1, n, dtype=x.dtype, device=x.device)
        for i in range(k):
            m.diagonal(i).fill_(float(taps[i]))
        return m

    return band(x.shape[-2]) @ x @ band(x.shape[-1]).T


def _blur(x: torch.Tensor) -> torch.Tensor:
    return separable_filter(F.pad(x, (2, 2, 2, 2), mode="reflect"), _BINOMIAL)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Finest level first; the last entry is the low-pass residual (as in ProGAN)."""
    pyramid = []
    current = x
    for _ in range(levels - 1):
        down = _blur(current)[:, :, ::2, ::2]
        up = F.interpolate(down, size=current.shape[-2:], mode="bilinear", align_corners=False)
        pyramid.append(current - up)
        current = down
    pyramid.append(current)
    return pyramid


def _patches(level: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, size: int) -> torch.Tensor:
    n, c, h, w = level.shape
    per_image = ys.shape[1]
    offs = torch.arange(size)
    rows = (ys[..., None] + offs)[..., :, None].expand(n, per_image, size, size)
    cols = (xs[..., None] + offs)[..., None, :].expand(n, per_image, size, size)
    img = torch.arange(n)[:, None, None, None].expand_as(rows)
    patches = level.permute(0, 2, 3, 1)[img, rows, cols]  # (n, P, size, size, c)
    return patches.reshape(n * per_image, -1)


def _normalised(desc: torch.Tensor) -> torch.Tensor:
    return (desc - desc.mean()) / desc.std().clamp_min(1e-8)


def _sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, repeats: int, dirs: int, gen: torch.Generator) -> float:
    total = 0.0
    for _ in range(repeats):
        proj = torch.randn(a.shape[1], dirs, generator=gen, dtype=a.dtype)
        proj = proj / proj.norm(dim=0, keepdim=True)
        # numpy's vectorised sort along the contiguous axis is ~5x faster than torch.sort here
        pa = np.sort((a @ proj).T.contiguous().numpy(), axis=1)
        pb = np.sort((b @ proj).T.contiguous().numpy(), axis=1)
        total += float(np.abs(pa - pb).mean())
    return total / repeats


def sliced_wasserstein_laplacian(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    seed: int,
    patches_per_image: int = 128,
    patch_size: int = 7,
    min_resolution: int = 16,
    repeats: int = 4,
    dirs: int = 128,
) -> dict[str, float]:
    """ProGAN's SWD (x1e3, like its tables) between two image batches in [-1, 1].

    Returns one value per pyramid level (keyed by resolution) and their mean under "mean".
    Both sets must have the same number of images, so the descriptor counts match.
    """
    if len(images_a) != len(images_b):
        raise ValueError(f"SWD needs equal set sizes, got {len(images_a)} and {len(images_b)}")
    size = images_a.shape[-1]
    levels = int(np.log2(size // min_resolution)) + 1
    gen = torch.Generator().manual_seed(seed)
    pyr_a = laplacian_pyramid(images_a.float(), levels)
    pyr_b = laplacian_pyramid(images_b.float(), levels)
    out: dict[str, float] = {}
    for la, lb in zip(pyr_a, pyr_b, strict=True):
        # The same patch positions in both sets: identical sets then score exactly 0 instead of the
        # sampling noise of two independent draws of positions.
        h, w = la.shape[-2:]
        ys = torch.randint(0, h - patch_size + 1, (len(la), patches_per_image), generator=gen)
        xs = torch.randint(0, w - patch_size + 1, (len(la), patches_per_image), generator=gen)
        da = _normalised(_patches(la, ys, xs, patch_size))
        db = _normalised(_patches(lb, ys, xs, patch_size))
        out[str(la.shape[-1])] = 1e3 * _sliced_wasserstein(da, db, repeats, dirs, gen)
    out["mean"] = float(np.mean(list(out.values())))
    return out


# ---------------------------------------------------------------------------- MS-SSIM
def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """The 1-D factor of the normalised 2-D Gaussian window."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c1, c2 = 0.01**2, 0.03**2  # data range 1
    c = x.shape[1]
    # The Gaussian is separable: filter the five moment maps at once.
    maps = separable_filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
    mu_x, mu_y, exx, eyy, exy = maps.split(c, dim=1)
    sxx = exx - mu_x**2
    syy = eyy - mu_y**2
    sxy = exy - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def msssim_scales(size: int, window: int = 11) -> int:
    """As many of the 5 standard scales as keep the coarsest image at least one window wide.

    At 128x128 that is 4 (128, 64, 32, 16): the 5th scale (8x8) is smaller than the 11x11
    Gaussian window, so its SSIM would be undefined without padding that biases it.
    """
    scales = 1
    while scales < len(MSSSIM_WEIGHTS) and size // 2**scales >= window:
        scales += 1
    return scales


def ms_ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pair MS-SSIM of two (B, C, H, W) batches in [0, 1]; 1 means identical.

    The weights are Wang et al.'s first ``msssim_scales`` entries renormalised to sum to 1.
    Negative contrast-structure terms are clamped at 0 (as pytorch-msssim's ``normalize``
    option does) so the fractional powers stay real.
    """
    scales = msssim_scales(min(x.shape[-2:]), window)
    weights = torch.tensor(MSSSIM_WEIGHTS[:scales], dtype=torch.float32)
    weights = (weights / weights.sum()).to(x.device)
    win = _gaussian_window(window, sigma)
    values = []
    for s in range(scales):
        ssim, cs = _ssim_terms(x, y, win)
        values.append((ssim if s == scales - 1 else cs).clamp_min(0.0))
        if s < scales - 1:
            x = F.avg_pool2d(x, 2)
            y = F.avg_pool2d(y, 2)
    stacked = torch.stack(values, dim=1)
    return torch.prod(stacked ** weights[None, :], dim=1)


def pairwise_msssim(images: torch.Tensor) -> float:
    """Mean MS-SSIM over the M(M-1)/2 pairs of one (M, C, H, W) set in [0, 1]."""
    i, j = torch.triu_indices(len(images), len(images), offset=1)
    return float(ms_ssim(images[i], images[j]).mean())
