"""`make test` stands alone (issue 12, item 9): it provisions the browser the MLflow UI test
needs, and CI does nothing but call it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shim(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_make_test_installs_chromium_before_it_runs_pytest(tmp_path: Path):
    """The real Makefile, run for real as root without chromium: it calls apt-get for chromium,
    then the tests. apt-get and the venv's python are stand-ins that log their calls (the test
    must not install packages or run the suite inside itself); make, sh and the recipe are real."""
    if os.getuid() != 0:
        import pytest

        pytest.skip("the install branch runs as root only")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for tool in ("sh", "make", "id", "touch", "test", "dirname"):
        if shutil.which(tool):
            os.symlink(shutil.which(tool), bin_dir / tool)
    _shim(bin_dir, "apt-get", f'echo "apt-get $*" >> {calls}')
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    _shim(venv / "bin", "python", f'echo "python $*" >> {calls}')
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    (venv / ".installed").touch()  # newer than pyproject.toml: the venv step is up to date
    proc = subprocess.run([str(bin_dir / "make"), "-s", "test"], cwd=tmp_path, env={"PATH": str(bin_dir)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    log = calls.read_text().splitlines()
    install = next(i for i, line in enumerate(log) if line.startswith("apt-get") and "chromium" in line)
    pytest_run = next(i for i, line in enumerate(log) if line.startswith("python -m pytest"))
    assert install < pytest_run, log


def test_without_root_make_says_how_to_install_it():
    """A real non-root user (nobody) with no chromium on PATH: one clear line, and the tests still run."""
    with tempfile.TemporaryDirectory() as tmp:  # /tmp itself: pytest's tmp_path is closed to nobody
        _without_root(Path(tmp))


def _without_root(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("id"), bin_dir / "id")
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    tmp_path.chmod(0o755)
    cmd = [shutil.which("make"), "-s", "browser"]
    if os.getuid() == 0:
        cmd = [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    proc = subprocess.run(cmd, cwd=tmp_path, env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "chromium is missing" in proc.stderr and "apt-get install -y chromium" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_ci_runs_make_test_at_the_repo_root_and_fails_with_it(tmp_path: Path):
    """.ci/run, started from elsewhere, runs `make test` in its checkout and passes on its exit
    status: run for real against a Makefile whose test target records where it ran and fails."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci/run", tmp_path / ".ci/run")
    (tmp_path / "Makefile").write_text("test:\n\tpwd > ran_in\n\texit 7\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(["bash", str(tmp_path / ".ci/run")], cwd=elsewhere, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "MAKEFLAGS": ""})
    assert proc.returncode != 0
    assert (tmp_path / "ran_in").read_text().strip() == str(tmp_path)
