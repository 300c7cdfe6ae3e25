#!/usr/bin/env bash
# Build the fuzz targets with cargo-fuzz (libFuzzer) and run each for a bounded time.
#
#   fuzz/run.sh                          # every target, 60 s each
#   fuzz/run.sh -t 300 sse_usage translate_stream
#   FUZZ_SANITIZER=address fuzz/run.sh   # with ASan (slower build and runs; see below)
#   fuzz/run.sh --build-only
#
# Installs cargo-fuzz (pinned, --locked) when it is missing. Builds with the nightly toolchain when
# rustup has one, else with the stable one and RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly-only flags).
#
# Sanitizer: `none` by default. The workspace forbids `unsafe_code`, so ASan would only watch the C
# dependencies (aws-lc, SQLite), which these inputs barely reach; without it the build is ~2× faster and
# the targets run ~2–3× more executions per second. Overflow checks and debug assertions are always on.
#
# Layout (relative to fuzz/):
#   seeds/<target>/        committed starting inputs
#   regressions/<target>/  committed inputs of crashes that were found and fixed
#   dicts/*.dict           libFuzzer dictionaries
#   corpus/<target>/       the growing corpus (gitignored)
#   artifacts/<target>/    crashes, timeouts, OOMs of the last runs (gitignored); <target>.log beside it
#   last-run.txt           one summary line per target (gitignored)
# Seeds and regressions are also replayed on stable by `cargo test -p tollgate-broker --test fuzz_corpus`.
# Every crash found must become a regression test in the crate it concerns, and its input goes to
# regressions/<target>/.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

CARGO_FUZZ_VERSION="0.13.1"
ALL_TARGETS=(sse_usage config_parse policy_parse token_exchange proxy_request
    translate_request translate_response translate_stream)
FUZZ_SECS="${FUZZ_SECS:-60}"
BUILD_ONLY=0
TARGETS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -t | --secs) FUZZ_SECS="$2"; shift 2 ;;
        --build-only) BUILD_ONLY=1; shift ;;
        -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
[[ ${#TARGETS[@]} -eq 0 ]] && TARGETS=("${ALL_TARGETS[@]}")
[[ "$FUZZ_SECS" =~ ^[0-9]+$ ]] || { echo "seconds must be an integer: $FUZZ_SECS" >&2; exit 2; }

if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    CARGO=(cargo +nightly)
else
    CARGO=(cargo)
    export RUSTC_BOOTSTRAP=1
fi
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$HERE/target}}"
SANITIZER="${FUZZ_SANITIZER:-none}"

echo "building fuzz targets (sanitizer $SANITIZER, target dir $CARGO_TARGET_DIR)" >&2
"${CARGO[@]}" fuzz build --sanitizer "$SANITIZER" --debug-assertions
[[ $BUILD_ONLY -eq 1 ]] && exit 0
BIN_DIR="$CARGO_TARGET_DIR/$TRIPLE/release"

dict_for() {
    case "$1" in
        sse_usage | translate_stream) echo "dicts/sse.dict" ;;
        translate_request | translate_response | proxy_request) echo "dicts/json.dict" ;;
        *) ;;
    esac
}

status=0
: >"$HERE/last-run.txt"
for t in "${TARGETS[@]}"; do
    [[ -x "$BIN_DIR/$t" ]] || { echo "no such target: $t" >&2; status=1; continue; }
    mkdir -p "corpus/$t" "artifacts/$t"
    inputs=("corpus/$t")
    for d in "seeds/$t" "regressions/$t"; do [[ -d "$d" ]] && inputs+=("$d"); done
    extra=()
    dict="$(dict_for "$t")"
    [[ -n "$dict" ]] && extra+=("-dict=$dict")
    before="$(find "artifacts/$t" -type f | wc -l)"
    echo "== $t for ${FUZZ_SECS}s" >&2
    set +e
    # The corpus dir comes first: new inputs are written there, never into seeds/ or regressions/.
    ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1" \
        "$BIN_DIR/$t" "${inputs[@]}" "${extra[@]}" -max_total_time="$FUZZ_SECS" -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
        >"artifacts/$t.log" 2>&1
    rc=$?
    set -e
    log="artifacts/$t.log"
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    eps="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    last="$(grep -E '^#[0-9]+' "$log" | tail -1)"
    cov="$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)"
    ft="$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)"
    corp="$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' <<<"$last" | cut -d' ' -f2 || true)"
    crashes=$(($(find "artifacts/$t" -type f | wc -l) - before))
    line="$t: rc=$rc secs=$FUZZ_SECS runs=${runs:-?} exec/s=${eps:-?} cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?} new_artifacts=$crashes"
    echo "$line" | tee -a "$HERE/last-run.txt" >&2
    if [[ $rc -ne 0 || $crashes -ne 0 ]]; then
        status=1
        grep -m3 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" >&2 || true
    fi
done
exit $status
