#!/usr/bin/env bash
# Route table and REST API, side by side: hubgate vs configurable-http-proxy (CHP), both in front
# of the same `hubgate-load echo-server` backend on 127.0.0.1 (targets: docs/performance.md, "Targets").
#
# Per proxy and rep, on a fresh proxy process (same flags for both: --ip/--port, --api-ip/
# --api-port, --default-target, --log-level warn; token in CONFIGPROXY_AUTH_TOKEN):
#   1. RSS (VmRSS of the process tree, median of 3 samples) idle, then after adding N routes
#      with N sequential POSTs over ONE keep-alive connection (`hubgate-load api-fill`, JupyterHub's
#      body and `Authorization: token`): KiB per route = (after - before) / N; the fill's total
#      time and per-POST latency are the POST measure;
#   2. GET /api/routes with N+1 routes, GETS times over one connection (after 2 unrecorded
#      GETs): median and slowest;
#   3. small proxied requests to one of the new routes, each with and without a concurrent
#      `hubgate-load api-churn` (CHURN_RATE route writes/s: adds and deletes, CHURN_CONNS
#      connections): a closed loop of C connections (saturates the proxy: rps and p99 there
#      mostly measure throughput), then PAIRS pairs at a fixed rate of RATE_FRACTION x that
#      closed-loop rps, at most RATE_CAP (below saturation: p99 measures how much the route
#      writes disturb the requests; the "within 10 %" target is judged on the median of these
#      paired ratios). 0.4, because below saturation a wake-up serves fewer requests and a
#      request costs the proxy ~1.5x its CPU at saturation: 0.4 keeps it ~60 % busy (0.6
#      overloaded it whenever the machine got busier). RATE_CAP, because the load tool and
#      the backend share core 0: above ~7,000 req/s the load tool's own lateness (send_lag in
#      its JSON, reported) dominated the p99. Order with/without alternates (ABBA) per rep;
#   4. N more POSTs with the proxy moved onto the load core (no cross-core wake-ups: what the
#      API itself costs, apart from the VM's ~100 us of cross-core hops per round trip);
#   5. hubgate only (N_BIG > 0), on another fresh process: RSS per route and POST time for
#      N_BIG routes, and GET /api/routes with N_BIG+1 routes.
# The proxy is pinned to core PROXY_CPU (1); the load tools and the backend to LOAD_CPU (0).
# Before each measure (not between a churn and the load it accompanies) it waits for a quiet
# machine like benches/compare.sh. Proxies run in a rotating order per rep.
#
# Usage:  benches/route_table.sh              # REPS=3: ~6 minutes on a quiet 2-core machine
#         REPS=1 N_BIG=0 benches/route_table.sh   # quick look (~1.5 minutes)
#
# Environment (defaults in brackets):
#   REPS [3]  N [10000] (routes)  N_BIG [100000] (hubgate only; 0 = skip)  GETS [20]
#   DURATION [5] (each proxied-load run, s)  C [64] (connections)  RATE_FRACTION [0.4]
#   RATE_CAP [6000] (req/s)  PAIRS [2] (fixed-rate with/without pairs per rep)
#   CHURN_RATE [1000] (route writes/s)  CHURN_CONNS [2]  WARMUP [1] (s of load before the first run)
#   PROXIES ["hubgate chp"]  HUBGATE [target/release/hubgate]  LOAD [target/release/hubgate-load]
#   HUBGATE_LABEL  CHP [.tools/node_modules/.bin/configurable-http-proxy]
#   MIMALLOC_ALLOW_THP [0] (for hubgate, as the systemd unit and compose file run it)
#   PROXY_CPU [1]  LOAD_CPU [0]  QUIET_WAIT [600]  QUIET_TOTAL [1800]  QUIET_BUSY [30]
#   OUT [benches/results/route_table.md] (+ .json)  KEEP_WORK [0] (keep raw JSON and logs)
#
# The release binaries are built first if missing; nothing is built while measuring. Every
# process this script starts is stopped on exit, Ctrl-C or failure. Loopback only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

REPS="${REPS:-3}"
N="${N:-10000}"
N_BIG="${N_BIG:-100000}"
GETS="${GETS:-20}"
DURATION="${DURATION:-5}"
C="${C:-64}"
RATE_FRACTION="${RATE_FRACTION:-0.4}"
RATE_CAP="${RATE_CAP:-6000}"
PAIRS="${PAIRS:-2}"
CHURN_RATE="${CHURN_RATE:-1000}"
CHURN_CONNS="${CHURN_CONNS:-2}"
WARMUP="${WARMUP:-1}"
PROXIES="${PROXIES:-hubgate chp}"
HUBGATE="${HUBGATE:-$ROOT/target/release/hubgate}"
LOAD="${LOAD:-$ROOT/target/release/hubgate-load}"
CHP="${CHP:-$ROOT/.tools/node_modules/.bin/configurable-http-proxy}"
MIMALLOC_ALLOW_THP="${MIMALLOC_ALLOW_THP:-0}"
PROXY_CPU="${PROXY_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
QUIET_WAIT="${QUIET_WAIT:-600}"
QUIET_TOTAL="${QUIET_TOTAL:-1800}"
QUIET_BUSY="${QUIET_BUSY:-30}"
OUT="${OUT:-$ROOT/benches/results/route_table.md}"
KEEP_WORK="${KEEP_WORK:-0}"
TOKEN="bench-$$"

# log, die, process bookkeeping and exit traps, free_port, wait_quiet, rss_kib, record
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_init route_table

# ------------------------------------------------------------------ prerequisites

command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v curl >/dev/null || die "curl not found"
command -v python3 >/dev/null || die "python3 not found"
[[ "$(nproc)" -ge 2 ]] || die "needs at least 2 CPUs (proxy and load generator on separate cores)"
for p in $PROXIES; do
    case "$p" in
    hubgate) ;;
    chp) [[ -x "$CHP" ]] || die "CHP not found at $CHP (scripts/setup.sh installs it)" ;;
    *) die "unknown proxy '$p' (hubgate, chp)" ;;
    esac
done
[[ "$N" -ge 100 ]] || die "N=$N: at least 100 routes (the load goes to one of them)"
if [[ ! -x "$HUBGATE" || ! -x "$LOAD" ]]; then
    log "building release binaries (cargo build --release -p hubgate -p hubgate-load)"
    cargo build --release -p hubgate -p hubgate-load >&2
fi
"$LOAD" api-fill --help >/dev/null 2>&1 || die "$LOAD has no api-fill mode: rebuild it (cargo build --release -p hubgate-load)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ------------------------------------------------------------------ backend

start_backend

# ------------------------------------------------------------------ proxies

PROXY_PID=""
PROXY_PORT=""
API_PORT=""
CHURN_PID=""
CHURN_JSON=""

# start_proxy NAME LOGNAME: sets PROXY_PID, PROXY_PORT, API_PORT; waits until the API answers
# and the default route proxies
start_proxy() {
    local name="$1" logname="$2" bin="$HUBGATE" i code
    [[ "$name" == chp ]] && bin="$CHP"
    PROXY_PORT=$(free_port)
    API_PORT=$(free_port)
    CONFIGPROXY_AUTH_TOKEN="$TOKEN" MIMALLOC_ALLOW_THP="$MIMALLOC_ALLOW_THP" start_bg "$logname" "$PROXY_CPU" "$bin" \
        --ip 127.0.0.1 --port "$PROXY_PORT" --api-ip 127.0.0.1 --api-port "$API_PORT" \
        --default-target "$BACKEND" --log-level warn
    PROXY_PID=$BG_PID
    for i in $(seq 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: token $TOKEN" \
            "http://127.0.0.1:$API_PORT/api/routes" || true)
        [[ "$code" == 200 ]] && break
        kill -0 "$PROXY_PID" 2>/dev/null || die "$name exited at start (see $WORK/$logname.log)"
        sleep 0.1
    done
    [[ "$code" == 200 ]] || die "$name API not ready (see $WORK/$logname.log)"
    for i in $(seq 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PROXY_PORT/" || true)
        [[ "$code" == 200 ]] && break
        sleep 0.1
    done
    [[ "$code" == 200 ]] || die "$name does not proxy (last status $code; see $WORK/$logname.log)"
}

stop_proxy() {
    [[ -n "$PROXY_PID" ]] || return 0
    stop_pid "$PROXY_PID"
    forget_pid "$PROXY_PID"
    PROXY_PID=""
}

# ------------------------------------------------------------------ measures

# run_load REP TARGET MEASURE QUIET(1|0) ARGS...: hubgate-load ARGS pinned to LOAD_CPU (in the
# background, so a signal to this script is handled at once), its JSON recorded. QUIET=0 skips
# the quiet wait (a churn started for this measure keeps the machine busy on purpose).
run_load() {
    local rep="$1" target="$2" measure="$3" quiet="$4"
    shift 4
    local base="$WORK/r$rep-$target-$measure" lpid
    local watch=(--watch "backend=$BACKEND_PID" --watch "proxy=$PROXY_PID")
    [[ -n "$CHURN_PID" ]] && watch+=(--watch "churn=$CHURN_PID")
    if [[ "$quiet" == 1 ]]; then
        wait_quiet
    else
        WAITED=0
        COMPILERS_AT_START=$(compilers_running)
    fi
    taskset -c "$LOAD_CPU" "$LOAD" "$@" --json "$base.json" "${watch[@]}" >"$base.out" 2>"$base.err" &
    lpid=$!
    PIDS+=("$lpid")
    if ! wait "$lpid"; then
        forget_pid "$lpid"
        die "hubgate-load $measure against $target failed: $(tail -3 "$base.err")"
    fi
    forget_pid "$lpid"
    record "$rep" "$target" "$measure" "json=$base.json" "waited_s=$WAITED" "compilers=$COMPILERS_AT_START"
    summary_line "$base.json" "$target" "$measure"
}

summary_line() { # JSON TARGET MEASURE: one line on stderr
    python3 - "$@" >&2 <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); l = d["latency_us"]
w = d.get("watch", {}).get("proxy")
cpu = f"  proxy {w['cpu_us'] / max(1, d['requests']):.1f} µs cpu/op" if w else ""
print(f"    {sys.argv[2]:<8} {sys.argv[3]:<13} {d['requests']:>7} in {d['duration_s']:.2f} s  {d['rps']:>9.0f}/s"
      f"  p50 {l['p50']} µs  p99 {l['p99']} µs  errors {d['errors']}{cpu}"
      f"  (bg busy {d['machine']['background_busy_pct']}%)")
EOF
}

# start_churn REP TARGET MEASURE: route writes at CHURN_RATE for DURATION + 2 s (so they cover
# the load started a second later); sets CHURN_PID
start_churn() {
    local rep="$1" target="$2" measure="$3"
    CHURN_JSON="$WORK/r$rep-$target-$measure"
    wait_quiet
    taskset -c "$LOAD_CPU" "$LOAD" api-churn "http://127.0.0.1:$API_PORT" --rate "$CHURN_RATE" \
        -c "$CHURN_CONNS" -d "$((DURATION + 2))s" --token "$TOKEN" --prefix /user/churn- \
        --target "$BACKEND" --json "$CHURN_JSON.json" --watch "proxy=$PROXY_PID" \
        >"$CHURN_JSON.out" 2>"$CHURN_JSON.err" &
    CHURN_PID=$!
    PIDS+=("$CHURN_PID")
    sleep 1
    kill -0 "$CHURN_PID" 2>/dev/null || die "api-churn against $target exited early: $(tail -3 "$CHURN_JSON.err")"
}

stop_churn() { # REP TARGET MEASURE: wait for the churn to end and record it
    local rep="$1" target="$2" measure="$3"
    if ! wait "$CHURN_PID"; then
        forget_pid "$CHURN_PID"
        CHURN_PID=""
        die "api-churn against $target failed: $(tail -3 "$CHURN_JSON.err")"
    fi
    forget_pid "$CHURN_PID"
    CHURN_PID=""
    record "$rep" "$target" "$measure" "json=$CHURN_JSON.json"
    summary_line "$CHURN_JSON.json" "$target" "$measure"
}

# proxied REP TARGET NAME CHURN(0|1) ARGS...: a proxied load, with or without a churn around it
proxied() {
    local rep="$1" target="$2" name="$3" churn="$4"
    shift 4
    local url="http://127.0.0.1:$PROXY_PORT/user/bench-7/"
    if [[ "$churn" == 1 ]]; then
        start_churn "$rep" "$target" "churn_$name"
        run_load "$rep" "$target" "${name}_churn" 0 http "$url" -c "$C" -d "$DURATION" "$@"
        stop_churn "$rep" "$target" "churn_$name"
    else
        run_load "$rep" "$target" "$name" 1 http "$url" -c "$C" -d "$DURATION" "$@"
    fi
}

fill() { # fill REP TARGET MEASURE COUNT PREFIX
    run_load "$1" "$2" "$3" 1 api-fill "http://127.0.0.1:$API_PORT" -n "$4" --token "$TOKEN" \
        --prefix "$5" --target "$BACKEND" -d 300s
}

gets() { # gets REP TARGET MEASURE COUNT: GET /api/routes over one connection
    local url="http://127.0.0.1:$API_PORT/api/routes"
    # two unrecorded GETs first (the first one also pays for lazily built state)
    taskset -c "$LOAD_CPU" "$LOAD" http "$url" -c 1 -n 2 -H "Authorization: token $TOKEN" \
        --no-progress >/dev/null 2>&1 || true
    run_load "$1" "$2" "$3" 1 http "$url" -c 1 -n "$4" -H "Authorization: token $TOKEN" --timeout 30s
}

measure_proxy() { # REP TARGET
    local rep="$1" target="$2" before after order rate
    start_proxy "$target" "$target-r$rep"
    wait_quiet
    sleep 1
    before=$(rss_settled_kib "$PROXY_PID")
    fill "$rep" "$target" fill "$N" /user/bench-
    sleep 1
    after=$(rss_settled_kib "$PROXY_PID")
    record "$rep" "$target" rss "before_kib=$before" "after_kib=$after" "n=$N"
    log "  $target: RSS $((before / 1024)) -> $((after / 1024)) MiB with $N routes"
    gets "$rep" "$target" get "$GETS"

    if [[ "$WARMUP" != 0 ]]; then
        taskset -c "$LOAD_CPU" "$LOAD" http "http://127.0.0.1:$PROXY_PORT/user/bench-7/" -c "$C" \
            -d "$WARMUP" --no-progress >/dev/null 2>&1 || true
    fi
    # with and without churn, in an order that alternates per rep so drift hits both alike
    order="0 1"
    ((rep % 2 == 0)) && order="1 0"
    for ch in $order; do proxied "$rep" "$target" closed "$ch"; done
    rate=$(python3 -c 'import json,sys; print(max(100, min(int(sys.argv[3]), round(json.load(open(sys.argv[1]))["rps"] * float(sys.argv[2])))))' \
        "$WORK/r$rep-$target-closed.json" "$RATE_FRACTION" "$RATE_CAP")
    record "$rep" "$target" fixed_rate "value=$rate"
    local pair
    for ((pair = 1; pair <= PAIRS; pair++)); do
        # ABBA: every pair after the first runs in the opposite order of the one before
        ((pair > 1)) && order="$(echo "$order" | awk '{print $2, $1}')"
        for ch in $order; do proxied "$rep" "$target" "fixed_p$pair" "$ch" --rate "$rate"; done
    done

    # the POSTs again, with the proxy on the load core (no cross-core wake-ups)
    pin_tree "$PROXY_PID" "$LOAD_CPU"
    fill "$rep" "$target" fill_same "$N" /user/same-
    stop_proxy

    if [[ "$target" == hubgate && "$N_BIG" -gt 0 ]]; then
        start_proxy "$target" "$target-big-r$rep"
        wait_quiet
        sleep 1
        before=$(rss_settled_kib "$PROXY_PID")
        fill "$rep" "$target" fill_big "$N_BIG" /user/big-
        sleep 1
        after=$(rss_settled_kib "$PROXY_PID")
        record "$rep" "$target" rss_big "before_kib=$before" "after_kib=$after" "n=$N_BIG"
        log "  $target: RSS $((before / 1024)) -> $((after / 1024)) MiB with $N_BIG routes"
        gets "$rep" "$target" get_big 5
        stop_proxy
    fi
}

# ------------------------------------------------------------------ the run

describe_machine() {
    {
        echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "nproc=$(nproc)"
        echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
        echo "kernel=$(uname -r)"
        echo "mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
        echo "chp=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' \
            "$(dirname "$(readlink -f "$CHP")")/../package.json" 2>/dev/null || echo '?')"
        echo "node=$(node --version 2>/dev/null || echo '?')"
        echo "hubgate=${HUBGATE_LABEL:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$([[ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml 2>/dev/null)" ]] && echo ' + uncommitted changes')}"
        echo "hubgate_bin=$HUBGATE ($(date -u -r "$HUBGATE" +%Y-%m-%dT%H:%M:%SZ))"
        echo "mimalloc_allow_thp=$MIMALLOC_ALLOW_THP"
        echo "reps=$REPS"
        echo "n=$N"
        echo "n_big=$N_BIG"
        echo "gets=$GETS"
        echo "duration=$DURATION"
        echo "connections=$C"
        echo "rate_fraction=$RATE_FRACTION"
        echo "rate_cap=$RATE_CAP"
        echo "pairs=$PAIRS"
        echo "churn_rate=$CHURN_RATE"
        echo "churn_conns=$CHURN_CONNS"
        echo "proxy_cpu=$PROXY_CPU"
        echo "load_cpu=$LOAD_CPU"
        echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    } >"$WORK/machine.env"
}

describe_machine
log "work dir $WORK; backend $BACKEND (pid $BACKEND_PID); REPS=$REPS N=$N N_BIG=$N_BIG"
T0=$SECONDS
read -r -a TARGETS <<<"$PROXIES"
for ((rep = 1; rep <= REPS; rep++)); do
    order=()
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do
        order+=("${TARGETS[$(((i + rep - 1) % ${#TARGETS[@]}))]}")
    done
    log "rep $rep/$REPS: ${order[*]}"
    for target in "${order[@]}"; do
        measure_proxy "$rep" "$target"
    done
done
{
    echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "elapsed_s=$((SECONDS - T0))"
    echo "quiet_wait_s=$QUIET_SPENT"
} >>"$WORK/machine.env"

mkdir -p "$(dirname "$OUT")"
python3 "$ROOT/benches/route_table_report.py" "$WORK" "$OUT"
cat "$OUT"
log "done in $((SECONDS - T0)) s; table in $OUT"
