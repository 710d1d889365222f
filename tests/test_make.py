"""`make test` stands alone (issue 12, item 9): it provisions the browser the MLflow UI test
needs, and CI does nothing but call it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_make_test_provisions_chromium_first():
    out = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    assert "apt-get install -y -qq chromium" in out
    assert out.index("chromium") < out.index("pytest")  # provisioned before the tests run


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


def test_ci_only_calls_make_test():
    lines = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "make test"]
