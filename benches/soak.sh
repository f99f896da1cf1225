#!/usr/bin/env bash
# Soak: does hubgate give back what connections cost? A bench, not a timed test: it runs a
# release hubgate (no auth, one default target: the `hubgate-load echo-server` backend) on
# 127.0.0.1 and counts its open file descriptors (/proc/PID/fd) and RSS between phases.
#
#   benches/soak.sh            short mode:
#       baseline (after a few warm-up requests)
#       HTTP_CYCLES HTTP requests, each on its own connection (`Connection: close`)
#       WS_CYCLES websocket connect / echo / close cycles, in batches of WS_BATCH
#       IDLE_WS idle websockets opened, held IDLE_HOLD seconds, closed
#     and fails when, after a phase settles, the FDs are more than FD_SLACK above the baseline,
#     the RSS is more than RSS_GROWTH_MIB above it, or any request / websocket failed.
#   benches/soak.sh long       LONG_WS idle kernel-like websockets (one echo each, then silent)
#     held LONG_HOLD seconds with FDs and RSS sampled every SAMPLE_EVERY seconds; fails when
#     any websocket is cut during the hold (hubgate has no idle timeout on websockets), or FDs
#     do not return to baseline once they are closed.
#
# Knobs (environment): HTTP_CYCLES [10000] HTTP_CONNS [8] WS_CYCLES [2000] WS_BATCH [500]
#   IDLE_WS [1000] IDLE_HOLD [30] LONG_WS [1000] LONG_HOLD [3600] SAMPLE_EVERY [60]
#   FD_SLACK [4] RSS_GROWTH_MIB [64] SETTLE [30] (seconds to wait for FDs to return)
#   BUILD [1] (0: use the binaries as they are) HUBGATE [target/release/hubgate]
#   LOAD [target/release/hubgate-load] KEEP_WORK [0]
# Output: a log on stderr, one JSON line per measure in $WORK/records.jsonl and a summary
# table on stdout. Every process it starts is stopped on exit (benches/lib.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
MODE="${1:-short}"
case "$MODE" in
    short | long) ;;
    *) echo "usage: benches/soak.sh [short|long]" >&2; exit 2 ;;
esac

HTTP_CYCLES="${HTTP_CYCLES:-10000}"
HTTP_CONNS="${HTTP_CONNS:-8}"
WS_CYCLES="${WS_CYCLES:-2000}"
WS_BATCH="${WS_BATCH:-500}"
IDLE_WS="${IDLE_WS:-1000}"
IDLE_HOLD="${IDLE_HOLD:-30}"
LONG_WS="${LONG_WS:-1000}"
LONG_HOLD="${LONG_HOLD:-3600}"
SAMPLE_EVERY="${SAMPLE_EVERY:-60}"
FD_SLACK="${FD_SLACK:-4}"
RSS_GROWTH_MIB="${RSS_GROWTH_MIB:-64}"
SETTLE="${SETTLE:-30}"
BUILD="${BUILD:-1}"
HUBGATE="${HUBGATE:-target/release/hubgate}"
LOAD="${LOAD:-target/release/hubgate-load}"
KEEP_WORK="${KEEP_WORK:-0}"
# Unpinned: a soak measures what is kept, not speed.
LOAD_CPU="${LOAD_CPU:-0-$(($(nproc) - 1))}"
PROXY_CPU="${PROXY_CPU:-$LOAD_CPU}"

# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_init "soak-$MODE"

# Each held websocket costs hubgate two sockets and the load tool and backend one each.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ "$BUILD" == 1 ]]; then
    log "building release binaries (cargo build --release --bin hubgate --bin hubgate-load)"
    nice cargo build --release --bin hubgate --bin hubgate-load >&2
fi
[[ -x "$HUBGATE" && -x "$LOAD" ]] || die "need $HUBGATE and $LOAD (BUILD=1 builds them)"

start_backend
PROXY_PORT=$(free_port)
API_PORT=$(free_port)
CONFIGPROXY_AUTH_TOKEN="soak-$RANDOM$RANDOM" start_bg hubgate "$PROXY_CPU" "$HUBGATE" \
    --ip 127.0.0.1 --port "$PROXY_PORT" --api-ip 127.0.0.1 --api-port "$API_PORT" \
    --default-target "$BACKEND" --log-level warn
HUB_PID=$BG_PID
PROXY="127.0.0.1:$PROXY_PORT"
for _ in $(seq 100); do
    curl -s -o /dev/null "http://$PROXY/" && break
    sleep 0.1
done
[[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$PROXY/warm-up")" == 200 ]] ||
    die "hubgate does not proxy to the backend (see $WORK/hubgate.log)"

fds() { find /proc/"$HUB_PID"/fd -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

declare -A FD RSS
ORDER=()
FAIL=()
# snap LABEL: FDs and (settled) RSS of hubgate now.
snap() {
    FD[$1]=$(fds)
    RSS[$1]=$(rss_settled_kib "$HUB_PID")
    ORDER+=("$1")
    log "$1: fds=${FD[$1]} rss=$((RSS[$1] / 1024)) MiB"
    record 0 hubgate "$1" fds="${FD[$1]}" rss_kib="${RSS[$1]}" t_s="$SECONDS"
}
# settle LABEL: wait up to SETTLE s for the FDs to come back to the baseline, then snap and
# check FDs and RSS against the baseline.
settle() {
    local label="$1" i
    for ((i = 0; i < SETTLE * 10; i++)); do
        (($(fds) <= FD[baseline] + FD_SLACK)) && break
        sleep 0.1
    done
    snap "$label"
    if ((FD[$label] > FD[baseline] + FD_SLACK)); then
        FAIL+=("$label: ${FD[$label]} FDs, baseline ${FD[baseline]} (+$FD_SLACK allowed)")
    fi
    if ((RSS[$label] > RSS[baseline] + RSS_GROWTH_MIB * 1024)); then
        FAIL+=("$label: RSS $((RSS[$label] / 1024)) MiB, baseline $((RSS[baseline] / 1024)) MiB (+$RSS_GROWTH_MIB allowed)")
    fi
}
# jget FILE EXPR: a value from a hubgate-load --json summary (EXPR in Python, `s` the summary).
jget() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
# hold N HOLD_S LABEL: N idle websockets through hubgate, held HOLD_S seconds (sampled every
# SAMPLE_EVERY s), then closed; checks that all opened and none was cut.
hold() {
    local n="$1" hold_s="$2" label="$3" json="$WORK/$3.json" pid t0 next
    rm -f "$WORK/$label.ready" "$WORK/$label.stop"
    start_bg "$label" "$LOAD_CPU" "$LOAD" ws-hold "ws://$PROXY/user/soak/api/kernels/k/channels" \
        -c "$n" -k 64 --hold "$((hold_s + 600))s" --ready-file "$WORK/$label.ready" \
        --stop-file "$WORK/$label.stop" --json "$json" --no-progress
    pid=$BG_PID
    while [[ ! -s "$WORK/$label.ready" ]]; do
        kill -0 "$pid" 2>/dev/null || die "ws-hold exited early (see $WORK/$label.log)"
        sleep 0.5
    done
    log "$label: $(cat "$WORK/$label.ready")"
    snap "$label-open"
    t0=$SECONDS
    next=$((t0 + SAMPLE_EVERY))
    while ((SECONDS - t0 < hold_s)); do
        sleep 1
        kill -0 "$pid" 2>/dev/null || die "ws-hold exited during the hold (see $WORK/$label.log)"
        if ((SECONDS >= next && SECONDS - t0 < hold_s)); then
            snap "$label-held-$((SECONDS - t0))s"
            next=$((next + SAMPLE_EVERY))
        fi
    done
    snap "$label-held-end"
    touch "$WORK/$label.stop"
    wait "$pid" || true
    forget_pid "$pid"
    local opened dropped open_end
    opened=$(jget "$json" 's["extra"]["opened"]')
    dropped=$(jget "$json" 's["extra"]["dropped_while_held"]')
    open_end=$(jget "$json" 's["extra"]["open_at_end_of_hold"]')
    log "$label: opened $opened of $n, cut while held $dropped, open at end $open_end, held $(jget "$json" 's["extra"]["held_s"]') s"
    record 0 hubgate "$label-result" opened="$opened" dropped="$dropped" open_at_end="$open_end"
    ((opened == n && dropped == 0 && open_end == n)) ||
        FAIL+=("$label: opened $opened of $n, $dropped cut while held, $open_end open at the end")
}

snap baseline

if [[ "$MODE" == short ]]; then
    log "http: $HTTP_CYCLES requests, one connection each"
    "$LOAD" http "http://$PROXY/soak" -c "$HTTP_CONNS" -n "$HTTP_CYCLES" -H 'Connection: close' \
        --json "$WORK/http.json" --no-progress >"$WORK/http.out"
    ok=$(jget "$WORK/http.json" 's["status"].get("200", 0)')
    log "http: $ok x 200, $(jget "$WORK/http.json" 's["errors"]') errors"
    ((ok == HTTP_CYCLES)) || FAIL+=("http: $ok of $HTTP_CYCLES answered 200")
    settle after-http

    log "websocket: $WS_CYCLES connect/echo/close cycles"
    done_ws=0
    batch=0
    while ((done_ws < WS_CYCLES)); do
        n=$((WS_CYCLES - done_ws < WS_BATCH ? WS_CYCLES - done_ws : WS_BATCH))
        "$LOAD" ws-hold "ws://$PROXY/soak/ws" -c "$n" -k 64 --hold 0s \
            --json "$WORK/ws-$batch.json" --no-progress >"$WORK/ws-$batch.out"
        opened=$(jget "$WORK/ws-$batch.json" 's["extra"]["opened"]')
        ((opened == n)) || FAIL+=("websocket batch $batch: $opened of $n opened")
        done_ws=$((done_ws + n))
        batch=$((batch + 1))
    done
    settle after-ws

    log "idle: $IDLE_WS websockets held ${IDLE_HOLD} s"
    SAMPLE_EVERY=$((IDLE_HOLD + 1)) hold "$IDLE_WS" "$IDLE_HOLD" idle
    settle end
else
    log "long: $LONG_WS idle websockets held ${LONG_HOLD} s"
    hold "$LONG_WS" "$LONG_HOLD" long
    settle end
fi

kill -0 "$HUB_PID" 2>/dev/null || FAIL+=("hubgate exited (see $WORK/hubgate.log)")
printf '%-24s %6s %9s\n' measure fds rss_MiB
for l in "${ORDER[@]}"; do
    printf '%-24s %6s %9.1f\n' "$l" "${FD[$l]}" "$(echo "${RSS[$l]} / 1024" | bc -l)"
done
if ((${#FAIL[@]})); then
    printf 'soak FAILED: %s\n' "${FAIL[@]}" >&2
    exit 1
fi
log "soak $MODE passed (FDs within $FD_SLACK of baseline, RSS within $RSS_GROWTH_MIB MiB)"
