"""Harness for the end-to-end tests: a real JupyterHub (from .venv) behind a proxy binary.

The proxy under test is either hubgate (env HUBGATE_BIN, default target/debug/hubgate)
or, as a baseline, configurable-http-proxy (env CHP_BIN, default
.tools/node_modules/.bin/configurable-http-proxy). Set HUBGATE_E2E_SKIP_CHP=1 (or run
``pytest -m "not chp"``) to skip the CHP baseline.

Every process a test starts is tagged with a unique environment variable
(HUBGATE_E2E_TAG) that the hub, the hub-managed proxy, the single-user servers and their
kernels all inherit; teardown stops the hub gracefully, then SIGKILLs whatever still
carries the tag, so nothing outlives its test even if the hub crashed.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TAG_VAR = "HUBGATE_E2E_TAG"
SESSION_TAG = f"hubgate-e2e-{os.getpid()}-{secrets.token_hex(4)}"

HUB_START_TIMEOUT = 60  # hub up and reachable through the proxy
GRACEFUL_STOP_TIMEOUT = 20  # hub SIGTERM -> exit (it stops servers and the proxy)


# ---------------------------------------------------------------- proxy binaries


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (REPO / p)


def hubgate_bin() -> Path:
    return _resolve(os.environ.get("HUBGATE_BIN", "target/debug/hubgate"))


def chp_bin() -> Path:
    return _resolve(
        os.environ.get("CHP_BIN", ".tools/node_modules/.bin/configurable-http-proxy")
    )


def _skip_chp() -> bool:
    return os.environ.get("HUBGATE_E2E_SKIP_CHP", "").lower() in {"1", "true", "yes"}


PROXIES = [
    pytest.param("hubgate", id="hubgate"),
    pytest.param(
        "chp",
        id="chp",
        marks=[
            pytest.mark.chp,
            pytest.mark.skipif(_skip_chp(), reason="HUBGATE_E2E_SKIP_CHP is set"),
        ],
    ),
]


def proxy_command(kind: str) -> list[str]:
    """The proxy's argv[0] (absolute). hubgate must exist; a missing CHP skips."""
    if kind == "hubgate":
        path = hubgate_bin()
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.fail(
                f"hubgate binary not found at {path}: run `cargo build` "
                "or set HUBGATE_BIN"
            )
    else:
        path = chp_bin()
        if not (path.exists() and os.access(path, os.X_OK)):
            pytest.skip(f"CHP not found at {path}: run scripts/setup.sh or set CHP_BIN")
    return [str(path)]


# ---------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return list(ports)


def tail(path: Path, lines: int = 120) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def tagged_processes(tag: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get(TAG_VAR) == tag:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_tagged(tag: str) -> list[str]:
    """SIGKILL every process carrying the tag (and its process group); return what was killed."""
    killed = []
    for p in tagged_processes(tag):
        try:
            desc = f"{p.pid} {' '.join(p.cmdline())[:120]}"
            try:
                pgid = os.getpgid(p.pid)
                if pgid != os.getpgid(0):
                    os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.kill()
            killed.append(desc)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(
        [p for p in tagged_processes(tag)], timeout=5
    )  # reap what we can
    return killed


def wait_until(what: str, fn, timeout: float, interval: float = 0.2, check=None):
    """Poll fn() until it returns a truthy value; check() may raise to abort early."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        if check is not None:
            check()
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - polled operations fail until ready
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" (last error: {last_exc!r})" if last_exc else "")
            )
        time.sleep(interval)


# ---------------------------------------------------------------- the deployment


class Deployment:
    """One JupyterHub + one proxy, on free loopback ports, in its own temp dir."""

    def __init__(
        self,
        kind: str,
        mode: str,
        workdir: Path,
        auth=None,
        public_port: int | None = None,
        hub_config: str = "",
    ):
        """`auth`: None (CHP behaviour), or an oidc.AuthSetup to run hubgate with an
        [auth] section (hubgate only) and send its Bearer token on readiness probes; an
        `auth.extra_toml(deployment)` method, if it has one, adds to hubgate's config (it
        can name the hub's address). `public_port`: a port picked beforehand (e.g.
        registered as a redirect URI at the test OpenID provider before the proxy starts);
        a free one by default. `hub_config`: lines added to jupyterhub_config.py."""
        assert mode in {"hub-managed", "external"}
        assert auth is None or kind == "hubgate", "only hubgate has [auth]"
        self.kind = kind
        self.mode = mode
        self.dir = workdir
        self.public_port, self.api_port, self.hub_port = free_ports(3)
        if public_port is not None:
            self.public_port = public_port
            while public_port in (self.api_port, self.hub_port):
                self.api_port, self.hub_port = free_ports(2)
        self.public_url = f"http://127.0.0.1:{self.public_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.hub_url = f"http://127.0.0.1:{self.hub_port}"
        self.proxy_token = secrets.token_hex(32)
        self.tag = f"{SESSION_TAG}-{secrets.token_hex(4)}"
        self.proxy_cmd = proxy_command(kind)
        self.hub_config = hub_config
        self.auth = auth
        if auth is not None:
            self.auth_config = self.dir / "hubgate-auth.toml"
            extra = getattr(auth, "extra_toml", None)
            self.auth_config.write_text(
                auth.toml(self.public_url) + (extra(self) if extra else "")
            )
            self.proxy_cmd = self.proxy_cmd + ["--config", str(self.auth_config)]
        self.hub_log = self.dir / "hub.log"
        self.proxy_log = self.dir / "proxy.log"
        self.hub: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None
        self._hub_logf = None
        self._proxy_logf = None

    # -- config --------------------------------------------------------------
    def write_config(self) -> Path:
        home = self.dir / "home"
        home.mkdir()
        cfg = textwrap.dedent(
            f"""\
            # generated by tests/e2e/conftest.py
            c = get_config()  # noqa
            c.JupyterHub.bind_url = {self.public_url!r}
            c.JupyterHub.hub_ip = "127.0.0.1"
            c.JupyterHub.hub_port = {self.hub_port}
            c.JupyterHub.db_url = {"sqlite:///" + str(self.dir / "jupyterhub.sqlite")!r}
            c.JupyterHub.cookie_secret_file = {str(self.dir / "cookie_secret")!r}
            c.JupyterHub.pid_file = {str(self.dir / "jupyterhub.pid")!r}
            c.JupyterHub.last_activity_interval = 3
            c.JupyterHub.log_level = "DEBUG"

            c.JupyterHub.authenticator_class = "dummy"  # any user name, any password
            c.JupyterHub.spawner_class = "simple"  # SimpleLocalProcessSpawner, no system users
            c.SimpleLocalProcessSpawner.home_dir_template = {str(home) + "/{username}"!r}
            c.Spawner.cmd = [{str(VENV_BIN / "jupyterhub-singleuser")!r}]
            c.Spawner.ip = "127.0.0.1"
            c.Spawner.default_url = "/lab"
            c.Spawner.start_timeout = 60
            c.Spawner.http_timeout = 60
            c.Spawner.environment = {{{TAG_VAR!r}: {self.tag!r}}}
            # Running as root: ServerApp.allow_root comes from .venv/etc/jupyter/
            # jupyter_server_config.json, written by scripts/setup.sh.

            c.ConfigurableHTTPProxy.api_url = {self.api_url!r}
            c.ConfigurableHTTPProxy.auth_token = {self.proxy_token!r}
            c.ConfigurableHTTPProxy.pid_file = {str(self.dir / "proxy.pid")!r}
            """
        )
        if self.mode == "hub-managed":
            cfg += f"c.ConfigurableHTTPProxy.command = {self.proxy_cmd!r}\n"
        else:
            cfg += "c.ConfigurableHTTPProxy.should_start = False\n"
        cfg += self.hub_config
        path = self.dir / "jupyterhub_config.py"
        path.write_text(cfg)
        return path

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[TAG_VAR] = self.tag
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.pop("JUPYTERHUB_API_TOKEN", None)
        return env

    # -- processes -----------------------------------------------------------
    def start_external_proxy(self):
        env = self._env()
        env["CONFIGPROXY_AUTH_TOKEN"] = self.proxy_token
        cmd = self.proxy_cmd + [
            "--ip", "127.0.0.1",
            "--port", str(self.public_port),
            "--api-ip", "127.0.0.1",
            "--api-port", str(self.api_port),
            "--default-target", self.hub_url,
            "--error-target", f"{self.hub_url}/hub/error",
        ]  # fmt: skip
        self._proxy_logf = open(self.proxy_log, "wb")
        self.proxy = subprocess.Popen(
            cmd,
            env=env,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self._proxy_logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def up():
            for port in (self.public_port, self.api_port):
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
            return True

        wait_until("the external proxy's ports", up, 15, check=self.check_alive)

    def start(self):
        config = self.write_config()
        if self.mode == "external":
            self.start_external_proxy()
        self._hub_logf = open(self.hub_log, "wb")
        self.hub = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", str(config)],
            env=self._env(),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self._hub_logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: teardown kills the group
        )

        probe_headers = (
            {"Authorization": f"Bearer {self.auth.bearer}"} if self.auth is not None else {}
        )

        def hub_up():
            r = requests.get(f"{self.public_url}/hub/api/", headers=probe_headers, timeout=5)
            return r.status_code == 200 and "version" in r.json()

        wait_until(
            "the hub to answer /hub/api/ through the proxy",
            hub_up,
            HUB_START_TIMEOUT,
            interval=0.3,
            check=self.check_alive,
        )

        # In external mode "/" first exists as the proxy's --default-target route; the
        # hub's own (with its data) replaces it once the hub has synced its routes.
        def hub_route_synced():
            return self.proxy_routes().get("/", {}).get("jupyterhub") is True

        wait_until(
            "the hub's '/' route in GET /api/routes",
            hub_route_synced,
            HUB_START_TIMEOUT,
            interval=0.3,
            check=self.check_alive,
        )

    def check_alive(self):
        if self.hub is not None and self.hub.poll() is not None:
            raise AssertionError(
                f"jupyterhub exited with code {self.hub.returncode} (logs below)"
            )
        if self.proxy is not None and self.proxy.poll() is not None:
            raise AssertionError(
                f"external proxy exited with code {self.proxy.returncode} (logs below)"
            )

    def logs(self, lines: int = 150) -> str:
        out = f"===== hub.log (last {lines} lines; includes a hub-managed proxy's output) =====\n"
        out += tail(self.hub_log, lines) + "\n"
        if self.mode == "external":
            out += f"===== proxy.log (last {lines} lines) =====\n"
            out += tail(self.proxy_log, lines) + "\n"
        return out

    def stop(self) -> list[str]:
        """Stop everything; return a list of processes that had to be SIGKILLed."""
        if self.hub is not None and self.hub.poll() is None:
            try:
                os.killpg(self.hub.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.hub.wait(GRACEFUL_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        if self.proxy is not None and self.proxy.poll() is None:
            try:
                os.killpg(self.proxy.pid, signal.SIGTERM)
                self.proxy.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        killed = kill_tagged(self.tag)
        for p in (self.hub, self.proxy):
            if p is not None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    killed.append(f"{p.pid} did not die")
        for f in (self._hub_logf, self._proxy_logf):
            if f is not None:
                f.close()
        return killed

    # -- the proxy's REST API -----------------------------------------------
    def proxy_routes(self) -> dict:
        r = requests.get(
            f"{self.api_url}/api/routes",
            headers={"Authorization": f"token {self.proxy_token}"},
            timeout=10,
        )
        assert r.status_code == 200, f"GET /api/routes -> {r.status_code} {r.text!r}"
        return r.json()


XSRF_INPUT = re.compile(r'name="_xsrf"\s+value="([^"]+)"')
