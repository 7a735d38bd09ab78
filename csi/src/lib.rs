//! ebs-csi: the EBS CSI driver (controller / node / all).
//!
//! Owns: the CSI gRPC services (Identity, Controller, Node) on a unix socket; EBS volume,
//! attachment and snapshot lifecycle through EC2 (controller); finding, checking, formatting,
//! mounting and growing attached volumes (node); Prometheus metrics for its EC2 calls.
//! Decisions — parameter validation, device names, attachment limits — are pure functions
//! (`params`, `devices`); EC2, IMDS, mounts and mkfs sit at the edge (`cloud`, `node`, `mount`).
//!
//! Must not touch: node networking, or any path outside the kubelet root and the device
//! directory it is configured with. No shell strings are built from request data.

pub mod cloud;
pub mod controller;
pub mod devices;
pub mod identity;
pub mod mount;
pub mod node;
pub mod params;

use nodewire_proto::csi::{VolumeCapability, volume_capability};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tonic::Status;

/// The driver name the CSIDriver object and PVs use.
pub const DEFAULT_DRIVER_NAME: &str = "ebs.csi.nodewire.dev";
/// Upstream's name, accepted so existing PVs can be taken over.
pub const UPSTREAM_DRIVER_NAME: &str = "ebs.csi.aws.com";

/// Keys of calls in progress: a second call with the same key answers `ABORTED` (the spec's
/// "operation pending for volume"), and the CO retries.
#[derive(Default, Clone)]
pub struct Inflight(Arc<Mutex<HashSet<String>>>);

pub struct InflightGuard {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Inflight {
    pub fn enter(&self, key: &str) -> Result<InflightGuard, Status> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !s.insert(key.to_string()) {
            return Err(Status::aborted(format!(
                "an operation on {key} is already in progress"
            )));
        }
        Ok(InflightGuard {
            set: self.0.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// The spec's rule for a required string field: empty is `INVALID_ARGUMENT` naming it.
pub fn need(v: &str, what: &str) -> Result<(), Status> {
    if v.is_empty() {
        Err(Status::invalid_argument(format!("{what} is required")))
    } else {
        Ok(())
    }
}

/// Checks the capabilities are ones an EBS volume can serve: single-node access (an EBS volume
/// attaches to one instance), mount or block.
pub fn check_caps(caps: &[VolumeCapability]) -> Result<(), Status> {
    use volume_capability::access_mode::Mode;
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities is required"));
    }
    for c in caps {
        if c.access_type.is_none() {
            return Err(Status::invalid_argument(
                "volume_capability.access_type (mount or block) is required",
            ));
        }
        let mode = c
            .access_mode
            .as_ref()
            .and_then(|m| Mode::try_from(m.mode).ok())
            .unwrap_or(Mode::Unknown);
        match mode {
            Mode::SingleNodeWriter | Mode::SingleNodeReaderOnly => {}
            Mode::Unknown => {
                return Err(Status::invalid_argument(
                    "volume_capability.access_mode is required",
                ));
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "access mode {} is not supported: an EBS volume attaches to one node \
                     (SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY)",
                    other.as_str_name()
                )));
            }
        }
        if let Some(volume_capability::AccessType::Mount(m)) = &c.access_type
            && !m.fs_type.is_empty()
            && !params::FS_TYPES.contains(&m.fs_type.to_ascii_lowercase().as_str())
        {
            return Err(Status::invalid_argument(format!(
                "fs_type {:?} is not supported (one of {})",
                m.fs_type,
                params::FS_TYPES.join(", ")
            )));
        }
    }
    Ok(())
}

/// Block when any capability asks for a raw block device.
pub fn access_of(caps: &[VolumeCapability]) -> params::Access {
    if caps
        .iter()
        .any(|c| matches!(c.access_type, Some(volume_capability::AccessType::Block(_))))
    {
        params::Access::Block
    } else {
        params::Access::Mount
    }
}
