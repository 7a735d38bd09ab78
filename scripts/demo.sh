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
# The demo catches Ctrl-C itself and tears down; this shell only waits for it.
trap ':' INT
"$bin" "$@"
status=$?
trap - INT
bash "$here/check-leftovers.sh" verify >/dev/null || { echo "demo: the check above found leftovers (now removed)" >&2; status=1; }
exit $status
