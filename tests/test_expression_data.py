"""Expression data (issue 13) through the real stages: collect (expression twin, folder per
label, FER2013 CSV) -> detect (real MTCNN, or the pre-cropped pass-through) -> clean -> augment
-> split, and the loader. Plus the rig: the expression controls leave NIR renders byte-identical
and render seven expressions a classifier tells apart on held-out subjects."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from nirgan import twin
from nirgan.expression import twin as twin_expression
from nirgan.config import ConfigError, DataError, ExpressionTwinConfig, TwinConfig, parse_config
from nirgan.expression.data import load_expression_split
from nirgan.expression.stages import augment, clean, collect, detect, split

STAGES = ("raw", "crops", "clean", "prepared", "split")


def _cfg(collect_cfg: dict, **sections) -> object:
    return parse_config({"task": "expression", "collect": collect_cfg, "detect": {"device": "cpu", "crop_size": 96},
                         "augment": {"image_size": 64}, **sections})


def _run_all(cfg, root: Path) -> dict[str, dict]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # MTCNN's small convs on a shared 2-core machine
    try:
        return dict(
            collect=collect.run(cfg, out_dir=root / "raw"),
            detect=detect.run(cfg, raw_dir=root / "raw", out_dir=root / "crops"),
            clean=clean.run(cfg, crops_dir=root / "crops", out_dir=root / "clean"),
            augment=augment.run(cfg, crops_dir=root / "crops", clean_dir=root / "clean", out_dir=root / "prepared"),
            split=split.run(cfg, prepared_dir=root / "prepared", out_dir=root / "split"),
        )
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------- the rig
# The twin's bytes (NIR and expression renders) are pinned across CPUs in test_twin_repro.py.


def test_every_expression_changes_the_face_more_than_camera_noise_does():
    """Same subject, pose and camera: each pair of expressions differs in the face far more than
    two noise draws of one expression, and neutral is the rig's own face."""
    tcfg = TwinConfig(subjects=2, width=128, height=128)
    subj, cam = twin.make_subjects(tcfg)[1], twin.make_cameras(tcfg)[0]
    pose = twin.Pose(10.0, -5.0, 4.0, 0.0, 0.0, 64.0, 66.0, 0.225 * 128)
    view = twin._View(pose, 128, 128)

    def face(expr: twin.Expression, seed: int) -> np.ndarray:
        img = twin._camera(twin.render_target(view, subj, cam, 128, 128, expr), cam, np.random.default_rng(seed))
        return img[30:110, 24:104].astype(np.float64)

    assert np.array_equal(face(twin_expression.PRESETS["neutral"], 0), face(twin.NEUTRAL, 0))
    faces = {name: face(expr, 0) for name, expr in twin_expression.PRESETS.items()}
    noise = np.abs(face(twin.NEUTRAL, 1) - faces["neutral"]).mean()
    names = sorted(faces)
    gaps = {(a, b): np.abs(faces[a] - faces[b]).mean() for i, a in enumerate(names) for b in names[i + 1 :]}
    smallest = min(gaps, key=gaps.get)
    assert len(gaps) == 21 and gaps[smallest] > 0.3 * noise, (smallest, gaps[smallest], noise)
    # the noise of two draws is the same everywhere; an expression's change is in a few places
    assert all(np.abs(faces[a] - faces[b]).max() > 60 for a, b in gaps), "some expressions differ only by noise"


@pytest.fixture(scope="module")
def twin_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A small expression twin (8 subjects x 7 expressions x 6 frames) through every stage."""
    root = tmp_path_factory.mktemp("expression_twin")
    cfg = _cfg({"source": "expression_twin",
                "expression_twin": {"subjects": 8, "frames_per_expression": 6}},
               detect={"device": "cpu", "crop_size": 96, "margin": 0.1, "min_side": 128},
               split={"test_fraction": 0.25})
    return root, _run_all(cfg, root)


def _features(images: np.ndarray) -> torch.Tensor:
    x = np.stack([cv2.resize(i, (16, 16), interpolation=cv2.INTER_AREA) for i in images]).astype(np.float32)
    x = (x - x.mean(axis=(1, 2), keepdims=True)) / (x.std(axis=(1, 2), keepdims=True) + 1e-6)
    gx, gy = np.abs(np.diff(x, axis=2))[:, :-1], np.abs(np.diff(x, axis=1))[:, :, :-1]
    return torch.from_numpy(np.concatenate([a.reshape(len(x), -1) for a in (x, gx, gy)], axis=1))


def _linear_accuracy(train_x, train_y, test_x, test_y, n_labels: int) -> float:
    """Held-out accuracy of an L2-regularised softmax regression on pixels and gradients."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-3
    xtr, xte = (train_x - mu) / sd, (test_x - mu) / sd
    w = torch.zeros(xtr.shape[1], n_labels, requires_grad=True)
    b = torch.zeros(n_labels, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100)
    ytr = torch.from_numpy(train_y)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + 1e-2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float(((xte @ w + b).argmax(1).numpy() == test_y).mean())


def test_expression_twin_pipeline_gives_seven_classes_a_classifier_learns(twin_data):
    root, counts = twin_data
    assert counts["collect"] == dict(images=336, rejected=0, labels=7, subjects=8)
    assert counts["detect"]["kept"] + counts["detect"]["rejected"] == 336 and counts["detect"]["kept"] >= 325
    data = load_expression_split(root / "prepared", root / "split")
    assert data.names == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    assert data.train_images.shape[1:] == (64, 64) and data.train_images.dtype == np.uint8
    assert not set(data.train_subjects) & set(data.test_subjects)
    xtr = _features(np.concatenate([data.train_images, data.train_images[:, :, ::-1]]))
    ytr = np.concatenate([data.train_labels] * 2)
    xte = _features(data.test_images)
    accuracy = _linear_accuracy(xtr, ytr, xte, data.test_labels, 7)
    # Six training subjects are few for 7 classes under the twin's pose range: a linear model on
    # 16 x 16 pixels and gradients reaches 0.68 here (0.95 on the default 12-subject set at 32 x 32).
    # The control: the same classifier on shuffled training labels is near chance (1/7).
    shuffled = _linear_accuracy(xtr, np.random.default_rng(0).permutation(ytr), xte, data.test_labels, 7)
    assert accuracy >= 0.5 and shuffled < 0.3, (accuracy, shuffled)  # measured: 0.68 and 0.14


def test_prepared_files_follow_the_contract(twin_data):
    root, _ = twin_data
    manifest = pd.read_parquet(root / "prepared" / "manifest.parquet")
    images = np.load(root / "prepared" / "images.npy")
    labels = json.loads((root / "prepared" / "labels.json").read_text())
    assert images.shape == (len(manifest), 64, 64) and images.dtype == np.uint8
    assert {"sample_id", "subject", "label", "label_index", "index"} <= set(manifest.columns)
    assert manifest["index"].tolist() == list(range(len(manifest)))
    assert [labels["names"][i] for i in manifest["label_index"]] == manifest["label"].tolist()
    assert sum(labels["counts"].values()) == len(manifest)
    train, test = (pd.read_parquet(root / "split" / f"{p}.parquet") for p in ("train", "test"))
    assert sorted([*train["sample_id"], *test["sample_id"]]) == sorted(manifest["sample_id"])
    raw = pd.read_parquet(root / "raw" / "manifest.parquet")
    crops_rejects = pd.read_parquet(root / "crops" / "rejects.parquet")
    outliers = pd.read_parquet(root / "clean" / "outliers.parquet")
    # every raw image is prepared, rejected by detect or an outlier of clean
    assert len(raw) == len(manifest) + len(crops_rejects) + outliers["sample_id"].nunique()


# ------------------------------------------------------------------------------- FER2013
def _pixels(rng: np.random.Generator, n: int = 2304) -> str:
    return " ".join(str(v) for v in rng.integers(0, 256, n))


def test_fer2013_bad_rows_become_rejects_with_reasons_and_usage_decides_the_split(tmp_path):
    rng = np.random.default_rng(0)
    good = [f"{k % 7},{_pixels(rng)},{usage}" for k, usage in
            enumerate(["Training"] * 6 + ["PublicTest", "PrivateTest", "PrivateTest"])]
    bad = {
        "wrong_pixel_count": f"3,{_pixels(rng, 2000)},Training",
        "unknown_label": f"9,{_pixels(rng)},Training",
        "label_missing_value": f"NaN,{_pixels(rng)},Training",
        "label_not_a_number": f"happy,{_pixels(rng)},Training",
        "pixels_missing_value": "2,,Training",
        "pixels_not_numeric": f"2,{_pixels(rng, 2303)} nan,Training",
        "pixel_out_of_range": f"2,{_pixels(rng, 2303)} 256,Training",
        "unknown_usage": f"2,{_pixels(rng)},Validation",
        "wrong_field_count": f"2,{_pixels(rng)}",
    }
    lines = ["emotion,pixels,Usage", *good[:4], *bad.values(), *good[4:]]
    csv = tmp_path / "fer2013.csv"
    csv.write_text("\n".join(lines) + "\n")
    cfg = _cfg({"source": "fer2013", "path": str(csv)},
               detect={"device": "cpu", "crop_size": 48, "pre_cropped": True}, split={"test_fraction": 0.5})
    counts = _run_all(cfg, tmp_path)

    rejects = pd.read_parquet(tmp_path / "raw" / "rejects.parquet")
    expected = {f"fer2013.csv:{6 + i}": reason for i, reason in enumerate(bad)}  # header line 1, 4 good rows
    assert dict(zip(rejects["path"], rejects["reason"])) == expected
    raw = pd.read_parquet(tmp_path / "raw" / "manifest.parquet")
    assert len(raw) + len(rejects) == len(lines) - 1 and counts["collect"]["images"] == len(good)
    # FER2013's integers named by its own order; the pixels are the CSV's, row-major
    first = raw.iloc[0]
    assert first["label"] == "angry" and first["usage"] == "Training"
    values = np.array(good[0].split(",")[1].split(), dtype=np.uint8).reshape(48, 48)
    assert np.array_equal(cv2.imread(str(tmp_path / "raw" / first["image_path"]), cv2.IMREAD_UNCHANGED), values)
    # pre-cropped: detect passes every image through, nothing detected, nothing lost
    crops = pd.read_parquet(tmp_path / "crops" / "manifest.parquet")
    assert len(crops) == len(good) and crops["probability"].isna().all() and (crops["n_faces"] == 0).all()
    data = load_expression_split(tmp_path / "prepared", tmp_path / "split")
    names = json.loads((tmp_path / "prepared" / "labels.json").read_text())["names"]
    assert list(data.names) == names == sorted({"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"})
    train = pd.read_parquet(tmp_path / "split" / "train.parquet")
    test = pd.read_parquet(tmp_path / "split" / "test.parquet")
    assert set(train["usage"]) == {"Training"} and set(test["usage"]) == {"PublicTest", "PrivateTest"}
    assert len(data.train_labels) == 6 and len(data.test_labels) == 3


def test_fer2013_without_its_columns_is_one_clear_error(tmp_path):
    csv = tmp_path / "faces.csv"
    csv.write_text("label,pixels\n1,2 3\n")
    with pytest.raises(DataError, match=r"faces.csv: FER2013 CSV lacks column\(s\) emotion"):
        collect.run(_cfg({"source": "fer2013", "path": str(csv)}), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_label_map_names_the_integers(tmp_path):
    rng = np.random.default_rng(1)
    csv = tmp_path / "two.csv"
    csv.write_text("emotion,pixels\n" + "\n".join(f"{k % 2},{_pixels(rng)}" for k in range(4)) + "\n2," + _pixels(rng) + "\n")
    collect.run(_cfg({"source": "fer2013", "path": str(csv), "label_map": ["calm", "drowsy"]}), tmp_path / "raw")
    raw = pd.read_parquet(tmp_path / "raw" / "manifest.parquet")
    assert sorted(set(raw["label"])) == ["calm", "drowsy"] and set(raw["usage"]) == {""}
    rejects = pd.read_parquet(tmp_path / "raw" / "rejects.parquet")
    assert rejects[["path", "reason"]].values.tolist() == [["two.csv:6", "unknown_label"]]


# --------------------------------------------------------------------------- label folders
def _faces(n: int) -> list[np.ndarray]:
    cfg = ExpressionTwinConfig(subjects=n, frames_per_expression=1, expressions=("neutral", "happy"))
    return [f.image for f in twin_expression.render_expressions(cfg) if f.expression == "neutral"]


def test_label_folders_take_names_from_the_data_and_split_by_subject(tmp_path):
    """A set with "contempt" and no "neutral", colour and small images, bad files and a subject table."""
    root = tmp_path / "faces"
    faces = _faces(18)  # one face per file: one image under two labels is rejected (conflicting_labels)
    table = []
    for k in range(18):
        label = ("contempt", "happy", "sad")[k % 3]
        face = faces[k]
        (root / label).mkdir(parents=True, exist_ok=True)
        if k % 4 == 1:  # a colour JPEG (tinted: R, G and B differ) becomes grey
            tinted = np.stack([face, np.clip(face * 0.9, 0, 255), np.clip(face * 1.1, 0, 255)], -1).astype(np.uint8)
            name = f"{label}/img{k:02d}.jpg"
            cv2.imwrite(str(root / name), tinted)
        elif k % 4 == 2:  # small: upscaled before MTCNN
            name = f"{label}/img{k:02d}.png"
            cv2.imwrite(str(root / name), cv2.resize(face, (64, 64), interpolation=cv2.INTER_AREA))
        else:
            name = f"{label}/img{k:02d}.png"
            cv2.imwrite(str(root / name), face)
        if k < 15:  # the last three files are not in the table; row 6 (k = 4) has no subject
            table.append((name, f"p{k // 3}" if k != 4 else None))
    table.append(("happy/missing.png", "p9"))  # row 17: no such file
    pd.DataFrame(table, columns=["file", "subject"]).to_csv(root / "subjects.csv", index=False)
    (root / "notes.md").write_text("where these faces come from")
    (root / "happy" / "empty.png").write_bytes(b"")
    (root / "sad" / "notes.txt").write_text("not a face")
    (root / "sad" / "fake.png").write_text("not a png either")
    (root / "happy" / "deep").mkdir()
    cv2.imwrite(str(root / "happy" / "deep" / "x.png"), faces[0])

    cfg = _cfg({"source": "label_folders", "path": str(root), "labels": "subjects.csv"},
               split={"test_fraction": 0.34, "seed": 1})
    counts = _run_all(cfg, tmp_path)

    rejects = pd.read_parquet(tmp_path / "raw" / "rejects.parquet")
    reasons = dict(zip(rejects["path"], rejects["reason"]))
    assert reasons == {
        "happy/empty.png": "zero_byte", "sad/notes.txt": "unsupported_file", "sad/fake.png": "not_an_image",
        "happy/deep/x.png": "unexpected_location", "notes.md": "unexpected_location",
        "subjects.csv:6": "subject_missing_value", "subjects.csv:17": "subject_without_image",
    }
    raw = pd.read_parquet(tmp_path / "raw" / "manifest.parquet")
    assert len(raw) == 18 and counts["collect"]["labels"] == 3
    assert set(raw.loc[raw["subject"] == "", "sample_id"]) == {"happy/img04", "contempt/img15", "happy/img16", "sad/img17"}
    grey = cv2.imread(str(tmp_path / "raw" / "images" / "happy" / "img01.png"), cv2.IMREAD_UNCHANGED)
    assert grey.ndim == 2
    crops = pd.read_parquet(tmp_path / "crops" / "manifest.parquet")
    assert len(crops) == 18, pd.read_parquet(tmp_path / "crops" / "rejects.parquet")
    assert set(crops.loc[crops["sample_id"].str.endswith(("02", "06", "10", "14")), "upscale"]) == {2.5}  # to min_side 160

    data = load_expression_split(tmp_path / "prepared", tmp_path / "split")
    assert data.names == ("contempt", "happy", "sad")
    known_train = set(data.train_subjects) - {""}
    known_test = set(data.test_subjects) - {""}
    assert known_train and known_test and not known_train & known_test
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["decided"] == {"by_usage": 0, "by_subject": 14, "at_random": 4}
    assert summary["subjects_in_both"] == []


def test_a_subject_table_without_its_columns_is_one_clear_error(tmp_path):
    root = tmp_path / "faces"
    (root / "happy").mkdir(parents=True)
    cv2.imwrite(str(root / "happy" / "a.png"), _faces(2)[0])
    pd.DataFrame({"image": ["happy/a.png"], "subject": ["x"]}).to_csv(tmp_path / "subjects.csv", index=False)
    with pytest.raises(DataError, match="subject table lacks column"):
        collect.run(_cfg({"source": "label_folders", "path": str(root), "labels": str(tmp_path / "subjects.csv")}),
                    tmp_path / "raw")


def test_task_and_source_must_agree():
    with pytest.raises(ConfigError, match="does not suit task"):
        parse_config({"task": "expression", "collect": {"source": "twin"}})
    with pytest.raises(ConfigError, match="does not suit task"):
        parse_config({"collect": {"source": "expression_twin"}})
    with pytest.raises(ConfigError, match="unknown expression"):
        parse_config({"task": "expression", "collect": {"source": "expression_twin",
                                                        "expression_twin": {"expressions": ["happy", "bored"]}}})


# --------------------------------------------------------------------- the two families
def test_a_stage_refuses_the_other_familys_params(tmp_path: Path):
    """The data stages are one module per family; run against the other family's params file, a
    stage stops with the key named before it reads or writes anything (the data would be read
    as the wrong kind and fail far from the cause)."""
    from nirgan.stages import augment as nir_augment
    from nirgan.stages import collect as nir_collect
    from nirgan.stages import detect as nir_detect

    expression_cfg = _cfg({"source": "expression_twin"})
    nir_cfg = parse_config({})
    for run in (lambda: nir_detect.run(expression_cfg, raw_dir=tmp_path / "raw", out_dir=tmp_path / "crops"),
                lambda: nir_augment.run(expression_cfg, crops_dir=tmp_path, clean_dir=tmp_path,
                                        out_dir=tmp_path / "prepared")):
        with pytest.raises(ConfigError, match=r"task: 'expression'.*nirgan stage \w+_expression"):
            run()
    with pytest.raises(ConfigError, match="collect.source: 'expression_twin'.*collect_expression"):
        nir_collect.run(expression_cfg, tmp_path / "raw")
    with pytest.raises(ConfigError, match="task: 'nir'.*nirgan stage split"):
        split.run(nir_cfg, prepared_dir=tmp_path, out_dir=tmp_path / "split")
    with pytest.raises(ConfigError, match="collect.source: 'twin' is a NIR source"):
        collect.run(nir_cfg, tmp_path / "raw")
    assert not any(tmp_path.iterdir()), "a refused stage wrote something"
