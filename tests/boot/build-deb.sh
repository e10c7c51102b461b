#!/usr/bin/env bash
# The boot test's only way to get the .deb under test: the amd64 .deb exactly as it is released,
# built by packaging/release.sh --out OUTDIR (the static musl binary, as the README's Install
# section says), and prints the .deb's path as the last line on stdout.
#
# Usage: tests/boot/build-deb.sh OUTDIR
# BOOT_DEB=FILE skips the build and tests FILE instead (.ci/run passes the .deb that
# .ci/packaging.sh already built with packaging/release.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: build-deb.sh OUTDIR}

if [ -n "${BOOT_DEB:-}" ]; then
    [ -f "$BOOT_DEB" ] || { echo "build-deb: BOOT_DEB=$BOOT_DEB is not a file" >&2; exit 1; }
    echo "$BOOT_DEB"
    exit 0
fi
# Into OUTDIR, the boot test's own (TARGET/boot/deb): target/release-artifacts/, where a
# developer keeps the packages of both architectures, is left alone.
packaging/release.sh --install-prereqs --arch amd64 --out "$OUT" >&2
ls "$OUT"/coder-agent-auth_*_amd64.deb
