#!/usr/bin/env python3
"""make manifests: render every kustomize overlay under deploy/overlays offline with
`kubectl kustomize`, check each object against the Kubernetes schemas with kubernetes-validate
(--strict: unknown fields fail), and check what no schema knows:
  * the CRD kinds (VolumeSnapshotClass) have their required fields;
  * one driver name everywhere: CSIDriver, StorageClass provisioner, VolumeSnapshotClass driver,
    VolumeAttributesClass driverName, both ebs-csi --driver-name flags, and the registrar's
    kubelet-registration-path and plugin hostPath;
  * every ServiceAccount a workload names exists, and every RoleBinding subject too.
Exit status 1 on any failure, with one line per problem."""
import pathlib
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
K8S_VERSION = "1.34.0"
problems = []


def render(overlay):
    r = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True)
    if r.returncode != 0:
        problems.append(f"{overlay.name}: kubectl kustomize failed: {r.stderr.strip()}")
        return None
    return r.stdout


def validate(name, text):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    r = subprocess.run(
        [str(VENV / "kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, f.name],
        capture_output=True, text=True)
    pathlib.Path(f.name).unlink()
    for line in (r.stdout + r.stderr).splitlines():
        if "Couldn't find schema for kind VolumeSnapshotClass" in line:
            continue  # a CRD: checked below
        if line.strip():
            problems.append(f"{name}: {line.strip()}")
    if r.returncode != 0 and not problems:
        problems.append(f"{name}: kubernetes-validate exited {r.returncode}")


def containers(obj):
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec, spec.get("containers", []) + spec.get("initContainers", [])


def check(name, docs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        if not d.get("metadata", {}).get("name"):
            problems.append(f"{name}: a {d['kind']} without a name")
    for vsc in by_kind.get("VolumeSnapshotClass", []):
        if not vsc.get("driver") or vsc.get("deletionPolicy") not in ("Delete", "Retain"):
            problems.append(f"{name}: VolumeSnapshotClass {vsc['metadata']['name']} needs driver and deletionPolicy Delete|Retain")
    drivers = {}
    for d in by_kind.get("CSIDriver", []):
        drivers["CSIDriver name"] = d["metadata"]["name"]
    for d in by_kind.get("StorageClass", []):
        drivers[f"StorageClass {d['metadata']['name']} provisioner"] = d.get("provisioner")
    for d in by_kind.get("VolumeSnapshotClass", []):
        drivers[f"VolumeSnapshotClass {d['metadata']['name']} driver"] = d.get("driver")
    for d in by_kind.get("VolumeAttributesClass", []):
        drivers[f"VolumeAttributesClass {d['metadata']['name']} driverName"] = d.get("driverName")
    sas = {(d["metadata"].get("namespace"), d["metadata"]["name"]) for d in by_kind.get("ServiceAccount", [])}
    for kind in ("Deployment", "DaemonSet"):
        for w in by_kind.get(kind, []):
            wname = w["metadata"]["name"]
            spec, cs = containers(w)
            sa = spec.get("serviceAccountName")
            if sa and (w["metadata"].get("namespace"), sa) not in sas:
                problems.append(f"{name}: {kind} {wname} uses ServiceAccount {sa}, not in the manifests")
            for c in cs:
                for a in c.get("args", []):
                    if a.startswith("--driver-name="):
                        drivers[f"{wname} {c['name']} --driver-name"] = a.split("=", 1)[1]
                    if a.startswith("--kubelet-registration-path="):
                        p = a.split("=", 1)[1]
                        drivers[f"{wname} registration path"] = p.split("/plugins/")[1].split("/")[0]
            for v in spec.get("volumes", []):
                hp = v.get("hostPath", {}).get("path", "")
                if "/kubelet/plugins/" in hp and "plugins_registry" not in hp:
                    drivers[f"{wname} plugin dir"] = hp.split("/plugins/")[1].strip("/")
    if drivers and len(set(drivers.values())) != 1:
        problems.append(f"{name}: the driver name differs: {drivers}")
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        for b in by_kind.get(kind, []):
            for s in b.get("subjects", []):
                if s["kind"] == "ServiceAccount" and (s.get("namespace"), s["name"]) not in sas:
                    problems.append(f"{name}: {kind} {b['metadata']['name']} binds a missing ServiceAccount {s['name']}")
    return by_kind


def main():
    overlays = sorted(p for p in (ROOT / "deploy" / "overlays").iterdir() if p.is_dir())
    for o in overlays:
        text = render(o)
        if text is None:
            continue
        docs = [d for d in yaml.safe_load_all(text) if d]
        validate(o.name, text)
        by_kind = check(o.name, docs)
        print(f"{o.name}: {len(docs)} objects ({', '.join(f'{k} {len(v)}' for k, v in sorted(by_kind.items()))})")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
