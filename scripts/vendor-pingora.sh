#!/usr/bin/env bash
# The patched pingora crates in vendor/: each is the crates.io release plus one reviewed diff in
# vendor/patches/ (what each change does and what it saves: docs/pingora-patches.md).
#
#   scripts/vendor-pingora.sh check   # vendor/<crate> is exactly the release plus its diff (default)
#   scripts/vendor-pingora.sh diff    # rewrite vendor/patches/<crate>.diff from vendor/<crate>
#                                     # (after editing a vendored file; review, then commit both)
#
# The releases come from cargo's download cache when present, else from static.crates.io, and
# are checked against the sha256 sums below (the ones Cargo.lock recorded before the patch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-check}"
VERSION=0.9.1
declare -A SHA256=(
    [pingora-core]=a535f47f65fdcb003f9e1df04cd18e614c128dfe9388acce3f211ae38ac14d68
    [pingora-http]=3f38e9e519d53fab09eb320f7be2cd27ef9e66f755eba3bd84cc68852108d841
    [pingora-proxy]=8e3d5670490740405ecc8c6f75c3fcbce4d24f7adaffb355ca44550e7918e358
    [pingora-pool]=ecda093a10bad5e887d73286f052dd0fc78ad0d6c7654235e507ed0f85b64af1
)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

pristine() { # pristine CRATE: extracts the release to $WORK/CRATE-VERSION
    local crate="$1" file="$WORK/$1.crate" cached
    cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate-$VERSION.crate" 2>/dev/null | head -1 || true)
    if [[ -n "$cached" ]]; then
        cp "$cached" "$file"
    else
        curl -sSfL --max-time 60 -o "$file" "https://static.crates.io/crates/$crate/$crate-$VERSION.crate"
    fi
    echo "${SHA256[$crate]}  $file" | sha256sum -c --quiet - ||
        { echo "vendor-pingora: $crate-$VERSION.crate does not have the expected sha256" >&2; exit 1; }
    tar -xzf "$file" -C "$WORK"
}

status=0
for crate in pingora-core pingora-http pingora-proxy pingora-pool; do
    pristine "$crate"
    base="$WORK/$crate-$VERSION"
    patch="$ROOT/vendor/patches/$crate.diff"
    case "$MODE" in
        diff)
            # diff exits 1 when the trees differ, which is the point here.
            (cd "$WORK" && diff -ruN "$crate-$VERSION" "$ROOT/vendor/$crate" |
                sed -E "s|$ROOT/vendor/$crate|$crate|; s/^((---|\+\+\+) [^\t]+)\t.*/\1/" >"$patch") || true
            echo "vendor-pingora: wrote vendor/patches/$crate.diff ($(grep -c '^@@' "$patch") hunks)"
            ;;
        check)
            (cd "$base" && patch -s -p1 <"$patch")
            if diff -r "$base" "$ROOT/vendor/$crate" >"$WORK/$crate.out"; then
                echo "vendor-pingora: vendor/$crate is $crate $VERSION plus vendor/patches/$crate.diff"
            else
                echo "vendor-pingora: vendor/$crate differs from $crate $VERSION plus its diff:" >&2
                head -40 "$WORK/$crate.out" >&2
                status=1
            fi
            ;;
        *) echo "usage: scripts/vendor-pingora.sh [check|diff]" >&2; exit 2 ;;
    esac
done
exit "$status"
