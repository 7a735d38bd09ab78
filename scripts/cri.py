#!/usr/bin/env python3
"""A tiny kubelet stand-in: drives pod sandboxes through the CRI v1 API of a containerd (scripts/containerd.sh).

  cri.py --socket SOCK run --name N [--namespace NS] [--port HOST:CONTAINER[/tcp|udp]]...  -> {"id", "ip"}
  cri.py --socket SOCK stop|remove ID            (stop: CNI DEL with prevResult; remove: a second DEL, empty netns)
  cri.py --socket SOCK status ID [--verbose]     -> {"id", "state", "ip", "pid", "netns", ...}
  cri.py --socket SOCK list [--quiet]            -> [{"id", "name", "namespace", "state"}] or one id per line
  cri.py --socket SOCK runtime-status            -> {"RuntimeReady": {...}, "NetworkReady": {...}}; exit 1 if the
                                                    runtime is not ready (NetworkReady is only reported)
Errors: the gRPC error message on stderr, exit 1. Needs the venv made by scripts/peers.sh (re-execs into it).
"""
import argparse
import json
import os
import sys
import uuid

try:
    import grpc
    from cri_api.v1 import api_pb2 as api
    from cri_api.v1.api_pb2_grpc import RuntimeServiceStub
except ImportError:
    peers = os.environ.get("PEERS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".peers")
    venv = os.path.realpath(os.path.join(peers, "venv"))
    venv_py = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) == venv or not os.path.exists(venv_py):
        sys.exit(f"cri.py: cri_api not importable and no venv at {venv_py}: run scripts/peers.sh")
    os.execv(venv_py, [venv_py] + sys.argv)

STATES = {api.SANDBOX_READY: "SANDBOX_READY", api.SANDBOX_NOTREADY: "SANDBOX_NOTREADY"}


def port_mapping(spec):
    ports, _, proto = spec.partition("/")
    host, container = ports.split(":")
    return api.PortMapping(protocol=api.UDP if proto == "udp" else api.TCP,
                           host_port=int(host), container_port=int(container))


def cmd_run(rt, a):
    uid = a.uid or str(uuid.uuid4())
    log_dir = a.log_dir or os.path.join(os.path.dirname(os.path.abspath(a.socket)), "podlogs",
                                        f"{a.namespace}_{a.name}_{uid}")
    os.makedirs(log_dir, exist_ok=True)
    cfg = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=a.name, namespace=a.namespace, uid=uid, attempt=a.attempt),
        hostname=a.name, log_directory=log_dir, port_mappings=[port_mapping(p) for p in a.port],
        linux=api.LinuxPodSandboxConfig())
    sid = rt.RunPodSandbox(api.RunPodSandboxRequest(config=cfg), timeout=a.timeout).pod_sandbox_id
    st = rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=a.timeout).status
    return {"id": sid, "ip": st.network.ip}


def cmd_status(rt, a):
    r = rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=a.id, verbose=True), timeout=a.timeout)
    s = r.status
    out = {"id": s.id, "name": s.metadata.name, "namespace": s.metadata.namespace, "uid": s.metadata.uid,
           "state": STATES.get(s.state, str(s.state)), "ip": s.network.ip,
           "additional_ips": [i.ip for i in s.network.additional_ips]}
    info = json.loads(r.info.get("info", "{}"))  # containerd's verbose info: pid and the runtime spec
    out["pid"] = info.get("pid")
    nss = ((info.get("runtimeSpec") or {}).get("linux") or {}).get("namespaces") or []
    out["netns"] = next((n.get("path") for n in nss if n.get("type") == "network"), None)
    if a.verbose:
        out["info"] = info
    return out


def cmd_list(rt, a):
    items = rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=a.timeout).items
    if a.quiet:
        return "\n".join(i.id for i in items) or None
    return [{"id": i.id, "name": i.metadata.name, "namespace": i.metadata.namespace,
             "state": STATES.get(i.state, str(i.state))} for i in items]


def cmd_runtime_status(rt, a):
    conds = rt.Status(api.StatusRequest(), timeout=a.timeout).status.conditions
    out = {c.type: {"status": c.status, "reason": c.reason, "message": c.message} for c in conds}
    print(json.dumps(out))
    sys.exit(0 if out.get("RuntimeReady", {}).get("status") else 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", required=True, help="containerd socket (DIR/containerd.sock)")
    p.add_argument("--timeout", type=float, default=60, help="per-call deadline in seconds (default 60)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="RunPodSandbox, then print id and IP")
    r.add_argument("--name", required=True)
    r.add_argument("--namespace", default="default")
    r.add_argument("--uid", help="pod UID (default: random)")
    r.add_argument("--attempt", type=int, default=0)
    r.add_argument("--log-dir", help="default: <socket dir>/podlogs/NS_NAME_UID")
    r.add_argument("--port", action="append", default=[], help="HOST:CONTAINER[/udp] port mapping (portmap)")
    for name in ("stop", "remove"):
        sub.add_parser(name, help=f"{name.capitalize()}PodSandbox").add_argument("id")
    s = sub.add_parser("status", help="PodSandboxStatus")
    s.add_argument("id")
    s.add_argument("--verbose", action="store_true", help="include containerd's full info")
    ls = sub.add_parser("list", help="ListPodSandbox")
    ls.add_argument("--quiet", "-q", action="store_true", help="ids only")
    sub.add_parser("runtime-status", help="Status: RuntimeReady / NetworkReady conditions")
    a = p.parse_args()

    rt = RuntimeServiceStub(grpc.insecure_channel(f"unix://{os.path.abspath(a.socket)}"))
    try:
        if a.cmd == "stop":
            rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=a.id), timeout=a.timeout)
            out = None
        elif a.cmd == "remove":
            rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=a.id), timeout=a.timeout)
            out = None
        else:
            out = {"run": cmd_run, "status": cmd_status, "list": cmd_list,
                   "runtime-status": cmd_runtime_status}[a.cmd](rt, a)
    except grpc.RpcError as e:
        print(f"cri.py {a.cmd}: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)
    if isinstance(out, str):
        print(out)
    elif out is not None:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
