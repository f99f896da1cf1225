"""[Websockets] (+ [Request headers] websocket X-Forwarded-*, [Errors] websocket errors): CHP vs hubgate."""

from __future__ import annotations

import json
import socket

import pytest
from websockets.sync.client import connect

from .conftest import chp_check, documented_difference, raw_exchange, ws_upgrade_bytes

DROP = ("sec-websocket-key",)


def ws_view(p, path, headers=None, host=None, messages=("hello", "wörld")):
    """Open a websocket through the proxy; return what the backend saw plus the echoes."""
    # a Host other than 127.0.0.1: put it in the URI and hand over a connected socket
    uri = f"ws://{host or '127.0.0.1'}:{p.port}{path}"
    sock = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    with connect(uri, sock=sock, additional_headers=dict(headers or {}), open_timeout=5,
                 close_timeout=2, compression=None) as ws:
        first = json.loads(ws.recv(timeout=5))
        first["headers"] = {k: v for k, v in first["headers"].items() if k not in DROP}
        echoes = []
        for m in messages:
            ws.send(m)
            echoes.append(ws.recv(timeout=5))
        ws.send(b"\x00\x01binary")
        echoes.append(repr(ws.recv(timeout=5)))
        resp = {"status": ws.response.status_code,
                "upgrade": (ws.response.headers.get("Upgrade") or "").lower(),
                "connection": (ws.response.headers.get("Connection") or "").lower()}
    return {"response": resp, "seen": first, "echoes": echoes}


WS_FLAGS = {
    "default": (),
    "no-x-forward": ("--no-x-forward",),
    "custom-header": ("--custom-header", "X-A: 1", "--custom-header", "X-Forwarded-Proto: wss"),
    "no-include-prefix": ("--no-include-prefix",),
    "no-prepend-path": ("--no-prepend-path",),
    "change-origin": ("--change-origin",),
}

WS_HEADERS = {
    "plain": {},
    "xff": {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"},
    "origin-cookie": {"Origin": "http://hub.example.org", "Cookie": "a=b",
                      "X-Forwarded-Host": "outer.example.org"},
}


@pytest.mark.parametrize("hkind", list(WS_HEADERS))
@pytest.mark.parametrize("fkind", list(WS_FLAGS))
def test_websocket_forwarding(pf, be, fkind, hkind):
    """[Websockets; Request headers] websocket upgrade forwarded: path, x-forwarded-proto ws, no x-forwarded-host,
    custom headers; frames relayed both ways."""
    pair = pf.get(*WS_FLAGS[fkind])
    pair.add_route("/user/alice", be.ws.url + "/prefix")
    pair.add_route("/", be.root.url)
    v = pair.same(lambda p: ws_view(p, "/user/alice/api/kernels/1/channels?session_id=x",
                                    WS_HEADERS[hkind]), f"websocket {hkind}")
    seen = v["seen"]["headers"]
    if fkind == "default" and hkind == "plain":
        chp_check(seen.get("x-forwarded-proto") == "ws" and "x-forwarded-host" not in seen,
                  str(seen))


def test_websocket_host_routing(pf, be):
    """[Host routing; Websockets] websocket routed by Host."""
    pair = pf.get("--host-routing")
    pair.add_route("/alice.hub.example.org/user/alice", be.ws.url)
    pair.add_route("/", be.root.url)
    pair.same(lambda p: ws_view(p, "/user/alice/ws", host="alice.hub.example.org"),
              "websocket with Host")


def _status_line_view(raw: bytes):
    head = raw.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    lines = head.split("\r\n")
    hdrs = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    return {"status_line": lines[0], "content-length": hdrs.get("content-length")}


ERR_FLAGS = {
    "default": lambda be: (),
    "error-target": lambda be: ("--error-target", be.error.url + "/hub/error"),
}


@pytest.mark.parametrize("ekind", list(ERR_FLAGS))
@pytest.mark.parametrize("case", ["no-route", "dead-route", "bad-escape"])
def test_websocket_errors(pf, be, ekind, case):
    """[Websockets; Errors] websocket errors: bare 'HTTP/1.1 <code>' + Content-Length: 0, no error target."""
    pair = pf.get(*ERR_FLAGS[ekind](be))
    pair.add_route("/user/dead", be.dead_url)
    path = {"no-route": "/nothing/here?q=1", "dead-route": "/user/dead/ws",
            "bad-escape": "/user/dead/%"}[case]
    v = pair.same(lambda p: _status_line_view(raw_exchange(
        p.port, ws_upgrade_bytes(path, f"127.0.0.1:{p.port}"), timeout=5, head_only=True)),
        f"websocket upgrade {path}")
    code = {"no-route": "404", "dead-route": "503", "bad-escape": "500"}[case]
    chp_check(v["status_line"] == f"HTTP/1.1 {code}" and v["content-length"] == "0", str(v))


def test_websocket_to_plain_http_backend(pf, be):
    """[Websockets] upstream answers the upgrade with a normal HTTP response -> relayed to the client."""
    pair = pf.get()
    pair.add_route("/", be.root.url)

    def go(p):
        raw = raw_exchange(p.port, ws_upgrade_bytes("/plain?_status=200", f"127.0.0.1:{p.port}"),
                           timeout=5, head_only=True)
        head, _, body = raw.partition(b"\r\n\r\n")
        v = _status_line_view(raw)
        try:
            seen = json.loads(body)
            seen["headers"] = {k: x for k, x in seen["headers"].items() if k not in DROP}
            v["seen"] = seen
        except ValueError:
            v["body"] = body.decode(errors="replace")
        return v

    pair.same(go, "upgrade answered with plain HTTP")


def test_websocket_non_get_upgrade(pf, be):
    """[Websockets] only GET + Upgrade: websocket is proxied as a websocket."""
    pair = pf.get()
    pair.add_route("/", be.ws.url)

    def go(p):
        raw = raw_exchange(p.port, ws_upgrade_bytes("/x", f"127.0.0.1:{p.port}")
                           .replace(b"GET ", b"POST ", 1), timeout=5, head_only=True)
        return _status_line_view(raw)["status_line"].split(" ")[:2]

    # Documented difference: CHP drops the connection without a word; hubgate forwards a
    # non-GET upgrade as a plain request (without the hop-by-hop Upgrade field), so the
    # client gets the target's answer.
    documented_difference("non-GET upgrade forwarded as a plain request")
    line = go(pair.hg)
    assert line[0] == "HTTP/1.1" and line[1].isdigit(), line
