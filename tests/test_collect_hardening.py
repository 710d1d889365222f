"""Issue 12, bad input: decompression bombs, links out of the data folder, bad labels tables.

Each case is a real file on disk (a crafted PNG, a symlink, a FIFO, a CSV) and the stage or
the CLI runs on it for real; the measure is no traceback, no silent drop, no opened file
outside ``collect.path``.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nirgan import twin
from nirgan.config import DataError, TwinConfig, parse_config
from nirgan.io import read_image, read_table, write_image
from nirgan.labels import LABELS
from nirgan.stages import collect


def _pairs_folder(root: Path, subjects: int = 2, frames: int = 3) -> list:
    pairs = list(twin.render_dataset(TwinConfig(subjects=subjects, cameras=1, frames=max(frames, 4), seed=3,
                                                disturbance_fraction=0)))
    pairs = [p for p in pairs if p.frame < frames]
    for p in pairs:
        name = f"{p.subject}_{p.camera}/{p.frame:05d}.png"
        write_image(root / "target" / name, p.target)
        write_image(root / "source" / name, p.source)
    return pairs


def _bomb_png(path: Path, side: int = 40000) -> None:
    """A ``side`` x ``side`` 1-bit grey PNG of zeros: about 200 kB on disk, 1.6 Gpx decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _folder_cfg(root: Path, **collect_extra):
    return parse_config({"collect": {"source": "folder", "path": str(root), **collect_extra}})


def _reasons(out: Path) -> dict[str, str]:
    rejects = read_table(out / "rejects.parquet")
    return dict(zip(rejects["path"], rejects["reason"]))


# ------------------------------------------------------------------------ 1. decompression bomb
def test_decompression_bomb_is_rejected_as_too_large_without_decoding(tmp_path: Path):
    root = tmp_path / "in"
    _pairs_folder(root)
    _bomb_png(root / "target/s00_cam0/00001.png")
    assert (root / "target/s00_cam0/00001.png").stat().st_size < 2_000_000
    out = tmp_path / "raw"
    counts = collect.run(_folder_cfg(root), out)
    assert _reasons(out) == {"target/s00_cam0/00001.png": "too_large", "source/s00_cam0/00001.png": "partner_rejected"}
    assert counts["pairs"] == 5


def test_max_pixels_and_downscaling_at_read(tmp_path: Path):
    root = tmp_path / "in"
    pairs = _pairs_folder(root, subjects=2, frames=1)  # 256 x 256 twin frames
    # one pixel under the frame size: every image is too large, which leaves no pair (issue 23)
    out = tmp_path / "raw_small_limit"
    with pytest.raises(DataError, match=r"no usable pair \(4 files rejected: \{'too_large': 4\}\)"):
        collect.run(_folder_cfg(root, max_pixels=256 * 256 - 1), out)
    assert not out.exists()
    # under the limit but over the working side: downscaled at read, the pair stays aligned
    out = tmp_path / "raw_side"
    collect.run(_folder_cfg(root, max_side=128), out)
    manifest = read_table(out / "manifest.parquet")
    assert len(manifest) == 2 and _reasons(out) == {}
    target = read_image(out / manifest.iloc[0]["target_path"], 1)
    source = read_image(out / manifest.iloc[0]["source_path"], 3)
    assert target.shape == (128, 128) and source.shape == (128, 128, 3)
    expected = pairs[0].target.reshape(128, 2, 128, 2).mean(axis=(1, 3))
    assert np.abs(target.astype(float) - expected).mean() < 1.0  # area downscale, not a crop


# ------------------------------------------------------------------------ 2. links leaving the root
def _run_collect_subprocess(root: Path, out: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    params = out.parent / "params.yaml"
    params.write_text(yaml.safe_dump({"collect": {"source": "folder", "path": str(root)}}))
    code = ("import sys; from pathlib import Path; from nirgan.config import load_config; "
            "from nirgan.stages import collect; print(collect.run(load_config(sys.argv[1]), Path(sys.argv[2])))")
    # A FIFO blocks whoever opens it: a timeout here means a file outside the root was opened.
    return subprocess.run([sys.executable, "-c", code, str(params), str(out)], capture_output=True, text=True,
                          timeout=timeout, check=True)


def test_links_out_of_the_root_are_rejected_without_being_opened(tmp_path: Path):
    root = tmp_path / "in"
    pairs = _pairs_folder(root, subjects=2, frames=3)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write_image(outside / "face.png", pairs[0].target)
    os.mkfifo(outside / "pipe.png")
    # s00 frame 0: target links to a valid PNG outside; frame 1: to a FIFO; frame 2: to /etc/passwd
    for frame, dest in ((0, outside / "face.png"), (1, outside / "pipe.png"), (2, Path("/etc/passwd"))):
        link = root / f"target/s00_cam0/{frame:05d}.png"
        link.unlink()
        link.symlink_to(dest)
    # a whole subject folder linked in from outside: each of its files gets its own row
    ext = outside / "s09_cam0"
    for frame in range(3):
        write_image(ext / f"{frame:05d}.png", pairs[frame].target)
    (root / "target/s09_cam0").symlink_to(ext, target_is_directory=True)
    # a link that stays inside the root is an ordinary file
    (root / "spare").mkdir()
    write_image(root / "spare/t.png", pairs[3].target)
    (root / "target/s01_cam0/00001.png").unlink()
    (root / "target/s01_cam0/00001.png").symlink_to(root / "spare/t.png")

    # a FIFO inside the root: a row of its own, and never opened either
    os.mkfifo(root / "source/s01_cam0/00009.png")

    out = tmp_path / "work" / "raw"
    out.parent.mkdir()
    _run_collect_subprocess(root, out)
    reasons = _reasons(out)
    assert reasons.pop("source/s01_cam0/00009.png") == "special_file"
    assert {p: r for p, r in reasons.items() if p.startswith("target/")} == {
        "target/s00_cam0/00000.png": "outside_root",
        "target/s00_cam0/00001.png": "outside_root",
        "target/s00_cam0/00002.png": "outside_root",
        "target/s09_cam0/00000.png": "outside_root",
        "target/s09_cam0/00001.png": "outside_root",
        "target/s09_cam0/00002.png": "outside_root",
    }
    assert {p: r for p, r in reasons.items() if p.startswith("source/")} == {
        f"source/s00_cam0/{f:05d}.png": "partner_rejected" for f in range(3)
    }
    manifest = read_table(out / "manifest.parquet")
    assert sorted(manifest["pair_id"]) == [f"s01_cam0/{f:05d}" for f in range(3)]


# ------------------------------------------------------------------------ 3. labels table
def test_label_rows_with_nan_or_without_a_pair_become_reject_rows(tmp_path: Path):
    root = tmp_path / "in"
    _pairs_folder(root, subjects=2, frames=2)
    table = pd.DataFrame({"pair_id": ["s00_cam0/0", "s00_cam0/1", "s07_cam0/0", "s01_cam0/1"]}
                         | {name: [1.0, np.nan, 2.0, 3.0] for name in LABELS})
    table.to_csv(root / "labels.csv", index=False)
    out = tmp_path / "raw"
    counts = collect.run(_folder_cfg(root, labels="labels.csv"), out)
    rejects = read_table(out / "rejects.parquet")
    got = sorted(zip(rejects["path"], rejects["pair_id"], rejects["reason"]))
    assert got == [
        ("labels.csv:3", "s00_cam0/00001", "label_missing_value"),
        ("labels.csv:4", "s07_cam0/00000", "label_without_pair"),
    ]
    assert counts["label_rows"] == 4 and counts["label_rows_rejected"] == 2
    by_id = read_table(out / "manifest.parquet").set_index("pair_id")
    assert by_id.loc["s00_cam0/00000", "head_yaw"] == 1.0 and by_id.loc["s01_cam0/00001", "gaze_pitch"] == 3.0
    assert by_id.loc[["s00_cam0/00001", "s01_cam0/00000"], list(LABELS)].isna().all().all()


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(collect.__file__).parents[2])}
    return subprocess.run([sys.executable, "-m", "nirgan.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "nirgan" in line]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing_column", ("labels.csv", "gaze_pitch")),
        ("duplicate", ("labels.csv", "row 4", "pair_id", "s00_cam0/00001")),
        ("text", ("labels.csv", "row 2", "head_pitch", "'high'")),
        ("bad_pair_id", ("labels.csv", "row 2", "pair_id", "'nonsense'")),
    ],
)
def test_labels_errors_are_one_line_with_exit_code_2(tmp_path: Path, case: str, fragments: tuple[str, ...]):
    root = tmp_path / "in"
    _pairs_folder(root, subjects=2, frames=2)
    table = pd.DataFrame({"pair_id": ["s00_cam0/0", "s00_cam0/1"]} | {name: [1.0, 2.0] for name in LABELS})
    if case == "missing_column":
        table = table.drop(columns="gaze_pitch")
    elif case == "duplicate":
        table.loc[1, "pair_id"] = "s00_cam0/00001"
        table = pd.concat([table, table.iloc[[1]]])
    elif case == "text":
        table["head_pitch"] = ["high", "2.0"]
    else:
        table.loc[0, "pair_id"] = "nonsense"
    table.to_csv(root / "labels.csv", index=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"collect": {"source": "folder", "path": str(root), "labels": "labels.csv"}}))
    proc = _cli(tmp_path, "stage", "collect")
    _assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "data" / "raw").exists()


def test_a_stage_without_its_input_is_one_line_with_exit_code_2(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("{}\n")
    proc = _cli(tmp_path, "stage", "detect")  # data/raw was never collected
    _assert_one_line_error(proc, "data/raw/manifest.parquet")


def test_large_jpegs_are_decoded_reduced(tmp_path: Path):
    """JPEGs over max_side are decoded at 1/2..1/8 by libjpeg itself, then fitted: grey stays grey."""
    import cv2

    root = tmp_path / "in"
    pair = _pairs_folder(tmp_path / "png", subjects=2, frames=1)[0]
    big_t = cv2.resize(pair.target, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    big_s = cv2.resize(pair.source, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    (root / "target/s00_cam0").mkdir(parents=True)
    (root / "source/s00_cam0").mkdir(parents=True)
    cv2.imwrite(str(root / "target/s00_cam0/00000.jpg"), big_t, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(root / "source/s00_cam0/00000.jpg"), cv2.cvtColor(big_s, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = tmp_path / "raw"
    counts = collect.run(_folder_cfg(root, max_side=200), out)
    assert counts["pairs"] == 1 and counts["downscaled"] == 1
    manifest = read_table(out / "manifest.parquet")
    target = read_image(out / manifest.iloc[0]["target_path"], 1)
    source = read_image(out / manifest.iloc[0]["source_path"], 3)
    assert target.shape == (200, 200) and source.shape == (200, 200, 3)
    small = cv2.resize(pair.target, (200, 200), interpolation=cv2.INTER_AREA)
    assert np.abs(target.astype(float) - small).mean() < 4
    assert source[..., 0].mean() > 2 * source[..., 2].mean()  # still RGB order (a red rig render)
