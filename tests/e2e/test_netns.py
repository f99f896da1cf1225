"""hubgate replicas and Redis on four "hosts": network namespaces with delay, loss and a
partition.

The test creates four network namespaces: one runs `redis-server`, three run a hubgate
replica each. Each replica namespace has two veth links to the test's own (root) namespace:

- a *store link*: the replica reaches Redis only through a relay the test runs on the root
  side of this link (asyncio, below), which forwards to the Redis namespace and adds a
  one-way delay of 0.5–2.5 ms per chunk (RTT 1–5 ms) and, on 1 % of chunks, a stall of
  200 ms before that chunk and everything after it in the same direction. This kernel has
  no `netem` qdisc, and a TCP relay cannot drop a packet, so loss is modelled as what TCP
  turns it into: a retransmission after the minimum RTO (200 ms on Linux), with
  head-of-line blocking.
- a *client link*: the test's requests to the replica's proxy and API, and the replica's
  requests to the backend (an HTTP server of the test on an address of the root namespace),
  go over it undelayed.

Measured: route convergence — from a write acknowledged by replica 1's API to the route
being served by replicas 2 and 3 (polled through their proxy port every millisecond) —
over WRITES writes, p50/p99/max printed and p99 bounded. Then replica 3's store link goes
down (`ip link set … down`: a partition from Redis, no reset sent): routes keep being written
through replica 1; the test records what replica 3 served meanwhile (old routes: must reach
the backend; new routes: still unknown to it, so the default target answers); the link comes
back up and replica 3 must converge. Namespaces, links and addresses are removed in
`finally`, whatever happens. Skips with the reason when not root or namespaces cannot be
created.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from .harness import hubgate_bin, tail, wait_until

WRITES = 200
DELAY_MS = (0.5, 2.5)  # one way, per chunk
LOSS = 0.01
STALL_MS = 200  # Linux's minimum retransmission timeout
PARTITION_WRITES = 20
TOKEN = "netns-test-token"
REDIS_PORT = 6379
PROXY_PORT, API_PORT = 8000, 8001


def sh(*args: str, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=20)


class Net:
    """The namespaces and links; every name and subnet derived from the test's pid."""

    def __init__(self):
        k = os.getpid() % 10000
        self.prefix = f"hg{k}"
        b = 200 + os.getpid() % 50
        self.ns_redis = f"{self.prefix}-redis"
        self.ns = {r: f"{self.prefix}-r{r}" for r in (1, 2, 3)}
        self.redis_ip = f"10.{b}.0.2"
        self.relay_ip = {r: f"10.{b}.{r}.1" for r in (1, 2, 3)}  # root side of store links
        self.store_ip = {r: f"10.{b}.{r}.2" for r in (1, 2, 3)}
        self.client_ip = {r: f"10.{b}.{10 + r}.2" for r in (1, 2, 3)}
        self.gateway = {r: f"10.{b}.{10 + r}.1" for r in (1, 2, 3)}
        self.backend_ip = f"10.{b}.250.1"
        self.links: list[str] = []  # root-side ends
        self.namespaces: list[str] = []
        self.backend_addr_added = False

    def store_link(self, r: int) -> str:
        return f"{self.prefix}s{r}"

    def veth(self, root_end: str, ns: str, root_ip: str, ns_ip: str):
        ns_end = root_end + "n"
        sh("ip", "link", "add", root_end, "type", "veth", "peer", "name", ns_end)
        self.links.append(root_end)
        sh("ip", "link", "set", ns_end, "netns", ns)
        sh("ip", "addr", "add", f"{root_ip}/24", "dev", root_end)
        sh("ip", "link", "set", root_end, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/24", "dev", ns_end)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_end, "up")

    def create(self):
        for ns in (self.ns_redis, *self.ns.values()):
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        self.veth(f"{self.prefix}rd", self.ns_redis, self.redis_ip.rsplit(".", 1)[0] + ".1", self.redis_ip)
        sh("ip", "addr", "add", f"{self.backend_ip}/32", "dev", "lo")
        self.backend_addr_added = True
        for r, ns in self.ns.items():
            self.veth(self.store_link(r), ns, self.relay_ip[r], self.store_ip[r])
            self.veth(f"{self.prefix}c{r}", ns, self.gateway[r], self.client_ip[r])
            sh("ip", "netns", "exec", ns, "ip", "route", "add", f"{self.backend_ip}/32",
               "via", self.gateway[r])  # fmt: skip

    def destroy(self):
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)  # takes the veth peers with it
        for link in self.links:
            sh("ip", "link", "del", link, check=False)
        if self.backend_addr_added:
            sh("ip", "addr", "del", f"{self.backend_ip}/32", "dev", "lo", check=False)


def can_create_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    name = f"hgprobe{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


# ---------------------------------------------------------------- the relay


class Relay:
    """TCP relay on the root side of each store link: delay, and loss as RTO stalls."""

    def __init__(self, upstream: tuple[str, int], seed: int = 1):
        self.upstream = upstream
        self.rng = random.Random(seed)
        self.stalls = 0
        self.chunks = 0
        self.loop = asyncio.new_event_loop()
        self.servers = []
        self.tasks: set[asyncio.Task] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def listen(self, host: str, port: int):
        fut = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._client, host, port), self.loop)
        self.servers.append(fut.result(10))

    async def _client(self, reader, writer):
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        for src, dst in ((reader, up_w), (up_r, writer)):
            t = self.loop.create_task(self._pump(src, dst))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def _pump(self, src, dst):
        queue: asyncio.Queue = asyncio.Queue()
        sender = self.loop.create_task(self._send(queue, dst))
        self.tasks.add(sender)
        sender.add_done_callback(self.tasks.discard)
        last = 0.0
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                now = self.loop.time()
                self.chunks += 1
                delay = self.rng.uniform(*DELAY_MS) / 1000
                if self.rng.random() < LOSS:
                    self.stalls += 1
                    delay += STALL_MS / 1000
                last = max(last, now + delay)  # in order, as TCP delivers
                queue.put_nowait((last, data))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            queue.put_nowait((0, None))
            with suppress(Exception):
                await sender

    async def _send(self, queue, dst):
        try:
            while True:
                at, data = await queue.get()
                if data is None:
                    break
                wait = at - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            with suppress(Exception):
                dst.close()

    def close(self):
        async def stop():
            for s in self.servers:
                s.close()
            tasks = list(self.tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ---------------------------------------------------------------- backends


class Echo(BaseHTTPRequestHandler):
    name = "backend"

    def do_GET(self):  # noqa: N802 - http.server's name
        body = f"{self.name} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(name: str, host: str) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer((host, 0), type(f"Echo_{name}", (Echo,), {"name": name}))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


# ---------------------------------------------------------------- the deployment


@pytest.fixture
def hosts(request, tmp_path):
    why = can_create_namespaces()
    if why:
        pytest.skip(f"network namespaces: {why}")
    net = Net()
    procs: dict[str, subprocess.Popen] = {}
    files = []
    relay = None
    servers = []

    def spawn(name, ns, cmd, env=None):
        f = open(tmp_path / f"{name}.log", "wb")
        files.append(f)
        procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd], env=env, stdout=f, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path,
        )  # fmt: skip

    def check_alive():
        for name, p in procs.items():
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode}: {tail(tmp_path / f'{name}.log', 30)}")

    try:
        net.create()
        # Protected mode refuses clients from other addresses without a password; this
        # Redis is reachable only inside the test's namespaces.
        spawn("redis", net.ns_redis, ["redis-server", "--bind", net.redis_ip, "--port", str(REDIS_PORT),
                                      "--protected-mode", "no", "--save", "", "--appendonly", "no",
                                      "--dir", str(tmp_path)])  # fmt: skip
        relay = Relay((net.redis_ip, REDIS_PORT))
        for r in (1, 2, 3):
            relay.listen(net.relay_ip[r], REDIS_PORT)
        hub = serve("hub", net.backend_ip)  # the default target
        user = serve("user", net.backend_ip)  # the users' servers
        servers += [hub, user]
        conf = tmp_path / "hubgate.toml"
        conf.write_text("[storage]\nactivity-flush-ms = 1000\n")
        env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=TOKEN)
        for r in (1, 2, 3):
            spawn(f"hubgate-{r}", net.ns[r], [
                str(hubgate_bin()), "--config", str(conf),
                "--ip", net.client_ip[r], "--port", str(PROXY_PORT),
                "--api-ip", net.client_ip[r], "--api-port", str(API_PORT),
                "--default-target", f"http://{net.backend_ip}:{hub.server_address[1]}",
                "--storage-backend", f"redis://{net.relay_ip[r]}:{REDIS_PORT}/0",
            ], env)  # fmt: skip
        for r in (1, 2, 3):
            wait_until(
                f"replica {r} ready",
                lambda r=r: requests.get(f"http://{net.client_ip[r]}:{PROXY_PORT}/_chp_healthz", timeout=2).ok,
                30,
                check=check_alive,
            )
        yield {
            "net": net,
            "relay": relay,
            "user_port": user.server_address[1],
            "check_alive": check_alive,
            "dir": tmp_path,
        }
    finally:
        for p in procs.values():
            if p.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        for s in servers:
            s.shutdown()
            s.server_close()
        if relay is not None:
            relay.close()
        net.destroy()
        for f in files:
            f.close()
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            for name in procs:
                print(f"===== {name}.log =====\n{tail(tmp_path / f'{name}.log', 40)}")


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


@pytest.mark.timeout(300)
def test_convergence_delay_loss_and_partition(hosts):
    net: Net = hosts["net"]
    relay: Relay = hosts["relay"]
    target = f"http://{net.backend_ip}:{hosts['user_port']}"
    auth = {"Authorization": f"token {TOKEN}"}
    api1 = f"http://{net.client_ip[1]}:{API_PORT}/api/routes"
    proxies = {r: f"http://{net.client_ip[r]}:{PROXY_PORT}" for r in (1, 2, 3)}
    sessions = {r: requests.Session() for r in (1, 2, 3)}

    def served(r: int, path: str) -> bool:
        resp = sessions[r].get(proxies[r] + path, timeout=5)
        assert resp.status_code == 200, (r, path, resp.status_code)
        return resp.text == f"user {path}"

    def write(path: str) -> float:
        resp = requests.post(api1 + path, json={"target": target}, headers=auth, timeout=10)
        assert resp.status_code == 201, resp.text
        return time.monotonic()

    # ---- convergence under delay and loss
    samples: dict[int, list[float]] = {2: [], 3: []}
    for i in range(WRITES):
        path = f"/user/c{i}"
        acked = write(path)
        for r in (2, 3):
            deadline = acked + 10
            while not served(r, path):
                assert time.monotonic() < deadline, f"{path} not on replica {r} after 10 s"
                time.sleep(0.001)
            samples[r].append(time.monotonic() - acked)
        hosts["check_alive"]()
    allv = samples[2] + samples[3]
    p50, p95, p99, worst = (pct(allv, q) * 1000 for q in (0.5, 0.95, 0.99, 1.0))
    print(
        f"\nnetns convergence over {WRITES} writes x 2 replicas (RTT 1-5 ms, {LOSS:.0%} chunks "
        f"stalled {STALL_MS} ms; {relay.stalls} stalls in {relay.chunks} chunks): "
        f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms"
    )
    assert p99 < STALL_MS + 300, f"convergence p99 {p99:.0f} ms"

    # ---- partition replica 3 from Redis
    old = [f"/user/c{i}" for i in range(0, WRITES, 10)]
    sh("ip", "link", "set", net.store_link(3), "down")
    down_at = time.monotonic()
    new: list[str] = []
    old_ok = old_fail = new_stale = new_fresh = 0
    health: set[str] = set()
    try:
        # Writes through replica 1 continue; replica 3 is asked for old and new routes.
        for i in range(PARTITION_WRITES):
            path = f"/user/p{i}"
            write(path)
            new.append(path)
            for p in old:
                if served(3, p):
                    old_ok += 1
                else:
                    old_fail += 1
            for p in new:
                if served(3, p):
                    new_fresh += 1
                else:
                    new_stale += 1
            h = requests.get(proxies[3] + "/_chp_healthz", timeout=5)
            health.add(f"{h.status_code} {h.json().get('store')}")
            time.sleep(0.25)
        # Replica 3 must notice (command timeouts) and say the store is down.
        wait_until(
            "replica 3 reports the store down",
            lambda: requests.get(proxies[3] + "/_chp_healthz", timeout=5).json().get("store") == "down",
            15,
        )
        partitioned_for = time.monotonic() - down_at
    finally:
        sh("ip", "link", "set", net.store_link(3), "up")
    healed_at = time.monotonic()
    wait_until(
        "replica 3 serves every route written during the partition",
        lambda: all(served(3, p) for p in new),
        30,
        check=hosts["check_alive"],
    )
    converged = time.monotonic() - healed_at
    h = requests.get(proxies[3] + "/_chp_healthz", timeout=5).json()
    print(
        f"partition of replica 3 from Redis for {partitioned_for:.1f} s: old routes served "
        f"{old_ok} ok / {old_fail} failed; routes written meanwhile: {new_fresh} requests "
        f"already served by their target, {new_stale} by the default target (not yet known); "
        f"/_chp_healthz during the partition: {sorted(health)}; after the link came back, "
        f"replica 3 had every new route {converged:.1f} s later (store {h.get('store')})"
    )
    assert old_fail == 0, "replica 3 stopped serving routes it knew while partitioned"
    assert new_stale > 0, "the partition did not cut replica 3 off from Redis"
    assert all(s.startswith("200 ") for s in health), health
    assert h.get("store") == "up"
    # Replicas 1 and 2 never lost Redis and have everything.
    for r in (1, 2):
        assert all(served(r, p) for p in new), r
