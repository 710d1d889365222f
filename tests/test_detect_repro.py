"""Detect's output bytes do not depend on the machine (issue 12, items 8 and 13).

DVC restores a stage from the committed dvc.lock only when the cache holds exactly the
committed output; a detect output that differs by one float reruns detect and everything
after it on every fresh clone. Two real runs of the stage on the same raw twin, one with 1
intra-op thread, the other with 3 threads and oneDNN held to AVX2 kernels (what another CPU
does: other reduction splits, other vector widths), must write byte-identical directories.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nirgan.io import read_table
from pipeline_project import make_project, project_env, run

CODE = (
    "import sys, torch; from pathlib import Path; from nirgan.config import load_config; "
    "from nirgan.stages import detect; torch.set_num_threads(int(sys.argv[4])); "
    "detect.run(load_config(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))"
)


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _detect(raw: Path, out: Path, params: Path, threads: int, **env: str) -> None:
    src = str(Path(__file__).resolve().parents[1] / "src")
    subprocess.run([sys.executable, "-c", CODE, str(params), str(raw), str(out), str(threads)], check=True,
                   env={**os.environ, "PYTHONPATH": src, **env}, capture_output=True, timeout=600)


def test_detect_output_is_byte_identical_across_threads_and_cpu_kernels(raw_twin_dir: Path, tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"detect": {"device": "cpu"}}))
    _detect(raw_twin_dir, tmp_path / "a", params, threads=1)
    _detect(raw_twin_dir, tmp_path / "b", params, threads=3, ONEDNN_MAX_CPU_ISA="AVX2")
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(read_table(tmp_path / "a" / "manifest.parquet")) > 50  # faces were found: not a vacuous check
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([a-z]+)'", output)


@pytest.mark.e2e
def test_a_fresh_clone_on_another_machine_restores_detect(tmp_path: Path):
    """Item 13 under real DVC: the committed dvc.lock comes from one machine (1 thread); two
    workspaces of another (3 threads, AVX2 kernels) share one cache, as train-nir runs do. The
    first must recompute detect (its cache is empty) and write the committed bytes; the
    second must then restore detect, not rerun it. (DVC takes the outputs of a stage whose
    deps match dvc.lock from dvc.lock itself, so an output hash of another machine is never
    found and detect reran in every run.)"""
    origin = make_project(tmp_path / "origin")
    here = {**project_env(origin), "OMP_NUM_THREADS": "1"}
    run(["dvc", "repro", "detect"], cwd=origin, env=here)
    run(["git", "add", "dvc.lock"], cwd=origin)
    run(["git", "commit", "-qm", "lock from machine one"], cwd=origin)

    cache = tmp_path / "other-machine-cache"
    other = {**project_env(origin), "OMP_NUM_THREADS": "3", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    outputs = []
    for name in ("run1", "run2"):
        ws = tmp_path / name
        run(["git", "clone", "-q", str(origin), str(ws)], cwd=tmp_path)
        run(["dvc", "config", "--local", "cache.dir", str(cache)], cwd=ws, env=other)
        outputs.append(run(["dvc", "repro", "detect"], cwd=ws, env=other).stdout)
        assert run(["git", "status", "--porcelain", "dvc.lock"], cwd=ws).stdout == "", name  # same hashes
    assert "detect" in _ran(outputs[0])
    assert _ran(outputs[1]) == [], outputs[1]
