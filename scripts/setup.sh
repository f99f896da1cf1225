#!/usr/bin/env bash
# Idempotent installer for everything hubgate's tests, benches and demo need
# besides the Rust toolchain, python3 and node/npm:
#
#   - Debian packages: cmake build-essential (pingora's build), redis-server
#     (scale-out tests), nginx-light and wrk (benches), prometheus (its promtool checks
#     the alert rules and their unit tests), chromium (the browser journeys in
#     tests/e2e/test_browser.py; Playwright drives this system browser and never
#     downloads one of its own)
#   - .venv/   Python venv from scripts/requirements-test.txt (JupyterHub, pytest, ...)
#   - .tools/  configurable-http-proxy (CHP) from npm, for side-by-side comparison
#   - tests/oidc/node_modules/  oidc-provider + jose from npm (tests/oidc/package-lock.json),
#     the test OpenID provider the authentication tests start on loopback
#   - .venv/etc/jupyter/jupyter_server_config.json with ServerApp.allow_root=true, so
#     single-user servers spawned from this venv start when everything runs as root
#     (a jupyter_server_config.d/*.json snippet is not read for that option).
#
# Each step is skipped when already done, so running it again costs about a second.
# Quiet on success; on failure it prints the failing step's log and exits non-zero.
#
# Environment:
#   PYTHON   interpreter used to create .venv (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CHP_VERSION="5.3.0"
APT_PACKAGES=(cmake build-essential redis-server nginx-light wrk prometheus chromium)
REQUIREMENTS="scripts/requirements-test.txt"
VENV=".venv"
STAMP="$VENV/.requirements-test.sha256"
PYTHON="${PYTHON:-python3}"

LOG="$(mktemp -t hubgate-setup.XXXXXX.log)"
trap 'rm -f "$LOG"' EXIT

fail() {
    echo "setup.sh: FAILED: $*" >&2
    if [[ -s "$LOG" ]]; then
        echo "----- last 80 lines of the step's output -----" >&2
        tail -n 80 "$LOG" >&2
        echo "----------------------------------------------" >&2
    fi
    exit 1
}

# Run a command with its output captured in $LOG; on failure show it and stop.
run() {
    local what="$1"
    shift
    : >"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        fail "$what (command: $*)"
    fi
}

# shellcheck disable=SC2317  # called through run()
as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "setup.sh: need root (or passwordless sudo) to run: $*" >&2
        return 1
    fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# ---------------------------------------------------------------- apt packages
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if [[ "$pkg" == nginx-light ]]; then
        # Any nginx flavour serves the benches (Debian 13 dropped nginx-light).
        installed nginx-light || installed nginx || installed nginx-core ||
            installed nginx-full || installed nginx-extras || missing+=("$pkg")
    else
        installed "$pkg" || missing+=("$pkg")
    fi
done
# Debian's own python3 needs python3-venv (ensurepip) to create a venv.
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    installed python3-venv || missing+=(python3-venv)
fi
if ((${#missing[@]})); then
    command -v apt-get >/dev/null 2>&1 || fail "missing packages ${missing[*]} and no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    run "apt-get update" as_root apt-get update
    if [[ " ${missing[*]} " == *" nginx-light "* ]] && ! apt-cache show nginx-light >/dev/null 2>&1; then
        missing=("${missing[@]/nginx-light/nginx}")
    fi
    run "apt-get install ${missing[*]}" \
        as_root apt-get install -y --no-install-recommends "${missing[@]}"
fi

# ---------------------------------------------------------------- Python venv
command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found (set PYTHON=...)"
want_hash="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
# A venv whose interpreter no longer runs (moved repo, removed base python) is rebuilt.
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    rm -f "$STAMP"
    run "create venv $VENV with $PYTHON" "$PYTHON" -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want_hash" ]]; then
    run "upgrade pip in $VENV" "$VENV/bin/python" -m pip install --quiet --upgrade pip
    run "pip install -r $REQUIREMENTS" \
        "$VENV/bin/python" -m pip install --quiet --upgrade -r "$REQUIREMENTS"
    echo "$want_hash" >"$STAMP"
fi

# Let single-user servers from this venv run as root (tests, CI and the demo run as root).
jconf_dir="$VENV/etc/jupyter"
jconf="$jconf_dir/jupyter_server_config.json"
jconf_want='{"ServerApp": {"allow_root": true}}'
if [[ ! -f "$jconf" || "$(cat "$jconf")" != "$jconf_want" ]]; then
    mkdir -p "$jconf_dir"
    echo "$jconf_want" >"$jconf"
fi

# ---------------------------------------------------------------- CHP from npm
chp_pkg=".tools/node_modules/configurable-http-proxy/package.json"
chp_have=""
if [[ -f "$chp_pkg" ]]; then
    chp_have="$(node -p "require('./$chp_pkg').version" 2>/dev/null || true)"
fi
if [[ "$chp_have" != "$CHP_VERSION" || ! -x .tools/node_modules/.bin/configurable-http-proxy ]]; then
    command -v npm >/dev/null 2>&1 || fail "npm not found (needed for configurable-http-proxy)"
    mkdir -p .tools
    run "npm install configurable-http-proxy@$CHP_VERSION" \
        npm install --prefix .tools --no-audit --no-fund --loglevel=error \
        "configurable-http-proxy@$CHP_VERSION"
fi

# ---------------------------------------------------------------- test OpenID provider
# `npm ci` from the lock file, again only when the lock file changed.
oidc_dir="tests/oidc"
oidc_stamp="$oidc_dir/node_modules/.package-lock.sha256"
oidc_want="$(sha256sum "$oidc_dir/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f "$oidc_stamp" || "$(cat "$oidc_stamp")" != "$oidc_want" ||
    ! -f "$oidc_dir/node_modules/oidc-provider/package.json" ]]; then
    command -v npm >/dev/null 2>&1 || fail "npm not found (needed for the test OpenID provider)"
    run "npm ci in $oidc_dir (oidc-provider, jose)" \
        npm ci --prefix "$oidc_dir" --no-audit --no-fund --loglevel=error
    echo "$oidc_want" >"$oidc_stamp"
fi

exit 0
