"""Shared fixtures for the side-by-side CHP vs hubgate compatibility suite.

Both proxies are started as subprocesses with identical flags and the same
loopback backends; every test sends the same requests to both and compares
the answers after normalising only what must differ (each proxy's own port
numbers and ``last_activity`` timestamps).

Environment:
  CHP_BIN      configurable-http-proxy 5.3.0 (default .tools/node_modules/.bin/configurable-http-proxy)
  HUBGATE_BIN  the binary under test (default target/debug/hubgate).
               Set it to the CHP binary to self-test the harness (CHP vs CHP);
               the tests of documented deliberate differences then skip.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from .backends import HttpBackend, WsBackend, free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN = "compat-secret-token"
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _bin(env: str, default: str) -> str:
    p = os.environ.get(env) or str(REPO / default)
    return p


CHP_BIN = _bin("CHP_BIN", ".tools/node_modules/.bin/configurable-http-proxy")
HUBGATE_BIN = _bin("HUBGATE_BIN", "target/debug/hubgate")
SELF_TEST = os.path.realpath(CHP_BIN) == os.path.realpath(HUBGATE_BIN)


def pytest_collection_modifyitems(config, items):
    # every test is bounded in time (pytest-timeout, when installed)
    # (session-wide hook: touch only this directory's tests, not tests/e2e)
    here = Path(__file__).parent
    if config.pluginmanager.hasplugin("timeout"):
        for item in items:
            if here not in Path(str(item.fspath)).parents:
                continue
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(60))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With COMPAT_SUMMARY=<file>, append a compact line per failure (test, request, diff)."""
    outcome = yield
    rep = outcome.get_result()
    path = os.environ.get("COMPAT_SUMMARY")
    if (path and rep.failed and call.excinfo is not None
            and Path(__file__).parent in Path(str(item.fspath)).parents):
        msg = str(call.excinfo.value)
        head = msg.split("\n--- CHP ---", 1)[0]
        with open(path, "a") as f:
            f.write(f"### {item.nodeid} [{rep.when}]\n{head.strip()[:3000]}\n")


def pytest_report_header(config):
    return [f"compat: CHP_BIN={CHP_BIN}", f"compat: HUBGATE_BIN={HUBGATE_BIN}"
            + ("  (self-test: CHP vs CHP)" if SELF_TEST else "")]


def documented_difference(reason: str):
    """Skip a deliberate-difference test when HUBGATE_BIN is CHP itself."""
    if SELF_TEST:
        pytest.skip(f"documented deliberate difference (CHP behaves differently): {reason}")


# --------------------------------------------------------------------------- HTTP


@dataclass
class Resp:
    status: int
    reason: str
    headers: dict  # lower-cased name -> value (repeats joined with "\n")
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _RawConn(http.client.HTTPConnection):
    """HTTPConnection that puts the request target on the wire unvalidated."""

    def _validate_path(self, url):
        pass


def http_request(port: int, method: str, target: str, headers: dict | None = None,
                 body: bytes | str | None = None, timeout: float = 10.0,
                 host: str | None = None) -> Resp | None:
    """One request on a fresh connection; ``target`` goes on the wire verbatim.

    Returns None if the server did not answer within ``timeout``.
    """
    conn = _RawConn("127.0.0.1", port, timeout=timeout)
    hdrs = dict(headers or {})
    if not any(k.lower() == "host" for k in hdrs):
        hdrs["Host"] = host or f"127.0.0.1:{port}"
    if isinstance(body, str):
        body = body.encode()
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for k, v in hdrs.items():
            conn.putheader(k, v)
        if body is not None and not any(k.lower() in ("content-length", "transfer-encoding")
                                         for k in hdrs):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        out: dict = {}
        for k, v in r.getheaders():
            k = k.lower()
            out[k] = v if k not in out else out[k] + "\n" + v
        return Resp(r.status, r.reason, out, data)
    except (socket.timeout, TimeoutError):
        return None
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        return Resp(-1, "connection closed without a response", {}, b"")
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, head_only: bool = False) -> bytes:
    """Send raw bytes, read until the server closes (or ``timeout``).

    head_only: stop as soon as a complete header block (plus a Content-Length body,
    if any) has arrived: CHP leaves some websocket error connections open."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, TimeoutError):
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            if head_only and b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m is None or len(rest) >= int(m.group(1)):
                    break
    return out


def ws_upgrade_bytes(target: str, host: str, extra: str = "") -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- proxies


class Proxy:
    """One running proxy process (CHP or hubgate)."""

    def __init__(self, name: str, binary: str, flags: list[str], token: str | None = TOKEN,
                 extra_env: dict | None = None):
        self.name = name
        self.binary = binary
        self.raw_flags = list(flags)
        self.token = token
        self.extra_env = extra_env or {}
        errors = []
        for _attempt in range(3):  # a port may be taken between the check and the bind
            err = self._start()
            if err is None:
                return
            errors.append(err)
        raise RuntimeError("\n".join(errors))

    def _start(self) -> str | None:
        self.port = free_port()
        self.api_port = free_port()
        self.metrics_port = free_port()
        # per-process values in flags: {metrics_port}
        self.flags = [f.replace("{metrics_port}", str(self.metrics_port)) for f in self.raw_flags]
        self.logdir = Path(tempfile.mkdtemp(prefix=f"compat-{self.name}-"))
        env = dict(os.environ)
        env.pop("CONFIGPROXY_AUTH_TOKEN", None)
        if self.token is not None:
            env["CONFIGPROXY_AUTH_TOKEN"] = self.token
        env.update(self.extra_env)
        self.argv = [self.binary, "--ip", "127.0.0.1", "--port", str(self.port),
                     "--api-ip", "127.0.0.1", "--api-port", str(self.api_port), *self.flags]
        self.out = open(self.logdir / "stdout.log", "wb")
        self.err = open(self.logdir / "stderr.log", "wb")
        self.proc = subprocess.Popen(self.argv, env=env, stdout=self.out, stderr=self.err,
                                     stdin=subprocess.DEVNULL, cwd=str(self.logdir))
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                msg = f"{self.name} exited with {self.proc.returncode}: {self.argv}\n{self.logs()}"
                self.stop()
                return msg
            if port_open(self.port) and port_open(self.api_port):
                return None
            if time.monotonic() > deadline:
                msg = f"{self.name} did not listen within 10 s: {self.argv}\n{self.logs()}"
                self.stop()
                return msg
            time.sleep(0.02)

    def logs(self) -> str:
        self.out.flush()
        self.err.flush()
        o = (self.logdir / "stdout.log").read_text(errors="replace")[-3000:]
        e = (self.logdir / "stderr.log").read_text(errors="replace")[-3000:]
        return f"--- stdout ---\n{o}\n--- stderr ---\n{e}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()
        self.err.close()
        shutil.rmtree(self.logdir, ignore_errors=True)

    # -- API ---------------------------------------------------------------
    def auth(self, token: str | None = "default") -> dict:
        if token == "default":
            token = self.token
        return {"Authorization": f"token {token}"} if token else {}

    def api(self, method: str, path: str, body=None, headers: dict | None = None,
            token: str | None = "default", timeout: float = 10.0) -> Resp | None:
        h = self.auth(token)
        h.update(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        return http_request(self.api_port, method, path, h, body, timeout=timeout)

    def add_route(self, path: str, target: str, **data):
        """POST a route; ``path`` is the wire form after /api/routes."""
        data["target"] = target
        r = self.api("POST", "/api/routes" + path, data)
        assert r is not None and r.status == 201, f"{self.name}: POST {path} -> {r}"

    def routes(self) -> dict:
        r = self.api("GET", "/api/routes")
        assert r is not None and r.status == 200, f"{self.name}: GET /api/routes -> {r}"
        return r.json()

    def route(self, path: str) -> dict | None:
        r = self.api("GET", "/api/routes" + path)
        assert r is not None and r.status in (200, 404), f"{self.name}: GET {path} -> {r}"
        return r.json() if r.status == 200 else None

    def last_activity(self, path: str) -> str:
        # GET /api/routes/ returns the whole table, so read '/' from there
        d = self.routes().get("/") if path == "/" else self.route(path)
        assert d is not None, f"{self.name}: route {path} missing"
        return d["last_activity"]

    def reset(self):
        for key in self.routes():
            wire = quote(key, safe="/@~")
            if wire == "/":
                wire = "/"  # DELETE /api/routes/ deletes the root route
            r = self.api("DELETE", "/api/routes" + wire)
            assert r is not None and r.status in (204, 404), f"{self.name}: reset {key} -> {r}"

    # -- data plane ----------------------------------------------------------
    def request(self, method: str, target: str, headers: dict | None = None, body=None,
                timeout: float = 10.0, host: str | None = None) -> Resp | None:
        return http_request(self.port, method, target, headers, body, timeout=timeout, host=host)

    def get(self, target: str, **kw) -> Resp | None:
        return self.request("GET", target, **kw)


def run_cli(binary: str, args: list[str], timeout: float = 10.0, env: dict | None = None):
    """Run a proxy binary that is expected to exit; returns (rc, stdout, stderr).
    rc is None if it was still running after ``timeout`` (it is then killed)."""
    e = dict(os.environ)
    e.pop("CONFIGPROXY_AUTH_TOKEN", None)
    e.update(env or {})
    proc = subprocess.Popen([binary, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=e)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        rc = None
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


BAD_JSON_PREFIX = "Body not valid JSON: SyntaxError: "


def normalise(obj, proxy: Proxy):
    """Replace what must differ between the two proxies: their own ports and
    well-formed ``last_activity`` timestamps."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "last_activity" and isinstance(v, str) and TS_RE.match(v):
                out[k] = "<TS>"
            else:
                out[normalise(k, proxy)] = normalise(v, proxy)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(normalise(v, proxy) for v in obj)
    if isinstance(obj, bytes):
        return normalise(obj.decode("utf-8", "replace"), proxy).encode()
    if isinstance(obj, str):
        # Documented difference: the JSON parser's own wording after this prefix is V8's in
        # CHP and serde_json's in hubgate (status and prefix still compared).
        if obj.startswith(BAD_JSON_PREFIX):
            return BAD_JSON_PREFIX + "<parser message>"
        obj = re.sub(rf"(?<!\d){proxy.port}(?!\d)", "<PORT>", obj)
        obj = re.sub(rf"(?<!\d){proxy.api_port}(?!\d)", "<APIPORT>", obj)
        return obj
    return obj


class Pair:
    """CHP and hubgate started with the same flags."""

    def __init__(self, flags: list[str], token: str | None = TOKEN):
        self.flags = flags
        self.chp = Proxy("chp", CHP_BIN, flags, token)
        try:
            self.hg = Proxy("hubgate", HUBGATE_BIN, flags, token)
        except Exception:
            self.chp.stop()
            raise

    def __iter__(self):
        return iter((self.chp, self.hg))

    def stop(self):
        for p in (self.chp, self.hg):
            p.stop()

    def reset(self):
        for p in self:
            p.reset()

    def each(self, fn):
        return fn(self.chp), fn(self.hg)

    def same(self, fn, what: str = ""):
        """Run ``fn(proxy)`` on both, normalise, assert equal; return CHP's value."""
        a, b = self.each(fn)
        na, nb = normalise(a, self.chp), normalise(b, self.hg)
        assert_same(na, nb, what or getattr(fn, "__doc__", None) or "", self.flags)
        return na

    def add_route(self, path: str, target: str, **data):
        for p in self:
            p.add_route(path, target, **dict(data))


def _fmt(v) -> str:
    try:
        return json.dumps(v, indent=1, sort_keys=True, ensure_ascii=False, default=repr)
    except Exception:
        return repr(v)


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if k not in b:
                out.append(f"{path}/{k}: CHP={a[k]!r} hubgate=<absent>")
            elif k not in a:
                out.append(f"{path}/{k}: CHP=<absent> hubgate={b[k]!r}")
            else:
                out += _diff(a[k], b[k], f"{path}/{k}")
        return out
    if a != b:
        return [f"{path or '/'}: CHP={a!r} hubgate={b!r}"]
    return []


def assert_same(chp_val, hg_val, what: str, flags=()):
    if chp_val != hg_val:
        diff = "\n".join("  " + d[:400] for d in _diff(chp_val, hg_val))
        raise AssertionError(
            f"MISMATCH {what} (flags: {' '.join(flags)})\nDIFF:\n{diff}\n"
            f"--- CHP ---\n{_fmt(chp_val)}\n--- hubgate ---\n{_fmt(hg_val)}")


def chp_check(cond: bool, msg: str):
    """Sanity check of CHP itself against docs/chp-compatibility.md."""
    assert cond, f"REFERENCE CONTRADICTION (CHP itself): {msg}"


def resp_view(r: Resp | None, body: str = "auto", headers=("content-type",)):
    """A comparable view of a response. body: auto | raw | json | none.

    auto = parsed JSON when the response says application/json, else raw text."""
    if r is None:
        return {"status": "NO ANSWER (timeout)"}
    v = {"status": r.status, "headers": {h: r.headers.get(h) for h in headers}}
    if body == "auto":
        body = "json" if "json" in (r.headers.get("content-type") or "") else "raw"
    if body == "raw":
        v["body"] = r.text
    elif body == "json":
        try:
            v["body"] = r.json()
        except ValueError:
            v["body"] = "NOT JSON: " + r.text
    return v


def echo_view(r: Resp | None, drop=("connection", "keep-alive")):
    """What the echo backend saw, as comparable data."""
    if r is None:
        return {"status": "NO ANSWER (timeout)"}
    v = {"status": r.status, "x-echo-backend": r.headers.get("x-echo-backend")}
    try:
        seen = r.json()
    except ValueError:
        v["body"] = r.text
        return v
    if isinstance(seen, dict) and "headers" in seen:
        seen = dict(seen)
        seen["headers"] = {k: val for k, val in seen["headers"].items() if k not in drop}
    v["seen"] = seen
    return v


class PairFactory:
    """Module-scoped cache: each flag set is started once per module."""

    def __init__(self):
        self.pairs: dict = {}

    def get(self, *flags: str, token: str | None = TOKEN, reset: bool = True) -> Pair:
        key = (flags, token)
        if key not in self.pairs:
            self.pairs[key] = Pair(list(flags), token)
        pair = self.pairs[key]
        if reset:
            pair.reset()
        return pair

    def stop(self):
        for p in self.pairs.values():
            p.stop()
        self.pairs.clear()


# --------------------------------------------------------------------------- fixtures


@dataclass
class Backends:
    root: HttpBackend
    a: HttpBackend
    b: HttpBackend
    redirect: HttpBackend
    slow: HttpBackend
    error: HttpBackend
    ws: WsBackend
    dead_port: int
    all: list = field(default_factory=list)

    @property
    def dead_url(self) -> str:
        return f"http://127.0.0.1:{self.dead_port}"


@pytest.fixture(scope="session")
def bins():
    for b in (CHP_BIN, HUBGATE_BIN):
        if not (os.path.isfile(b) and os.access(b, os.X_OK)):
            pytest.fail(f"compat: binary not found or not executable: {b} "
                        "(set CHP_BIN / HUBGATE_BIN)", pytrace=False)
    return CHP_BIN, HUBGATE_BIN


@pytest.fixture(scope="session")
def be(bins):
    root = HttpBackend("root")
    a = HttpBackend("a")
    b = HttpBackend("b")
    redirect = HttpBackend("redirect", "redirect")
    slow = HttpBackend("slow", "slow", slow_seconds=2.0)
    error = HttpBackend("error", "error")
    ws = WsBackend()
    bs = Backends(root, a, b, redirect, slow, error, ws, free_port())
    bs.all = [root, a, b, redirect, slow, error, ws]
    yield bs
    for x in bs.all:
        x.stop()


@pytest.fixture(scope="module")
def pf(bins, be):
    f = PairFactory()
    yield f
    f.stop()
