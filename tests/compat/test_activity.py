"""[Activity tracking] last_activity semantics: CHP vs hubgate.

Pattern: read last_activity, wait a little (the timestamps have millisecond
resolution), do one thing, read again, compare "did it move" on both proxies.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from websockets.sync.client import connect

from .conftest import chp_check

TICK = 0.015  # > 1 ms timestamp resolution, so an update is visible
SETTLE = 0.2  # an update may land just after the response: poll this long for it


def seed(pair, be):
    pair.add_route("/user/alice", be.a.url)
    pair.add_route("/user/bob", be.b.url)
    pair.add_route("/user/redir", be.redirect.url)
    pair.add_route("/user/dead", be.dead_url)
    pair.add_route("/user/ws", be.ws.url)


def moved(p, keys, action):
    before = {k: p.last_activity(k) for k in keys}
    time.sleep(TICK)
    status = action(p)
    deadline = time.monotonic() + SETTLE
    while True:
        after = {k: p.last_activity(k) for k in keys}
        if all(after[k] != before[k] for k in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for k in keys:
        assert after[k] >= before[k], f"{p.name}: last_activity of {k} went backwards"
    return {"status": status, "moved": {k: after[k] != before[k] for k in keys}}


def status_of(method, target, body=None, headers=None):
    def act(p):
        r = p.request(method, target, body=body, headers=headers)
        return None if r is None else r.status
    return act


ACTIONS = [
    # (name, route key, action, expected "moved" in CHP)
    ("get-200", "/user/alice", status_of("GET", "/user/alice/x"), True),
    ("get-201", "/user/alice", status_of("GET", "/user/alice/x?_status=201"), True),
    ("get-204", "/user/alice", status_of("GET", "/user/alice/x?_status=204"), True),
    ("head-200", "/user/alice", status_of("HEAD", "/user/alice/x"), True),
    ("get-302-upstream", "/user/alice", status_of("GET", "/user/alice/x?_status=302"), False),
    ("get-302-redirect", "/user/redir", status_of("GET", "/user/redir/x"), False),
    ("get-404-upstream", "/user/alice", status_of("GET", "/user/alice/x?_status=404"), False),
    ("get-500-upstream", "/user/alice", status_of("GET", "/user/alice/x?_status=500"), False),
    ("get-503-dead", "/user/dead", status_of("GET", "/user/dead/x"), False),
    ("post-body-404", "/user/alice",
     status_of("POST", "/user/alice/x?_status=404", body=b"some body"), True),
    ("post-empty-404", "/user/alice",
     status_of("POST", "/user/alice/x?_status=404", body=b""), False),
    ("post-body-200", "/user/alice", status_of("POST", "/user/alice/x", body=b"b" * 10), True),
    # racy in CHP (body 'data' vs connect error): only the status is compared
    ("post-body-dead", "/user/dead", status_of("POST", "/user/dead/x", body=b"b" * 10), "racy"),
    ("healthz", "/user/alice", status_of("GET", "/_chp_healthz"), False),
    ("api-get", "/user/alice", lambda p: p.api("GET", "/api/routes/user/alice").status, False),
]


@pytest.mark.parametrize("name,key,action,expect", ACTIONS, ids=[a[0] for a in ACTIONS])
def test_activity(pf, be, name, key, action, expect):
    """[Activity tracking] GET 2xx updates last_activity; 3xx/4xx/5xx and proxy errors don't; a request body
    chunk does (even to a 404)."""
    pair = pf.get()
    seed(pair, be)
    if expect == "racy":
        pair.same(lambda p: moved(p, [key], action)["status"], name)
        return
    v = pair.same(lambda p: moved(p, [key], action), name)
    if expect is not None:
        chp_check(v["moved"][key] is expect, f"{name}: {v}")


def test_activity_only_matched_route(pf, be):
    """[Activity tracking] only the matched (longest-prefix) route is updated, not its parent or siblings."""
    pair = pf.get()
    seed(pair, be)
    pair.add_route("/user/alice/lab", be.b.url)
    keys = ["/user/alice", "/user/alice/lab", "/user/bob"]
    v = pair.same(lambda p: moved(p, keys, status_of("GET", "/user/alice/lab/x")),
                  "GET on nested route")
    chp_check(v["moved"] == {"/user/alice": False, "/user/alice/lab": True, "/user/bob": False},
              str(v))


def test_activity_escaped_request(pf, be):
    """[Activity tracking] an escaped request path updates the decoded route key."""
    pair = pf.get()
    seed(pair, be)
    v = pair.same(lambda p: moved(p, ["/user/alice"], status_of("GET", "/user/%61lice/x")),
                  "GET /user/%61lice/x")
    chp_check(v["moved"]["/user/alice"] is True, str(v))


def test_activity_root_route(pf, be):
    """[Activity tracking] the '/' route gets activity like any other."""
    pair = pf.get()
    pair.add_route("/", be.root.url)
    v = pair.same(lambda p: moved(p, ["/"], status_of("GET", "/hub/home")), "GET via /")
    chp_check(v["moved"]["/"] is True, str(v))


def test_activity_websocket(pf, be):
    """[Activity tracking] websocket: the upgrade and server->client frames do not update last_activity;
    a client->server frame does."""
    pair = pf.get()
    seed(pair, be)

    def go(p):
        out = {}
        key = "/user/ws"
        t0 = p.last_activity(key)
        time.sleep(TICK)
        sock = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        with connect(f"ws://127.0.0.1:{p.port}/user/ws/channels", sock=sock, open_timeout=5,
                     close_timeout=2, compression=None) as ws:
            json.loads(ws.recv(timeout=5))  # server -> client message
            time.sleep(SETTLE)
            t1 = p.last_activity(key)
            out["open+server-message"] = t1 != t0
            ws.send("client frame")
            ws.recv(timeout=5)
            deadline = time.monotonic() + SETTLE
            while (t2 := p.last_activity(key)) == t1 and time.monotonic() < deadline:
                time.sleep(0.01)
            out["client-frame"] = t2 != t1
        return out

    v = pair.same(go, "websocket activity")
    chp_check(v == {"open+server-message": False, "client-frame": True}, str(v))
