#!/usr/bin/env bash
# coder-agent-auth benchmark. One command, from anywhere:
#
#   bench/run.sh            # N=30 alternating runs per cloud
#   N=100 bench/run.sh
#
# Builds the release binaries (cargo build --release --workspace), installs curl, jq and GNU time
# with apt-get if they are missing (root or sudo needed only then), starts the simulator on
# loopback for AWS, GCP and Azure, and for AWS also bench/two-segment-imds.py (a metadata server
# on Python's http.server: keep-alive, each answer in two segments), and prints one table; the
# same table goes to bench/RESULTS.md.
# Fails (exit 1) if any run fails: every exchange must exit 0 and store the simulator's token for
# the agent (one per agent and workspace build, as coderd issues them).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"

need=()
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
[ -x /usr/bin/time ] || need+=(time)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]} with apt-get" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "bench: cargo build --release --workspace" >&2
cargo build --release --workspace

target=${CARGO_TARGET_DIR:-$root/target}
exec python3 "$here/bench.py" \
  --bin "$target/release/coder-agent-auth" \
  --sim "$target/release/coder-agent-auth-sim" \
  --curl-script "$here/curl-exchange.sh" \
  --two-segment "$here/two-segment-imds.py" \
  --results "$here/RESULTS.md" \
  -n "${N:-30}"
