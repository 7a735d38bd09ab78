//! The CSI Identity service: name, capabilities, and a Probe that is cheap to call often.

use crate::cloud::Ec2;
use nodewire_proto::csi::identity_server::Identity;
use nodewire_proto::csi::*;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

/// A successful EC2 dry run is trusted this long; Probe is called every few seconds.
const PROBE_TTL: Duration = Duration::from_secs(3 * 3600);

pub struct IdentityService {
    pub name: String,
    /// Set in controller mode: Probe checks EC2 is reachable with these credentials.
    pub ec2: Option<Ec2>,
    pub controller: bool,
    /// Set in node mode: the device directory Probe checks, with the tools the node runs.
    pub node_dev_root: Option<std::path::PathBuf>,
    last_ok: Mutex<Option<Instant>>,
}

/// Tools the node service runs (e2fsprogs, xfsprogs, util-linux).
pub const NODE_TOOLS: &[&str] = &[
    "blkid",
    "mount",
    "umount",
    "mkfs.ext2",
    "mkfs.ext3",
    "mkfs.ext4",
    "mkfs.xfs",
    "resize2fs",
    "xfs_growfs",
];

/// The node's local prerequisites: the device directory and every tool on PATH.
pub fn node_ready(dev_root: &std::path::Path) -> Result<(), String> {
    if !dev_root.is_dir() {
        return Err(format!(
            "device directory {} is missing",
            dev_root.display()
        ));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = NODE_TOOLS
        .iter()
        .copied()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not on PATH: {} (install e2fsprogs, xfsprogs, util-linux)",
            missing.join(", ")
        ))
    }
}

impl IdentityService {
    pub fn new(name: String, ec2: Option<Ec2>, controller: bool) -> IdentityService {
        IdentityService {
            name,
            ec2,
            controller,
            node_dev_root: None,
            last_ok: Mutex::new(None),
        }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::service::Type as S;
        let mut caps = vec![];
        let service = |t: S| PluginCapability {
            r#type: Some(plugin_capability::Type::Service(
                plugin_capability::Service { r#type: t as i32 },
            )),
        };
        if self.controller {
            caps.push(service(S::ControllerService));
        }
        caps.push(service(S::VolumeAccessibilityConstraints));
        caps.push(PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(
                plugin_capability::VolumeExpansion {
                    r#type: plugin_capability::volume_expansion::Type::Online as i32,
                },
            )),
        });
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: caps,
        }))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        if let Some(d) = &self.node_dev_root {
            node_ready(d).map_err(Status::failed_precondition)?;
        }
        if let Some(ec2) = &self.ec2 {
            let mut last = self.last_ok.lock().await;
            if !last.is_some_and(|t| t.elapsed() < PROBE_TTL) {
                ec2.dry_run().await.map_err(|e| {
                    Status::failed_precondition(format!(
                        "EC2 health check failed (check the network path and IAM credentials): {e}"
                    ))
                })?;
                *last = Some(Instant::now());
            }
        }
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_probe_names_what_is_missing() {
        let e = super::node_ready(std::path::Path::new("/nonexistent/dev")).expect_err("no dir");
        assert!(e.contains("/nonexistent/dev"), "{e}");
    }
}
