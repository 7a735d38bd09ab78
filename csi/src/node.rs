//! The CSI Node service: find the attached volume's device, prove it is that volume, format it
//! only when blank, mount, bind into pods, grow, report usage, and say how many volumes fit.

use crate::mount::{self, MountError};
use crate::params::{FS_TYPES, FormatOptions};
use crate::{Inflight, check_caps, devices, need};
use nodewire_aws::imds::Imds;
use nodewire_proto::csi::node_server::Node;
use nodewire_proto::csi::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// Node configuration (flags).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where device nodes and `disk/by-id` live (`/dev`; vpcsim's per-node directory in tests).
    pub dev_root: PathBuf,
    /// Where a device's serial is read: `<dir>/<kernel name>` when set, else
    /// `/sys/block/<kernel name>/device/serial` (the NVMe serial: the volume id without '-').
    pub serial_dir: Option<PathBuf>,
    /// Staging and target paths must be under this (the kubelet root).
    pub kubelet_root: PathBuf,
    /// How long NodeStage waits for an attached volume's device to appear.
    pub device_wait: Duration,
    pub volume_attach_limit: Option<u32>,
    pub reserved_attachments: Option<u32>,
}

pub struct NodeService {
    pub cfg: NodeConfig,
    imds: Imds,
    pub instance_id: String,
    pub az: String,
    pub instance_type: String,
    inflight: Inflight,
}

fn io(what: &str, e: std::io::Error) -> Status {
    Status::internal(format!("{what}: {e}"))
}

fn tool(e: MountError) -> Status {
    Status::internal(e.to_string())
}

/// The NVMe serial / by-id name of a volume: its id without the dash.
pub fn serial_of(volume_id: &str) -> String {
    volume_id.replace('-', "")
}

/// Refuses `..` and anything outside `root`, without touching the filesystem.
pub fn inside(root: &Path, p: &str) -> Result<PathBuf, Status> {
    let path = PathBuf::from(p);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Status::invalid_argument(format!(
            "{p:?} must be an absolute path without '..'"
        )));
    }
    if !path.starts_with(root) || path == root {
        return Err(Status::invalid_argument(format!(
            "{p:?} is outside the kubelet root {} this driver serves",
            root.display()
        )));
    }
    Ok(path)
}

fn fs_family(fs: &str) -> &str {
    if fs.starts_with("ext") { "ext" } else { fs }
}

impl NodeService {
    pub async fn new(cfg: NodeConfig, imds: Imds) -> anyhow::Result<NodeService> {
        let get = |p: &'static str| {
            let imds = &imds;
            async move {
                imds.get(p)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("IMDS has no {p}"))
            }
        };
        let instance_id = get("instance-id").await?;
        let az = get("placement/availability-zone").await?;
        let instance_type = get("instance-type").await?;
        Ok(NodeService {
            cfg,
            imds,
            instance_id,
            az,
            instance_type,
            inflight: Inflight::default(),
        })
    }

    /// The volume's device: the Nitro by-id link first, then the name it was attached under;
    /// waits a bounded time for it to appear (EC2 says attached before the node sees it).
    async fn find_device(&self, volume_id: &str, device_path: &str) -> Result<PathBuf, Status> {
        let (cfg, id, path) = (
            self.cfg.clone(),
            volume_id.to_string(),
            device_path.to_string(),
        );
        // Filesystem polling only: on a blocking thread, where it can poll finely.
        tokio::task::spawn_blocking(move || find_device(&cfg, &id, &path))
            .await
            .map_err(|e| Status::internal(format!("device lookup task: {e}")))?
    }

    /// Volumes this node can still take, from the instance type and what IMDS shows now.
    pub async fn max_volumes(&self) -> Result<u32, Status> {
        let t = nodewire_aws::limits::lookup(&self.instance_type);
        let (attachments, shared) = match t {
            Some(t) => (
                t.maximum_ebs_attachments,
                t.attachment_limit_type == nodewire_aws::limits::AttachmentLimitType::Shared,
            ),
            None => (27, true),
        };
        let imds_err = |e: nodewire_aws::imds::Error| Status::unavailable(format!("IMDS: {e}"));
        let enis = self
            .imds
            .list("network/interfaces/macs/")
            .await
            .map_err(imds_err)?
            .len() as u32;
        let boot = self
            .imds
            .list("block-device-mapping/")
            .await
            .map_err(imds_err)?
            .iter()
            .filter(|m| m.starts_with("ebs"))
            .count() as u32;
        Ok(devices::max_volumes(
            attachments,
            shared,
            enis.max(1),
            boot,
            self.cfg.reserved_attachments,
            self.cfg.volume_attach_limit,
        ))
    }
}

/// The volume's device: the Nitro by-id link first, then the name it was attached under, each
/// proved to be this volume by its serial; waits up to `device_wait` for it to appear (EC2 says
/// attached before the node sees the device).
fn find_device(cfg: &NodeConfig, volume_id: &str, device_path: &str) -> Result<PathBuf, Status> {
    let by_id = cfg.dev_root.join("disk/by-id").join(format!(
        "nvme-Amazon_Elastic_Block_Store_{}",
        serial_of(volume_id)
    ));
    // Only a plain device name (`/dev/xvdaa`): nothing that could leave the device directory.
    let by_name = device_path
        .strip_prefix("/dev/")
        .filter(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .map(|n| cfg.dev_root.join(n));
    let deadline = Instant::now() + cfg.device_wait;
    // The device usually shows up within a millisecond or two of EC2 saying attached: poll
    // finely first, then back off.
    let mut pause = Duration::from_micros(100);
    loop {
        for (p, named) in [(Some(&by_id), false), (by_name.as_ref(), true)] {
            let Some(p) = p else { continue };
            let Ok(real) = std::fs::canonicalize(p) else {
                continue;
            };
            match check_identity(cfg, &real, volume_id, named) {
                Ok(true) => return Ok(real),
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }
        if Instant::now() + pause > deadline {
            return Err(Status::not_found(format!(
                "no device for volume {volume_id} (looked for {} and {}) after {:?}; is it attached to this node?",
                by_id.display(),
                by_name
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "no devicePath".into()),
                cfg.device_wait
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// NodeStage's blocking part: mount `dev` (formatting it first only when blank) at `staging`.
#[allow(clippy::too_many_arguments)]
fn stage_on(
    dev: &Path,
    staging: &Path,
    fs: &str,
    flags: &[String],
    format: &FormatOptions,
    volume_id: &str,
    t0: Instant,
    t_found: Duration,
) -> Result<(), Status> {
    let want = mount::dev_id(dev).map_err(tool)?;
    if let Some(m) = mount::mounted_at(staging).map_err(tool)? {
        if m.dev == want {
            return Ok(());
        }
        return Err(Status::already_exists(format!(
            "{} already has another device mounted ({})",
            staging.display(),
            m.source
        )));
    }
    std::fs::create_dir_all(staging).map_err(|e| io("creating the staging path", e))?;
    let existing = mount::fs_on(dev).map_err(tool)?;
    let t_probed = t0.elapsed();
    let fresh = match &existing {
        None => {
            mount::mkfs(fs, dev, &format.mkfs_args(fs)).map_err(tool)?;
            tracing::info!(volume = %volume_id, device = %dev.display(), %fs, "formatted");
            true
        }
        Some(have) if fs_family(have) == fs_family(fs) => false,
        Some(have) => {
            return Err(Status::failed_precondition(format!(
                "volume {} holds {have}, not {fs}; not reformatting it",
                volume_id
            )));
        }
    };
    let mut opts = flags.to_vec();
    if fs == "xfs" && !opts.iter().any(|o| o == "nouuid") {
        // Volumes restored from one snapshot share the filesystem UUID.
        opts.push("nouuid".into());
    }
    let mount_fs = existing
        .filter(|_| !fresh)
        .unwrap_or_else(|| fs.to_string());
    let t_formatted = t0.elapsed();
    mount::mount(dev, staging, &mount_fs, &opts).map_err(tool)?;
    if !fresh {
        // The volume may have grown while detached (or been restored to a larger size).
        if let Err(e) = mount::grow(&mount_fs, dev, staging) {
            tracing::warn!(volume = %volume_id, error = %e, "growing the filesystem at stage failed");
        }
    }
    tracing::info!(volume = %volume_id, device = %dev.display(), staging = %staging.display(),
        found = ?t_found, probed = ?t_probed, formatted = ?t_formatted, total = ?t0.elapsed(),
        "NodeStageVolume (cumulative timings)");
    Ok(())
}

/// Unmounts everything stacked at `path` (nothing mounted is fine).
fn unmount_all(path: &Path) -> Result<(), Status> {
    while mount::mounted_at(path).map_err(tool)?.is_some() {
        mount::umount(path).map_err(tool)?;
    }
    Ok(())
}

/// Runs blocking filesystem work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("blocking task: {e}")))?
}

/// Whether `real` (a resolved device path) is volume `volume_id`: it must be a block device, and
/// its serial must name the volume. Without a readable serial (Xen instances have none) only a
/// device found by its attach name (`by_name`) is accepted, and only a whole `xvd*` disk.
/// `Ok(false)`: not provable yet (keep looking); `Err`: provably another volume or no device.
fn check_identity(
    cfg: &NodeConfig,
    real: &Path,
    volume_id: &str,
    by_name: bool,
) -> Result<bool, Status> {
    use std::os::unix::fs::FileTypeExt;
    let is_block = std::fs::metadata(real).is_ok_and(|m| m.file_type().is_block_device());
    if !is_block {
        return Err(Status::failed_precondition(format!(
            "{} is not a block device; not touching it",
            real.display()
        )));
    }
    let kname = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let serial_file = match &cfg.serial_dir {
        Some(d) => d.join(&kname),
        None => PathBuf::from(format!("/sys/block/{kname}/device/serial")),
    };
    match std::fs::read_to_string(&serial_file) {
        Ok(s) if s.trim() == serial_of(volume_id) => Ok(true),
        Ok(s) => {
            let s = s.trim();
            // The NVMe serial is the volume id without its dash.
            let other = match s.strip_prefix("vol") {
                Some(rest) if !rest.starts_with('-') => format!("vol-{rest}"),
                _ => s.to_string(),
            };
            Err(Status::failed_precondition(format!(
                "{} is volume {other}, not {volume_id}; not touching it",
                real.display()
            )))
        }
        Err(_) if by_name && (kname.starts_with("xvd") || cfg.serial_dir.is_some()) => Ok(true),
        Err(_) if by_name => Err(Status::failed_precondition(format!(
            "{} has no serial to prove it is {volume_id}; not touching it",
            real.display()
        ))),
        Err(_) => Ok(false),
    }
}

fn block_of(cap: &VolumeCapability) -> bool {
    matches!(
        cap.access_type,
        Some(volume_capability::AccessType::Block(_))
    )
}

fn mount_of(cap: &VolumeCapability) -> (String, Vec<String>) {
    match &cap.access_type {
        Some(volume_capability::AccessType::Mount(m)) => (
            if m.fs_type.is_empty() {
                crate::params::DEFAULT_FS.to_string()
            } else {
                m.fs_type.to_ascii_lowercase()
            },
            m.mount_flags.clone(),
        ),
        _ => (String::new(), vec![]),
    }
}

/// Mount flags come from the CO; refuse anything that could smuggle extra arguments.
fn check_flags(flags: &[String]) -> Result<(), Status> {
    for f in flags {
        if f.is_empty() || f.starts_with('-') || f.contains(char::is_whitespace) {
            return Err(Status::invalid_argument(format!(
                "mount flag {f:?} is not valid"
            )));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        need(&r.staging_target_path, "staging_target_path")?;
        let Some(cap) = r.volume_capability.as_ref() else {
            return Err(Status::invalid_argument("volume_capability is required"));
        };
        check_caps(std::slice::from_ref(cap))?;
        let staging = inside(&self.cfg.kubelet_root, &r.staging_target_path)?;
        if block_of(cap) {
            // Raw block: nothing to stage; NodePublish binds the device itself.
            return Ok(Response::new(NodeStageVolumeResponse {}));
        }
        let (fs, flags) = mount_of(cap);
        if !FS_TYPES.contains(&fs.as_str()) {
            return Err(Status::invalid_argument(format!(
                "fs_type {fs:?} is not supported"
            )));
        }
        check_flags(&flags)?;
        let ctx: BTreeMap<String, String> = r
            .volume_context
            .iter()
            .filter(|(k, _)| {
                crate::params::FORMAT_KEYS
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(k))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let format = FormatOptions::from_context(&ctx)
            .and_then(|f| f.check(&fs).map(|_| f))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _g = self.inflight.enter(&r.volume_id)?;
        let device_path = r
            .publish_context
            .get("devicePath")
            .cloned()
            .unwrap_or_default();
        let t0 = Instant::now();
        let dev = self.find_device(&r.volume_id, &device_path).await?;
        let t_found = t0.elapsed();
        let volume_id = r.volume_id.clone();
        // mkfs, mount and resize block: off the async workers, so a slow or hung device cannot
        // stall every other RPC (Probe included).
        blocking(move || {
            stage_on(
                &dev, &staging, &fs, &flags, &format, &volume_id, t0, t_found,
            )
        })
        .await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        need(&r.staging_target_path, "staging_target_path")?;
        let staging = inside(&self.cfg.kubelet_root, &r.staging_target_path)?;
        let _g = self.inflight.enter(&r.volume_id)?;
        blocking(move || unmount_all(&staging)).await?;
        tracing::info!(volume = %r.volume_id, "NodeUnstageVolume");
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        need(&r.target_path, "target_path")?;
        let Some(cap) = r.volume_capability.as_ref() else {
            return Err(Status::invalid_argument("volume_capability is required"));
        };
        check_caps(std::slice::from_ref(cap))?;
        let target = inside(&self.cfg.kubelet_root, &r.target_path)?;
        let block = block_of(cap);
        if !block {
            need(&r.staging_target_path, "staging_target_path")?;
        }
        let (_, flags) = mount_of(cap);
        check_flags(&flags)?;
        let _g = self.inflight.enter(&r.volume_id)?;
        let src = if block {
            let device_path = r
                .publish_context
                .get("devicePath")
                .cloned()
                .unwrap_or_default();
            self.find_device(&r.volume_id, &device_path).await?
        } else {
            let staging = inside(&self.cfg.kubelet_root, &r.staging_target_path)?;
            if mount::mounted_at(&staging).map_err(tool)?.is_none() {
                return Err(Status::failed_precondition(format!(
                    "volume {} is not staged at {}",
                    r.volume_id,
                    staging.display()
                )));
            }
            staging
        };
        if let Some(m) = mount::mounted_at(&target).map_err(tool)? {
            let same = if block {
                // A device node bind-mounted onto a file: the mount is of the node's directory
                // filesystem, with the node's own path as its root.
                Path::new(&m.root).file_name() == src.file_name()
            } else {
                mount::mounted_at(&src)
                    .map_err(tool)?
                    .is_some_and(|s| s.dev == m.dev)
            };
            if same {
                return Ok(Response::new(NodePublishVolumeResponse {}));
            }
            return Err(Status::already_exists(format!(
                "{} already has something else mounted",
                target.display()
            )));
        }
        if block {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| io("creating the target's parent", e))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&target)
                .map_err(|e| io("creating the target file", e))?;
        } else {
            std::fs::create_dir_all(&target).map_err(|e| io("creating the target path", e))?;
        }
        mount::bind(&src, &target, r.readonly, &flags).map_err(tool)?;
        tracing::info!(volume = %r.volume_id, target = %target.display(), block, readonly = r.readonly, "NodePublishVolume");
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        need(&r.target_path, "target_path")?;
        let target = inside(&self.cfg.kubelet_root, &r.target_path)?;
        let _g = self.inflight.enter(&r.volume_id)?;
        blocking(move || {
            unmount_all(&target)?;
            match std::fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {
                    std::fs::remove_dir(&target).map_err(|e| io("removing the target", e))
                }
                Ok(_) => std::fs::remove_file(&target).map_err(|e| io("removing the target", e)),
                Err(_) => Ok(()),
            }
        })
        .await?;
        tracing::info!(volume = %r.volume_id, "NodeUnpublishVolume");
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        need(&r.volume_path, "volume_path")?;
        let path = inside(&self.cfg.kubelet_root, &r.volume_path)?;
        let meta = std::fs::metadata(&path).map_err(|_| {
            Status::not_found(format!("volume path {} does not exist", path.display()))
        })?;
        let mounted = mount::mounted_at(&path).map_err(tool)?;
        let condition = Some(VolumeCondition {
            abnormal: mounted.is_none(),
            message: if mounted.is_none() {
                format!("{} is not mounted", path.display())
            } else {
                "mounted".into()
            },
        });
        use std::os::unix::fs::FileTypeExt;
        let unit = |u: volume_usage::Unit, (total, available, used): (i64, i64, i64)| VolumeUsage {
            total,
            available,
            used,
            unit: u as i32,
        };
        let usage = if meta.file_type().is_block_device() || (meta.is_file() && mounted.is_some()) {
            let size = mount::device_size(&path).map_err(tool)? as i64;
            vec![unit(volume_usage::Unit::Bytes, (size, 0, 0))]
        } else {
            let (b, i) = mount::usage(&path).map_err(tool)?;
            vec![
                unit(volume_usage::Unit::Bytes, b),
                unit(volume_usage::Unit::Inodes, i),
            ]
        };
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage,
            volume_condition: condition,
        }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        need(&r.volume_path, "volume_path")?;
        let path = inside(&self.cfg.kubelet_root, &r.volume_path)?;
        let Ok(meta) = std::fs::metadata(&path) else {
            return Err(Status::not_found(format!(
                "volume path {} does not exist",
                path.display()
            )));
        };
        use std::os::unix::fs::FileTypeExt;
        if r.volume_capability.as_ref().is_some_and(block_of) || meta.file_type().is_block_device()
        {
            let size = mount::device_size(&path).map_err(tool)? as i64;
            return Ok(Response::new(NodeExpandVolumeResponse {
                capacity_bytes: size,
            }));
        }
        let _g = self.inflight.enter(&r.volume_id)?;
        let Some(m) = mount::mounted_at(&path).map_err(tool)? else {
            return Err(Status::failed_precondition(format!(
                "{} is not mounted",
                path.display()
            )));
        };
        // The device behind the mount (its source is the device node it was mounted from),
        // proved to be this volume before its filesystem is touched.
        let dev = PathBuf::from(&m.source);
        let real =
            std::fs::canonicalize(&dev).map_err(|e| io("resolving the mounted device", e))?;
        check_identity(&self.cfg, &real, &r.volume_id, true)?;
        let want = r
            .capacity_range
            .as_ref()
            .map_or(0, |c| c.required_bytes.max(0) as u64);
        // The node sees the new size shortly after EC2 reports the modification.
        let deadline = Instant::now() + self.cfg.device_wait;
        let mut size = mount::device_size(&dev).map_err(tool)?;
        while size < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            size = mount::device_size(&dev).map_err(tool)?;
        }
        if size < want {
            return Err(Status::unavailable(format!(
                "the device is still {size} bytes, not {want}; retry"
            )));
        }
        let fs_type = m.fs_type.clone();
        blocking(move || {
            mount::grow(&fs_type, &dev, &path).map_err(|e| {
                let mut msg = e.to_string();
                if msg.contains("Permission denied") && fs_type.starts_with("ext") {
                    msg.push_str(
                        " (growing ext4 online needs CAP_SYS_RESOURCE: run the node plugin privileged)",
                    );
                }
                Status::internal(msg)
            })
        })
        .await?;
        tracing::info!(volume = %r.volume_id, bytes = size, "NodeExpandVolume");
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: size as i64,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type as T;
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: [
                T::StageUnstageVolume,
                T::ExpandVolume,
                T::GetVolumeStats,
                T::VolumeCondition,
            ]
            .iter()
            .map(|t| NodeServiceCapability {
                r#type: Some(node_service_capability::Type::Rpc(
                    node_service_capability::Rpc { r#type: *t as i32 },
                )),
            })
            .collect(),
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let max = self.max_volumes().await?;
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.instance_id.clone(),
            max_volumes_per_node: max as i64,
            accessible_topology: Some(Topology {
                segments: crate::controller::TOPOLOGY_KEYS
                    .iter()
                    .map(|k| (k.to_string(), self.az.clone()))
                    .chain([("kubernetes.io/os".to_string(), "linux".to_string())])
                    .collect(),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(serials: Option<PathBuf>) -> NodeConfig {
        NodeConfig {
            dev_root: PathBuf::from("/dev"),
            serial_dir: serials,
            kubelet_root: PathBuf::from("/var/lib/kubelet"),
            device_wait: Duration::from_millis(10),
            volume_attach_limit: None,
            reserved_attachments: None,
        }
    }

    #[test]
    fn only_a_block_device_with_the_right_serial_is_the_volume() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("disk.img");
        std::fs::write(&file, b"x").expect("file");
        let e = check_identity(&cfg(None), &file, "vol-1", true).expect_err("a file");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        // /dev/null is a character device, not a block device.
        let e = check_identity(&cfg(None), Path::new("/dev/null"), "vol-1", true)
            .expect_err("a char device");
        assert!(
            e.message().contains("not a block device"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn device_paths_stay_inside_the_device_directory() {
        let c = cfg(None);
        for bad in [
            "/dev//etc/passwd",
            "/dev/../etc",
            "/dev/xvd/../../x",
            "/dev/",
            "xvdaa",
        ] {
            let e = find_device(&c, "vol-0123", bad).expect_err(bad);
            assert_eq!(e.code(), tonic::Code::NotFound, "{bad}: {e:?}");
            assert!(
                e.message().contains("no devicePath"),
                "{bad}: {}",
                e.message()
            );
        }
    }

    #[test]
    fn paths_must_be_under_the_kubelet_root() {
        let root = Path::new("/var/lib/kubelet");
        assert!(inside(root, "/var/lib/kubelet/pods/x/volumes/v").is_ok());
        for bad in [
            "/",
            "/etc",
            "/var/lib/kubelet",
            "relative/x",
            "/var/lib/kubelet/../../etc",
            "/var/lib/kubeletX/y",
        ] {
            assert_eq!(
                inside(root, bad).map(|_| ()).map_err(|e| e.code()),
                Err(tonic::Code::InvalidArgument),
                "{bad}"
            );
        }
    }
}
