"""Atomic outputs: a failed or killed writer never leaves a complete-looking output."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nirgan.io import atomic_dir, atomic_file, read_image, write_image


def test_atomic_dir_failure_leaves_previous_output(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "a.txt").write_text("half")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_killed_writer_leaves_nothing_then_rerun_completes(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import time
        from nirgan.io import atomic_dir
        with atomic_dir({str(out)!r}) as d:
            (d / "part.txt").write_text("partial")
            print("ready", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    with atomic_dir(out) as d:
        (d / "done.txt").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # stale temp dir swept
    assert (out / "done.txt").read_text() == "ok"


def test_atomic_file_and_image_round_trip(tmp_path):
    img = (np.arange(64 * 48 * 3) % 251).astype(np.uint8).reshape(64, 48, 3)
    with atomic_file(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"123")
    assert (tmp_path / "x.bin").read_bytes() == b"123"
    write_image(tmp_path / "rgb.png", img)
    assert np.array_equal(read_image(tmp_path / "rgb.png", 3), img)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png: empty file"):
        read_image(tmp_path / "empty.png", 1)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png: not a readable image"):
        read_image(tmp_path / "text.png", 1)
