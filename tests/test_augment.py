"""augment: the paired Table 3.1 transform keeps pairs aligned, respects its ranges, flips
labels, is seeded; the stage normalises target means with mu0/mu."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from nirgan.config import AugmentConfig, Config, RandomRange
from nirgan.io import read_table, write_image, write_table
from nirgan.labels import FLIP_SIGN
from nirgan.stages import augment
from nirgan.augmentation import apply_params, draw_params, paired_augment, to_model_range, transform_points

S = 64
EYES = ((23, 27), (43, 31))  # (x, y); asymmetric, so a wrong flip or rotation shows


def always(**overrides) -> AugmentConfig:
    """Every transform forced on (p = 1), thesis ranges."""
    base = AugmentConfig()
    fields = dict(
        scale=RandomRange(p=1.0, low=base.scale.low, high=base.scale.high),
        shift=RandomRange(p=1.0, low=base.shift.low, high=base.shift.high),
        rotation=RandomRange(p=1.0, low=base.rotation.low, high=base.rotation.high),
        gamma=RandomRange(p=1.0, low=base.gamma.low, high=base.gamma.high),
        hflip_p=1.0,
    )
    fields.update(overrides)
    return AugmentConfig(**fields)


def never(**overrides) -> AugmentConfig:
    fields = dict(
        scale=RandomRange(p=0.0, low=1.0, high=1.2),
        shift=RandomRange(p=0.0, low=-0.0625, high=0.0625),
        rotation=RandomRange(p=0.0, low=-math.pi / 4, high=math.pi / 4),
        gamma=RandomRange(p=0.0, low=98.0, high=102.0),
        hflip_p=0.0,
    )
    fields.update(overrides)
    return AugmentConfig(**fields)


def marked_pair(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rig source with blue irises, NIR-like target with dark pupils at the same pixels, and the
    same target without pupils (to find where the pupils went after a transform)."""
    src = np.zeros((S, S, 3), np.uint8)
    cv2.ellipse(src, (33, 32), (20, 24), 0, 0, 360, (200, 0, 0), -1)
    tgt = np.full((S, S), 200, np.uint8)
    for x, y in EYES:
        cv2.circle(src, (x, y), 3, (0, 0, 255), -1)
        cv2.circle(tgt, (x, y), 3, 0, -1)
    s = torch.from_numpy(src).permute(2, 0, 1).float().div(255).expand(batch, -1, -1, -1).contiguous()
    t = torch.from_numpy(tgt).float().div(255).expand(batch, 1, -1, -1).contiguous()
    return s, t, torch.full_like(t, 200 / 255)


def centroids(weight: np.ndarray) -> np.ndarray:
    """Centroids (x, y) of the two marks in a weight image, sorted by x."""
    labels, n = ndimage.label(weight > 0.05 * weight.max())
    assert n == 2, f"expected two marks, found {n}"
    cy_cx = ndimage.center_of_mass(weight, labels, [1, 2])
    return np.array(sorted((cx, cy) for cy, cx in cy_cx))


def pupils(source: torch.Tensor, target: torch.Tensor, blank: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per pair: iris centroids in the source (its blue channel) and pupil centroids in the target."""
    src_w = ((source[:, 2] + 1) / 2).numpy()
    tgt_w = ((blank[:, 0] - target[:, 0]) / 2).clamp(min=0).numpy()
    return [(centroids(a), centroids(b)) for a, b in zip(src_w, tgt_w, strict=True)]


@pytest.mark.parametrize("cfg", [always(), AugmentConfig()], ids=["all_forced_on", "table_3_1"])
def test_pairs_stay_aligned_under_every_transform(cfg):
    src, tgt, blank = marked_pair(48)
    params = draw_params(48, cfg, torch.Generator().manual_seed(1), torch.device("cpu"))
    s, t, _ = apply_params(src, tgt, None, params)
    _, b, _ = apply_params(src, blank, None, params)  # where the target's pupils would be without them
    before = np.linalg.norm(np.subtract(*EYES))
    found = pupils(s, t, b)
    for i, (iris, pupil) in enumerate(found):
        assert np.abs(iris - pupil).max() < 0.5, f"pair {i}: irises {iris} vs pupils {pupil}"
        # the transform really moved things: the eye distance grew by the drawn scale
        ratio = np.linalg.norm(iris[1] - iris[0]) / before
        assert ratio == pytest.approx(float(params["scale"][i]), abs=0.03)
    moved = np.stack([iris for iris, _ in found])
    assert moved.std(axis=0).min() > 1.0  # different draws for different pairs


@pytest.mark.parametrize("cfg", [always(), AugmentConfig()], ids=["all_forced_on", "table_3_1"])
def test_points_move_where_the_image_moves_them(cfg):
    # the pose estimator moves its eye keypoints with a batch's draws instead of finding them
    # again in the resampled source (nirgan.training.auxiliary)
    src, tgt, _ = marked_pair(48)
    params = draw_params(48, cfg, torch.Generator().manual_seed(1), torch.device("cpu"))
    s, _, _ = apply_params(src, tgt, None, params)
    points = torch.tensor(EYES, dtype=torch.float32).expand(48, -1, -1)
    moved = transform_points(points, params, S).numpy()
    for i in range(48):
        iris = centroids(((s[i, 2] + 1) / 2).numpy())  # sorted by x
        expect = moved[i][np.argsort(moved[i][:, 0])]  # a flip swaps the eyes
        assert np.abs(expect - iris).max() < 0.35, f"pair {i}: moved {expect} vs found {iris}"
    assert not torch.equal(torch.from_numpy(moved), points)


def test_a_target_alone_gets_the_bytes_it_gets_in_a_pair():
    src, tgt, _ = marked_pair(8)
    params = draw_params(8, always(), torch.Generator().manual_seed(4), torch.device("cpu"))
    labels = torch.randn(8, 5)
    _, t_pair, l_pair = apply_params(src, tgt, labels, params)
    none, t_alone, l_alone = apply_params(None, tgt, labels, params)
    assert none is None and torch.equal(t_pair, t_alone) and torch.equal(l_pair, l_alone)


def test_alignment_check_fails_when_the_two_images_get_different_draws():
    cfg = always()
    src, tgt, blank = marked_pair(16)
    p1 = draw_params(16, cfg, torch.Generator().manual_seed(1), torch.device("cpu"))
    p2 = draw_params(16, cfg, torch.Generator().manual_seed(2), torch.device("cpu"))
    s, _, _ = apply_params(src, tgt, None, p1)
    _, t, _ = apply_params(src, tgt, None, p2)
    _, b, _ = apply_params(src, blank, None, p2)
    errors = [np.abs(iris - pupil).max() for iris, pupil in pupils(s, t, b)]
    assert min(errors) > 0.5 and np.median(errors) > 3.0


def test_flip_mirrors_images_and_labels():
    src, tgt, _ = marked_pair(4)
    labels = torch.tensor([[10.0, 5.0, 3.0, -7.0, 2.0]]).repeat(4, 1)
    s, t, out = paired_augment(src, tgt, labels, never(hflip_p=1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(s, to_model_range(src).flip(3), atol=1e-5)
    assert torch.allclose(t, to_model_range(tgt).flip(3), atol=1e-5)
    assert torch.equal(out, labels * torch.tensor(FLIP_SIGN))
    assert out[0].tolist() == [-10.0, 5.0, -3.0, 7.0, 2.0]  # head yaw, head roll, gaze yaw negated
    # no flip, no change; half of many draws flip
    _, _, same = paired_augment(src, tgt, labels, never(), None)
    assert torch.equal(same, labels)
    many = labels[:1].repeat(4000, 1)
    _, _, mixed = apply_params(
        src[:1].expand(4000, -1, -1, -1)[:, :, :2, :2], tgt[:1].expand(4000, -1, -1, -1)[:, :, :2, :2], many,
        draw_params(4000, AugmentConfig(), torch.Generator().manual_seed(0), torch.device("cpu")),
    )
    assert (mixed[:, 0] < 0).float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_identity_draw_is_the_plain_scaling():
    src, tgt, _ = marked_pair(3)
    s, t, _ = paired_augment(src, tgt, None, never(), None)
    assert torch.allclose(s, to_model_range(src), atol=1e-5)
    assert torch.allclose(t, to_model_range(tgt), atol=1e-5)


def test_ranges_and_probabilities_follow_table_3_1():
    cfg = AugmentConfig()
    p = draw_params(20000, cfg, torch.Generator().manual_seed(3), torch.device("cpu"))
    for key, rng, identity in (
        ("scale", cfg.scale, 1.0), ("shift_x", cfg.shift, 0.0), ("shift_y", cfg.shift, 0.0),
        ("rotation", cfg.rotation, 0.0), ("gamma", cfg.gamma, 100.0),
    ):
        v = p[key]
        assert v.min() >= rng.low and v.max() <= rng.high, key
        applied = (v != identity).float().mean().item()
        assert applied == pytest.approx(rng.p, abs=0.02), key
        drawn = v[v != identity]
        assert drawn.min() < rng.low + 0.02 * (rng.high - rng.low), key  # the whole range is used
        assert drawn.max() > rng.high - 0.02 * (rng.high - rng.low), key
    # shift is drawn independently for x and y, but applied together
    both = (p["shift_x"] != 0) & (p["shift_y"] != 0)
    assert (both == ((p["shift_x"] != 0) | (p["shift_y"] != 0))).all()
    assert abs(np.corrcoef(p["shift_x"][both], p["shift_y"][both])[0, 1]) < 0.05


def test_gamma_is_on_the_target_only_and_in_range():
    src = torch.full((2000, 3, 4, 4), 0.5)
    tgt = torch.full((2000, 1, 4, 4), 0.5)
    s, t, _ = paired_augment(src, tgt, None, never(gamma=RandomRange(p=1.0, low=98.0, high=102.0)),
                             torch.Generator().manual_seed(0))
    assert torch.allclose(s, torch.zeros_like(s), atol=1e-6)  # 0.5 -> 0 in [-1, 1]: source untouched
    unit = (t[:, 0, 0, 0].double() + 1) / 2
    g = 100 * torch.log(unit) / math.log(0.5)
    assert g.min() >= 98.0 - 1e-3 and g.max() <= 102.0 + 1e-3
    assert g.min() < 98.1 and g.max() > 101.9


def test_seeded_draws_are_reproducible_and_outputs_in_range():
    src, tgt, _ = marked_pair(8)
    src = (src + 0.3 * torch.rand_like(src)).clamp(0, 1)
    a = paired_augment(src, tgt, None, AugmentConfig(), torch.Generator().manual_seed(7))
    b = paired_augment(src, tgt, None, AugmentConfig(), torch.Generator().manual_seed(7))
    c = paired_augment(src, tgt, None, AugmentConfig(), torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    for x in a[:2]:
        assert x.min() >= -1.0 and x.max() <= 1.0
    # uint8 input is accepted and means the same as the /255 float
    u8 = (src * 255).round().to(torch.uint8)
    d = paired_augment(u8, tgt, None, AugmentConfig(), torch.Generator().manual_seed(7))
    assert torch.allclose(d[0], paired_augment(u8.float() / 255, tgt, None, AugmentConfig(),
                                                torch.Generator().manual_seed(7))[0])


def test_to_model_range_is_fixed_not_min_max():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(to_model_range(x), torch.tensor([-1.0, 51 / 127.5 - 1, 1.0]))
    assert torch.allclose(to_model_range(torch.tensor([0.25, 0.5])), torch.tensor([-0.5, 0.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_gpu_like_on_the_cpu():
    src, tgt, _ = marked_pair(8)
    labels = torch.randn(8, 5)
    cpu = paired_augment(src, tgt, labels, always(), torch.Generator().manual_seed(5))
    gpu = paired_augment(src.cuda(), tgt.cuda(), labels.cuda(), always(), torch.Generator().manual_seed(5))
    assert all(x.device.type == "cuda" for x in gpu)
    for a, b in zip(cpu, gpu, strict=True):
        assert torch.allclose(a, b.cpu(), atol=1e-3)


def write_clean(root: Path) -> pd.DataFrame:
    """A clean manifest over crops of two cameras with different gains (dim and bright)."""
    rng = np.random.default_rng(0)
    rows = []
    for camera, level in (("c0", 60), ("c1", 130)):
        for i in range(5):
            pair_id = f"s1_{camera}/{i:05d}"
            tgt = np.clip(rng.normal(level, 20, (96, 96)), 0, 255).astype(np.uint8)
            src = np.zeros((96, 96, 3), np.uint8)
            cv2.circle(src, (48, 48), 30, (200, 0, 0), -1)
            write_image(root / "crops" / f"target/{pair_id}.png", tgt)
            write_image(root / "crops" / f"source/{pair_id}.png", src)
            rows.append(dict(pair_id=pair_id, subject="s1", camera=camera, frame=i,
                             source_path=f"source/{pair_id}.png", target_path=f"target/{pair_id}.png",
                             head_yaw=float(i), head_pitch=0.0, head_roll=0.0, gaze_yaw=0.0, gaze_pitch=0.0))
    df = pd.DataFrame(rows)
    write_table(df, root / "clean" / "manifest.parquet")
    return df


@pytest.mark.parametrize("target_mean", [None, 100.0])
def test_stage_normalises_target_means(tmp_path, target_mean):
    clean = write_clean(tmp_path)
    cfg = Config.model_validate({"augment": {"image_size": 64, "target_mean": target_mean}})
    counts = augment.run(cfg, crops_dir=tmp_path / "crops", clean_dir=tmp_path / "clean", out_dir=tmp_path / "prep")
    prep = tmp_path / "prep"
    manifest = read_table(prep / "manifest.parquet")
    source, target = np.load(prep / "source.npy"), np.load(prep / "target.npy")
    assert source.shape == (10, 64, 64, 3) and target.shape == (10, 64, 64)
    assert source.dtype == target.dtype == np.uint8
    assert manifest["index"].tolist() == list(range(10))
    assert manifest["pair_id"].tolist() == clean["pair_id"].tolist()
    means = target.reshape(10, -1).mean(axis=1)
    stats = json.loads((prep / "stats.json").read_text())
    mu0 = stats["mu0"]
    if target_mean is not None:
        assert mu0 == target_mean
    else:  # the mean over all kept targets, before scaling: (60 + 130) / 2 give or take noise
        assert mu0 == pytest.approx(95, abs=3)
    # dim and bright cameras end at the same mean (to rounding) and the gain says by how much
    assert np.abs(means - mu0).max() < 0.6
    assert manifest.loc[manifest["camera"] == "c0", "target_gain"].min() > 1.3
    assert manifest.loc[manifest["camera"] == "c1", "target_gain"].max() < 0.85
    # the gain is what was applied: raw resized target * gain == stored target (to rounding)
    raw = cv2.resize(cv2.imread(str(tmp_path / "crops" / clean["target_path"][0]), cv2.IMREAD_GRAYSCALE),
                     (64, 64), interpolation=cv2.INTER_AREA)
    expect = np.clip(np.rint(raw * manifest["target_gain"][0]), 0, 255)
    assert np.abs(expect - target[0]).max() <= 1
    preview = cv2.imread(str(prep / "preview.png"))
    assert preview.shape == (4 * 64, augment.PREVIEW_DRAWS * 3 * 64, 3)
    assert counts["prepared"] == 10


def head_marks(labels: list[float], size: int) -> np.ndarray:
    """Eyes and nose tip of a head with these labels, drawn as anti-aliased discs, in the twin's
    documented convention (nirgan.twin): R = Rz(roll) Rx(-pitch) Ry(yaw) maps head to camera
    (x right, y up), orthographic, the head's origin at the image centre."""
    yaw, pitch, roll = (math.radians(v) for v in labels[:3])
    ry = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, math.cos(-pitch), -math.sin(-pitch)], [0, math.sin(-pitch), math.cos(-pitch)]])
    rz = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    cam = np.array([[-0.4, 0.05, 0.91], [0.4, 0.05, 0.91], [0.0, -0.3, 1.3]]) @ (rz @ rx @ ry).T
    centre, scale = (size - 1) / 2, 0.3 * size  # grid_sample turns about (S - 1) / 2
    img = np.zeros((size, size), np.float32)
    for x, y in zip(centre + scale * cam[:, 0], centre - scale * cam[:, 1], strict=True):
        cv2.circle(img, (round(x * 16), round(y * 16)), 3 * 16, 1.0, -1, cv2.LINE_AA, shift=4)
    return img


def marks(weight: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(weight > 0.05 * weight.max())
    assert n == 3, f"expected three marks, found {n}"
    return np.array(sorted((cx, cy) for cy, cx in ndimage.center_of_mass(weight, labels, [1, 2, 3])))


def test_rotation_and_flip_labels_describe_the_transformed_head():
    """Rotating (and mirroring) a head about the image centre must look like a head drawn at
    the returned labels; a wrong roll sign puts the marks pixels away."""
    size = 96
    start = [20.0, 8.0, 6.0, -10.0, 5.0]
    img = torch.from_numpy(head_marks(start, size))[None, None].repeat(4, 3, 1, 1)
    rot = RandomRange(p=1.0, low=-math.pi / 4, high=math.pi / 4)
    for flip_p in (0.0, 1.0):
        cfg = never(rotation=rot, hflip_p=flip_p)
        start_labels = torch.tensor([start] * 4)
        s, _, labels = paired_augment(img, img[:, :1], start_labels, cfg, torch.Generator().manual_seed(4))
        assert (labels[:, 2] != start[2] * (1 - 2 * flip_p)).all()  # the roll did change
        for i in range(4):
            got = marks(((s[i, 0] + 1) / 2).numpy())
            expected = marks(head_marks(labels[i].tolist(), size))
            assert np.abs(got - expected).max() < 0.5, (flip_p, labels[i])
            wrong = labels[i].tolist()
            wrong[2] = 2 * (start[2] * (1 - 2 * flip_p)) - wrong[2]  # the rotation with the other sign
            assert np.abs(got - marks(head_marks(wrong, size))).max() > 3
