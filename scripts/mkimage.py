#!/usr/bin/env python3
"""Pack a root filesystem directory into a single-layer OCI image archive (an OCI image layout in a tar),
importable with `ctr -n k8s.io images import FILE` under --name. Stdlib only; the output is reproducible
(sorted entries, mtime 0, owner root).

Usage: mkimage.py --rootfs DIR --name localhost/test-pause:latest --out pause.tar -- /bin/sleep 2147483647
"""
import argparse
import hashlib
import io
import json
import tarfile


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def normalize(ti):
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "root", "root"
    return ti


def add_file(tar, name, data):
    ti = normalize(tarfile.TarInfo(name))
    ti.size, ti.mode = len(data), 0o644
    tar.addfile(ti, io.BytesIO(data))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rootfs", required=True)
    p.add_argument("--name", required=True, help="full image reference, e.g. localhost/test-pause:latest")
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="amd64")
    p.add_argument("cmd", nargs="+", help="image CMD")
    a = p.parse_args()

    # The layer: the rootfs as an uncompressed tar (so its digest is also its diff_id).
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.add(a.rootfs, arcname=".", filter=normalize)  # recursive adds are sorted
    layer = buf.getvalue()

    config = json.dumps({
        "architecture": a.arch, "os": "linux",
        "config": {"Cmd": a.cmd, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [blob(layer)]},
        "history": [{"created_by": "scripts/mkimage.py"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob(layer),
                    "size": len(layer)}],
    }, sort_keys=True).encode()
    tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(manifest),
            "size": len(manifest), "platform": {"architecture": a.arch, "os": "linux"},
            # containerd takes the full name from its own annotation; the OCI one holds just the tag.
            "annotations": {"io.containerd.image.name": a.name, "org.opencontainers.image.ref.name": tag},
        }],
    }, sort_keys=True).encode()

    with tarfile.open(a.out, "w", format=tarfile.PAX_FORMAT) as out:
        add_file(out, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_file(out, "index.json", index)
        for data in (config, layer, manifest):
            add_file(out, "blobs/sha256/" + blob(data)[7:], data)
    print(blob(manifest))


if __name__ == "__main__":
    main()
