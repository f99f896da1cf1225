"""Loopback test backends for the side-by-side CHP/hubgate compatibility suite.

Every server binds 127.0.0.1 on a free port, runs in daemon threads and is
stopped explicitly by the fixtures (``stop()``).

* ``HttpBackend(mode="echo")``: answers every method with JSON
  ``{"backend", "method", "path", "headers", "body_len"}`` where ``path`` is the
  raw request target exactly as it arrived on the wire and ``headers`` maps
  lower-cased names to values (repeated headers joined with "\\n").
  Query controls (they are part of the echoed path too):
  ``_status=NNN`` answer with that status; ``_sleep=MS`` sleep first;
  ``_fixed=1`` answer a fixed ``text/plain`` body instead of the JSON.
  Every response carries ``X-Echo-Backend: <name>``.
* ``HttpBackend(mode="redirect")``: answers ``_code`` (default 302) with
  ``Location: http://127.0.0.1:<own port>/elsewhere?from=<raw path>``;
  ``_other=1`` points Location at another host instead.
* ``HttpBackend(mode="slow")``: sleeps ``slow_seconds`` then echoes.
* ``HttpBackend(mode="error")``: the --error-target server. Answers 200
  ``text/plain`` with body JSON ``{"code", "url", "path"}`` (``code`` = last path
  segment, ``url`` = decoded ``url`` query parameter, ``path`` = raw target) and
  a header ``X-Error-Server: yes`` that a proxy must not copy.
* ``WsBackend``: websocket echo server (``websockets`` package). On connect it
  sends JSON ``{"path", "headers"}`` of the upgrade request, then echoes every
  message it receives.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


_handed_out: set = set()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port(pair: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now.

    Chosen below the kernel's ephemeral range (32768+), so that outgoing
    connections (thousands on a busy loopback) cannot take it before the proxy
    binds it, and never handed out twice in one session. ``pair``: P+1 is free too.
    """
    for _ in range(1000):
        port = random.randrange(20000, 32700)
        if port in _handed_out or (pair and port + 1 in _handed_out):
            continue
        if _bindable(port) and (not pair or _bindable(port + 1)):
            _handed_out.add(port)
            if pair:
                _handed_out.add(port + 1)
            return port
    raise RuntimeError("no free port found")


def _headers_dict(msg) -> dict:
    out: dict = {}
    for k, v in msg.items():
        k = k.lower()
        out[k] = v if k not in out else out[k] + "\n" + v
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "compat-backend"
    sys_version = ""

    def log_message(self, *args):  # keep pytest output clean
        pass

    # --- body reading (content-length or chunked) ---------------------------
    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            data = b""
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until empty line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None):
        no_body = status in (204, 304) or status < 200
        if no_body:
            body = b""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if not no_body:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Echo-Backend", self.server.name)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        body = self._read_body()
        srv = self.server
        query = parse_qs(urlsplit(self.path).query)
        mode = srv.mode
        if mode == "slow":
            time.sleep(srv.slow_seconds)
        if "_sleep" in query:
            time.sleep(int(query["_sleep"][0]) / 1000.0)
        if mode == "redirect":
            code = int(query.get("_code", ["302"])[0])
            if "_other" in query:
                loc = "http://other.invalid:9/elsewhere"
            else:
                loc = f"http://127.0.0.1:{srv.server_port}/elsewhere?x=1"
            self._send(code, b"redirecting", "text/plain", {"Location": loc})
            return
        if mode == "error":
            parts = urlsplit(self.path)
            url = parse_qs(parts.query).get("url", [None])[0]
            payload = {
                "code": parts.path.rstrip("/").rsplit("/", 1)[-1],
                "url": url,
                "path": self.path,
            }
            self._send(200, json.dumps(payload, sort_keys=True).encode(), "text/plain",
                       {"X-Error-Server": "yes"})
            return
        status = int(query.get("_status", ["200"])[0])
        if "_fixed" in query:  # a body that does not depend on the request headers
            self._send(status, b"fixed body\n", "text/plain")
            return
        payload = {
            "backend": srv.name,
            "method": self.command,
            "path": self.path,
            "headers": _headers_dict(self.headers),
            "body_len": len(body),
        }
        self._send(status, json.dumps(payload, sort_keys=True).encode(), "application/json")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle


class HttpBackend:
    def __init__(self, name: str, mode: str = "echo", slow_seconds: float = 2.0):
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.srv.daemon_threads = True
        self.srv.name = name
        self.srv.mode = mode
        self.srv.slow_seconds = slow_seconds
        self.port = self.srv.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.srv.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join(5)


class WsBackend:
    """Websocket echo backend that first reports its upgrade request."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self.port = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("websocket backend did not start")
        self.url = f"http://127.0.0.1:{self.port}"

    async def _handler(self, ws):
        req = ws.request
        hdrs: dict = {}
        for k, v in req.headers.raw_items():
            k = k.lower()
            hdrs[k] = v if k not in hdrs else hdrs[k] + "\n" + v
        await ws.send(json.dumps({"path": req.path, "headers": hdrs}, sort_keys=True))
        try:
            async for msg in ws:
                await ws.send(msg)
        except Exception:
            pass

    async def _main(self):
        from websockets.asyncio.server import serve

        self._stop = self.loop.create_future()
        async with serve(self._handler, "127.0.0.1", 0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    def stop(self):
        if self._stop is not None:
            self.loop.call_soon_threadsafe(
                lambda: self._stop.done() or self._stop.set_result(None))
        self.thread.join(5)
