"""The web view's server: Starlette on uvicorn, in a thread of the driver's process.

Rules:
- Binds 127.0.0.1 only, on a free port chosen by the OS; every route but the static assets
  needs the run's token (``?token=``, made per run with ``secrets``), so another local user
  who finds the port sees nothing. The URL with its token is what the CLI prints.
- ``/api/events`` is a server-sent-event stream: ``state`` events (the driver's latest
  snapshot, ``snapshot.LiveFeed``) at most every ``PUSH_S`` and only when it changed, and
  ``files`` events (curves, held-out points, samples; ``runfiles.RunFiles``) when the run
  folder grew. The driver never waits on a client: it swaps a reference, this thread reads it.
- ``/api/logs/<node>`` returns the last lines of each replica's log.
- A finished run is served from its files (``areal-flow view``): the last snapshot the live
  view saved (``web/snapshot.json``) and the same curves.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from areal_flow.web.runfiles import RunFiles, node_logs
from areal_flow.web.snapshot import LiveFeed

PUSH_S = 0.25  # at most 4 pushes a second per client
STATIC = Path(__file__).parent / "static"
SNAPSHOT_FILE = Path("web") / "snapshot.json"


class WebView:
    """Serves one run's page; ``start()`` returns its URL, ``stop()`` ends it (idempotent)."""

    def __init__(
        self,
        run_dir: Path,
        layout: dict[str, Any],
        feed: LiveFeed | None = None,
        saved: dict[str, Any] | None = None,
        t0: float | None = None,
        port: int = 0,
    ) -> None:
        self.run_dir = run_dir
        self.layout = layout
        self.feed = feed
        self.saved = saved  # a finished run's last snapshot (no feed)
        self.files = RunFiles(run_dir, t0=t0)
        self.files_version = 0
        self.token = secrets.token_urlsafe(16)
        self.port = port
        self.url = ""
        self._closing = False
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app(),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="web-view", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError(f"the web view could not start on 127.0.0.1:{self.port}")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}/?token={self.token}"
        return self.url

    def stop(self) -> None:
        """Save the last snapshot (for ``areal-flow view``), close streams, stop the server."""
        self.save_snapshot()
        self._closing = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def save_snapshot(self) -> None:
        state = self.feed.latest if self.feed is not None else None
        if state is not None:
            path = self.run_dir / SNAPSHOT_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(state))

    # -- the app ---------------------------------------------------------------------------

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles

        def allowed(request: Request) -> bool:
            given = request.query_params.get("token", "")
            return secrets.compare_digest(given.encode(), self.token.encode())

        def denied() -> Response:
            return Response("this page needs the run's token: open the URL the run printed", 403)

        async def index(request: Request) -> Response:
            if not allowed(request):
                return denied()
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

        async def layout(request: Request) -> Response:
            return JSONResponse(self.layout) if allowed(request) else denied()

        async def logs(request: Request) -> Response:
            if not allowed(request):
                return denied()
            name = request.path_params["node"]
            node = next((n for n in self.layout["nodes"] if n["name"] == name), None)
            if node is None:
                return JSONResponse({"error": f"no node {name!r}"}, status_code=404)
            return JSONResponse(node_logs(self.run_dir, name, node["replicas"]))

        async def events(request: Request) -> Response:
            if not allowed(request):
                return denied()
            return StreamingResponse(
                self._events(request),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )

        return Starlette(
            routes=[
                Route("/", index),
                Route("/api/layout", layout),
                Route("/api/events", events),
                Route("/api/logs/{node}", logs),
                Mount("/static", StaticFiles(directory=STATIC), name="static"),
            ]
        )

    def _state(self) -> dict[str, Any] | None:
        return self.feed.latest if self.feed is not None else self.saved

    async def _events(self, request: Any) -> AsyncIterator[str]:
        sent_seq, sent_files = -1, -1
        yield "retry: 1000\n\n"
        while not self._closing:
            if self.files.refresh():  # one reader shared by every client: count its changes
                self.files_version += 1
            if sent_files != self.files_version:
                sent_files = self.files_version
                yield _event("files", self.files.view())
            state = self._state()
            if state is not None and state.get("seq", 0) != sent_seq:
                sent_seq = state.get("seq", 0)
                yield _event("state", state)
            await asyncio.sleep(PUSH_S)
            if await request.is_disconnected():
                break


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def load_saved(run_dir: Path) -> dict[str, Any] | None:
    """The last snapshot a live view saved in ``run_dir``, if any."""
    path = run_dir / SNAPSHOT_FILE
    return json.loads(path.read_text()) if path.exists() else None
