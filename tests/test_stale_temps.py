"""Temporary siblings of killed writers are removed at the next write beside them or the next
``nirgan stage`` call, even when the killed stage itself never runs again (DVC restored it from
its cache); a live writer's are kept; and atomic_dir never moves a user's file aside."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nirgan import cli
from nirgan.config import OutputError
from nirgan.io import atomic_dir, atomic_file

REPO = Path(__file__).resolve().parents[1]


def _killed_writer(out: Path) -> Path:
    """Run an atomic_dir writer for ``out`` in a real process, kill -9 it mid-write; its temp folder."""
    script = textwrap.dedent(f"""
        import time
        from nirgan.io import atomic_dir
        with atomic_dir({str(out)!r}) as d:
            (d / "part.bin").write_bytes(b"half")
            print(d, flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert tmp.is_dir() and tmp.name.startswith(f".{out.name}.tmp-{proc.pid}-")
    return tmp


def test_write_beside_removes_other_outputs_leftovers_but_not_a_live_writers(tmp_path):
    dead = _killed_writer(tmp_path / "crops")  # detect killed; then restored by DVC, never rerun
    (tmp_path / f".eval.json.tmp-{int(dead.name.split('-')[1])}-0123abcd").write_text("{")  # a killed atomic_file
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".raw.tmp-{live.pid}-89abcdef"
        busy.mkdir()
        (tmp_path / ".notes.tmp-mine").write_text("a user's file")  # not a name nirgan makes
        with atomic_dir(tmp_path / "clean") as out:  # the next stage writes beside them
            (out / "ok").write_text("ok")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["clean", busy.name, ".notes.tmp-mine"])
        with atomic_file(tmp_path / "x.json") as f:
            f.write_text("{}")
        assert busy.is_dir()  # still being written by a running process
    finally:
        live.kill()
        live.wait()


def test_stage_call_sweeps_leftovers_of_a_stage_that_does_not_run(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    crops = _killed_writer(Path("data/crops").absolute())
    model = _killed_writer(Path("models/generator.pt").absolute())
    # split has no input here, so it stops at once (exit 2): the sweep does not depend on the stage's work
    assert cli.main(["stage", "split"]) == 2
    assert not crops.exists() and not model.exists()
    assert sorted(p.name for p in Path("data").iterdir()) == []


def test_atomic_dir_refuses_a_file_at_its_path(tmp_path):
    out = tmp_path / "export"
    out.write_text("the user's notes")
    with pytest.raises(OutputError, match="export: is a file, not an output folder"):
        with atomic_dir(out) as d:
            (d / "x").write_text("never")
    assert out.read_text() == "the user's notes"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
