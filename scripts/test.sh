#!/usr/bin/env bash
# The one command that runs hubgate's whole test suite (CI runs it through .ci/run):
#
#   1. scripts/setup.sh                       apt packages, .venv, CHP (idempotent)
#   2. cargo fmt --all -- --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#   4. cargo build --workspace                debug; builds target/debug/hubgate and hubgate-load
#   5. cargo test --workspace --no-fail-fast  all Rust tests (every test binary, even after a failure)
#   6. pytest tests/compat tests/e2e tests/ops  side-by-side, JupyterHub e2e and operator-file tests
#
# Every step runs even if an earlier one failed (so one run shows every problem), except
# that cargo test and pytest are skipped when the build failed. Exits non-zero if any
# step failed; the last line is a total of the tests run by cargo test and pytest.
#
# Environment:
#   HUBGATE_E2E_SKIP_CHP=1   skip the CHP baseline cases of tests/e2e
#   PYTEST_ARGS="..."        extra pytest arguments (e.g. "-k hubgate -x")
#   HUBGATE_BIN, CHP_BIN     override the binaries under test (defaults below)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

LOGDIR="$ROOT/tmp/test-logs"
mkdir -p "$LOGDIR"
rm -f "$LOGDIR"/*.log
START=$SECONDS
declare -a STEPS=()
FAILED=0
build_ok=1

step() { # step NAME CMD... : run, tee the output to $LOGDIR/NAME.log, record the result
    local name="$1"
    shift
    local t0=$SECONDS rc
    echo
    echo "==> [$name] $*"
    "$@" 2>&1 | tee "$LOGDIR/$name.log"
    rc=${PIPESTATUS[0]}
    record "$name" "$rc" $((SECONDS - t0))
    return "$rc"
}

record() { # record NAME RC SECONDS
    if [[ "$2" == 0 ]]; then
        STEPS+=("$1:ok(${3}s)")
    elif [[ "$2" == skip ]]; then
        STEPS+=("$1:skipped")
    else
        STEPS+=("$1:FAILED(rc=$2,${3}s)")
        FAILED=1
    fi
}

# ---------------------------------------------------------------- 1. setup
if ! step setup bash scripts/setup.sh; then
    echo "test.sh: setup failed; nothing else can run" >&2
    echo "test.sh: ${STEPS[*]}"
    exit 1
fi

# ---------------------------------------------------------------- 2-5. Rust
step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step build cargo build --workspace || build_ok=0
if ((build_ok)); then
    step cargo-test cargo test --workspace --no-fail-fast
else
    record cargo-test skip 0
fi

# ---------------------------------------------------------------- 6. Python
export HUBGATE_BIN="${HUBGATE_BIN:-$ROOT/target/debug/hubgate}"
export CHP_BIN="${CHP_BIN:-$ROOT/.tools/node_modules/.bin/configurable-http-proxy}"

has_tests() { # does directory $1 hold pytest test files?
    [[ -d "$1" ]] && [[ -n "$(find "$1" -type f \( -name 'test_*.py' -o -name '*_test.py' \) -print -quit)" ]]
}

py_dirs=()
for d in tests/compat tests/e2e tests/ops; do
    has_tests "$d" && py_dirs+=("$d")
done

if ((${#py_dirs[@]} == 0)); then
    echo
    echo "==> [pytest] no Python test files in tests/compat, tests/e2e or tests/ops; skipped"
    record pytest skip 0
elif ((!build_ok)); then
    record pytest skip 0
else
    # --timeout: a default bound for every test (tests may set a tighter one).
    # --tb=short: a CI page keeps the head and the tail of a long output; a failing
    # test's own source would push out the logs its fixture prints after it.
    # shellcheck disable=SC2086
    step pytest .venv/bin/python -m pytest "${py_dirs[@]}" -v --tb=short --timeout=600 \
        -p no:cacheprovider ${PYTEST_ARGS:-}
    # exit code 5 means "no tests collected": a failure here, since the dirs hold test files
fi

# ---------------------------------------------------------------- summary
passed=0 failed=0 skipped=0
if [[ -f "$LOGDIR/cargo-test.log" && " ${STEPS[*]} " != *" cargo-test:skipped "* ]]; then
    while read -r p f i; do
        passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + i))
    done < <(sed -nE 's/^test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/p' \
        "$LOGDIR/cargo-test.log")
fi
if [[ -f "$LOGDIR/pytest.log" && " ${STEPS[*]} " != *" pytest:skipped "* ]]; then
    # pytest's closing line, e.g. "==== 3 failed, 10 passed, 2 skipped, 1 error in 9.1s ===="
    last="$(grep -E '^=+ .* in [0-9.]+s' "$LOGDIR/pytest.log" | tail -n 1)"
    count() { # count WORD: the number before WORD in $last, or 0
        local v
        v="$(sed -nE "s/.*[^0-9]([0-9]+) $1.*/\1/p" <<<"$last")"
        echo "${v:-0}"
    }
    passed=$((passed + $(count passed)))
    failed=$((failed + $(count failed) + $(count error)))
    skipped=$((skipped + $(count skipped)))
fi

echo
echo "test.sh: steps: ${STEPS[*]} (total $((SECONDS - START))s)"
if ((FAILED)); then
    echo "test.sh: FAILED (logs in tmp/test-logs/)"
else
    echo "test.sh: all steps passed"
fi
echo "summary: $passed passed, $failed failed, $skipped skipped"
exit "$FAILED"
