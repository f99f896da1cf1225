# Shell functions shared by the side-by-side benchmarks (benches/compare.sh,
# benches/route_table.sh). Source it, then call `bench_init NAME` once the knobs are set.
#
# The caller sets (before bench_init): KEEP_WORK (1 = keep the work dir), QUIET_WAIT,
# QUIET_TOTAL, QUIET_BUSY (see wait_quiet). bench_init sets WORK (a temp dir), PIDS (every
# process started, stopped in reverse order on exit, failure or Ctrl-C), QUIET_SPENT and
# RECORDS ($WORK/records.jsonl, written by `record`).
# shellcheck shell=bash

BENCH_NAME="${BENCH_NAME:-bench}"

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# ------------------------------------------------------------------ process bookkeeping

stop_pid() { # stop_pid PID [signal]: TERM (or the given signal), then KILL after 3 s
    local pid="$1" sig="${2:-TERM}" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    for i in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}"
    done
    # anything else still attached to this shell
    for pid in $(jobs -p); do stop_pid "$pid" KILL; done
    if [[ "$KEEP_WORK" == 1 || $rc -ne 0 ]]; then
        log "raw results and logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}

# bench_init NAME: the work dir hubgate-NAME.XXXXXX, the process list, the exit traps, the
# quiet-wait account and the records file.
bench_init() {
    BENCH_NAME="$1"
    WORK="$(mktemp -d -t "hubgate-$1.XXXXXX")"
    PIDS=()
    QUIET_SPENT=0
    trap cleanup EXIT
    trap 'log interrupted; exit 130' INT
    trap 'log terminated; exit 143' TERM
    RECORDS="$WORK/records.jsonl"
    : >"$RECORDS"
}

# start_bg NAME CPU CMD...: start CMD pinned to CPU in the background, output to $WORK/NAME.log;
# sets BG_PID.
start_bg() {
    local name="$1" cpu="$2"
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
}

forget_pid() { # drop a stopped pid from PIDS
    local p="$1" i
    for i in "${!PIDS[@]}"; do [[ "${PIDS[$i]}" == "$p" ]] && unset 'PIDS[i]'; done
    PIDS=("${PIDS[@]}")
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ------------------------------------------------------------------ quietness

COMPILERS='^(rustc|clippy-driver|rustdoc|cc1|cc1plus|cargo-clippy|ld|ld.lld|lld|collect2)$'

compilers_running() { pgrep -c "$COMPILERS" 2>/dev/null || true; }

busy_pct_1s() { # machine busy % over one second (all CPUs)
    python3 - <<'EOF'
import time
def t():
    v=[int(x) for x in open('/proc/stat').readline().split()[1:]]
    busy=v[0]+v[1]+v[2]+v[5]+v[6]+v[7]
    return busy, busy+v[3]+v[4]
b0,t0=t(); time.sleep(1); b1,t1=t()
print(int(100*(b1-b0)/max(1,t1-t0)))
EOF
}

# wait_quiet: waits (at most QUIET_WAIT s; QUIET_TOTAL s over the whole run) until no compiler
# runs and the machine was at most QUIET_BUSY % busy over a second. Sets WAITED (s) and
# COMPILERS_AT_START (count when the measure starts).
wait_quiet() {
    local start=$SECONDS n busy limit
    limit=$QUIET_WAIT
    ((QUIET_TOTAL - QUIET_SPENT < limit)) && limit=$((QUIET_TOTAL - QUIET_SPENT))
    ((limit < 0)) && limit=0
    local said=0
    while :; do
        n=$(compilers_running)
        busy=$(busy_pct_1s)
        if [[ "$n" == 0 && "$busy" -le "$QUIET_BUSY" ]]; then break; fi
        if ((SECONDS - start >= limit)); then
            log "machine still busy (compilers: $n, busy ${busy}%) after $((SECONDS - start)) s; measuring anyway"
            break
        fi
        if [[ $said == 0 ]]; then
            log "waiting for a quiet machine (compilers: $n, busy ${busy}%; up to ${limit} s)"
            said=1
        fi
        sleep 2
    done
    WAITED=$((SECONDS - start))
    QUIET_SPENT=$((QUIET_SPENT + WAITED))
    # shellcheck disable=SC2034 # read by the scripts that source this file
    COMPILERS_AT_START=$(compilers_running)
}

# ------------------------------------------------------------------ /proc helpers

tree_pids() { # PID and its descendants
    local p="$1" c
    echo "$p"
    # shellcheck disable=SC2013 # the children files are space-separated pids
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree_pids "$c"; done
}

rss_kib() { # summed VmRSS of the tree
    local sum=0 p v
    for p in $(tree_pids "$1"); do
        v=$(awk '/^VmRSS:/ {print $2}' /proc/"$p"/status 2>/dev/null || true)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

rss_settled_kib() { # the median of three rss_kib samples half a second apart
    local s1 s2 s3
    s1=$(rss_kib "$1")
    sleep 0.5
    s2=$(rss_kib "$1")
    sleep 0.5
    s3=$(rss_kib "$1")
    printf '%s\n' "$s1" "$s2" "$s3" | sort -n | sed -n 2p
}

pin_tree() { # pin_tree PID CPU: move every thread of the process tree to CPU
    local p
    for p in $(tree_pids "$1"); do taskset -a -p -c "$2" "$p" >/dev/null 2>&1 || true; done
}

record() { # record REP TARGET MEASURE key=value... (values: numbers or plain strings)
    local rep="$1" target="$2" measure="$3"
    shift 3
    python3 - "$rep" "$target" "$measure" "$@" >>"$RECORDS" <<'EOF'
import json, sys
rep, target, measure = sys.argv[1:4]
d = {"rep": int(rep), "target": target, "measure": measure}
for kv in sys.argv[4:]:
    k, v = kv.split("=", 1)
    try:
        d[k] = json.loads(v)
    except ValueError:
        d[k] = v
print(json.dumps(d))
EOF
}

# start_backend: the `hubgate-load echo-server` backend on LOAD_CPU, ready before it returns;
# sets BACKEND_PORT, BACKEND_PID and BACKEND (its URL).
start_backend() {
    BACKEND_PORT=$(free_port)
    start_bg backend "$LOAD_CPU" "$LOAD" echo-server --listen "127.0.0.1:$BACKEND_PORT" --max-seconds 7200
    BACKEND_PID=$BG_PID
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$BACKEND_PORT/" && break
        sleep 0.1
    done
    curl -s -o /dev/null "http://127.0.0.1:$BACKEND_PORT/" || die "echo backend did not start (see $WORK/backend.log)"
    BACKEND="http://127.0.0.1:$BACKEND_PORT"
}

# The nginx every bench compares against (one worker, keepalive 128 upstream, websocket headers;
# TUNED: proxy buffers sized for 64 KiB bodies). Upstream: 127.0.0.1:$BACKEND_PORT; TLS uses
# $WORK/cert.pem and $WORK/key.pem.
write_nginx_conf() { # write_nginx_conf DIR PORT TLS(0|1) [TUNED(0|1)]
    local d="$1" port="$2" tls="$3" tuned="${4:-0}" listen buffers=""
    [[ "$tuned" == 1 ]] && buffers="proxy_buffer_size 16k;
            proxy_buffers 8 16k;"
    mkdir -p "$d"
    if [[ "$tls" == 1 ]]; then
        listen="listen 127.0.0.1:$port ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;"
    else
        listen="listen 127.0.0.1:$port;"
    fi
    cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile $(ulimit -n);
events { worker_connections $(($(ulimit -n) - 100)); }
http {
    access_log off;
    client_body_temp_path $d/client_body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 128;
    }
    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      '';
    }
    server {
        $listen
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_max_temp_file_size 0;
            $buffers
        }
    }
}
EOF
}
