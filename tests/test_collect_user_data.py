"""The fourth audit of bring-your-own-data (a user's folder, videos and labels table).

Each case is a real file on disk, run through the real stage or CLI. What is measured: the
user's data is never deleted or mis-paired, every input file is kept or in a rejects table
with a reason that names the actual fault, and a table or params mistake is one line, exit 2.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from nirgan import twin
from nirgan.config import DataError, TwinConfig, parse_config
from nirgan.io import read_image, read_table, write_image
from nirgan.stages import clean, collect
from test_collect import _write_video
from test_collect_hardening import _cli


def _pairs(root: Path, subjects: int = 1, frames: int = 3, size: int = 128) -> list:
    cfg = TwinConfig(subjects=max(2, subjects), cameras=1, frames=4, seed=3, width=size, height=size,
                     disturbance_fraction=0)
    pairs = [p for p in twin.render_dataset(cfg) if p.frame < frames and int(p.subject[1:]) < subjects]
    for p in pairs:
        name = f"{p.subject}_{p.camera}/{p.frame:05d}.png"
        write_image(root / "target" / name, p.target)
        write_image(root / "source" / name, p.source)
    return pairs


def _reasons(out: Path) -> list[tuple[str, str, str]]:
    r = read_table(out / "rejects.parquet")
    return sorted(zip(r["path"], r["pair_id"].fillna(""), r["reason"]))


def _files(root: Path) -> int:
    return sum(1 for d in ("target", "source") for p in (root / d).rglob("*") if p.is_file())


def _one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The one ``nirgan:`` line of a command that failed with exit 2 and no traceback (collect's
    progress lines, INFO logs, also name nirgan)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nirgan:")]
    assert (proc.returncode, len(lines), "Traceback" in proc.stderr) == (2, 1, False), proc.stderr
    assert all(f in lines[0] for f in fragments), (fragments, lines[0])
    return lines[0]


# ---------------------------------------------------------------- the user's data is not deleted
@pytest.mark.parametrize("inside", ["data/raw/mine", "data/raw"])
def test_a_data_folder_inside_a_stage_output_is_refused_before_anything_is_deleted(tmp_path: Path, inside: str):
    project = tmp_path / "project"
    project.mkdir()
    (project / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"collect": {"cmd": "nirgan stage collect", "outs": ["data/raw"]}}}))
    _pairs(project / inside, frames=2)
    files = sorted(p for p in (project / inside).rglob("*") if p.is_file())
    (project / "params.yaml").write_text(yaml.safe_dump({"collect": {"source": "folder", "path": inside}}))
    _one_line_error(_cli(project, "check-params"), "collect.path", "output of stage 'collect'")
    _one_line_error(_cli(project, "stage", "collect"), "collect.path", "output of stage 'collect'")
    assert sorted(p for p in (project / inside).rglob("*") if p.is_file()) == files


def test_the_outputs_checked_are_those_of_the_dvc_yaml_beside_the_params_file(tmp_path: Path):
    """``--params project/params.yaml`` from another folder: the outputs check read the working
    directory's dvc.yaml (none here) and passed, and collect's errors said ``params:``."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"collect": {"cmd": "nirgan stage collect", "outs": ["data/raw"]}}}))
    _pairs(project / "data/raw/mine", frames=2)
    mine = str(project / "data/raw/mine")
    (project / "params.yaml").write_text(yaml.safe_dump({"collect": {"source": "folder", "path": mine}}))
    for command in (["check-params"], ["stage", "collect"]):
        _one_line_error(_cli(tmp_path, "--params", "project/params.yaml", *command),
                        "nirgan: project/params.yaml: collect.path", "output of stage 'collect'",
                        "of project/dvc.yaml")
    assert not (tmp_path / "data").exists()
    (project / "params.yaml").write_text(yaml.safe_dump({"collect": {"source": "folder", "path": str(tmp_path / "no")}}))
    _one_line_error(_cli(tmp_path, "--params", "project/params.yaml", "stage", "collect"),
                    "nirgan: project/params.yaml: collect.path", "does not exist")


def test_an_output_inside_the_folders_collect_reads_is_refused(tmp_path: Path):
    project = tmp_path / "project"
    (project / "target").mkdir(parents=True)
    (project / "source").mkdir()
    (project / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"crop": {"cmd": "x", "outs": ["target/crops"]}}}))
    (project / "params.yaml").write_text(yaml.safe_dump({"collect": {"source": "folder", "path": "."}}))
    _one_line_error(_cli(project, "check-params"), "target/crops", "read back as input")


def test_a_data_path_with_the_twin_source_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="collect.path is set but collect.source is 'twin'"):
        parse_config({"collect": {"path": str(tmp_path)}})
    with pytest.raises(ValueError, match="collect.labels is set"):
        parse_config({"collect": {"labels": "labels.csv"}})


def test_a_home_relative_path_says_the_tilde_is_not_expanded(tmp_path: Path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"collect": {"source": "folder", "path": "~/no-such-set"}}))
    _one_line_error(_cli(tmp_path, "check-params"), "does not exist", "~ is not expanded")


# ----------------------------------------------------------------------------- folder pairing
def test_two_files_of_one_frame_are_both_rejected_never_paired(tmp_path: Path):
    root = tmp_path / "in"
    pairs = _pairs(root, frames=3)
    # 001.png is frame 1 again, holding frame 2's image: which one is frame 1 cannot be told
    write_image(root / "target/s00_cam0/001.png", pairs[2].target)
    out = tmp_path / "raw"
    collect.run(parse_config({"collect": {"source": "folder", "path": str(root)}}), out)
    manifest = read_table(out / "manifest.parquet")
    assert list(manifest["pair_id"]) == ["s00_cam0/00000", "s00_cam0/00002"]
    assert _reasons(out) == [
        ("source/s00_cam0/00001.png", "s00_cam0/00001", "partner_rejected"),
        ("target/s00_cam0/00001.png", "s00_cam0/00001", "duplicate_frame"),
        ("target/s00_cam0/001.png", "s00_cam0/00001", "duplicate_frame"),
    ]
    assert 2 * len(manifest) + len(_reasons(out)) == _files(root)


def test_a_name_spelled_composed_in_one_domain_and_decomposed_in_the_other_is_one_recording(tmp_path: Path):
    """``José`` copied from macOS is decomposed (NFD) and its partner written on Linux composed
    (NFC): both were ``unpaired``, and a labels table in either spelling matched only one."""
    import unicodedata

    nfc, nfd = (unicodedata.normalize(form, "José") for form in ("NFC", "NFD"))
    assert nfc != nfd
    root = tmp_path / "in"
    pairs = _pairs(tmp_path / "made", frames=2)
    for p in pairs:
        write_image(root / "target" / f"{nfc}_cam0" / f"{p.frame:05d}.png", p.target)
        write_image(root / "source" / f"{nfd}_cam0" / f"{p.frame:05d}.png", p.source)
    (root / "labels.csv").write_text(HEADER + "".join(f"{nfd}_cam0/{f},1,2,3,4,5,false\n" for f in (0, 1)),
                                     encoding="utf-8")
    out = tmp_path / "raw"
    collect.run(parse_config({"collect": {"source": "folder", "path": str(root), "labels": "labels.csv"}}), out)
    manifest = read_table(out / "manifest.parquet")
    assert list(manifest["pair_id"]) == [f"{nfc}_cam0/00000", f"{nfc}_cam0/00001"]
    assert list(manifest["head_yaw"]) == [1.0, 1.0]
    assert not (out / "rejects.parquet").exists() or read_table(out / "rejects.parquet").empty

    # both spellings in one domain: two files of one frame, neither paired
    write_image(root / "target" / f"{nfd}_cam0" / "00000.png", pairs[0].target)
    collect.run(parse_config({"collect": {"source": "folder", "path": str(root), "labels": "labels.csv"}}),
                tmp_path / "raw2")
    assert list(read_table(tmp_path / "raw2" / "manifest.parquet")["pair_id"]) == [f"{nfc}_cam0/00001"]
    assert sorted(r for *_, r in _reasons(tmp_path / "raw2")) == [
        "duplicate_frame", "duplicate_frame", "label_without_pair", "partner_rejected"]


def test_exif_orientation_is_ignored_at_every_size(tmp_path: Path):
    """A large JPEG used to be decoded reduced, which applies EXIF orientation, and a small one
    as stored: the large pair's target ended up rotated against its source."""
    root = tmp_path / "in"
    pair = _pairs(tmp_path / "png", frames=1)[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    for frame, (w, h) in enumerate(((300, 200), (1200, 800))):
        target = cv2.resize(pair.target, (w, h), interpolation=cv2.INTER_AREA)
        source = cv2.resize(pair.source, (w, h), interpolation=cv2.INTER_AREA)
        (root / "target/s00_cam0").mkdir(parents=True, exist_ok=True)
        Image.fromarray(target).save(root / f"target/s00_cam0/{frame}.jpg", quality=95, exif=exif)
        write_image(root / f"source/s00_cam0/{frame}.png", source)
    out = tmp_path / "raw"
    collect.run(parse_config({"collect": {"source": "folder", "path": str(root), "max_side": 400}}), out)
    manifest = read_table(out / "manifest.parquet")
    assert len(manifest) == 2
    for row in manifest.itertuples():
        target, source = read_image(out / row.target_path, 1), read_image(out / row.source_path, 3)
        assert target.shape == source.shape[:2] and target.shape[1] > target.shape[0], row.pair_id


def test_16_bit_samples_are_read_at_the_configured_bit_depth(tmp_path: Path):
    root = tmp_path / "in"
    pairs = _pairs(root, frames=2)
    for p in pairs:  # a 12-bit NIR camera's samples in 16-bit PNGs
        cv2.imwrite(str(root / f"target/s00_cam0/{p.frame:05d}.png"), p.target.astype(np.uint16) << 4)
    out = tmp_path / "raw"
    collect.run(parse_config({"collect": {"source": "folder", "path": str(root), "bit_depth": 12}}), out)
    manifest = read_table(out / "manifest.parquet")
    assert np.array_equal(read_image(out / manifest.iloc[0]["target_path"], 1), pairs[0].target)

    # read as 16-bit data they would be 0-15 grey levels: rejected, saying why
    with pytest.raises(DataError, match="low_bit_depth"):
        collect.run(parse_config({"collect": {"source": "folder", "path": str(root)}}), tmp_path / "raw16")
    cv2.imwrite(str(root / "target/s00_cam0/00001.png"), np.full((128, 128), 5000, np.uint16))
    collect.run(parse_config({"collect": {"source": "folder", "path": str(root), "bit_depth": 12}}), tmp_path / "r")
    assert ("target/s00_cam0/00001.png", "s00_cam0/00001", "above_bit_depth") in _reasons(tmp_path / "r")


def test_14_bit_samples_at_the_default_bit_depth_stop_collect_instead_of_reading_dark(tmp_path: Path):
    # Each 14-bit frame passes the per-file check (only values below 1/16 of the range are
    # low_bit_depth) and would be read at a quarter of its brightness; the dataset as a whole says
    # what it is, and collect stops naming the fix.
    root = tmp_path / "in"
    pairs = _pairs(root, frames=2)
    for p in pairs:
        cv2.imwrite(str(root / f"target/s00_cam0/{p.frame:05d}.png"), p.target.astype(np.uint16) << 6)
    with pytest.raises(DataError, match=r"collect.bit_depth is 16, but no value in the 2 16-bit image\(s\) reaches "
                                        r"2\^14 .* set collect.bit_depth to the camera's sample depth"):
        collect.run(parse_config({"collect": {"source": "folder", "path": str(root)}}), tmp_path / "raw16")
    assert not (tmp_path / "raw16").exists()
    out = tmp_path / "raw"
    collect.run(parse_config({"collect": {"source": "folder", "path": str(root), "bit_depth": 14}}), out)
    manifest = read_table(out / "manifest.parquet")
    assert np.array_equal(read_image(out / manifest.iloc[0]["target_path"], 1), pairs[0].target)

    # one frame that reaches the top two bits: the data is 16-bit, the dark frames are only dark
    bright = np.full((128, 128), 60000, np.uint16)
    cv2.imwrite(str(root / "target/s00_cam0/00001.png"), bright)
    collect.run(parse_config({"collect": {"source": "folder", "path": str(root)}}), tmp_path / "raw16b")
    assert len(read_table(tmp_path / "raw16b" / "manifest.parquet")) == 2


# ----------------------------------------------------------------------------------- videos
def test_videos_check_channels_duplicates_and_truncation(tmp_path: Path):
    root = tmp_path / "videos"
    pairs = list(twin.render_dataset(TwinConfig(subjects=4, cameras=1, frames=4, width=128, height=128,
                                                disturbance_fraction=0)))
    by = {s: [p for p in pairs if p.subject == s] for s in ("s00", "s01", "s02", "s03")}
    _write_video(root / "target/s00_cam0.avi", [p.target for p in by["s00"]])
    _write_video(root / "source/s00_cam0.avi", [p.source for p in by["s00"]])
    # s01: a colour render under target/ (the folder source rejects it; videos did not)
    _write_video(root / "target/s01_cam0.avi", [p.source for p in by["s01"]])
    _write_video(root / "source/s01_cam0.avi", [p.source for p in by["s01"]])
    # s02: a second recording of the same name, another container
    for ext in (".avi", ".mkv"):
        _write_video(root / f"target/s02_cam0{ext}", [p.target for p in by["s02"]])
        _write_video(root / f"source/s02_cam0{ext}", [p.source for p in by["s02"]])
    # s03: the target cut short mid-file: its header still counts 4 frames
    _write_video(root / "target/s03_cam0.avi", [p.target for p in by["s03"]])
    _write_video(root / "source/s03_cam0.avi", [p.source for p in by["s03"]])
    data = (root / "target/s03_cam0.avi").read_bytes()
    (root / "target/s03_cam0.avi").write_bytes(data[: int(len(data) * 0.6)])

    out = tmp_path / "raw"
    collect.run(parse_config({"collect": {"source": "videos", "path": str(root)}}), out)
    manifest = read_table(out / "manifest.parquet")
    reasons = _reasons(out)
    assert set(manifest["subject"]) == {"s00", "s03"}
    assert [r for r in reasons if r[0].startswith("target/s01")] == [
        ("target/s01_cam0.avi", f"s01_cam0/{i:05d}", "wrong_channels") for i in range(4)]
    assert sorted(r[0] for r in reasons if r[2] == "duplicate_recording") == [
        f"{d}/s02_cam0{ext}" for d in ("source", "target") for ext in (".avi", ".mkv")]
    kept_s03 = int((manifest["subject"] == "s03").sum())
    assert ("target/s03_cam0.avi", "", "truncated_video") in reasons
    assert [r[2] for r in reasons if r[0] == "source/s03_cam0.avi"] == ["partner_truncated"] * (4 - kept_s03)


# ------------------------------------------------------------------------------ labels tables
def _labels_case(tmp_path: Path, csv_text: str) -> subprocess.CompletedProcess:
    root = tmp_path / "in"
    _pairs(root, frames=2)
    (root / "labels.csv").write_text(csv_text)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"collect": {"source": "folder", "path": str(root), "labels": "labels.csv"}}))
    return _cli(tmp_path, "stage", "collect")


HEADER = "pair_id,head_yaw,head_pitch,head_roll,gaze_yaw,gaze_pitch,glasses\n"


def test_a_field_too_many_in_every_row_is_an_error_not_a_shift(tmp_path: Path):
    # pandas took the first field as the index and read every label one column to the left
    proc = _labels_case(tmp_path, HEADER + "s00_cam0/0,1,2,3,4,5,true,9\ns00_cam0/1,1,2,3,4,5,false,9\n")
    _one_line_error(proc, "labels.csv, row 2", "more fields than the header")


def test_a_true_false_label_column_is_not_degrees(tmp_path: Path):
    proc = _labels_case(tmp_path, HEADER + "s00_cam0/0,true,2,3,4,5,true\ns00_cam0/1,false,2,3,4,5,false\n")
    _one_line_error(proc, "labels.csv, row 2, head_yaw True", "not a number")


def test_a_bad_glasses_value_is_named_at_its_own_row(tmp_path: Path):
    proc = _labels_case(tmp_path, HEADER + "s00_cam0/0,1,2,3,4,5,0\ns00_cam0/1,1,2,3,4,5,2\n")
    line = _one_line_error(proc, "labels.csv, row 3, glasses 2", "not true/false")
    assert "np." not in line


# ------------------------------------------------------------------------------------ clean
def test_sources_without_the_eye_colour_code_stop_clean_saying_so(tmp_path: Path):
    crops = tmp_path / "crops"
    rows = []
    rng = np.random.default_rng(0)
    for i in range(6):
        grey = rng.integers(60, 200, (64, 64), dtype=np.uint8)
        write_image(crops / f"target/a_cam0/{i:05d}.png", grey)
        write_image(crops / f"source/a_cam0/{i:05d}.png", np.repeat(grey[..., None], 3, axis=2))
        rows.append({"pair_id": f"a_cam0/{i:05d}", "subject": "a", "camera": "cam0",
                     "source_path": f"source/a_cam0/{i:05d}.png", "target_path": f"target/a_cam0/{i:05d}.png",
                     "lm_left_eye_x": 20.0, "lm_left_eye_y": 25.0, "lm_right_eye_x": 44.0, "lm_right_eye_y": 25.0})
    pd.DataFrame(rows).to_parquet(crops / "manifest.parquet")
    with pytest.raises(DataError, match="eye colour code.*clean.misalignment: false"):
        clean.run(parse_config({}), crops, tmp_path / "clean")
    assert not (tmp_path / "clean").exists()
    counts = clean.run(parse_config({"clean": {"misalignment": False}}), crops, tmp_path / "clean")
    assert counts["kept"] == 6


def test_a_table_naming_no_kept_pair_is_an_error_not_a_warning(tmp_path: Path):
    # ids spelled with the domain folder: every label used to be dropped, with exit 0
    proc = _labels_case(tmp_path, HEADER + "target/s00_cam0/0.png,1,2,3,4,5,true\n"
                                           "target/s00_cam0/1.png,1,2,3,4,5,false\n")
    _one_line_error(proc, "labels.csv", "none of its 2 usable rows names a kept pair", "'s00_cam0/00000'")


def test_a_latin1_table_says_to_save_it_as_utf8(tmp_path: Path):
    root = tmp_path / "in"
    _pairs(root, frames=1)
    (root / "labels.csv").write_bytes((HEADER + "s00_cam0/0,1,2,3,4,5,true\n").replace("glasses", "glässes")
                                      .encode("latin-1"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"collect": {"source": "folder", "path": str(root), "labels": "labels.csv"}}))
    _one_line_error(_cli(tmp_path, "stage", "collect"), "labels.csv", "save it as UTF-8")


def test_a_header_only_table_is_an_error(tmp_path: Path):
    # it used to warn that every pair had no labels "(see rejects.parquet)", where nothing was
    _one_line_error(_labels_case(tmp_path, HEADER), "labels.csv", "a header and no rows")
