#!/usr/bin/env bash
# Builds every release artifact of coder-agent-auth into target/release-artifacts/ (or --out DIR):
#
#   coder-agent-auth_VERSION-1_amd64.deb        Debian, Ubuntu (x86_64)
#   coder-agent-auth_VERSION-1_arm64.deb        Debian, Ubuntu (aarch64)
#   coder-agent-auth-VERSION-1.x86_64.rpm       RHEL, Rocky, Alma, Fedora, Amazon Linux (x86_64)
#   coder-agent-auth-VERSION-1.aarch64.rpm      the same (aarch64)
#   coder-agent-auth-VERSION-linux-amd64.tar.gz binary, units, man pages, completions,
#   coder-agent-auth-VERSION-linux-arm64.tar.gz   README and examples
#   coder-agent-auth-linux-amd64                the bare binary (what the Terraform
#   coder-agent-auth-linux-arm64                  examples download)
#   SHA256SUMS                                  `sha256sum -c SHA256SUMS` checks them all
#
# Every package and tarball of an architecture holds the same static binary (musl libc linked
# in): it needs no libc on the target, so it runs on any x86_64 or aarch64 Linux, old or new.
#
# Usage: packaging/release.sh [--install-prereqs] [--prereqs-only] [--arch all|amd64|arm64]
#                             [--out DIR]
#   --install-prereqs  install what is missing (apt-get, rustup, cargo install; needs root
#                      or sudo for apt-get). Without it, the script lists what is missing
#                      with the commands that install it, and stops.
#   --prereqs-only     check (or with --install-prereqs, install) the prerequisites; build nothing.
#   --arch             build one architecture only (default: all).
#   --out DIR          write the artifacts into DIR (default: target/release-artifacts/),
#                      created if missing. It must hold nothing but an earlier run's artifacts
#                      (coder-agent-auth*, SHA256SUMS), which are removed first, so that it
#                      holds only this run's; anything else in it stops the script before
#                      the build. Another DIR leaves target/release-artifacts/ alone.
#
# Build host: Debian 12 or Ubuntu 22.04+ (x86_64) with rustup. Takes a few minutes from
# clean (two release builds with fat LTO).
set -euo pipefail

CARGO_DEB_VERSION=3.8.0
APT_PACKAGES=(gcc musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross rpm binutils)

install_prereqs=0
prereqs_only=0
arches=(amd64 arm64)
out_arg=""
while [ $# -gt 0 ]; do
    case $1 in
        --install-prereqs) install_prereqs=1 ;;
        --prereqs-only) prereqs_only=1 ;;
        --arch)
            [ $# -ge 2 ] || { echo "release: --arch needs a value: all, amd64 or arm64" >&2; exit 2; }
            case $2 in
                all) arches=(amd64 arm64) ;;
                amd64 | arm64) arches=("$2") ;;
                *) echo "release: --arch $2: want all, amd64 or arm64" >&2; exit 2 ;;
            esac
            shift ;;
        --out)
            [ $# -ge 2 ] && [ -n "$2" ] || { echo "release: --out needs a directory" >&2; exit 2; }
            # As given from the caller's directory (the script changes to the repository's).
            out_arg=$(realpath -m -- "$2")
            shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "release: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

fail() { echo "release: FAILED: $*" >&2; exit 1; }
STEP_PREFIX="release: "
. packaging/steps.sh

triple_of() { case $1 in amd64) echo x86_64-unknown-linux-musl ;; arm64) echo aarch64-unknown-linux-musl ;; esac; }
rpm_arch_of() { case $1 in amd64) echo x86_64 ;; arm64) echo aarch64 ;; esac; }
# What `readelf -h` calls each machine.
elf_machine_of() { case $1 in amd64) echo 'Advanced Micro Devices X86-64' ;; arm64) echo AArch64 ;; esac; }

# ---------------------------------------------------------------------------------------------
step "prerequisites"
[ "$(uname -m)" = x86_64 ] || fail "the build host must be x86_64 (this is $(uname -m))"
command -v cargo >/dev/null && command -v rustup >/dev/null ||
    fail "cargo and rustup are needed: install Rust with rustup (https://rustup.rs), then run this again"

missing_apt=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing_apt+=("$p")
done
missing_targets=()
installed_targets=$(rustup target list --installed)
for a in "${arches[@]}"; do
    t=$(triple_of "$a")
    grep -qxF "$t" <<<"$installed_targets" || missing_targets+=("$t")
done
have_deb=$(cargo deb --version 2>/dev/null || true)
missing_deb=0
[ "$have_deb" = "cargo-deb $CARGO_DEB_VERSION" ] || missing_deb=1

if [ ${#missing_apt[@]} -gt 0 ] || [ ${#missing_targets[@]} -gt 0 ] || [ $missing_deb = 1 ]; then
    if [ $install_prereqs = 0 ]; then
        {
            echo "release: missing prerequisites. Install them with:"
            [ ${#missing_apt[@]} -eq 0 ] ||
                echo "  sudo apt-get update && sudo apt-get install -y ${missing_apt[*]}"
            [ ${#missing_targets[@]} -eq 0 ] || echo "  rustup target add ${missing_targets[*]}"
            [ $missing_deb = 0 ] || echo "  cargo install cargo-deb --version $CARGO_DEB_VERSION --locked" \
                "   (found: ${have_deb:-none})"
            echo "or run: packaging/release.sh --install-prereqs"
        } >&2
        exit 1
    fi
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    if [ ${#missing_apt[@]} -gt 0 ]; then
        echo "installing with apt-get: ${missing_apt[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            "${missing_apt[@]}" >/dev/null
    fi
    [ ${#missing_targets[@]} -eq 0 ] || rustup target add "${missing_targets[@]}"
    if [ $missing_deb = 1 ]; then
        echo "installing cargo-deb $CARGO_DEB_VERSION (found: ${have_deb:-none}); about 2 minutes"
        cargo install -q cargo-deb --version "$CARGO_DEB_VERSION" --locked
    fi
fi
echo "$(cargo --version); $(cargo deb --version); $(rpmbuild --version)"
echo "C compilers: $(musl-gcc -dumpversion 2>/dev/null | sed 's/^/musl-gcc (gcc) /')" \
    "$(aarch64-linux-gnu-gcc -dumpversion 2>/dev/null | sed 's/^/aarch64-linux-gnu-gcc /')"
[ $prereqs_only = 0 ] || { echo "release: prerequisites present"; exit 0; }

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$TARGET_DIR" ] || fail "cargo metadata did not name the target directory"
VERSION=$(cargo pkgid -p coder-agent-auth | sed 's/.*[#@]//')
[ -n "$VERSION" ] || fail "cargo pkgid did not give coder-agent-auth's version"
# RPM versions cannot hold '-'; a pre-release 1.0.0-rc.1 becomes 1.0.0~rc.1 (sorts before 1.0.0).
RPM_VERSION=${VERSION//-/\~}
OUT=${out_arg:-$TARGET_DIR/release-artifacts}
# Reproducible timestamps: the last commit's time, for cargo-deb, tar and rpmbuild. Exported
# only after the cargo builds: the cc crate (ring's C) rebuilds when it changes.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
WORK=$(mktemp -d /tmp/coder-agent-auth-release.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# Only an earlier run's artifacts are removed; a directory that holds anything else is not
# this script's to empty.
if [ -d "$OUT" ]; then
    others=$(find "$OUT" -mindepth 1 -maxdepth 1 ! -name 'coder-agent-auth*' ! -name SHA256SUMS \
        -printf '%f ')
    [ -z "$others" ] || fail "--out $OUT holds files that are not release artifacts ($others); give a new or empty directory"
    find "$OUT" -mindepth 1 -maxdepth 1 \( -name 'coder-agent-auth*' -o -name SHA256SUMS \) \
        -exec rm -rf -- {} +
elif [ -e "$OUT" ]; then
    fail "--out $OUT is not a directory"
fi
mkdir -p "$OUT"
echo "version $VERSION; architectures: ${arches[*]}; output: $OUT"

# ---------------------------------------------------------------------------------------------
step "man pages and completions (xtask) into target/dist"
rm -rf target/dist
cargo run -q -p xtask -- dist target/dist >/dev/null
# The .deb's /usr/share/doc/coder-agent-auth/changelog.Debian.gz (cargo-deb's `changelog`):
# one entry for this version (with ~ for -, as cargo-deb and RPM_VERSION), dated by
# SOURCE_DATE_EPOCH.
cat >target/dist/changelog <<CHANGELOG
coder-agent-auth (${RPM_VERSION}-1) unstable; urgency=medium

  * Release $VERSION, built with packaging/release.sh.

 -- coder-agent-auth developers <coder-agent-auth@example.com>  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")
CHANGELOG

# ---------------------------------------------------------------------------------------------
triples=()
for a in "${arches[@]}"; do triples+=(--target "$(triple_of "$a")"); done
step "static release build: ${triples[*]}"
# ring compiles C: musl-gcc for x86_64; for aarch64, Debian's cross gcc compiles it and links
# the binary (Rust brings musl's libc and start files for the target itself).
CC_x86_64_unknown_linux_musl=musl-gcc \
    CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \
    AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
    cargo build --release -p coder-agent-auth "${triples[@]}"

for a in "${arches[@]}"; do
    bin="$TARGET_DIR/$(triple_of "$a")/release/coder-agent-auth"
    hdr=$(readelf -h "$bin") || fail "$bin: not an ELF file"
    grep -q "Machine: *$(elf_machine_of "$a")\$" <<<"$hdr" ||
        fail "$bin: built for $(sed -n 's/ *Machine: *//p' <<<"$hdr"), want $(elf_machine_of "$a")"
    ! readelf -l "$bin" | grep -q 'INTERP' ||
        fail "$bin asks for a dynamic loader: it must be static (check the target's linker flags)"
    echo "$bin: $(elf_machine_of "$a"), static, $(stat -c %s "$bin") bytes"
done
if [[ " ${arches[*]} " == *" amd64 "* ]]; then
    got=$("$TARGET_DIR/x86_64-unknown-linux-musl/release/coder-agent-auth" --version)
    [ "$got" = "coder-agent-auth $VERSION" ] || fail "--version printed '$got', want 'coder-agent-auth $VERSION'"
fi

export SOURCE_DATE_EPOCH

# ---------------------------------------------------------------------------------------------
# "perm path" lines of a package's contents, with the .deb's paths mapped to the RPM's.
deb_listing() {
    dpkg-deb -c "$1" | awk '{print $1, $6}' | sed -e 's#^\([^ ]*\) \./#\1 /#' -e 's#/$##' \
        -e 's# /lib/systemd/system# /usr/lib/systemd/system#' \
        -e 's# /usr/share/zsh/vendor-completions# /usr/share/zsh/site-functions#' |
        grep -v ' /lib$\| /lib/systemd$\| /usr/share/lintian' | sort
}
rpm_listing() { rpm -qlvp "$1" | awk '{print $1, $9}' | sort; }

for a in "${arches[@]}"; do
    triple=$(triple_of "$a")
    rarch=$(rpm_arch_of "$a")
    step "$a: .deb, .rpm, tarball"

    # .deb (cargo-deb reads target/<triple>/release/ for the target/release/ assets).
    cargo deb -p coder-agent-auth --no-build --no-strip --target "$triple" --output "$OUT/" \
        >"$WORK/cargo-deb-$a.log" 2>&1 || { cat "$WORK/cargo-deb-$a.log" >&2; fail "cargo deb ($a)"; }
    deb="$OUT/coder-agent-auth_${VERSION}-1_$a.deb"
    [ -f "$deb" ] || fail "cargo deb did not write $deb: $(ls "$OUT")"
    # What cargo-deb 3.8 leaves out or gets wrong, mended with dpkg-deb: md5sums (every file
    # the package installs, so that `dpkg --verify` and debsums check something), and an
    # empty "Depends:" (the static binary depends on nothing: the field goes).
    unpacked="$WORK/deb-unpacked-$a"
    dpkg-deb -R "$deb" "$unpacked"
    sed -i '/^Depends: *$/d' "$unpacked/DEBIAN/control"
    (cd "$unpacked" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
        xargs -0 md5sum --) >"$unpacked/DEBIAN/md5sums"
    chmod 0644 "$unpacked/DEBIAN/md5sums"
    dpkg-deb --root-owner-group -Zxz --build "$unpacked" "$deb" >/dev/null
    [ -z "$(dpkg-deb -f "$deb" Depends)" ] || fail "$deb still depends on $(dpkg-deb -f "$deb" Depends)"
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$a" ] || fail "$deb: Architecture is not $a"

    # .rpm, from the .deb's own files.
    root="$WORK/debroot-$a"
    dpkg-deb -x "$deb" "$root"
    rpmbuild -bb --target "$rarch-linux" \
        --define "_topdir $WORK/rpmbuild-$a" \
        --define "_rpmdir $OUT" \
        --define '_rpmfilename %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm' \
        --define "pkg_version $RPM_VERSION" \
        --define "debroot $root" \
        --define "changelog_date $(LC_ALL=C date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %d %Y')" \
        --define "use_source_date_epoch_as_buildtime 1" \
        --define "clamp_mtime_to_source_date_epoch 1" \
        --define "_buildhost reproducible" \
        packaging/rpm/coder-agent-auth.spec >"$WORK/rpmbuild-$a.log" 2>&1 ||
        { tail -30 "$WORK/rpmbuild-$a.log" >&2
          fail "rpmbuild ($a). A file new in the .deb must be added to %files in packaging/rpm/coder-agent-auth.spec"; }
    rpmf="$OUT/coder-agent-auth-${RPM_VERSION}-1.$rarch.rpm"
    [ -f "$rpmf" ] || fail "rpmbuild did not write $rpmf"
    [ "$(rpm -qp --qf '%{ARCH}' "$rpmf")" = "$rarch" ] || fail "$rpmf: arch is not $rarch"

    # Same files, same modes. The RPM need not own shared directories (/usr/share/man...),
    # but must own the package's own (any path naming coder-agent-auth).
    deb_listing "$deb" >"$WORK/deb-$a.txt"
    rpm_listing "$rpmf" >"$WORK/rpm-$a.txt"
    only_rpm=$(comm -13 "$WORK/deb-$a.txt" "$WORK/rpm-$a.txt")
    only_deb=$(comm -23 "$WORK/deb-$a.txt" "$WORK/rpm-$a.txt" |
        awk '!($1 ~ /^d/ && $2 !~ /coder-agent-auth/)')
    [ -z "$only_rpm$only_deb" ] ||
        fail "the .deb and the .rpm differ (mode path; .deb paths mapped to the RPM's):
only in the .deb:
$only_deb
only in the .rpm:
$only_rpm
fix packaging/rpm/coder-agent-auth.spec (%files, %install) or [package.metadata.deb] in Cargo.toml"

    # Tarball and bare binary.
    name="coder-agent-auth-$VERSION-linux-$a"
    st="$WORK/tar/$name"
    mkdir -p "$st/man" "$st/completions" "$st/systemd" "$st/examples"
    install -m 0755 "$TARGET_DIR/$triple/release/coder-agent-auth" "$st/coder-agent-auth"
    # The operator's guide as README.md, and the docs it links to beside it (as in the packages).
    install -m 0644 docs/operator.md "$st/README.md"
    for f in docs/*.md; do [ "$f" = docs/operator.md ] || install -m 0644 "$f" "$st/"; done
    install -m 0644 target/dist/man/*.1 "$st/man/"
    install -m 0644 target/dist/completions/* "$st/completions/"
    install -m 0644 packaging/systemd/*.service "$st/systemd/"
    install -m 0644 packaging/systemd/agent.env.example "$st/examples/"
    cp -r packaging/cloud-init "$st/examples/cloud-init"
    mkdir -p "$st/examples/terraform"
    for d in packaging/terraform/*/; do cp -r "$d" "$st/examples/terraform/"; done
    chmod -R u=rwX,go=rX "$st"
    tar -C "$WORK/tar" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$SOURCE_DATE_EPOCH" -cf - "$name" | gzip -9n >"$OUT/$name.tar.gz"
    install -m 0755 "$TARGET_DIR/$triple/release/coder-agent-auth" "$OUT/coder-agent-auth-linux-$a"
done

# ---------------------------------------------------------------------------------------------
step "SHA256SUMS"
(cd "$OUT" && find . -maxdepth 1 -type f ! -name SHA256SUMS -printf '%f\n' | LC_ALL=C sort |
    xargs sha256sum -- >SHA256SUMS && sha256sum --quiet -c SHA256SUMS)

step "done"
printf '\nArtifacts in %s:\n' "$OUT"
(cd "$OUT" && LC_ALL=C ls -l --time-style=+ | awk 'NR > 1 {printf "%10d  %s\n", $5, $NF}')
steps_summary
for a in "${arches[@]}"; do echo "$a .deb: $OUT/coder-agent-auth_${VERSION}-1_$a.deb"; done
