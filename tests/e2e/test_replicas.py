"""End to end with two hubgate replicas sharing one route table in Redis (README, "Replicas"; docs/design.md, "Control plane").

JupyterHub runs in external mode and talks to replica A's API only; the "browser" goes
through replica B, which learns every route from Redis. A user logs in, spawns, opens
JupyterLab, makes traffic and stops the server, all through B; the routes JupyterHub
writes through A show up in B's table, and the activity seen by B shows up in A's API
(which is what JupyterHub reads).

Reuses the harness's Deployment (external mode) and adds a redis-server and replica B,
all tagged like every other process of the deployment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from datetime import datetime
from urllib.parse import urlparse

import pytest
import requests

from .harness import XSRF_INPUT, Deployment, free_ports, tail, wait_until

HTTP_TIMEOUT = 20
SPAWN_TIMEOUT = 60
STOP_TIMEOUT = 30
FLUSH_MS = 300  # [storage] activity-flush-ms of both replicas


def redis_server() -> str:
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/sbin"]:
        p = os.path.join(d, "redis-server")
        if os.access(p, os.X_OK):
            return p
    pytest.fail("redis-server not found (scripts/setup.sh installs it)")


def redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


def stop_process(p: subprocess.Popen | None, timeout: float = 5):
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass


class ReplicatedDeployment(Deployment):
    """The harness's external deployment (JupyterHub + replica A) plus Redis and replica B."""

    def __init__(self, workdir):
        super().__init__("hubgate", "external", workdir)
        self.redis_port, self.b_port, self.b_api_port = free_ports(3)
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        config = self.dir / "hubgate-replica.toml"
        config.write_text(f"[storage]\nactivity-flush-ms = {FLUSH_MS}\n")
        self.proxy_cmd = self.proxy_cmd + [
            "--config", str(config),
            "--storage-backend", self.redis_url,
        ]  # fmt: skip
        self.b_url = f"http://127.0.0.1:{self.b_port}"
        self.b_api_url = f"http://127.0.0.1:{self.b_api_port}"
        self.redis_log = self.dir / "redis.log"
        self.b_log = self.dir / "proxy-b.log"
        self.redis: subprocess.Popen | None = None
        self.replica_b: subprocess.Popen | None = None
        self._files = []

    def _spawn(self, cmd: list[str], log, env) -> subprocess.Popen:
        f = open(log, "wb")
        self._files.append(f)
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_external_proxy(self):
        self.redis = self._spawn(
            [
                redis_server(),
                "--port", str(self.redis_port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
            ],
            self.redis_log,
            self._env(),
        )  # fmt: skip
        wait_until("redis-server", lambda: redis_ping(self.redis_port), 15, check=self.check_alive)
        super().start_external_proxy()  # replica A: the one JupyterHub's api_url names
        env = self._env()
        env["CONFIGPROXY_AUTH_TOKEN"] = self.proxy_token
        self.replica_b = self._spawn(
            self.proxy_cmd
            + [
                "--ip", "127.0.0.1",
                "--port", str(self.b_port),
                "--api-ip", "127.0.0.1",
                "--api-port", str(self.b_api_port),
                "--default-target", self.hub_url,
                "--error-target", f"{self.hub_url}/hub/error",
            ],
            self.b_log,
            env,
        )  # fmt: skip
        wait_until(
            "replica B ready (table loaded from Redis)",
            lambda: requests.get(f"{self.b_url}/_chp_healthz", timeout=2).status_code == 200,
            15,
            check=self.check_alive,
        )

    def check_alive(self):
        super().check_alive()
        for name, p in (("redis-server", self.redis), ("replica B", self.replica_b)):
            if p is not None and p.poll() is not None:
                raise AssertionError(f"{name} exited with code {p.returncode} (logs below)")

    def logs(self, lines: int = 150) -> str:
        out = super().logs(lines)
        out += f"===== proxy-b.log (last {lines} lines) =====\n" + tail(self.b_log, lines) + "\n"
        out += f"===== redis.log (last 40 lines) =====\n" + tail(self.redis_log, 40) + "\n"
        return out

    def stop(self) -> list[str]:
        # The hub first: it deletes its routes through replica A, which needs Redis.
        if self.hub is not None and self.hub.poll() is None:
            stop_process(self.hub, 20)
        stop_process(self.replica_b)
        stop_process(self.redis)
        killed = super().stop()  # replica A, then anything still tagged
        for f in self._files:
            f.close()
        return killed

    def routes(self, api_url: str) -> dict:
        r = requests.get(
            f"{api_url}/api/routes",
            headers={"Authorization": f"token {self.proxy_token}"},
            timeout=10,
        )
        assert r.status_code == 200, f"GET {api_url}/api/routes -> {r.status_code} {r.text!r}"
        return r.json()


@pytest.fixture
def replicated(request, tmp_path_factory):
    dep = ReplicatedDeployment(tmp_path_factory.mktemp("e2e-replicas"))
    try:
        dep.start()
        yield dep
    finally:
        killed = dep.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            print(f"\n--- logs of the replicated deployment in {dep.dir} ---")
            print(dep.logs())
        if killed:
            print(f"teardown had to SIGKILL: {killed}")


def parse_la(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.timeout(300)
def test_user_journey_through_the_other_replica(replicated):
    dep = replicated
    base = dep.b_url  # the browser only ever talks to replica B
    s = requests.Session()

    # The hub's route, written through A, is in B's table.
    def hub_route_on_b():
        return dep.routes(dep.b_api_url).get("/", {}).get("jupyterhub") is True

    wait_until("the hub's '/' route on replica B", hub_route_on_b, 10, check=dep.check_alive)
    assert requests.get(f"{base}/_chp_healthz", timeout=5).json()["store"] == "up"

    # Log in and spawn through B.
    r = s.get(f"{base}/hub/login", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text[:500]
    m = XSRF_INPUT.search(r.text)
    assert m, r.text[:1000]
    r = s.post(
        f"{base}/hub/login",
        data={"username": "alice", "password": "e2e-password", "_xsrf": m.group(1)},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 302, (r.status_code, r.text[:500])
    r = s.get(f"{base}/hub/spawn", allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert r.status_code == 302, (r.status_code, r.headers)

    def ready():
        r = s.get(f"{base}/hub/api/users/alice", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        return (r.json().get("servers") or {}).get("", {}).get("ready")

    wait_until("alice's server ready", ready, SPAWN_TIMEOUT, interval=0.5, check=dep.check_alive)

    # JupyterHub POSTed the route to A; B has it, with the hub's data.
    def route_on_b():
        return dep.routes(dep.b_api_url).get("/user/alice")

    route = wait_until("/user/alice on replica B", route_on_b, 10, check=dep.check_alive)
    assert route["user"] == "alice" and route["jupyterhub"] is True, route
    assert route == {**dep.routes(dep.api_url)["/user/alice"], "last_activity": route["last_activity"]}

    # Open JupyterLab through B (OAuth round trip through the hub, via B).
    r = s.get(f"{base}/user/alice/lab", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, (r.status_code, r.url, r.text[:300])
    assert urlparse(r.url).netloc == f"127.0.0.1:{dep.b_port}", r.url
    assert urlparse(r.url).path == "/user/alice/lab", r.url

    # Activity seen by B reaches A's API, which is what JupyterHub reads.
    before = parse_la(dep.routes(dep.api_url)["/user/alice"]["last_activity"])
    time.sleep(0.05)
    r = s.get(f"{base}/user/alice/api/contents", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, (r.status_code, r.text[:300])

    def activity_on_a():
        la = parse_la(dep.routes(dep.api_url)["/user/alice"]["last_activity"])
        return la > before

    wait_until(
        "replica B's activity in replica A's API",
        activity_on_a,
        FLUSH_MS * 2 / 1000 + 5,
        interval=0.1,
        check=dep.check_alive,
    )

    # Stop the server through B: JupyterHub deletes the route through A, B drops it.
    hub_xsrf = next(c.value for c in s.cookies if c.name == "_xsrf" and c.path == "/hub/")
    r = s.delete(
        f"{base}/hub/api/users/alice/server",
        headers={"X-XSRFToken": hub_xsrf},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code in (202, 204), (r.status_code, r.text[:300])

    def gone_from_b():
        return "/user/alice" not in dep.routes(dep.b_api_url)

    wait_until("/user/alice gone from replica B", gone_from_b, STOP_TIMEOUT, check=dep.check_alive)
    r = s.get(f"{base}/user/alice/lab", timeout=HTTP_TIMEOUT)
    assert r.status_code == 424, (r.status_code, r.url)
    assert "not running" in r.text.lower(), r.text[:500]
