"""The identity figures' instrument (issue 20 item 6): its verification AUC on real test faces
decides whether the identity cosines are informative."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nirgan.config import Config, EvaluateConfig
from nirgan.metrics.data import load_split
from nirgan.metrics.feature_check import holdout_mask
from nirgan.metrics.identity import INSTRUMENT_AUC_FLOOR, instrument_verdict, reconstruction_cosines, verification_auc
from nirgan.metrics.judge import gaussian_blur
from nirgan.stages import evaluate


def test_verification_auc_known_answers():
    subjects = np.array(["a", "a", "a", "b", "b", "c"])
    by_subject = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 1.0], [-1.0, 0.0]])
    assert verification_auc(by_subject, subjects) == 1.0  # every same pair closer than every different pair
    assert verification_auc(torch.ones(6, 4), subjects) == 0.5  # all alike: every pair ties, a tie counts one half
    # an instrument that reads the frame (the pose), not the person: frame 1 of a and b alike, frame 2 alike.
    # Same pairs (a1, a2), (b1, b2) at cosine 0; different pairs at 1, 0, 0, 1: each same pair loses
    # to two and ties with two, AUC (0 + 0.5 + 0.5 + 0) / 4
    frames = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert verification_auc(frames, np.array(["a", "a", "b", "b"])) == 0.25
    assert np.isnan(verification_auc(torch.eye(3), np.array(["a", "b", "c"])))  # no same-subject pair


def test_the_verdict_follows_the_floor_and_says_why():
    assert instrument_verdict(0.95) == {"identity_instrument_auc": 0.95, "identity_informative": True}
    low = instrument_verdict(0.62)
    assert low["identity_informative"] is False and "0.62" in low["identity_informative_reason"]
    assert str(INSTRUMENT_AUC_FLOOR) in low["identity_informative_reason"]
    none = instrument_verdict(float("nan"))
    assert none["identity_instrument_auc"] == "unavailable" and none["identity_instrument_auc_reason"]
    assert none["identity_informative"] is False and none["identity_informative_reason"].startswith("not informative")


def test_evaluates_identity_net_on_real_faces_is_marked_for_what_it_is(twin_prepared_128):
    """The net evaluate trains (evaluate.feature_epochs at its default) on real twin faces, with a
    quarter of each subject's frames held out: its held-out subject accuracy is reported beside
    chance, and it cannot tell the two test subjects apart (verification AUC 0.58; blurred blobs
    in place of the faces read 0.9997, above two frames of one subject at 0.9995: the issue's ovals
    with eyes). So its identity figures come marked not informative."""
    root = twin_prepared_128
    src = np.load(root / "prepared" / "source.npy", mmap_mode="r")
    tgt = np.load(root / "prepared" / "target.npy", mmap_mode="r")
    train = load_split(root / "prepared", root / "split", "train", src, tgt)
    test = load_split(root / "prepared", root / "split", "test", src, tgt)
    cfg = Config(evaluate=EvaluateConfig())
    embed, where, accuracy = evaluate._identity_embedder(cfg, Path("no_models_here"), train, torch.device("cpu"))
    assert "held out" in where
    held = holdout_mask(train.subjects, cfg.evaluate.seed)
    assert accuracy["identity_instrument_holdout_frames"] == held.sum() > 0
    _, counts = np.unique(train.subjects[held], return_counts=True)
    assert accuracy["identity_instrument_chance"] == pytest.approx(counts.max() / held.sum())
    assert (accuracy["identity_instrument_accuracy"] * held.sum()) == pytest.approx(
        round(accuracy["identity_instrument_accuracy"] * held.sum()))  # a share of the held-out frames

    x = test.targets()
    blobs = gaussian_blur(x, 7.0)
    out = reconstruction_cosines(embed, x, blobs, blobs, test, train, cfg.evaluate.seed)
    assert out["identity_instrument_auc"] < INSTRUMENT_AUC_FLOOR, out  # what this net is today
    assert out["identity_informative"] is False and out["identity_informative_reason"].startswith("not informative")


def test_rank1_counts_a_probe_whose_nearest_other_face_is_its_subjects():
    from nirgan.metrics.identity import rank1_same_subject

    # two subjects, two faces each, on two axes; the probes sit near face 0's subject or the other
    gallery = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]])
    subjects = np.array(["a", "a", "b", "b"])
    assert rank1_same_subject(gallery, subjects, gallery, np.arange(4)) == 1.0  # real faces, themselves left out
    kept = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # translations of faces 0 and 2 that kept their subject
    lost = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # ... that took the other subject's look
    assert rank1_same_subject(gallery, subjects, kept, np.array([0, 2])) == 1.0
    assert rank1_same_subject(gallery, subjects, lost, np.array([0, 2])) == 0.0
    # the input itself is left out: a copy of face 0 is matched to face 1, its subject's other face
    assert rank1_same_subject(gallery, subjects, gallery[:1] * 3, np.array([0])) == 1.0
