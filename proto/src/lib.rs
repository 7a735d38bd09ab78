//! Protobuf contracts and their generated gRPC code (tonic 0.14 / prost).
//!
//! Owns: `ipam.proto`, the ipamd <-> vpc-cni contract, and (feature `csi`) the CSI
//! specification's `csi.proto`, written from the specification, for the EBS CSI driver.
//!
//! Must not touch: any behaviour. Only generated types, service stubs and the few shared names
//! of the contract live here, so every binary links the same wire format.

/// Version of the ipamd <-> vpc-cni protocol this build speaks.
pub const IPAM_PROTOCOL_VERSION: u32 = 1;

/// The alias (`IFLA_IFALIAS`, `ip link` shows it) vpc-cni gives a pod's host veth: the
/// attachment it belongs to. A pod recreated under the same name gets a host veth of the same
/// name, so the name alone cannot say which sandbox a veth serves; the alias can.
pub fn veth_alias(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

/// ipamd <-> vpc-cni.
pub mod ipam {
    tonic::include_proto!("nodewire.ipam.v1");
}

/// The Container Storage Interface (`csi.v1`), feature `csi`.
#[cfg(feature = "csi")]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

#[cfg(test)]
mod tests {
    use super::ipam::*;
    use prost::Message;

    #[test]
    fn messages_round_trip() {
        let req = AddRequest {
            key: Some(AttachmentKey {
                network_name: "aws-cni".into(),
                container_id: "abc".into(),
                ifname: "eth0".into(),
            }),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "web".into(),
                ..Default::default()
            }),
            netns: "/var/run/netns/cni-1".into(),
            host_ifname: "eni0123456789a".into(),
            client_version: crate::IPAM_PROTOCOL_VERSION,
        };
        let bytes = req.encode_to_vec();
        assert_eq!(AddRequest::decode(bytes.as_slice()).expect("decode"), req);
    }
}
