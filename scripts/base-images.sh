#!/usr/bin/env bash
# Base images for `make image` where no registry is reachable: Debian 12 from Debian's own
# packages (debootstrap), imported under the Dockerfile's default names, and a Rust build image
# made of it plus this machine's Rust toolchain. Each is built once and then reused.
#   debian:  docker.io/library/debian:bookworm-slim
#   rust:    docker.io/library/rust:1.95-bookworm
set -euo pipefail
DEBIAN_IMAGE=${DEBIAN_IMAGE:-docker.io/library/debian:bookworm-slim}
RUST_IMAGE=${RUST_IMAGE:-docker.io/library/rust:1.95-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

have() { [[ -n $(buildah images -q "$1" 2>/dev/null) ]]; }

if ! have "$DEBIAN_IMAGE"; then
  echo "building $DEBIAN_IMAGE with debootstrap from $MIRROR"
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  trap 'buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  debootstrap --variant=minbase bookworm "$mnt" "$MIRROR" >/dev/null
  rm -rf "$mnt"/var/cache/apt/archives/*.deb "$mnt"/var/lib/apt/lists/*
  buildah umount "$ctr" >/dev/null
  buildah config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  buildah commit --quiet "$ctr" "$DEBIAN_IMAGE" >/dev/null
  buildah rm "$ctr" >/dev/null
  trap - EXIT
fi

if ! have "$RUST_IMAGE"; then
  sysroot=$(rustc --print sysroot)
  echo "building $RUST_IMAGE from $DEBIAN_IMAGE and the toolchain in $sysroot"
  ctr=$(buildah from "$DEBIAN_IMAGE")
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  buildah run "$ctr" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates protobuf-compiler libprotobuf-dev >/dev/null && rm -rf /var/lib/apt/lists/*'
  buildah copy --quiet "$ctr" "$sysroot" /usr/local/rust >/dev/null
  buildah config --env PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env CARGO_HOME=/usr/local/cargo "$ctr"
  buildah commit --quiet "$ctr" "$RUST_IMAGE" >/dev/null
  buildah rm "$ctr" >/dev/null
  trap - EXIT
fi
buildah images "$DEBIAN_IMAGE" "$RUST_IMAGE" 2>/dev/null || buildah images
