#!/usr/bin/env bash
# Builds the example image: Debian's busybox-static in an OCI layout, with umoci (no Docker).
# Usage: build-busybox-image.sh LAYOUT_DIR   (the image is tagged "latest")
set -euo pipefail
layout=${1:?usage: $0 LAYOUT_DIR}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rm -rf "$layout"
mkdir -p "$(dirname "$layout")"
umoci init --layout "$layout"
umoci new --image "$layout:latest"
umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
# The mount points every distribution image carries, so that a container's mounts need
# no directories made in its writable layer.
for dir in bin dev proc sys tmp; do mkdir -p "$work/bundle/rootfs/$dir"; done
chmod 1777 "$work/bundle/rootfs/tmp"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$work/bundle/rootfs/bin/$applet"
done
umoci repack --image "$layout:latest" "$work/bundle"
umoci config --image "$layout:latest" --tag latest \
  --config.cmd /bin/sh \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umoci gc --layout "$layout"
echo "built $layout:latest"
