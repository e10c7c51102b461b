#!/usr/bin/env bash
# The boot test, in one command:   tests/boot/run.sh
#
# Boots QEMU guests (Debian 12, systemd, cloud-init; software emulation, no KVM needed) whose
# firmware says AWS, GCP or Azure, installs the real .deb in them, and checks the systemd units and
# the cloud-init examples against the simulator (see tests/boot/harness.py and the README's "How
# it is tested"). Runs as root on Debian 12 x86-64 and installs what it needs: qemu-system-x86
# (from bookworm-backports, to match the machine's qemu-utils), mmdebstrap, cloud-image-utils,
# socat, and packaging/release.sh's prerequisites. Everything it builds and every guest's logs stay in TARGET/boot/.
#
# BOOT_JOBS=N guests at a time (default 4); BOOT_GUESTS=quickstart,aws,gcp,azure (default all);
# BOOT_DEB=FILE tests FILE instead of building the .deb; BOOT_REBUILD_IMAGE=1 rebuilds the image;
# BOOT_MIRROR=URL the Debian mirror for the image.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TERM_COLOR=never DEBIAN_FRONTEND=noninteractive
STEP_PREFIX="boot test: "
. packaging/steps.sh
fail() { echo "boot test: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run it as root (mmdebstrap builds the image as root)"
[ "$(uname -m)" = x86_64 ] || fail "the guests are x86-64 Debian; run it on an x86-64 machine"

step "packages: qemu-system-x86 (bookworm-backports), mmdebstrap, cloud-image-utils, socat"
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v mmdebstrap >/dev/null ||
    ! command -v cloud-localds >/dev/null || ! command -v socat >/dev/null ||
    ! command -v qemu-img >/dev/null; then
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            >/etc/apt/sources.list.d/bookworm-backports.sources
    fi
    apt-get update -qq
    # qemu-utils may already come from backports; the emulator must then come from there too.
    apt-get install -y -qq --no-install-recommends -t bookworm-backports \
        qemu-system-x86 qemu-utils >/dev/null
    apt-get install -y -qq --no-install-recommends mmdebstrap cloud-image-utils socat \
        e2fsprogs >/dev/null
fi
qemu-system-x86_64 --version | head -1
echo "mmdebstrap $(mmdebstrap --version | awk '{print $2}'), $(socat -V | sed -n 2p)"

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
OUT="$TARGET_DIR/boot"
mkdir -p "$OUT"

step "the .deb under test (tests/boot/build-deb.sh)"
DEB=$(tests/boot/build-deb.sh "$OUT/deb" | tail -1)
echo "$DEB ($(stat -c %s "$DEB") bytes)"

step "the simulator (release build)"
cargo build -q --release -p coder-agent-auth-sim
SIM="$TARGET_DIR/release/coder-agent-auth-sim"

step "the guest image (tests/boot/image.sh)"
tests/boot/image.sh "$OUT/image"

step "the guests (tests/boot/harness.py)"
rc=0
python3 tests/boot/harness.py --deb "$DEB" --image "$OUT/image" --sim "$SIM" \
    --work "$OUT/work" --jobs "${BOOT_JOBS:-4}" --guests "${BOOT_GUESTS:-quickstart,aws,gcp,azure}" ||
    rc=$?

step "done"
steps_summary "total (boot test from nothing to here)"
if [ "$rc" != 0 ]; then
    fail "see the FAIL rows above; every guest's console, simulator logs and QEMU command are in $OUT/work/GUEST/"
fi
echo "boot test: all scenarios passed"
