#!/usr/bin/env bash
# A/B of two hubgate binaries on the request path: proxy CPU per request, same run.
#
#   benches/ab.sh OLD_BINARY NEW_BINARY       # e.g. a copy of the last release build, and HEAD's
#
# Both binaries run side by side (each pinned to core PROXY_CPU, one measured at a time) in
# front of the `hubgate-load echo-server` backend; the load tool alternates between them
# ROUNDS times (A B B A A B …, so slow drift in background load hits both alike) with MEASURE
# (`small`: 100-byte responses, or `big`: 64 KiB; c64 keep-alive for DURATION s). It prints
# the CPU per request of each run, the medians and the ratio NEW/OLD. With NGINX=1, nginx (the
# configuration of benches/compare.sh) is a third arm of the same rotation, and the share of
# the gap to nginx that NEW closes is printed: the issue of record keeps a request-path change
# only if it closes at least a quarter of it. What to judge a change by: docs/performance.md,
# "How to read the figures". Loopback only; every process is stopped.
#
# Environment: ROUNDS [6] DURATION [5] MEASURE [small] PROXY_CPU [1] LOAD_CPU [0] NGINX [0]
#   LOAD [target/release/hubgate-load] CONFIG [none: a --config file given to both]
set -euo pipefail
KEEP_WORK="${KEEP_WORK:-0}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ $# == 2 ]] || { echo "usage: benches/ab.sh OLD_BINARY NEW_BINARY" >&2; exit 2; }
OLD="$(readlink -f "$1")"
NEW="$(readlink -f "$2")"
ROUNDS="${ROUNDS:-6}"
DURATION="${DURATION:-5}"
MEASURE="${MEASURE:-small}"
PROXY_CPU="${PROXY_CPU:-1}"
NGINX_ARM="${NGINX:-0}"
LOAD_CPU="${LOAD_CPU:-0}"
LOAD="${LOAD:-$ROOT/target/release/hubgate-load}"
CONFIG="${CONFIG:-}"
case "$MEASURE" in
    small) PATH_ON="/user/bench/" ;;
    big) PATH_ON="/user/bench/64k" ;;
    *) echo "ab.sh: MEASURE is small or big, not '$MEASURE'" >&2; exit 2 ;;
esac
for b in "$OLD" "$NEW" "$LOAD"; do [[ -x "$b" ]] || { echo "ab.sh: $b is not an executable" >&2; exit 2; }; done

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_init ab
start_backend

declare -A PORT PID
for side in old new; do
    bin="$OLD"
    [[ "$side" == new ]] && bin="$NEW"
    PORT[$side]=$(free_port)
    api=$(free_port)
    extra=()
    [[ -n "$CONFIG" ]] && extra=(--config "$CONFIG")
    start_bg "hubgate-$side" "$PROXY_CPU" "$bin" --ip 127.0.0.1 --port "${PORT[$side]}" \
        --api-ip 127.0.0.1 --api-port "$api" --default-target "$BACKEND" --log-level warn "${extra[@]}"
    PID[$side]=$BG_PID
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:${PORT[$side]}$PATH_ON" && break
        sleep 0.1
    done
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORT[$side]}$PATH_ON")" == 200 ]] ||
        die "hubgate-$side does not proxy (see $WORK/hubgate-$side.log)"
done

sides=(old new)
if [[ "$NGINX_ARM" == 1 ]]; then
    command -v nginx >/dev/null || die "NGINX=1 but nginx is not installed (scripts/setup.sh)"
    PORT[nginx]=$(free_port)
    write_nginx_conf "$WORK/nginx" "${PORT[nginx]}" 0
    start_bg nginx "$PROXY_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:${PORT[nginx]}$PATH_ON" && break
        sleep 0.1
    done
    PID[nginx]=$(pgrep -P "$BG_PID" nginx | head -1)
    [[ -n "${PID[nginx]}" ]] || die "nginx did not start (see $WORK/nginx.log)"
    sides+=(nginx)
fi

order=()
for ((r = 0; r < ROUNDS; r++)); do
    # Rotate the starting side, so slow drift in background load hits every side alike.
    for ((k = 0; k < ${#sides[@]}; k++)); do order+=("${sides[(r + k) % ${#sides[@]}]}"); done
done
i=0
for side in "${order[@]}"; do
    i=$((i + 1))
    json="$WORK/$i-$side.json"
    taskset -c "$LOAD_CPU" "$LOAD" http "http://127.0.0.1:${PORT[$side]}$PATH_ON" -c 64 -d "$DURATION" \
        --no-progress --json "$json" --watch "proxy=${PID[$side]}" >/dev/null 2>"$WORK/$i-$side.err" ||
        die "hubgate-load against $side failed: $(tail -3 "$WORK/$i-$side.err")"
    echo "$side $json" >>"$WORK/runs"
done

python3 - "$WORK/runs" "$MEASURE" "$OLD" "$NEW" <<'EOF'
import json, statistics, sys
runs, measure, old, new = sys.argv[1:]
cpu = {"old": [], "new": [], "nginx": []}
for line in open(runs):
    side, path = line.split()
    d = json.load(open(path))
    if d["errors"] or not d["requests"]:
        sys.exit(f"ab.sh: {side} run {path} had errors ({d['errors']}) or no requests")
    c = d["watch"]["proxy"]["cpu_us"] / d["requests"]
    cpu[side].append(c)
    print(f"  {side:<4} {d['rps']:>9.0f}/s  proxy {c:6.2f} µs cpu/request  (bg busy {d['machine']['background_busy_pct']}%)")
mo, mn = statistics.median(cpu["old"]), statistics.median(cpu["new"])
print(f"{measure}: old {mo:.2f} µs ({min(cpu['old']):.2f}–{max(cpu['old']):.2f}), "
      f"new {mn:.2f} µs ({min(cpu['new']):.2f}–{max(cpu['new']):.2f}), new/old {mn / mo:.3f}×")
if cpu["nginx"]:
    mx = statistics.median(cpu["nginx"])
    gap = mo - mx
    print(f"nginx {mx:.2f} µs ({min(cpu['nginx']):.2f}–{max(cpu['nginx']):.2f}): old/nginx {mo / mx:.2f}×, "
          f"new/nginx {mn / mx:.2f}×; new closes {100 * (mo - mn) / gap:.0f} % of the gap" if gap > 0 else
          f"nginx {mx:.2f} µs: old is already at or below nginx")
print(f"old = {old}\nnew = {new}")
EOF
