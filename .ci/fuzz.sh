#!/usr/bin/env bash
# Fuzz every target in fuzz/ for a bounded time; fail if any target crashes.
#
#   bash .ci/fuzz.sh                  # 20 s per target
#   FUZZ_SECONDS=600 bash .ci/fuzz.sh # longer
#   bash .ci/fuzz.sh classify jwt_claims   # only some targets
#
# Runs on stable: no sanitizer (the default ASan build needs nightly). The
# committed corpus (fuzz/corpus/<target>/, plus the regression inputs in
# fuzz/artifacts-found/<target>/) is copied to a temp dir, so the run never
# changes the repo; a crashing input is written to fuzz/artifacts/<target>/
# (git-ignored) and printed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
unset CARGO_TARGET_DIR # cargo fuzz builds in fuzz/target

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-20}

step() { printf '\n==> %s\n' "$*"; }

if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    step "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

step "building ${#targets[@]} fuzz targets"
cargo fuzz build --fuzz-dir fuzz --sanitizer none

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=()
summary=()
for t in "${targets[@]}"; do
    step "fuzzing $t for ${FUZZ_SECONDS}s"
    mkdir -p "$work/corpus/$t" fuzz/artifacts/"$t"
    # The committed seeds, plus the inputs of bugs found earlier (replayed first
    # thing, so a regression fails every run, not by chance).
    for d in fuzz/corpus/"$t" fuzz/artifacts-found/"$t"; do
        if [[ -d $d ]]; then cp -R "$d"/. "$work/corpus/$t/"; fi
    done
    dict=()
    if [[ -f fuzz/dict/$t.dict ]]; then dict=(-dict="fuzz/dict/$t.dict"); fi
    log="$work/$t.log"
    rc=0
    start=$SECONDS
    cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "$work/corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/artifacts/$t/" "${dict[@]}" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [[ -z "$execs" ]]; then
        execs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p' "$log" | tail -1)
    fi
    execs=${execs:-0}
    took=$((SECONDS - start))
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 || true)
    line="$t: ${execs} executions in ${took}s (~$((execs / (took > 0 ? took : 1)))/s), ${cov:-cov: ?}, corpus $(find "$work/corpus/$t" -type f | wc -l) files"
    if [[ $rc -ne 0 ]]; then
        line="$line: CRASH (exit $rc)"
        failed+=("$t")
        # The panic, the stack and the input.
        sed -n '/panicked at\|ERROR: libFuzzer/,/Test unit written/p' "$log" | head -80
        grep -q 'panicked at\|ERROR: libFuzzer' "$log" || tail -40 "$log"
        for f in $(grep -Eo "fuzz/artifacts/$t/[a-z]+-[0-9a-f]+" "$log" | sort -u); do
            echo "--- crashing input $f (reproduce: cargo fuzz run --fuzz-dir fuzz --sanitizer none $t $f):"
            od -A d -c "$f" | head -40
        done
    fi
    echo "$line"
    summary+=("$line")
done

step "summary"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
