#!/usr/bin/env bash
# make demo: a 2-node simulated VPC, each node's metadata as the node sees it, an ENI hot-plugged
# into node1 through the EC2 API, then teardown. Usage: demo.sh PATH/TO/vpcsim
set -euo pipefail
VPCSIM=${1:?usage: demo.sh path/to/vpcsim}
dir=$(mktemp -d /tmp/vpcsim-demo.XXXXXX)
out="$dir.json"
pid=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
  "$VPCSIM" down --state-dir "$dir/state" >/dev/null 2>&1 || true
  rm -rf "$dir" "$out"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "vpcsim up --nodes 2"
"$VPCSIM" up --nodes 2 --instance-type m5.large --state-dir "$dir/state" >"$out" 2>"$dir.log" &
pid=$!
# Wait for the ready line (vpcsim prints exactly one JSON line when everything is up).
for _ in $(seq 300); do [[ -s "$out" ]] && break; kill -0 "$pid" || { cat "$dir.log"; exit 1; }; sleep 0.1; done
jq . "$out"

imds() { # node-netns path
  local ns=$1 path=$2 tok
  tok=$(ip netns exec "$ns" curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
  ip netns exec "$ns" curl -sf -H "X-aws-ec2-metadata-token: $tok" "http://169.254.169.254/latest/meta-data/$path"
}
ec2() { # node-netns query...   (EC2 Query API, from inside the node)
  local ns=$1; shift
  ip netns exec "$ns" curl -sf --data "Version=2016-11-15&$1" "$(jq -r .ec2_endpoint "$out")/"
}
xml() { grep -o "<$1>[^<]*" | sed -n '1s/^[^>]*>//p'; }

for i in 0 1; do
  ns=$(jq -r ".nodes[$i].netns" "$out"); name=$(jq -r ".nodes[$i].name" "$out")
  step "$name: instance metadata (IMDSv2, from inside its namespace $ns)"
  for p in instance-id instance-type placement/availability-zone local-ipv4 mac; do
    printf '  %-28s %s\n' "$p" "$(imds "$ns" "$p")"
  done
  echo "  network/interfaces/macs/:   $(imds "$ns" network/interfaces/macs/ | tr '\n' ' ')"
  echo "  eth0: $(ip -n "$ns" -br addr show eth0)"
done

ns=$(jq -r '.nodes[0].netns' "$out"); iid=$(jq -r '.nodes[0].instance_id' "$out"); subnet=$(jq -r '.nodes[0].subnet_id' "$out")
step "node1: CreateNetworkInterface (2 secondary IPs) + AttachNetworkInterface at device index 1"
eni=$(ec2 "$ns" "Action=CreateNetworkInterface&SubnetId=$subnet&SecondaryPrivateIpAddressCount=2&Description=nodewire-demo" | xml networkInterfaceId)
echo "  created $eni"
att=$(ec2 "$ns" "Action=AttachNetworkInterface&NetworkInterfaceId=$eni&InstanceId=$iid&DeviceIndex=1" | xml attachmentId)
echo "  attaching ($att)"
for _ in $(seq 200); do
  st=$(ec2 "$ns" "Action=DescribeNetworkInterfaces&NetworkInterfaceId.1=$eni" | xml status)
  [[ "$st" == in-use ]] && break; sleep 0.05
done
echo "  status: $st"
for _ in $(seq 200); do ip -n "$ns" link show eth1 >/dev/null 2>&1 && break; sleep 0.05; done
echo "  links in $ns:"; ip -n "$ns" -br link | sed 's/^/    /'
for _ in $(seq 200); do [[ $(imds "$ns" network/interfaces/macs/ | wc -l) -ge 2 ]] && break; sleep 0.05; done
echo "  IMDS now lists: $(imds "$ns" network/interfaces/macs/ | tr '\n' ' ')"
mac=$(ip -n "$ns" -o link show eth1 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
echo "  eth1 ($mac) local-ipv4s: $(imds "$ns" "network/interfaces/macs/$mac/local-ipv4s" | tr '\n' ' ')"
echo "  fabric routes for node1's ENIs:"; ip -n "$(jq -r .fabric_netns "$out")" route | grep n1 | sed 's/^/    /'

step "EC2 calls so far (vpcsim ctl stats)"
"$VPCSIM" ctl --admin "$(jq -r .admin_url "$out")" stats | jq -c '.actions | map_values(.calls)'

step "teardown (SIGTERM)"
kill -TERM "$pid"; wait "$pid"; pid=""
left=$(ip netns list | grep -c "$(jq -r '.fabric_netns' "$out" | cut -d- -f1)" || true)
echo "  namespaces left: $left"
