"""End to end: servers JupyterHub lets other users reach (sharing, roles) through hubgate
with [auth] and [auth.hub-grants], against a real JupyterHub 5+ from .venv and tokens from
the real test OpenID provider (tests/oidc/provider.mjs).

hubgate polls the hub's REST API every REFRESH seconds with a service token of the scopes
docs/security.md names. The test drives the hub's own REST API directly (its port, not
through hubgate) with an admin service token to share, revoke and change groups, and uses
alice's server as bob and carol would: hub login, the single-user server's OAuth round trip
with the hub, a contents request.

- bob: refused by hubgate on alice's server; alice shares it with him -> he uses it within
  the bound; the share is revoked -> hubgate refuses him within the bound, and closes the
  kernel websocket he opened through it within max-stale (reopening refused);
- carol: joins the hub group "helpers", whose role has access:servers!user=alice -> she
  uses alice's server; leaves the group -> refused within the bound;
- alice's named server "gpu" shared with the hub group "course": carol, a member, gets
  through hubgate to it (not to alice's default server);
- the hub stops answering (SIGSTOP) and the grants grow older than max-stale: bob, shared
  again, is refused (503, fail closed) while alice still uses her own server.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import time
import uuid
from urllib.parse import urlparse

import pytest
import requests
import websocket  # websocket-client

from .browser import cookie_header, describe, hub_login, xsrf_cookie
from .harness import XSRF_INPUT, wait_until
from .oidc import AuthSetup, OidcProvider, generate_key
from .test_auth import assert_hubgate_denial, bearer

HTTP_TIMEOUT = 20
KERNEL_TIMEOUT = 60
SPAWN_TIMEOUT = 90
REFRESH = 2  # auth.hub-grants.refresh-seconds
REQUEST_TIMEOUT = 2  # auth.hub-grants.request-timeout-seconds
MAX_STALE = 6  # auth.hub-grants.max-stale-seconds
# The documented bound for a grant or revocation to reach hubgate while the hub answers:
# refresh + one poll's requests (at most request-timeout each: groups, users, shares).
# Plus slack for a loaded machine.
BOUND = REFRESH + 3 * REQUEST_TIMEOUT + 4
GRANTS_TOKEN = secrets.token_hex(32)
ADMIN_TOKEN = secrets.token_hex(32)

HUB_CONFIG = f"""
c.JupyterHub.services = [
    {{"name": "hubgate-grants", "api_token": {GRANTS_TOKEN!r}}},
    {{"name": "test-admin", "api_token": {ADMIN_TOKEN!r}}},
]
c.JupyterHub.allow_named_servers = True
c.JupyterHub.load_groups = {{"helpers": {{"users": []}}, "course": {{"users": []}}}}
c.JupyterHub.load_roles = [
    # hubgate's token: exactly the scopes docs/security.md lists.
    {{
        "name": "hubgate-grants",
        "scopes": [
            "list:groups", "read:groups", "read:roles:groups", "read:shares",
            "list:users", "read:roles:users",
        ],
        "services": ["hubgate-grants"],
    }},
    {{
        "name": "test-admin",
        "scopes": [
            "admin:users", "admin:groups", "admin:servers", "shares",
            "read:users:name", "read:groups:name",
        ],
        "services": ["test-admin"],
    }},
    {{"name": "helpers", "scopes": ["access:servers!user=alice"], "groups": ["helpers"]}},
]
"""


class SharingAuth(AuthSetup):
    """[auth] plus [auth.hub-grants] pointing at the deployment's hub."""

    def extra_toml(self, dep) -> str:
        token_file = dep.dir / "hub-grants-token"
        token_file.write_text(GRANTS_TOKEN + "\n")
        return (
            "\n[auth.hub-grants]\n"
            f'hub-api-url = "{dep.hub_url}/hub/api"\n'
            f'token-file = "{token_file}"\n'
            f"refresh-seconds = {REFRESH}\n"
            f"max-stale-seconds = {MAX_STALE}\n"
            f"request-timeout-seconds = {REQUEST_TIMEOUT}\n"
            "miss-wait-ms = 2000\n"
            "\n[auth.hub-grants.roles]\n"
            'helpers = ["access:servers!user=alice"]\n'
        )


@pytest.fixture
def idp(tmp_path):
    p = OidcProvider(tmp_path, generate_key("e2e-share"), access_token_ttl=900)
    yield p
    p.stop()


def hub_api(dep, method: str, path: str, **kw) -> requests.Response:
    """The hub's REST API on its own port (not through hubgate), as the test's admin."""
    return requests.request(
        method,
        f"{dep.hub_url}/hub/api{path}",
        headers={"Authorization": f"token {ADMIN_TOKEN}"},
        timeout=HTTP_TIMEOUT,
        **kw,
    )


def hub_session(base: str, user: str, token: str) -> requests.Session:
    """A browser-like session through hubgate: the Bearer on every request, logged in at
    the hub (DummyAuthenticator)."""
    s = requests.Session()
    s.headers.update(bearer(token))
    hub_login(s, base, user, "e2e", HTTP_TIMEOUT)
    return s


SCOPE_INPUT = re.compile(r'name="scopes" value="([^"]+)"')


def use_alices_server(s: requests.Session, base: str, prefix="/user/alice") -> requests.Response:
    """Opens alice's server at `prefix` (the OAuth round trip with the hub on first use,
    confirming the hub's "Authorize access" page as a browser user would for someone else's
    server) and lists its contents; returns the first response that is not a success."""
    r = s.get(f"{base}{prefix}/lab", timeout=HTTP_TIMEOUT)
    if r.status_code == 200 and urlparse(r.url).path == "/hub/api/oauth2/authorize":
        xsrf = XSRF_INPUT.search(r.text)
        assert xsrf, r.text[:500]
        form = [("_xsrf", xsrf.group(1))] + [("scopes", m) for m in SCOPE_INPUT.findall(r.text)]
        r = s.post(r.url, data=form, headers={"Referer": r.url}, timeout=HTTP_TIMEOUT)
    if r.status_code != 200 or urlparse(r.url).path != f"{prefix}/lab":
        return r
    return s.get(f"{base}{prefix}/api/contents", timeout=HTTP_TIMEOUT)


def is_hubgate_denial(r: requests.Response, status: int) -> bool:
    try:
        body = r.json()
    except ValueError:
        return False
    return r.status_code == status and body.get("status") == status


def until(what: str, fn, bound: float, dep) -> float:
    """Polls `fn` until true; returns the seconds it took (fails past `bound`)."""
    started = time.monotonic()
    wait_until(what, fn, bound, interval=0.2, check=dep.check_alive)
    return time.monotonic() - started


def audit_count(dep, user: str, decision: str, why: str) -> int:
    log = dep.hub_log.read_text(errors="replace")
    return sum(
        1
        for ln in log.splitlines()
        if "audit" in ln and f"user={user} " in ln and f"decision={decision}" in ln
        and f"reason={why}" in ln
    )


@pytest.mark.timeout(420)
def test_shares_and_roles_through_hubgate(deployment_factory, idp):
    alice = idp.access_token("alice")
    bob = idp.access_token("bob")
    carol = idp.access_token("carol", amr="pwd,otp")  # MFA this time
    dep = deployment_factory(
        "hubgate", "hub-managed", auth=SharingAuth(idp.issuer, alice), hub_config=HUB_CONFIG
    )
    base = dep.public_url

    # ---- users at the hub; alice's server started by the admin
    r = hub_api(dep, "POST", "/users", json={"usernames": ["alice", "bob", "carol"]})
    assert r.status_code == 201, describe(r)
    r = hub_api(dep, "POST", "/users/alice/server")
    assert r.status_code in (201, 202), describe(r)

    def alice_ready():
        srv = hub_api(dep, "GET", "/users/alice").json().get("servers", {}).get("", {})
        return srv.get("ready") and "/user/alice" in dep.proxy_routes()

    wait_until("alice's server", alice_ready, SPAWN_TIMEOUT, interval=0.5, check=dep.check_alive)
    route = dep.proxy_routes()["/user/alice"]
    assert route["user"] == "alice" and route["server_name"] == "", route

    a = hub_session(base, "alice", alice)
    r = use_alices_server(a, base)
    assert r.status_code == 200 and r.json()["type"] == "directory", describe(r)

    # ---- bob: refused by hubgate (no share yet), with what to do next
    b = hub_session(base, "bob", bob)
    r = use_alices_server(b, base)
    assert_hubgate_denial(r, 403)
    assert "share" in r.json()["message"], r.json()
    r = b.get(f"{base}/user/alice/lab", headers={"Accept": "text/html"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 403 and "ask them to share it" in r.text, describe(r)

    # ---- alice shares her server with bob (at the hub) -> bob uses it within the bound
    r = hub_api(dep, "POST", "/shares/alice/", json={"user": "bob"})
    assert r.status_code == 200, describe(r)
    assert r.json()["scopes"] == ["access:servers!server=alice/"], r.json()
    took = until(
        "bob to reach alice's shared server",
        lambda: use_alices_server(b, base).status_code == 200,
        BOUND,
        dep,
    )
    r = use_alices_server(b, base)
    assert r.status_code == 200 and "json" in r.headers.get("Content-Type", ""), describe(r)
    assert r.json()["type"] == "directory", describe(r)
    print(f"share reached hubgate after {took:.1f}s (bound {BOUND}s)")
    assert audit_count(dep, "bob", "allow", "shared") >= 1

    # ---- bob opens a kernel websocket on alice's server through the share
    r = b.post(
        f"{base}/user/alice/api/kernels",
        json={"name": "python3"},
        headers={"X-XSRFToken": xsrf_cookie(b, "/user/alice/")},
        timeout=KERNEL_TIMEOUT,
    )
    assert r.status_code == 201, describe(r)
    ws_path = f"/user/alice/api/kernels/{r.json()['id']}/channels"
    ws_url = f"ws://127.0.0.1:{dep.public_port}{ws_path}?session_id={uuid.uuid4().hex}"
    ws_opts = dict(
        cookie=cookie_header(b, ws_path),
        header=[f"Authorization: Bearer {bob}"],
        timeout=KERNEL_TIMEOUT,
    )
    ws = websocket.create_connection(ws_url, **ws_opts)
    opened = time.monotonic()

    # ---- the share is revoked -> hubgate refuses bob within the bound
    r = hub_api(dep, "PATCH", "/shares/alice/", json={"user": "bob"})
    assert r.status_code == 200 and r.json() == {}, describe(r)
    took = until(
        "hubgate to refuse bob after the revocation",
        lambda: is_hubgate_denial(b.get(f"{base}/user/alice/api/contents", timeout=HTTP_TIMEOUT), 403),
        BOUND,
        dep,
    )
    print(f"revocation reached hubgate after {took:.1f}s (bound {BOUND}s)")
    # The websocket opened through the share is closed by hubgate within max-stale of its
    # opening; reopening it is refused.
    ws.settimeout(MAX_STALE + 10)
    try:
        while ws.connected:
            ws.recv()
    except websocket.WebSocketConnectionClosedException:
        pass
    finally:
        ws.close()
    lived = time.monotonic() - opened
    # (the close time is computed in whole seconds: up to 1 s early)
    assert MAX_STALE - 1.5 <= lived <= MAX_STALE + 3, f"bob's websocket lived {lived:.1f}s"
    closed = "websocket on /user/alice closed: its credential (or the hub grant that let it in)"
    assert closed in dep.hub_log.read_text(errors="replace"), "hubgate did not close the websocket"
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        websocket.create_connection(ws_url, **ws_opts)
    assert exc.value.status_code == 403
    assert audit_count(dep, "bob", "deny", "not_owner") >= 2

    # ---- carol: the "helpers" group's role grants access:servers!user=alice
    c = hub_session(base, "carol", carol)
    assert_hubgate_denial(use_alices_server(c, base), 403)
    r = hub_api(dep, "POST", "/groups/helpers/users", json={"users": ["carol"]})
    assert r.status_code == 200, describe(r)
    until(
        "carol to reach alice's server through her group's role",
        lambda: use_alices_server(c, base).status_code == 200,
        BOUND,
        dep,
    )
    assert audit_count(dep, "carol", "allow", "role") >= 1
    r = hub_api(dep, "DELETE", "/groups/helpers/users", json={"users": ["carol"]})
    assert r.status_code == 200, describe(r)
    until(
        "hubgate to refuse carol after she left the group",
        lambda: is_hubgate_denial(c.get(f"{base}/user/alice/api/contents", timeout=HTTP_TIMEOUT), 403),
        BOUND,
        dep,
    )

    # ---- a named server shared with a hub group: carol (a member) reaches that server only
    r = hub_api(dep, "POST", "/users/alice/servers/gpu")
    assert r.status_code in (201, 202), describe(r)

    def gpu_ready():
        srv = hub_api(dep, "GET", "/users/alice").json().get("servers", {}).get("gpu", {})
        return srv.get("ready") and "/user/alice/gpu" in dep.proxy_routes()

    wait_until("alice's gpu server", gpu_ready, SPAWN_TIMEOUT, interval=0.5, check=dep.check_alive)
    route = dep.proxy_routes()["/user/alice/gpu"]
    assert route["user"] == "alice" and route["server_name"] == "gpu", route
    r = hub_api(dep, "POST", "/groups/course/users", json={"users": ["carol"]})
    assert r.status_code == 200, describe(r)
    r = hub_api(dep, "POST", "/shares/alice/gpu", json={"group": "course"})
    assert r.status_code == 200, describe(r)
    # hubgate lets carol through to the gpu server. What the server then answers is the
    # hub's business: JupyterHub 6.1 leaves group shares out of the scopes of a user's
    # OAuth token (jupyterhub/scopes.py adds only the user's own shares for tokens), so the
    # server itself may refuse her: the stricter answer wins (docs/security.md).
    def carol_passes_hubgate():
        r = use_alices_server(c, base, "/user/alice/gpu")
        return r.status_code == 200 or (
            r.status_code == 403 and not is_hubgate_denial(r, 403) and "/user/alice/gpu/" in r.url
        )

    until("hubgate to let carol through to the gpu server", carol_passes_hubgate, BOUND, dep)
    assert audit_count(dep, "carol", "allow", "shared") >= 1
    # The share is for the gpu server: her default server stays closed to carol.
    assert_hubgate_denial(c.get(f"{base}/user/alice/api/contents", timeout=HTTP_TIMEOUT), 403)

    # ---- the hub stops answering: past max-stale bob is refused (503), alice is not
    r = hub_api(dep, "POST", "/shares/alice/", json={"user": "bob"})
    assert r.status_code == 200, describe(r)
    until(
        "bob to reach alice's server again",
        lambda: use_alices_server(b, base).status_code == 200,
        BOUND,
        dep,
    )
    os.kill(dep.hub.pid, signal.SIGSTOP)
    try:
        took = until(
            "hubgate to refuse bob once its grants are older than max-stale",
            lambda: is_hubgate_denial(b.get(f"{base}/user/alice/api/contents", timeout=HTTP_TIMEOUT), 503),
            MAX_STALE + REFRESH + 3 * REQUEST_TIMEOUT + 4,
            dep,
        )
        # Not at the first failed poll: the grants in hand stay in use until max-stale (the
        # last good poll was about REFRESH, plus a poll's duration, before the stop).
        assert took >= MAX_STALE - REFRESH - 2, took
        print(f"hub stopped: grants refused after {took:.1f}s (max-stale {MAX_STALE}s)")
        r = b.get(f"{base}/user/alice/lab", headers={"Accept": "text/html"}, timeout=HTTP_TIMEOUT)
        assert r.status_code == 503 and "try again in a few minutes" in r.text, describe(r)
        # alice's own requests do not depend on the hub's grants.
        r = a.get(f"{base}/user/alice/api/contents", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200 and r.json()["type"] == "directory", describe(r)
    finally:
        os.kill(dep.hub.pid, signal.SIGCONT)
    assert audit_count(dep, "bob", "deny", "grants_unavailable") >= 1
    log = dep.hub_log.read_text(errors="replace")
    assert GRANTS_TOKEN not in log and ADMIN_TOKEN not in log, "a hub token appears in the logs"
