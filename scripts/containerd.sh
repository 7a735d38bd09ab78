#!/usr/bin/env bash
# A private containerd 1.6 (CRI plugin) for CNI tests, kubelet-free; see the test-peers reference (e.1).
#   containerd.sh start DIR [CNI_BIN_DIR] [CNI_CONF_DIR]   defaults: /usr/lib/cni, DIR/net.d
#   containerd.sh stop DIR
# start writes DIR/config.toml (root, state, runc state and the socket DIR/containerd.sock all under DIR; keep DIR
# short, a socket path has at most 107 bytes), runs containerd in the background (log DIR/containerd.log, pid
# DIR/containerd.pid), waits until it answers, imports the pause image (PAUSE_TAR, default PEERS/pause.tar, PEERS
# default <repo>/.peers, built by scripts/peers.sh) and waits until the CRI service is up. CNI_BIN_DIR must also
# hold `loopback` (containerd runs it for every pod) and the IPAM / chained plugins the conflist names.
# To run the "node" in a network namespace:   ip netns exec NODE scripts/containerd.sh start DIR ...
# containerd then lives in the private mount namespace that `ip netns exec` creates (start re-mounts the cgroup
# hierarchies there, hidden by its fresh /sys): its mounts, including the pod netns bind mounts
# /var/run/netns/cni-*, are visible only inside; the host sees empty files. Enter a pod with `nsenter -t PID -n`
# (PID from `cri.py status`).
# stop removes every remaining pod sandbox through CRI (so the CNI plugin gets its DELs and containerd removes the
# pod netns), stops containerd, kills leftover shims and their containers, unmounts everything under DIR, removes
# the pod netns files and CNI result cache entries this instance left behind (pods that could not be removed, or a
# crashed containerd), and deletes DIR/root and DIR/state (config and logs stay). Safe to repeat.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${PEERS:-$REPO/.peers}
usage() { echo "usage: $0 start DIR [CNI_BIN_DIR] [CNI_CONF_DIR] | stop DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
cmd=$1 DIR=$2
[[ $cmd != start ]] || mkdir -p "$DIR"
[[ -d $DIR ]] || exit 0
DIR=$(cd "$DIR" && pwd)
SOCK=$DIR/containerd.sock PIDFILE=$DIR/containerd.pid
PY=$PEERS/venv/bin/python CRI=$REPO/scripts/cri.py

# pid of our containerd if it is still alive (not a zombie, not a reused pid)
alive_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == containerd ]] || return 1
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
  echo "$pid"
}
# shims serving this instance: their command line holds "-address <our socket>"
our_shims() {
  local p args
  for p in $(pgrep -x containerd-shim || true); do
    args=$'\n'$(tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null)$'\n'
    [[ $args == *$'\n'"$SOCK"$'\n'* ]] && echo "$p"
  done
  return 0
}
poll() { # SECONDS COMMAND... : retry every 0.1 s until the command succeeds
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do ((SECONDS < end)) || return 1; sleep 0.1; done
}

start() {
  local bin=${1:-/usr/lib/cni} conf=${2:-$DIR/net.d} pid
  local tar=${PAUSE_TAR:-$PEERS/pause.tar}
  [[ -s $tar ]] || { echo "no pause image at $tar: run scripts/peers.sh first" >&2; exit 1; }
  if pid=$(alive_pid); then echo "containerd already running in $DIR (pid $pid)" >&2; exit 1; fi
  mkdir -p "$DIR/podlogs" "$conf"
  cat >"$DIR/config.toml" <<EOF
version = 2
root = "$DIR/root"
state = "$DIR/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/test-pause:latest"
  restrict_oom_score_adj = true    # required without CAP_SYS_RESOURCE
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$bin"
    conf_dir = "$conf"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$DIR/state/runc"
EOF
  # `ip netns exec` mounts a fresh /sys in its private mount namespace, which hides the cgroup mounts that runc
  # needs ("no cgroup mount found in mountinfo"): mount the same hierarchies again (visible only in here).
  if ! grep -qE ' - cgroup2? ' /proc/self/mountinfo; then
    local id ctl rest hybrid
    grep -q '^[1-9]' /proc/self/cgroup && hybrid=1 && mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
    while IFS=: read -r id ctl rest; do
      if [[ -z $ctl && -n ${hybrid:-} ]]; then mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
      elif [[ -z $ctl ]]; then mount -t cgroup2 cgroup2 /sys/fs/cgroup
      else mkdir -p "/sys/fs/cgroup/${ctl#name=}" && mount -t cgroup -o "${ctl/#name=/none,name=}" cgroup "/sys/fs/cgroup/${ctl#name=}"
      fi
    done </proc/self/cgroup
  fi
  rm -f "$SOCK"
  setsid containerd --config "$DIR/config.toml" </dev/null >>"$DIR/containerd.log" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  if ! poll 30 ctr -a "$SOCK" --connect-timeout 1s version; then
    echo "containerd did not come up; tail of $DIR/containerd.log:" >&2
    tail -n 20 "$DIR/containerd.log" >&2
    kill -KILL "$pid" 2>/dev/null || true
    exit 1
  fi
  ctr -a "$SOCK" -n k8s.io images import "$tar" >/dev/null
  if [[ -x $PY ]] && ! poll 30 "$PY" "$CRI" --socket "$SOCK" runtime-status; then
    echo "CRI service not ready after 30 s; see $DIR/containerd.log" >&2
    exit 1
  fi
  echo "containerd pid $pid, socket $SOCK"
}

stop() {
  local pid p id
  if pid=$(alive_pid); then
    if [[ -x $PY ]]; then
      for id in $("$PY" "$CRI" --socket "$SOCK" list --quiet 2>/dev/null || true); do
        "$PY" "$CRI" --socket "$SOCK" --timeout 30 stop "$id" || true
        "$PY" "$CRI" --socket "$SOCK" --timeout 30 remove "$id" || true
      done
    fi
    kill -TERM "$pid" 2>/dev/null || true
    poll 15 eval '! alive_pid' || { kill -KILL "$pid" 2>/dev/null || true; poll 5 eval '! alive_pid' || true; }
  fi
  # A killed shim leaves its socket /run/containerd/s/sha256("<our socket>/<namespace>/<id>") behind.
  for p in $(our_shims); do
    id=$(tr '\0' '\n' <"/proc/$p/cmdline" | grep -A1 -x -- -id | tail -n 1)
    kill -KILL $(pgrep -P "$p" || true) "$p" 2>/dev/null || true
    rm -f "/run/containerd/s/$(printf '%s' "$SOCK/k8s.io/$id" | sha256sum | cut -c1-64)"
  done
  poll 5 test -z "$(our_shims)" || echo "warning: shims still running: $(our_shims)" >&2
  # Mounts left under DIR (only visible here if containerd ran in this mount namespace), deepest first.
  findmnt -rn -o TARGET | awk -v d="$DIR/" 'index($0, d) == 1' | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  # Pod netns of sandboxes that were never removed: their paths are recorded in this instance's metadata.
  if [[ -f $DIR/root/io.containerd.metadata.v1.bolt/meta.db ]]; then
    for p in $(grep -aoE '/var/run/netns/cni-[0-9a-f-]{36}' "$DIR/root/io.containerd.metadata.v1.bolt/meta.db" | sort -u); do
      [[ -e $p ]] || continue
      umount "$p" 2>/dev/null || true
      rm -f "$p"
    done
  fi
  # libcni's result cache (/var/lib/cni/results/<net>-<sandbox id>-<ifname>, shared by every CNI user) of those too.
  for p in "$DIR"/root/io.containerd.grpc.v1.cri/sandboxes/*; do
    if [[ -d $p ]]; then rm -f /var/lib/cni/results/*-"${p##*/}"-*; fi
  done
  rm -rf "$DIR/root" "$DIR/state"
  rm -f "$PIDFILE" "$SOCK" "$SOCK.ttrpc"
}

case $cmd in
  start) start "${@:3}" ;;
  stop) stop ;;
  *) usage ;;
esac
