"""The expression family's own data (collect.source fer2013 and label_folders), audited as a user
brings it: each case a real file through the real collect stage. What is measured: a label is
never silently split into two spellings or given to an image that also carries another, a
FER2013 split and rows are not lost to a column's case or one stray quote, malformed numbers are
rejected with their reason, and an empty table says so."""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nirgan.config import DataError, parse_config
from nirgan.expression.stages import collect
from nirgan.io import write_image
from test_expression_data import _faces, _pixels


def _cfg(collect_cfg: dict):
    return parse_config({"task": "expression", "collect": collect_cfg})


def _rejects(out: Path) -> dict[str, str]:
    r = pd.read_parquet(out / "rejects.parquet")
    return dict(zip(r["path"], r["reason"]))


def _fer(tmp_path: Path, lines: list[str], name: str = "fer.csv") -> Path:
    csv = tmp_path / name
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv


# ------------------------------------------------------------------------------- label folders
def test_label_folders_spelled_two_ways_stop_collect_naming_them(tmp_path: Path):
    faces = _faces(3)
    for folder, face in zip(("Happy", "happy", "sad"), faces):
        write_image(tmp_path / "in" / folder / "a.png", face)
    with pytest.raises(DataError, match=r"label folders differ only in case or spaces.*'Happy', 'happy'"):
        collect.run(_cfg({"source": "label_folders", "path": str(tmp_path / "in")}), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_names_are_read_composed_so_both_spellings_are_one_label_and_one_file(tmp_path: Path):
    nfc, nfd = (unicodedata.normalize(form, "überrascht") for form in ("NFC", "NFD"))
    cafe_nfc, cafe_nfd = (unicodedata.normalize(form, "café") for form in ("NFC", "NFD"))
    faces = _faces(4)
    write_image(tmp_path / "in" / nfc / "a.png", faces[0])
    write_image(tmp_path / "in" / nfd / "b.png", faces[1])
    write_image(tmp_path / "in" / "happy" / f"{cafe_nfc}.png", faces[2])
    write_image(tmp_path / "in" / "happy" / f"{cafe_nfd}.png", faces[3])
    collect.run(_cfg({"source": "label_folders", "path": str(tmp_path / "in")}), tmp_path / "raw")
    raw = pd.read_parquet(tmp_path / "raw" / "manifest.parquet")
    assert sorted(set(raw["label"])) == ["happy", nfc]  # one überrascht, not two that print alike
    assert (raw["label"] == nfc).sum() == 2
    assert list(_rejects(tmp_path / "raw").values()) == ["duplicate_sample"]  # which café cannot be told


def test_14_bit_photos_at_the_default_bit_depth_stop_collect_instead_of_reading_dark(tmp_path: Path):
    import cv2

    faces = _faces(2)
    for folder, face in zip(("happy", "sad"), faces):
        (tmp_path / "in" / folder).mkdir(parents=True)
        grey = face if face.ndim == 2 else cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
        cv2.imwrite(str(tmp_path / "in" / folder / "a.png"), grey.astype(np.uint16) << 6)
    with pytest.raises(DataError, match=r"collect.bit_depth is 16, but no value in the 2 16-bit image"):
        collect.run(_cfg({"source": "label_folders", "path": str(tmp_path / "in")}), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    collect.run(_cfg({"source": "label_folders", "path": str(tmp_path / "in"), "bit_depth": 14}), tmp_path / "raw")
    assert len(pd.read_parquet(tmp_path / "raw" / "manifest.parquet")) == 2


def test_one_image_under_two_labels_is_rejected_under_both(tmp_path: Path):
    faces = _faces(3)
    for folder, name, face in (("happy", "a", faces[0]), ("happy", "b", faces[1]), ("sad", "c", faces[2])):
        write_image(tmp_path / "in" / folder / f"{name}.png", face)
    shutil.copyfile(tmp_path / "in" / "happy" / "a.png", tmp_path / "in" / "sad" / "a_again.png")
    shutil.copyfile(tmp_path / "in" / "happy" / "b.png", tmp_path / "in" / "happy" / "b_copy.png")
    collect.run(_cfg({"source": "label_folders", "path": str(tmp_path / "in")}), tmp_path / "raw")
    raw = pd.read_parquet(tmp_path / "raw" / "manifest.parquet")
    assert sorted(raw["sample_id"]) == ["happy/b", "happy/b_copy", "sad/c"]  # a copy under one label stays
    assert _rejects(tmp_path / "raw") == {"happy/a.png": "conflicting_labels", "sad/a_again.png": "conflicting_labels"}
    assert sorted(p.name for p in (tmp_path / "raw" / "images").rglob("*.png")) == ["b.png", "b_copy.png", "c.png"]


# ---------------------------------------------------------------------------------- FER2013
def test_a_lower_case_usage_column_still_decides_the_split(tmp_path: Path):
    rng = np.random.default_rng(0)
    csv = _fer(tmp_path, ["emotion,pixels,usage", f"0,{_pixels(rng)},Training", f"1,{_pixels(rng)},PublicTest"])
    collect.run(_cfg({"source": "fer2013", "path": str(csv)}), tmp_path / "raw")
    raw = pd.read_parquet(tmp_path / "raw" / "manifest.parquet")
    assert list(raw["usage"]) == ["Training", "PublicTest"]


def test_a_column_given_twice_is_one_clear_error(tmp_path: Path):
    rng = np.random.default_rng(0)
    csv = _fer(tmp_path, ["emotion,pixels,Emotion", f"0,{_pixels(rng)},5"])
    with pytest.raises(DataError, match=r"fer.csv: FER2013 CSV has two emotion columns \('emotion', column 1, "
                                        r"and 'Emotion', column 3\)"):
        collect.run(_cfg({"source": "fer2013", "path": str(csv)}), tmp_path / "raw")


def test_a_stray_quote_costs_its_own_line_only(tmp_path: Path):
    """Read as CSV, the quote swallowed every line up to the next quote (or to the end: 'field
    larger than field limit' stopped the stage), under one wrong reason."""
    rng = np.random.default_rng(0)
    lines = ["emotion,pixels,Usage", f"0,{_pixels(rng)},Training", f'4,{_pixels(rng)},"Training',
             *(f"{k % 7},{_pixels(rng)},Training" for k in range(20)), ""]
    csv = _fer(tmp_path, lines)
    counts = collect.run(_cfg({"source": "fer2013", "path": str(csv)}), tmp_path / "raw")
    assert counts["images"] == 21
    assert _rejects(tmp_path / "raw") == {"fer.csv:3": "unbalanced_quote"}  # and no row for the blank line


@pytest.mark.parametrize("emotion, pixel, reason", [
    ("0_3", "7", "label_not_a_number"), ("\u0663", "7", "label_not_a_number"),
    ("3", "1_0", "pixels_not_numeric"), ("3", "\u0663", "pixels_not_numeric"), ("-1", "7", "unknown_label"),
])
def test_numbers_are_ascii_digits(tmp_path: Path, emotion: str, pixel: str, reason: str):
    """int() reads "1_0" as 10 and Arabic-Indic digits as numbers: such rows were kept."""
    rng = np.random.default_rng(0)
    row = f"{emotion},{_pixels(rng, 2303)} {pixel}"
    csv = _fer(tmp_path, ["emotion,pixels", f"0,{_pixels(rng)}", row])
    collect.run(_cfg({"source": "fer2013", "path": str(csv)}), tmp_path / "raw")
    assert _rejects(tmp_path / "raw") == {"fer.csv:3": reason}


@pytest.mark.parametrize("text, says", [("", "is empty"), ("emotion,pixels,Usage\n\n", "a header and no data rows")])
def test_an_empty_table_says_so(tmp_path: Path, text: str, says: str):
    (tmp_path / "fer.csv").write_text(text)
    with pytest.raises(DataError, match=says):
        collect.run(_cfg({"source": "fer2013", "path": str(tmp_path / "fer.csv")}), tmp_path / "raw")


def test_one_image_under_two_emotions_is_rejected_on_both_lines(tmp_path: Path):
    rng = np.random.default_rng(0)
    same = _pixels(rng)
    csv = _fer(tmp_path, ["emotion,pixels", f"0,{same}", f"1,{_pixels(rng)}", f"5,{same}", f"2,{_pixels(rng)}",
                          f"2,{_pixels(rng)}"])
    collect.run(_cfg({"source": "fer2013", "path": str(csv)}), tmp_path / "raw")
    assert _rejects(tmp_path / "raw") == {"fer.csv:2": "conflicting_labels", "fer.csv:4": "conflicting_labels"}
    assert len(pd.read_parquet(tmp_path / "raw" / "manifest.parquet")) == 3


# ---------------------------------------------------------------------------------- params
@pytest.mark.parametrize("label_map, says", [
    (["", "ok"], "'' is not a label name"), (["happy ", "sad"], "'happy ' is not a label name"),
    (["a/b", "c"], "'a/b' is not a label name"), (["Happy", "happy"], "'Happy' and 'happy' name one label twice"),
])
def test_label_map_names_are_label_names(label_map: list[str], says: str):
    with pytest.raises(ValueError, match=f"collect.label_map: {says}"):
        _cfg({"source": "fer2013", "path": "faces.csv", "label_map": label_map})


def test_a_setting_the_source_does_not_read_is_refused():
    """Both were ignored without a word: the run went on as if they were not there."""
    with pytest.raises(ValueError, match="collect.label_map is set but collect.source is 'label_folders'"):
        _cfg({"source": "label_folders", "path": "faces", "label_map": ["a", "b"]})
    with pytest.raises(ValueError, match="collect.labels is set but collect.source is 'fer2013'"):
        _cfg({"source": "fer2013", "path": "faces.csv", "labels": "subjects.csv"})
