"""split: subject-disjoint by default, thesis 90/10 by pair on request; test rows are the
prepared (un-augmented) originals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nirgan.config import Config
from nirgan.io import read_table, write_table
from nirgan.splitting import choose_test_subjects
from nirgan.stages import split

# pairs per subject: uneven, like real recordings
PAIRS = {"s0": 30, "s1": 12, "s2": 25, "s3": 18, "s4": 40, "s5": 9, "s6": 22, "s7": 15, "s8": 20, "s9": 9}


def write_prepared(root: Path, pairs: dict[str, int] = PAIRS) -> pd.DataFrame:
    rows = [
        dict(pair_id=f"{s}_c0/{i:05d}", subject=s, camera="c0", frame=i) for s, n in pairs.items() for i in range(n)
    ]
    df = pd.DataFrame(rows)
    df["index"] = np.arange(len(df))
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    np.save(root / "source.npy", rng.integers(0, 256, (len(df), 8, 8, 3), dtype=np.uint8))
    np.save(root / "target.npy", rng.integers(0, 256, (len(df), 8, 8), dtype=np.uint8))
    write_table(df, root / "manifest.parquet")
    return df


def load(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    summary = json.loads((out / "summary.json").read_text())
    return read_table(out / "train.parquet"), read_table(out / "test.parquet"), summary


def test_subject_split_is_disjoint_and_close_to_the_fraction(tmp_path):
    prepared = write_prepared(tmp_path / "prep")
    counts = split.run(Config(), prepared_dir=tmp_path / "prep", out_dir=tmp_path / "split")
    train, test, summary = load(tmp_path / "split")
    assert not set(train["subject"]) & set(test["subject"])
    assert len(set(train["subject"])) >= 1 and len(set(test["subject"])) >= 1
    assert sorted(train["pair_id"].tolist() + test["pair_id"].tolist()) == sorted(prepared["pair_id"])
    assert abs(len(test) - 20) <= 2  # 200 pairs, goal 20: within 10 % of it
    assert summary["strategy"] == "subject" and summary["subjects_in_both"] == []
    assert summary["subjects_test"] == sorted(set(test["subject"]))
    assert summary["n_train"] == counts["train"] == len(train)
    assert "un-augmented" in summary["test_set"]


def test_subject_share_is_close_for_every_seed():
    sizes = pd.Series(PAIRS)
    for seed in range(20):
        chosen = choose_test_subjects(sizes, 0.1, seed)
        assert abs(sizes[chosen].sum() - 20) <= 2, (seed, chosen)
        assert 1 <= len(chosen) < len(sizes)
    # one huge subject and tiny ones: the best possible share, never an empty set
    lopsided = pd.Series({"big": 1000, "a": 1, "b": 1})
    assert choose_test_subjects(lopsided, 0.1, 0) == ["a", "b"]
    assert choose_test_subjects(pd.Series({"big": 1000, "small": 900}), 0.1, 0) == ["small"]


def test_test_rows_are_the_prepared_originals(tmp_path):
    prepared = write_prepared(tmp_path / "prep")
    split.run(Config(), prepared_dir=tmp_path / "prep", out_dir=tmp_path / "split")
    _, test, _ = load(tmp_path / "split")
    # each test row points at its own prepared row, so loading by `index` gives the stored
    # arrays unchanged: augmentation is never written anywhere
    by_id = prepared.set_index("pair_id")["index"]
    assert (test["index"].to_numpy() == by_id[test["pair_id"]].to_numpy()).all()
    target = np.load(tmp_path / "prep" / "target.npy")
    assert np.array_equal(target[test["index"].to_numpy()], target[by_id[test["pair_id"]].to_numpy()])
    assert not (tmp_path / "split" / "target.npy").exists()


def test_seed_decides_the_subjects(tmp_path):
    write_prepared(tmp_path / "prep")
    chosen = set()
    for seed in range(6):
        cfg = Config.model_validate({"split": {"seed": seed}})
        split.run(cfg, prepared_dir=tmp_path / "prep", out_dir=tmp_path / f"split{seed}")
        chosen.add(tuple(load(tmp_path / f"split{seed}")[2]["subjects_test"]))
    assert len(chosen) > 1
    split.run(Config(), prepared_dir=tmp_path / "prep", out_dir=tmp_path / "again")
    assert load(tmp_path / "again")[2]["subjects_test"] == load(tmp_path / "split0")[2]["subjects_test"]


def test_random_strategy_is_the_thesis_90_10_by_pair(tmp_path):
    write_prepared(tmp_path / "prep")
    cfg = Config.model_validate({"split": {"strategy": "random"}})
    split.run(cfg, prepared_dir=tmp_path / "prep", out_dir=tmp_path / "split")
    train, test, summary = load(tmp_path / "split")
    assert (len(train), len(test)) == (180, 20)
    assert summary["test_fraction"] == pytest.approx(0.1)
    assert not set(train["pair_id"]) & set(test["pair_id"])
    # by pair, so subjects leak into both sets, and the summary says which
    assert summary["subjects_in_both"] == sorted(set(train["subject"]) & set(test["subject"]))
    assert len(summary["subjects_in_both"]) >= 1


def test_one_subject_cannot_be_split_by_subject(tmp_path):
    write_prepared(tmp_path / "prep", {"only": 10})
    with pytest.raises(ValueError, match="at least 2 subjects.*split.strategy=random"):
        split.run(Config(), prepared_dir=tmp_path / "prep", out_dir=tmp_path / "split")
    assert not (tmp_path / "split").exists()


def test_two_subjects_give_one_each(tmp_path):
    write_prepared(tmp_path / "prep", {"a": 50, "b": 3})
    split.run(Config(), prepared_dir=tmp_path / "prep", out_dir=tmp_path / "split")
    train, test, _ = load(tmp_path / "split")
    assert set(train["subject"]) | set(test["subject"]) == {"a", "b"}
    assert len(set(train["subject"])) == len(set(test["subject"])) == 1


def test_clean_augment_split_on_real_twin_data(tmp_path):
    """collect (twin) -> detect -> clean -> augment -> split on a micro twin, checked against
    the twin's planted ground truth and the files each stage promises."""
    import cv2

    from nirgan.io import read_image
    from nirgan.stages import augment, clean, collect, detect

    cfg = Config.model_validate({
        "collect": {"twin": {"subjects": 3, "cameras": 1, "frames": 20, "width": 160, "height": 160,
                             "disturbance_fraction": 0.2}},
        "augment": {"image_size": 64},
    })
    raw, crops, cleaned, prep, out = (tmp_path / d for d in ("raw", "crops", "clean", "prep", "split"))
    collect.run(cfg, out_dir=raw)
    detect.run(cfg, raw_dir=raw, out_dir=crops)
    clean.run(cfg, crops_dir=crops, out_dir=cleaned)
    augment.run(cfg, crops_dir=crops, clean_dir=cleaned, out_dir=prep)
    split.run(cfg, prepared_dir=prep, out_dir=out)

    truth = read_table(raw / "disturbances.parquet").set_index("pair_id")["disturbance"]
    crop_rows = read_table(crops / "manifest.parquet")
    kept = read_table(cleaned / "manifest.parquet")
    outliers = read_table(cleaned / "outliers.parquet")
    # every detected pair is kept or an outlier
    assert set(kept["pair_id"]) | set(outliers["pair_id"]) == set(crop_rows["pair_id"])
    assert not set(kept["pair_id"]) & set(outliers["pair_id"])
    # the misalignment rule finds every planted misaligned pair that detect let through,
    # and aligned pairs are measured as aligned
    misaligned = set(crop_rows["pair_id"][crop_rows["pair_id"].map(truth) == "misaligned"])
    assert misaligned, "the micro twin planted no misaligned pair that detect kept"
    assert misaligned <= set(outliers.loc[outliers["rule"] == "misalignment", "pair_id"])
    aligned = kept[kept["pair_id"].map(truth) == "none"]["alignment_error"]
    assert aligned.median() < 0.1

    train, test, summary = load(out)
    assert not set(train["subject"]) & set(test["subject"])
    assert summary["n_train"] + summary["n_test"] == len(kept)
    # test rows are un-augmented originals: the resized crop times its mu0/mu gain
    target = np.load(prep / "target.npy")
    source = np.load(prep / "source.npy")
    for i, t_path, s_path, gain in zip(test["index"], test["target_path"], test["source_path"], test["target_gain"]):
        crop_t = cv2.resize(read_image(crops / t_path, 1), (64, 64), interpolation=cv2.INTER_AREA)
        crop_s = cv2.resize(read_image(crops / s_path, 3), (64, 64), interpolation=cv2.INTER_AREA)
        assert np.array_equal(source[i], crop_s)
        assert np.abs(np.clip(np.rint(crop_t * gain), 0, 255) - target[i]).max() <= 1
