"""Stage collect on the twin, on a messy folder and on videos: every input accounted for."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from nirgan import twin
from nirgan.config import TwinConfig, parse_config
from nirgan.io import read_image, read_table, write_image
from nirgan.labels import LABELS
from nirgan.stages import collect


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_twin_output_follows_the_contract(raw_twin_dir: Path, twin_cfg):
    manifest = read_table(raw_twin_dir / "manifest.parquet")
    assert list(manifest.columns) == collect.MANIFEST_COLUMNS
    assert len(manifest) == twin.count_pairs(twin_cfg.collect.twin)
    assert manifest["pair_id"].is_unique
    assert str(manifest["glasses"].dtype) == "boolean" and manifest["frame"].dtype == np.int64
    assert manifest[list(LABELS)].notna().all().all()
    row = manifest.iloc[0]
    assert row["pair_id"] == f"{row['subject']}_{row['camera']}/{row['frame']:05d}"
    assert row["target_path"] == f"target/{row['pair_id']}.png"
    target = read_image(raw_twin_dir / row["target_path"], 1)
    source = read_image(raw_twin_dir / row["source_path"], 3)
    assert target.shape == (256, 256) and source.shape == (256, 256, 3)
    assert hashlib.sha256((raw_twin_dir / row["source_path"]).read_bytes()).hexdigest() == row["source_sha256"]
    truth = read_table(raw_twin_dir / "disturbances.parquet")
    assert list(truth.columns) == ["pair_id", "disturbance"]
    assert set(truth["pair_id"]) == set(manifest["pair_id"])
    assert set(truth["disturbance"]) <= set(twin.DISTURBANCES)
    assert (truth["disturbance"] != "none").sum() == round(0.08 * len(manifest))
    rejects = read_table(raw_twin_dir / "rejects.parquet")
    assert list(rejects.columns) == collect.REJECT_COLUMNS and rejects.empty


@pytest.fixture()
def messy_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A thesis-layout folder with every kind of bad file; returns it and the expected reasons."""
    root = tmp_path / "input"
    pairs = list(twin.render_dataset(TwinConfig(subjects=2, cameras=1, frames=4, seed=9, disturbance_fraction=0)))
    for p in pairs:
        name = f"{p.subject}_{p.camera}/{p.frame:05d}.png"
        write_image(root / "target" / name, p.target)
        write_image(root / "source" / name, p.source)
    t, s = root / "target", root / "source"
    expected = {}
    # truncated target: half a PNG
    data = (t / "s00_cam0/00000.png").read_bytes()
    (t / "s00_cam0/00000.png").write_bytes(data[: len(data) // 2])
    expected |= {"target/s00_cam0/00000.png": "truncated", "source/s00_cam0/00000.png": "partner_rejected"}
    # zero-byte source
    (s / "s00_cam0/00001.png").write_bytes(b"")
    expected |= {"source/s00_cam0/00001.png": "zero_byte", "target/s00_cam0/00001.png": "partner_rejected"}
    # a text file named .png (with a good partner)
    (t / "s01_cam0/00002.png").write_text("not a picture\n")
    expected |= {"target/s01_cam0/00002.png": "not_an_image", "source/s01_cam0/00002.png": "partner_rejected"}
    # unpaired both ways
    (s / "s01_cam0/00003.png").unlink()
    expected["target/s01_cam0/00003.png"] = "unpaired"
    write_image(s / "s01_cam0/00007.png", pairs[0].source)
    expected["source/s01_cam0/00007.png"] = "unpaired"
    # a directory name that is not <subject>_<camera>
    for domain, img in (("target", pairs[0].target), ("source", pairs[0].source)):
        write_image(root / domain / "nocamera" / "00000.png", img)
        expected[f"{domain}/nocamera/00000.png"] = "bad_directory_name"
    # a colour image as NIR target, a grey image as rig source
    write_image(t / "s01_cam0/00010.png", pairs[1].source)
    write_image(s / "s01_cam0/00010.png", pairs[1].source)
    expected |= {"target/s01_cam0/00010.png": "wrong_channels", "source/s01_cam0/00010.png": "partner_rejected"}
    # stray files
    (t / "notes.txt").write_text("hello")
    expected["target/notes.txt"] = "unexpected_location"
    (s / "s00_cam0" / "Thumbs.db").write_bytes(b"\x00\x01")
    expected["source/s00_cam0/Thumbs.db"] = "unsupported_file"
    # a dangling link
    os.symlink(tmp_path / "gone.png", t / "s00_cam0/00009.png")
    write_image(s / "s00_cam0/00009.png", pairs[0].source)
    expected |= {"target/s00_cam0/00009.png": "unreadable", "source/s00_cam0/00009.png": "partner_rejected"}
    # a grey target stored as RGB with equal channels is converted and kept
    write_image(t / "s00_cam0/00002.png", np.repeat(pairs[2].target[..., None], 3, axis=2))
    return root, expected


def test_folder_accounts_for_every_file(messy_folder, tmp_path: Path):
    root, expected = messy_folder
    before = _hashes(root)
    labels = pd.DataFrame({"pair_id": ["s00_cam0/2", "s01_cam0/00001"], "glasses": [True, False]}
                          | {name: [1.0, -2.0] for name in LABELS})
    labels.to_csv(root / "labels.csv", index=False)
    cfg = parse_config({"collect": {"source": "folder", "path": str(root), "labels": "labels.csv"}})
    out = tmp_path / "raw"
    counts = collect.run(cfg, out)

    assert _hashes(root) == before | {"labels.csv": _hashes(root)["labels.csv"]}  # raw input untouched
    manifest = read_table(out / "manifest.parquet")
    rejects = read_table(out / "rejects.parquet")
    total = sum(1 for d in ("target", "source") for p in (root / d).rglob("*") if p.is_file() or p.is_symlink())
    assert 2 * len(manifest) + len(rejects) == total
    assert counts["pairs"] == len(manifest) and counts["rejected"] == len(rejects)
    assert dict(zip(rejects["path"], rejects["reason"])) == expected
    kept = set(manifest["pair_id"])
    assert kept == {"s00_cam0/00002", "s00_cam0/00003", "s01_cam0/00000", "s01_cam0/00001"}
    # labels by pair_id (however the table spells the frame), NaN where the table is silent
    by_id = manifest.set_index("pair_id")
    assert by_id.loc["s00_cam0/00002", "head_yaw"] == 1.0 and bool(by_id.loc["s00_cam0/00002", "glasses"])
    assert by_id.loc["s01_cam0/00001", "gaze_pitch"] == -2.0
    assert np.isnan(by_id.loc["s00_cam0/00003", "head_yaw"]) and pd.isna(by_id.loc["s00_cam0/00003", "glasses"])
    # a good PNG is copied byte for byte; the RGB-stored grey target is converted to 1 channel
    assert by_id.loc["s01_cam0/00000", "target_sha256"] == before["target/s01_cam0/00000.png"]
    converted = cv2.imread(str(out / by_id.loc["s00_cam0/00002", "target_path"]), cv2.IMREAD_UNCHANGED)
    assert converted.ndim == 2
    for _, row in manifest.iterrows():
        assert hashlib.sha256((out / row["target_path"]).read_bytes()).hexdigest() == row["target_sha256"]


def test_labels_table_errors_name_the_missing_columns(messy_folder, tmp_path: Path):
    root, _ = messy_folder
    pd.DataFrame({"pair_id": ["s00_cam0/00002"], "head_yaw": [1.0], "head_pitch": [0.0]}).to_parquet(
        root / "labels.parquet")
    cfg = parse_config({"collect": {"source": "folder", "path": str(root), "labels": str(root / "labels.parquet")}})
    with pytest.raises(ValueError, match="head_roll, gaze_yaw, gaze_pitch"):
        collect.run(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def test_videos_pair_frames_by_index(tmp_path: Path):
    root = tmp_path / "videos"
    pairs = list(twin.render_dataset(TwinConfig(subjects=2, cameras=1, frames=6, width=128, height=128,
                                                disturbance_fraction=0)))
    _write_video(root / "target" / "s00_cam0.avi", [p.target for p in pairs[:6]])
    _write_video(root / "source" / "s00_cam0.avi", [p.source for p in pairs[:4]])  # 2 frames short
    (root / "target" / "s01_cam0.avi").write_bytes(b"garbage, not a video" * 10)
    _write_video(root / "source" / "s01_cam0.avi", [p.source for p in pairs[6:]])
    before = _hashes(root)

    cfg = parse_config({"collect": {"source": "videos", "path": str(root)}})
    counts = collect.run(cfg, tmp_path / "raw")
    assert _hashes(root) == before
    manifest = read_table(tmp_path / "raw" / "manifest.parquet")
    rejects = read_table(tmp_path / "raw" / "rejects.parquet")
    assert list(manifest["pair_id"]) == [f"s00_cam0/{i:05d}" for i in range(4)]
    assert counts == {"pairs": 4, "rejected": 4}
    got = sorted(zip(rejects["path"], rejects["pair_id"].fillna(""), rejects["reason"]))
    assert got == [
        ("source/s01_cam0.avi", "", "partner_rejected"),
        ("target/s00_cam0.avi", "s00_cam0/00004", "unpaired"),
        ("target/s00_cam0.avi", "s00_cam0/00005", "unpaired"),
        ("target/s01_cam0.avi", "", "unreadable_video"),
    ]
    frame = read_image(tmp_path / "raw" / "target/s00_cam0/00002.png", 1)
    assert frame.shape == (128, 128)
    assert np.abs(frame.astype(int) - pairs[2].target).mean() < 6  # MJPG is lossy, not wrong
    source = read_image(tmp_path / "raw" / "source/s00_cam0/00002.png", 3)
    assert source[..., 0].mean() > 3 * source[..., 2].mean()  # still a red rig render, RGB order

    step = parse_config({"collect": {"source": "videos", "path": str(root), "video_frame_step": 2}})
    collect.run(step, tmp_path / "raw2")
    assert list(read_table(tmp_path / "raw2" / "manifest.parquet")["frame"]) == [0, 2]


def test_a_killed_run_leaves_no_output_and_the_rerun_completes(tmp_path: Path):
    out = tmp_path / "raw"
    params = tmp_path / "params.yaml"
    params.write_text("collect:\n  twin:\n    subjects: 20\n    cameras: 2\n    frames: 30\n")
    code = (
        "import sys; from pathlib import Path; from nirgan.config import load_config; "
        "from nirgan.stages import collect; collect.run(load_config(sys.argv[1]), Path(sys.argv[2]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(params), str(out)], start_new_session=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".raw.tmp-*/target/*/*.png")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()

    small = parse_config({"collect": {"twin": {"subjects": 2, "cameras": 1, "frames": 4}}})
    collect.run(small, out)
    assert len(read_table(out / "manifest.parquet")) == 8
    assert not list(tmp_path.glob(".raw.tmp-*"))
