//! EBS: volumes, attachments, modifications and snapshots, with EC2's per-type limits.

use super::error::{ApiError, ApiResult};
use super::*;

/// EC2's limits for one volume type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeLimits {
    pub name: &'static str,
    pub min_gib: u32,
    pub max_gib: u32,
    /// (min, max, max per GiB, default); `None`: the type takes no Iops parameter.
    pub iops: Option<(u32, u32, u32, Option<u32>)>,
    /// (min, max, default) MiB/s; only gp3.
    pub throughput: Option<(u32, u32, u32)>,
    pub multi_attach: bool,
}

pub const VOLUME_TYPES: &[TypeLimits] = &[
    TypeLimits {
        name: "gp2",
        min_gib: 1,
        max_gib: 16384,
        iops: None,
        throughput: None,
        multi_attach: false,
    },
    TypeLimits {
        name: "gp3",
        min_gib: 1,
        max_gib: 16384,
        iops: Some((3000, 16000, 500, Some(3000))),
        throughput: Some((125, 1000, 125)),
        multi_attach: false,
    },
    TypeLimits {
        name: "io1",
        min_gib: 4,
        max_gib: 16384,
        iops: Some((100, 64000, 50, None)),
        throughput: None,
        multi_attach: true,
    },
    TypeLimits {
        name: "io2",
        min_gib: 4,
        max_gib: 65536,
        iops: Some((100, 256000, 1000, None)),
        throughput: None,
        multi_attach: true,
    },
    TypeLimits {
        name: "st1",
        min_gib: 125,
        max_gib: 16384,
        iops: None,
        throughput: None,
        multi_attach: false,
    },
    TypeLimits {
        name: "sc1",
        min_gib: 125,
        max_gib: 16384,
        iops: None,
        throughput: None,
        multi_attach: false,
    },
    TypeLimits {
        name: "standard",
        min_gib: 1,
        max_gib: 1024,
        iops: None,
        throughput: None,
        multi_attach: false,
    },
];

pub fn type_limits(name: &str) -> ApiResult<&'static TypeLimits> {
    VOLUME_TYPES
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| ApiError::invalid_param(format!("Value ({name}) for parameter volumeType is invalid. Valid values: gp2, gp3, io1, io2, st1, sc1, standard")))
}

/// Fills defaults into a requested spec and checks it against the type's limits.
pub fn validate_spec(
    size_gib: u32,
    volume_type: &str,
    iops: Option<u32>,
    throughput: Option<u32>,
) -> ApiResult<VolumeSpec> {
    let t = type_limits(volume_type)?;
    if size_gib < t.min_gib {
        return Err(ApiError::invalid_param(format!(
            "Volume of size {size_gib}GB is smaller than the minimum size of {}GB for volume type {}",
            t.min_gib, t.name
        )));
    }
    if size_gib > t.max_gib {
        return Err(ApiError::invalid_param(format!(
            "Volume of {size_gib}GiB is too large for volume type {}; maximum is {}GiB",
            t.name, t.max_gib
        )));
    }
    let iops = match (t.iops, iops) {
        (None, Some(_)) => {
            return Err(ApiError::combination(format!(
                "The parameter iops is not supported for {} volumes.",
                t.name
            )));
        }
        (None, None) => None,
        (Some((_, _, _, None)), None) => return Err(ApiError::missing("iops")),
        (Some((_, _, _, Some(d))), None) => Some(d),
        (Some((min, max, per_gib, default)), Some(v)) => {
            if v < min {
                return Err(ApiError::invalid_param(format!(
                    "Volume iops of {v} is too low; minimum is {min}"
                )));
            }
            if v > max {
                return Err(ApiError::invalid_param(format!(
                    "Volume iops of {v} is too high; maximum is {max}"
                )));
            }
            // gp3's baseline 3000 is allowed at any size; above it the ratio applies.
            if default.is_none_or(|d| v > d) && v > per_gib.saturating_mul(size_gib) {
                return Err(ApiError::invalid_param(format!(
                    "Iops to volume size ratio of {:.1} is too high; maximum is {per_gib}",
                    v as f64 / size_gib as f64
                )));
            }
            Some(v)
        }
    };
    let throughput = match (t.throughput, throughput) {
        (None, Some(_)) => {
            return Err(ApiError::combination(format!(
                "The parameter throughput is not supported for {} volumes.",
                t.name
            )));
        }
        (None, None) => None,
        (Some((_, _, d)), None) => Some(d),
        (Some((min, max, _)), Some(v)) => {
            if v < min || v > max {
                return Err(ApiError::invalid_param(format!(
                    "Throughput of {v} MiB/s is invalid; it must be between {min} and {max}"
                )));
            }
            let i = iops.unwrap_or(3000);
            if v as f64 > i as f64 * 0.25 {
                return Err(ApiError::invalid_param(format!(
                    "Throughput to iops ratio of {:.2} is too high; maximum is 0.25 MiB/s per iops",
                    v as f64 / i as f64
                )));
            }
            Some(v)
        }
    };
    Ok(VolumeSpec {
        size_gib,
        volume_type: t.name.to_string(),
        iops,
        throughput,
    })
}

/// `CreateVolume`.
#[derive(Debug, Clone, Default)]
pub struct CreateVolume {
    pub size_gib: Option<u32>,
    pub volume_type: Option<String>,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub az: Option<String>,
    pub multi_attach: bool,
    pub tags: Tags,
    pub client_token: Option<String>,
    pub dry_run: bool,
}

/// Attachment details in `AttachVolume` / `DetachVolume` replies.
#[derive(Debug, Clone)]
pub struct AttachmentReply {
    pub volume_id: String,
    pub instance_id: String,
    pub device: String,
    pub state: &'static str,
    pub attach_time: SystemTime,
}

/// Valid Linux EBS device names: `/dev/sd[a-z]`, `/dev/xvd[a-z]`, and two-letter forms.
pub fn valid_device_name(dev: &str) -> bool {
    let Some(rest) = dev.strip_prefix("/dev/") else {
        return false;
    };
    let letters = rest.strip_prefix("xvd").or_else(|| rest.strip_prefix("sd"));
    letters.is_some_and(|l| (1..=2).contains(&l.len()) && l.chars().all(|c| c.is_ascii_lowercase()))
}

impl Sim {
    pub fn create_volume(&mut self, now: Instant, req: CreateVolume) -> ApiResult<String> {
        let fingerprint = {
            let mut r = req.clone();
            r.client_token = None;
            r.dry_run = false;
            format!("{r:?}")
        };
        if let Some(id) = self.check_token(req.client_token.as_deref(), &fingerprint)?
            && !req.dry_run
        {
            return Ok(id);
        }
        let az = req
            .az
            .clone()
            .ok_or_else(|| ApiError::missing("AvailabilityZone"))?;
        if self.zone_id(&az).is_none() {
            return Err(ApiError::invalid_param(format!(
                "Invalid availability zone: [{az}]"
            )));
        }
        let snap = match &req.snapshot_id {
            Some(s) => {
                let snap = self.snapshot(s)?;
                if snap.state != SnapshotState::Completed {
                    return Err(ApiError::new(
                        "IncorrectState",
                        format!("Snapshot is in invalid state - {}", snap.state_name()),
                    ));
                }
                Some(snap.clone())
            }
            None => None,
        };
        let size = match (req.size_gib, &snap) {
            (Some(s), Some(sn)) if s < sn.size_gib => {
                return Err(ApiError::invalid_param(format!(
                    "Volume of size {s}GB is smaller than snapshot '{}', expect size>= {}GB",
                    sn.id, sn.size_gib
                )));
            }
            (Some(s), _) => s,
            (None, Some(sn)) => sn.size_gib,
            (None, None) => return Err(ApiError::missing("size")),
        };
        let vtype = req.volume_type.clone().unwrap_or_else(|| "gp2".into());
        let spec = validate_spec(size, &vtype, req.iops, req.throughput)?;
        if req.multi_attach && !type_limits(&vtype)?.multi_attach {
            return Err(ApiError::invalid_param(format!(
                "Multi-Attach is not supported for {vtype} volumes"
            )));
        }
        if req.kms_key_id.is_some()
            && req.encrypted != Some(true)
            && !snap.as_ref().is_some_and(|s| s.encrypted)
        {
            return Err(ApiError::new(
                "InvalidParameterDependency",
                "The parameter KmsKeyId requires the parameter Encrypted to be set.",
            ));
        }
        if req.dry_run {
            return Err(dry_run_error());
        }
        let encrypted =
            req.encrypted.unwrap_or(false) || snap.as_ref().is_some_and(|s| s.encrypted);
        let kms = if encrypted {
            Some(
                req.kms_key_id
                    .clone()
                    .or_else(|| snap.as_ref().and_then(|s| s.kms_key_id.clone()))
                    .unwrap_or_else(|| {
                        format!(
                            "arn:aws:kms:{}:{}:key/00000000-0000-4000-8000-00000000ebs0",
                            self.cfg.region, self.cfg.account_id
                        )
                    }),
            )
        } else {
            None
        };
        let id = self.new_id("vol");
        let due = self.due_in(now, self.timing.create_ms);
        self.volumes.insert(
            id.clone(),
            Volume {
                id: id.clone(),
                spec,
                az,
                encrypted,
                kms_key_id: kms,
                snapshot_id: req.snapshot_id.clone(),
                multi_attach: req.multi_attach,
                state: VolumeState::Creating,
                create_time: SystemTime::now(),
                due,
                attachments: vec![],
                is_root: false,
                tags: req.tags.clone(),
            },
        );
        self.emit(Event::VolumeCreated {
            volume_id: id.clone(),
            size_gib: size,
            from_snapshot: req.snapshot_id.clone(),
        });
        self.remember_token(req.client_token.as_deref(), fingerprint, &id);
        self.advance(now);
        Ok(id)
    }

    pub fn delete_volume(&mut self, id: &str) -> ApiResult<()> {
        let v = self.volume(id)?;
        if !v.attachments.is_empty() {
            return Err(ApiError::new(
                "VolumeInUse",
                format!(
                    "Volume {id} is currently attached to {}",
                    v.attachments[0].instance_id
                ),
            ));
        }
        self.volumes.remove(id);
        self.modifications.remove(id);
        self.emit(Event::VolumeDeleted {
            volume_id: id.to_string(),
        });
        Ok(())
    }

    /// EBS attachments on an instance, counted as EC2 does for the instance type's limit.
    fn ebs_slots_used(&self, instance_id: &str, shared: bool) -> u32 {
        let vols = self
            .volumes
            .values()
            .filter(|v| v.attachments.iter().any(|a| a.instance_id == instance_id))
            .count() as u32;
        let enis = self
            .enis
            .values()
            .filter(|e| e.attached_to(instance_id))
            .count() as u32;
        if shared {
            vols + enis.saturating_sub(1)
        } else {
            vols
        }
    }

    pub fn attach_volume(
        &mut self,
        now: Instant,
        volume_id: &str,
        instance_id: &str,
        device: &str,
    ) -> ApiResult<AttachmentReply> {
        let inst = self.instance(instance_id)?.clone();
        let v = self.volume(volume_id)?.clone();
        if !valid_device_name(device) {
            return Err(ApiError::invalid_param(format!(
                "Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name."
            )));
        }
        if inst.state != InstanceState::Running {
            return Err(ApiError::new(
                "IncorrectInstanceState",
                format!("Instance '{instance_id}' is not 'running'."),
            ));
        }
        if v.state == VolumeState::Creating {
            return Err(ApiError::new(
                "IncorrectState",
                format!("Volume '{volume_id}' is not 'available'."),
            ));
        }
        if v.az != inst.az {
            return Err(ApiError::new(
                "InvalidVolume.ZoneMismatch",
                format!(
                    "The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'"
                ),
            ));
        }
        if v.attachments.iter().any(|a| a.instance_id == instance_id) {
            return Err(ApiError::new(
                "VolumeInUse",
                format!("{volume_id} is already attached to {instance_id}"),
            ));
        }
        if !v.attachments.is_empty() && !v.multi_attach {
            return Err(ApiError::new(
                "VolumeInUse",
                format!("{volume_id} is already attached to an instance"),
            ));
        }
        let dev_taken = self.volumes.values().any(|o| {
            o.attachments
                .iter()
                .any(|a| a.instance_id == instance_id && a.device == device)
        });
        if dev_taken {
            return Err(ApiError::invalid_param(format!(
                "Attachment point {device} is already in use"
            )));
        }
        let t = self.instance_type(&inst.instance_type)?;
        let shared = t.attachment_limit_type == nodewire_aws::limits::AttachmentLimitType::Shared;
        if self.ebs_slots_used(instance_id, shared) + 1 > t.maximum_ebs_attachments {
            return Err(ApiError::new(
                "AttachmentLimitExceeded",
                format!(
                    "Volume attachment limit exceeded for instance {instance_id} ({})",
                    t.name
                ),
            ));
        }
        let due = self.due_in(now, self.timing.attach_ms);
        let wall = SystemTime::now();
        let vol = self.volumes.get_mut(volume_id).expect("looked up above");
        vol.state = VolumeState::InUse;
        vol.attachments.push(VolumeAttachment {
            instance_id: instance_id.to_string(),
            device: device.to_string(),
            state: AttachState::Attaching,
            attach_time: wall,
            delete_on_termination: false,
            due,
        });
        self.advance(now);
        Ok(AttachmentReply {
            volume_id: volume_id.into(),
            instance_id: instance_id.into(),
            device: device.into(),
            state: "attaching",
            attach_time: wall,
        })
    }

    pub fn detach_volume(
        &mut self,
        now: Instant,
        volume_id: &str,
        instance_id: Option<&str>,
        device: Option<&str>,
        _force: bool,
    ) -> ApiResult<AttachmentReply> {
        let v = self.volume(volume_id)?.clone();
        if v.attachments.is_empty() {
            return Err(ApiError::new(
                "IncorrectState",
                format!("Volume '{volume_id}' is in the 'available' state."),
            ));
        }
        let idx = v
            .attachments
            .iter()
            .position(|a| {
                instance_id.is_none_or(|i| a.instance_id == i)
                    && device.is_none_or(|d| a.device == d)
            })
            .ok_or_else(|| {
                ApiError::new(
                    "InvalidAttachment.NotFound",
                    format!(
                        "The volume {volume_id} is not attached to instance {}",
                        instance_id.unwrap_or("(any)")
                    ),
                )
            })?;
        if v.is_root {
            return Err(ApiError::new(
                "OperationNotPermitted",
                format!(
                    "The volume {volume_id} is the root device of a running instance and cannot be detached."
                ),
            ));
        }
        let due = self.due_in(now, self.timing.detach_ms);
        let vol = self.volumes.get_mut(volume_id).expect("looked up above");
        let att = &mut vol.attachments[idx];
        let reply = AttachmentReply {
            volume_id: volume_id.into(),
            instance_id: att.instance_id.clone(),
            device: att.device.clone(),
            state: "detaching",
            attach_time: att.attach_time,
        };
        match att.state {
            // Never reached the node: drop it without a hot-unplug.
            AttachState::Attaching => {
                vol.attachments.remove(idx);
                if vol.attachments.is_empty() {
                    vol.state = VolumeState::Available;
                }
            }
            AttachState::Attached => {
                att.state = AttachState::Detaching;
                att.due = due;
            }
            AttachState::Detaching => {}
        }
        self.advance(now);
        Ok(reply)
    }

    pub fn modify_volume(
        &mut self,
        now: Instant,
        volume_id: &str,
        size: Option<u32>,
        volume_type: Option<String>,
        iops: Option<u32>,
        throughput: Option<u32>,
    ) -> ApiResult<Modification> {
        let v = self.volume(volume_id)?.clone();
        if v.state == VolumeState::Creating {
            return Err(ApiError::new(
                "IncorrectState",
                format!("Volume '{volume_id}' is still being created"),
            ));
        }
        if let Some(m) = self.modifications.get(volume_id).and_then(|ms| ms.last())
            && m.state != ModState::Completed
        {
            return Err(ApiError::new(
                "VolumeModificationRateExceeded",
                format!(
                    "A modification of volume {volume_id} is still in progress ({}).",
                    m.state.name()
                ),
            ));
        }
        if size.is_none() && volume_type.is_none() && iops.is_none() && throughput.is_none() {
            return Err(ApiError::missing("Size, VolumeType, Iops or Throughput"));
        }
        let new_type = volume_type
            .clone()
            .unwrap_or_else(|| v.spec.volume_type.clone());
        let new_size = size.unwrap_or(v.spec.size_gib);
        if new_size < v.spec.size_gib {
            return Err(ApiError::invalid_param(format!(
                "New size cannot be smaller than existing size ({new_size}GiB < {}GiB)",
                v.spec.size_gib
            )));
        }
        let type_changed = new_type != v.spec.volume_type;
        let keep_iops = if type_changed { None } else { v.spec.iops };
        let keep_tp = if type_changed {
            None
        } else {
            v.spec.throughput
        };
        let lim = type_limits(&new_type)?;
        let iops = iops.or(if lim.iops.is_some() { keep_iops } else { None });
        let throughput = throughput.or(if lim.throughput.is_some() {
            keep_tp
        } else {
            None
        });
        let target = validate_spec(new_size, &new_type, iops, throughput)?;
        if target == v.spec {
            return Err(ApiError::invalid_param(format!(
                "New size, type, iops and throughput of volume {volume_id} are equal to the current ones"
            )));
        }
        let m = Modification {
            volume_id: volume_id.to_string(),
            state: ModState::Modifying,
            original: v.spec.clone(),
            target,
            start_time: SystemTime::now(),
            end_time: None,
            progress: 0,
            due: self.due_in(now, self.timing.modify_ms),
        };
        self.modifications
            .entry(volume_id.to_string())
            .or_default()
            .push(m.clone());
        self.advance(now);
        Ok(self
            .modifications
            .get(volume_id)
            .and_then(|ms| ms.last())
            .cloned()
            .unwrap_or(m))
    }

    pub fn create_snapshot(
        &mut self,
        now: Instant,
        volume_id: &str,
        description: String,
        tags: Tags,
    ) -> ApiResult<String> {
        let v = self.volume(volume_id)?.clone();
        if v.state == VolumeState::Creating {
            return Err(ApiError::new(
                "IncorrectState",
                format!("Volume '{volume_id}' is still being created"),
            ));
        }
        let id = self.new_id("snap");
        let due = self.due_in(now, self.timing.snapshot_ms);
        self.snapshots.insert(
            id.clone(),
            Snapshot {
                id: id.clone(),
                volume_id: volume_id.to_string(),
                size_gib: v.spec.size_gib,
                description,
                encrypted: v.encrypted,
                kms_key_id: v.kms_key_id.clone(),
                state: SnapshotState::Pending,
                start_time: SystemTime::now(),
                due,
                tags,
            },
        );
        self.emit(Event::SnapshotStarted {
            snapshot_id: id.clone(),
            volume_id: volume_id.to_string(),
        });
        self.advance(now);
        Ok(id)
    }

    pub fn delete_snapshot(&mut self, id: &str) -> ApiResult<()> {
        self.snapshot(id)?;
        self.snapshots.remove(id);
        self.emit(Event::SnapshotDeleted {
            snapshot_id: id.to_string(),
        });
        Ok(())
    }
}

pub fn dry_run_error() -> ApiError {
    ApiError {
        code: "DryRunOperation".into(),
        message: "Request would have succeeded, but DryRun flag is set.".into(),
        status: 412,
    }
}
