#!/usr/bin/env bash
# Builds the boot test's guest image: a minimal Debian 12 root filesystem with systemd as PID 1,
# cloud-init (NoCloud), systemd-networkd (DHCP) and curl, as a raw ext4 disk, plus its kernel and
# initrd. Usage: tests/boot/image.sh OUTDIR   (as root; needs mmdebstrap and mkfs.ext4)
#
# OUTDIR/{disk.raw,vmlinuz,initrd.img,KEY}. KEY hashes this script and the files baked in;
# when OUTDIR/KEY matches, the image is reused (BOOT_REBUILD_IMAGE=1 rebuilds it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: image.sh OUTDIR}
MIRROR=${BOOT_MIRROR:-http://deb.debian.org/debian}
PACKAGES=systemd-sysv,udev,dbus,linux-image-cloud-amd64,cloud-init,iproute2,ca-certificates,netbase,curl,locales,sudo

key=$( (cat "$HERE/image.sh" "$HERE"/guest/*; echo "$MIRROR") | sha256sum | cut -c1-16)
if [ -z "${BOOT_REBUILD_IMAGE:-}" ] && [ "$(cat "$OUT/KEY" 2>/dev/null)" = "$key" ] &&
    [ -s "$OUT/disk.raw" ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ]; then
    echo "image: reusing $OUT (key $key)"
    exit 0
fi
mkdir -p "$OUT"
rm -f "$OUT/KEY"
ROOT=$(mktemp -d /tmp/coder-agent-auth-boot-root.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT

# The guest's configuration, applied inside the new root ($1) by mmdebstrap.
customize=$(cat <<'HOOK'
set -e
r=$1
# cloud-init's locale module fails without a generated locale.
echo 'en_US.UTF-8 UTF-8' >"$r/etc/locale.gen"
chroot "$r" locale-gen >/dev/null
# The network: DHCP on the one NIC, by systemd-networkd (network-online.target through
# systemd-networkd-wait-online); cloud-init leaves the network alone.
mkdir -p "$r/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' >"$r/etc/systemd/network/20-dhcp.network"
chroot "$r" systemctl enable systemd-networkd.service >/dev/null 2>&1
# cloud-init: the NoCloud seed disk only (the user data under test comes from it).
printf 'datasource_list: [ NoCloud, None ]\nnetwork: {config: disabled}\n' \
    >"$r/etc/cloud/cloud.cfg.d/90-boottest.cfg"
echo '/dev/vda / ext4 defaults 0 1' >"$r/etc/fstab"
echo boottest >"$r/etc/hostname"
# As on cloud images: a default locale, so cloud-init does not generate one at first boot.
echo LANG=en_US.UTF-8 >"$r/etc/default/locale"
# Less work for an emulated CPU at every boot: an initramfs with only what mounts the root
# (virtio disk, ext4), and none of the periodic maintenance jobs.
printf 'virtio_pci\nvirtio_blk\next4\n' >>"$r/etc/initramfs-tools/modules"
sed -i 's/^MODULES=.*/MODULES=list/' "$r/etc/initramfs-tools/initramfs.conf"
chroot "$r" update-initramfs -u -k all >/dev/null 2>&1
chroot "$r" systemctl mask e2scrub_reap.service e2scrub_all.timer apt-daily.timer \
    apt-daily-upgrade.timer fstrim.timer >/dev/null 2>&1
# The test's control channel (see guest/boottest-agent.py).
install -m 0755 "$BOOT_GUEST/boottest-agent.py" "$r/usr/local/sbin/boottest-agent"
install -m 0644 "$BOOT_GUEST/boottest-agent.service" "$r/etc/systemd/system/"
chroot "$r" systemctl enable boottest-agent.service >/dev/null 2>&1
HOOK
)

t0=$SECONDS
BOOT_GUEST="$HERE/guest" mmdebstrap --quiet --variant=minbase --dpkgopt=force-unsafe-io --include="$PACKAGES" \
    --customize-hook="$customize" bookworm "$ROOT" "$MIRROR"
echo "image: mmdebstrap $((SECONDS - t0)) s, root $(du -sh "$ROOT" | cut -f1)"
cp "$ROOT"/boot/vmlinuz-* "$OUT/vmlinuz"
cp "$ROOT"/boot/initrd.img-* "$OUT/initrd.img"
t0=$SECONDS
rm -f "$OUT/disk.raw"
mkfs.ext4 -q -F -L root -d "$ROOT" "$OUT/disk.raw" 2G
echo "image: mkfs.ext4 -d $((SECONDS - t0)) s"
echo "$key" >"$OUT/KEY"
