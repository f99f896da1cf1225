#!/usr/bin/env bash
# hubgate demo: a real JupyterHub on this machine, with hubgate as its proxy.
#
#   bash scripts/demo.sh
#
# then open http://127.0.0.1:8000/hub/login, log in with ANY user name and the password
# "hubgate-demo", and start a server: JupyterLab opens at /user/<name>/lab, every request
# and kernel websocket going through hubgate. Ctrl-C stops the hub, hubgate and every
# user server.
#
# What it does: scripts/setup.sh (installs JupyterHub into .venv, ...), then
# `cargo build --release --bin hubgate`, then runs JupyterHub in the foreground with
# config/jupyterhub_demo_config.py, which launches target/release/hubgate the way
# JupyterHub launches configurable-http-proxy (hub-managed mode). State (database, cookie
# secret, users' home dirs) lives in tmp/demo/; delete it to start afresh.
#
# Environment:
#   PORT=8000            public port (HUB_PORT=8081 and PROXY_API_PORT=8001 for the others)
#   HUBGATE_BIN=path     use this proxy binary and skip the release build (for example
#                        target/debug/hubgate, or .tools/node_modules/.bin/configurable-http-proxy
#                        to compare with CHP)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export PORT="${PORT:-8000}"
export HUB_PORT="${HUB_PORT:-8081}"
export PROXY_API_PORT="${PROXY_API_PORT:-8001}"
export HUBGATE_DEMO_STATE="$ROOT/tmp/demo"
export HUBGATE_DEMO_TAG="hubgate-demo-$$-$RANDOM"
# The token for the proxy's REST API; JupyterHub passes it on to the proxy.
CONFIGPROXY_AUTH_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export CONFIGPROXY_AUTH_TOKEN
PASSWORD="hubgate-demo"

echo "demo: installing prerequisites (scripts/setup.sh) ..."
bash scripts/setup.sh

if [[ -n "${HUBGATE_BIN:-}" ]]; then
    proxy="$(cd "$(dirname "$HUBGATE_BIN")" && pwd)/$(basename "$HUBGATE_BIN")"
else
    echo "demo: building hubgate (cargo build --release --bin hubgate) ..."
    cargo build --release --bin hubgate
    proxy="$ROOT/target/release/hubgate"
fi
[[ -x "$proxy" ]] || {
    echo "demo: proxy binary $proxy not found or not executable" >&2
    exit 1
}
export HUBGATE_DEMO_PROXY="$proxy"

for p in "$PORT" "$HUB_PORT" "$PROXY_API_PORT"; do
    if .venv/bin/python -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $p)) != 0)"; then
        echo "demo: port $p on 127.0.0.1 is already in use (set PORT / HUB_PORT / PROXY_API_PORT)" >&2
        exit 1
    fi
done

mkdir -p "$HUBGATE_DEMO_STATE"
echo "demo: starting JupyterHub with proxy $proxy (state in tmp/demo/, log in tmp/demo/jupyterhub.log)"

# The hub runs in its own session (setsid) so that we decide how it stops: on Ctrl-C we
# send it SIGTERM, it stops the user servers and the proxy, and whatever is still alive
# after that (found by HUBGATE_DEMO_TAG in its environment) is killed.
(cd "$HUBGATE_DEMO_STATE" && exec setsid "$ROOT/.venv/bin/jupyterhub" \
    -f "$ROOT/config/jupyterhub_demo_config.py" </dev/null) \
    > >(tee -i "$HUBGATE_DEMO_STATE/jupyterhub.log") 2>&1 &
hub_pid=$!

cleanup() {
    trap - INT TERM EXIT
    echo
    echo "demo: stopping JupyterHub (pid $hub_pid) and everything it started ..."
    kill -TERM "$hub_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$hub_pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL "$hub_pid" 2>/dev/null || true
    # stragglers: anything carrying our tag (the proxy and user servers inherit it)
    for envf in /proc/[0-9]*/environ; do
        pid="${envf#/proc/}"
        pid="${pid%/environ}"
        [[ "$pid" == "$$" ]] && continue
        if tr '\0' '\n' 2>/dev/null <"$envf" | grep -qx "HUBGATE_DEMO_TAG=$HUBGATE_DEMO_TAG"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    echo "demo: stopped."
}
trap cleanup INT TERM EXIT

# Wait until the hub answers through the proxy, then tell the user where to go.
for _ in $(seq 1 300); do
    if ! kill -0 "$hub_pid" 2>/dev/null; then
        echo "demo: JupyterHub exited during startup; see the log above (tmp/demo/jupyterhub.log)" >&2
        exit 1
    fi
    if .venv/bin/python -c "
import sys, urllib.request
try:
    sys.exit(urllib.request.urlopen('http://127.0.0.1:$PORT/hub/api/', timeout=2).status != 200)
except Exception:
    sys.exit(1)
" 2>/dev/null; then
        cat <<EOF

================================================================================
  hubgate demo is running.

    Open:      http://127.0.0.1:$PORT/hub/login
    User:      any name, e.g. demo
    Password:  $PASSWORD

  Route table: curl -H 'Authorization: token $CONFIGPROXY_AUTH_TOKEN' \\
                 http://127.0.0.1:$PROXY_API_PORT/api/routes

  Load test (simulated users: log in, start a server, run code on a kernel, stop),
  from another terminal:
    cargo build --release -p hubgate-load
    target/release/hubgate-load hub http://127.0.0.1:$PORT/ --users 10 --ramp 20s \\
      --session 60s --password $PASSWORD \\
      --proxy-pid \$(cat tmp/demo/proxy.pid) --json tmp/demo/hub-load.json
  Press Ctrl-C to stop.
================================================================================

EOF
        break
    fi
    sleep 0.2
done

wait "$hub_pid"
