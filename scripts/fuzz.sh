#!/usr/bin/env bash
# Runs hubgate's fuzz targets (fuzz/fuzz_targets/*.rs) for a bounded time each, at low priority.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 seconds, every target)
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/) plus what earlier runs
# found (fuzz/target/corpus/<target>/, not committed). A crash leaves its input in
# fuzz/artifacts/<target>/ and makes the script exit non-zero; reproduce it with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`, then turn it into a unit
# test next to the code it exercises. Needs the nightly toolchain; installs cargo-fuzz if absent.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
case "$seconds" in
    '' | *[!0-9]*) echo "fuzz.sh: SECONDS_PER_TARGET must be a number, got '$seconds'" >&2; exit 2 ;;
esac

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Build every target first (ASan, debug assertions on); the runs below then only execute.
for t in "${targets[@]}"; do
    nice -n 19 cargo +nightly fuzz build "$t"
done

logs=fuzz/target/logs
mkdir -p "$logs"
failed=()
summary=()
for t in "${targets[@]}"; do
    work="fuzz/target/corpus/$t"
    mkdir -p "$work" "fuzz/artifacts/$t"
    echo "== $t: ${seconds}s"
    # New inputs go to the first corpus directory (the uncommitted one).
    if nice -n 19 cargo +nightly fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$logs/$t.log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        tail -n 40 "$logs/$t.log" >&2
    fi
    runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$logs/$t.log" | tail -n 1 || true)
    summary+=("$t: $status${runs:+ ($runs(s))} corpus $(find "$work" -type f | wc -l) inputs")
done

echo "== summary (logs in $logs/)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: crashes or property failures in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
