"""End to end with authentication: JupyterHub (hub-managed) behind hubgate with [auth],
tokens from the real test OpenID provider (tests/oidc/provider.mjs).

JupyterHub keeps its DummyAuthenticator: hubgate's MFA check sits in front of it, so
every request carries `Authorization: Bearer <access token>` in addition to the hub's
own cookies (websocket upgrades included).

- alice (MFA) logs in, spawns, runs print(6*7) in a kernel through hubgate;
- bob (MFA) gets 403 from hubgate for alice's server (HTTP and websocket), and alice's
  single-user server never sees those requests (its log, and hubgate's audit line);
- carol (no MFA) gets 401 with the RFC 9470 step-up challenge (403 on a websocket
  upgrade), an expired token 401, no token 401.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import urlparse

import pytest
import requests
import websocket  # websocket-client

from .browser import cookie_header, describe, execute, hub_login, xsrf_cookie
from .harness import wait_until
from .oidc import AuthSetup, OidcProvider, generate_key, jwt_claims

HTTP_TIMEOUT = 20
SPAWN_TIMEOUT = 60
KERNEL_TIMEOUT = 60


def assert_hubgate_denial(r: requests.Response, status: int):
    """hubgate's own JSON denial (not the hub's or the single-user server's)."""
    assert r.status_code == status, describe(r)
    assert r.headers.get("Content-Type", "").startswith("application/json"), describe(r)
    body = r.json()
    assert body.get("status") == status and isinstance(body.get("message"), str), describe(r)
    if status == 401:
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), describe(r)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def idp(tmp_path):
    p = OidcProvider(tmp_path, generate_key("e2e-rs256"), access_token_ttl=900)
    yield p
    p.stop()


@pytest.mark.timeout(300)
def test_mfa_tokens_in_front_of_jupyterhub(deployment_factory, idp):
    alice = idp.access_token("alice")
    bob = idp.access_token("bob")
    carol = idp.access_token("carol")  # password only: no MFA
    assert jwt_claims(alice)["amr"] == ["pwd", "otp"]
    assert jwt_claims(carol)["acr"].endswith("/sfa")
    now = int(time.time())
    expired = idp.mint(idp.claims("alice", exp=now - 120, iat=now - 900))

    dep = deployment_factory("hubgate", "hub-managed", auth=AuthSetup(idp.issuer, alice))
    base = dep.public_url
    ws_base = f"ws://127.0.0.1:{dep.public_port}"

    # ---- the hub itself is behind hubgate; its login page is public
    r = requests.get(f"{base}/hub/api/", timeout=HTTP_TIMEOUT)
    assert_hubgate_denial(r, 401)
    assert requests.get(f"{base}/_chp_healthz", timeout=HTTP_TIMEOUT).status_code == 200

    # ---- alice: hub login (DummyAuthenticator), with her Bearer on every request
    s = requests.Session()
    s.headers.update(bearer(alice))
    hub_login(s, base, "alice", "e2e", HTTP_TIMEOUT)

    # ---- spawn and wait on the progress stream (through hubgate)
    r = s.get(f"{base}/hub/spawn", allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert r.status_code == 302, describe(r)
    ready, events = False, []
    with s.get(
        f"{base}/hub/api/users/alice/server/progress",
        stream=True,
        timeout=(HTTP_TIMEOUT, SPAWN_TIMEOUT),
        headers={"Accept": "text/event-stream"},
    ) as r:
        assert r.status_code == 200, describe(r)
        for line in r.iter_lines(decode_unicode=True):
            dep.check_alive()
            if line and line.startswith("data:"):
                ev = json.loads(line[len("data:"):])
                events.append(ev)
                if ev.get("ready") or ev.get("failed"):
                    ready = bool(ev.get("ready"))
                    break
    assert ready, f"spawn failed: {events}"
    route = wait_until(
        "alice's route", lambda: dep.proxy_routes().get("/user/alice"), 10, check=dep.check_alive
    )
    assert route["user"] == "alice", route

    # ---- open the server (OAuth round trip with the hub), contents, a kernel
    r = s.get(f"{base}/user/alice/lab", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and urlparse(r.url).path == "/user/alice/lab", describe(r)
    user_xsrf = xsrf_cookie(s, "/user/alice/")
    r = s.get(f"{base}/user/alice/api/contents", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.json()["type"] == "directory", describe(r)
    r = s.post(
        f"{base}/user/alice/api/kernels",
        json={"name": "python3"},
        headers={"X-XSRFToken": user_xsrf},
        timeout=KERNEL_TIMEOUT,
    )
    assert r.status_code == 201, describe(r)
    kernel_id = r.json()["id"]
    ws_path = f"/user/alice/api/kernels/{kernel_id}/channels"

    # ---- kernel websocket through hubgate, Bearer on the upgrade: print(6*7)
    session_id = uuid.uuid4().hex
    ws = websocket.create_connection(
        f"{ws_base}{ws_path}?session_id={session_id}",
        cookie=cookie_header(s, ws_path),
        header=[f"Authorization: Bearer {alice}"],
        timeout=KERNEL_TIMEOUT,
    )
    try:
        stdout, seen = execute(ws, "print(6*7)", "alice", session_id, KERNEL_TIMEOUT)
        assert stdout == "42\n", (stdout, seen)
    finally:
        ws.close()

    # ---- a request of alice's that reaches her server (shows its log records requests)
    seen_probe = f"probe-{uuid.uuid4().hex}"
    r = s.get(f"{base}/user/alice/api/contents/{seen_probe}", timeout=HTTP_TIMEOUT)
    assert r.status_code == 404, describe(r)

    # ---- bob: 403 from hubgate for alice's server; it never gets there
    bob_probe = f"probe-{uuid.uuid4().hex}"
    bs = requests.Session()
    bs.headers.update(bearer(bob))
    r = bs.get(f"{base}/user/alice/api/contents/{bob_probe}", timeout=HTTP_TIMEOUT)
    assert_hubgate_denial(r, 403)
    r = bs.get(f"{base}/user/alice/lab", headers={"Accept": "text/html"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 403, describe(r)
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        websocket.create_connection(
            f"{ws_base}{ws_path}?session_id={bob_probe}",
            cookie=cookie_header(s, ws_path),  # even with alice's hub cookies
            header=[f"Authorization: Bearer {bob}"],
            timeout=HTTP_TIMEOUT,
        )
    assert exc.value.status_code == 403
    # bob's own hub pages are fine.
    r = bs.get(f"{base}/hub/api/", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, describe(r)

    # ---- no MFA: 401 with the RFC 9470 step-up challenge; expired: 401; none: 401
    for path in ("/user/alice/api/contents", "/hub/api/"):
        r = requests.get(f"{base}{path}", headers=bearer(carol), timeout=HTTP_TIMEOUT)
        assert_hubgate_denial(r, 401)
        challenge = r.headers.get("WWW-Authenticate", "")
        assert 'error="insufficient_user_authentication"' in challenge, challenge
        assert 'acr_values="https://refeds.org/profile/mfa"' in challenge, challenge
        assert 'max_age="43200"' in challenge, challenge
        r = requests.get(f"{base}{path}", headers=bearer(expired), timeout=HTTP_TIMEOUT)
        assert_hubgate_denial(r, 401)
        r = requests.get(f"{base}{path}", timeout=HTTP_TIMEOUT)
        assert_hubgate_denial(r, 401)
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        websocket.create_connection(
            f"{ws_base}{ws_path}",
            header=[f"Authorization: Bearer {carol}"],
            timeout=HTTP_TIMEOUT,
        )
    assert exc.value.status_code == 403  # an upgrade keeps its 403, with the challenge
    ws_headers = {k.lower(): v for k, v in (exc.value.resp_headers or {}).items()}
    assert "insufficient_user_authentication" in ws_headers.get("www-authenticate", ""), ws_headers

    # ---- the logs: hubgate audited bob's denial; alice's server never saw bob
    def audit_line():
        for line in dep.hub_log.read_text(errors="replace").splitlines():
            if bob_probe in line and "decision=deny" in line:
                return line
        return None

    line = wait_until("hubgate's audit line for bob", audit_line, 10)
    assert "user=bob" in line and "reason=not_owner" in line, line
    log = dep.hub_log.read_text(errors="replace")
    assert seen_probe in log, "alice's server log does not record requests; the check below would be vacuous"
    leaked = [
        ln for ln in log.splitlines() if bob_probe in ln and "[hubgate]" not in ln
    ]
    assert not leaked, f"bob's request reached something behind hubgate: {leaked}"
    for name, tok in (("alice", alice), ("bob", bob), ("carol", carol), ("expired", expired)):
        assert tok.split(".")[2] not in log, f"{name}'s token appears in the logs"

    # ---- stop alice's server (her hub cookie + _xsrf, and the Bearer)
    r = s.delete(
        f"{base}/hub/api/users/alice/server",
        headers={"X-XSRFToken": xsrf_cookie(s, "/hub/")},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code in (202, 204), describe(r)
    wait_until(
        "the route to go",
        lambda: "/user/alice" not in dep.proxy_routes(),
        30,
        check=dep.check_alive,
    )
