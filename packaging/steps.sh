# Named steps and their durations, for packaging/release.sh, .ci/packaging.sh and
# tests/boot/run.sh (sourced from the repository root):
#   STEP_PREFIX="release: "   printed after "==> " (optional)
#   step "what comes next"    ends the step before and starts this one
#   steps_summary [LABEL]     ends the last step; prints each step's seconds and the total
T_ALL=$SECONDS
T_STEP=$SECONDS
STEP=""
TIMINGS=()
step() {
    if [ -n "$STEP" ]; then TIMINGS+=("$(printf '%5ds  %s' $((SECONDS - T_STEP)) "$STEP")"); fi
    STEP="$*"
    T_STEP=$SECONDS
    printf '\n==> %s%s\n' "${STEP_PREFIX:-}" "$*"
}
steps_summary() {
    TIMINGS+=("$(printf '%5ds  %s' $((SECONDS - T_STEP)) "$STEP")")
    printf '\nTimings:\n'
    printf '%s\n' "${TIMINGS[@]}"
    printf '%5ds  %s\n' $((SECONDS - T_ALL)) "${1:-total}"
}
