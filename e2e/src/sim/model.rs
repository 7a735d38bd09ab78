//! Plain data of the simulated VPC: the resources EC2 keeps, with their in-progress states.

use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

pub type Tags = BTreeMap<String, String>;

/// How long each in-progress state lasts. All may be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Timing {
    /// ENI and volume `attaching`.
    pub attach_ms: u64,
    /// ENI and volume `detaching`.
    pub detach_ms: u64,
    /// Volume `creating`.
    pub create_ms: u64,
    /// Volume modification `modifying` (then `optimizing` for the same again).
    pub modify_ms: u64,
    /// Snapshot `pending`.
    pub snapshot_ms: u64,
    /// How far IMDS's view of ENIs and IPs lags EC2's state.
    pub imds_lag_ms: u64,
}

impl Timing {
    /// Fast but non-zero transitions, for tests and `make demo --timing quick`: callers must
    /// still poll, as on EC2.
    pub fn quick() -> Timing {
        Timing {
            attach_ms: 50,
            detach_ms: 50,
            create_ms: 30,
            modify_ms: 50,
            snapshot_ms: 50,
            imds_lag_ms: 100,
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            attach_ms: 300,
            detach_ms: 300,
            create_ms: 200,
            modify_ms: 300,
            snapshot_ms: 300,
            imds_lag_ms: 200,
        }
    }
}

impl Timing {
    pub fn zero() -> Self {
        Timing {
            attach_ms: 0,
            detach_ms: 0,
            create_ms: 0,
            modify_ms: 0,
            snapshot_ms: 0,
            imds_lag_ms: 0,
        }
    }
    pub fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

#[derive(Debug, Clone)]
pub struct Vpc {
    pub id: String,
    pub cidr: Ipv4Net,
    pub tags: Tags,
}

#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    pub cidr: Ipv4Net,
    pub az: String,
    pub az_id: String,
    /// Every address in use in the subnet: primary and secondary IPs and all 16 of each prefix.
    pub used: BTreeSet<Ipv4Addr>,
    pub tags: Tags,
}

impl Subnet {
    /// The VPC router: the first host address (`.1`).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }
    /// AWS reserves the first four addresses and the last one.
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(self.cidr.network());
        let b = u32::from(self.cidr.broadcast());
        let i = u32::from(ip);
        i < n + 4 || i == b
    }
    pub fn total_usable(&self) -> u64 {
        (1u64 << (32 - self.cidr.prefix_len())).saturating_sub(5)
    }
    pub fn available(&self) -> u64 {
        self.total_usable().saturating_sub(self.used.len() as u64)
    }
}

#[derive(Debug, Clone)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub vpc_id: String,
    pub tags: Tags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Running,
    Terminated,
}

impl InstanceState {
    pub fn name(self) -> &'static str {
        match self {
            InstanceState::Running => "running",
            InstanceState::Terminated => "terminated",
        }
    }
    pub fn code(self) -> i32 {
        match self {
            InstanceState::Running => 16,
            InstanceState::Terminated => 48,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub image_id: String,
    pub az: String,
    pub subnet_id: String,
    pub vpc_id: String,
    pub private_ip: Ipv4Addr,
    pub primary_eni: String,
    pub security_groups: Vec<String>,
    pub state: InstanceState,
    pub launch_time: SystemTime,
    pub root_volume: Option<String>,
    pub tags: Tags,
}

/// Progress of an attachment (ENI or volume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachState {
    Attaching,
    Attached,
    Detaching,
}

impl AttachState {
    pub fn name(self) -> &'static str {
        match self {
            AttachState::Attaching => "attaching",
            AttachState::Attached => "attached",
            AttachState::Detaching => "detaching",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EniAttachment {
    pub id: String,
    pub instance_id: String,
    pub device_index: u32,
    pub network_card_index: u32,
    pub state: AttachState,
    pub delete_on_termination: bool,
    pub attach_time: SystemTime,
    /// When the current in-progress state ends.
    pub due: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct Eni {
    pub id: String,
    pub subnet_id: String,
    pub vpc_id: String,
    pub az: String,
    pub description: String,
    pub groups: Vec<String>,
    pub mac: String,
    /// Primary first.
    pub private_ips: Vec<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Net>,
    pub attachment: Option<EniAttachment>,
    pub source_dest_check: bool,
    pub requester_managed: bool,
    pub tags: Tags,
}

impl Eni {
    pub fn primary_ip(&self) -> Ipv4Addr {
        self.private_ips[0]
    }
    pub fn status(&self) -> &'static str {
        match &self.attachment {
            None => "available",
            Some(a) => match a.state {
                AttachState::Attaching => "attaching",
                AttachState::Attached => "in-use",
                AttachState::Detaching => "detaching",
            },
        }
    }
    /// Slots counted against `Ipv4AddressesPerInterface` (IPs and /28 prefixes alike).
    pub fn address_slots(&self) -> usize {
        self.private_ips.len() + self.prefixes.len()
    }
    /// Whether `ip` belongs to this ENI (an IP or inside a prefix).
    pub fn owns(&self, ip: Ipv4Addr) -> bool {
        self.private_ips.contains(&ip) || self.prefixes.iter().any(|p| p.contains(&ip))
    }
    pub fn attached_to(&self, instance: &str) -> bool {
        self.attachment
            .as_ref()
            .is_some_and(|a| a.instance_id == instance)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeState {
    Creating,
    Available,
    InUse,
}

impl VolumeState {
    pub fn name(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Available => "available",
            VolumeState::InUse => "in-use",
        }
    }
}

#[derive(Debug, Clone)]
pub struct VolumeAttachment {
    pub instance_id: String,
    pub device: String,
    pub state: AttachState,
    pub attach_time: SystemTime,
    pub delete_on_termination: bool,
    pub due: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct VolumeSpec {
    pub size_gib: u32,
    pub volume_type: String,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Volume {
    pub id: String,
    pub spec: VolumeSpec,
    pub az: String,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub multi_attach: bool,
    pub state: VolumeState,
    pub create_time: SystemTime,
    pub due: Option<Instant>,
    pub attachments: Vec<VolumeAttachment>,
    /// The instance's boot volume: never hot-plugged.
    pub is_root: bool,
    pub tags: Tags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModState {
    Modifying,
    Optimizing,
    Completed,
}

impl ModState {
    pub fn name(self) -> &'static str {
        match self {
            ModState::Modifying => "modifying",
            ModState::Optimizing => "optimizing",
            ModState::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Modification {
    pub volume_id: String,
    pub state: ModState,
    pub original: VolumeSpec,
    pub target: VolumeSpec,
    pub start_time: SystemTime,
    pub end_time: Option<SystemTime>,
    pub progress: u8,
    pub due: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    Pending,
    Completed,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: String,
    pub volume_id: String,
    pub size_gib: u32,
    pub description: String,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub state: SnapshotState,
    pub start_time: SystemTime,
    pub due: Option<Instant>,
    pub tags: Tags,
}

impl Snapshot {
    pub fn state_name(&self) -> &'static str {
        match self.state {
            SnapshotState::Pending => "pending",
            SnapshotState::Completed => "completed",
        }
    }
    pub fn progress(&self) -> &'static str {
        match self.state {
            SnapshotState::Pending => "0%",
            SnapshotState::Completed => "100%",
        }
    }
}

/// What the node side (links, fabric routes, loop devices, backing files) must do after a state
/// change. Emitted by the core, applied by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    EniAttached {
        instance_id: String,
        eni_id: String,
        mac: String,
        device_index: u32,
    },
    EniDetached {
        instance_id: String,
        eni_id: String,
        mac: String,
        device_index: u32,
    },
    /// Some attached ENI's IPs or prefixes changed: fabric routes must be reconciled.
    AddressesChanged,
    /// An ENI's source/destination check was switched.
    SourceDestCheckChanged {
        eni_id: String,
        enabled: bool,
    },
    VolumeCreated {
        volume_id: String,
        size_gib: u32,
        from_snapshot: Option<String>,
    },
    VolumeDeleted {
        volume_id: String,
    },
    VolumeAttached {
        instance_id: String,
        volume_id: String,
        device: String,
    },
    VolumeDetached {
        instance_id: String,
        volume_id: String,
        device: String,
    },
    VolumeResized {
        volume_id: String,
        size_gib: u32,
    },
    SnapshotStarted {
        snapshot_id: String,
        volume_id: String,
    },
    SnapshotDeleted {
        snapshot_id: String,
    },
}

/// What one instance's IMDS shows about one attached ENI.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImdsEni {
    pub mac: String,
    pub eni_id: String,
    pub device_number: u32,
    pub network_card: u32,
    pub local_ipv4s: Vec<Ipv4Addr>,
    pub ipv4_prefixes: Vec<Ipv4Net>,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    pub vpc_id: String,
    pub vpc_cidrs: Vec<Ipv4Net>,
    pub security_group_ids: Vec<String>,
    pub owner_id: String,
}

/// Everything IMDS serves for an instance at one moment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImdsView {
    pub instance_id: String,
    pub instance_type: String,
    pub image_id: String,
    pub account_id: String,
    pub az: String,
    pub az_id: String,
    pub region: String,
    pub local_ipv4: Ipv4Addr,
    pub mac: String,
    pub security_group_names: Vec<String>,
    pub enis: Vec<ImdsEni>,
    /// `block-device-mapping/`: boot-time mappings only, as on EC2.
    pub block_devices: Vec<(String, String)>,
}
