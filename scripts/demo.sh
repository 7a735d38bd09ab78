#!/usr/bin/env bash
# make demo: runs nodewire-demo (ipamd, vpc-cni and ebs-csi on a two-node vpcsim VPC; see
# demo/src/main.rs) and then checks, as `make test` does, that the machine holds none of its
# namespaces, loop devices, mounts or processes afterwards — also after Ctrl-C.
# Usage: demo.sh PATH/TO/nodewire-demo [demo args…]
set -uo pipefail
bin=${1:?usage: demo.sh path/to/nodewire-demo [args]}; shift
here=$(cd "$(dirname "$0")" && pwd)
export TMPDIR=${TMPDIR:-/tmp}
bash "$here/check-leftovers.sh" snapshot
# The demo handles Ctrl-C (the terminal sends it to the demo too) and SIGTERM/SIGHUP itself by
# tearing down; this shell passes TERM/HUP on (make sends those to it alone) and waits until the
# demo has finished, so the check below always runs after the teardown.
"$bin" "$@" &
pid=$!
trap ':' INT
trap 'kill -TERM $pid 2>/dev/null' TERM HUP
while true; do
  wait "$pid"; status=$?
  kill -0 "$pid" 2>/dev/null || break
done
trap - INT TERM HUP
bash "$here/check-leftovers.sh" verify >/dev/null || { echo "demo: leftovers found (and removed) after the demo" >&2; status=1; }
exit $status
