"""Progress reaches the log every ~5 % when stderr is not a terminal (Prefect, CI, ``2> log``),
where tqdm prints nothing; on a terminal tqdm's bar is left alone (issue 23)."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import yaml

LOOP = ("from nirgan.io import progress, setup_logging\n"
        "setup_logging()\n"
        "with progress(total=200, desc='detect', unit='pair') as bar:\n"
        "    for _ in range(50): bar.update(4)\n"
        "for _ in progress(range(7), desc='collect folder', unit='pair'): pass\n")


def test_progress_is_logged_every_five_percent_without_a_terminal():
    err = subprocess.run([sys.executable, "-c", LOOP], capture_output=True, text=True, check=True).stderr
    counts = [int(n) for n in re.findall(r"detect: (\d+)/200 pair \(\d+%", err)]
    # 5 % of 200 is 10: one line at the first update (of 4) past each multiple of 10, the last at 200
    assert counts == [-(-10 * k // 4) * 4 for k in range(1, 21)], err
    assert "detect: 200/200 pair (100%" in err
    assert re.findall(r"collect folder: (\d)/7 pair", err) == [str(k) for k in range(1, 8)], err


def test_on_a_terminal_only_the_bar_is_drawn():
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 wide
    proc = subprocess.run([sys.executable, "-c", LOOP], stdout=subprocess.DEVNULL, stderr=follower, check=True)
    os.close(follower)
    seen = b""
    try:
        while chunk := os.read(leader, 65536):
            seen += chunk
    except OSError:  # the terminal closed
        pass
    os.close(leader)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0 and "200/200" in text  # tqdm's bar
    assert " pair (" not in text, text  # no progress log lines


def test_collect_and_detect_stages_log_their_progress(tmp_path):
    params = {"task": "nir", "collect": {"source": "twin", "twin": {"subjects": 2, "cameras": 1, "frames": 10,
                                                                      "width": 128, "height": 128}},
              "detect": {"device": "cpu", "batch_size": 8}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NIRGAN_CPUS": "1"}
    logs = {}
    for stage in ("collect", "detect"):
        done = subprocess.run([sys.executable, "-m", "nirgan.cli", "stage", stage], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        logs[stage] = done.stderr
    assert re.search(r"collect twin: 20/20 pair \(100%", logs["collect"]), logs["collect"][-2000:]
    assert len(re.findall(r"collect twin: \d+/20 pair", logs["collect"])) == 20  # 5 % of 20 pairs is one pair
    assert re.search(r"detect: 20/20 pair \(100%", logs["detect"]), logs["detect"][-2000:]
