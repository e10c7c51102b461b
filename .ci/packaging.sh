#!/usr/bin/env bash
# Packaging CI: systemd units, cloud-init examples, Terraform templates, man pages and
# completions (xtask), and every release artifact built by packaging/release.sh (static musl
# binaries for x86_64 and aarch64, .deb and .rpm for both, tarballs, SHA256SUMS), each checked:
# the .debs linted (lintian), the amd64 one installed with dpkg -i and verified (dpkg --verify),
# the RPMs linted and listed (no RPM-based system can be booted
# here, so their check is metadata and layout), the tarballs unpacked, and the integration
# suite run against both shipped binaries (aarch64 under qemu-user).
#
# Runs as root on a clean Debian 12 machine that has the Rust toolchain, gcc and
# python3/pip; installs everything else it needs. Every step prints a header and its time;
# any failure fails the script. Usage: bash .ci/packaging.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export DEBIAN_FRONTEND=noninteractive

PYTHON_HCL2_VERSION=8.1.4
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
WORK=$(mktemp -d /tmp/coder-agent-auth-packaging.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

. packaging/steps.sh
fail() { echo "packaging: FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
step "tools: apt packages, python-hcl2, and packaging/release.sh's prerequisites"
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    cloud-init qemu-user qemu-user-binfmt binfmt-support file man-db rpm rpmlint lintian >/dev/null
python3 -m pip install -q --root-user-action=ignore "python-hcl2==$PYTHON_HCL2_VERSION"
# release.sh checks and installs its own: cross gcc, musl-tools, rpm, the rust targets, cargo-deb.
# Run it here so that its build time below is the build's alone.
bash packaging/release.sh --install-prereqs --prereqs-only
echo "cloud-init $(cloud-init --version 2>&1 | awk '{print $NF}'), cargo-deb $(cargo deb --version)," \
    "$(systemd-analyze --version | head -1), $(qemu-aarch64 --version | head -1), rpmlint $(rpmlint --version)," \
    "lintian $(lintian --version | awk '{print $NF}')"

# ---------------------------------------------------------------------------------------------
step "cloud-init examples: cloud-init schema, then content checks"
for f in packaging/cloud-init/*.yaml; do
    cloud-init schema --config-file "$f"
done
# Debian's python3 has PyYAML (a cloud-init dependency).
/usr/bin/python3 packaging/check_cloud_init.py

# ---------------------------------------------------------------------------------------------
step "terraform templates: python-hcl2 parse and content checks"
python3 packaging/check_terraform.py

# ---------------------------------------------------------------------------------------------
step "xtask: man pages and completions into target/dist"
cargo test -q -p xtask
rm -rf target/dist
cargo run -q -p xtask -- dist target/dist
for f in man/coder-agent-auth.1 completions/coder-agent-auth.bash completions/_coder-agent-auth \
    completions/coder-agent-auth.fish; do
    [ -s "target/dist/$f" ] || fail "target/dist/$f missing"
done
man -l target/dist/man/coder-agent-auth.1 2>&1 | grep -q 'EXIT STATUS' || fail "man page does not render"
bash -n target/dist/completions/coder-agent-auth.bash

# ---------------------------------------------------------------------------------------------
step "release artifacts: packaging/release.sh (static musl, x86_64 and aarch64)"
bash packaging/release.sh
OUT="$TARGET_DIR/release-artifacts"
VERSION=$(cargo pkgid -p coder-agent-auth | sed 's/.*[#@]//')
(cd "$OUT" && sha256sum -c SHA256SUMS)
# Every file in the directory is covered by SHA256SUMS, and nothing else is in it.
diff <(cd "$OUT" && LC_ALL=C ls | grep -vx SHA256SUMS) <(awk '{print $2}' "$OUT/SHA256SUMS") ||
    fail "SHA256SUMS does not list exactly the files of $OUT"
DESCRIPTION=$(cargo metadata --format-version 1 --no-deps | python3 -c \
    'import json,sys; print(next(p["description"] for p in json.load(sys.stdin)["packages"] if p["name"] == "coder-agent-auth"))')
DEB="$OUT/coder-agent-auth_${VERSION}-1_amd64.deb"
for f in "coder-agent-auth_${VERSION}-1_amd64.deb" "coder-agent-auth_${VERSION}-1_arm64.deb" \
    "coder-agent-auth-${VERSION}-1.x86_64.rpm" "coder-agent-auth-${VERSION}-1.aarch64.rpm" \
    "coder-agent-auth-${VERSION}-linux-amd64.tar.gz" "coder-agent-auth-${VERSION}-linux-arm64.tar.gz" \
    coder-agent-auth-linux-amd64 coder-agent-auth-linux-arm64; do
    [ -s "$OUT/$f" ] || fail "packaging/release.sh did not make $OUT/$f"
done

# ---------------------------------------------------------------------------------------------
step "release.sh --out DIR: another directory, the same bytes, the default one left alone"
# The boot test builds its .deb this way (tests/boot/build-deb.sh), into TARGET/boot/deb.
bash packaging/release.sh --arch amd64 --out "$WORK/again" >"$WORK/again.log" 2>&1 ||
    { tail -30 "$WORK/again.log"; fail "release.sh --arch amd64 --out $WORK/again"; }
for f in "coder-agent-auth_${VERSION}-1_amd64.deb" "coder-agent-auth-${VERSION}-1.x86_64.rpm" \
    "coder-agent-auth-${VERSION}-linux-amd64.tar.gz" coder-agent-auth-linux-amd64; do
    cmp "$OUT/$f" "$WORK/again/$f" || fail "$f differs between two builds of the same commit"
done
(cd "$OUT" && sha256sum --quiet -c SHA256SUMS) || fail "release.sh --out changed $OUT"
[ -s "$OUT/coder-agent-auth_${VERSION}-1_arm64.deb" ] || fail "release.sh --out removed the arm64 .deb from $OUT"
# A directory that holds anything else is not the script's to empty: refused before the build.
mkdir -p "$WORK/mine" && echo keep >"$WORK/mine/notes.txt"
if bash packaging/release.sh --arch amd64 --out "$WORK/mine" >"$WORK/mine.log" 2>&1; then
    fail "release.sh --out accepted a directory holding notes.txt"
fi
grep -q 'holds files that are not release artifacts (notes.txt' "$WORK/mine.log" || fail "$(cat "$WORK/mine.log")"
[ "$(cat "$WORK/mine/notes.txt")" = keep ] || fail "release.sh --out touched notes.txt"
echo "release.sh --out: $WORK/again holds the same amd64 artifacts; $OUT untouched; a foreign directory refused"

# ---------------------------------------------------------------------------------------------
step ".deb (amd64, arm64): metadata and contents"
for arch in amd64 arm64; do
    deb="$OUT/coder-agent-auth_${VERSION}-1_$arch.deb"
    dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "$deb: Architecture is not $arch"
    # The static binary needs no libc: the package depends on nothing, and has no Depends: field
    # (not even an empty one).
    # (Read whole first: grep -q stopping early would give dpkg-deb a SIGPIPE under pipefail.)
    control=$(dpkg-deb -I "$deb" control)
    ! grep -q '^Depends:' <<<"$control" || fail "$deb: $(grep '^Depends:' <<<"$control")"
    # The synopsis is Cargo.toml's description, whole (cargo-deb breaks one over 79 characters).
    synopsis=$(dpkg-deb -f "$deb" Description)
    synopsis=${synopsis%%$'\n'*}
    [ "$synopsis" = "$DESCRIPTION" ] || fail "$deb: synopsis '$synopsis', want '$DESCRIPTION'"
    # md5sums lists every regular file the package installs, each with its right sum.
    dpkg-deb -I "$deb" md5sums >"$WORK/md5sums-$arch" || fail "$deb has no md5sums"
    dpkg-deb -c "$deb" >"$WORK/deb-$arch.txt"
    for p in ./usr/bin/coder-agent-auth ./lib/systemd/system/coder-agent-auth@.service \
        ./lib/systemd/system/coder-agent@.service ./usr/share/man/man1/coder-agent-auth.1.gz \
        ./usr/share/bash-completion/completions/coder-agent-auth \
        ./usr/share/zsh/vendor-completions/_coder-agent-auth \
        ./usr/share/fish/vendor_completions.d/coder-agent-auth.fish \
        ./usr/share/doc/coder-agent-auth/examples/cloud-init/aws-two-agents.yaml \
        ./usr/share/doc/coder-agent-auth/examples/terraform/aws-multi-agent/main.tf; do
        awk '{print $NF}' "$WORK/deb-$arch.txt" | grep -qxF "$p" || fail "$p is not in $deb"
    done
    mkdir -p "$WORK/x-$arch" && dpkg-deb -x "$deb" "$WORK/x-$arch"
    info=$(file "$WORK/x-$arch/usr/bin/coder-agent-auth")
    echo "$info"
    grep -Eq 'static-pie linked|statically linked' <<<"$info" || fail "$deb: the binary is not static"
    (cd "$WORK/x-$arch" && md5sum --quiet -c "$WORK/md5sums-$arch") || fail "$deb: md5sums is wrong"
    diff <(awk '{print $2}' "$WORK/md5sums-$arch" | sort) \
        <(cd "$WORK/x-$arch" && find . -type f -printf '%P\n' | sort) ||
        fail "$deb: md5sums does not list exactly the package's files"
    for f in copyright changelog.Debian.gz README.md lifecycle.md install.md; do
        [ -s "$WORK/x-$arch/usr/share/doc/coder-agent-auth/$f" ] || fail "$deb has no /usr/share/doc/coder-agent-auth/$f"
    done
    # The shipped README is the operator's guide, and every link in the shipped docs leads to
    # a file shipped beside it.
    cmp "$WORK/x-$arch/usr/share/doc/coder-agent-auth/README.md" docs/operator.md ||
        fail "$deb: README.md is not docs/operator.md"
    python3 .ci/docs.py --dir "$WORK/x-$arch/usr/share/doc/coder-agent-auth" ||
        fail "$deb: a link in the shipped docs leads nowhere"
done
# lintian: no error and no warning (info and pedantic notes are not failures); what is
# overridden is justified in packaging/debian/lintian-overrides, shipped in the package.
lint=$(lintian --fail-on error,warning --display-level '>=warning' "$OUT"/*.deb 2>&1) ||
    { echo "$lint"; fail "lintian: fix the package, or justify the tag in packaging/debian/lintian-overrides"; }
[ -z "$lint" ] || echo "$lint"
echo "$(lintian --version): no error, no warning in $(cd "$OUT" && ls ./*.deb | tr '\n' ' ')"
cat "$WORK/deb-amd64.txt"
echo ".deb: $DEB, $(stat -c %s "$DEB") bytes ($(du -h "$DEB" | cut -f1))"

# ---------------------------------------------------------------------------------------------
step ".rpm (x86_64, aarch64): rpmlint, rpm -qlp, rpm -qp --scripts (no RPM-based system boots here)"
for arch in x86_64 aarch64; do
    rpmf="$OUT/coder-agent-auth-${VERSION}-1.$arch.rpm"
    rpm -qpi "$rpmf" | grep -E "^(Name|Version|Release|Architecture|License|Summary) *:"
    [ "$(rpm -qp --qf '%{ARCH}' "$rpmf")" = "$arch" ] || fail "$rpmf: arch is not $arch"
    rpm -qlp "$rpmf" >"$WORK/rpm-$arch.txt"
    for p in /usr/bin/coder-agent-auth /usr/lib/systemd/system/coder-agent-auth@.service \
        /usr/lib/systemd/system/coder-agent@.service /usr/share/man/man1/coder-agent-auth.1.gz \
        /usr/share/bash-completion/completions/coder-agent-auth \
        /usr/share/zsh/site-functions/_coder-agent-auth \
        /usr/share/fish/vendor_completions.d/coder-agent-auth.fish \
        /usr/share/doc/coder-agent-auth/README.md \
        /usr/share/doc/coder-agent-auth/examples/cloud-init/aws-two-agents.yaml \
        /usr/share/doc/coder-agent-auth/examples/terraform/aws-multi-agent/main.tf; do
        grep -qxF "$p" "$WORK/rpm-$arch.txt" || fail "$p is not in $rpmf"
    done
    # Same file set as the .deb of the same architecture (release.sh also compares modes).
    deb_arch=$([ "$arch" = x86_64 ] && echo amd64 || echo arm64)
    diff <(awk '$1 !~ /^d/ {print $NF}' "$WORK/deb-$deb_arch.txt" | grep -v '^\./usr/share/lintian/' | sed -e 's#^\./#/#' \
            -e 's#^/lib/systemd#/usr/lib/systemd#' -e 's#/zsh/vendor-completions/#/zsh/site-functions/#' | sort) \
        <(rpm -qlvp "$rpmf" | awk '$1 !~ /^d/ {print $NF}' | sort) ||
        fail "$rpmf and the $deb_arch .deb do not hold the same files"
    # Scriptlets: daemon-reload after install/upgrade and after removal, like the .deb's.
    scripts=$(rpm -qp --scripts "$rpmf")
    echo "$scripts"
    for s in postinstall postuninstall; do
        awk -v s="$s" '$1 == s {on = 1; next} /scriptlet/ {on = 0} on' <<<"$scripts" |
            grep -q 'systemctl --system daemon-reload' || fail "$rpmf: no daemon-reload in %$s"
    done
    # As the .deb's postinst: /etc/coder-agent-auth created root-only when missing.
    grep -q 'mkdir -m 0700 /etc/coder-agent-auth' <<<"$scripts" ||
        fail "$rpmf: %post does not create /etc/coder-agent-auth (0700) as the .deb does"
    # Requires: only /bin/sh (scriptlets) and rpmlib features that rpm 4.11 (Amazon Linux 2) has.
    reqs=$(rpm -qpR "$rpmf" | grep -v '^/bin/sh$\|^rpmlib(' || true)
    [ -z "$reqs" ] || fail "$rpmf requires more than /bin/sh: $reqs"
    [ "$(rpm -qp --qf '%{PAYLOADCOMPRESSOR}' "$rpmf")" = xz ] || fail "$rpmf: payload is not xz"
done
cat "$WORK/rpm-x86_64.txt"
lint=$(rpmlint -c packaging/rpm/rpmlint.toml "$OUT"/*.rpm 2>&1) || true
echo "$lint"
grep -q ' 0 errors, 0 warnings' <<<"$lint" ||
    fail "rpmlint: fix the package, or justify the message in packaging/rpm/rpmlint.toml"

# ---------------------------------------------------------------------------------------------
step "tarballs (amd64, arm64): contents; the amd64 one unpacked and run"
for arch in amd64 arm64; do
    tgz="$OUT/coder-agent-auth-${VERSION}-linux-$arch.tar.gz"
    top="coder-agent-auth-${VERSION}-linux-$arch"
    tar -tzf "$tgz" >"$WORK/tar-$arch.txt"
    for p in coder-agent-auth README.md man/coder-agent-auth.1 completions/coder-agent-auth.bash \
        completions/_coder-agent-auth completions/coder-agent-auth.fish \
        systemd/coder-agent-auth@.service systemd/coder-agent@.service \
        systemd/coder-agent-watch@.service examples/agent.env.example \
        examples/cloud-init/aws-two-agents.yaml examples/terraform/aws-multi-agent/main.tf; do
        grep -qxF "$top/$p" "$WORK/tar-$arch.txt" || fail "$top/$p is not in $tgz"
    done
    mkdir -p "$WORK/t-$arch" && tar -C "$WORK/t-$arch" -xzf "$tgz"
    cmp "$WORK/t-$arch/$top/coder-agent-auth" "$OUT/coder-agent-auth-linux-$arch" ||
        fail "$tgz: its binary is not coder-agent-auth-linux-$arch"
done
"$WORK/t-amd64/coder-agent-auth-${VERSION}-linux-amd64/coder-agent-auth" --version
cmp "$WORK/x-amd64/usr/bin/coder-agent-auth" "$OUT/coder-agent-auth-linux-amd64" ||
    fail "the amd64 .deb's binary is not coder-agent-auth-linux-amd64"
cmp "$WORK/x-arm64/usr/bin/coder-agent-auth" "$OUT/coder-agent-auth-linux-arm64" ||
    fail "the arm64 .deb's binary is not coder-agent-auth-linux-arm64"

# ---------------------------------------------------------------------------------------------
step "install the .deb (dpkg -i) and use it"
dpkg -i "$DEB"
dpkg -s coder-agent-auth | grep -E '^(Status|Version|Depends):'
# dpkg --verify checks every installed file against md5sums: clean now, and a changed file shows.
out=$(dpkg --verify coder-agent-auth) || fail "dpkg --verify: $out"
[ -z "$out" ] || fail "dpkg --verify: $out"
doc=/usr/share/doc/coder-agent-auth/README.md
cp "$doc" "$WORK/README.md.orig" && echo changed >>"$doc"
out=$(dpkg --verify coder-agent-auth || true)
cp "$WORK/README.md.orig" "$doc"
grep -q "^??5?????? *$doc\$" <<<"$out" || fail "dpkg --verify did not notice a changed $doc: $out"
echo "dpkg --verify: $(wc -l </var/lib/dpkg/info/coder-agent-auth.md5sums) files checked"
/usr/bin/coder-agent-auth --version
man -w coder-agent-auth
man -w coder-agent-auth-detect
MANWIDTH=80 man coder-agent-auth 2>/dev/null | grep -A3 'EXIT STATUS'
# Exit code 2 (usage) from the installed binary, before any network access.
rc=0; /usr/bin/coder-agent-auth --url https://coder.example.com --agent-name 'bad name' --auth aws \
    --token-file "$WORK/t" 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "installed binary: invalid agent name gave exit $rc, want 2"

# ---------------------------------------------------------------------------------------------
step "terraform per-boot script, run for real against the simulator (namespaced)"
cargo build -q -p coder-agent-auth-sim
bash packaging/test_per_boot_script.sh /usr/bin/coder-agent-auth "$TARGET_DIR/debug/coder-agent-auth-sim"

# ---------------------------------------------------------------------------------------------
step "systemd units: systemd-analyze verify (templates and instance copies, as packaged)"
# A throwaway root holding systemd's own units, the .deb's files exactly as packaged (so the
# ExecStart= binary that must exist is the real one), and instance copies (name@main) that
# resolve %i. Coder's CLI is not ours to ship: /usr/local/bin/coder is a stub, the only one.
ROOT="$WORK/root"
mkdir -p "$ROOT/usr/lib" "$ROOT/etc/systemd/system" "$ROOT/usr/local/bin"
cp -a /usr/lib/systemd "$ROOT/usr/lib/"
ln -s usr/lib "$ROOT/lib"
dpkg-deb -x "$DEB" "$ROOT/extract"
cp -a "$ROOT"/extract/usr/bin "$ROOT/usr/"
# ExecReload= runs the system's kill(1) as /bin/kill (/bin is usr/bin on a merged-/usr system).
ln -s usr/bin "$ROOT/bin"
cp /usr/bin/kill "$ROOT/usr/bin/kill"
cp "$ROOT"/extract/lib/systemd/system/*.service "$ROOT/usr/lib/systemd/system/"
printf '#!/bin/sh\necho "stub coder CLI"\n' >"$ROOT/usr/local/bin/coder"
chmod 755 "$ROOT/usr/local/bin/coder"
for unit in coder-agent-auth coder-agent coder-agent-watch; do
    for name in main dev; do
        cp "$ROOT/usr/lib/systemd/system/$unit@.service" "$ROOT/etc/systemd/system/$unit@$name.service"
    done
done
units=(coder-agent-auth@.service coder-agent@.service coder-agent-watch@.service
    coder-agent-auth@main.service coder-agent@main.service coder-agent-watch@main.service
    coder-agent-auth@dev.service coder-agent@dev.service coder-agent-watch@dev.service)
# verify exits 0 on warnings such as an unknown key: any output at all is a failure.
out=$(systemd-analyze verify --man=no --root="$ROOT" "${units[@]}" 2>&1) || fail "verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify printed: $out"
echo "verify: ${units[*]}: ok"
# The same check must catch a mistake (guards against a verify that checks nothing).
sed 's/^RestartSec=/RestartSecc=/' "$ROOT/etc/systemd/system/coder-agent-auth@main.service" \
    >"$ROOT/etc/systemd/system/coder-agent-auth@broken.service"
out=$(systemd-analyze verify --man=no --root="$ROOT" coder-agent-auth@broken.service 2>&1 || true)
grep -q "Unknown key" <<<"$out" || fail "verify did not notice an unknown key: $out"
rm "$ROOT/etc/systemd/system/coder-agent-auth@broken.service"
# Sandboxing of the exchange unit: systemd's exposure score (0 = best, 10 = none); fail
# above 3.0 (--threshold counts tenths).
systemd-analyze security --offline=yes --root="$ROOT" --threshold=30 coder-agent-auth@main.service |
    tail -1

# ---------------------------------------------------------------------------------------------
step "the integration suite against the shipped amd64 binary"
# The black-box suites spawn CODER_AGENT_AUTH_TEST_BIN instead of the binary cargo built: here
# the static release binary exactly as packaged (fleet, a load test, runs in .ci/run).
SUITES=(--test integration -- exchange:: faults:: sink:: diagnostics:: e2e::)
CODER_AGENT_AUTH_TEST_BIN="$OUT/coder-agent-auth-linux-amd64" \
    cargo test -p coder-agent-auth "${SUITES[@]}"

# ---------------------------------------------------------------------------------------------
step "aarch64: the shipped binary and the unit tests under qemu-user"
ARM="$OUT/coder-agent-auth-linux-arm64"
qemu-aarch64 "$ARM" --version
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64
cargo test --target aarch64-unknown-linux-musl -p coder-agent-auth --lib
# The integration suites spawn the binary themselves, with a cleared environment: that needs
# the kernel to hand aarch64 executables to qemu (binfmt_misc). The binary is static, so qemu
# needs no aarch64 loader or libraries.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
fi
update-binfmts --enable qemu-aarch64 2>/dev/null || true
if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && env -i "$ARM" --version >/dev/null 2>&1; then
    echo "binfmt_misc: aarch64 executables run through qemu; the integration suite against $ARM"
    CODER_AGENT_AUTH_TEST_BIN="$ARM" cargo test -p coder-agent-auth "${SUITES[@]}"
elif [ "${CI:-}" = true ]; then
    fail "binfmt_misc cannot run aarch64 executables through qemu here (needed in CI)"
else
    echo "binfmt_misc: not available here; the integration suite against $ARM is skipped"
fi

# ---------------------------------------------------------------------------------------------
step "done"
steps_summary
echo "packaging: all steps passed"
