"""The MLflow UI in a real browser, through the stack's gate (flows/mlflow_gate.py): headless
Chromium (Debian's package) opens the comparison of two runs on a real MLflow server and must
find both runs' metric values and both runs' sample grids side by side; a fresh browser opens on
the "Model training" view; and a page served on another loopback port, in the same logged-in
browser, fires the requests that moved ``@champion`` before the gate (issue 24) and changes nothing.

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
import contextlib
import http.server
import threading
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
GRID_COLOURS = [(200, 40, 40), (40, 40, 200)]


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


def _log_runs(uri: str, token: str, monkeypatch, tmp_path: Path) -> tuple[str, list[tuple[str, dict[str, float]]]]:
    """Two runs through nirgan.tracking (the trainer's own code path), with distinct metrics and
    each its own sample grid (a solid colour per run, so the page shows which is which)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)  # the stack's MLflow gate wants it
    import mlflow
    from PIL import Image

    from nirgan.config import Config
    from nirgan.tracking import log_sample_grid, start_run

    runs = []
    for i, metrics in enumerate([{"fid_test": 41.6218, "lpips_diversity": 0.18734},
                                 {"fid_test": 37.3042, "lpips_diversity": 0.22671}]):
        grid = tmp_path / f"grid-{i}.png"
        Image.new("RGB", (96, 64), GRID_COLOURS[i]).save(grid)
        with start_run(Config().model_dump(mode="json"), run_name=f"ui-check-{i}", system_metrics=False) as run:
            mlflow.log_metrics(metrics)
            log_sample_grid(grid, epoch=1, step=10)
            runs.append((run.info.run_id, metrics))
            exp_id = run.info.experiment_id
    return exp_id, runs


class DevTools:
    """Just enough of the Chrome DevTools protocol: navigate, evaluate, screenshot."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=20)
        self.next_id = 0
        self.events: list[dict] = []  # what the browser reported while we waited for answers

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if "method" in msg:
                self.events.append(msg)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def value(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res["result"].get("value")

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


@contextlib.contextmanager
def fresh_page(profile: Path):
    """A fresh headless Chromium (its profile in ``profile``) on one page, driven over DevTools;
    stopped by PID on the way out."""
    proc = subprocess.Popen(
        [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = urllib.parse.urlparse(_devtools_url(proc)).port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        tools.call("Page.enable")
        yield tools
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def logged_in_page(stack, tmp_path: Path):
    """:func:`fresh_page`, logged in to the gate as a user is after its Basic prompt (the token as
    password). The login goes on every request this browser makes, other origins' included: the
    worst a cached login can do."""
    with fresh_page(tmp_path / "chromium-profile") as tools:
        login = base64.b64encode(f"nirgan:{stack.mlflow_token()}".encode()).decode()
        tools.call("Network.enable")
        tools.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {login}"})
        yield tools


def wait_for(what: str, probe, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_compare_two_runs_in_chromium(mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    exp_id, runs = _log_runs(mlflow_server.mlflow_uri, mlflow_server.mlflow_token(), monkeypatch, tmp_path)
    # the kind MLflow 3's UI would otherwise ask for on the first visit
    assert MlflowClient(mlflow_server.mlflow_uri).get_experiment(exp_id).tags.get("mlflow.experimentKind") \
        == "custom_model_development"
    query = urllib.parse.urlencode(
        {"runs": json.dumps([r for r, _ in runs]), "experiments": json.dumps([exp_id])}
    )
    url = f"{mlflow_server.mlflow_uri}/#/compare-runs?{query}"
    screenshot = tmp_path / "mlflow-compare-runs.png"
    with logged_in_page(mlflow_server, tmp_path) as tools:
        tools.call("Page.navigate", url=url)
        text = ""

        def metrics_shown() -> bool:
            nonlocal text
            text = tools.text()
            return not missing_values(text, runs)

        try:
            wait_for("the metrics block", metrics_shown)
        except AssertionError:
            raise AssertionError(f"not on the compare page {url}: {missing_values(text, runs)}\n"
                                 f"metrics block:\n{metrics_section(text)}") from None
        assert all(run_id in text or f"ui-check-{i}" in text for i, (run_id, _) in enumerate(runs))

        # the sample grids: one common artifact, opened once, previewed side by side for both runs
        # the artifact lists load after the metrics; until then the page says "No common artifacts"
        wait_for("samples_epoch_001.png among the common artifacts",
                 lambda: "samples_epoch_001.png" in tools.text().split("\nArtifacts", 1)[-1], timeout=60)
        clicked = tools.value(
            "(() => { const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);"
            " while (w.nextNode()) if (w.currentNode.nodeValue.trim() === 'samples_epoch_001.png')"
            " { w.currentNode.parentElement.click(); return true; } return false; })()")
        assert clicked
        # each preview's colour and place: decoded pixels, read through a canvas
        previews = wait_for("both grids previewed", lambda: (lambda got: got if len(got) == 2 else None)(tools.value(
            "[...document.images].filter(i => i.src.startsWith('blob:') && i.naturalWidth > 0"
            " && i.getBoundingClientRect().width > 0).map(i => { const c = document.createElement('canvas');"
            " c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0);"
            " const r = i.getBoundingClientRect();"
            " return {x: r.x, y: r.y, size: [i.naturalWidth, i.naturalHeight], rgb: [...g.getImageData(5, 5, 1, 1).data].slice(0, 3)}; })")))
        left, right = sorted(previews, key=lambda p: p["x"])
        assert abs(left["y"] - right["y"]) < 2 and right["x"] > left["x"] + 90, previews  # side by side
        assert [p["size"] for p in (left, right)] == [[96, 64]] * 2, previews
        assert [p["rgb"] for p in (left, right)] == [list(c) for c in GRID_COLOURS], previews  # run order
        tools.value("[...document.images].find(i => i.src.startsWith('blob:') && i.naturalWidth > 0)"
                    ".scrollIntoView({block: 'center'})")
        time.sleep(1)
        shot = tools.call("Page.captureScreenshot", format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        print(f"\nMLflow compare-runs screenshot: {screenshot}")


def test_a_fresh_browser_opens_on_model_training_and_keeps_a_users_choice(mlflow_server, tmp_path):
    key = "mlflow.workflowType_v1"  # where MLflow 3.17's sidebar keeps it (default: GenAI)
    with logged_in_page(mlflow_server, tmp_path) as tools:
        tools.call("Page.navigate", url=f"{mlflow_server.mlflow_uri}/")
        wait_for("the home page", lambda: "Model training" in tools.text())
        assert tools.value(f"localStorage.getItem({json.dumps(key)})") == '"machine_learning"'
        tools.value(f"localStorage.setItem({json.dumps(key)}, JSON.stringify('genai'))")  # the user switches
        tools.call("Page.navigate", url=f"{mlflow_server.mlflow_uri}/#/experiments")
        wait_for("the experiments page", lambda: "Experiments" in tools.text())
        assert tools.value(f"localStorage.getItem({json.dumps(key)})") == '"genai"'


HOSTILE_PAGE = """<!doctype html><title>loading</title><body>
<iframe name="sink" style="display:none"></iframe>
<form id="form" method="post" enctype="text/plain" target="sink" action="{api}/experiments/create">
<input name='{{"name": "hostile-form", "x": "' value='"}}'></form>
<script>
const api = "{api}";
const post = (path, body, init) => fetch(api + path, {{method: "POST", body: JSON.stringify(body), ...init}})
  .then(r => path + " " + r.type + " " + r.status, e => path + " blocked " + e);
Promise.all([
  post("/experiments/create", {{name: "hostile-no-cors"}}, {{mode: "no-cors", headers: {{"Content-Type": "text/plain"}}}}),
  post("/registered-models/alias", {{name: "ui-gate-probe", alias: "champion", version: "2"}},
       {{mode: "no-cors", headers: {{"Content-Type": "text/plain"}}}}),
  post("/experiments/create", {{name: "hostile-cors"}},
       {{mode: "cors", credentials: "include", headers: {{"Content-Type": "application/json"}}}}),
]).then(results => {{ document.getElementById("form").submit(); document.title = "done " + results.join(" | "); }});
</script>"""


def test_a_page_on_another_loopback_port_changes_nothing_in_a_logged_in_browser(mlflow_server, tmp_path, monkeypatch):
    """Issue 24 item 5 in a real browser: the page (another loopback port, the same browser, logged
    in) sends a no-cors fetch, a CORS fetch with credentials and a form POST to create an experiment
    and move ``@champion``. The gate answers each with 403, and nothing changes."""
    import httpx
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", mlflow_server.mlflow_token())
    client = MlflowClient(mlflow_server.mlflow_uri)
    model = client.create_registered_model("ui-gate-probe")
    run = client.create_run(client.create_experiment("ui-gate-probe-source"))
    for _ in range(2):
        client.create_model_version(model.name, f"runs:/{run.info.run_id}/m", run.info.run_id)
    client.set_registered_model_alias(model.name, "champion", "1")

    api = f"{mlflow_server.mlflow_uri}/api/2.0/mlflow"
    site = tmp_path / "hostile-site"
    site.mkdir()
    (site / "index.html").write_text(HOSTILE_PAGE.format(api=api))
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(site), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with logged_in_page(mlflow_server, tmp_path) as tools:
            tools.call("Page.navigate", url=f"http://127.0.0.1:{server.server_port}/index.html")
            title = wait_for("the page's requests", lambda: (lambda t: t if t.startswith("done") else None)(
                tools.value("document.title")), timeout=60)
            time.sleep(2)  # the form POST's answer
            tools.value("1")  # collect the events that came meanwhile
            answers = [(e["params"]["response"]["url"], e["params"]["response"]["status"]) for e in tools.events
                       if e["method"] == "Network.responseReceived"
                       and e["params"]["response"]["url"].startswith(api)]
    finally:
        server.shutdown()
    # the browser did send them (the no-cors fetches and the form are simple requests: no preflight)
    paths = sorted({url.removeprefix(api) for url, _ in answers})
    assert paths == ["/experiments/create", "/registered-models/alias"], (title, answers)
    assert {status for _, status in answers} == {403}, answers
    assert "/experiments/create blocked" in title, title  # the CORS fetch never got past its preflight
    # ... and nothing changed
    names = {e.name for e in client.search_experiments()}
    assert not {n for n in names if n.startswith("hostile")}, names
    assert client.get_model_version_by_alias(model.name, "champion").version == "1"
    # control: the very request, with the token and no page origin, is one MLflow takes
    made = httpx.post(f"{api}/experiments/create", json={"name": "control"}, timeout=10,
                      headers={"Authorization": f"Bearer {mlflow_server.mlflow_token()}"})
    assert made.status_code == 200 and client.get_experiment_by_name("control") is not None, made.text
