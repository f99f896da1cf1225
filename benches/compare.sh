#!/usr/bin/env bash
# Side-by-side benchmark: hubgate vs nginx vs configurable-http-proxy (CHP), all in front of
# the same `hubgate-load echo-server` backend on 127.0.0.1; and hubgate with token
# authentication on ("hubgate-auth") against hubgate without it.
#
# Method (see BENCHMARKS.md and the perf baseline it follows):
#   - each proxy is pinned to core $PROXY_CPU (default 1); the load tool and the backend share
#     core $LOAD_CPU (default 0);
#   - proxy CPU per request/message = utime+stime of the proxy's process tree (/proc/PID/stat)
#     during the run / requests; RSS = VmRSS summed over the process tree;
#   - c1 added latency = p50 at one connection through the proxy - p50 direct (same rep);
#   - idle websockets: on a fresh proxy process, (RSS with N held - RSS before) / N opened;
#     plain (ws:// to a plain backend), TLS (wss:// to the proxy, plain backend) and
#     https target (ws:// to the proxy, the proxy to an https:// echo backend, verified with
#     --client-ssl-ca: JupyterHub's internal_ssl);
#   - every measure is repeated REPS times (targets in a rotating order); the table shows the
#     median and the min-max spread;
#   - hubgate-auth: the same hubgate binary and flags plus --config with an [auth] section
#     trusting a throwaway RS256 key generated here (jwks-file). The load sends one token of
#     user "bench" (MFA acr/amr, expiring in a day), whose /user/bench route JupyterHub-style
#     belongs to "bench": every request passes the owner policy from the verified-token cache.
#     Before measuring, the script checks that the token gets the backend's 200, that no token
#     gets 401 and that the token gets 403 on another user's route; a measure that saw any
#     non-2xx answer fails the run. Idle-websocket measures are skipped for it (auth runs once
#     per upgrade; the held connection costs what hubgate's does). The token is only ever in
#     0600 files and in the load tool's environment (HUBGATE_LOAD_TOKEN), never on a command line.
#
# Before each measured run it waits (at most QUIET_WAIT s; QUIET_TOTAL s over the whole run)
# until no compiler (rustc, clippy-driver, cc1, ...) is running and the machine was at most
# QUIET_BUSY % busy over one second, and it records how busy the machine was meanwhile.
#
# Usage:  benches/compare.sh                  # REPS=3, ~10-12 minutes on a quiet 2-core machine
#         REPS=1 DURATION=5 benches/compare.sh  # quick look (~3 minutes)
#
# Environment (defaults in brackets):
#   REPS [3]  DURATION [10] (c64 runs, s)  C1_DURATION [5]  WS_DURATION [5]  WARMUP [1]
#   C1_SAME_CORE [1] (also measure c1 with the proxy moved onto the load core)
#   WS_HOLD_N [5000] (plain idle websockets; 0: no idle-websocket measures)  WS_TLS_N [1000] (wss)  HOLD_IN_FLIGHT [256]
#   WS_TLS_UP_N [5000] (idle websockets to an https:// target: as many as plain, so the two
#     rows differ by what the TLS client session costs)
#   PROXIES ["hubgate-auth hubgate nginx chp"] (hubgate-auth first: with the rotation, never
#     right after hubgate's 5,000-websocket measures, so auth on/off are measured alike)
#   TLS_PROXIES ["hubgate nginx chp"] (idle wss measures; empty: none)
#   TLS_UP_PROXIES ["hubgate"] (idle websockets to an https:// target; hubgate or chp; empty: none)
#     Two more targets may be named in PROXIES: nginx-tuned (nginx with `proxy_buffer_size 16k;
#     proxy_buffers 8 16k`, buffers sized for a 64 KiB body as a site serving large notebooks
#     would set them) and hubgate-2t (hubgate with two worker threads, pinned to both cores, the
#     load core included: CPU per request against hubgate's one thread shows contention).
#   HUBGATE [target/release/hubgate]  LOAD [target/release/hubgate-load]  HUBGATE_LABEL
#   CHP [.tools/node_modules/.bin/configurable-http-proxy]  NGINX [nginx]
#   PROXY_CPU [1]  LOAD_CPU [0]  QUIET_WAIT [600]  QUIET_TOTAL [1800]  QUIET_BUSY [30]
#   OUT [benches/results/latest.md]  KEEP_WORK [0] (keep the temp dir with raw JSON and logs)
#
# The release binaries are built first if missing (cargo build --release); nothing is built
# while measuring. Every process this script starts is stopped on exit, Ctrl-C or failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

REPS="${REPS:-3}"
DURATION="${DURATION:-10}"
C1_DURATION="${C1_DURATION:-5}"
WS_DURATION="${WS_DURATION:-5}"
WARMUP="${WARMUP:-1}"
C1_SAME_CORE="${C1_SAME_CORE:-1}"
WS_HOLD_N="${WS_HOLD_N:-5000}"
WS_TLS_N="${WS_TLS_N:-1000}"
WS_TLS_UP_N="${WS_TLS_UP_N:-5000}"
HOLD_IN_FLIGHT="${HOLD_IN_FLIGHT:-256}"
PROXIES="${PROXIES:-hubgate-auth hubgate nginx chp}"
TLS_PROXIES="${TLS_PROXIES-hubgate nginx chp}" # set but empty: no wss measures
TLS_UP_PROXIES="${TLS_UP_PROXIES-hubgate}"      # set but empty: no https-target measures
HUBGATE="${HUBGATE:-$ROOT/target/release/hubgate}"
LOAD="${LOAD:-$ROOT/target/release/hubgate-load}"
CHP="${CHP:-$ROOT/.tools/node_modules/.bin/configurable-http-proxy}"
NGINX="${NGINX:-nginx}"
PROXY_CPU="${PROXY_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
QUIET_WAIT="${QUIET_WAIT:-600}"
QUIET_TOTAL="${QUIET_TOTAL:-1800}"
QUIET_BUSY="${QUIET_BUSY:-30}"
OUT="${OUT:-$ROOT/benches/results/latest.md}"
KEEP_WORK="${KEEP_WORK:-0}"
TOKEN="bench-$$"
# hubgate-load reads its Bearer token from here: only hubgate-auth's measures may send one
unset HUBGATE_LOAD_TOKEN

# log, die, process bookkeeping and exit traps, free_port, wait_quiet, rss_kib, record
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_init compare

# ------------------------------------------------------------------ prerequisites

command -v taskset >/dev/null || die "taskset not found (util-linux)"
command -v curl >/dev/null || die "curl not found"
command -v python3 >/dev/null || die "python3 not found"
command -v openssl >/dev/null || die "openssl not found"
[[ "$(nproc)" -ge 2 ]] || die "needs at least 2 CPUs (proxy and load generator on separate cores)"
for p in $PROXIES $TLS_PROXIES; do
    case "$p" in
    hubgate | hubgate-2t | chp) ;;
    hubgate-auth)
        [[ " $TLS_PROXIES " != *" hubgate-auth "* ]] ||
            die "hubgate-auth has no wss measure (its idle websockets cost what hubgate's do); remove it from TLS_PROXIES"
        ;;
    nginx | nginx-tuned) command -v "$NGINX" >/dev/null || die "nginx not found (apt-get install nginx-light, or scripts/setup.sh)" ;;
    *) die "unknown proxy '$p' (hubgate, hubgate-auth, hubgate-2t, nginx, nginx-tuned, chp)" ;;
    esac
done
for p in $TLS_UP_PROXIES; do
    case "$p" in
    hubgate | chp) [[ " $PROXIES " == *" $p "* ]] || die "TLS_UP_PROXIES names $p, which is not in PROXIES" ;;
    *) die "https-target measures are for hubgate and chp (--client-ssl-ca), not '$p'" ;;
    esac
done
if [[ " $PROXIES $TLS_PROXIES " == *" chp "* ]]; then
    [[ -x "$CHP" ]] || die "CHP not found at $CHP (scripts/setup.sh installs it)"
fi
if [[ ! -x "$HUBGATE" || ! -x "$LOAD" ]]; then
    log "building release binaries (cargo build --release -p hubgate -p hubgate-load)"
    cargo build --release -p hubgate -p hubgate-load >&2
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[[ "$(ulimit -n)" -ge $((2 * WS_HOLD_N + 200)) ]] || die "open files limit $(ulimit -n) is too low for WS_HOLD_N=$WS_HOLD_N"
[[ -z "$TLS_UP_PROXIES" || "$(ulimit -n)" -ge $((2 * WS_TLS_UP_N + 200)) ]] ||
    die "open files limit $(ulimit -n) is too low for WS_TLS_UP_N=$WS_TLS_UP_N"

# ------------------------------------------------------------------ backend, TLS material

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE -addext keyUsage=digitalSignature \
    -addext extendedKeyUsage=serverAuth \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >/dev/null 2>&1 || die "openssl req failed"

# hubgate-auth: a throwaway identity provider key, its JWKS, one token and hubgate's [auth]
# section, in $WORK/auth (0700). The token is written to two 0600 files only (the bare token,
# and a curl header file); it is never printed or put on a command line.
AUTH_DIR="$WORK/auth"
AUTH_ISSUER="https://idp.bench.invalid/realms/hpc"
BENCH_JWT=""
make_auth_material() {
    mkdir -m 700 "$AUTH_DIR"
    # RS256 (2048-bit), the usual identity-provider default; the cached path does not depend
    # on the algorithm except through the token's length (SHA-256 of it per request).
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$AUTH_DIR/idp-key.pem" \
        >/dev/null 2>&1 || die "openssl genpkey failed"
    openssl rand -hex 32 >"$AUTH_DIR/session.key"
    python3 - "$AUTH_DIR" "$AUTH_ISSUER" <<'EOF' || die "could not make the bench token"
import base64, json, os, re, subprocess, sys, time

d, issuer = sys.argv[1], sys.argv[2]
key = os.path.join(d, "idp-key.pem")


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


modulus = openssl("rsa", "-in", key, "-noout", "-modulus").decode().strip()
n = bytes.fromhex(modulus.split("=", 1)[1])
text = openssl("rsa", "-in", key, "-noout", "-text").decode()
e = int(re.search(r"publicExponent: (\d+)", text).group(1))
kid = "bench-rs256"
jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
       "n": b64(n), "e": b64(e.to_bytes((e.bit_length() + 7) // 8, "big"))}
with open(os.path.join(d, "jwks.json"), "w") as f:
    json.dump({"keys": [jwk]}, f)

now = int(time.time())
# What an identity provider issues after MFA (claims as in tests/it/support/jwt.rs); valid for a
# day, far beyond any run (QUIET_TOTAL bounds the waiting).
claims = {
    "iss": issuer, "aud": "jupyterhub", "sub": "0b1c2d3e-bench", "preferred_username": "bench",
    "email": "bench@example.org", "groups": ["physics"], "iat": now - 5, "exp": now + 86400,
    "auth_time": now - 60, "acr": "https://refeds.org/profile/mfa", "amr": ["pwd", "otp"],
    "jti": b64(os.urandom(16)),
}
header = {"alg": "RS256", "typ": "JWT", "kid": kid}
signing_input = (b64(json.dumps(header, separators=(",", ":")).encode()) + "."
                 + b64(json.dumps(claims, separators=(",", ":")).encode()))
# RS256 is RSASSA-PKCS1-v1_5 with SHA-256: what `openssl dgst -sha256 -sign` does with an RSA key.
sig = openssl("dgst", "-sha256", "-sign", key, data=signing_input.encode())
token = signing_input + "." + b64(sig)


def secret_file(name, content):
    fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)


secret_file("token", token)
secret_file("curl-header", f"Authorization: Bearer {token}\n")
EOF
    [[ -s "$AUTH_DIR/token" ]] || die "could not make the bench token"
    BENCH_JWT="$(<"$AUTH_DIR/token")"
    # Defaults for everything else: cache-ttl-seconds 60 (one signature check per minute),
    # audit-log "all" (its lines are info, below --log-level warn, like the per-request lines
    # of hubgate without auth).
    cat >"$AUTH_DIR/hubgate.toml" <<EOF
[auth]
session-secret-file = "$AUTH_DIR/session.key"

[[auth.issuers]]
issuer = "$AUTH_ISSUER"
audiences = ["jupyterhub"]
jwks-file = "$AUTH_DIR/jwks.json"
algorithms = ["RS256"]
mfa-acr = ["https://refeds.org/profile/mfa"]
mfa-amr = ["mfa", "otp", "hwk"]
max-auth-age-seconds = 86400
EOF
    "$HUBGATE" --config "$AUTH_DIR/hubgate.toml" --check-config >"$WORK/hubgate-auth-check.log" 2>&1 ||
        die "hubgate refuses the bench [auth] config (see $WORK/hubgate-auth-check.log)"
}
if [[ " $PROXIES " == *" hubgate-auth "* ]]; then
    make_auth_material
fi

start_backend

# The https:// backend (the same echo server over TLS, certificate $WORK/cert.pem), for the
# https-target measures only.
TLS_BACKEND=""
TLS_BACKEND_PID=""
if [[ -n "$TLS_UP_PROXIES" && "$WS_TLS_UP_N" -gt 0 ]]; then
    port=$(free_port)
    start_bg backend-tls "$LOAD_CPU" "$LOAD" echo-server --listen "127.0.0.1:$port" --max-seconds 7200 \
        --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"
    TLS_BACKEND_PID=$BG_PID
    for _ in $(seq 50); do
        curl -s -o /dev/null --cacert "$WORK/cert.pem" "https://127.0.0.1:$port/" && break
        sleep 0.1
    done
    curl -s -o /dev/null --cacert "$WORK/cert.pem" "https://127.0.0.1:$port/" ||
        die "https echo backend did not start (see $WORK/backend-tls.log)"
    TLS_BACKEND="https://127.0.0.1:$port"
fi

# ------------------------------------------------------------------ proxies

PROXY_PID=""
PROXY_PORT=""
PROXY_SCHEME=""

# check_auth_proxy: hubgate-auth must let the token through to the backend on its owner's
# route and refuse everything else, or its measures would time refusals.
check_auth_proxy() {
    local base="$PROXY_SCHEME://127.0.0.1:$PROXY_PORT" got log="$WORK/hubgate-auth-0.log"
    got=$(curl -sk -o /dev/null -w '%{http_code} %{size_download}' -H "@$AUTH_DIR/curl-header" \
        "$base/user/bench/" || true)
    [[ "$got" == "200 100" ]] ||
        die "hubgate-auth: the bench token got '$got' (status, bytes), not the backend's 200 with 100 bytes (see $log)"
    got=$(curl -sk -o /dev/null -w '%{http_code}' "$base/user/bench/" || true)
    [[ "$got" == 401 || "$got" == 302 ]] || die "hubgate-auth: a request without a token got $got, not 401 (see $log)"
    got=$(curl -sk -o /dev/null -w '%{http_code}' -H "@$AUTH_DIR/curl-header" "$base/user/other/" || true)
    [[ "$got" == 403 ]] || die "hubgate-auth: the bench token on another user's route got $got, not 403 (see $log)"
}

# start_proxy NAME TLS(0|1) [UPSTREAM(plain|tls)]: sets PROXY_PID, PROXY_PORT, PROXY_SCHEME;
# waits until it proxies. UPSTREAM tls: the https backend, verified with --client-ssl-ca.
start_proxy() {
    local name="$1" tls="$2" upstream="${3:-plain}" api_port tls_args=() extra_args=() cred=() i code cpu="$PROXY_CPU"
    local backend="$BACKEND" log="$name-$tls"
    if [[ "$upstream" == tls ]]; then
        backend="$TLS_BACKEND"
        log="$name-$tls-up"
        extra_args=(--client-ssl-ca "$WORK/cert.pem")
    fi
    PROXY_PORT=$(free_port)
    PROXY_SCHEME=http
    [[ "$tls" == 1 ]] && PROXY_SCHEME=https
    [[ "$tls" == 1 ]] && tls_args=(--ssl-key "$WORK/key.pem" --ssl-cert "$WORK/cert.pem")
    if [[ "$name" == hubgate-auth ]]; then
        extra_args=(--config "$AUTH_DIR/hubgate.toml")
        cred=(-H "@$AUTH_DIR/curl-header")
    fi
    if [[ "$name" == hubgate-2t ]]; then
        printf '[server]\nthreads = 2\n' >"$WORK/threads2.toml"
        extra_args=(--config "$WORK/threads2.toml")
        cpu="$LOAD_CPU,$PROXY_CPU"
    fi
    case "$name" in
    hubgate | hubgate-auth | hubgate-2t | chp)
        local bin="$HUBGATE"
        [[ "$name" == chp ]] && bin="$CHP"
        api_port=$(free_port)
        CONFIGPROXY_AUTH_TOKEN="$TOKEN" start_bg "$log" "$cpu" "$bin" \
            --ip 127.0.0.1 --port "$PROXY_PORT" --api-ip 127.0.0.1 --api-port "$api_port" \
            --default-target "$backend" --log-level warn "${tls_args[@]}" "${extra_args[@]}"
        PROXY_PID=$BG_PID
        for i in $(seq 100); do
            code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: token $TOKEN" \
                "http://127.0.0.1:$api_port/api/routes" || true)
            [[ "$code" == 200 ]] && break
            kill -0 "$PROXY_PID" 2>/dev/null || die "$name exited at start (see $WORK/$log.log)"
            sleep 0.1
        done
        [[ "$code" == 200 ]] || die "$name API not ready (see $WORK/$log.log)"
        # a second route, the one the load uses: a JupyterHub user server, with the owner's
        # name in the route data as JupyterHub posts it (hubgate-auth's owner policy uses it)
        code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: token $TOKEN" \
            -d "{\"target\": \"$backend\", \"user\": \"bench\"}" \
            "http://127.0.0.1:$api_port/api/routes/user/bench")
        [[ "$code" == 201 ]] || die "$name: adding a route answered $code"
        if [[ "$name" == hubgate-auth ]]; then
            # another user's server, to check that the owner rule is applied
            code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: token $TOKEN" \
                -d "{\"target\": \"$BACKEND\", \"user\": \"other\"}" \
                "http://127.0.0.1:$api_port/api/routes/user/other")
            [[ "$code" == 201 ]] || die "$name: adding a route answered $code"
        fi
        ;;
    nginx | nginx-tuned)
        write_nginx_conf "$WORK/$name-$tls" "$PROXY_PORT" "$tls" "$([[ "$name" == nginx-tuned ]] && echo 1 || echo 0)"
        start_bg "$name-$tls" "$cpu" "$NGINX" -p "$WORK/$name-$tls" -c "$WORK/$name-$tls/nginx.conf" \
            -e "$WORK/$name-$tls/error.log"
        PROXY_PID=$BG_PID
        ;;
    esac
    for i in $(seq 100); do
        code=$(curl -sk -o /dev/null -w '%{http_code}' "${cred[@]}" "$PROXY_SCHEME://127.0.0.1:$PROXY_PORT/user/bench/" || true)
        [[ "$code" == 200 ]] && break
        kill -0 "$PROXY_PID" 2>/dev/null || die "$name exited at start (see $WORK/$log.log)"
        sleep 0.1
    done
    [[ "$code" == 200 ]] || die "$name does not proxy (last status $code; see $WORK/$log.log)"
    if [[ "$name" == hubgate-auth ]]; then check_auth_proxy; fi
}

stop_proxy() {
    [[ -n "$PROXY_PID" ]] || return 0
    stop_pid "$PROXY_PID"
    forget_pid "$PROXY_PID"
    PROXY_PID=""
}

# ------------------------------------------------------------------ measures

# load REP TARGET MEASURE ARGS...: run hubgate-load pinned to LOAD_CPU (in the background, so
# a signal to this script is handled at once), record its JSON
load() {
    local rep="$1" target="$2" measure="$3"
    shift 3
    local json="$WORK/r$rep-$target-$measure.json" watch=(--watch "backend=$BACKEND_PID") lpid
    [[ -n "$PROXY_PID" ]] && watch+=(--watch "proxy=$PROXY_PID")
    wait_quiet
    taskset -c "$LOAD_CPU" "$LOAD" "$@" --json "$json" "${watch[@]}" \
        >"$WORK/r$rep-$target-$measure.out" 2>"$WORK/r$rep-$target-$measure.err" &
    lpid=$!
    PIDS+=("$lpid")
    if ! wait "$lpid"; then
        forget_pid "$lpid"
        die "hubgate-load $measure against $target failed: $(tail -3 "$WORK/r$rep-$target-$measure.err")"
    fi
    forget_pid "$lpid"
    if [[ "$target" == hubgate-auth ]]; then
        # refusals would be counted as fast "requests": such a measure is not auth-on's cost
        python3 - "$json" <<'EOF' || die "hubgate-auth $measure measured refusals, not proxied requests (see $WORK/hubgate-auth-0.log)"
import json, sys
d = json.load(open(sys.argv[1]))
bad = {k: v for k, v in d.get("status", {}).items() if not k.startswith("2")}
if bad or not d["requests"]:
    print(f"    requests {d['requests']}, non-2xx answers {bad}", file=sys.stderr)
    sys.exit(1)
EOF
    fi
    record "$rep" "$target" "$measure" "json=$json" "waited_s=$WAITED" "compilers=$COMPILERS_AT_START"
    python3 - "$json" "$target" "$measure" >&2 <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); l = d["latency_us"]
w = d.get("watch", {}).get("proxy")
cpu = f"  proxy {w['cpu_us'] / max(1, d['requests']):.1f} µs cpu/op" if w else ""
print(f"    {sys.argv[2]:<12} {sys.argv[3]:<8} {d['rps']:>10.0f}/s  p50 {l['p50']} µs  p99 {l['p99']} µs"
      f"  errors {d['errors']}{cpu}  (bg busy {d['machine']['background_busy_pct']}%)")
EOF
}

# hold REP TARGET MEASURE N URL [args]: N idle websockets on a fresh proxy (already started);
# HOLD_BACKEND_PID (default: the plain backend's) is the backend watched meanwhile
hold() {
    local rep="$1" target="$2" measure="$3" n="$4" url="$5" backend_pid="${HOLD_BACKEND_PID:-$BACKEND_PID}"
    shift 5
    local json="$WORK/r$rep-$target-$measure.json" ready="$WORK/ready-$rep-$target-$measure" \
        stopf="$WORK/stop-$rep-$target-$measure" idle with lpid i
    rm -f "$ready" "$stopf"
    wait_quiet
    sleep 1
    idle=$(rss_kib "$PROXY_PID")
    taskset -c "$LOAD_CPU" "$LOAD" ws-hold "$url" -c "$n" -k "$HOLD_IN_FLIGHT" --hold 120s \
        --ready-file "$ready" --stop-file "$stopf" --json "$json" --watch "proxy=$PROXY_PID" \
        --watch "backend=$backend_pid" "$@" \
        >"$WORK/r$rep-$target-$measure.out" 2>"$WORK/r$rep-$target-$measure.err" &
    lpid=$!
    PIDS+=("$lpid")
    for i in $(seq 1200); do
        [[ -s "$ready" ]] && break
        kill -0 "$lpid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -s "$ready" ]] || die "ws-hold against $target did not finish opening (see $WORK/r$rep-$target-$measure.err)"
    sleep 2 # let the proxy settle
    local s1 s2 s3
    s1=$(rss_kib "$PROXY_PID")
    sleep 0.5
    s2=$(rss_kib "$PROXY_PID")
    sleep 0.5
    s3=$(rss_kib "$PROXY_PID")
    with=$(printf '%s\n' "$s1" "$s2" "$s3" | sort -n | sed -n 2p)
    touch "$stopf"
    if ! wait "$lpid"; then
        forget_pid "$lpid"
        die "ws-hold against $target failed: $(tail -3 "$WORK/r$rep-$target-$measure.err")"
    fi
    forget_pid "$lpid"
    record "$rep" "$target" "$measure" "json=$json" "rss_idle_kib=$idle" "rss_with_kib=$with" \
        "n=$n" "waited_s=$WAITED" "compilers=$COMPILERS_AT_START"
    python3 - "$json" "$target" "$measure" "$idle" "$with" >&2 <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); e = d["extra"]; idle, w = int(sys.argv[4]), int(sys.argv[5])
print(f"    {sys.argv[2]:<12} {sys.argv[3]:<8} opened {e['opened']} failed {e['failed']} dropped {e['dropped_while_held']}"
      f" in {e['open_time_s']} s; rss {idle/1024:.1f} -> {w/1024:.1f} MiB"
      f" = {(w-idle)/max(1,e['opened']):.1f} KiB/ws")
EOF
}

measure_http_ws() { # REP TARGET BASEURL (http://host:port)
    local rep="$1" target="$2" base="$3"
    local ws="${base/http:/ws:}/user/bench/api/kernels/k/channels"
    if [[ "$WARMUP" != 0 ]]; then
        taskset -c "$LOAD_CPU" "$LOAD" http "$base/user/bench/" -c 64 -d "$WARMUP" --no-progress >/dev/null 2>&1 &
        local w=$!
        PIDS+=("$w")
        wait "$w" || true
        forget_pid "$w"
    fi
    load "$rep" "$target" small http "$base/user/bench/" -c 64 -d "$DURATION"
    load "$rep" "$target" big http "$base/user/bench/64k" -c 64 -d "$DURATION"
    load "$rep" "$target" c1 http "$base/user/bench/" -c 1 -d "$C1_DURATION"
    if [[ -n "$PROXY_PID" && "$C1_SAME_CORE" == 1 ]]; then
        # The same with the proxy moved onto the load core: no cross-core wakeups, which cost
        # tens of µs per hop on some VMs and then dominate the c1 figure.
        pin_tree "$PROXY_PID" "$LOAD_CPU"
        load "$rep" "$target" c1same http "$base/user/bench/" -c 1 -d "$C1_DURATION"
        pin_tree "$PROXY_PID" "$PROXY_CPU"
    fi
    load "$rep" "$target" ws ws-echo "$ws" -c 64 -s 128 -d "$WS_DURATION"
}

# ------------------------------------------------------------------ the run

describe_machine() {
    {
        echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "nproc=$(nproc)"
        echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
        echo "kernel=$(uname -r)"
        echo "mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
        echo "nginx=$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')"
        echo "chp=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' \
            "$(dirname "$(readlink -f "$CHP")")/../package.json" 2>/dev/null || echo '?')"
        echo "node=$(node --version 2>/dev/null || echo '?')"
        echo "hubgate=${HUBGATE_LABEL:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$([[ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml 2>/dev/null)" ]] && echo ' + uncommitted changes')}"
        echo "hubgate_bin=$HUBGATE ($(date -u -r "$HUBGATE" +%Y-%m-%dT%H:%M:%SZ))"
        echo "reps=$REPS"
        echo "duration=$DURATION"
        echo "c1_duration=$C1_DURATION"
        echo "ws_duration=$WS_DURATION"
        echo "ws_hold_n=$WS_HOLD_N"
        echo "ws_tls_n=$WS_TLS_N"
        echo "ws_tls_up_n=$WS_TLS_UP_N"
        echo "hold_in_flight=$HOLD_IN_FLIGHT"
        echo "proxy_cpu=$PROXY_CPU"
        [[ -n "$BENCH_JWT" ]] && echo "auth_token=RS256, ${#BENCH_JWT} bytes"
        echo "load_cpu=$LOAD_CPU"
        echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    } >"$WORK/machine.env"
}

describe_machine
log "work dir $WORK; backend $BACKEND (pid $BACKEND_PID); REPS=$REPS DURATION=$DURATION"
T0=$SECONDS
read -r -a TARGETS <<<"direct $PROXIES"
for ((rep = 1; rep <= REPS; rep++)); do
    # rotate the order each rep so slow drift in background load hits every target alike
    order=()
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do
        order+=("${TARGETS[$(((i + rep - 1) % ${#TARGETS[@]}))]}")
    done
    log "rep $rep/$REPS: ${order[*]}"
    for target in "${order[@]}"; do
        if [[ "$target" == direct ]]; then
            PROXY_PID=""
            measure_http_ws "$rep" direct "$BACKEND"
            continue
        fi
        # HTTP + websocket echo on one process; its idle RSS first
        start_proxy "$target" 0
        sleep 1
        record "$rep" "$target" rss_idle "value_kib=$(rss_kib "$PROXY_PID")"
        if [[ "$target" == hubgate-auth ]]; then
            # every load run (warm-up included) sends the token; the environment, unlike a
            # command line, is not readable by other users
            export HUBGATE_LOAD_TOKEN="$BENCH_JWT"
        fi
        measure_http_ws "$rep" "$target" "http://127.0.0.1:$PROXY_PORT"
        unset HUBGATE_LOAD_TOKEN
        stop_proxy
        # auth runs once per upgrade: held websockets cost what hubgate's do; the variants
        # (2 threads, tuned nginx buffers) change nothing for an idle websocket
        [[ "$target" == hubgate-auth || "$target" == hubgate-2t || "$target" == nginx-tuned ]] && continue
        # idle websockets, plain, fresh process (WS_HOLD_N=0: none)
        if [[ "$WS_HOLD_N" -gt 0 ]]; then
            start_proxy "$target" 0
            hold "$rep" "$target" hold "$WS_HOLD_N" "ws://127.0.0.1:$PROXY_PORT/user/bench/api/kernels/k/channels"
            stop_proxy
        fi
        # idle websockets over TLS, fresh process
        if [[ " $TLS_PROXIES " == *" $target "* && "$WS_TLS_N" -gt 0 ]]; then
            start_proxy "$target" 1
            hold "$rep" "$target" hold_tls "$WS_TLS_N" "wss://127.0.0.1:$PROXY_PORT/user/bench/api/kernels/k/channels" \
                --ca "$WORK/cert.pem"
            stop_proxy
        fi
        # idle websockets to an https:// target (plain client side), fresh process
        if [[ " $TLS_UP_PROXIES " == *" $target "* && "$WS_TLS_UP_N" -gt 0 ]]; then
            start_proxy "$target" 0 tls
            HOLD_BACKEND_PID="$TLS_BACKEND_PID" hold "$rep" "$target" hold_tls_up "$WS_TLS_UP_N" \
                "ws://127.0.0.1:$PROXY_PORT/user/bench/api/kernels/k/channels"
            stop_proxy
        fi
    done
done
{
    echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "elapsed_s=$((SECONDS - T0))"
    echo "quiet_wait_s=$QUIET_SPENT"
} >>"$WORK/machine.env"

mkdir -p "$(dirname "$OUT")"
python3 "$ROOT/benches/compare_report.py" "$WORK" "$OUT"
cat "$OUT"
log "done in $((SECONDS - T0)) s; table in $OUT"
