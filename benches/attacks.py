#!/usr/bin/env python3
"""Attack classes tried side by side against hubgate, CHP and nginx (a bench, not a test).

Usage: python3 benches/attacks.py [--only NAME,...] [--out FILE.md]

Each proxy runs on 127.0.0.1 in front of two recording backends, alice's and bob's (routes
/user/alice/ and /user/bob/; hubgate without [auth], so all three are compared as plain
proxies — the authentication rows of docs/security.md are hubgate's own tests). Every attack
is sent as raw bytes; the outcome is what the client saw (statuses, whether and when the
connection closed) and what each backend received. The result is a markdown table on stdout
(and in --out): docs/security.md, "Attack classes tried", quotes it.

Environment: HUBGATE [target/release/hubgate, else target/debug/hubgate],
CHP [.tools/node_modules/.bin/configurable-http-proxy], NGINX [nginx],
SLOW_CAP [150] seconds the slow-client attacks wait at most.
Loopback only; every socket and process is closed at the end (also on Ctrl-C).
"""

import argparse
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "attacks-bench-token"
SLOW_CAP = float(os.environ.get("SLOW_CAP", "150"))
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


# ------------------------------------------------------------------ recording backends
class Recorder:
    """A backend that records every request it gets (path and headers) and answers 200."""

    def __init__(self, name):
        self.name = name
        self.seen = []
        self.lock = threading.Lock()
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                body = b""
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        body += self.rfile.read(size)
                        self.rfile.readline()
                elif self.headers.get("Content-Length"):
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                with rec.lock:
                    rec.seen.append({"path": self.path, "headers": list(self.headers.items()),
                                     "body": body})
                if self.path.endswith("/slow"):
                    time.sleep(3)
                out = f"{rec.name} {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def clear(self):
        with self.lock:
            self.seen.clear()

    def requests(self):
        with self.lock:
            return list(self.seen)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {deadline} s")


# ------------------------------------------------------------------ the three proxies
class Proxy:
    def __init__(self, kind, alice, bob, workdir):
        self.kind, self.alice, self.bob = kind, alice, bob
        self.port, self.api = free_port(), free_port()
        self.dir = os.path.join(workdir, kind)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None

    def start(self):
        env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=TOKEN)
        log = open(os.path.join(self.dir, "log"), "ab")
        common = ["--ip", "127.0.0.1", "--port", str(self.port),
                  "--api-ip", "127.0.0.1", "--api-port", str(self.api)]
        if self.kind == "hubgate":
            cmd = [HUBGATE] + common
        elif self.kind == "chp":
            cmd = [CHP] + common
        else:
            conf = os.path.join(self.dir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(d=self.dir, port=self.port, a=self.alice.port,
                                          b=self.bob.port))
            cmd = [NGINX, "-p", self.dir, "-c", conf, "-e", os.path.join(self.dir, "error.log")]
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log,
                                     start_new_session=True)
        wait_port(self.port, self.proc)
        if self.kind != "nginx":
            wait_port(self.api, self.proc)
            for user, be in (("alice", self.alice), ("bob", self.bob)):
                code, _ = self.api_post(f"/api/routes/user/{user}",
                                        {"target": f"http://127.0.0.1:{be.port}"})
                assert code == 201, f"{self.kind}: adding the {user} route got {code}"

    def api_post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.api}{path}", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Authorization": f"token {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


NGINX_CONF = """worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /user/alice/ {{ proxy_pass http://127.0.0.1:{a}; proxy_http_version 1.1;
            proxy_set_header Host $host; }}
        location /user/bob/ {{ proxy_pass http://127.0.0.1:{b}; proxy_http_version 1.1;
            proxy_set_header Host $host; }}
        location / {{ return 404; }}
    }}
}}
"""


# ------------------------------------------------------------------ raw exchanges
def exchange(port, data, timeout=3.0, chunks=None):
    """Sends DATA (or, with CHUNKS=(pieces, pause), the pieces with a pause between them) and
    reads until the proxy closes or TIMEOUT passes. Returns (statuses, closed, seconds, raw)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.monotonic()
    got, closed = b"", False
    try:
        if chunks:
            pieces, pause = chunks
            s.settimeout(pause)
            for p in pieces:
                try:
                    s.sendall(p)
                except OSError:
                    closed = True
                    break
                try:
                    d = s.recv(65536)
                    if not d:
                        closed = True
                        break
                    got += d
                    break
                except socket.timeout:
                    pass
                except OSError:
                    closed = True
                    break
                if time.monotonic() - t0 > timeout:
                    break
        else:
            try:
                s.sendall(data)
            except OSError:
                closed = True
        end = t0 + timeout
        while not closed and time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not d:
                closed = True
                break
            got += d
    finally:
        s.close()
    return [int(c) for c in STATUS.findall(got)], closed, time.monotonic() - t0, got


def codes_text(codes, closed):
    if not codes:
        return "closed, no answer" if closed else "no answer"
    return "/".join(map(str, codes)) + (", then closed" if closed else "")


# ------------------------------------------------------------------ the attacks
def smuggling(px):
    host = f"127.0.0.1:{px.port}"
    smuggled = f"GET /user/bob/smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
    head = f"POST /user/alice/x HTTP/1.1\r\nHost: {host}\r\n"
    shapes = {
        "CL+TE": f"{head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        "TE chunked, identity": f"{head}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}",
        "TE xchunked": f"{head}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}",
        "two CLs": f"{head}Content-Length: 0\r\nContent-Length: {len(smuggled)}\r\n\r\n{smuggled}",
        "space before colon": f"{head}Content-Length : {len(smuggled)}\r\n\r\n{smuggled}",
    }
    parts, reached = [], 0
    for name, raw in shapes.items():
        px.bob.clear()
        codes, closed, _, _ = exchange(px.port, raw.encode())
        n = sum(1 for r in px.bob.requests() if "smuggled" in r["path"])
        reached += n
        parts.append(f"{name}: {codes_text(codes, closed)}" + (" **bob reached**" if n else ""))
    verdict = "the smuggled request never reached bob" if reached == 0 else \
        f"**{reached} smuggled request(s) reached bob**"
    return f"{verdict} ({'; '.join(parts)})"


def obs_fold(px):
    px.alice.clear()
    raw = (f"GET /user/alice/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Test: a\r\n"
           f" X-Auth-Request-User: mallory\r\nConnection: close\r\n\r\n").encode()
    codes, closed, _, _ = exchange(px.port, raw)
    seen = px.alice.requests()
    if not seen:
        return f"{codes_text(codes, closed)}; nothing forwarded"
    hdrs = seen[0]["headers"]
    if any(k.lower() == "x-auth-request-user" for k, _ in hdrs):
        return f"{codes_text(codes, closed)}; **forwarded as a separate `X-Auth-Request-User`**"
    return f"{codes_text(codes, closed)}; unfolded into `X-Test`"


PATHS = ["/user/alice/../bob/x", "/user/alice/%2e%2e/bob/x", "/user/alice/%2E%2E%2Fbob/x",
         "/user/alice/..%2Fbob/x", "//user/bob/x", "/user/alice/x/../../bob/x",
         "/user/alice\\..\\bob/x", "/user/alice/.%2e/bob/x"]


def path_tricks(px):
    """Which server each alice-looking path reaches, and the path it is forwarded with."""
    out = []
    for p in PATHS:
        px.alice.clear()
        px.bob.clear()
        codes, closed, _, _ = exchange(
            px.port, f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        a, b = px.alice.requests(), px.bob.requests()
        if b:
            out.append(f"`{p}` → bob as `{b[0]['path']}`")
        elif a:
            fwd = a[0]["path"]
            out.append(f"`{p}` → alice as `{fwd}`")
        else:
            out.append(f"`{p}` → {codes_text(codes, closed)}")
    return "; ".join(out)


def slow_head(px, every):
    """A head trickled one header line every EVERY seconds (never finished): when is it cut?"""
    pieces = [b"GET /user/alice/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"] + \
        [b"X-Slow: 1\r\n"] * int(SLOW_CAP / every + 2)
    codes, closed, secs, _ = exchange(px.port, None, timeout=SLOW_CAP, chunks=(pieces, every))
    if codes or closed:
        return f"{codes_text(codes, True)} after {secs:.0f} s"
    return f"**still open after {SLOW_CAP:.0f} s**"


def slowloris(px):
    results = {}
    threads = [threading.Thread(target=lambda e=e: results.__setitem__(e, slow_head(px, e)))
               for e in (SLOW_CAP + 10, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (f"silent after a partial head: {results[SLOW_CAP + 10]}; "
            f"one header line every 5 s: {results[5]}")


def oversized(px):
    cases = {
        "9 KiB request line": b"GET /user/alice/" + b"a" * 9216 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
        "20 KiB head": b"GET /user/alice/x HTTP/1.1\r\nHost: h\r\n" +
        b"".join(b"X-Pad-%d: " % i + b"a" * 1000 + b"\r\n" for i in range(20)) + b"\r\n",
        "70 KiB head": b"GET /user/alice/x HTTP/1.1\r\nHost: h\r\n" +
        b"".join(b"X-Pad-%d: " % i + b"a" * 1000 + b"\r\n" for i in range(70)) + b"\r\n",
        "one 12 KiB header": b"GET /user/alice/x HTTP/1.1\r\nHost: h\r\nX-Big: " +
        b"a" * 12288 + b"\r\n\r\n",
    }
    out = []
    for name, raw in cases.items():
        codes, closed, _, _ = exchange(px.port, raw)
        out.append(f"{name}: {codes_text(codes, closed)}")
    return "; ".join(out)


def http10(px):
    codes, closed, secs, raw = exchange(
        px.port, b"GET /user/alice/x HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", timeout=10)
    conn = re.search(rb"(?im)^connection: *([^\r\n]*)", raw)
    hdr = f", `Connection: {conn.group(1).decode()}`" if conn else ""
    if closed:
        return f"{codes_text(codes, True)}{hdr}; closed after {secs * 1000:.0f} ms"
    return f"{codes_text(codes, True)}{hdr}; **held open ≥ 10 s**"


def cl_te_close(px):
    raw = (b"POST /user/alice/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    codes, closed, secs, _ = exchange(px.port, raw, timeout=6)
    return f"{codes_text(codes, True)}; " + \
        (f"closed after {secs * 1000:.0f} ms" if closed else "**connection kept open**")


def absolute_form(px):
    px.alice.clear()
    codes, closed, _, _ = exchange(
        px.port, b"GET http://127.0.0.1/user/alice/abs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: close\r\n\r\n")
    seen = px.alice.requests()
    return f"{codes_text(codes, closed)}" + (f", alice got `{seen[0]['path']}`" if seen else
                                             ", nothing forwarded")


def forwarded_spellings(px):
    px.alice.clear()
    exchange(px.port, b"GET /user/alice/h HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"X_Remote_User: mallory\r\nX-Forwarded-Prefix: /evil\r\n"
             b"X-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n")
    seen = px.alice.requests()
    if not seen:
        return "nothing forwarded"
    names = {k.lower(): v for k, v in seen[0]["headers"]}
    got = [n for n in ("x_remote_user", "x-forwarded-prefix", "x-forwarded-host")
           if n in names and ("mallory" in names[n] or "evil" in names[n])]
    return ("forwarded: " + ", ".join(f"`{n}`" for n in got)) if got else "none forwarded"


def route_api(px):
    if px.kind == "nginx":
        return "no route API"
    out = []
    for name, key, target in (("`%2e%2e` key", "/api/routes/user/%2e%2e/hub",
                               f"http://127.0.0.1:{px.bob.port}"),
                              ("`file://` target", "/api/routes/user/f", "file:///etc/passwd"),
                              ("userinfo target", "/api/routes/user/u",
                               "http://u:p@127.0.0.1:9")):
        code, _ = px.api_post(key, {"target": target})
        out.append(f"{name}: {code}")
    return "; ".join(out)


def sigterm(px, sig=signal.SIGTERM):
    """Five 3 s requests in flight, then SIG: how many finish, and what a new client sees."""
    results = []
    px.alice.clear()

    def one():
        codes, closed, _, _ = exchange(
            px.port, b"GET /user/alice/slow HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n", timeout=15)
        results.append(codes[:1] == [200])

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(px.alice.requests()) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    px.proc.send_signal(sig)
    time.sleep(0.3)
    try:
        codes, closed, _, _ = exchange(px.port, b"GET /user/alice/x HTTP/1.1\r\nHost: h\r\n"
                                       b"Connection: close\r\n\r\n", timeout=2)
        new = codes_text(codes, closed)
    except OSError:
        new = "refused"
    for t in threads:
        t.join()
    try:
        rc = px.proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        rc = "still running after 40 s"
    exited = time.monotonic() - t0
    return (f"{sum(results)}/5 in-flight finished; a new connection 0.3 s later: {new}; "
            f"exit status {rc} after {exited:.1f} s")


ATTACKS = [
    ("smuggling", "Request smuggling shapes (second request to bob hidden in a POST to alice)",
     smuggling),
    ("obs-fold", "Header obs-fold to inject `X-Auth-Request-User`", obs_fold),
    ("paths", "Alice-looking paths: which server, forwarded how", path_tricks),
    ("oversized", "Oversized request line / head", oversized),
    ("http10", "HTTP/1.0 without keep-alive", http10),
    ("cl-te", "`Content-Length` + `Transfer-Encoding`: connection afterwards", cl_te_close),
    ("absolute", "Absolute-form request target", absolute_form),
    ("spellings", "Client-sent `X_Remote_User`, `X-Forwarded-Prefix`, `X-Forwarded-Host`",
     forwarded_spellings),
    ("route-api", "Route API: keys and targets that can never be proxied", route_api),
    ("slowloris", "Slow clients (head never finished)", slowloris),
    ("sigterm", "SIGTERM with five 3 s requests in flight", sigterm),
]


def main():
    global HUBGATE, CHP, NGINX
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated attack names")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    HUBGATE = os.environ.get("HUBGATE") or next(
        (p for p in (f"{ROOT}/target/release/hubgate", f"{ROOT}/target/debug/hubgate")
         if os.path.exists(p)), "")
    CHP = os.environ.get("CHP", f"{ROOT}/.tools/node_modules/.bin/configurable-http-proxy")
    NGINX = os.environ.get("NGINX", shutil.which("nginx") or "/usr/sbin/nginx")
    for name, path in (("hubgate", HUBGATE), ("CHP", CHP), ("nginx", NGINX)):
        if not path or not os.path.exists(path):
            sys.exit(f"attacks.py: {name} not found ({path!r}); run scripts/setup.sh and build")
    only = set(filter(None, args.only.split(",")))
    attacks = [a for a in ATTACKS if not only or a[0] in only]
    work = tempfile.mkdtemp(prefix="hubgate-attacks.")
    kinds = ["hubgate", "chp", "nginx"]
    rows = {a[0]: {} for a in attacks}
    proxies = []
    try:
        for kind in kinds:
            alice, bob = Recorder("alice"), Recorder("bob")
            px = Proxy(kind, alice, bob, work)
            proxies.append(px)
            px.start()
        # Slow attacks run for all three proxies at once (each waits up to SLOW_CAP).
        for key, _, fn in attacks:
            print(f"attacks.py: {key} …", file=sys.stderr)
            if key in ("slowloris", "sigterm"):
                ths = [threading.Thread(target=lambda p=p: rows[key].__setitem__(p.kind, fn(p)))
                       for p in proxies]
                for t in ths:
                    t.start()
                for t in ths:
                    t.join()
            else:
                for p in proxies:
                    rows[key][p.kind] = fn(p)
    finally:
        for p in proxies:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)
    versions = (f"hubgate {subprocess.run([HUBGATE, '--version'], capture_output=True, text=True).stdout.strip()}, "
                f"CHP {subprocess.run([CHP, '--version'], capture_output=True, text=True).stdout.strip()}, "
                f"{subprocess.run([NGINX, '-v'], capture_output=True, text=True).stderr.strip()}")
    lines = [f"<!-- benches/attacks.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{versions} -->",
             "| attack | hubgate | CHP | nginx |", "|---|---|---|---|"]
    for key, title, _ in attacks:
        lines.append(f"| {title} | " + " | ".join(rows[key].get(k, "—") for k in kinds) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
