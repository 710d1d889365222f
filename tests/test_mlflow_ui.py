"""The MLflow UI in a real browser: headless Chromium (Debian's package) opens the comparison of
two runs on a real MLflow server and must find both runs' metric values on the page.

Chromium is kept off the network: loopback only (every other host resolves to nothing), no
QUIC, no background networking, component updates or sync, a fresh profile. It is driven over
the DevTools protocol, so the test waits for the single-page app to render instead of guessing
a delay. If Chromium is not installed the test FAILS and says so (`apt-get install -y chromium`).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from flows import stack as stack_mod
from flows.stack_services import free_port

REPO = Path(__file__).resolve().parents[1]

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1600,1100",
]

pytestmark = pytest.mark.e2e


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "Chromium is not installed, so the MLflow UI browser check cannot run: "
        "install Debian's package with `apt-get install -y chromium` (the CI script does)."
    )


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow-ui")
    stack = stack_mod.Stack(root=REPO, state=base / "stack", mlflow_port=free_port())
    try:
        stack_mod.start_mlflow(stack)
        stack_mod.wait_mlflow(stack)
        yield stack
    finally:
        stack_mod.down(stack.state)


def _log_runs(uri: str, token: str, monkeypatch) -> tuple[str, list[tuple[str, dict[str, float]]]]:
    """Two runs through nirgan.tracking (the trainer's own code path), with distinct metrics."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)  # the stack's MLflow gate wants it
    import mlflow

    from nirgan.config import Config
    from nirgan.tracking import start_run

    runs = []
    for i, metrics in enumerate([{"fid_test": 41.6218, "lpips_diversity": 0.18734},
                                 {"fid_test": 37.3042, "lpips_diversity": 0.22671}]):
        with start_run(Config().model_dump(mode="json"), run_name=f"ui-check-{i}", system_metrics=False) as run:
            mlflow.log_metrics(metrics)
            runs.append((run.info.run_id, metrics))
            exp_id = run.info.experiment_id
    return exp_id, runs


class DevTools:
    """Just enough of the Chrome DevTools protocol: navigate, evaluate, screenshot."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=20)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def text(self) -> str:
        res = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                        returnByValue=True)
        return res["result"].get("value", "")


def _devtools_url(proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(r"DevTools listening on (ws://\S+)", line)
        if match:
            return match.group(1)
    raise RuntimeError("Chromium did not open its DevTools endpoint:\n" + "".join(seen[-20:]))


def metrics_section(text: str) -> str:
    """The "Metrics" block of the comparison's run-details table (between Metrics and Artifacts)."""
    details = text.find("Run details")
    start = text.find("\nMetrics\n", details) if details >= 0 else -1
    end = text.find("\nArtifacts", start)
    return text[start:end] if start >= 0 and end > start else ""


def missing_values(text: str, runs: list[tuple[str, dict[str, float]]]) -> list[str]:
    """Metric values of ``runs`` not shown in the metrics block, key by key and run by run.

    The block lists the keys, then each key's values in run order; the UI rounds them for
    display (41.625 -> 41.63), so a shown number matches within half a unit of its last digit.
    """
    section = metrics_section(text)
    keys = sorted(runs[0][1])
    if not section or any(k not in section for k in keys):
        return [f"metric keys {keys} (no metrics block yet)"]
    numbers = re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", section.split(keys[-1], 1)[1])
    expected = [(run_id, key, metrics[key]) for key in keys for run_id, metrics in runs]
    missing = []
    for i, (run_id, key, value) in enumerate(expected):
        shown = numbers[i] if i < len(numbers) else None
        digits = len(shown.split(".")[1]) if shown and "." in shown else 0
        if shown is None or abs(float(shown) - value) > 0.5 * 10 ** -digits + 1e-12:
            missing.append(f"{run_id[:8]} {key}={value} (shown: {shown})")
    return missing


def test_compare_two_runs_in_chromium(mlflow_server, tmp_path, monkeypatch):
    chromium = chromium_binary()
    exp_id, runs = _log_runs(mlflow_server.mlflow_uri, mlflow_server.mlflow_token(), monkeypatch)
    query = urllib.parse.urlencode(
        {"runs": json.dumps([r for r, _ in runs]), "experiments": json.dumps([exp_id])}
    )
    url = f"{mlflow_server.mlflow_uri}/#/compare-runs?{query}"

    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    screenshot = tmp_path / "mlflow-compare-runs.png"
    try:
        browser_ws = _devtools_url(proc)
        port = urllib.parse.urlparse(browser_ws).port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        tools.call("Page.enable")
        # logged in, as a user is after the gate's Basic prompt (the token as password)
        login = base64.b64encode(f"nirgan:{mlflow_server.mlflow_token()}".encode()).decode()
        tools.call("Network.enable")
        tools.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {login}"})
        tools.call("Page.navigate", url=url)

        deadline, text, missing = time.monotonic() + 90, "", ["(not loaded)"]
        while time.monotonic() < deadline:
            text = tools.text()
            missing = missing_values(text, runs)
            if not missing:
                break
            time.sleep(1)
        # Bring the metrics block into the screenshot (the text node of the last metric key).
        tools.call("Runtime.evaluate", expression=(
            "(() => { const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT); let last = null;"
            f" while (w.nextNode()) if (w.currentNode.nodeValue.trim() === {json.dumps(sorted(runs[0][1])[-1])})"
            " last = w.currentNode.parentElement;"
            " if (last) last.scrollIntoView({block: 'center'}); })()"
        ))
        time.sleep(1)
        shot = tools.call("Page.captureScreenshot", format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        print(f"\nMLflow compare-runs screenshot: {screenshot}")
        assert not missing, f"not on the compare page {url}: {missing}\nmetrics block:\n{metrics_section(text)}"
        assert all(run_id in text or f"ui-check-{i}" in text for i, (run_id, _) in enumerate(runs))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
