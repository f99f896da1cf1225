#!/usr/bin/env bash
# Same-machine comparison of proxies in front of ONE real JupyterHub, with real single-user
# servers and kernels: `hubgate-load hub` simulates USERS users (log in at the hub's form,
# start a server, open JupyterLab's API, start a kernel, run print(6*7) every EXEC_INTERVAL
# on the kernel websocket for SESSION while holding IDLE_WS idle websockets, stop) against
#
#   hubgate        JupyterHub launching hubgate as its proxy (hub-managed, as CHP is)
#   chp            the same with configurable-http-proxy
#   hubgate-auth   hubgate with [auth]: every request and websocket also carries a Bearer
#                  token signed with the key of the test OpenID provider (tests/oidc), which
#                  hubgate verifies (MFA claims, owner of /user/NAME) before the hub sees it
#
# The hub, proxy, servers and kernels are set up by the e2e harness (tests/e2e/harness.py,
# the same JupyterHub configuration as the e2e tests: SimpleLocalProcessSpawner, dummy
# login). Before the comparison, two one-user calibration runs measure what a single-user
# server and its kernel cost at idle and while executing (RSS and CPU, from /proc), which
# is what decides how many users this machine holds.
#
# Nothing is pinned: hub, servers, kernels, proxy and load tool share the machine's cores,
# as on a small hub. The load average is recorded with each run.
#
# Usage:  benches/hub_compare.sh                    # USERS=20, ~12 minutes
#         USERS=4 SESSION=20 benches/hub_compare.sh  # quick look
#
# Environment (defaults in brackets):
#   USERS [20]  RAMP [60] (s)  SESSION [60] (s)  EXEC_INTERVAL [2] (s)  IDLE_WS [2]
#   SPAWN_TIMEOUT [180] (s)  PROXIES ["hubgate chp hubgate-auth"]  CALIBRATE [1]
#   HUBGATE [target/release/hubgate]  LOAD [target/release/hubgate-load]
#   CHP [.tools/node_modules/.bin/configurable-http-proxy]
#   OUT [benches/results/hub_compare.md]  BENCHMARKS [BENCHMARKS.md] (its section between
#   the hub-compare markers is replaced, or appended at the end; BENCHMARKS= to skip)
#   KEEP_WORK [0] (keep the temp dir with the hub logs and raw JSON)
#
# Release binaries are built first if missing. Every process started is stopped at the
# end, on failure and on Ctrl-C (the harness kills whatever carries its run's tag).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export USERS="${USERS:-20}" RAMP="${RAMP:-60}" SESSION="${SESSION:-60}"
export EXEC_INTERVAL="${EXEC_INTERVAL:-2}" IDLE_WS="${IDLE_WS:-2}"
export SPAWN_TIMEOUT="${SPAWN_TIMEOUT:-180}" CALIBRATE="${CALIBRATE:-1}"
export PROXIES="${PROXIES:-hubgate chp hubgate-auth}"
export HUBGATE="${HUBGATE:-$ROOT/target/release/hubgate}"
export LOAD="${LOAD:-$ROOT/target/release/hubgate-load}"
export CHP="${CHP:-$ROOT/.tools/node_modules/.bin/configurable-http-proxy}"
export OUT="${OUT:-$ROOT/benches/results/hub_compare.md}"
export BENCHMARKS="${BENCHMARKS-$ROOT/BENCHMARKS.md}"
export KEEP_WORK="${KEEP_WORK:-0}"

[[ -x .venv/bin/python ]] || bash scripts/setup.sh
if [[ ! -x "$HUBGATE" || ! -x "$LOAD" ]]; then
    echo "[hub_compare] building release binaries ..." >&2
    cargo build --release -p hubgate -p hubgate-load
fi
[[ -x "$CHP" ]] || {
    echo "[hub_compare] CHP not found at $CHP (scripts/setup.sh installs it)" >&2
    exit 1
}
# The harness takes its proxy binaries from these.
export HUBGATE_BIN="$HUBGATE" CHP_BIN="$CHP"
WORK="$(mktemp -d -t hubgate-hub-compare.XXXXXX)"
export WORK
cleanup() {
    local rc=$?
    if [[ "$KEEP_WORK" == 1 || $rc -ne 0 ]]; then
        echo "[hub_compare] logs and raw JSON kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT

.venv/bin/python - <<'EOF'
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))
from tests.e2e.harness import Deployment, tagged_processes  # noqa: E402
from tests.e2e.oidc import AuthSetup, OidcProvider, generate_key  # noqa: E402

E = os.environ
USERS, RAMP, SESSION = int(E["USERS"]), float(E["RAMP"]), float(E["SESSION"])
EXEC_INTERVAL, IDLE_WS = float(E["EXEC_INTERVAL"]), int(E["IDLE_WS"])
SPAWN_TIMEOUT = float(E["SPAWN_TIMEOUT"])
WORK = Path(E["WORK"])
PREFIX = "load-user-"


def log(msg):
    print(f"[hub_compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


class Sampler(threading.Thread):
    """Once a second: RSS and cumulative CPU of the deployment's processes by kind
    (single-user servers, kernels, hub, proxy)."""

    def __init__(self, dep, proxy_pid):
        super().__init__(daemon=True)
        self.dep, self.proxy_pid = dep, proxy_pid
        self.samples = []  # (t, {kind: (count, rss_kib, cpu_s)}, kernel_ages)
        self.stop_ev = threading.Event()

    def kind(self, p):
        if p.pid == self.proxy_pid:
            return "proxy"
        if self.dep.hub is not None and p.pid == self.dep.hub.pid:
            return "hub"
        cmd = " ".join(p.cmdline())
        if "jupyterhub-singleuser" in cmd:
            return "server"
        if "ipykernel" in cmd:
            return "kernel"
        return "other"

    def sample(self):
        by = {}
        now = time.time()
        ages = []
        for p in tagged_processes(self.dep.tag):
            try:
                k = self.kind(p)
                with p.oneshot():
                    rss = p.memory_info().rss // 1024
                    c = p.cpu_times()
                    cpu = c.user + c.system
                    if k == "kernel":
                        ages.append(now - p.create_time())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            n, r, u = by.get(k, (0, 0, 0.0))
            by[k] = (n + 1, r + rss, u + cpu)
        self.samples.append((now, by, ages))

    def run(self):
        while not self.stop_ev.wait(1.0):
            self.sample()

    def stop(self):
        self.stop_ev.set()
        self.join(5)

    def peak(self, kind):
        """(largest count, RSS per process at that sample in MiB, peak summed RSS MiB)."""
        best = (0, 0.0, 0.0)
        for _, by, _ in self.samples:
            n, r, _ = by.get(kind, (0, 0, 0))
            if n and (n, r) > (best[0], best[2] * 1024):
                best = (n, r / n / 1024, r / 1024)
        return best

    def steady_cpu_pct(self, min_age=8.0):
        """CPU % of one core used by servers+kernels between samples where every kernel
        is older than min_age s (its start excluded) and the count did not change."""
        rates = []
        for (t0, b0, a0), (t1, b1, a1) in zip(self.samples, self.samples[1:]):
            if not a0 or len(a0) != len(a1) or min(a0) < min_age:
                continue
            if b0.get("server", (0,))[0] != b1.get("server", (0,))[0]:
                continue
            c0 = sum(b0.get(k, (0, 0, 0.0))[2] for k in ("server", "kernel"))
            c1 = sum(b1.get(k, (0, 0, 0.0))[2] for k in ("server", "kernel"))
            rates.append(100 * (c1 - c0) / (t1 - t0) / len(a1))
        return statistics.median(rates) if rates else None

    def lifetime_cpu(self, kinds=("server", "kernel")):
        """Largest cumulative CPU seen of the given kinds (process lifetimes), s."""
        return max(
            (sum(by.get(k, (0, 0, 0.0))[2] for k in kinds) for _, by, _ in self.samples),
            default=0.0,
        )


def run_one(label, users, session, exec_interval, idle_ws):
    kind = "chp" if label == "chp" else "hubgate"
    wd = WORK / label
    wd.mkdir(parents=True, exist_ok=True)
    idp = None
    auth = None
    bearer_file = None
    try:
        if label == "hubgate-auth":
            idp = OidcProvider(wd, generate_key("hub-compare-rs256"))
            now = int(time.time())
            life = {"iat": now - 5, "exp": now + 4 * 3600}
            # Tokens signed with the provider's key and carrying its MFA claims; minted
            # because the provider has four accounts and a run needs USERS of them.
            bearer_file = wd / "bearers.txt"
            bearer_file.touch(mode=0o600)
            bearer_file.write_text(
                "".join(
                    f"{PREFIX}{i} {idp.mint(idp.claims(f'{PREFIX}{i}', **life))}\n"
                    for i in range(1, users + 1)
                )
            )
            auth = AuthSetup(idp.issuer, idp.mint(idp.claims("probe", **life)), audit="denials")
        dep = Deployment(kind, "hub-managed", wd, auth=auth)
        try:
            dep.start()
            proxy_pid = int((wd / "proxy.pid").read_text().strip())
            sampler = Sampler(dep, proxy_pid)
            sampler.start()
            out = wd / "load.json"
            cmd = [
                E["LOAD"], "hub", dep.public_url + "/",
                "--users", str(users), "--ramp", f"{RAMP if users > 1 else 0}s",
                "--session", f"{session}s", "--exec-interval", f"{exec_interval}s",
                "--idle-ws", str(idle_ws), "--spawn-timeout", f"{SPAWN_TIMEOUT}s",
                "--proxy-pid", str(proxy_pid), "--json", str(out),
            ]  # fmt: skip
            if bearer_file is not None:
                cmd += ["--bearer-file", str(bearer_file)]
            la0 = loadavg()
            log(f"{label}: {users} users, session {session}s (loadavg {la0})")
            with open(wd / "load.log", "w") as lf:
                r = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, timeout=3600)
            sampler.stop()
            if r.returncode != 0:
                raise SystemExit(f"{label}: hubgate-load failed (see {wd}/load.log)")
            rep = json.loads(out.read_text())
            rep["loadavg"] = [la0, loadavg()]
            rep["sampled"] = {
                "server": sampler.peak("server"),
                "kernel": sampler.peak("kernel"),
                "hub": sampler.peak("hub"),
                "steady_cpu_pct_per_user": sampler.steady_cpu_pct(),
                "server_kernel_cpu_s": sampler.lifetime_cpu(),
            }
            print((wd / "load.log").read_text().split("\nhubgate-load hub ", 1)[-1][:3000],
                  file=sys.stderr)
            return rep
        finally:
            killed = dep.stop()
            if killed:
                log(f"{label}: teardown had to kill {len(killed)} process(es)")
    finally:
        if idp is not None:
            idp.stop()


def calibrate():
    """One user: idle (one execution, then nothing) and executing (every 0.5 s)."""
    idle = run_one("calibrate-idle", 1, 30, 3600, 0)
    busy = run_one("calibrate-exec", 1, 30, 0.5, 0)
    return idle, busy


results = {}
cal = calibrate() if E["CALIBRATE"] == "1" else None
for label in E["PROXIES"].split():
    results[label] = run_one(label, USERS, SESSION, EXEC_INTERVAL, IDLE_WS)


# ------------------------------------------------------------------ the table
def st(rep, stage):
    return rep["stages"][stage]


def ms(rep, stage, q):
    v = st(rep, stage)["ms"][q]
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def fails(rep):
    out = []
    for name, s in rep["stages"].items():
        for reason, n in s["failures"].items():
            out.append(f"{name}: {reason} ×{n}")
    return "; ".join(out) or "none"


labels = list(results)
rows = [
    ("users completed", lambda r: f"{r['users_completed']} / {r['users']}"),
    ("log in p50 / p99 (ms)", lambda r: f"{ms(r, 'login', 'p50')} / {ms(r, 'login', 'p99')}"),
    ("server running p50 / p99 (ms)", lambda r: f"{ms(r, 'spawn', 'p50')} / {ms(r, 'spawn', 'p99')}"),
    ("JupyterLab + API p50 / p99 (ms)", lambda r: f"{ms(r, 'lab', 'p50')} / {ms(r, 'lab', 'p99')}"),
    ("first kernel reply p50 / p99 (ms)",
     lambda r: f"{ms(r, 'first_kernel_reply', 'p50')} / {ms(r, 'first_kernel_reply', 'p99')}"),
    ("execute round trip p50 / p99 (ms)",
     lambda r: f"{ms(r, 'execute', 'p50')} / {ms(r, 'execute', 'p99')}"),
    ("executions", lambda r: f"{st(r, 'execute')['ok']:,}"),
    ("idle websockets held", lambda r: f"{st(r, 'idle_ws')['ok']}"),
    ("stop p50 (ms)", lambda r: ms(r, "stop", "p50")),
    ("failures", fails),
    ("proxy CPU during the run (s)", lambda r: f"{r['proxy']['cpu_us'] / 1e6:.2f}"),
    ("proxy RSS start / peak (MiB)",
     lambda r: f"{r['proxy']['rss_start_kib'] / 1024:.0f} / {r['proxy']['rss_peak_kib'] / 1024:.0f}"),
    ("single-user servers at peak (RSS each, MiB)",
     lambda r: f"{r['sampled']['server'][0]} ({r['sampled']['server'][1]:.0f})"),
    ("kernels at peak (RSS each, MiB)",
     lambda r: f"{r['sampled']['kernel'][0]} ({r['sampled']['kernel'][1]:.0f})"),
    ("run time (s)", lambda r: f"{r['duration_s']:.0f}"),
    ("load average before → after", lambda r: f"{r['loadavg'][0].split()[0]} → {r['loadavg'][1].split()[0]}"),
]
lines = [
    f"`benches/hub_compare.sh`: {USERS} users, logins over {RAMP:.0f} s, sessions of "
    f"{SESSION:.0f} s executing `print(6*7)` every {EXEC_INTERVAL:g} s, {IDLE_WS} idle "
    f"websockets per user; {time.strftime('%Y-%m-%d')}, "
    f"{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}.",
    "",
    "| | " + " | ".join(labels) + " |",
    "|---|" + "---:|" * len(labels),
]
for name, f in rows:
    lines.append(f"| {name} | " + " | ".join(f(results[l]) for l in labels) + " |")
if cal:
    idle, busy = cal
    si, sb = idle["sampled"], busy["sampled"]
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"
    lines += [
        "",
        "One user alone (calibration, hubgate): a single-user server "
        f"{si['server'][1]:.0f} MiB RSS and its kernel {si['kernel'][1]:.0f} MiB; server + kernel "
        f"use {fmt(si['steady_cpu_pct_per_user'])} % of a core at idle and "
        f"{fmt(sb['steady_cpu_pct_per_user'])} % while executing `print(6*7)` every 0.5 s "
        f"(execute p50 {ms(busy, 'execute', 'p50')} ms); starting the server and kernel took "
        f"{ms(idle, 'spawn', 'p50')} ms + {ms(idle, 'first_kernel_reply', 'p50')} ms and "
        f"{si['server_kernel_cpu_s']:.1f} s of CPU over the session.",
    ]
table = "\n".join(lines) + "\n"
Path(E["OUT"]).parent.mkdir(parents=True, exist_ok=True)
Path(E["OUT"]).write_text(table)
(WORK / "results.json").write_text(json.dumps({"runs": results, "calibration": cal}, indent=1))
print(table)

bm = E.get("BENCHMARKS")
if bm:
    begin, end = "<!-- hub-compare:begin -->", "<!-- hub-compare:end -->"
    p = Path(bm)
    text = p.read_text() if p.exists() else ""
    block = f"{begin}\n{table}{end}"
    if begin in text and end in text:
        a, rest = text.split(begin, 1)
        text = a + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## A real hub: hubgate vs CHP (and hubgate with auth)\n\n" + block + "\n"
    p.write_text(text)
    log(f"table written to {E['OUT']} and {bm}")
EOF
