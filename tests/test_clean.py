"""clean: the thesis 3.1.4 IQR rule by hand, per group and per domain, the pair rule, and the
misalignment rule, on small hand-drawn rig/NIR pairs (no dependence on collect or detect)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from nirgan.config import Config
from nirgan.io import read_table, write_image, write_table
from nirgan.iqr import iqr_outliers
from nirgan.stages import clean
from nirgan.stages.clean import alignment_error, find_outliers

SIZE = 64
LEFT, RIGHT = (22, 28), (42, 28)  # eye centres (x, y) in pixel indices; inter-ocular distance 20
C = 0.5  # detect's landmarks put pixel centres at +0.5


def rig(left=LEFT, right=RIGHT, eyes=True, stripe=0, white_patch=False) -> np.ndarray:
    """A source crop in the thesis's colour code: red skin, green eye whites, blue irises."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    cv2.ellipse(img, (32, 34), (20, 26), 0, 0, 360, (200, 0, 0), -1)
    if eyes:
        for x, y in (left, right):
            cv2.ellipse(img, (x, y), (5, 3), 0, 0, 360, (0, 220, 0), -1)
            cv2.circle(img, (x, y), 2, (0, 0, 230), -1)
    img[:2, :stripe] = 90  # grey, neither eye class: makes the source means differ a little
    if white_patch:
        img[44:60, 20:44] = 255
    return img


def nir(level: float, bright_patch=False) -> np.ndarray:
    img = np.full((SIZE, SIZE), level, np.float32)
    for x, y in (LEFT, RIGHT):
        cv2.circle(img, (x, y), 2, 10.0, -1)
    if bright_patch:
        img[10:50, 10:50] = 255
    return img.round().astype(np.uint8)


def write_pair(root: Path, pair_id: str, source: np.ndarray | None, target: np.ndarray, jitter=(0.0, 0.0)) -> dict:
    src, tgt = f"source/{pair_id}.png", f"target/{pair_id}.png"
    if source is None:
        (root / src).parent.mkdir(parents=True, exist_ok=True)
        (root / src).write_bytes(b"")  # zero bytes: unreadable
    else:
        write_image(root / src, source)
    write_image(root / tgt, target)
    subject_camera, frame = pair_id.split("/")
    subject, camera = subject_camera.split("_")
    return dict(
        pair_id=pair_id, subject=subject, camera=camera, frame=int(frame), source_path=src, target_path=tgt,
        lm_left_eye_x=LEFT[0] + C + jitter[0], lm_left_eye_y=LEFT[1] + C + jitter[1],
        lm_right_eye_x=RIGHT[0] + C - jitter[0], lm_right_eye_y=RIGHT[1] + C + jitter[1],
    )


def test_iqr_hand_computed_example():
    # n = 6, type-7 quantiles: Q1 at position 0.25 * 5 = 1.25 -> 11 + 0.25 * (12 - 11) = 11.25,
    # Q3 at 3.75 -> 13 + 0.75 * (14 - 13) = 13.75; IQR = 2.5; k = 1.5 -> 3.75;
    # bounds [11.25 - 3.75, 13.75 + 3.75] = [7.5, 17.5]: only 100 is outside.
    mask, lower, upper = iqr_outliers(np.array([10, 11, 12, 13, 14, 100.0]), 1.5)
    assert lower == pytest.approx(7.5) and upper == pytest.approx(17.5)
    assert mask.tolist() == [False, False, False, False, False, True]
    # the bounds are inclusive, and the lower side counts too: [7.5, 17.5] again from the
    # same quartiles, with 7.5 and 17.5 themselves kept and 7.4 out
    mask, lower, upper = iqr_outliers(np.array([7.4, 7.5, 11, 12, 13, 14, 17.5]), 1.5)
    # n = 7: Q1 at 1.5 -> (7.5 + 11) / 2 = 9.25, Q3 at 4.5 -> (13 + 14) / 2 = 13.5,
    # IQR 4.25 -> bounds [9.25 - 6.375, 13.5 + 6.375] = [2.875, 19.875]: nothing is out
    assert (lower, upper) == (pytest.approx(2.875), pytest.approx(19.875))
    assert not mask.any()


def test_iqr_non_finite_values_are_outliers_and_do_not_move_the_quartiles():
    mask, lower, upper = iqr_outliers(np.array([10, 11, 12, 13, 14, np.inf, np.nan]), 1.5)
    # quartiles of [10..14]: Q1 11, Q3 13, IQR 2 -> [8, 16]
    assert (lower, upper) == (pytest.approx(8.0), pytest.approx(16.0))
    assert mask.tolist() == [False] * 5 + [True, True]
    mask, lower, upper = iqr_outliers(np.array([np.inf, np.inf]), 1.5)
    assert mask.all() and np.isnan(lower) and np.isnan(upper)


def test_rule_is_per_group_and_per_domain():
    cfg = Config()
    a = [100, 101, 102, 103, 104, 150]  # 150 is far out among ~100s
    b = [150, 151, 152, 153, 154, 150]  # ... and perfectly normal here
    df = pd.DataFrame(dict(
        pair_id=[f"A_c0/{i:05d}" for i in range(6)] + [f"B_c0/{i:05d}" for i in range(6)],
        subject=["A"] * 6 + ["B"] * 6,
        camera=["c0"] * 12,
        target_mean=a + b,
        # the source domain has its own quartiles: 60 is out in B's sources only
        source_mean=[50, 51, 52, 53, 54, 55, 50, 51, 52, 53, 54, 60],
        alignment_error=[0.01] * 12,
    ))
    out = find_outliers(df, cfg)
    assert sorted(zip(out["pair_id"], out["rule"])) == [("A_c0/00005", "iqr_target"), ("B_c0/00005", "iqr_source")]
    row = out[out["rule"] == "iqr_target"].iloc[0]
    # A's targets: Q1 at 1.25 -> 101.25, Q3 at 3.75 -> 103.75, IQR 2.5 -> [97.5, 107.5]
    assert (row["lower"], row["upper"], row["value"]) == (pytest.approx(97.5), pytest.approx(107.5), 150)
    assert "target image mean 150.00" in row["reason"]


def test_small_groups_are_kept_whole():
    cfg = Config()
    df = pd.DataFrame(dict(
        pair_id=["A_c0/00000", "A_c0/00001", "A_c0/00002"], subject="A", camera="c0",
        target_mean=[10.0, 11.0, 250.0], source_mean=[1.0, 1.0, 1.0], alignment_error=[0.0, 0.0, 9.0],
    ))
    assert len(find_outliers(df, cfg)) == 0


def test_alignment_error_in_inter_ocular_distances():
    left, right = np.array(LEFT, float) + C, np.array(RIGHT, float) + C
    assert alignment_error(rig(), left, right)[0] == pytest.approx(0.0, abs=0.02)
    # both rig eyes 6 px to the right: 6 / 20 = 0.3 inter-ocular distances
    shifted = rig(left=(28, 28), right=(48, 28))
    assert alignment_error(shifted, left, right)[0] == pytest.approx(0.3, abs=0.02)
    # one eye hidden (strong yaw): the visible one is matched to the nearer landmark
    one = rig()
    half = one[:, :32]
    half[(half[..., 1] > 0) | (half[..., 2] > 0)] = (200, 0, 0)
    centres, _ = clean.source_eye_centres(one, left, right)
    assert centres.shape == (1, 2)
    assert alignment_error(one, left, right)[0] == pytest.approx(0.0, abs=0.02)
    err, _ = alignment_error(one, left + (6, 0), right + (6, 0))  # and it still sees a shift
    assert err == pytest.approx(0.3, abs=0.02)
    # head roll: eyes on a tilted line are still split into left and right
    tilted_l, tilted_r = np.array((23.0, 23.0)) + C, np.array((41.0, 33.0)) + C
    rolled = rig(left=(23, 23), right=(41, 33))
    assert alignment_error(rolled, tilted_l, tilted_r)[0] == pytest.approx(0.0, abs=0.02)
    # no eye in the source, or no landmarks in the target: infinitely bad, with a reason
    err, why = alignment_error(rig(eyes=False), left, right)
    assert err == np.inf and "no visible eye pixels" in why
    err, why = alignment_error(rig(), np.array([np.nan, np.nan]), right)
    assert err == np.inf and "no eye landmarks" in why


def make_crops(root: Path) -> pd.DataFrame:
    """Two 8-pair groups with planted problems, a 3-pair group, and an unreadable pair."""
    rows = []
    for subject, level in (("s1", 90.0), ("s2", 140.0)):
        for i in range(8):
            jitter = (0.3 * (i % 3 - 1), 0.2 * (i % 2))  # landmark noise, well under the floor
            rows.append(write_pair(root, f"{subject}_c0/{i:05d}", rig(stripe=i), nir(level + i), jitter))
    # s1: target occluded by something bright (iqr_target); s2: source disturbed (iqr_source)
    rows[2] = write_pair(root, "s1_c0/00002", rig(stripe=2), nir(92.0, bright_patch=True))
    rows[8 + 3] = write_pair(root, "s2_c0/00003", rig(stripe=3, white_patch=True), nir(143.0))
    # s1 frame 5: source shifted 6 px, same mean (misalignment only); frame 6: no eyes drawn
    rows[5] = write_pair(root, "s1_c0/00005", rig(left=(28, 28), right=(48, 28), stripe=5), nir(95.0))
    rows[6] = write_pair(root, "s1_c0/00006", rig(eyes=False, stripe=6), nir(96.0))
    for i in range(3):  # too small for statistics, kept whole even with a wild target
        rows.append(write_pair(root, f"s3_c0/{i:05d}", rig(stripe=i), nir(250.0 if i == 0 else 60.0)))
    rows.append(write_pair(root, "s2_c0/00008", None, nir(148.0)))
    df = pd.DataFrame(rows)
    write_table(df, root / "manifest.parquet")
    return df


def test_stage_removes_planted_pairs_and_accounts_for_every_row(tmp_path):
    crops = make_crops(tmp_path / "crops")
    counts = clean.run(Config(), crops_dir=tmp_path / "crops", out_dir=tmp_path / "clean")
    kept = read_table(tmp_path / "clean" / "manifest.parquet")
    out = read_table(tmp_path / "clean" / "outliers.parquet")
    assert list(out.columns) == clean.OUTLIER_COLUMNS
    fired = {(p, r) for p, r in zip(out["pair_id"], out["rule"])}
    assert fired == {
        ("s1_c0/00002", "iqr_target"),
        ("s2_c0/00003", "iqr_source"),  # outlier in the source only: the whole pair goes
        ("s1_c0/00005", "misalignment"),
        ("s1_c0/00006", "misalignment"),
        ("s2_c0/00008", "unreadable"),
    }
    assert "no visible eye pixels" in out.set_index("pair_id").loc["s1_c0/00006", "reason"]
    assert "s2_c0/00008" in out.set_index("pair_id").loc["s2_c0/00008", "reason"]
    # every input row is kept or an outlier, never both
    assert set(kept["pair_id"]) | set(out["pair_id"]) == set(crops["pair_id"])
    assert not set(kept["pair_id"]) & set(out["pair_id"])
    assert counts["kept"] == len(kept) == len(crops) - 5
    # aligned pairs measure near zero; the misalignment threshold is the floor (tiny IQR here)
    assert kept["alignment_error"].max() < 0.05
    assert out.loc[out["rule"] == "misalignment", "upper"].iloc[0] == pytest.approx(Config().clean.misalignment_floor)
    assert {"target_mean", "source_mean", "alignment_error"} <= set(kept.columns)
    assert counts["small_groups"] == 1


def test_misalignment_check_can_be_switched_off(tmp_path):
    make_crops(tmp_path / "crops")
    cfg = Config.model_validate({"clean": {"misalignment": False}})
    clean.run(cfg, crops_dir=tmp_path / "crops", out_dir=tmp_path / "clean")
    out = read_table(tmp_path / "clean" / "outliers.parquet")
    assert "misalignment" not in set(out["rule"])
    # the shifted source has an ordinary mean: IQR on means misses it, as the thesis says
    assert "s1_c0/00005" in set(read_table(tmp_path / "clean" / "manifest.parquet")["pair_id"])


def test_missing_landmarks_stop_with_the_file_named(tmp_path):
    crops = make_crops(tmp_path / "crops").drop(columns=["lm_left_eye_x"])
    write_table(crops, tmp_path / "crops" / "manifest.parquet")
    with pytest.raises(KeyError, match=r"manifest.parquet.*lm_left_eye_x"):
        clean.run(Config(), crops_dir=tmp_path / "crops", out_dir=tmp_path / "clean")
    assert not (tmp_path / "clean").exists()
