# nodewire: one image with ipamd, vpc-cni (and its installer) and ebs-csi.
#   buildah bud -t nodewire .      (or docker build)
# Base images are build arguments with public defaults; `make image` builds local stand-ins
# under the same names where no registry is reachable (scripts/base-images.sh).
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV CARGO_TARGET_DIR=/target
# A CA bundle for crates.io behind an intercepting proxy (make image passes the host's); empty: none.
ARG CARGO_HTTP_CAINFO=
# The daemons size-optimised (profile ipamd: their resident memory is mostly code), vpc-cni
# static (it runs on the host, whatever its glibc). Cache mounts keep rebuilds incremental.
RUN --mount=type=cache,target=/target --mount=type=cache,target=/usr/local/cargo/registry \
    set -eux; \
    if [ -z "${CARGO_HTTP_CAINFO}" ]; then unset CARGO_HTTP_CAINFO; fi; \
    cargo build --locked --profile ipamd -p nodewire-ipamd -p nodewire-csi --bin ipamd --bin ebs-csi; \
    triple=$(rustc -vV | sed -n 's/^host: //p'); \
    RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static -C link-arg=-Wl,-z,max-page-size=0x200000" \
      cargo build --locked --profile cni -p nodewire-cni --bin vpc-cni --target "$triple"; \
    mkdir -p /out; \
    cp /target/ipamd/ipamd /target/ipamd/ebs-csi "/target/$triple/cni/vpc-cni" /out/

FROM ${RUNTIME_IMAGE}
# What the node paths run: nft (SNAT rules), mkfs/blkid/resize2fs (e2fsprogs), mkfs.xfs/xfs_growfs
# (xfsprogs), mount/umount (util-linux), CA certificates for EC2's HTTPS endpoint.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ca-certificates nftables e2fsprogs xfsprogs util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ipamd /out/vpc-cni /out/ebs-csi /usr/local/bin/
# Root by default: ipamd (netlink), the CNI installer (host dirs) and the CSI node plugin (mounts)
# need it; the CSI controller runs as uid 1000 (deploy/base/ebs-csi/controller.yaml).
LABEL org.opencontainers.image.title="nodewire" \
      org.opencontainers.image.description="ipamd, vpc-cni and ebs-csi: a node agent for Kubernetes on AWS" \
      org.opencontainers.image.licenses="Apache-2.0"
CMD ["ipamd", "--help"]
