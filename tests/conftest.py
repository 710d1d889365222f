"""Shared pytest fixtures. Session-scoped data is built once and must not be modified by tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nirgan.config import Config, parse_config


@pytest.fixture(scope="session")
def twin_cfg() -> Config:
    """A tiny twin: 4 subjects x 2 cameras x 8 frames at 256x256 (64 pairs, 5 disturbed)."""
    return parse_config(
        {"collect": {"source": "twin", "twin": {"subjects": 4, "cameras": 2, "frames": 8, "width": 256, "height": 256}}}
    )


@pytest.fixture(scope="session")
def raw_twin_dir(twin_cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/raw`` of ``twin_cfg``, collected once per session (read-only for tests)."""
    from nirgan.stages import collect

    out = tmp_path_factory.mktemp("twin") / "raw"
    collect.run(twin_cfg, out)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A fresh SQLite MLflow store for one test module, as MLFLOW_TRACKING_URI (created once: the
    schema migration is slow); the previous value is restored afterwards."""
    from nirgan.tracking import ensure_store

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    ensure_store(uri)
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture
def one_torch_thread():
    """Tiny CPU convs on a shared 2-core machine: one intra-op thread avoids OpenMP
    oversubscription, which made these tests several times slower under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def twin_prepared_128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real prepared data at 128 px: a 10-subject twin (2 cameras x 12 frames) through the real
    collect -> detect (MTCNN) -> clean -> augment -> split stages. Returns the root holding
    ``prepared/`` and ``split/`` (read-only for tests)."""
    from nirgan.stages import augment, clean, collect, detect, split

    cfg = parse_config({"collect": {"twin": {"subjects": 10, "cameras": 2, "frames": 12}},
                        "detect": {"device": "cpu"}, "augment": {"image_size": 128}, "split": {"test_fraction": 0.2}})
    root = tmp_path_factory.mktemp("twin128")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        collect.run(cfg, out_dir=root / "raw")
        detect.run(cfg, raw_dir=root / "raw", out_dir=root / "crops")
        clean.run(cfg, crops_dir=root / "crops", out_dir=root / "clean")
        augment.run(cfg, crops_dir=root / "crops", clean_dir=root / "clean", out_dir=root / "prepared")
        split.run(cfg, prepared_dir=root / "prepared", out_dir=root / "split")
    finally:
        torch.set_num_threads(before)
    return root
