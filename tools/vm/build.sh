#!/usr/bin/env bash
# Build the test VM from Debian's packages: a stock kernel (never installed on the host) and a
# busybox initramfs carrying the virtio-net modules and the console command loop (tools/vm/init).
#
# Why not the host's /boot: the host kernel has no loadable modules and no vmlinuz here, and a
# stock distribution kernel with the stock virtio_net driver is the point of the exercise.
#
# Usage: tools/vm/build.sh [OUTDIR]   (default: build/vm under the repository; env VXDP_VM_DIR)
# Prints the kernel and initrd paths, one per line. Idempotent: the kernel package is
# downloaded once (cached in OUTDIR/debs), the initramfs is rebuilt only when its inputs change.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-${VXDP_VM_DIR:-$repo/build/vm}}"
mkdir -p "$out/debs" "$out/kernel"
out="$(cd "$out" && pwd)"

# One build at a time (tests may call us from several processes).
exec 9>"$out/.lock"
flock 9

# Modules virtio_net needs, in load order; whatever the kernel has built in is skipped.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net)

for tool in apt-get dpkg-deb cpio gzip; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (make apt installs it)" >&2; exit 1; }
done
busybox=/bin/busybox  # busybox-static's: the initramfs has no libc
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    echo "build.sh: Debian package busybox-static is missing (make apt installs it)" >&2
    exit 1
fi

# 1. The kernel package: linux-image-amd64 names the versioned image package it depends on.
kdeb="$(ls "$out"/debs/linux-image-[0-9]*.deb 2>/dev/null | head -n1 || true)"
if [ -z "$kdeb" ]; then
    (
        cd "$out/debs"
        # apt-get download as root warns that _apt cannot write here; let it.
        chown _apt "$out/debs" 2>/dev/null || true
        apt-get download -q linux-image-amd64 >&2
        meta="$(ls linux-image-amd64_*.deb | head -n1)"
        pkg="$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1)"
        [ -n "$pkg" ] || { echo "build.sh: cannot find the image package $meta depends on" >&2; exit 1; }
        apt-get download -q "$pkg" >&2
    )
    kdeb="$(ls "$out"/debs/linux-image-[0-9]*.deb | head -n1)"
fi

# 2. Unpack only what we need: the kernel, modules.builtin and the virtio modules.
if [ ! -f "$out/kernel/.unpacked" ]; then
    rm -rf "$out/kernel" && mkdir -p "$out/kernel"
    dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$out/kernel" --wildcards \
        './boot/vmlinuz-*' './lib/modules/*/modules.builtin' \
        './lib/modules/*/kernel/drivers/virtio/*' './lib/modules/*/kernel/drivers/net/*failover*' \
        './lib/modules/*/kernel/drivers/net/virtio_net*' './lib/modules/*/kernel/net/core/failover*'
    touch "$out/kernel/.unpacked"
fi
vmlinuz="$(ls "$out"/kernel/boot/vmlinuz-* | head -n1)"
kver="${vmlinuz##*/vmlinuz-}"
moddir="$out/kernel/lib/modules/$kver"
ln -sfn "kernel/boot/vmlinuz-$kver" "$out/vmlinuz"

# 3. The initramfs, when missing or older than its inputs.
initrd="$out/initrd.gz"
if [ ! -f "$initrd" ] || [ "$here/init" -nt "$initrd" ] || [ "$here/build.sh" -nt "$initrd" ] \
        || [ "$kdeb" -nt "$initrd" ]; then
    stage="$(mktemp -d "$out/stage.XXXXXX")"
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules,root}
    cp "$busybox" "$stage/bin/busybox"
    ln -s busybox "$stage/bin/sh"
    install -m 0755 "$here/init" "$stage/init"
    : > "$stage/lib/modules/order"
    for m in "${MODULES[@]}"; do
        f="$(find "$moddir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) | head -n1)"
        if [ -z "$f" ]; then
            if grep -q "/$m.ko\$" "$moddir/modules.builtin"; then
                continue  # built into this kernel
            fi
            echo "build.sh: module $m is neither in $kver's package nor built in" >&2
            exit 1
        fi
        case "$f" in
            *.ko.xz) xz -dc "$f" > "$stage/lib/modules/$m.ko" ;;
            *.ko.zst) zstd -qdc "$f" > "$stage/lib/modules/$m.ko" ;;
            *) cp "$f" "$stage/lib/modules/$m.ko" ;;
        esac
        echo "$m" >> "$stage/lib/modules/order"
    done
    # The kernel opens /dev/console for init before devtmpfs is mounted.
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
    (cd "$stage" && find . -print0 | sort -z | cpio --null -o -H newc --quiet --owner=0:0) \
        | gzip -9n > "$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
fi

echo "$out/vmlinuz"
echo "$initrd"
