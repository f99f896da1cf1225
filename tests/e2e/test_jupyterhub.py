"""End to end: a real JupyterHub behind the proxy, one user's whole journey.

Everything the "browser" does goes through the proxy's PUBLIC port; only the route
checks use the proxy's REST API (as JupyterHub does). Parametrised over:

- proxy: hubgate (HUBGATE_BIN) and the CHP baseline (CHP_BIN; skip with
  HUBGATE_E2E_SKIP_CHP=1 or -m "not chp");
- mode: hub-managed (c.ConfigurableHTTPProxy.command = [BIN]) and external (the test
  starts the proxy, the hub has should_start = False);
- user name: a plain one, and ones that need care in routing/escaping.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, urljoin, urlparse

import pytest
import requests
import websocket  # websocket-client

from .browser import cookie_header, describe, execute, hub_login, xsrf_cookie
from .harness import PROXIES, wait_until

SPAWN_TIMEOUT = 60
KERNEL_TIMEOUT = 60
STOP_TIMEOUT = 30
HTTP_TIMEOUT = 20

LAST_ACTIVITY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

CASES = [
    pytest.param("hub-managed", "alice", id="hub-managed-alice"),
    pytest.param("external", "alice", id="external-alice"),
    # '@' stays literal in JupyterHub's URLs; the non-ASCII name is percent-encoded in
    # the URL and in the route POSTed to the proxy, and must come back decoded from
    # GET /api/routes (JupyterHub's own test_proxy uses these names).
    pytest.param("hub-managed", "has@", id="hub-managed-has@"),
    pytest.param("external", "秀樹", id="external-unicode"),
]


def escape(name: str) -> str:
    """JupyterHub's url_escape_path for a user name."""
    return quote(name, safe="@~")


def parse_last_activity(value: str) -> datetime:
    assert LAST_ACTIVITY_RE.match(value), f"last_activity {value!r} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode,username", CASES)
@pytest.mark.parametrize("proxy", PROXIES)
def test_user_journey(deployment_factory, proxy, mode, username):
    t0 = datetime.now(timezone.utc)
    phases: list[tuple[str, float]] = [("hub-start", time.monotonic())]

    def phase(name: str):
        phases.append((name, time.monotonic()))

    dep = deployment_factory(proxy, mode)
    base = dep.public_url
    uname = escape(username)
    user_prefix = f"/user/{uname}"
    route_key = f"/user/{username}"  # GET /api/routes keys are decoded paths
    s = requests.Session()

    # ---- the proxy's table holds the hub's route
    phase("routes")
    routes = dep.proxy_routes()
    assert "/" in routes, f"no '/' route: {routes}"
    assert routes["/"]["target"] == dep.hub_url, routes["/"]
    assert routes["/"].get("hub") is True and routes["/"].get("jupyterhub") is True, routes["/"]

    # ---- log in: GET the form, POST it with _xsrf
    phase("login")
    hub_login(s, base, username, "e2e-password", HTTP_TIMEOUT)
    assert any(c.name == "jupyterhub-hub-login" for c in s.cookies), list(s.cookies)

    # ---- spawn, the way the browser does (GET /hub/spawn -> spawn-pending page)
    phase("spawn")
    r = s.get(f"{base}/hub/spawn", allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert r.status_code == 302, describe(r)
    assert urlparse(r.headers["Location"]).path.startswith(
        (f"/hub/spawn-pending/{uname}", f"{user_prefix}/")
    ), describe(r)

    # ---- wait for it on the progress event stream (streamed through the proxy)
    phase("spawn-progress")
    events = []
    deadline = time.monotonic() + SPAWN_TIMEOUT
    ready = False
    with s.get(
        f"{base}/hub/api/users/{uname}/server/progress",
        stream=True,
        timeout=(HTTP_TIMEOUT, SPAWN_TIMEOUT),
        headers={"Accept": "text/event-stream"},
    ) as r:
        assert r.status_code == 200, describe(r)
        assert r.headers["Content-Type"].startswith("text/event-stream"), r.headers
        for line in r.iter_lines(decode_unicode=True):
            dep.check_alive()
            if line and line.startswith("data:"):
                ev = json.loads(line[len("data:"):])
                events.append(ev)
                if ev.get("ready"):
                    ready = True
                    break
                if ev.get("failed"):
                    break
            if time.monotonic() > deadline:
                break
    assert ready, f"spawn did not become ready within {SPAWN_TIMEOUT}s: {events}"

    # ---- the route is in the proxy, with JupyterHub's data and last_activity
    phase("route-check")

    def user_route():
        return dep.proxy_routes().get(route_key)

    route = wait_until(
        f"route {route_key} in GET /api/routes", user_route, 10, check=dep.check_alive
    )
    assert route["user"] == username, route
    assert route["server_name"] == "", route
    assert route["jupyterhub"] is True, route
    assert route["target"].startswith("http://127.0.0.1:"), route
    la_spawned = parse_last_activity(route["last_activity"])
    skew = timedelta(seconds=5)
    assert t0 - skew <= la_spawned <= datetime.now(timezone.utc) + skew, (route, t0)

    # ---- open the server: OAuth round trip through the hub, ending at /lab
    phase("oauth+lab")
    r = s.get(f"{base}{user_prefix}/lab", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, describe(r)
    assert urlparse(r.url).path == f"{user_prefix}/lab", describe(r)
    hops = [urlparse(h.url).path for h in r.history]
    assert any(p.startswith("/hub/api/oauth2/authorize") for p in hops), hops
    assert any(p == f"{user_prefix}/oauth_callback" for p in hops), hops
    assert "jupyter" in r.text.lower(), r.text[:500]

    # ---- REST through the proxy: contents and a new kernel (needs X-XSRFToken)
    phase("kernel-create")
    user_xsrf = xsrf_cookie(s, f"{user_prefix}/")
    r = s.get(f"{base}{user_prefix}/api/contents", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.json()["type"] == "directory", describe(r)
    r = s.post(
        f"{base}{user_prefix}/api/kernels",
        json={"name": "python3"},
        headers={"X-XSRFToken": user_xsrf},
        timeout=KERNEL_TIMEOUT,
    )
    assert r.status_code == 201, describe(r)
    kernel_id = r.json()["id"]

    # ---- kernel websocket through the proxy: print(6*7) -> "42\n"
    phase("websocket-exec")
    ws_path = f"{user_prefix}/api/kernels/{kernel_id}/channels"
    session_id = uuid.uuid4().hex
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{dep.public_port}{ws_path}?session_id={session_id}",
        cookie=cookie_header(s, ws_path),
        timeout=KERNEL_TIMEOUT,
    )
    try:
        stdout, seen = execute(ws, "print(6*7)", username, session_id, KERNEL_TIMEOUT)
    finally:
        ws.close()
    assert stdout == "42\n", (stdout, seen)

    # ---- last_activity moved with the traffic above
    phase("activity-check")
    route = dep.proxy_routes()[route_key]
    la_after = parse_last_activity(route["last_activity"])
    assert la_after > la_spawned, (
        f"last_activity did not advance after proxied traffic: {la_spawned} -> {la_after}"
    )

    # ---- stop the server (the user's own cookie + the hub's _xsrf)
    phase("stop")
    hub_xsrf = xsrf_cookie(s, "/hub/")
    r = s.delete(
        f"{base}/hub/api/users/{uname}/server",
        headers={"X-XSRFToken": hub_xsrf},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code in (202, 204), describe(r)

    def stopped():
        r = s.get(f"{base}/hub/api/users/{uname}", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, describe(r)
        return not r.json().get("servers")

    wait_until("the hub to report the server stopped", stopped, STOP_TIMEOUT, check=dep.check_alive)

    routes = dep.proxy_routes()
    assert route_key not in routes, f"route {route_key} still present after stop: {routes}"
    assert "/" in routes, routes

    # ---- the user's URL now reaches the hub (not a proxy 503 for a dead target)
    phase("after-stop")
    r = s.get(f"{base}{user_prefix}/lab", allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert r.status_code in (302, 424), describe(r)
    if r.status_code == 302:
        loc = urlparse(urljoin(r.url, r.headers["Location"]))
        assert loc.path.startswith(f"/hub/user/{uname}/"), describe(r)
    r = s.get(f"{base}{user_prefix}/lab", timeout=HTTP_TIMEOUT)
    assert r.status_code == 424, describe(r)
    assert urlparse(r.url).path.startswith(f"/hub/user/{uname}/"), describe(r)
    assert "not running" in r.text.lower(), r.text[:1000]

    phase("end")
    print(
        "phase timings: "
        + ", ".join(
            f"{a}={b_t - a_t:.2f}s" for (a, a_t), (_, b_t) in zip(phases, phases[1:])
        )
    )
