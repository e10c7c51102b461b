#!/usr/bin/env bash
# The boot test's only way to get the .deb under test: builds it exactly as the README's Install
# section and .ci/packaging.sh do (man pages and completions from xtask, the release binary,
# then `cargo deb --no-build`), and prints the .deb's path as the last line on stdout.
#
# Usage: tests/boot/build-deb.sh OUTDIR
# BOOT_DEB=FILE skips the build and tests FILE instead (for example a .deb that a release
# script built around a static binary).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: build-deb.sh OUTDIR}
CARGO_DEB_VERSION=3.8.0   # the version .ci/packaging.sh pins

if [ -n "${BOOT_DEB:-}" ]; then
    [ -f "$BOOT_DEB" ] || { echo "build-deb: BOOT_DEB=$BOOT_DEB is not a file" >&2; exit 1; }
    echo "$BOOT_DEB"
    exit 0
fi
if [ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION" >&2
    cargo install -q cargo-deb --version "$CARGO_DEB_VERSION" --locked >&2
fi
rm -rf target/dist "$OUT"
cargo run -q -p xtask -- dist target/dist >&2
cargo build -q --release -p coder-agent-auth >&2
cargo deb -q -p coder-agent-auth --no-build --output "$OUT/" >&2
ls "$OUT"/coder-agent-auth_*.deb
