"""`hubgate-load hub` against a real JupyterHub behind hubgate: 2 simulated users log in at
the hub's form, start their servers, open JupyterLab's API, run print(6*7) on a kernel
websocket every second for ~15 s while holding 2 idle websockets each, and stop. The
JSON report must show every stage succeeding, and the proxy's CPU and RSS. And once with
a hub API token instead of the login form (hubs whose login is elsewhere)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests

from .browser import xsrf_cookie
from .harness import REPO, XSRF_INPUT, _resolve, wait_until

USERS = 2
SESSION_S = 15
IDLE_WS = 2


def load_bin():
    path = _resolve(os.environ.get("HUBGATE_LOAD_BIN", "target/debug/hubgate-load"))
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"hubgate-load not found at {path}: run `cargo build` or set HUBGATE_LOAD_BIN")
    return path


@pytest.mark.timeout(300)
def test_hub_mode_two_users(deployment_factory, tmp_path):
    dep = deployment_factory("hubgate", "hub-managed")
    proxy_pid = int((dep.dir / "proxy.pid").read_text().strip())
    out = tmp_path / "hub-load.json"
    cmd = [
        str(load_bin()), "hub", f"{dep.public_url}/",
        "--users", str(USERS), "--ramp", "2s",
        "--session", f"{SESSION_S}s", "--exec-interval", "1s",
        "--idle-ws", str(IDLE_WS),
        "--spawn-timeout", "90s", "--kernel-timeout", "60s",
        "--proxy-pid", str(proxy_pid),
        "--json", str(out),
    ]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    print(r.stdout)
    print(r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-3000:]
    # Live progress on stderr, the table on stdout.
    assert "hubgate-load hub:" in r.stderr and "users 2/2" in r.stderr, r.stderr[-2000:]
    assert "first_kernel_reply" in r.stdout, r.stdout

    rep = json.loads(out.read_text())
    st = rep["stages"]
    assert rep["mode"] == "hub" and rep["users"] == USERS, rep
    for stage in ("login", "spawn", "lab", "first_kernel_reply", "stop"):
        assert st[stage]["ok"] == USERS and st[stage]["failed"] == 0, (stage, st[stage])
        assert st[stage]["ms"]["p50"] > 0, (stage, st[stage])
    # One execution a second for ~15 s per user (the first is the kernel stage's).
    assert st["execute"]["failed"] == 0, st["execute"]
    assert st["execute"]["ok"] >= USERS * (SESSION_S - 3), st["execute"]
    assert 0 < st["execute"]["ms"]["p50"] <= st["execute"]["ms"]["p99"], st["execute"]
    assert st["idle_ws"] == {**st["idle_ws"], "ok": USERS * IDLE_WS, "failed": 0}, st["idle_ws"]
    assert rep["users_completed"] == USERS, rep
    proxy = rep["proxy"]
    assert proxy["pid"] == proxy_pid and proxy["cpu_us"] > 0 and proxy["rss_peak_kib"] > 0, proxy

    # Every server was stopped: the hub removed their routes from the proxy.
    wait_until(
        "the users' routes to go",
        lambda: not [k for k in dep.proxy_routes() if k.startswith("/user/")],
        30,
        check=dep.check_alive,
    )


@pytest.mark.timeout(240)
def test_hub_mode_with_hub_api_tokens(deployment_factory, tmp_path):
    """A hub whose login is elsewhere: the user's own hub API token stands for the browser
    (`--api-tokens`), on the hub's API, the single-user server and the kernel websocket."""
    dep = deployment_factory("hubgate", "hub-managed")
    base = dep.public_url
    # The user makes a token for itself, as on the hub's token page.
    s = requests.Session()
    r = s.get(f"{base}/hub/login", timeout=20)
    m = XSRF_INPUT.search(r.text)
    assert r.status_code == 200 and m, r.text[:300]
    r = s.post(
        f"{base}/hub/login",
        data={"username": "tok-user", "password": "x", "_xsrf": m.group(1)},
        allow_redirects=False,
        timeout=20,
    )
    assert r.status_code == 302, r.text[:300]
    r = s.post(
        f"{base}/hub/api/users/tok-user/tokens",
        json={"note": "hubgate-load", "expires_in": 3600},
        headers={"X-XSRFToken": xsrf_cookie(s, "/hub/")},
        timeout=20,
    )
    assert r.status_code == 201, r.text
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"# NAME TOKEN\ntok-user {r.json()['token']}\n")

    out = tmp_path / "hub-load.json"
    cmd = [
        str(load_bin()), "hub", f"{base}/", "--users", "1", "--api-tokens", str(tokens),
        "--session", "6s", "--exec-interval", "1s", "--idle-ws", "1",
        "--spawn-timeout", "90s", "--json", str(out), "--no-progress",
    ]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=200)
    print(r.stdout, r.stderr[-2000:])
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["settings"]["login"] == "api-token", rep["settings"]
    for stage in ("login", "spawn", "lab", "first_kernel_reply", "idle_ws", "stop"):
        assert rep["stages"][stage]["ok"] == 1, (stage, rep["stages"][stage])
    assert rep["stages"]["execute"]["ok"] >= 3, rep["stages"]["execute"]
    assert rep["users_completed"] == 1, rep
