"""The stack's MLflow behind a gate: only a holder of the stack's token, from no other web page.

    python flows/mlflow_gate.py --port 5000 --socket S --token-file T -- mlflow server ... --uvicorn-opts "--uds S"

Loopback is not a boundary against the user's own browser: any page it shows can send requests
to 127.0.0.1, and MLflow 3.17 admits state-changing requests from every ``localhost`` origin
(issue 24: a page on 127.0.0.1:8999 created an experiment and moved ``@champion``). So the
MLflow server listens only on a Unix socket in the stack's state folder, which no web page can
reach, and this gate, its process-group leader, serves the port in front of it:

- every request but ``GET /health`` needs the stack's token (``<state>/mlflow-token``, mode
  0600): ``Authorization: Bearer <token>`` (what the MLflow client sends for
  ``MLFLOW_TRACKING_TOKEN``, which the stack gives its workers) or HTTP Basic with the token as
  password (a browser asks for it once per origin and keeps it for that origin only, unlike a
  cookie, which every port of 127.0.0.1 would receive); the answer to a request without it is
  401 with a Basic challenge, so a fresh browser leads through login;
- a request carrying an ``Origin`` other than the gate's own is refused (403) before the token
  is looked at: a browser adds ``Origin`` to every cross-origin fetch and every form POST, and
  would also attach its cached login to them. Navigations (links from the Prefect UI or a
  terminal) carry none and pass;
- a foreign ``Host`` (DNS rebinding) is refused.

The UI's page (``GET /``) gets one line: where the browser has no workflow choice stored yet,
MLflow's sidebar starts on "Model training" instead of its GenAI default (MLflow 3.17 keeps that
choice in ``localStorage["mlflow.workflowType_v1"]`` and falls back to GenAI). A choice the user
makes in the sidebar is kept.

The gate exits when MLflow does, so the stack sees one process that is up or not.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import json
import subprocess
import sys
from pathlib import Path

import httpx
import uvicorn

OPEN = {"/health"}  # the stack's health probe; it tells nothing
UI_PAGES = {"/", "/index.html"}
ML_VIEW_FIRST = (b'<script>try{if(localStorage.getItem("mlflow.workflowType_v1")===null)'
                 b'localStorage.setItem("mlflow.workflowType_v1",JSON.stringify("machine_learning"))}catch(e){}</script>')
HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
       "transfer-encoding", "upgrade"}


class Gate:
    """An ASGI app: checks Host, Origin and token, then streams the request to MLflow's socket."""

    def __init__(self, token: str, port: int, socket_path: Path, state_hint: str = ".stack/mlflow-token"):
        self.token = token.encode()
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.origins = {f"http://{host}" for host in self.hosts}
        self.realm = f'Basic realm="nirgan MLflow: any user name, the password is in {state_hint}"'
        self.client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
                                        base_url="http://mlflow", timeout=httpx.Timeout(600.0, connect=5.0))

    def authorized(self, header: str | None) -> bool:
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip().encode()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip()).partition(b":")[2]
            except ValueError:
                return False
        else:
            return False
        return hmac.compare_digest(given, self.token)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if headers.get("host") not in self.hosts:
            return await _answer(send, 403, "a foreign Host may not use this MLflow server")
        if origin is not None and origin not in self.origins:
            return await _answer(send, 403, f"web pages from {origin} may not use this MLflow server")
        if scope["path"] not in OPEN and not self.authorized(headers.get("authorization")):
            return await _answer(send, 401, "the stack's MLflow token is required: MLFLOW_TRACKING_TOKEN, or log "
                                 "in with it as the password", [(b"www-authenticate", self.realm.encode())])
        await self.forward(scope, receive, send, headers)

    async def forward(self, scope, receive, send, headers: dict[str, str]) -> None:
        async def body():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                yield message.get("body", b"")
                if not message.get("more_body"):
                    return

        path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        # The token stays here: MLflow neither needs nor logs it.
        dropped = HOP | {"authorization"}
        ui_page = scope["method"] == "GET" and scope["path"] in UI_PAGES
        if ui_page:
            dropped = dropped | {"accept-encoding"}  # the page is edited below: have it plain
        out = [(k, v) for k, v in scope["headers"] if k.decode("latin-1").lower() not in dropped]
        has_body = "content-length" in headers or "transfer-encoding" in headers
        request = self.client.build_request(scope["method"], path, headers=out, content=body() if has_body else None)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            return await _answer(send, 502, f"MLflow behind the gate is not answering ({type(exc).__name__})")
        if ui_page and response.status_code == 200 and "text/html" in response.headers.get("content-type", ""):
            return await _send_ui_page(send, response)
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw if k.decode("latin-1").lower() not in HOP]})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _send_ui_page(send, response: httpx.Response) -> None:
    try:
        page = await response.aread()
    finally:
        await response.aclose()
    head = page.find(b"<head>")
    page = page[: head + 6] + ML_VIEW_FIRST + page[head + 6 :] if head >= 0 else page
    headers = [(k, v) for k, v in response.headers.raw
               if k.decode("latin-1").lower() not in HOP | {"content-length", "content-encoding", "etag"}]
    await send({"type": "http.response.start", "status": 200,
                "headers": [*headers, (b"content-length", str(len(page)).encode())]})
    await send({"type": "http.response.body", "body": page})


async def _answer(send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error_code": "PERMISSION_DENIED" if status == 403 else
                       "UNAUTHENTICATED" if status == 401 else "TEMPORARILY_UNAVAILABLE", "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the MLflow server command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    args.socket.unlink(missing_ok=True)
    mlflow = subprocess.Popen(command)  # same process group: the stack stops both together
    gate = Gate(args.token_file.read_text().strip(), args.port, args.socket, str(args.token_file))
    server = uvicorn.Server(uvicorn.Config(gate, host="127.0.0.1", port=args.port, lifespan="off",
                                           log_level="warning"))

    async def serve() -> None:
        async def watch() -> None:
            while mlflow.poll() is None:
                await asyncio.sleep(1.0)
            server.should_exit = True  # MLflow died: so does the gate, and the stack sees it

        watcher = asyncio.create_task(watch())
        await server.serve()
        watcher.cancel()

    asyncio.run(serve())
    if mlflow.poll() is None:
        mlflow.terminate()
        try:
            mlflow.wait(20)
        except subprocess.TimeoutExpired:
            mlflow.kill()
    return mlflow.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
