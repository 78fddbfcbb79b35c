#!/bin/bash
# initramfs.sh IMAGE_DIR - make (once per version of the boot stages) the initramfs that boots
# IMAGE_DIR: static busybox, the virtio/9p/overlay modules of its kernel, stage 1 and stage 2.
# Prints the path of the initrd. Takes ~1 s, so changing the boot stages never rebuilds the image.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$1
. "$DIR/config"   # KVER
ROOT=$DIR/rootfs
H=$(cat "$HERE/init" "$HERE/stage2.sh" "$HERE/initramfs.sh" | sha256sum | cut -c1-12)
OUT=$DIR/initrd-$H.img
[ -f "$OUT" ] && { echo "$OUT"; exit 0; }
IR=$(mktemp -d "$DIR/.initramfs.XXXXXX")
trap 'rm -rf "$IR"' EXIT
mkdir -p "$IR"/{bin,proc,sys,dev,mods,lower,upper,newroot}
cp "$ROOT/bin/busybox" "$IR/bin/busybox"
for a in $("$IR/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$IR/bin/$a"; done
: > "$IR/modules.order"
for m in virtio_pci 9pnet_virtio 9p overlay; do
  modprobe -d "$ROOT" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}' | while read -r ko; do
    b=$(basename "$ko"); b=${b%%.ko*}
    grep -qx "$b" "$IR/modules.order" && continue
    case "$ko" in
      *.xz) xz -dc "$ko" > "$IR/mods/$b.ko";;
      *.zst) zstd -qdc "$ko" > "$IR/mods/$b.ko";;
      *) cp "$ko" "$IR/mods/$b.ko";;
    esac
    echo "$b" >> "$IR/modules.order"
  done
done
cp "$HERE/init" "$IR/init"; chmod 755 "$IR/init"
cp "$HERE/stage2.sh" "$IR/stage2.sh"
(cd "$IR" && find . | cpio -o -H newc --quiet | gzip -1 > "$OUT.tmp")
mv "$OUT.tmp" "$OUT"
echo "$OUT"
