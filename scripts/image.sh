#!/usr/bin/env bash
# make image: build the Dockerfile with buildah (no Docker engine needed) against local base
# images, then prove the image: every binary in it answers --version.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${IMAGE_TAG:-localhost/nodewire:dev}
bash scripts/base-images.sh >/dev/null
# The build stage fetches crates over HTTPS: lend it this machine's CA bundle, which may hold an
# intercepting proxy's root (the image itself does not keep it).
ca=()
[[ -f /etc/ssl/certs/ca-certificates.crt ]] &&
  ca=(-v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --build-arg CARGO_HTTP_CAINFO=/run/host-ca.crt)
buildah bud --quiet --layers --force-rm "${ca[@]}" -f Dockerfile -t "$TAG" . >/dev/null
ctr=$(buildah from --quiet "$TAG")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
for bin in ipamd vpc-cni ebs-csi; do
  out=$(buildah run "$ctr" -- "$bin" --version)
  echo "$bin in $TAG: $out"
  [[ $out == *"$bin"* ]] || { echo "$bin --version said: $out" >&2; exit 1; }
done
for tool in nft mkfs.ext4 mkfs.xfs resize2fs xfs_growfs blkid mount; do
  buildah run "$ctr" -- sh -c "command -v $tool" >/dev/null || { echo "$tool missing from $TAG" >&2; exit 1; }
done
buildah images "$TAG"
