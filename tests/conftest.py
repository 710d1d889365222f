"""Shared pytest fixtures. Session-scoped data is built once and must not be modified by tests.

``make test`` runs the files on pytest-xdist workers, one more than the cores (``--dist
loadfile``: a file's tests and its module fixtures, servers included, stay on one worker). Each
worker's torch pool, and every nirgan command and server it starts (through NIRGAN_CPUS, which
:func:`nirgan.cores.size_threads` reads), run one thread, so three workers on a 2-core machine
ask for at most one and a half times its cores, while the end-to-end tests partly wait on
servers and DVC (the Makefile has the measurement). The session data is built once for all
workers.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from nirgan.config import Config, parse_config

# The files that take longest (benchmarks/results/cpu_2026-12-04/pytest_durations.txt) go to
# the workers first, so that none of them is left to run alone at the end.
SLOW_FIRST = ("test_orchestration.py", "test_pipeline_dvc.py", "test_stack.py", "test_train_nir_local.py",
              "test_judge.py", "test_unlabelled_folder.py", "test_expression_models.py", "test_registry.py",
              "test_stage_params.py", "test_tracking_server.py", "test_ddp.py", "test_gpu_scale_smoke.py",
              "test_generate.py", "test_detect_repro.py", "test_resume_fingerprint.py", "test_utility.py")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["NIRGAN_CPUS"] = "1"
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = "1"
        torch.set_num_threads(1)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop the bytecode of test folders pytest has already deleted. Under the Makefile's
    PYTHONPYCACHEPREFIX, the copies of the project that the end-to-end tests import from leave
    their bytecode in the venv's cache (about 15 MB a run), which pytest's own pruning of old
    temporary folders does not reach."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not sys.pycache_prefix:
        return
    runs = session.config._tmp_path_factory.getbasetemp().parent  # pytest-of-<user>: pytest keeps the last 3
    mirror = Path(sys.pycache_prefix) / runs.relative_to(runs.anchor)
    for cached in mirror.glob("*"):
        if not (runs / cached.name).exists():
            shutil.rmtree(cached, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` run once per test session, also across xdist workers (under a file lock
    in the folder all workers share); returns the folder."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    out = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    with FileLock(f"{out}.lock"):
        if not (out / ".built").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            (out / ".built").touch()
    return out


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

    return built_once(tmp_path_factory, "twin", lambda root: collect.run(twin_cfg, root / "raw")) / "raw"


@pytest.fixture(scope="session")
def prefect_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Prefect database at the pinned Prefect's schema, for :func:`prefect_db.seed_prefect_home` (read-only)."""
    import prefect_db as db

    return built_once(tmp_path_factory, "prefect-db", db.build) / db.DB


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

    def build(root: Path) -> None:
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

    return built_once(tmp_path_factory, "twin128", build)
