"""[Health check], --default-target, [Metrics], [Command line]: CLI and process behaviour."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from .conftest import (CHP_BIN, HUBGATE_BIN, Proxy, assert_same, chp_check,
                       documented_difference, echo_view, free_port, http_request, port_open,
                       resp_view, run_cli)

# ----------------------------------------------------------------- health ([Health check])


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
@pytest.mark.parametrize("with_root", [False, True])
def test_healthz(pf, be, method, with_root):
    """[Health check] GET /_chp_healthz -> 200 {"status":"OK"} application/json, even with no routes
    (and even with a '/' or '/_chp_healthz' route)."""
    pair = pf.get()
    if with_root:
        pair.add_route("/", be.root.url)
        pair.add_route("/_chp_healthz", be.a.url)
    v = pair.same(lambda p: resp_view(p.request(method, "/_chp_healthz",
                                                body=b"x" if method == "POST" else None)),
                  f"{method} /_chp_healthz")
    chp_check(v["status"] == 200, str(v))


@pytest.mark.parametrize("target", ["/_chp_healthz?x=1", "/_chp_healthz/", "/_chp_healthz/x",
                                    "/_CHP_HEALTHZ", "/%5Fchp_healthz", "//_chp_healthz"])
@pytest.mark.parametrize("with_root", [False, True])
def test_healthz_exact_match_only(pf, be, target, with_root):
    """[Health check] the health match is exact on req.url; anything else is proxied (or 404)."""
    pair = pf.get()
    if with_root:
        pair.add_route("/", be.root.url)
    v = pair.same(lambda p: echo_view(p.get(target)) if with_root
                  else resp_view(p.get(target), "none"), f"GET {target}")
    if with_root and target == "/_chp_healthz?x=1":
        chp_check(v["x-echo-backend"] == "root", str(v))


# ----------------------------------------------------------------- default target


def test_default_target(pf, be):
    """[Command line] --default-target adds an ordinary '/' route: visible in GET /api/routes, used for
    unmatched paths, deletable."""
    pair = pf.get("--default-target", be.root.url, reset=False)
    v = pair.same(lambda p: resp_view(p.api("GET", "/api/routes")), "GET /api/routes")
    chp_check(v["body"] == {"/": {"target": be.root.url, "last_activity": "<TS>"}}, str(v))
    v = pair.same(lambda p: echo_view(p.get("/any/random/url?x=1")), "GET /any/random/url")
    chp_check(v["x-echo-backend"] == "root", str(v))
    pair.same(lambda p: resp_view(p.api("GET", "/api/routes/")), "GET /api/routes/")
    v = pair.same(lambda p: resp_view(p.api("DELETE", "/api/routes/")), "DELETE /api/routes/")
    chp_check(v["status"] == 204, str(v))
    pair.same(lambda p: resp_view(p.get("/any/random/url"), "none"), "GET after delete")


def test_default_target_with_path(pf, be):
    """[Command line; Forwarded URL] --default-target with a path prefix."""
    pair = pf.get("--default-target", be.root.url + "/hub", reset=False)
    pair.same(lambda p: echo_view(p.get("/x/y?z=1")), "GET /x/y?z=1")


# ----------------------------------------------------------------- metrics ([Metrics])

CHP_METRICS = {
    "api_route_get": "counter", "api_route_add": "counter", "api_route_delete": "counter",
    "find_target_for_req": "summary", "last_activity_updating": "summary",
    "requests_ws": "counter", "requests_web": "counter", "requests_proxy": "counter",
    "requests_api": "counter",
}


def _metrics(p, path="/metrics"):
    deadline = time.monotonic() + 10
    while not port_open(p.metrics_port):
        assert time.monotonic() < deadline, f"{p.name}: metrics port never opened"
        time.sleep(0.02)
    return http_request(p.metrics_port, "GET", path)


def _types(text):
    return {m.group(1): m.group(2)
            for m in re.finditer(r"(?m)^# TYPE (\S+) (\S+)$", text) if m.group(1) in CHP_METRICS}


def _counter_values(text):
    out = {}
    for m in re.finditer(r"(?m)^(\w+)(\{[^}]*\})? (\S+)$", text):
        name = m.group(1)
        if CHP_METRICS.get(name) == "counter":
            out[name + (m.group(2) or "")] = float(m.group(3))
        if name.endswith("_count") and CHP_METRICS.get(name[:-6]) == "summary":
            out[name] = float(m.group(3))
    return out


METRICS_FLAGS = ("--metrics-ip", "127.0.0.1", "--metrics-port", "{metrics_port}")


def test_metrics_names_and_types(pf, be):
    """[Metrics] /metrics: prom text format, CHP's metric names and types."""
    pair = pf.get(*METRICS_FLAGS)

    def go(p):
        r = _metrics(p)
        return {"status": r.status, "content-type": r.headers.get("content-type"),
                "types": _types(r.text)}

    v = pair.same(go, "GET /metrics")
    chp_check(v["types"] == CHP_METRICS, str(v))


def test_metrics_counters(pf, be):
    """[Metrics] counter values after identical traffic (API, web, ws, proxy errors)."""
    pair = pf.get(*METRICS_FLAGS)
    pair.add_route("/user/alice", be.a.url)
    pair.add_route("/user/dead", be.dead_url)
    pair.add_route("/user/ws", be.ws.url)

    def go(p):
        before = _counter_values(_metrics(p).text)
        p.get("/user/alice/x")
        p.get("/user/alice/x?_status=404")
        p.get("/user/dead/x")
        p.get("/nothing")
        p.get("/_chp_healthz")
        p.api("GET", "/api/routes")
        p.api("GET", "/api/routes/user/alice")
        p.api("PUT", "/api/routes/user/alice")
        p.api("DELETE", "/api/routes/user/nobody")
        p.api("GET", "/api/routes", token="bad")
        after = _counter_values(_metrics(p).text)
        return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
                if after.get(k, 0) != before.get(k, 0)}

    pair.same(go, "metric deltas")


def test_metrics_other_path_404(pf, be):
    """[Metrics] any other path on the metrics port -> 404."""
    pair = pf.get(*METRICS_FLAGS)
    pair.same(lambda p: resp_view(_metrics(p, "/other")), "GET /other on metrics port")


def _listen_addrs(port: int) -> set:
    """Local addresses of LISTEN sockets on ``port`` (from /proc, no traffic)."""
    out = set()
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(fn).read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            addr, p = f[1].rsplit(":", 1)
            if int(p, 16) == port and f[3] == "0A":
                out.add(addr)
    return out


LOOPBACK = {"0100007F", "00000000000000000000000001000000",
            "0000000000000000FFFF00000100007F"}


def test_metrics_bind_default(pf, be):
    """[Metrics] metrics listener without --metrics-ip: CHP binds all interfaces; hubgate binds
    loopback (documented deliberate difference). Checked from /proc, no traffic."""
    pair = pf.get("--metrics-port", "{metrics_port}")
    for p in pair:
        _metrics(p)
    chp = _listen_addrs(pair.chp.metrics_port)
    chp_check(chp and not chp <= LOOPBACK, f"CHP metrics bound to {chp}")
    documented_difference("metrics listener binds loopback by default")
    hg = _listen_addrs(pair.hg.metrics_port)
    assert hg and hg <= LOOPBACK, f"hubgate metrics listener bound to {hg} (expected loopback)"


# ----------------------------------------------------------------- CLI ([Command line])


def _base_args():
    return ["--ip", "127.0.0.1", "--port", str(free_port()), "--api-ip", "127.0.0.1",
            "--api-port", str(free_port())]


def _both(args, timeout=10.0, env=None):
    a = run_cli(CHP_BIN, args, timeout, env)
    b = run_cli(HUBGATE_BIN, args, timeout, env)
    return a, b


@pytest.mark.parametrize("value", ["nocolon", ":value", "   "])
def test_custom_header_without_colon(bins, value):
    """[Command line] --custom-header without a colon (or at position 0): exit non-zero,
    'colon was expected' on stderr."""
    (rc1, o1, e1), (rc2, o2, e2) = _both(_base_args() + ["--custom-header", value])
    chp_check(rc1 not in (0, None) and "colon was expected" in e1, f"CHP rc={rc1} err={e1!r}")
    assert rc2 not in (0, None), f"hubgate rc={rc2} (expected non-zero exit)\n{o2}\n{e2}"
    assert "colon was expected" in e2, f"hubgate stderr lacks 'colon was expected': {e2!r}"


def test_error_target_and_error_path_conflict(bins, tmp_path):
    """[Command line] --error-target and --error-path together: exit 1."""
    args = _base_args() + ["--error-target", "http://127.0.0.1:9/x", "--error-path",
                           str(tmp_path)]
    (rc1, _, _), (rc2, o2, e2) = _both(args)
    chp_check(rc1 == 1, f"CHP rc={rc1}")
    assert_same(rc1, rc2, f"exit code of {' '.join(args[-4:])}\nhubgate out:{o2}\nerr:{e2}")


def test_redirect_port_without_ssl(bins):
    """[Command line] --redirect-port requires --ssl-*: exit 1."""
    (rc1, _, _), (rc2, o2, e2) = _both(_base_args() + ["--redirect-port", str(free_port())])
    chp_check(rc1 == 1, f"CHP rc={rc1}")
    assert_same(rc1, rc2, f"exit code of --redirect-port without ssl\n{o2}\n{e2}")


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(bins, flag):
    """[Command line] --version prints a version and exits 0."""
    (rc1, o1, _), (rc2, o2, e2) = _both([flag])
    chp_check(rc1 == 0 and o1.strip() == "5.3.0", f"CHP: {rc1} {o1!r}")
    assert rc2 == 0, f"hubgate {flag}: rc={rc2} out={o2!r} err={e2!r}"
    assert re.search(r"\d+\.\d+\.\d+", o2), f"hubgate {flag} printed no version: {o2!r}"


def test_help(bins):
    """[Command line] -h/--help exits 0 and mentions the CHP flags."""
    (rc1, o1, _), (rc2, o2, e2) = _both(["--help"])
    chp_check(rc1 == 0, f"CHP rc={rc1}")
    assert rc2 == 0, f"hubgate --help rc={rc2} {e2!r}"
    for flag in ("--ip", "--port", "--api-ip", "--api-port", "--error-target",
                 "--default-target", "--custom-header", "--no-include-prefix"):
        assert flag in o2, f"hubgate --help does not mention {flag}"


def test_client_ssl_noop_flags_accepted(pf, be):
    """[What JupyterHub expects] flags JupyterHub passes must be accepted: --log-level, --client-ssl-request-cert,
    --client-ssl-reject-unauthorized, --api-ssl-request-cert/-reject-unauthorized (no certs),
    --timeout, --keep-alive-timeout, --insecure."""
    pair = pf.get("--log-level", "debug", "--client-ssl-request-cert",
                  "--client-ssl-reject-unauthorized", "--timeout", "60000",
                  "--keep-alive-timeout", "5000", "--insecure")
    pair.add_route("/", be.root.url)
    pair.same(lambda p: echo_view(p.get("/x")), "GET through a proxy started with no-op flags")


@pytest.mark.parametrize("level", ["debug", "info", "warn", "error"])
def test_log_levels_accepted(pf, be, level):
    """[Command line] --log-level debug/info/warn/error accepted."""
    pair = pf.get("--log-level", level)
    pair.add_route("/", be.root.url)
    pair.same(lambda p: echo_view(p.get("/x")), f"GET with --log-level {level}")


def _api_on_port_plus_one(binary: str) -> str | None:
    """Start with --port P only; None if the API answers on P+1, else an error text."""
    port = free_port(pair=True)
    env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN="t")
    p = subprocess.Popen([binary, "--ip", "127.0.0.1", "--port", str(port),
                          "--api-ip", "127.0.0.1"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (port_open(port) and port_open(port + 1)):
            if p.poll() is not None or time.monotonic() > deadline:
                return f"{binary}: API not listening on --port+1 ({port + 1}), rc={p.poll()}"
            time.sleep(0.02)
        r = http_request(port + 1, "GET", "/api/routes", {"Authorization": "token t"})
        return None if r is not None and r.status == 200 else f"{binary}: {r}"
    finally:
        p.terminate()
        try:
            out = p.communicate(timeout=5)[0]
        except subprocess.TimeoutExpired:
            p.kill()
            out = p.communicate()[0]
        del out


def test_api_port_defaults_to_port_plus_one(bins):
    """[Command line] --api-port defaults to --port + 1 (retried on a fresh port: P+1 may be taken)."""
    for binary in (CHP_BIN, HUBGATE_BIN):
        errors = []
        for _ in range(3):
            err = _api_on_port_plus_one(binary)
            if err is None:
                break
            errors.append(err)
        else:
            raise AssertionError("; ".join(errors))


def test_pid_file_and_sigterm(bins, tmp_path):
    """[Command line] --pid-file written after listening, removed on exit; SIGTERM exits promptly."""
    results = {}
    for name, binary in (("chp", CHP_BIN), ("hubgate", HUBGATE_BIN)):
        pidf = tmp_path / f"{name}.pid"
        p = Proxy(name, binary, ["--pid-file", str(pidf)])
        try:
            deadline = time.monotonic() + 5
            while not pidf.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            content = pidf.read_text().strip() if pidf.exists() else None
            t0 = time.monotonic()
            p.proc.send_signal(signal.SIGTERM)
            try:
                rc = p.proc.wait(5)
            except Exception:
                rc = "still running after 5 s"
            results[name] = {"pid_file_has_pid": content == str(p.proc.pid),
                             "exited_within_5s": isinstance(rc, int) and time.monotonic() - t0 < 5,
                             "pid_file_removed": not pidf.exists()}
            results[name + "_rc"] = rc
        finally:
            p.stop()
    chp_check(results["chp"] == {"pid_file_has_pid": True, "exited_within_5s": True,
                                 "pid_file_removed": True}, str(results))
    assert_same(results["chp"], results["hubgate"], "pid file / SIGTERM behaviour")


def test_storage_backend_missing_module_fails(bins):
    """[Command line] --storage-backend with a module that does not exist: CHP fails; hubgate must
    at least fail clearly (non-zero exit, not listening)."""
    args = _base_args() + ["--storage-backend", "/nonexistent/compat-store.js"]
    (rc1, o1, e1), (rc2, o2, e2) = _both(args, timeout=10)
    chp_check(rc1 not in (0, None), f"CHP rc={rc1}")
    assert rc2 not in (0, None), f"hubgate rc={rc2} with a missing storage backend\n{o2}\n{e2}"

