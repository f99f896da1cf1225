#!/usr/bin/env bash
# Heap allocations per proxied request, counted exactly (not timed): a measure that does not
# depend on how busy the machine is, for work on the request path.
#
#   benches/allocs.sh [BINARY...]             # default: target/release/hubgate
#   PROFILE=1 benches/allocs.sh BINARY        # also: where they come from (call sites)
#
# Each binary runs on 127.0.0.1 in front of the `hubgate-load echo-server` backend (no auth,
# default target). After WARMUP requests, uprobes on mimalloc's entry points (the global
# allocator of a default build: mi_malloc_aligned, mi_zalloc_aligned, mi_realloc_aligned)
# count every allocation hubgate makes while the load tool sends REQUESTS small keep-alive
# requests over 8 connections; the count divided by the requests is printed per entry point.
# With PROFILE=1 a second, shorter run records the call stack of each allocation (perf,
# DWARF unwinding) and prints the allocations per request by the first frame outside the
# allocator, std, bytes, hashbrown and the http crate's maps — the owner of the allocation.
#
# Needs root (uprobes), perf (linux-perf) and a binary built with the default `mimalloc`
# feature (symbols not stripped). Every process it starts is stopped on exit.
#
# Environment: REQUESTS [20000] WARMUP [2000] PROFILE_REQUESTS [300]
#   LOAD [target/release/hubgate-load] PATH_ON [/user/x/]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQUESTS="${REQUESTS:-20000}"
WARMUP="${WARMUP:-2000}"
PROFILE="${PROFILE:-0}"
PROFILE_REQUESTS="${PROFILE_REQUESTS:-300}"
LOAD="${LOAD:-$ROOT/target/release/hubgate-load}"
PATH_ON="${PATH_ON:-/user/x/}"
KEEP_WORK="${KEEP_WORK:-0}"
LOAD_CPU="${LOAD_CPU:-0-$(($(nproc) - 1))}"
[[ $# -gt 0 ]] || set -- "$ROOT/target/release/hubgate"
command -v perf >/dev/null || { echo "allocs.sh: perf not found (apt-get install linux-perf)" >&2; exit 2; }
[[ "$(id -u)" == 0 ]] || { echo "allocs.sh: uprobes need root" >&2; exit 2; }

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_init allocs
start_backend
PROBES=()
remove_probes() { for p in "${PROBES[@]}"; do perf probe -q -d "$p" 2>/dev/null || true; done; }
# lib.sh's cleanup stops every process and exits with the status; the probes go first
trap 'rc=$?; remove_probes; (exit $rc); cleanup' EXIT

n=0
for bin in "$@"; do
    bin="$(readlink -f "$bin")"
    n=$((n + 1))
    events=()
    for fn in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do
        nm "$bin" 2>/dev/null | grep " T $fn$" >/dev/null || die "$bin has no $fn: not a default (mimalloc) build, or stripped"
        ev="hubgate_allocs:b${n}_$fn"
        perf probe -q -d "$ev" 2>/dev/null || true # left by an interrupted run
        perf probe -q -x "$bin" --add "$ev=$fn" || die "perf probe on $fn in $bin failed"
        PROBES+=("$ev")
        events+=("$ev")
    done
    port=$(free_port)
    start_bg "hubgate-$n" 0-$(($(nproc) - 1)) "$bin" --ip 127.0.0.1 --port "$port" --api-ip 127.0.0.1 \
        --api-port "$(free_port)" --default-target "$BACKEND" --log-level warn
    pid=$BG_PID
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port$PATH_ON" && break; sleep 0.1; done
    url="http://127.0.0.1:$port$PATH_ON"
    "$LOAD" http "$url" -c 8 -n "$WARMUP" --no-progress >/dev/null 2>&1 || die "warm-up against $bin failed"
    ev_list=$(IFS=,; echo "${events[*]}")
    perf stat -x, -e "$ev_list" -p "$pid" -o "$WORK/stat-$n.txt" &
    spid=$!
    sleep 0.5
    "$LOAD" http "$url" -c 8 -n "$REQUESTS" --no-progress --json "$WORK/load-$n.json" >/dev/null 2>&1 ||
        die "load against $bin failed"
    sleep 0.3
    kill -INT "$spid"
    wait "$spid" || true
    python3 - "$WORK/stat-$n.txt" "$WORK/load-$n.json" "$bin" <<'EOF'
import json, sys
d = json.load(open(sys.argv[2]))
n = d["requests"]
if d["errors"] or not n:
    sys.exit(f"allocs.sh: the load had errors ({d['errors']}) or no requests")
total, parts = 0, []
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].isdigit():
        total += int(f[0])
        parts.append(f"{f[2].split('_', 1)[1]} {int(f[0]) / n:.2f}")
print(f"{sys.argv[3]}: {total / n:.2f} allocations per request ({n} requests; {', '.join(parts)})")
EOF
    if [[ "$PROFILE" == 1 ]]; then
        perf record -q -o "$WORK/rec-$n.data" -m 8M --call-graph dwarf,8192 -e "$ev_list" -p "$pid" &
        rpid=$!
        sleep 1
        "$LOAD" http "$url" -c 8 -n "$PROFILE_REQUESTS" --no-progress >/dev/null 2>&1 || die "profile load failed"
        sleep 0.3
        kill -INT "$rpid"
        wait "$rpid" || true
        perf script -i "$WORK/rec-$n.data" -F event,ip,sym 2>/dev/null >"$WORK/rec-$n.txt"
        python3 - "$WORK/rec-$n.txt" "$PROFILE_REQUESTS" <<'EOF'
import collections, re, sys
samples, cur = [], None
for line in open(sys.argv[1]):
    if "hubgate_allocs:" in line and not line.startswith((" " * 5, "\t")):
        cur = []
        samples.append(cur)
        continue
    m = re.match(r"\s+[0-9a-f]+ (.*)", line)
    if m and cur is not None:
        cur.append(m.group(1).strip())
GENERIC = re.compile(r"^(mi_|__rust|<?alloc::|<?core::|<?hashbrown|<?std::|<?bytes::|\[unknown\]|<?smallvec|<?http::header::map)")
owners = collections.Counter()
for s in samples:
    owners[next((f for f in s if not GENERIC.match(f)), s[-1] if s else "?")] += 1
n = int(sys.argv[2])
print(f"  by owner ({len(samples) / n:.1f} per request recorded; perf may lose some under load):")
for owner, k in owners.most_common(30):
    print(f"  {k / n:6.2f}  {owner[:140]}")
EOF
    fi
    stop_pid "$pid"
    forget_pid "$pid"
done
