#!/usr/bin/env bash
# glibc vs static musl: builds both release binaries of coder-agent-auth and compares them
# (stripped size, `--version` start-up, one AWS exchange against the simulator over http and
# over https, peak RSS), N runs per cell, binaries taking turns. The packages ship the musl one.
#
#   bench/libc.sh          # N=30
#   N=100 bench/libc.sh
#
# Needs musl-tools and the x86_64-unknown-linux-musl Rust target (packaging/release.sh
# --install-prereqs installs both), and GNU time (/usr/bin/time) for the RSS row.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"

command -v musl-gcc >/dev/null ||
    { echo "bench/libc.sh: musl-gcc is missing: apt-get install musl-tools" >&2; exit 1; }
rustup target list --installed | grep -qx x86_64-unknown-linux-musl ||
    { echo "bench/libc.sh: rustup target add x86_64-unknown-linux-musl" >&2; exit 1; }

cargo build --release -p coder-agent-auth -p coder-agent-auth-sim
CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release --target x86_64-unknown-linux-musl -p coder-agent-auth

target=${CARGO_TARGET_DIR:-$root/target}
exec python3 "$here/libc.py" \
    --bin "glibc=$target/release/coder-agent-auth" \
    --bin "musl=$target/x86_64-unknown-linux-musl/release/coder-agent-auth" \
    --sim "$target/release/coder-agent-auth-sim" \
    -n "${N:-30}"
