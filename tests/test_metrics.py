"""The evaluation measures: weight loading (with weight files the tests write), the
always-available distances, MS-SSIM, the pose estimator, and cleaning precision/recall."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from nirgan.config import Config, EvaluateConfig
from nirgan.labels import LABELS
from nirgan.metrics import features
from nirgan.metrics.cleaning import cleaning_quality, evaluate_cleaning
from nirgan.metrics.fid import FID_WEIGHTS_NAME, inception_features, load_fid_inception, resolve_fid
from nirgan.metrics.lpips_diversity import BACKBONE_FILES, load_lpips, lpips_pairwise_mean, resolve_lpips
from nirgan.metrics.pose import angle_errors
from nirgan.metrics.realism import imagenet_networks
from nirgan.models.pose_estimator import PATCH, extract_patches, eye_keypoints, predict
from nirgan.training.auxiliary import EstimatorTraining, train_pose_estimator


# ------------------------------------------------------------------ weight files, written here
def _write_fid_weights(path) -> None:
    """A random-init state dict with exactly the keys and shapes of pytorch-fid's FID Inception."""
    from pytorch_fid import inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)


def _write_alexnet_weights(path) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(1)
    sd = torchvision.models.alexnet(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return sd


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _faces(n: int, seed: int, size: int = 64) -> torch.Tensor:
    """Smooth random grey images in [-1, 1], (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False) * 2 - 1


def test_fid_loads_the_cached_file_through_pytorch_fid(torch_home):
    _write_fid_weights(torch_home / "hub" / "checkpoints" / FID_WEIGHTS_NAME)
    weights, why = resolve_fid()
    assert weights is not None and why == ""
    # the test's random file is not the reference file, and the record says so
    assert not weights.verified and weights.describe("fid")["fid_weights"].endswith(FID_WEIGHTS_NAME)
    model = load_fid_inception(weights, torch.device("cpu"))
    on_disk = torch.load(weights.path, weights_only=True)
    assert torch.equal(model.blocks[0][0].conv.weight, on_disk["Conv2d_1a_3x3.conv.weight"])
    a = inception_features(model, _faces(2, 0), batch_size=2)
    assert a.shape == (2, 2048) and np.isfinite(a).all()


def test_fid_explicit_weights_file_elsewhere(torch_home, tmp_path):
    explicit = tmp_path / "my_weights" / "inception.pth"
    _write_fid_weights(explicit)
    weights, _ = resolve_fid(explicit)
    model = load_fid_inception(weights, torch.device("cpu"))
    assert torch.equal(model.blocks[0][0].conv.weight,
                       torch.load(explicit, weights_only=True)["Conv2d_1a_3x3.conv.weight"])
    assert not (torch_home / "hub" / "checkpoints" / FID_WEIGHTS_NAME).exists()


def test_lpips_backbone_comes_from_the_cached_torchvision_file(torch_home):
    sd = _write_alexnet_weights(torch_home / "hub" / "checkpoints" / BACKBONE_FILES["alex"])
    weights, why = resolve_lpips("alex")
    assert weights is not None and why == ""
    model = load_lpips("alex", "0.1", weights, torch.device("cpu"))
    assert torch.equal(model.net.slice1[0].weight, sd["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "10").weight, sd["features.10.weight"])
    # the linear heads are the package's calibrated ones, not random
    import lpips

    packaged = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    assert torch.equal(model.lin0.model[1].weight, packaged.lin0.model[1].weight)
    same = _faces(3, 0)
    assert lpips_pairwise_mean(model, torch.cat([same[:1]] * 3)) == pytest.approx(0.0, abs=1e-6)
    assert lpips_pairwise_mean(model, same) > 0


def test_missing_weights_are_unavailable_with_reason(torch_home):
    cfg = Config(evaluate=EvaluateConfig())
    inception, lp, info = imagenet_networks(cfg, torch.device("cpu"))
    assert inception is None and lp is None
    assert info["fid"] == "unavailable" and FID_WEIGHTS_NAME in info["fid_reason"]
    assert info["lpips"] == "unavailable" and "alexnet-owt-7be5be79.pth" in info["lpips_reason"]
    cfg = Config(evaluate=EvaluateConfig(fid_weights=torch_home / "nope.pth", lpips=False))
    _, _, info = imagenet_networks(cfg, torch.device("cpu"))
    assert "nope.pth" in info["fid_reason"] and "disabled" in info["lpips_reason"]


def _write_corrupt(path) -> None:
    """Bytes that are no torch file at all, as a truncated or mangled download leaves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _write_squeezenet_weights(path, drop: str | None = None, reshape: str | None = None) -> None:
    """A random-init squeezenet1_1 state dict (LPIPS's smallest backbone: 5 MB, not alexnet's 244),
    optionally without the key ``drop`` or with ``reshape`` given a wrong shape."""
    import torchvision

    torch.manual_seed(2)
    sd = torchvision.models.squeezenet1_1(weights=None).state_dict()
    if drop:
        del sd[drop]
    if reshape:
        sd[reshape] = torch.zeros(3, *sd[reshape].shape[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)


def _assert_unavailable(info: dict, key: str, reference_name: str) -> None:
    """``key`` is "unavailable"; its reason names the file, its hash and the hash the reference
    name promises; the record still says which file was looked at."""
    from nirgan.io import file_sha256

    path = info[f"{key}_weights"]
    sha = file_sha256(path)
    promised = reference_name.rsplit("-", 1)[-1].split(".")[0]
    assert info[key] == "unavailable", info
    reason = info[f"{key}_reason"]
    assert path in reason and sha[:8] in reason and promised in reason and reference_name in reason, reason
    assert info[f"{key}_weights_verified"] is False and info[f"{key}_weights_sha256"] == sha[:16]


def test_corrupt_weights_are_unavailable_with_reason(torch_home, tmp_path):
    # configured explicitly (evaluate.*_weights)...
    bad = tmp_path / "downloads" / "weights.pth"
    _write_corrupt(bad)
    cfg = Config(evaluate=EvaluateConfig(fid_weights=bad, lpips_weights=bad))
    inception, lp, info = imagenet_networks(cfg, torch.device("cpu"))
    assert inception is None and lp is None
    assert info["fid_weights"] == info["lpips_weights"] == str(bad.resolve())
    _assert_unavailable(info, "fid", FID_WEIGHTS_NAME)
    _assert_unavailable(info, "lpips", BACKBONE_FILES["alex"])
    # ...and under the standard names in the torch hub cache
    hub = torch_home / "hub" / "checkpoints"
    _write_corrupt(hub / FID_WEIGHTS_NAME)
    _write_corrupt(hub / BACKBONE_FILES["alex"])
    inception, lp, info = imagenet_networks(Config(evaluate=EvaluateConfig()), torch.device("cpu"))
    assert inception is None and lp is None
    assert info["fid_weights"].endswith(FID_WEIGHTS_NAME)
    _assert_unavailable(info, "fid", FID_WEIGHTS_NAME)
    _assert_unavailable(info, "lpips", BACKBONE_FILES["alex"])


def test_weights_other_than_the_reference_give_no_figure(torch_home):
    """The right architecture with other (here random) weights loads fine, and would give numbers
    that are not FID or LPIPS: the figures are "unavailable", only the loaders still take them."""
    hub = torch_home / "hub" / "checkpoints"
    _write_fid_weights(hub / FID_WEIGHTS_NAME)
    _write_squeezenet_weights(hub / BACKBONE_FILES["squeeze"])
    cfg = Config(evaluate=EvaluateConfig(lpips_net="squeeze"))
    inception, lp, info = imagenet_networks(cfg, torch.device("cpu"))
    assert inception is None and lp is None
    _assert_unavailable(info, "fid", FID_WEIGHTS_NAME)
    _assert_unavailable(info, "lpips", BACKBONE_FILES["squeeze"])
    weights, _ = resolve_lpips("squeeze")
    assert lpips_pairwise_mean(load_lpips("squeeze", "0.1", weights, torch.device("cpu")), _faces(2, 0)) > 0


@pytest.mark.parametrize("damage", ["corrupt", "missing_key", "wrong_shape"])
def test_a_file_that_passes_the_hash_but_cannot_be_loaded_is_unavailable(tmp_path, damage):
    """The hash check comes first, so only a file whose sha256 begins as its standard name
    promises reaches a loader; no real file fails there by chance (a 32-bit prefix), so the
    standard name here is made to promise this file's own hash."""
    from nirgan.io import file_sha256
    from nirgan.metrics.weights import WeightsFile, load_reference

    path = tmp_path / "squeeze.pth"
    if damage == "corrupt":
        _write_corrupt(path)
    else:
        _write_squeezenet_weights(path, **({"drop": "features.3.squeeze.bias"} if damage == "missing_key"
                                           else {"reshape": "features.0.weight"}))
    sha = file_sha256(path)
    weights = WeightsFile(path=path, sha256=sha, standard_name=f"squeezenet1_1-{sha[:8]}.pth")
    assert weights.verified
    model, info = load_reference("lpips", weights, lambda w: load_lpips("squeeze", "0.1", w, torch.device("cpu")))
    assert model is None and info["lpips"] == "unavailable" and info["lpips_weights_verified"] is True
    reason = info["lpips_reason"]
    assert str(path) in reason and sha[:8] in reason and "cannot be loaded" in reason, reason


def test_check_params_warns_about_configured_weights_evaluate_cannot_use(tmp_path):
    """FID and LPIPS are optional: check-params says which configured file evaluate will not use,
    one line each, and still passes (exit 0), without importing torch."""
    import nirgan

    bad = tmp_path / "corrupt.pth"
    _write_corrupt(bad)
    params = {"evaluate": {"fid_weights": str(bad), "lpips_weights": str(tmp_path / "nowhere.pth")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = ("import sys; from nirgan.cli import main; rc = main(['check-params']); "
            "print(rc, sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(nirgan.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.splitlines()[-1] == "0 []", proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nirgan:")]
    assert len(lines) == 2, proc.stderr
    fid, lpips = sorted(lines)
    assert "warning" in fid and "evaluate.fid_weights" in fid and str(bad) in fid and "6726825d" in fid, fid
    assert "unavailable" in fid
    assert "evaluate.lpips_weights" in lpips and "nowhere.pth" in lpips and "does not exist" in lpips, lpips
    # a disabled figure needs no file
    params["evaluate"].update(fid=False, lpips=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.splitlines()[-1] == "0 []" and "nirgan:" not in proc.stderr, proc.stdout + proc.stderr


# ------------------------------------------------------------------ always-available measures
def test_distances_are_zero_for_identical_sets_and_grow_with_difference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    b = rng.normal(size=(200, 8))
    shifted = b + 1.5
    assert features.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert features.frechet_distance(a, b) < features.frechet_distance(a, shifted)
    assert abs(features.kernel_inception_distance(a, b)) < 0.05
    assert features.kernel_inception_distance(a, shifted) > 10 * abs(features.kernel_inception_distance(a, b))

    x = _faces(8, 1)
    y = _faces(8, 2)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(-1, 1)
    same = features.sliced_wasserstein_laplacian(x, x, seed=0)
    other = features.sliced_wasserstein_laplacian(x, y, seed=0)
    far = features.sliced_wasserstein_laplacian(x, noisy, seed=0)
    assert same["mean"] == pytest.approx(0.0, abs=1e-6)
    assert set(same) == {"64", "32", "16", "mean"}
    assert other["mean"] < far["mean"]


def test_frechet_distance_known_answer_and_symmetry():
    """Features with diagonal sample covariances: FD = |mu_a - mu_b|^2 + sum_i (sd_a,i - sd_b,i)^2.
    b = 3a + 1: means 0 and (1, 1), sample variances (2/3, 8/3) and nine times those."""
    a = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    b = 3 * a + 1
    assert features.frechet_distance(a, b) == pytest.approx(2 + 4 * (2 / 3) + 4 * (8 / 3), rel=1e-9)
    # evaluate's shape: fewer images than dimensions (rank-deficient covariances), finite and symmetric
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(36, 128)), rng.normal(0.3, 1.2, size=(36, 128))
    fd = features.frechet_distance(x, y)
    assert np.isfinite(fd) and fd == pytest.approx(features.frechet_distance(y, x), rel=1e-6)
    assert fd > features.frechet_distance(x, rng.normal(size=(36, 128)))


def _kid_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Bińkowski et al. 2018, eq. for the unbiased MMD^2 with k(u, v) = (u.v / d + 1)^3, pair by pair."""
    d = x.shape[1]

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_the_unbiased_mmd_written_pair_by_pair():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.5, 2.0, size=(9, 5))  # unequal sizes, as the formula allows
    assert features.kernel_inception_distance(x, y) == pytest.approx(_kid_loop(x, y), rel=1e-12)
    assert features.kernel_inception_distance(x, x) == pytest.approx(_kid_loop(x, x), rel=1e-12)


def test_kid_hand_computed_cases():
    # d = 1: k(0, 0) = 1, k(1, 1) = 8, k(0, 1) = 1, so 1 + 8 - 2 * 1
    assert features.kernel_inception_distance(np.zeros((2, 1)), np.ones((2, 1))) == pytest.approx(7.0)
    # {1, -1} against itself: k(1, -1) = 0 and k(1, 1) = k(-1, -1) = 8, so both within-set terms are 0
    # and the cross term (8 + 0 + 0 + 8) / 4: the unbiased estimate of identical sets is -8, not 0
    # (the within-set terms leave the diagonal out, the cross term cannot)
    pm = np.array([[1.0], [-1.0]])
    assert features.kernel_inception_distance(pm, pm) == pytest.approx(-8.0)


def _ssim_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004 SSIM of two 2-D images on [0, 1], written out: an 11x11 Gaussian window
    (sigma 1.5, normalised), K1 = 0.01, K2 = 0.03, every window position inside the image, mean."""
    r = np.arange(11) - 5
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def _image_pairs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs on [0, 1] spanning MS-SSIM's range: the same face, a noisy copy, a blurred copy, an
    even blend with another face, and the inverted face (negative contrast-structure terms, clamped at 0)."""
    x = (_faces(5, 7, size=size) + 1) / 2
    noise = 0.1 * torch.randn(x[1:2].shape, generator=torch.Generator().manual_seed(8))
    y = torch.cat([x[:1], (x[1:2] + noise).clamp(0, 1), torch.nn.functional.avg_pool2d(x[2:3], 5, 1, 2),
                   (x[3:4] + (_faces(1, 9, size=size) + 1) / 2) / 2, 1 - x[4:5]])
    return x, y


def test_ssim_single_scale_matches_wang_2004_written_out():
    """Below 22 px MS-SSIM keeps one scale, where it is SSIM itself (clamped at 0)."""
    x, y = _image_pairs(16)
    assert features.msssim_scales(16) == 1
    ours = features.ms_ssim(x, y).double().numpy()
    plain = np.array([max(_ssim_numpy(a[0].double().numpy(), b[0].double().numpy()), 0.0) for a, b in zip(x, y)])
    np.testing.assert_allclose(ours, plain, atol=1e-5)
    assert plain[0] == pytest.approx(1.0) and plain[4] == 0.0 and (0.3 < plain[1:4]).all() and (plain[1:4] < 0.99).all()


@pytest.mark.parametrize(("size", "scales"), [(168, 4), (256, 5)])
def test_msssim_matches_pytorch_msssim(size, scales):
    """pytorch-msssim (an independent implementation) with the same weights: Wang 2003's first
    ``scales`` renormalised. It asserts images above 160 px, so 4 scales are checked at 168 px."""
    from pytorch_msssim import ms_ssim as reference

    x, y = _image_pairs(size)
    assert features.msssim_scales(size) == scales
    weights = np.array(features.MSSSIM_WEIGHTS[:scales])
    expected = reference(x, y, data_range=1.0, size_average=False, weights=list(weights / weights.sum()))
    torch.testing.assert_close(features.ms_ssim(x, y), expected, atol=1e-5, rtol=0)
    assert expected[4] == 0.0 and (0.3 < expected[1:4]).all() and (expected[1:4] < 0.995).all()  # they span the range
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    assert features.pairwise_msssim(x) == pytest.approx(
        float(reference(x[i], x[j], data_range=1.0, size_average=True, weights=list(weights / weights.sum()))), abs=1e-5)


def test_msssim_of_flat_images_is_the_luminance_term_at_the_coarsest_scale():
    """Flat images a and b: every contrast-structure term is C2 / C2 = 1, so MS-SSIM is the coarsest
    scale's luminance term (2ab + C1) / (a^2 + b^2 + C1) to its weight, 0.2363 / 0.8668 at 128 px."""
    a, b = 0.3, 0.7
    x, y = torch.full((1, 1, 128, 128), a), torch.full((1, 1, 128, 128), b)
    weight = features.MSSSIM_WEIGHTS[3] / sum(features.MSSSIM_WEIGHTS[:4])
    expected = ((2 * a * b + 0.01**2) / (a * a + b * b + 0.01**2)) ** weight
    # float32 moments (E[x^2] - E[x]^2 of flat images) leave about 1e-5 per scale; the unnormalised
    # weight (0.2363) would read 0.9265, 1 % off
    assert float(features.ms_ssim(x, y)[0]) == pytest.approx(expected, rel=1e-4)


def test_msssim_identity_and_scales():
    x = (_faces(4, 5, size=128) + 1) / 2
    assert features.msssim_scales(128) == 4 and features.msssim_scales(256) == 5
    assert torch.allclose(features.ms_ssim(x, x), torch.ones(4), atol=1e-5)
    y = (_faces(4, 6, size=128) + 1) / 2
    assert (features.ms_ssim(x, y) < 0.9).all()
    assert features.pairwise_msssim(torch.cat([x[:1]] * 3)) == pytest.approx(1.0, abs=1e-5)
    assert features.pairwise_msssim(torch.cat([x, y])) < 0.9


# ------------------------------------------------------------------------- pose estimator
def _blob_images(labels: np.ndarray, size: int = 64) -> np.ndarray:
    """A bright disc whose position encodes yaw (x) and pitch (y); mirror-consistent with FLIP_SIGN
    (roll 0, gaze_yaw = yaw / 2 and gaze_pitch = pitch / 2 share the disc's displacement)."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((len(labels), size, size), np.uint8)
    for i, (yaw, pitch, *_rest) in enumerate(labels):
        cx = size / 2 + yaw * size / 80
        cy = size / 2 - pitch * size / 80
        out[i] = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < (size / 8) ** 2, 220, 30)
    return out


def test_pose_estimator_calibrates_on_a_synthetic_set():
    rng = np.random.default_rng(0)
    n = 180
    yaw = rng.uniform(-20, 20, n)
    pitch = rng.uniform(-15, 15, n)
    labels = np.stack([yaw, pitch, np.zeros(n), yaw / 2, pitch / 2], axis=1).astype(np.float32)
    imgs = _blob_images(labels)
    sources = np.repeat(imgs[..., None], 3, axis=-1)
    subjects = torch.as_tensor(rng.integers(0, 3, n))
    train, test = slice(0, 150), slice(150, n)
    model = train_pose_estimator(
        torch.from_numpy(imgs[train]), torch.from_numpy(sources[train]), torch.from_numpy(labels[train]),
        subjects[train], EstimatorTraining(epochs=10, batch_size=32, lr=3e-3), width=8, feature_dim=32,
    )
    x = torch.from_numpy(imgs[test])[:, None].float() / 127.5 - 1
    errors = angle_errors(predict(model, x), labels[test], "t")
    spread = np.abs(labels[test] - labels[train].mean(0)).mean(0)  # error of predicting the mean
    for j, name in enumerate(LABELS):
        if name == "head_roll":
            assert errors[f"t_{name}_mean"] < 1.0
        else:
            assert errors[f"t_{name}_mean"] < 0.35 * spread[j], name
    assert set(errors) >= {f"t_{n}_p90" for n in LABELS} | {"t_head_mean", "t_gaze_mean"}


def _eye_faces(labels: np.ndarray, size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Colour-coded sources and NIR-like targets of a two-eyed face: head yaw/pitch move the face,
    gaze moves each iris inside its lid opening (by at most ~3 px, as on the twin at 128)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    src = np.zeros((len(labels), size, size, 3), np.uint8)
    tgt = np.zeros((len(labels), size, size), np.float32)
    for i, (yaw, pitch, _roll, gyaw, gpitch) in enumerate(labels):
        cx, cy = size / 2 + yaw * 0.8, size / 2 - pitch * 0.8
        face = ((xx - cx) / 40) ** 2 + ((yy - cy - 6) / 52) ** 2 < 1
        src[i][face] = (255, 0, 0)
        tgt[i] = np.where(face, 150.0, 30.0)
        for side in (-1, 1):
            ex, ey = cx + side * 22, cy - 8
            opening = ((xx - ex) / 8) ** 2 + ((yy - ey) / 4) ** 2 < 1
            iris = opening & ((xx - ex - gyaw * 0.15) ** 2 + (yy - ey + gpitch * 0.15) ** 2 < 3.5**2)
            src[i][opening] = (0, 255, 0)
            src[i][iris] = (0, 0, 255)
            tgt[i][opening] = 225.0
            tgt[i][iris] = 40.0
    tgt += rng.normal(0, 4, tgt.shape)
    return src, np.clip(tgt, 0, 255).astype(np.uint8)


def test_eye_keypoints_are_the_colour_code_centroids():
    src = np.zeros((1, 3, 20, 30), np.float32) - 1  # black, in [-1, 1]
    src[0, 1, 5:9, 2:10] = 1  # left opening: green, rows 5-8, cols 2-9
    src[0, 2, 6:8, 3:5], src[0, 1, 6:8, 3:5] = 1, -1  # left iris: blue, rows 6-7, cols 3-4
    src[0, 1, 10:12, 20:26] = 1  # right opening, no iris visible
    kp, valid = eye_keypoints(torch.from_numpy(src))
    np.testing.assert_allclose(kp[0, 0].numpy(), [3.5, 6.5])
    np.testing.assert_allclose(kp[0, 1].numpy(), [5.5, 6.5])
    np.testing.assert_allclose(kp[0, 3].numpy(), [22.5, 10.5])
    assert valid[0].tolist() == [True, True, False, True]


@pytest.mark.parametrize("size", [128, 256])
def test_eye_patches_cover_the_same_face_area_and_mirror_the_right_eye(size):
    ramp = torch.arange(size, dtype=torch.float32).expand(1, 1, size, size).contiguous()
    centres = torch.tensor([[[40.0, 50.0], [90.0, 50.0]]]) * size / 128
    patches = extract_patches(ramp, centres)
    rows, cols = PATCH
    step = size / 128
    expect = 40 * step + (torch.arange(cols) - (cols - 1) / 2) * step
    torch.testing.assert_close(patches[0, 0, rows // 2], expect)
    torch.testing.assert_close(patches[1, 0, rows // 2], 90 * step - (torch.arange(cols) - (cols - 1) / 2) * step)


def _eye_face_estimator(seed: int, n: int = 200, n_train: int = 170):
    """A small estimator trained on synthetic colour-coded two-eyed faces; returns it with the
    held-out faces (model range), their sources and labels, and the training labels."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.uniform(-15, 15, n), rng.uniform(-10, 10, n), np.zeros(n),
                       rng.uniform(-20, 20, n), rng.uniform(-15, 15, n)], axis=1).astype(np.float32)
    src, tgt = _eye_faces(labels)
    train, test = slice(0, n_train), slice(n_train, n)
    model = train_pose_estimator(
        torch.from_numpy(tgt[train]), torch.from_numpy(src[train]), torch.from_numpy(labels[train]), None,
        EstimatorTraining(epochs=12, batch_size=32, lr=3e-3), width=8, feature_dim=32, resolution=64,
    )
    x = torch.from_numpy(tgt[test])[:, None].float() / 127.5 - 1
    return model, x, src[test], labels[test], labels[train]


def test_pose_estimator_reads_gaze_from_the_eye_patches():
    model, x, test_src, test_labels, train_labels = _eye_face_estimator(seed=1)
    assert model.eyes  # the sources carry the eye code
    errors = angle_errors(predict(model, x), test_labels, "t")
    spread = np.abs(test_labels - train_labels.mean(0)).mean(0)
    # a 20-degree gaze is 3 px here; the 64-pixel trunk alone cannot resolve it this well
    assert errors["t_gaze_yaw_mean"] < 0.3 * spread[3]
    assert errors["t_gaze_pitch_mean"] < 0.3 * spread[4]
    with torch.no_grad():
        found = model.outputs(x)["keypoints"]
    true, valid = eye_keypoints(torch.from_numpy(test_src).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert ((found - true).norm(dim=-1)[valid]).mean() < 1.0


def test_pose_estimator_is_seeded():
    labels = np.zeros((40, 5), np.float32)
    labels[:, 0] = np.linspace(-10, 10, 40)
    imgs = torch.from_numpy(_blob_images(labels))
    src = imgs[..., None].repeat(1, 1, 1, 3)
    kw = dict(settings=EstimatorTraining(epochs=1, batch_size=16), width=8, feature_dim=16)
    a = train_pose_estimator(imgs, src, torch.from_numpy(labels), None, **kw)
    b = train_pose_estimator(imgs, src, torch.from_numpy(labels), None, **kw)
    x = imgs[:, None].float() / 127.5 - 1
    assert np.array_equal(predict(a, x), predict(b, x))


# ------------------------------------------------------------------------------ cleaning
def test_cleaning_precision_recall_on_a_constructed_case():
    kinds = ["none"] * 10 + ["occlusion", "blur", "overexposure", "misaligned", "misaligned", "underexposure"]
    ids = [f"s_c/{i:05d}" for i in range(len(kinds))]
    truth = pd.DataFrame({"pair_id": ids, "disturbance": kinds})
    # detect rejected the occlusion (10) and one clean pair (0); the rest reached clean
    crops = pd.DataFrame({"pair_id": [p for i, p in enumerate(ids) if i not in (0, 10)]})
    outliers = pd.DataFrame({
        "pair_id": [ids[11], ids[12], ids[1], ids[13], ids[12]],
        "rule": ["iqr_target", "iqr_source", "iqr_target", "misalignment", "misalignment"],
    })
    removed = {ids[0], ids[10], ids[11], ids[12], ids[1], ids[13]}
    kept = pd.DataFrame({"pair_id": [p for p in ids if p not in removed]})
    q = cleaning_quality(truth, crops, kept, outliers)
    # pipeline level: removed 6, of which 4 planted (10, 11, 12, 13); 6 planted in all
    assert q["clean_precision"] == pytest.approx(4 / 6)
    assert q["clean_recall"] == pytest.approx(4 / 6)
    assert q["clean_removed_before_clean"] == 2
    assert q["clean_recall_occlusion"] == 1.0 and q["clean_recall_misaligned"] == 0.5
    assert q["clean_recall_underexposure"] == 0.0
    # IQR hits {11, 12, 1}: 2 planted; its targets that reached clean: {11, 12, 15}
    assert q["clean_iqr_precision"] == pytest.approx(2 / 3)
    assert q["clean_iqr_recall"] == pytest.approx(2 / 3)
    assert q["clean_iqr_recall_all"] == pytest.approx(2 / 5)
    # misalignment hits {13, 12}: both planted; misaligned that reached clean: {13, 14}
    assert q["clean_misalignment_precision"] == 1.0
    assert q["clean_misalignment_recall"] == 0.5
    assert q["clean_rules_precision"] == pytest.approx(3 / 4)
    assert q["clean_rules_recall"] == pytest.approx(3 / 5)


def test_cleaning_without_ground_truth_is_unavailable(tmp_path):
    q = evaluate_cleaning(tmp_path / "raw", tmp_path / "crops", tmp_path / "clean")
    assert q["clean_precision"] == "unavailable" and "disturbances.parquet" in q["clean_reason"]
    assert not any(isinstance(v, float) and math.isnan(v) for v in q.values())


def test_pose_estimator_reads_pose_not_brightness():
    """A face of another brightness is the same pose: the recipe's photometric draws must keep the
    estimator's reading (the instrument of pose_gen_* and TSTR) from following the shading (with
    photometric=0 the head error on these faces rose from 0.85 to 3.3 degrees)."""
    model, x, _, test_labels, _ = _eye_face_estimator(seed=2)
    as_is = angle_errors(predict(model, x), test_labels, "t")
    for c, b in ((0.75, 0.2), (1.2, -0.2)):
        shifted = angle_errors(predict(model, (x * c + b).clamp(-1, 1)), test_labels, "t")
        assert shifted["t_head_mean"] < 1.5 * as_is["t_head_mean"] + 0.5, (c, b, shifted["t_head_mean"], as_is["t_head_mean"])
        assert shifted["t_gaze_mean"] < 1.5 * as_is["t_gaze_mean"] + 0.5, (c, b, shifted["t_gaze_mean"], as_is["t_gaze_mean"])
