"""Stage detect: the batched MTCNN against facenet-pytorch, and the stage on real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from nirgan import io, twin
from nirgan.config import Config, TwinConfig, parse_config
from nirgan.detection import mtcnn
from nirgan.detection.policy import BOX_COLUMNS, LANDMARK_COLUMNS, choose_faces
from nirgan.stages import detect


@pytest.fixture(scope="module")
def clean_frames() -> np.ndarray:
    """80 clean twin NIR frames (256x256): 10 subjects x 2 cameras x 4 frames."""
    cfg = TwinConfig(subjects=10, cameras=2, frames=4, seed=7, disturbance_fraction=0.0)
    return np.stack([p.target for p in twin.render_dataset(cfg)])


def test_fast_mtcnn_matches_facenet_and_finds_clean_faces(clean_frames):
    from facenet_pytorch import MTCNN

    cfg = Config().detect
    fast = mtcnn.FastMTCNN("cpu", min_face_size=cfg.min_face_size)
    faces = fast(torch.from_numpy(clean_frames))
    choices = choose_faces(faces, len(clean_frames), cfg)
    found = np.array([c.reason is None for c in choices])
    assert found.mean() >= 0.99, [c.reason for c in choices if c.reason]

    # Same boxes, probabilities and landmarks as facenet-pytorch's own MTCNN, frame by frame.
    plain = MTCNN(min_face_size=cfg.min_face_size, select_largest=False, device="cpu")
    for i in range(0, len(clean_frames), 10):
        boxes, probs, points = plain.detect(cv2.cvtColor(clean_frames[i], cv2.COLOR_GRAY2RGB), landmarks=True)
        mine = faces.frame == i
        assert mine.sum() == len(boxes)
        order = np.argsort(-np.asarray(probs, dtype=float))
        np.testing.assert_allclose(faces.boxes[mine], np.asarray(boxes, dtype=float)[order], atol=1e-2)
        np.testing.assert_allclose(faces.probability[mine], np.asarray(probs, dtype=float)[order], atol=1e-4)
        np.testing.assert_allclose(faces.landmarks[mine], np.asarray(points, dtype=float)[order], atol=1e-2)


def test_min_nms_keeps_the_best_of_overlapping_boxes_per_frame():
    rows = [
        # frame, x0, y0, x1, y1, prob, 10 landmark coordinates
        [0, 10, 10, 50, 50, 0.95] + [0] * 10,
        [0, 12, 12, 40, 40, 0.99] + [0] * 10,  # inside the first: suppresses it ("Min" overlap)
        [0, 100, 100, 140, 140, 0.80] + [0] * 10,
        [1, 10, 10, 50, 50, 0.90] + [0] * 10,  # another frame: untouched
    ]
    faces = mtcnn._min_nms(np.array(rows, dtype=np.float64), 0.7)
    assert faces.frame.tolist() == [0, 0, 1]
    np.testing.assert_allclose(faces.probability, [0.99, 0.80, 0.90], rtol=1e-6)


def test_gpu_summed_area_tables_equal_opencv_ones():
    frames = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8)
    assert torch.equal(mtcnn._integral_torch(frames), mtcnn._integral(frames))


def test_frames_without_candidates_give_no_faces():
    fast = mtcnn.FastMTCNN("cpu", min_face_size=40)
    for frames in (torch.zeros(3, 256, 256, dtype=torch.uint8), torch.zeros(1, 30, 30, dtype=torch.uint8)):
        faces = fast(frames)
        assert len(faces.frame) == 0 and faces.landmarks.shape == (0, 5, 2)


# ------------------------------------------------------------------------------ the stage
def _add_pair(raw: Path, rows: list[dict], template: dict, name: str, target: np.ndarray | bytes, source) -> None:
    row = dict(template)
    row.update(pair_id=f"extra_c0/{name}", subject="extra", camera="c0", frame=len(rows))
    row["target_path"] = f"target/extra_c0/{name}.png"
    row["source_path"] = f"source/extra_c0/{name}.png"
    for rel, img in ((row["target_path"], target), (row["source_path"], source)):
        if isinstance(img, bytes):
            (raw / rel).parent.mkdir(parents=True, exist_ok=True)
            (raw / rel).write_bytes(img)
        else:
            io.write_image(raw / rel, img)
    rows.append(row)


@pytest.fixture(scope="module")
def raw_with_problems(raw_twin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's twin raw dir plus a black frame, a broken target, a broken source and a
    frame with two faces side by side (512x256, so it is also a second frame size)."""
    raw = tmp_path_factory.mktemp("detect") / "raw"
    shutil.copytree(raw_twin_dir, raw)
    manifest = io.read_table(raw / "manifest.parquet")
    truth = io.read_table(raw / "disturbances.parquet")
    a, b = manifest.index[manifest.pair_id.isin(truth.pair_id[truth.disturbance == "none"])][[0, 9]]
    template = manifest.loc[a].to_dict()
    t0, s0 = io.read_image(raw / manifest.target_path[a], 1), io.read_image(raw / manifest.source_path[a], 3)
    t1, s1 = io.read_image(raw / manifest.target_path[b], 1), io.read_image(raw / manifest.source_path[b], 3)
    rows: list[dict] = []
    _add_pair(raw, rows, template, "black", np.zeros_like(t0), np.zeros_like(s0))
    _add_pair(raw, rows, template, "broken_target", b"\x89PNG\r\n\x1a\n truncated", s0)
    _add_pair(raw, rows, template, "broken_source", t0, b"")
    _add_pair(raw, rows, template, "two_faces", np.hstack([t0, t1]), np.hstack([s0, s1]))
    extra = pd.DataFrame(rows).astype(manifest.dtypes.to_dict())
    io.write_table(pd.concat([manifest, extra], ignore_index=True), raw / "manifest.parquet")
    return raw


@pytest.fixture(scope="module")
def crops(raw_with_problems: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    cfg = parse_config({"detect": {"device": "cpu", "batch_size": 32, "multiple_faces": "most_probable"}})
    out = tmp_path_factory.mktemp("detect") / "crops"
    counts = detect.run(cfg, raw_with_problems, out)
    return out, counts


def test_every_pair_is_kept_or_rejected_with_its_reason(raw_with_problems, crops):
    out, counts = crops
    raw = io.read_table(raw_with_problems / "manifest.parquet")
    kept = io.read_table(out / "manifest.parquet")
    rejects = io.read_table(out / "rejects.parquet")
    assert len(kept) + len(rejects) == len(raw) == counts["pairs"]
    assert sorted([*kept.pair_id, *rejects.pair_id]) == sorted(raw.pair_id)
    reasons = dict(zip(rejects.pair_id, zip(rejects.reason, rejects.path)))
    assert reasons["extra_c0/black"] == ("no_face", "target/extra_c0/black.png")
    assert reasons["extra_c0/broken_target"] == ("unreadable", "target/extra_c0/broken_target.png")
    assert reasons["extra_c0/broken_source"] == ("unreadable", "source/extra_c0/broken_source.png")
    assert set(rejects.reason) <= {"no_face", "low_probability", "multiple_faces", "unreadable"}
    # The twin's clean frames all keep their face.
    truth = io.read_table(raw_with_problems / "disturbances.parquet")
    clean_ids = set(truth.pair_id[truth.disturbance == "none"])
    assert clean_ids <= set(kept.pair_id)
    # Two faces, policy most_probable: kept, both counted.
    two = kept.set_index("pair_id").loc["extra_c0/two_faces"]
    assert two.n_faces == 2


def test_manifest_columns_and_crop_files(raw_with_problems, crops):
    out, _ = crops
    raw = io.read_table(raw_with_problems / "manifest.parquet")
    kept = io.read_table(out / "manifest.parquet")
    expected = [*raw.columns, *BOX_COLUMNS, "probability", "n_faces", *LANDMARK_COLUMNS, "crop_size"]
    assert list(kept.columns) == expected
    assert (kept.box_x1 - kept.box_x0 == kept.box_y1 - kept.box_y0).all()
    assert (kept.probability >= Config().detect.min_probability).all()
    for row in kept.itertuples():
        assert io.read_image(out / row.target_path, 1).shape == (160, 160)
        assert io.read_image(out / row.source_path, 3).shape == (160, 160, 3)


def test_one_box_cuts_both_images_and_keeps_the_pair_aligned(raw_with_problems, crops):
    out, _ = crops
    kept = io.read_table(out / "manifest.parquet")
    raw = io.read_table(raw_with_problems / "manifest.parquet").set_index("pair_id")
    truth = io.read_table(raw_with_problems / "disturbances.parquet").set_index("pair_id").disturbance
    clean = kept[kept.pair_id.map(truth) == "none"]
    assert len(clean) >= 50
    for row in clean.itertuples():
        x0, y0, side = int(row.box_x0), int(row.box_y0), int(row.box_x1 - row.box_x0)
        for domain, channels in (("target", 1), ("source", 3)):
            raw_img = io.read_image(raw_with_problems / raw.loc[row.pair_id, f"{domain}_path"], channels)
            crop = io.read_image(out / getattr(row, f"{domain}_path"), channels)
            assert np.array_equal(crop, detect.cut(raw_img, x0, y0, side, row.crop_size)), (row.pair_id, domain)
        # The rig's irises (blue in the source crop) sit on the eyes MTCNN found on the target.
        src = io.read_image(out / row.source_path, 3).astype(int)
        blue = (src[..., 2] > 160) & (src[..., 0] < 90) & (src[..., 1] < 90)
        n, labels, stats, centres = cv2.connectedComponentsWithStats(blue.astype(np.uint8))
        irises = centres[1:][stats[1:, cv2.CC_STAT_AREA] >= 3]
        eyes = np.array([[row.lm_left_eye_x, row.lm_left_eye_y], [row.lm_right_eye_x, row.lm_right_eye_y]])
        tol = np.linalg.norm(eyes[0] - eyes[1]) / 3
        for eye in eyes:
            if len(irises):  # an eye turned away can hide its iris
                assert np.linalg.norm(irises - eye, axis=1).min() < tol, row.pair_id


def test_multiple_faces_policy_reject(raw_with_problems, tmp_path):
    raw = tmp_path / "raw"
    manifest = io.read_table(raw_with_problems / "manifest.parquet")
    subset = manifest[manifest.pair_id.isin([manifest.pair_id[0], "extra_c0/two_faces"])]
    for rel in [*subset.target_path, *subset.source_path]:
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw_with_problems / rel, raw / rel)
    io.write_table(subset, raw / "manifest.parquet")
    cfg = parse_config({"detect": {"device": "cpu", "multiple_faces": "reject"}})
    counts = detect.run(cfg, raw, tmp_path / "crops")
    rejects = io.read_table(tmp_path / "crops" / "rejects.parquet")
    assert rejects.to_dict("records") == [
        {"pair_id": "extra_c0/two_faces", "path": "target/extra_c0/two_faces.png", "reason": "multiple_faces"}
    ]
    assert counts["kept"] == 1 and counts["multiple_faces"] == 1


def test_failed_run_leaves_the_previous_output(raw_with_problems, crops, tmp_path):
    out = tmp_path / "crops"
    shutil.copytree(crops[0], out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    raw = tmp_path / "raw"
    shutil.copytree(raw_with_problems, raw)
    # A manifest whose source column is gone fails midway, after the first batch was detected.
    manifest = io.read_table(raw / "manifest.parquet").drop(columns="source_path")
    io.write_table(manifest, raw / "manifest.parquet")
    with pytest.raises(KeyError):
        detect.run(parse_config({"detect": {"device": "cpu"}}), raw, out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".crops")] == []
