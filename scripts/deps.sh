#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks for building and testing nodewire.
set -euo pipefail
pkgs=(protobuf-compiler iproute2 util-linux e2fsprogs xfsprogs python3-venv jq curl procps gcc libc6-dev make nftables iputils-ping buildah debootstrap)
missing=()
for p in "${pkgs[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == *" ok installed" ]] || missing+=("$p")
done
# kubectl (for `kubectl kustomize` in make manifests): Debian's kubernetes-client unless some
# kubectl is already there (another package may own /usr/bin/kubectl).
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages ${missing[*]}; run as root (apt-get install)" >&2
    exit 1
  fi
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "nodewire's tests and demo need root (network namespaces, loop devices)" >&2
  exit 1
fi
# The Rust toolchain comes with the machine (rustup, 1.95+); only crates.io is reachable, so it
# cannot be fetched here. Say clearly what is missing.
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain 1.95+ (rustup) first" >&2; exit 1; }
cargo fmt --version >/dev/null 2>&1 || { echo "rustfmt missing: rustup component add rustfmt" >&2; exit 1; }
cargo clippy --version >/dev/null 2>&1 || { echo "clippy missing: rustup component add clippy" >&2; exit 1; }
