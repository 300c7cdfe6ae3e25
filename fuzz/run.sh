#!/usr/bin/env bash
# Build the fuzz targets with libFuzzer + AddressSanitizer and run each for a bounded time.
#
#   fuzz/run.sh                 # every target, 60 s each
#   FUZZ_SECS=600 fuzz/run.sh sse_usage token_exchange
#
# Uses `cargo fuzz` when it is installed; otherwise passes the same flags cargo-fuzz would
# (sanitizer coverage + ASan) to a plain cargo build. Both need nightly-only flags, which the stable
# toolchain accepts with RUSTC_BOOTSTRAP=1. Crashes land in fuzz/artifacts/<target>/; each one found
# must become a regression test in the crate it concerns (and its input goes to fuzz/regressions/).
# The corpus grows in fuzz/corpus/<target>/ (seeds are committed; the rest is gitignored).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
FUZZ_SECS="${FUZZ_SECS:-60}"
TARGETS=("$@")
[[ ${#TARGETS[@]} -eq 0 ]] && TARGETS=(sse_usage config_parse policy_parse token_exchange proxy_request)
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HERE/target}"

if command -v cargo-fuzz >/dev/null 2>&1; then
    BUILD=(cargo fuzz build -O --debug-assertions)
    BIN_DIR="$CARGO_TARGET_DIR/$TRIPLE/release"
else
    export RUSTFLAGS="${RUSTFLAGS:-} -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
--cfg fuzzing -Zsanitizer=address -Cdebug-assertions -Coverflow-checks"
    BUILD=(cargo build --release --target "$TRIPLE" --bins)
    BIN_DIR="$CARGO_TARGET_DIR/$TRIPLE/release"
fi
echo "building fuzz targets (${BUILD[*]})" >&2
"${BUILD[@]}"

status=0
: >"$HERE/last-run.txt"
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=()
    [[ -d "seeds/$t" ]] && seeds=("seeds/$t")
    echo "== $t for ${FUZZ_SECS}s" >&2
    set +e
    ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1" \
        "$BIN_DIR/$t" "corpus/$t" "${seeds[@]}" -max_total_time="$FUZZ_SECS" -rss_limit_mb=4096 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"artifacts/$t.log" 2>&1
    rc=$?
    set -e
    runs="$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "artifacts/$t.log" | grep -o '[0-9]*$' || echo '?')"
    cov="$(grep -o 'cov: [0-9]*' "artifacts/$t.log" | tail -1 || true)"
    crashes="$(find "artifacts/$t" -type f | wc -l)"
    line="$t: rc=$rc runs=$runs $cov crashes=$crashes"
    echo "$line" | tee -a "$HERE/last-run.txt" >&2
    [[ $rc -ne 0 || $crashes -ne 0 ]] && status=1
done
exit $status
