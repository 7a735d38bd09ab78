#!/usr/bin/env bash
# Third-party test peers for the CNI plugin (see the test-peers reference, sections b-e):
#   - Debian packages: containerd 1.6, runc, the reference CNI plugins in /usr/lib/cni, busybox-static, ping, Go
#   - DIR/bin/cnitool   built offline from Debian's golang-github-appc-cni source package
#   - DIR/pause.tar     OCI image "localhost/test-pause:latest" (busybox rootfs, CMD sleep), no registry needed
#   - DIR/venv          Python venv with the CRI v1 stubs (container-runtime-interface-api) for scripts/cri.py
# Usage: scripts/peers.sh [DIR]   (default: <repo>/.peers). Root, Debian 12. Idempotent; a no-op when all is there.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-$REPO/.peers}
mkdir -p "$DIR/bin" && DIR=$(cd "$DIR" && pwd)
export DEBIAN_FRONTEND=noninteractive
log() { echo "peers: $*" >&2; }
[[ $(id -u) -eq 0 ]] || { log "needs root (apt-get, containerd)"; exit 1; }

# 1. Debian packages (apt-get update only when something is missing).
pkgs=(containerd runc containernetworking-plugins busybox-static iputils-ping golang-go golang-github-appc-cni-dev
      python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == *" ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Python venv with the CRI stubs.
CRI_API=container-runtime-interface-api==2.0.1
if ! "$DIR/venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version(sys.argv[1]) != sys.argv[2])' \
    "${CRI_API%%==*}" "${CRI_API##*==}" 2>/dev/null; then
  log "creating $DIR/venv with $CRI_API"
  python3 -m venv "$DIR/venv"
  "$DIR/venv/bin/pip" install -q --disable-pip-version-check "$CRI_API"
fi

# 3. cnitool from the source package (its cnitool/ dir is excluded from the -dev binary package).
if [[ ! -x $DIR/bin/cnitool ]]; then
  log "building $DIR/bin/cnitool"
  srclist=/etc/apt/sources.list.d/nodewire-debsrc-tmp.sources
  work=$(mktemp -d)
  cleanup_src() { rm -rf "$work"; if [[ -f $srclist ]]; then rm -f "$srclist"; apt-get update -qq || true; fi; }
  trap cleanup_src EXIT
  printf '%s\n' 'Types: deb-src' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm' 'Components: main' \
    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' >"$srclist"
  apt-get update -qq
  (cd "$work" && apt-get source -qq --download-only golang-github-appc-cni >/dev/null 2>&1)
  tar -C "$work" -xf "$work"/golang-github-appc-cni_*.orig.tar.*
  cp "$work"/golang-github-appc-cni-*/cnitool/cnitool.go "$work/cnitool.go"
  (cd "$work" && GOCACHE="$DIR/gocache" GO111MODULE=off GOPATH=/usr/share/gocode go build -o "$DIR/bin/cnitool.tmp" cnitool.go)
  mv "$DIR/bin/cnitool.tmp" "$DIR/bin/cnitool"
  cleanup_src
  trap - EXIT
fi

# 4. Pause image: busybox rootfs packed as an OCI archive, then checked by importing it into a private containerd.
if [[ ! -s $DIR/pause.tar ]]; then
  log "building $DIR/pause.tar"
  work=$(mktemp -d)
  trap 'bash "$REPO/scripts/containerd.sh" stop "$work/ctrd" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
  mkdir -p "$work"/rootfs/{bin,dev,etc,proc,sys,tmp}
  cp /bin/busybox "$work/rootfs/bin/busybox"
  for a in $("$work/rootfs/bin/busybox" --list); do [[ $a == busybox ]] || ln -s busybox "$work/rootfs/bin/$a"; done
  python3 "$REPO/scripts/mkimage.py" --rootfs "$work/rootfs" --name localhost/test-pause:latest \
    --out "$DIR/pause.tar.tmp" -- /bin/sleep 2147483647 >/dev/null
  PAUSE_TAR="$DIR/pause.tar.tmp" PEERS="$DIR" bash "$REPO/scripts/containerd.sh" start "$work/ctrd" >/dev/null
  # Capture first: `ctr ... | grep -q` dies of SIGPIPE (exit 141 under pipefail) when grep stops reading early.
  images=$(ctr -a "$work/ctrd/containerd.sock" -n k8s.io images ls -q)
  grep -qx localhost/test-pause:latest <<<"$images" || { log "pause image missing after import: $images"; exit 1; }
  bash "$REPO/scripts/containerd.sh" stop "$work/ctrd" >/dev/null
  mv "$DIR/pause.tar.tmp" "$DIR/pause.tar"
  rm -rf "$work"
  trap - EXIT
fi
log "ready in $DIR: bin/cnitool, pause.tar, venv ($(containerd --version | awk '{print $3}'), plugins in /usr/lib/cni)"
