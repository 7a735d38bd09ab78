#!/usr/bin/env bash
# `snapshot`: remember the machine's namespaces, loop devices and mounts before the tests.
# `verify`: fail if the tests left any of vpcsim's behind (namespaces vsXXXX-*, loop devices on
# vpcsim volume files, their mounts, vpcsim or moto processes), and remove them.
set -uo pipefail
state=${TMPDIR:-/tmp}/nodewire-leftovers
ours_ns() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(vs|cn)[0-9a-f]{4}-' || true; }
ours_loops() { losetup --list --noheadings --output NAME,BACK-FILE 2>/dev/null | awk '$2 ~ /\/volumes\/vol-[0-9a-f]+\.img/ {print $1}' || true; }
ours_mounts() { findmnt -rn -o TARGET 2>/dev/null | grep -E '^/run/netns/(vs|cn)[0-9a-f]{4}-|/nodewire-demo\.' || true; }
ours_procs() { pgrep -f -a 'vpcsim up|moto_server -H 127.0.0.1|debug/ipamd|debug/ebs-csi|debug/nodewire-demo|containerd --config|containerd-shim-runc' | grep -v pgrep || true; }
case "${1:-verify}" in
  snapshot)
    mkdir -p "$state"
    ours_ns >"$state/ns"; ours_loops >"$state/loops"; ours_mounts >"$state/mounts"
    ours_procs | awk '{print $1}' >"$state/procs"
    ;;
  verify)
    fail=0
    new_ns=$(comm -13 <(sort "$state/ns" 2>/dev/null) <(ours_ns | sort))
    new_loops=$(comm -13 <(sort "$state/loops" 2>/dev/null) <(ours_loops | sort))
    new_mounts=$(comm -13 <(sort "$state/mounts" 2>/dev/null) <(ours_mounts | sort))
    new_procs=$(ours_procs | awk '{print $1}' | grep -vxF -f "$state/procs" 2>/dev/null || true)
    if [[ -n "$new_ns" ]]; then echo "LEFTOVER namespaces: $new_ns"; fail=1; for n in $new_ns; do ip netns del "$n"; done; fi
    if [[ -n "$new_loops" ]]; then echo "LEFTOVER loop devices: $new_loops"; fail=1; for l in $new_loops; do losetup -d "$l"; done; fi
    if [[ -n "$new_mounts" ]]; then echo "LEFTOVER mounts: $new_mounts"; fail=1; for m in $new_mounts; do umount -l "$m"; rm -f "$m"; done; fi
    if [[ -n "$new_procs" ]]; then echo "LEFTOVER processes: $new_procs"; fail=1; kill -9 $new_procs 2>/dev/null; fi
    if ((fail)); then exit 1; fi
    echo "no leftovers: namespaces, mounts, loop devices and processes all cleaned up"
    ;;
esac
