"""Issue 23, hardening round 3: hostile names and bytes, bad labels, late errors, files not ours.

Every case is a real file on disk (a twin render, a crafted name, a garbage model) and the
stage or the CLI runs on it for real. The measure: no traceback, one line naming the file or
key with exit 2, no silent drop, no file of the user's replaced, moved or created. This file
is the data side (collect, augment, split, the folder rig); ``test_hardening_round3_cli.py``
the command line (check-params, model files, export, promote).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nirgan import twin
from nirgan.config import DataError, TwinConfig, parse_config
from nirgan.io import read_table, write_image
from nirgan.labels import LABELS
from nirgan.stages import collect

SRC = Path(collect.__file__).parents[2]


def _pairs_folder(root: Path, subjects: int = 2, frames: int = 2) -> list:
    pairs = list(twin.render_dataset(TwinConfig(subjects=subjects, cameras=1, frames=4, seed=5,
                                                disturbance_fraction=0, width=96, height=96)))
    pairs = [p for p in pairs if p.frame < frames]
    for p in pairs:
        name = f"{p.subject}_{p.camera}/{p.frame:05d}.png"
        write_image(root / "target" / name, p.target)
        write_image(root / "source" / name, p.source)
    return pairs


def _folder_cfg(root: Path, **collect_extra):
    return parse_config({"collect": {"source": "folder", "path": str(root), **collect_extra}})


def _rejects(out: Path) -> dict[str, str]:
    rejects = read_table(out / "rejects.parquet")
    return dict(zip(rejects["path"], rejects["reason"]))


def _cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run([sys.executable, "-m", "nirgan.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and "weights_only" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nirgan:")]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------ collect: names and bytes
def test_a_frame_number_too_long_for_int64_is_a_bad_frame_name(tmp_path: Path):
    root = tmp_path / "in"
    pairs = _pairs_folder(root)
    for domain, image in (("target", pairs[0].target), ("source", pairs[0].source)):
        write_image(root / domain / "s00_cam0/99999999999999999999.png", image)
    out = tmp_path / "raw"
    counts = collect.run(_folder_cfg(root), out)
    assert counts["pairs"] == 4
    reasons = _rejects(out)
    assert reasons == {f"{d}/s00_cam0/99999999999999999999.png": "bad_frame_name" for d in ("target", "source")}


def test_a_folder_name_that_is_not_utf8_is_rejected_and_named_with_escapes(tmp_path: Path):
    root = tmp_path / "in"
    pairs = _pairs_folder(root)
    bad = os.fsdecode(b"s\xff9_cam0")  # Latin-1 bytes from an old file system
    for domain, image in (("target", pairs[0].target), ("source", pairs[0].source)):
        write_image(root / domain / bad / "00000.png", image)
    out = tmp_path / "raw"
    counts = collect.run(_folder_cfg(root), out)
    assert counts["pairs"] == 4
    assert _rejects(out) == {f"{d}/s\\xff9_cam0/00000.png": "undecodable_name" for d in ("target", "source")}


def test_appledouble_and_hidden_files_are_skipped_with_a_reason(tmp_path: Path):
    root = tmp_path / "in"
    _pairs_folder(root)
    for domain in ("target", "source"):
        # what a copy from macOS leaves beside every file: 4 kB of resource fork, not an image
        for frame in (0, 1):
            (root / domain / f"s00_cam0/._{frame:05d}.png").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 4092)
        (root / domain / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (root / domain / ".thumbs").mkdir()
        (root / domain / ".thumbs/00000.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "raw"
    counts = collect.run(_folder_cfg(root), out)
    assert counts["pairs"] == 4  # every real frame kept, none lost to its ._ twin
    reasons = _rejects(out)
    assert set(reasons.values()) == {"hidden_file"} and len(reasons) == 8
    assert "target/s00_cam0/._00001.png" in reasons and "source/.thumbs/00000.png" in reasons


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_bytes_after_the_end_of_a_valid_image_are_not_truncation(tmp_path: Path, ext: str):
    import cv2

    root = tmp_path / "in"
    pairs = _pairs_folder(root, frames=1)
    for p in pairs:
        for domain, image in (("target", p.target), ("source", cv2.cvtColor(p.source, cv2.COLOR_RGB2BGR))):
            path = root / domain / f"{p.subject}_{p.camera}/00000.png"
            path.unlink()
            ok, buf = cv2.imencode(ext, image)
            # a camera's maker note, or a second image a phone appends after the end marker
            path.with_suffix(ext).write_bytes(buf.tobytes() + b"\x00TRAILER" * 64)
    # a really truncated one is still caught
    cut = root / f"target/s01_cam0/00000{ext}"
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    out = tmp_path / "raw"
    counts = collect.run(_folder_cfg(root), out)
    assert counts["pairs"] == 1
    assert _rejects(out) == {f"target/s01_cam0/00000{ext}": "truncated",
                             f"source/s01_cam0/00000{ext}": "partner_rejected"}


def test_zero_usable_pairs_stop_collect_with_one_line(tmp_path: Path):
    root = tmp_path / "in"
    for domain in ("target", "source"):
        (root / domain / "s00_cam0").mkdir(parents=True)
        (root / domain / "s00_cam0/00000.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"no usable pair \(2 files rejected: \{'not_an_image': 2\}\)"):
        collect.run(_folder_cfg(root), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"collect": {"source": "folder", "path": str(root)}}))
    _assert_one_line_error(_cli(tmp_path, "stage", "collect"), str(root), "no usable pair")


# ------------------------------------------------------------------------ collect: labels
def test_infinite_and_out_of_domain_labels_are_rejected_with_a_reason_and_counted(tmp_path: Path, caplog):
    root = tmp_path / "in"
    _pairs_folder(root)
    table = pd.DataFrame({"pair_id": ["s00_cam0/0", "s00_cam0/1", "s01_cam0/0", "s01_cam0/1"]}
                         | {name: [1.0, 2.0, 3.0, 4.0] for name in LABELS})
    table.loc[1, "head_yaw"] = 720.0
    table.loc[2, "gaze_pitch"] = np.inf
    table.to_csv(root / "labels.csv", index=False)
    with open(root / "labels.csv") as f:
        assert "inf" in f.read()  # written as pandas writes it, read back as a float
    out = tmp_path / "raw"
    with caplog.at_level("WARNING", logger="nirgan"):
        counts = collect.run(_folder_cfg(root, labels="labels.csv"), out)
    rejects = read_table(out / "rejects.parquet")
    assert sorted(zip(rejects["path"], rejects["pair_id"], rejects["reason"])) == [
        ("labels.csv:3", "s00_cam0/00001", "label_out_of_range"),
        ("labels.csv:4", "s01_cam0/00000", "label_not_finite"),
    ]
    manifest = read_table(out / "manifest.parquet").set_index("pair_id")
    assert np.isfinite(manifest[list(LABELS)].to_numpy()[~manifest["head_yaw"].isna().to_numpy()]).all()
    assert manifest.loc[["s00_cam0/00001", "s01_cam0/00000"], list(LABELS)].isna().all().all()
    assert counts["unlabelled"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("2 of 4 pairs have no labels" in w and "labels.csv" in w for w in warnings), warnings


# ------------------------------------------------------------------------ zero pairs downstream
def test_augment_with_no_pair_left_is_one_line(tmp_path: Path):
    from nirgan.io import write_table
    from nirgan.stages import augment

    clean = tmp_path / "clean"
    clean.mkdir()
    write_table(pd.DataFrame(columns=["pair_id", "source_path", "target_path"]).astype(object),
                clean / "manifest.parquet")
    with pytest.raises(DataError, match=r"manifest.parquet: no pair left to prepare \(0 rows"):
        augment.run(parse_config({}), tmp_path / "crops", clean, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


# ------------------------------------------------------------------------ split: byte-identical leaks
def _prepared_with_copies(root: Path) -> pd.DataFrame:
    """Frames 0-4 of every subject are the same five files kept under six subject names (the
    same target bytes); frames 5-9 are each subject's own."""
    rows = [dict(pair_id=f"s{s}_c0/{i:05d}", subject=f"s{s}", camera="c0", frame=i,
                 target_sha256=f"shared-{i}" if i < 5 else f"s{s}-{i}") for s in range(6) for i in range(10)]
    df = pd.DataFrame(rows)
    df["index"] = np.arange(len(df))
    root.mkdir(parents=True)
    from nirgan.io import write_table

    write_table(df, root / "manifest.parquet")
    return df


@pytest.mark.parametrize("strategy", ["subject", "random"])
def test_a_byte_identical_copy_never_spans_train_and_test(tmp_path: Path, strategy: str):
    import json

    from nirgan.stages import split

    prepared = _prepared_with_copies(tmp_path / "prep")
    cfg = parse_config({"split": {"strategy": strategy, "test_fraction": 0.3, "seed": 1}})
    counts = split.run(cfg, prepared_dir=tmp_path / "prep", out_dir=tmp_path / "split")
    train, test = read_table(tmp_path / "split/train.parquet"), read_table(tmp_path / "split/test.parquet")
    duplicates = read_table(tmp_path / "split/duplicates.parquet")
    assert not set(train["target_sha256"]) & set(test["target_sha256"])
    assert len(duplicates) > 0 and counts["duplicates_dropped"] == len(duplicates)
    # every pair is accounted for: in train, in test, or dropped from test with the row it copies
    assert sorted([*train["pair_id"], *test["pair_id"], *duplicates["pair_id"]]) == sorted(prepared["pair_id"])
    by_id = prepared.set_index("pair_id")["target_sha256"]
    assert all(by_id[a] == by_id[b] for a, b in zip(duplicates["pair_id"], duplicates["duplicate_of"]))
    assert set(duplicates["duplicate_of"]) <= set(train["pair_id"])
    summary = json.loads((tmp_path / "split/summary.json").read_text())
    assert summary["duplicates_dropped_from_test"] == len(duplicates)


def test_one_subject_is_a_data_error_not_a_traceback(tmp_path: Path):
    from nirgan.stages import split

    prepared = _prepared_with_copies(tmp_path / "prep")
    from nirgan.io import write_table

    write_table(prepared[prepared["subject"] == "s0"], tmp_path / "prep/manifest.parquet")
    with pytest.raises(DataError, match="at least 2 subjects"):
        split.run(parse_config({}), prepared_dir=tmp_path / "prep", out_dir=tmp_path / "split")


def test_a_folder_rig_copied_from_macos_ignores_its_appledouble_files(tmp_path: Path):
    from nirgan.generation.rig import folder_rig

    root = tmp_path / "rig"
    write_image(root / "source/s00_cam0/00000.png", np.full((64, 64, 3), 90, np.uint8))
    (root / "source/s00_cam0/._00000.png").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 4092)
    pd.DataFrame({"pair_id": ["s00_cam0/0"], **{k: [0.0] for k in LABELS}, "glasses": [False]}).to_csv(
        tmp_path / "labels.csv", index=False)
    _, rows = folder_rig(root, tmp_path / "labels.csv", 64)
    assert rows["source_path"].tolist() == ["source/s00_cam0/00000.png"]


@pytest.mark.parametrize("yaw", [720.0, np.inf])
def test_a_folder_rig_refuses_labels_outside_the_rig_domain(tmp_path: Path, yaw: float):
    from nirgan.generation.rig import folder_rig

    root = tmp_path / "rig"
    write_image(root / "source/s00_cam0/00000.png", np.full((64, 64, 3), 90, np.uint8))
    pd.DataFrame({"pair_id": ["s00_cam0/0"], **{k: [0.0] for k in LABELS}, "glasses": [False]}).assign(
        head_yaw=[yaw]).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"labels.csv, row 2, head_yaw: .* outside the rig's domain \[-90, 90\]"):
        folder_rig(root, tmp_path / "labels.csv", 64)
