"""hubgate as zero-to-jupyterhub's proxy image: the chart's own command line, as it renders it.

The chart (jupyterhub/templates/proxy/deployment.yaml in zero-to-jupyterhub-k8s, default
values, hub Service named `hub`) starts the proxy container with `command:
[configurable-http-proxy]` and the arguments below; the kubelet expands `$(HUB_SERVICE_PORT)`
from the environment Kubernetes gives every pod, and `CONFIGPROXY_AUTH_TOKEN` comes from the
chart's Secret. The image provides `configurable-http-proxy` as a symlink to hubgate (see
Dockerfile); this test runs the real binary (HUBGATE_BIN, default target/debug/hubgate)
through such a symlink with that environment and those arguments, for the shapes the chart
renders: plain HTTP, manual HTTPS (certificate made here, self-signed), `--host-routing`
(a JupyterHub subdomain_host), and with the metrics flags docs/kubernetes.md adds through
`proxy.chp.extraCommandLineFlags`.

Only the port numbers are changed, to free ones (this machine is shared: the chart's fixed
8000/8001/8443 may be taken); the TLS file paths point into the test's directory. Where the
test runs as root, hubgate runs as the pod would: in its own mount namespace with the root
file system read-only (it must not need to write anywhere), as uid/gid 65534 (the chart's
securityContext), with an /etc/hosts in which `hub` resolves to 127.0.0.1 (the Service name).
Elsewhere it runs directly and the checks that need the name `hub` are skipped.

Checks: /_chp_healthz answers 200; the API answers with the token and refuses without it;
the default route is the hub's Service; a route added through the API reaches a real backend;
a request for the hub reaches the "hub" backend; the HTTPS variant redirects plain HTTP to
port 443; the metrics variant serves Prometheus metrics.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
HUBGATE_BIN = Path(os.environ.get("HUBGATE_BIN", "target/debug/hubgate"))
if not HUBGATE_BIN.is_absolute():
    HUBGATE_BIN = ROOT / HUBGATE_BIN
TOKEN = "z2jh-proxy-token-0123456789abcdef"
NOBODY = 65534

# The chart's arguments, literally (default values; `--log-level=debug` with debug.enabled).
CHART_ARGS = [
    "--ip=",
    "--api-ip=",
    "--api-port=8001",
    "--default-target=http://hub:$(HUB_SERVICE_PORT)",
    "--error-target=http://hub:$(HUB_SERVICE_PORT)/hub/error",
]
PLAIN = ["--port=8000"]
HTTPS = [  # proxy.https.enabled with type manual: the TLS Secret is mounted at /etc/chp/tls
    "--port=8443",
    "--redirect-port=8000",
    "--redirect-to=443",
    "--ssl-key=/etc/chp/tls/tls.key",
    "--ssl-cert=/etc/chp/tls/tls.crt",
]
# proxy.chp.extraCommandLineFlags from docs/kubernetes.md, plus debug.enabled's flag.
METRICS = ["--metrics-ip=0.0.0.0", "--metrics-port=8002", "--log-level=debug"]

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubelet_expand(arg: str, env: dict[str, str]) -> str:
    """`$(VAR)` -> its value, as the kubelet expands container args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


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


def serve(name: str) -> ThreadingHTTPServer:
    handler = type(f"Echo_{name}", (Echo,), {"name": name})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def can_sandbox() -> bool:
    if os.geteuid() != 0:
        return False
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "true"],
        capture_output=True,
    )
    return r.returncode == 0


SANDBOX = can_sandbox()

# Runs "$@" like the pod: read-only root, `hub` in /etc/hosts, uid/gid 65534, no new privileges.
POD_WRAPPER = (
    'mount --bind "$HOSTS_FILE" /etc/hosts && mount -o remount,bind,ro / && '
    f"exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups --no-new-privs -- \"$@\""
)


@pytest.fixture
def pod(request):
    """pod(extra_args) -> a started hubgate with the chart's arguments plus extra_args."""
    work = Path(tempfile.mkdtemp(prefix="hubgate-z2jh-"))
    work.chmod(0o755)  # readable by uid 65534
    hub = serve("hub")
    user = serve("user")
    started: list[subprocess.Popen] = []
    logs: list[Path] = []

    def start(extra: list[str]):
        ports = {p: free_port() for p in (8000, 8001, 8443, 8002)}
        tls = work / "tls"
        tls.mkdir(exist_ok=True)
        tls.chmod(0o755)
        if any(a.startswith("--ssl-") for a in extra) and not (tls / "tls.crt").exists():
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", "/CN=hub.example.org",
                 "-addext", "subjectAltName=DNS:hub.example.org,IP:127.0.0.1",
                 "-keyout", str(tls / "tls.key"),
                 "-out", str(tls / "tls.crt")],
                check=True, capture_output=True,
            )  # fmt: skip
            for f in tls.iterdir():
                f.chmod(0o644)
        # The environment Kubernetes gives the container: the Secret's token and the
        # Services' variables (only the hub's port is used by the arguments).
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOSTNAME": "proxy-7d9c8b5f4-abcde",
            "CONFIGPROXY_AUTH_TOKEN": TOKEN,
            "HUB_SERVICE_HOST": "127.0.0.1",
            "HUB_SERVICE_PORT": str(hub.server_address[1]),
            "PROXY_API_SERVICE_HOST": "127.0.0.1",
            "PROXY_API_SERVICE_PORT": "8001",
            "PROXY_PUBLIC_SERVICE_HOST": "127.0.0.1",
            "PROXY_PUBLIC_SERVICE_PORT": "80",
        }
        args = []
        for a in CHART_ARGS + extra:
            a = kubelet_expand(a, env)
            m = re.fullmatch(r"(--(?:api-|redirect-|metrics-)?port=)(\d+)", a)
            if m:
                a = f"{m.group(1)}{ports[int(m.group(2))]}"
            a = a.replace("/etc/chp/tls/", f"{tls}/")
            args.append(a)
        if not SANDBOX:  # without our own /etc/hosts, `hub` does not resolve
            args = [a.replace("http://hub:", "http://127.0.0.1:") for a in args]
        link = work / "bin" / "configurable-http-proxy"
        link.parent.mkdir(exist_ok=True)
        link.parent.chmod(0o755)
        if not link.exists():
            link.symlink_to(HUBGATE_BIN)
        cmd = [str(link), *args]
        if SANDBOX:
            hosts = work / "hosts"
            hosts.write_text("127.0.0.1 localhost hub proxy-api proxy-public\n::1 localhost\n")
            hosts.chmod(0o644)
            env["HOSTS_FILE"] = str(hosts)
            cmd = ["unshare", "--mount", "--propagation", "private", "--",
                   "sh", "-c", POD_WRAPPER, "sh", *cmd]  # fmt: skip
        log = work / f"proxy-{len(started)}.log"
        logs.append(log)
        with open(log, "wb") as out:
            p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        started.append(p)
        https = "--port=8443" in extra
        public = f"{'https' if https else 'http'}://127.0.0.1:{ports[8443 if https else 8000]}"
        # The client trusts exactly the certificate made above.
        ca = str(tls / "tls.crt") if https else True
        deadline = time.monotonic() + 20
        while True:
            if p.poll() is not None:
                raise AssertionError(f"hubgate exited {p.returncode}:\n{log.read_text()}")
            try:
                if requests.get(f"{public}/_chp_healthz", timeout=1, verify=ca).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"hubgate not healthy after 20 s:\n{log.read_text()}")
            time.sleep(0.1)
        return {
            "public": public,
            "api": f"http://127.0.0.1:{ports[8001]}",
            "redirect": f"http://127.0.0.1:{ports[8000]}" if https else None,
            "metrics": f"http://127.0.0.1:{ports[8002]}",
            "hub_port": hub.server_address[1],
            "user_port": user.server_address[1],
            "proc": p,
            "log": log,
            "verify": ca,
        }

    try:
        yield start
    finally:
        for p in started:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
        hub.shutdown()
        user.shutdown()
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            for log in logs:
                print(f"===== {log} =====\n{log.read_text(errors='replace')[-4000:]}")
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
        work.rmdir()


def check_serves(pd: dict):
    """What the hub and the users need from the proxy pod."""
    auth = {"Authorization": f"token {TOKEN}"}
    r = requests.get(f"{pd['public']}/_chp_healthz", timeout=5, verify=pd["verify"])
    assert r.status_code == 200, r.text
    assert requests.get(f"{pd['api']}/api/routes", timeout=5).status_code == 403
    r = requests.get(f"{pd['api']}/api/routes", headers=auth, timeout=5)
    assert r.status_code == 200, r.text
    hub_host = "hub" if SANDBOX else "127.0.0.1"
    assert r.json()["/"]["target"] == f"http://{hub_host}:{pd['hub_port']}", r.json()
    # What JupyterHub does at a spawn: add the user's route, then users go through it.
    r = requests.post(
        f"{pd['api']}/api/routes/user/alice",
        json={"target": f"http://127.0.0.1:{pd['user_port']}", "user": "alice"},
        headers=auth,
        timeout=5,
    )
    assert r.status_code == 201, r.text
    r = requests.get(f"{pd['public']}/user/alice/lab", timeout=5, verify=pd["verify"])
    assert (r.status_code, r.text) == (200, "user /user/alice/lab")
    # Everything else goes to the hub's Service (by its DNS name where `hub` resolves).
    r = requests.get(f"{pd['public']}/hub/login", timeout=5, verify=pd["verify"])
    assert (r.status_code, r.text) == (200, "hub /hub/login")


def test_plain(pod):
    pd = pod(PLAIN)
    check_serves(pd)


def test_https_manual(pod):
    pd = pod(HTTPS)
    check_serves(pd)
    r = requests.get(
        f"{pd['redirect']}/hub/login",
        headers={"Host": "hub.example.org"},
        allow_redirects=False,
        timeout=5,
    )
    assert r.status_code == 301, (r.status_code, r.text)
    assert r.headers["Location"] == "https://hub.example.org/hub/login"


def test_metrics_and_debug_log(pod):
    pd = pod(PLAIN + METRICS)
    check_serves(pd)
    r = requests.get(f"{pd['metrics']}/metrics", timeout=5)
    assert r.status_code == 200, r.text
    assert "requests_proxy" in r.text and "hubgate_store_up" in r.text, r.text[:500]
    # --log-level=debug (the chart's debug.enabled) took effect.
    assert "] debug: " in pd["log"].read_text(errors="replace")


@pytest.mark.skipif(not SANDBOX, reason="needs root and mount namespaces (unshare)")
def test_pod_constraints_hold(pod):
    """The sandboxed run really is read-only and unprivileged (so the tests above prove
    hubgate needs neither)."""
    pd = pod(PLAIN)
    pid = pd["proc"].pid
    status = Path(f"/proc/{pid}/status").read_text()
    uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
    assert uid and uid.groups() == (str(NOBODY), str(NOBODY)), status
    assert re.search(r"^NoNewPrivs:\s+1", status, re.M), status
    mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    root = next(line for line in mounts if line.split()[4] == "/")
    assert " ro," in root or root.split()[5].startswith("ro"), root
    assert Path(f"/proc/{pid}/exe").resolve() == HUBGATE_BIN.resolve()


def test_host_routing(pod):
    """`--host-routing`, which the chart adds when JupyterHub uses a subdomain_host: the
    route's first segment is the request's host name."""
    pd = pod(PLAIN + ["--host-routing"])
    auth = {"Authorization": f"token {TOKEN}"}
    r = requests.post(
        f"{pd['api']}/api/routes/alice.hub.example.org/",
        json={"target": f"http://127.0.0.1:{pd['user_port']}"},
        headers=auth,
        timeout=5,
    )
    assert r.status_code == 201, r.text
    r = requests.get(f"{pd['public']}/lab", headers={"Host": "alice.hub.example.org"}, timeout=5)
    assert (r.status_code, r.text) == (200, "user /lab")
    # Another host falls through to the hub.
    r = requests.get(f"{pd['public']}/hub/login", headers={"Host": "hub.example.org"}, timeout=5)
    assert (r.status_code, r.text) == (200, "hub /hub/login")
