//! The CSI Controller service: volumes, attachments and snapshots through EC2.
//!
//! Required-argument and not-found rules follow the CSI spec per RPC; concurrent calls for the
//! same volume, name or snapshot answer `ABORTED` (the CO retries).

use crate::cloud::{CloudError, Ec2, Volume};
use crate::devices;
use crate::params::{self, GIB, Invalid, TAG_CLUSTER, TAG_SNAPSHOT_NAME};
use crate::{Inflight, access_of, check_caps, need};
use nodewire_proto::csi::controller_server::Controller;
use nodewire_proto::csi::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

pub const TOPOLOGY_KEYS: &[&str] = &[
    "topology.kubernetes.io/zone",
    "topology.ebs.csi.aws.com/zone",
];

/// How long EC2 state transitions are waited for before the RPC gives up (the CO retries).
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    pub create: Duration,
    pub attach: Duration,
    pub detach: Duration,
    pub modify: Duration,
    /// First poll interval; grows ×1.5 up to 2 s.
    pub first_poll: Duration,
    /// Expansions and modifications of one volume arriving within this are one ModifyVolume.
    pub coalesce: Duration,
}

impl Default for Waits {
    fn default() -> Waits {
        Waits {
            create: Duration::from_secs(60),
            attach: Duration::from_secs(90),
            detach: Duration::from_secs(90),
            modify: Duration::from_secs(120),
            first_poll: Duration::from_millis(100),
            coalesce: Duration::from_millis(500),
        }
    }
}

pub struct ControllerService {
    pub ec2: Ec2,
    pub waits: Waits,
    inflight: Inflight,
    coalescer: Coalescer,
    /// Device names chosen but not yet visible in DescribeInstances, per instance.
    reserved: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Names EC2 said were in use although DescribeInstances did not show them.
    likely_bad: Mutex<HashMap<String, BTreeSet<String>>>,
}

fn cloud(e: CloudError) -> Status {
    if e.is_throttle() {
        Status::unavailable(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

fn bad_param(e: Invalid) -> Status {
    if e.out_of_range {
        Status::out_of_range(e.to_string())
    } else {
        Status::invalid_argument(e.to_string())
    }
}

/// EC2 ClientToken for a CSI volume name (≤ 64 characters, stable across retries).
pub fn client_token(name: &str, attempt: u32) -> String {
    let input = if attempt == 0 {
        name.to_string()
    } else {
        format!("{name}-{}", attempt + 1)
    };
    Sha256::digest(input.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The zone to create in: preferred first, then requisite; `None` = any.
pub fn zone_of(req: Option<&TopologyRequirement>) -> Option<String> {
    let r = req?;
    r.preferred.iter().chain(r.requisite.iter()).find_map(|t| {
        TOPOLOGY_KEYS
            .iter()
            .find_map(|k| t.segments.get(*k).cloned())
    })
}

fn topology(az: &str) -> Topology {
    Topology {
        segments: TOPOLOGY_KEYS
            .iter()
            .map(|k| (k.to_string(), az.to_string()))
            .collect(),
    }
}

fn csi_volume(v: &Volume, ctx: HashMap<String, String>) -> nodewire_proto::csi::Volume {
    nodewire_proto::csi::Volume {
        capacity_bytes: v.size_gib * GIB,
        volume_id: v.id.clone(),
        volume_context: ctx,
        content_source: v.snapshot_id.as_ref().map(|s| VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource {
                    snapshot_id: s.clone(),
                },
            )),
        }),
        accessible_topology: vec![topology(&v.az)],
    }
}

fn csi_snapshot(s: &crate::cloud::Snapshot) -> nodewire_proto::csi::Snapshot {
    nodewire_proto::csi::Snapshot {
        size_bytes: s.size_gib * GIB,
        snapshot_id: s.id.clone(),
        source_volume_id: s.volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: s.start_secs,
            nanos: 0,
        }),
        ready_to_use: s.state == "completed",
        group_snapshot_id: String::new(),
    }
}

impl ControllerService {
    pub fn new(ec2: Ec2, waits: Waits) -> ControllerService {
        ControllerService {
            coalescer: Coalescer::new(ec2.clone(), waits),
            ec2,
            waits,
            inflight: Inflight::default(),
            reserved: Mutex::default(),
            likely_bad: Mutex::default(),
        }
    }

    async fn wait_for<T, F, Fut>(&self, what: &str, limit: Duration, probe: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, Status>>,
    {
        poll(what, limit, self.waits.first_poll, probe).await
    }

    async fn wait_volume(
        &self,
        id: &str,
        limit: Duration,
        ok: impl Fn(&Volume) -> bool,
    ) -> Result<Volume, Status> {
        self.wait_for(&format!("volume {id}"), limit, || async {
            match self.ec2.volume(id).await.map_err(cloud)? {
                None => Err(Status::not_found(format!("volume {id} vanished"))),
                Some(v) if v.state == "error" => {
                    Err(Status::internal(format!("volume {id} is in state error")))
                }
                Some(v) => Ok(ok(&v).then_some(v)),
            }
        })
        .await
    }

    /// Reserves a device name until the returned guard drops (also when the RPC is cancelled
    /// mid-wait: the name must not stay taken).
    fn reserve(&self, instance: &str, in_use: &BTreeSet<String>) -> Option<Reservation<'_>> {
        let mut r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let bad = self
            .likely_bad
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(instance)
            .cloned()
            .unwrap_or_default();
        let mine = r.entry(instance.to_string()).or_default();
        let name = devices::next_name(in_use, mine, &bad)?;
        mine.insert(name.clone());
        Some(Reservation {
            svc: self,
            instance: instance.to_string(),
            name,
        })
    }

    fn unreserve(&self, instance: &str, name: &str) {
        let mut r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = r.get_mut(instance) {
            s.remove(name);
            if s.is_empty() {
                r.remove(instance);
            }
        }
    }

    fn clear_bad(&self, instance: &str, name: &str) {
        let mut b = self.likely_bad.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = b.get_mut(instance) {
            s.remove(name);
            if s.is_empty() {
                b.remove(instance);
            }
        }
    }

    fn mark_bad(&self, instance: &str, name: &str) {
        self.likely_bad
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(instance.to_string())
            .or_default()
            .insert(name.to_string());
    }

    async fn attached_device(&self, id: &str, instance: &str) -> Result<String, Status> {
        let waited = self
            .wait_volume(id, self.waits.attach, |v| {
                v.attachments
                    .iter()
                    .any(|(i, _, s)| i == instance && s == "attached")
            })
            .await;
        let v = match waited {
            Ok(v) => v,
            Err(e) if e.code() == tonic::Code::DeadlineExceeded => {
                // Stuck in `attaching` (a device name the instance cannot use, EC2 trouble):
                // undo it and avoid the name, so the CO's retry starts clean.
                if let Ok(Some(v)) = self.ec2.volume(id).await
                    && let Some((_, dev, _)) = v
                        .attachments
                        .iter()
                        .find(|(i, _, s)| i == instance && s == "attaching")
                {
                    self.mark_bad(instance, dev);
                    let undone = self.ec2.detach(id, instance).await;
                    tracing::warn!(volume = %id, %instance, device = %dev, ?undone, "stuck attaching: detached");
                    return Err(Status::deadline_exceeded(format!(
                        "volume {id} was stuck attaching to {instance} as {dev}; detached it, and \
                         the retry will use another device name"
                    )));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        Ok(v.attachments
            .iter()
            .find(|(i, ..)| i == instance)
            .map(|(_, d, _)| d.clone())
            .unwrap_or_default())
    }

    async fn publish(&self, id: &str, instance: &str) -> Result<String, Status> {
        // The instance's block-device mappings say both which names are taken and whether the
        // volume is already here; AttachVolume itself reports a missing volume or one attached
        // elsewhere (one EC2 call less than asking about the volume first).
        let Some(mapped) = self.ec2.instance_devices(instance).await.map_err(cloud)? else {
            return Err(Status::not_found(format!("node {instance} does not exist")));
        };
        if mapped.values().any(|v| v == id) {
            // Already attached or attaching here: idempotent.
            return self.attached_device(id, instance).await;
        }
        let in_use: BTreeSet<String> = mapped.keys().cloned().collect();
        for _ in 0..3 {
            let Some(reservation) = self.reserve(instance, &in_use) else {
                return Err(Status::resource_exhausted(format!(
                    "no device name left on {instance}"
                )));
            };
            let name = reservation.name.clone();
            let r = self.ec2.attach(id, instance, &name).await;
            match r {
                Ok(()) => {
                    let dev = self.attached_device(id, instance).await;
                    if dev.is_ok() {
                        self.clear_bad(instance, &name);
                    }
                    return dev;
                }
                Err(e) => {
                    drop(reservation);
                    match e.code.as_str() {
                        "AttachmentLimitExceeded" => {
                            return Err(Status::resource_exhausted(format!(
                                "{instance} cannot take another volume: {}",
                                e.message
                            )));
                        }
                        "VolumeInUse" => {
                            return Err(Status::failed_precondition(format!(
                                "volume {id} is attached to another node; unpublish it there first ({})",
                                e.message
                            )));
                        }
                        "InvalidParameterValue" if e.message.contains("already in use") => {
                            self.mark_bad(instance, &name);
                            continue;
                        }
                        _ if e.is_not_found() => return Err(Status::not_found(e.to_string())),
                        _ => return Err(cloud(e)),
                    }
                }
            }
        }
        Err(Status::unavailable(format!(
            "device names on {instance} kept colliding; retry"
        )))
    }
}

/// Polls `probe` with backoff (×1.5 from `first`, at most 2 s) until it yields, or `limit`
/// passes (`DEADLINE_EXCEEDED`: the CO retries).
async fn poll<T, F, Fut>(
    what: &str,
    limit: Duration,
    first: Duration,
    mut probe: F,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, Status>>,
{
    let deadline = Instant::now() + limit;
    let mut pause = first;
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if Instant::now() + pause > deadline {
            return Err(Status::deadline_exceeded(format!(
                "{what} did not happen within {limit:?}; retry"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = pause.mul_f32(1.5).min(Duration::from_secs(2));
    }
}

/// A device name held for an attach in flight; released on drop.
struct Reservation<'a> {
    svc: &'a ControllerService,
    instance: String,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.svc.unreserve(&self.instance, &self.name);
    }
}

fn map(m: &HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let r = request.into_inner();
        need(&r.name, "name")?;
        check_caps(&r.volume_capabilities)?;
        let access = access_of(&r.volume_capabilities);
        let cap_fs = r
            .volume_capabilities
            .iter()
            .find_map(|c| match &c.access_type {
                Some(volume_capability::AccessType::Mount(m)) if !m.fs_type.is_empty() => {
                    Some(m.fs_type.clone())
                }
                _ => None,
            })
            .unwrap_or_default();
        let (required, limit) = r
            .capacity_range
            .as_ref()
            .map_or((0, 0), |c| (c.required_bytes, c.limit_bytes));
        let mut size = params::size_gib(required, limit).map_err(|e| {
            if required < 0 || limit < 0 {
                Status::invalid_argument(e)
            } else {
                Status::out_of_range(e)
            }
        })?;
        let snapshot = match r
            .volume_content_source
            .as_ref()
            .and_then(|s| s.r#type.as_ref())
        {
            None => None,
            Some(volume_content_source::Type::Snapshot(s)) => {
                need(&s.snapshot_id, "volume_content_source.snapshot.snapshot_id")?;
                let Some(snap) = self.ec2.snapshot(&s.snapshot_id).await.map_err(cloud)? else {
                    return Err(Status::not_found(format!(
                        "snapshot {} does not exist",
                        s.snapshot_id
                    )));
                };
                if r.capacity_range.is_none() {
                    size = snap.size_gib;
                } else if snap.size_gib > size {
                    return Err(Status::out_of_range(format!(
                        "the snapshot is {} GiB, more than the {size} GiB requested",
                        snap.size_gib
                    )));
                }
                Some(snap.id)
            }
            Some(volume_content_source::Type::Volume(_)) => {
                return Err(Status::invalid_argument(
                    "cloning from a volume is not supported (CLONE_VOLUME is not advertised); use a snapshot",
                ));
            }
        };
        // mutable_parameters (a VolumeAttributesClass) apply at creation and win over the
        // StorageClass's values for the same settings.
        let mut all = map(&r.parameters);
        let m = params::modification(&map(&r.mutable_parameters)).map_err(bad_param)?;
        if m.iops.is_some() {
            all.retain(|k, _| !k.eq_ignore_ascii_case("iopsPerGB"));
        }
        for (k, v) in &r.mutable_parameters {
            if !k.starts_with("tagDeletion_") {
                let k = if k == "volumeType" {
                    "type"
                } else {
                    k.as_str()
                };
                all.insert(k.to_string(), v.clone());
            }
        }
        let spec = params::volume_spec(&r.name, size, &all, &cap_fs, access).map_err(bad_param)?;
        let _g = self.inflight.enter(&format!("create/{}", r.name))?;
        let az = match zone_of(r.accessibility_requirements.as_ref()) {
            Some(z) => z,
            None => self.ec2.first_zone().await.map_err(cloud)?,
        };
        let mut created = None;
        for attempt in 0..5 {
            match self
                .ec2
                .create_volume(
                    &spec,
                    &az,
                    snapshot.as_deref(),
                    &client_token(&r.name, attempt),
                )
                .await
            {
                Ok(v) => {
                    created = Some(v);
                    break;
                }
                Err(e) if e.code == "IdempotentParameterMismatch" => {
                    return Err(Status::already_exists(format!(
                        "a volume named {} exists with other parameters",
                        r.name
                    )));
                }
                // The token names a volume deleted since: a new token for a new volume.
                Err(e) if e.is_not_found() && e.code.starts_with("InvalidVolume") => continue,
                Err(e) if e.is_not_found() => return Err(Status::not_found(e.to_string())),
                Err(e)
                    if e.code.starts_with("InvalidParameter") || e.code == "MissingParameter" =>
                {
                    return Err(Status::invalid_argument(e.to_string()));
                }
                Err(e) if e.code == "VolumeLimitExceeded" => {
                    return Err(Status::resource_exhausted(e.to_string()));
                }
                // Whether a volume was made is unknown: ABORTED keeps the provisioner retrying
                // (the same token finds it), where INTERNAL could make it give up on a volume
                // that exists.
                Err(e) => return Err(Status::aborted(e.to_string())),
            }
        }
        let Some(v) = created else {
            return Err(Status::internal(format!(
                "could not create a volume named {}",
                r.name
            )));
        };
        let v = if v.state == "available" {
            v
        } else {
            self.wait_volume(&v.id, self.waits.create, |v| {
                v.state == "available" || v.state == "in-use"
            })
            .await?
        };
        tracing::info!(volume = %v.id, name = %r.name, size_gib = v.size_gib, az = %v.az, "CreateVolume");
        let ctx = spec.format.to_context().into_iter().collect();
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(csi_volume(&v, ctx)),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        let _g = self.inflight.enter(&r.volume_id)?;
        match self.ec2.delete_volume(&r.volume_id).await {
            Ok(()) => {
                tracing::info!(volume = %r.volume_id, "DeleteVolume");
                Ok(Response::new(DeleteVolumeResponse {}))
            }
            Err(e) if e.is_not_found() => Ok(Response::new(DeleteVolumeResponse {})),
            Err(e) if e.code == "VolumeInUse" => Err(Status::failed_precondition(format!(
                "volume {} is still attached: {}",
                r.volume_id, e.message
            ))),
            Err(e) => Err(cloud(e)),
        }
    }

    async fn controller_publish_volume(
        &self,
        request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        need(&r.node_id, "node_id")?;
        let Some(cap) = r.volume_capability.as_ref() else {
            return Err(Status::invalid_argument("volume_capability is required"));
        };
        check_caps(std::slice::from_ref(cap))?;
        let _g = self
            .inflight
            .enter(&format!("{}/{}", r.volume_id, r.node_id))?;
        let device = self.publish(&r.volume_id, &r.node_id).await?;
        tracing::info!(volume = %r.volume_id, node = %r.node_id, %device, "ControllerPublishVolume");
        Ok(Response::new(ControllerPublishVolumeResponse {
            publish_context: [("devicePath".to_string(), device)].into_iter().collect(),
        }))
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        let _g = self
            .inflight
            .enter(&format!("{}/{}", r.volume_id, r.node_id))?;
        // With a node: detach straight away (EC2 says if there is nothing to detach). Without
        // one: every attachment the volume has.
        let nodes: Vec<String> = if r.node_id.is_empty() {
            match self.ec2.volume(&r.volume_id).await.map_err(cloud)? {
                // The spec: a volume that does not exist is unpublished.
                None => vec![],
                Some(v) => v.attachments.iter().map(|(i, ..)| i.clone()).collect(),
            }
        } else {
            vec![r.node_id.clone()]
        };
        let mut detaching = vec![];
        for node in &nodes {
            match self.ec2.detach(&r.volume_id, node).await {
                // IncorrectState: already detaching (a retry), or nothing attached; either way
                // done once EC2 shows no attachment to the node.
                Ok(()) => detaching.push(node.clone()),
                Err(e) if e.code == "IncorrectState" => detaching.push(node.clone()),
                Err(e) if e.is_not_found() || e.code == "InvalidAttachment.NotFound" => {}
                Err(e) => return Err(cloud(e)),
            }
        }
        let nodes = detaching;
        if !nodes.is_empty() {
            let id = r.volume_id.clone();
            self.wait_for(&format!("detach of {id}"), self.waits.detach, || async {
                match self.ec2.volume(&id).await.map_err(cloud)? {
                    None => Ok(Some(())),
                    Some(v) => {
                        Ok((!v.attachments.iter().any(|(i, ..)| nodes.contains(i))).then_some(()))
                    }
                }
            })
            .await?;
            tracing::info!(volume = %r.volume_id, node = %r.node_id, "ControllerUnpublishVolume");
        }
        Ok(Response::new(ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        if r.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        if self
            .ec2
            .volume(&r.volume_id)
            .await
            .map_err(cloud)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                r.volume_id
            )));
        }
        let ok = check_caps(&r.volume_capabilities).and_then(|_| {
            params::modification(&map(&r.mutable_parameters))
                .map(|_| ())
                .map_err(bad_param)
        });
        Ok(Response::new(ValidateVolumeCapabilitiesResponse {
            confirmed: ok
                .is_ok()
                .then(|| validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context.clone(),
                    volume_capabilities: r.volume_capabilities.clone(),
                    parameters: r.parameters.clone(),
                    mutable_parameters: r.mutable_parameters.clone(),
                }),
            message: ok
                .err()
                .map(|s| s.message().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn list_volumes(
        &self,
        _request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        Err(Status::unimplemented(
            "ListVolumes is not offered (LIST_VOLUMES is not advertised)",
        ))
    }

    async fn get_capacity(
        &self,
        _request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        Err(Status::unimplemented(
            "GetCapacity is not offered (GET_CAPACITY is not advertised)",
        ))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::rpc::Type as T;
        let caps = [
            T::CreateDeleteVolume,
            T::PublishUnpublishVolume,
            T::CreateDeleteSnapshot,
            T::ListSnapshots,
            T::ExpandVolume,
            T::ModifyVolume,
        ];
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: caps
                .iter()
                .map(|t| ControllerServiceCapability {
                    r#type: Some(controller_service_capability::Type::Rpc(
                        controller_service_capability::Rpc { r#type: *t as i32 },
                    )),
                })
                .collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let r = request.into_inner();
        need(&r.name, "name")?;
        need(&r.source_volume_id, "source_volume_id")?;
        let mut tags = BTreeMap::new();
        tags.insert(TAG_SNAPSHOT_NAME.to_string(), r.name.clone());
        tags.insert(TAG_CLUSTER.to_string(), "true".to_string());
        let meta = params::K8sMeta::default();
        for (k, v) in &r.parameters {
            if k.starts_with("tagSpecification_") {
                let (tk, tv) = params::tag_spec(k, v, &meta).map_err(bad_param)?;
                tags.insert(tk, tv);
            } else if !k.starts_with("csi.storage.k8s.io/") {
                return Err(Status::invalid_argument(format!(
                    "parameter {k}: unknown snapshot parameter (tagSpecification_N)"
                )));
            }
        }
        let _g = self.inflight.enter(&format!("snapshot/{}", r.name))?;
        let (found, _) = self
            .ec2
            .snapshots(
                &[(&format!("tag:{TAG_SNAPSHOT_NAME}"), &r.name)],
                None,
                None,
            )
            .await
            .map_err(cloud)?;
        if let Some(s) = found.first() {
            if s.volume_id != r.source_volume_id {
                return Err(Status::already_exists(format!(
                    "snapshot {} exists for volume {}, not {}",
                    r.name, s.volume_id, r.source_volume_id
                )));
            }
            return Ok(Response::new(CreateSnapshotResponse {
                snapshot: Some(csi_snapshot(s)),
            }));
        }
        let s = match self.ec2.create_snapshot(&r.source_volume_id, &tags).await {
            Ok(s) => s,
            Err(e) if e.is_not_found() => {
                return Err(Status::not_found(format!(
                    "volume {} does not exist",
                    r.source_volume_id
                )));
            }
            Err(e) if e.code == "SnapshotLimitExceeded" => {
                return Err(Status::resource_exhausted(e.to_string()));
            }
            Err(e) => return Err(cloud(e)),
        };
        tracing::info!(snapshot = %s.id, volume = %r.source_volume_id, "CreateSnapshot");
        Ok(Response::new(CreateSnapshotResponse {
            snapshot: Some(csi_snapshot(&s)),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let r = request.into_inner();
        need(&r.snapshot_id, "snapshot_id")?;
        let _g = self.inflight.enter(&r.snapshot_id)?;
        match self.ec2.delete_snapshot(&r.snapshot_id).await {
            Ok(()) => Ok(Response::new(DeleteSnapshotResponse {})),
            Err(e) if e.is_not_found() => Ok(Response::new(DeleteSnapshotResponse {})),
            Err(e) if e.code == "InvalidSnapshot.InUse" => Err(Status::failed_precondition(
                format!("snapshot {} is in use: {}", r.snapshot_id, e.message),
            )),
            Err(e) => Err(cloud(e)),
        }
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let r = request.into_inner();
        if r.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries must not be negative"));
        }
        let start: usize = if r.starting_token.is_empty() {
            0
        } else {
            r.starting_token.parse().map_err(|_| {
                Status::aborted(format!(
                    "starting_token {:?} is not one this plugin issued",
                    r.starting_token
                ))
            })?
        };
        let mut all = Vec::new();
        if !r.snapshot_id.is_empty() {
            if let Some(s) = self.ec2.snapshot(&r.snapshot_id).await.map_err(cloud)?
                && (r.source_volume_id.is_empty() || s.volume_id == r.source_volume_id)
            {
                all.push(s);
            }
        } else {
            let filters: Vec<(&str, &str)> = if r.source_volume_id.is_empty() {
                vec![]
            } else {
                vec![("volume-id", r.source_volume_id.as_str())]
            };
            let mut token = None;
            loop {
                let (page, next) = self
                    .ec2
                    .snapshots(&filters, Some(1000), token)
                    .await
                    .map_err(cloud)?;
                all.extend(page);
                match next {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        if start > all.len() {
            return Err(Status::aborted(format!(
                "starting_token {start} is past the end ({} snapshots)",
                all.len()
            )));
        }
        let n = if r.max_entries == 0 {
            all.len()
        } else {
            r.max_entries as usize
        };
        let end = (start + n).min(all.len());
        Ok(Response::new(ListSnapshotsResponse {
            entries: all[start..end]
                .iter()
                .map(|s| list_snapshots_response::Entry {
                    snapshot: Some(csi_snapshot(s)),
                })
                .collect(),
            next_token: if end < all.len() {
                end.to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn get_snapshot(
        &self,
        _request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        Err(Status::unimplemented(
            "GetSnapshot is not offered (GET_SNAPSHOT is not advertised)",
        ))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        let Some(c) = r.capacity_range.as_ref() else {
            return Err(Status::invalid_argument("capacity_range is required"));
        };
        if c.required_bytes < 0 || c.limit_bytes < 0 {
            return Err(Status::invalid_argument(
                "capacity_range bytes must not be negative",
            ));
        }
        if c.required_bytes == 0 && c.limit_bytes == 0 {
            return Err(Status::invalid_argument(
                "capacity_range needs required_bytes or limit_bytes",
            ));
        }
        let want =
            params::size_gib(c.required_bytes, c.limit_bytes).map_err(Status::out_of_range)?;
        let block = r.volume_capability.as_ref().is_some_and(|c| {
            matches!(c.access_type, Some(volume_capability::AccessType::Block(_)))
        });
        let Some(v) = self.ec2.volume(&r.volume_id).await.map_err(cloud)? else {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                r.volume_id
            )));
        };
        if c.limit_bytes > 0 && v.size_gib * GIB > c.limit_bytes {
            return Err(Status::out_of_range(format!(
                "volume {} is already {} GiB, above limit_bytes {}",
                v.id, v.size_gib, c.limit_bytes
            )));
        }
        if v.size_gib < want {
            if let Some(t) = params::type_limits(&v.volume_type)
                && want > t.max_gib
            {
                return Err(Status::out_of_range(format!(
                    "{} volumes go up to {} GiB, not {want}",
                    t.name, t.max_gib
                )));
            }
            self.coalescer
                .run(
                    &v.id,
                    Change {
                        size: Some(want),
                        ..Change::default()
                    },
                )
                .await?;
            tracing::info!(volume = %r.volume_id, size_gib = want, "ControllerExpandVolume");
        }
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: v.size_gib.max(want) * GIB,
            node_expansion_required: !block,
        }))
    }

    async fn controller_get_volume(
        &self,
        _request: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerGetVolume is not offered (GET_VOLUME is not advertised)",
        ))
    }

    async fn controller_modify_volume(
        &self,
        request: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        let r = request.into_inner();
        need(&r.volume_id, "volume_id")?;
        let m = params::modification(&map(&r.mutable_parameters)).map_err(bad_param)?;
        let Some(v) = self.ec2.volume(&r.volume_id).await.map_err(cloud)? else {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                r.volume_id
            )));
        };
        let change = Change {
            size: None,
            ty: m.volume_type,
            iops: m.iops,
            throughput: m.throughput,
        };
        // Checked before anything changes, so a refusal leaves the volume as it was.
        if let Some(t) = params::type_limits(change.ty.unwrap_or(&v.volume_type)) {
            if change.iops.is_some() && t.iops.is_none() {
                return Err(Status::invalid_argument(format!(
                    "parameter iops: {} volumes take no IOPS figure",
                    t.name
                )));
            }
            if change.throughput.is_some() && t.throughput.is_none() {
                return Err(Status::invalid_argument(format!(
                    "parameter throughput: {} volumes take no throughput figure",
                    t.name
                )));
            }
        }
        if !m.delete_tags.is_empty() {
            self.ec2
                .delete_tags(&v.id, &m.delete_tags)
                .await
                .map_err(cloud)?;
        }
        if !m.add_tags.is_empty() {
            self.ec2
                .create_tags(&v.id, &m.add_tags)
                .await
                .map_err(cloud)?;
        }
        if change != Change::default() {
            self.coalescer.run(&v.id, change.clone()).await?;
            tracing::info!(volume = %v.id, ?change, "ControllerModifyVolume");
        }
        Ok(Response::new(ControllerModifyVolumeResponse {}))
    }
}

/// One volume's requested change: what ControllerExpandVolume and ControllerModifyVolume ask.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub size: Option<i64>,
    pub ty: Option<&'static str>,
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
}

/// Folds `b` into `a`: sizes take the larger; two different values for another field conflict.
pub fn merge(a: &mut Change, b: &Change) -> Result<(), String> {
    a.size = a.size.max(b.size);
    fn one<T: PartialEq + Copy + std::fmt::Debug>(
        what: &str,
        x: &mut Option<T>,
        y: Option<T>,
    ) -> Result<(), String> {
        match (*x, y) {
            (Some(p), Some(q)) if p != q => Err(format!(
                "{what} {q:?} conflicts with {p:?} requested at the same time"
            )),
            (None, Some(q)) => {
                *x = Some(q);
                Ok(())
            }
            _ => Ok(()),
        }
    }
    one("type", &mut a.ty, b.ty)?;
    one("iops", &mut a.iops, b.iops)?;
    one("throughput", &mut a.throughput, b.throughput)
}

/// What of `c` differs from the volume as it is (EC2 refuses a no-op, and every modification
/// starts its cooldown). A type change resends IOPS/throughput, which EC2 drops otherwise.
pub fn delta(v: &Volume, c: &Change) -> Change {
    let ty = c.ty.filter(|t| *t != v.volume_type);
    Change {
        size: c.size.filter(|s| *s > v.size_gib),
        ty,
        iops: c.iops.filter(|i| Some(*i) != v.iops || ty.is_some()),
        throughput: c
            .throughput
            .filter(|t| Some(*t) != v.throughput || ty.is_some()),
    }
}

struct Pending {
    change: Change,
    waiters: Vec<tokio::sync::oneshot::Sender<Result<(), Status>>>,
}

/// Merges the expansions and modifications of one volume that arrive within `window` into one
/// EC2 ModifyVolume (EC2 allows one modification per volume every few hours).
#[derive(Clone)]
pub struct Coalescer {
    ec2: Ec2,
    waits: Waits,
    pending: std::sync::Arc<tokio::sync::Mutex<HashMap<String, Pending>>>,
}

impl Coalescer {
    pub fn new(ec2: Ec2, waits: Waits) -> Coalescer {
        Coalescer {
            ec2,
            waits,
            pending: Default::default(),
        }
    }

    /// Joins (or opens) the volume's batch and waits for its outcome.
    pub async fn run(&self, id: &str, change: Change) -> Result<(), Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut p = self.pending.lock().await;
            match p.get_mut(id) {
                Some(batch) => {
                    // Into a copy: a refused change must leave the batch as it was.
                    let mut merged = batch.change.clone();
                    merge(&mut merged, &change).map_err(Status::aborted)?;
                    batch.change = merged;
                    batch.waiters.push(tx);
                    false
                }
                None => {
                    p.insert(
                        id.to_string(),
                        Pending {
                            change,
                            waiters: vec![tx],
                        },
                    );
                    true
                }
            }
        };
        if lead {
            // On a task of its own: the batch finishes even if this caller goes away.
            let me = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(me.waits.coalesce).await;
                let Some(batch) = me.pending.lock().await.remove(&id) else {
                    return;
                };
                let r = me.apply(&id, &batch.change).await;
                for w in batch.waiters {
                    let _ = w.send(r.clone());
                }
            });
        }
        rx.await
            .map_err(|_| Status::internal("the modification task ended without an answer"))?
    }

    async fn settled(&self, id: &str, done: &[&str]) -> Result<(), Status> {
        let what = format!("the modification of {id} settling");
        poll(&what, self.waits.modify, self.waits.first_poll, || async {
            let m = self.ec2.modification(id).await.map_err(cloud)?;
            Ok(m.as_ref()
                .is_none_or(|m| done.contains(&m.state.as_str()))
                .then_some(()))
        })
        .await
    }

    async fn apply(&self, id: &str, c: &Change) -> Result<(), Status> {
        // A modification still running must finish before EC2 takes another.
        self.settled(id, &["completed", "failed"]).await?;
        let Some(v) = self.ec2.volume(id).await.map_err(cloud)? else {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        };
        let d = delta(&v, c);
        if d == Change::default() {
            return Ok(());
        }
        self.ec2
            .modify(id, d.size, d.ty, d.iops, d.throughput)
            .await
            .map_err(|e| match e.code.as_str() {
                "VolumeModificationRateExceeded" => Status::unavailable(e.to_string()),
                c if c.starts_with("InvalidParameter") || c == "MissingParameter" => {
                    Status::invalid_argument(e.to_string())
                }
                _ if e.is_not_found() => Status::not_found(e.to_string()),
                _ => cloud(e),
            })?;
        // The new size and performance apply from `optimizing` on.
        self.settled(id, &["optimizing", "completed"]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol() -> Volume {
        Volume {
            id: "vol-1".into(),
            size_gib: 10,
            az: "us-east-1a".into(),
            state: "in-use".into(),
            volume_type: "gp3".into(),
            iops: Some(3000),
            throughput: Some(125),
            snapshot_id: None,
            attachments: vec![],
            tags: Default::default(),
        }
    }

    #[test]
    fn merging_changes() {
        let mut a = Change {
            size: Some(20),
            ..Change::default()
        };
        merge(
            &mut a,
            &Change {
                throughput: Some(200),
                ..Change::default()
            },
        )
        .expect("merge");
        merge(
            &mut a,
            &Change {
                size: Some(15),
                ..Change::default()
            },
        )
        .expect("smaller size");
        assert_eq!(
            a,
            Change {
                size: Some(20),
                throughput: Some(200),
                ..Change::default()
            }
        );
        let e = merge(
            &mut a,
            &Change {
                throughput: Some(300),
                ..Change::default()
            },
        );
        assert!(e.is_err_and(|m| m.contains("throughput")));
        merge(
            &mut a,
            &Change {
                throughput: Some(200),
                ..Change::default()
            },
        )
        .expect("same value");
    }

    #[test]
    fn only_differences_go_to_ec2() {
        let v = vol();
        let cases = [
            (
                Change {
                    size: Some(10),
                    ..Change::default()
                },
                Change::default(),
            ),
            (
                Change {
                    size: Some(5),
                    ..Change::default()
                },
                Change::default(),
            ),
            (
                Change {
                    size: Some(20),
                    ..Change::default()
                },
                Change {
                    size: Some(20),
                    ..Change::default()
                },
            ),
            (
                Change {
                    ty: Some("gp3"),
                    iops: Some(3000),
                    ..Change::default()
                },
                Change::default(),
            ),
            (
                Change {
                    iops: Some(4000),
                    ..Change::default()
                },
                Change {
                    iops: Some(4000),
                    ..Change::default()
                },
            ),
            (
                Change {
                    ty: Some("io2"),
                    iops: Some(3000),
                    ..Change::default()
                },
                Change {
                    ty: Some("io2"),
                    iops: Some(3000),
                    ..Change::default()
                },
            ),
        ];
        for (c, want) in cases {
            assert_eq!(delta(&v, &c), want, "{c:?}");
        }
    }

    #[test]
    fn tokens_and_zones() {
        assert_eq!(client_token("pvc-1", 0).len(), 64);
        assert_eq!(client_token("pvc-1", 0), client_token("pvc-1", 0));
        assert_ne!(client_token("pvc-1", 0), client_token("pvc-1", 1));
        let t = |k: &str, z: &str| Topology {
            segments: [(k.to_string(), z.to_string())].into_iter().collect(),
        };
        let req = TopologyRequirement {
            requisite: vec![t("topology.ebs.csi.aws.com/zone", "us-east-1b")],
            preferred: vec![t("topology.kubernetes.io/zone", "us-east-1c")],
        };
        assert_eq!(zone_of(Some(&req)).as_deref(), Some("us-east-1c"));
        let req = TopologyRequirement {
            requisite: vec![t("topology.ebs.csi.aws.com/zone", "us-east-1b")],
            preferred: vec![t("other", "x")],
        };
        assert_eq!(zone_of(Some(&req)).as_deref(), Some("us-east-1b"));
        assert_eq!(zone_of(None), None);
    }
}
