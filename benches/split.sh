#!/usr/bin/env bash
# Where a proxy's CPU per small request goes: user space or the kernel, hubgate and nginx in
# one run. The kernel's share (socket calls, and on loopback the receiving side's TCP work,
# which Linux charges to the sender) is what no proxy can avoid; the user-space share is what
# hubgate's code and pingora's structure cost (docs/performance.md, "User space and kernel").
#
#   benches/split.sh [HUBGATE_BINARY]      # default target/release/hubgate
#
# Each proxy pinned to PROXY_CPU in front of the `hubgate-load echo-server` backend; the load
# tool (on LOAD_CPU) sends c64 keep-alive small requests for DURATION s, ROUNDS times per proxy,
# alternating. Per run: utime and stime of the proxy (its nginx worker) from /proc, divided by
# the requests. Loopback only; every process is stopped.
#
# Environment: ROUNDS [3] DURATION [5] PROXY_CPU [1] LOAD_CPU [0]
#   LOAD [target/release/hubgate-load] NGINX [nginx]
set -euo pipefail
KEEP_WORK="${KEEP_WORK:-0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HUBGATE="$(readlink -f "${1:-target/release/hubgate}")"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
PROXY_CPU="${PROXY_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
LOAD="${LOAD:-$ROOT/target/release/hubgate-load}"
NGINX="${NGINX:-nginx}"
for b in "$HUBGATE" "$LOAD"; do [[ -x "$b" ]] || { echo "split.sh: $b is not an executable" >&2; exit 2; }; done
command -v "$NGINX" >/dev/null || { echo "split.sh: nginx not found (scripts/setup.sh installs it)" >&2; exit 2; }

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_init split
start_backend

declare -A PORT WATCH
PORT[hubgate]=$(free_port)
start_bg hubgate "$PROXY_CPU" "$HUBGATE" --ip 127.0.0.1 --port "${PORT[hubgate]}" \
    --api-ip 127.0.0.1 --api-port "$(free_port)" --default-target "$BACKEND" --log-level warn
WATCH[hubgate]=$BG_PID
PORT[nginx]=$(free_port)
write_nginx_conf "$WORK/nginx" "${PORT[nginx]}" 0
start_bg nginx "$PROXY_CPU" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
nginx_master=$BG_PID
for p in hubgate nginx; do
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:${PORT[$p]}/user/bench/" && break
        sleep 0.1
    done
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORT[$p]}/user/bench/")" == 200 ]] ||
        die "$p does not proxy (see $WORK/$p.log)"
done
WATCH[nginx]=$(pgrep -P "$nginx_master" nginx | head -1)
[[ -n "${WATCH[nginx]}" ]] || die "no nginx worker under $nginx_master"

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # utime stime, in clock ticks
: >"$WORK/runs"
for ((r = 0; r < ROUNDS; r++)); do
    for p in hubgate nginx; do
        json="$WORK/$r-$p.json"
        read -r u0 s0 < <(ticks "${WATCH[$p]}")
        taskset -c "$LOAD_CPU" "$LOAD" http "http://127.0.0.1:${PORT[$p]}/user/bench/" -c 64 -d "$DURATION" \
            --no-progress --json "$json" >/dev/null 2>"$WORK/$r-$p.err" ||
            die "hubgate-load against $p failed: $(tail -3 "$WORK/$r-$p.err")"
        read -r u1 s1 < <(ticks "${WATCH[$p]}")
        echo "$p $json $((u1 - u0)) $((s1 - s0))" >>"$WORK/runs"
    done
done

python3 - "$WORK/runs" "$(getconf CLK_TCK)" <<'PY'
import json, statistics, sys
runs, hz = sys.argv[1], int(sys.argv[2])
out = {}
for line in open(runs):
    p, path, du, ds = line.split()
    d = json.load(open(path))
    if d["errors"] or not d["requests"]:
        sys.exit(f"split.sh: {p} run {path} had errors ({d['errors']}) or no requests")
    n = d["requests"]
    us = lambda t: int(t) * 1e6 / hz / n
    out.setdefault(p, []).append((us(du), us(ds), d["rps"]))
for p, v in out.items():
    u = statistics.median(x[0] for x in v)
    s = statistics.median(x[1] for x in v)
    r = statistics.median(x[2] for x in v)
    print(f"{p:<8} user {u:5.1f} µs  kernel {s:5.1f} µs  total {u + s:5.1f} µs per request  ({r:,.0f}/s, medians of {len(v)})")
h, n = out["hubgate"], out["nginx"]
hu, nu = statistics.median(x[0] for x in h), statistics.median(x[0] for x in n)
hs, ns = statistics.median(x[1] for x in h), statistics.median(x[1] for x in n)
print(f"hubgate - nginx: user {hu - nu:+.1f} µs, kernel {hs - ns:+.1f} µs")
PY
