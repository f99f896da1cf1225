"""What a browser and a notebook do through the proxy: cookies, XSRF, and running code on a
kernel's websocket. Shared by the JupyterHub journeys (with and without authentication)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import requests

from .harness import XSRF_INPUT


def describe(r: requests.Response) -> str:
    """A response and its redirect chain, for assertion messages."""
    chain = " -> ".join(f"{h.status_code} {h.url}" for h in [*r.history, r])
    return f"{r.request.method} {chain}; headers={dict(r.headers)}; body={r.text[:500]!r}"


def hub_login(s: requests.Session, base: str, username: str, password: str, timeout: float):
    """Logs `s` in at the hub (DummyAuthenticator): GET the form, POST it with its _xsrf."""
    r = s.get(f"{base}/hub/login", timeout=timeout)
    assert r.status_code == 200, describe(r)
    m = XSRF_INPUT.search(r.text)
    assert m, f"no _xsrf input in the login form: {r.text[:1000]!r}"
    r = s.post(
        f"{base}/hub/login",
        data={"username": username, "password": password, "_xsrf": m.group(1)},
        allow_redirects=False,
        timeout=timeout,
    )
    assert r.status_code == 302, describe(r)


def cookie_header(session: requests.Session, path: str) -> str:
    """The Cookie header a browser would send for `path` on this host."""
    pairs = []
    # more specific paths first, as browsers do
    for c in sorted(session.cookies, key=lambda c: -len(c.path or "/")):
        cpath = c.path or "/"
        if path == cpath or path.startswith(cpath.rstrip("/") + "/") or cpath == "/":
            pairs.append(f"{c.name}={c.value}")
    return "; ".join(pairs)


def xsrf_cookie(session: requests.Session, path: str) -> str:
    for c in session.cookies:
        if c.name == "_xsrf" and c.path == path:
            return c.value
    have = [(c.name, c.path) for c in session.cookies]
    raise AssertionError(f"no _xsrf cookie for path {path!r}; cookies: {have}")


def execute(ws, code: str, username: str, session_id: str, timeout: float) -> tuple[str, list]:
    """Runs `code` on the kernel behind `ws` (websocket-client); returns its stdout and the
    (channel, msg_type) pairs seen. Fails unless the execution completed with status ok."""
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": username,
                    "session": session_id,
                    "date": datetime.now(timezone.utc).isoformat(),
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    # The reply (shell channel) and the output (iopub) travel on different kernel sockets,
    # so their order is not fixed: read until both the execute_reply and iopub's status
    # "idle" (sent after all the request's output) have arrived.
    stdout, reply, idle, seen = "", None, False, []
    deadline = time.monotonic() + timeout
    while (reply is None or not idle) and time.monotonic() < deadline:
        frame = ws.recv()
        if isinstance(frame, bytes):
            continue  # binary frames carry buffers; not expected for this code
        msg = json.loads(frame)
        seen.append((msg.get("channel"), msg.get("msg_type")))
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            stdout += msg["content"]["text"]
        elif msg["msg_type"] == "execute_reply":
            reply = msg
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    assert reply is not None, f"no execute_reply within {timeout}s; saw {seen}"
    assert idle, f"no iopub status idle within {timeout}s; saw {seen}"
    assert reply["content"]["status"] == "ok", reply["content"]
    return stdout, seen
