"""`hubgate-load hub` against a real JupyterHub behind hubgate: 2 simulated users log in at
the hub's form, start their servers, open JupyterLab's API, run print(6*7) on a kernel
websocket every second for ~15 s while holding 2 idle websockets each, and stop. The
JSON report must show every stage succeeding, and the proxy's CPU and RSS."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .harness import REPO, _resolve, wait_until

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
