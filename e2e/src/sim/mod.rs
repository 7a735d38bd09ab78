//! The emulator's pure core: EC2 state and the rules EC2 enforces on it.
//!
//! Everything here is plain data and plain functions of (state, request, `now`). No I/O: the
//! HTTP layer parses requests into calls on [`Sim`], and the runtime applies the [`Event`]s the
//! core emits (links, routes, loop devices). Time only moves when the caller passes a later `now`.

pub mod ebs;
pub mod error;
pub mod filter;
pub mod model;
pub mod net;
pub mod throttle;

use error::{ApiError, ApiResult};
pub use model::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// One `TagSpecification`: resource type and its tags.
pub type TagSpec = (String, Vec<(String, String)>);

/// The world a simulation starts with.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub region: String,
    /// (zone name, zone id), e.g. ("us-east-1a", "use1-az1"); one subnet is made per zone.
    pub zones: Vec<(String, String)>,
    pub vpc_cidr: ipnet::Ipv4Net,
    /// Prefix length of the per-zone subnets carved from the VPC CIDR.
    pub subnet_prefix_len: u8,
    pub account_id: String,
    pub seed: u64,
    pub timing: Timing,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            region: "us-east-1".into(),
            zones: vec![
                ("us-east-1a".into(), "use1-az1".into()),
                ("us-east-1b".into(), "use1-az2".into()),
                ("us-east-1c".into(), "use1-az4".into()),
            ],
            vpc_cidr: "10.90.0.0/16".parse().expect("literal CIDR"),
            subnet_prefix_len: 20,
            account_id: "123456789012".into(),
            seed: 1,
            timing: Timing::default(),
        }
    }
}

/// The simulated EC2 state of one VPC in one account and region.
pub struct Sim {
    pub cfg: SimConfig,
    pub timing: Timing,
    rng: StdRng,
    pub vpc: Vpc,
    pub subnets: BTreeMap<String, Subnet>,
    pub security_groups: BTreeMap<String, SecurityGroup>,
    pub instances: BTreeMap<String, Instance>,
    pub enis: BTreeMap<String, Eni>,
    pub volumes: BTreeMap<String, Volume>,
    pub snapshots: BTreeMap<String, Snapshot>,
    pub modifications: BTreeMap<String, Vec<Modification>>,
    /// ClientToken → (request fingerprint, resource id).
    client_tokens: HashMap<String, (String, String)>,
    macs: HashSet<String>,
    events: Vec<Event>,
    imds: HashMap<String, VecDeque<(Instant, Arc<ImdsView>)>>,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let vpc_id = gen_id(&mut rng, "vpc");
        let vpc = Vpc {
            id: vpc_id.clone(),
            cidr: cfg.vpc_cidr,
            tags: Tags::new(),
        };
        let mut subnets = BTreeMap::new();
        let cidrs = cfg
            .vpc_cidr
            .subnets(cfg.subnet_prefix_len)
            .expect("subnet prefix longer than the VPC's");
        for ((az, az_id), cidr) in cfg.zones.iter().zip(cidrs) {
            let id = gen_id(&mut rng, "subnet");
            subnets.insert(
                id.clone(),
                Subnet {
                    id,
                    vpc_id: vpc_id.clone(),
                    cidr,
                    az: az.clone(),
                    az_id: az_id.clone(),
                    used: Default::default(),
                    tags: Tags::new(),
                },
            );
        }
        let sg_id = gen_id(&mut rng, "sg");
        let mut security_groups = BTreeMap::new();
        security_groups.insert(
            sg_id.clone(),
            SecurityGroup {
                id: sg_id,
                name: "default".into(),
                description: "default VPC security group".into(),
                vpc_id: vpc_id.clone(),
                tags: Tags::new(),
            },
        );
        Sim {
            timing: cfg.timing,
            cfg,
            rng,
            vpc,
            subnets,
            security_groups,
            instances: BTreeMap::new(),
            enis: BTreeMap::new(),
            volumes: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            modifications: BTreeMap::new(),
            client_tokens: HashMap::new(),
            macs: HashSet::new(),
            events: Vec::new(),
            imds: HashMap::new(),
        }
    }

    // ----- ids, time, events -------------------------------------------------------------

    pub(crate) fn new_id(&mut self, prefix: &str) -> String {
        gen_id(&mut self.rng, prefix)
    }

    pub(crate) fn new_mac(&mut self) -> String {
        loop {
            let b: [u8; 5] = self.rng.random();
            let mac = format!(
                "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                b[0], b[1], b[2], b[3], b[4]
            );
            if self.macs.insert(mac.clone()) {
                return mac;
            }
        }
    }

    pub(crate) fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    pub(crate) fn emit(&mut self, e: Event) {
        self.events.push(e);
    }

    /// Takes the events emitted since the last call, in order.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub(crate) fn due_in(&self, now: Instant, ms: u64) -> Option<Instant> {
        Some(now + Duration::from_millis(ms))
    }

    /// The earliest moment an in-progress state ends, if any is pending.
    pub fn next_due(&self) -> Option<Instant> {
        let enis = self
            .enis
            .values()
            .filter_map(|e| e.attachment.as_ref().and_then(|a| a.due));
        let vols = self.volumes.values().flat_map(|v| {
            v.due
                .into_iter()
                .chain(v.attachments.iter().filter_map(|a| a.due))
        });
        let mods = self.modifications.values().flatten().filter_map(|m| m.due);
        let snaps = self.snapshots.values().filter_map(|s| s.due);
        enis.chain(vols).chain(mods).chain(snaps).min()
    }

    /// Ends every in-progress state due at or before `now`, oldest first, emitting events.
    pub fn advance(&mut self, now: Instant) {
        while let Some(due) = self.next_due().filter(|d| *d <= now) {
            self.complete_due(due);
        }
        self.refresh_imds(now);
    }

    fn complete_due(&mut self, due: Instant) {
        let wall = SystemTime::now();
        // ENI attachments.
        let mut detached = Vec::new();
        for eni in self.enis.values_mut() {
            let Some(att) = eni.attachment.as_mut() else {
                continue;
            };
            if att.due != Some(due) {
                continue;
            }
            att.due = None;
            match att.state {
                AttachState::Attaching => {
                    att.state = AttachState::Attached;
                    self.events.push(Event::EniAttached {
                        instance_id: att.instance_id.clone(),
                        eni_id: eni.id.clone(),
                        mac: eni.mac.clone(),
                        device_index: att.device_index,
                    });
                }
                AttachState::Detaching => detached.push(eni.id.clone()),
                AttachState::Attached => {}
            }
        }
        for id in detached {
            self.finish_eni_detach(&id);
        }
        // Volumes and their attachments.
        for vol in self.volumes.values_mut() {
            if vol.due == Some(due) {
                vol.due = None;
                if vol.state == VolumeState::Creating {
                    vol.state = VolumeState::Available;
                }
            }
            let mut gone = Vec::new();
            for (i, att) in vol.attachments.iter_mut().enumerate() {
                if att.due != Some(due) {
                    continue;
                }
                att.due = None;
                match att.state {
                    AttachState::Attaching => {
                        att.state = AttachState::Attached;
                        if !vol.is_root {
                            self.events.push(Event::VolumeAttached {
                                instance_id: att.instance_id.clone(),
                                volume_id: vol.id.clone(),
                                device: att.device.clone(),
                            });
                        }
                    }
                    AttachState::Detaching => gone.push(i),
                    AttachState::Attached => {}
                }
            }
            for i in gone.into_iter().rev() {
                let att = vol.attachments.remove(i);
                if !vol.is_root {
                    self.events.push(Event::VolumeDetached {
                        instance_id: att.instance_id,
                        volume_id: vol.id.clone(),
                        device: att.device,
                    });
                }
            }
            if vol.state == VolumeState::InUse && vol.attachments.is_empty() {
                vol.state = VolumeState::Available;
            }
        }
        // Modifications: modifying → optimizing (new size usable) → completed.
        let modify_ms = self.timing.modify_ms;
        let mut resized = Vec::new();
        for m in self.modifications.values_mut().flatten() {
            if m.due != Some(due) {
                continue;
            }
            match m.state {
                ModState::Modifying => {
                    m.state = ModState::Optimizing;
                    m.progress = 50;
                    m.due = Some(due + Duration::from_millis(modify_ms));
                    resized.push((m.volume_id.clone(), m.target.clone()));
                }
                ModState::Optimizing => {
                    m.state = ModState::Completed;
                    m.progress = 100;
                    m.end_time = Some(wall);
                    m.due = None;
                }
                ModState::Completed => m.due = None,
            }
        }
        for (vid, target) in resized {
            if let Some(v) = self.volumes.get_mut(&vid) {
                let grew = target.size_gib > v.spec.size_gib;
                v.spec = target;
                if grew {
                    self.events.push(Event::VolumeResized {
                        volume_id: vid,
                        size_gib: v.spec.size_gib,
                    });
                }
            }
        }
        for s in self.snapshots.values_mut() {
            if s.due == Some(due) {
                s.due = None;
                s.state = SnapshotState::Completed;
            }
        }
    }

    // ----- client tokens ---------------------------------------------------------------

    /// Looks a ClientToken up: `Ok(Some(id))` for a replay of the same request,
    /// `IdempotentParameterMismatch` for the same token with other parameters.
    pub(crate) fn check_token(
        &self,
        token: Option<&str>,
        fingerprint: &str,
    ) -> ApiResult<Option<String>> {
        let Some(t) = token else { return Ok(None) };
        match self.client_tokens.get(t) {
            None => Ok(None),
            Some((fp, id)) if fp == fingerprint => Ok(Some(id.clone())),
            Some(_) => Err(ApiError::new(
                "IdempotentParameterMismatch",
                format!("The client token '{t}' was already used with different parameters"),
            )),
        }
    }

    pub(crate) fn remember_token(&mut self, token: Option<&str>, fingerprint: String, id: &str) {
        if let Some(t) = token {
            self.client_tokens
                .insert(t.to_string(), (fingerprint, id.to_string()));
        }
    }

    // ----- lookups -----------------------------------------------------------------------

    pub fn instance(&self, id: &str) -> ApiResult<&Instance> {
        check_id(id, "i-", "instance")?;
        self.instances
            .get(id)
            .ok_or_else(|| ApiError::not_found("instance", id))
    }

    pub fn subnet(&self, id: &str) -> ApiResult<&Subnet> {
        check_id(id, "subnet-", "subnet")?;
        self.subnets
            .get(id)
            .ok_or_else(|| ApiError::not_found("subnet", id))
    }

    pub fn eni(&self, id: &str) -> ApiResult<&Eni> {
        check_id(id, "eni-", "eni")?;
        self.enis
            .get(id)
            .ok_or_else(|| ApiError::not_found("eni", id))
    }

    pub(crate) fn eni_mut(&mut self, id: &str) -> ApiResult<&mut Eni> {
        check_id(id, "eni-", "eni")?;
        self.enis
            .get_mut(id)
            .ok_or_else(|| ApiError::not_found("eni", id))
    }

    pub fn volume(&self, id: &str) -> ApiResult<&Volume> {
        check_id(id, "vol-", "volume")?;
        self.volumes
            .get(id)
            .ok_or_else(|| ApiError::not_found("volume", id))
    }

    pub fn snapshot(&self, id: &str) -> ApiResult<&Snapshot> {
        check_id(id, "snap-", "snapshot")?;
        self.snapshots
            .get(id)
            .ok_or_else(|| ApiError::not_found("snapshot", id))
    }

    pub fn instance_type(
        &self,
        name: &str,
    ) -> ApiResult<&'static nodewire_aws::limits::InstanceTypeInfo> {
        nodewire_aws::limits::lookup(name).ok_or_else(|| {
            ApiError::new(
                "InvalidInstanceType",
                format!("The following supplied instance types do not exist: [{name}]"),
            )
        })
    }

    pub fn zone_id(&self, az: &str) -> Option<&str> {
        self.cfg
            .zones
            .iter()
            .find(|(n, _)| n == az)
            .map(|(_, id)| id.as_str())
    }

    /// The VPC's `default` group (new ENIs and instances get it when no group is named).
    pub fn default_security_group(&self) -> String {
        self.security_groups
            .values()
            .find(|g| g.name == "default")
            .map(|g| g.id.clone())
            .unwrap_or_default()
    }

    /// `CreateSecurityGroup` in this VPC: names are unique per VPC, as on EC2.
    pub fn create_security_group(
        &mut self,
        name: &str,
        description: &str,
        vpc_id: Option<&str>,
    ) -> ApiResult<String> {
        if let Some(v) = vpc_id
            && v != self.vpc.id
        {
            return Err(ApiError::new(
                "InvalidVpcID.NotFound",
                format!("The vpc ID '{v}' does not exist"),
            ));
        }
        if name.is_empty() || name.len() > 255 || name.starts_with("sg-") {
            return Err(ApiError::invalid_param(format!(
                "Invalid security group name {name:?}: 1-255 characters, not starting with sg-"
            )));
        }
        if name.eq_ignore_ascii_case("default") {
            return Err(ApiError::new(
                "InvalidGroup.Reserved",
                "The security group 'default' is reserved",
            ));
        }
        // Names are unique per VPC, compared without regard to case.
        if self
            .security_groups
            .values()
            .any(|g| g.name.eq_ignore_ascii_case(name))
        {
            return Err(ApiError::new(
                "InvalidGroup.Duplicate",
                format!(
                    "The security group '{name}' already exists for VPC '{}'",
                    self.vpc.id
                ),
            ));
        }
        let id = gen_id(&mut self.rng, "sg");
        self.security_groups.insert(
            id.clone(),
            SecurityGroup {
                id: id.clone(),
                name: name.into(),
                description: description.into(),
                vpc_id: self.vpc.id.clone(),
                tags: Tags::new(),
            },
        );
        Ok(id)
    }

    pub fn subnet_in_zone(&self, az: &str) -> Option<&Subnet> {
        self.subnets.values().find(|s| s.az == az)
    }

    // ----- tags --------------------------------------------------------------------------

    /// The tag map of any taggable resource.
    pub(crate) fn tags_mut(&mut self, id: &str) -> ApiResult<&mut Tags> {
        let r = if id.starts_with("eni-") {
            self.enis.get_mut(id).map(|x| &mut x.tags)
        } else if id.starts_with("i-") {
            self.instances.get_mut(id).map(|x| &mut x.tags)
        } else if id.starts_with("vol-") {
            self.volumes.get_mut(id).map(|x| &mut x.tags)
        } else if id.starts_with("snap-") {
            self.snapshots.get_mut(id).map(|x| &mut x.tags)
        } else if id.starts_with("subnet-") {
            self.subnets.get_mut(id).map(|x| &mut x.tags)
        } else if id.starts_with("sg-") {
            self.security_groups.get_mut(id).map(|x| &mut x.tags)
        } else if id == self.vpc.id {
            Some(&mut self.vpc.tags)
        } else {
            return Err(ApiError::new(
                "InvalidID",
                format!("The ID '{id}' is not valid"),
            ));
        };
        r.ok_or_else(|| {
            let kind = match id.split('-').next() {
                Some("eni") => "eni",
                Some("i") => "instance",
                Some("vol") => "volume",
                Some("snap") => "snapshot",
                Some("subnet") => "subnet",
                Some("sg") => "sg",
                _ => "",
            };
            ApiError::not_found(kind, id)
        })
    }

    pub fn create_tags(&mut self, ids: &[String], tags: &[(String, String)]) -> ApiResult<()> {
        if ids.is_empty() {
            return Err(ApiError::missing("ResourceId"));
        }
        for (k, _) in tags {
            validate_tag_key(k)?;
        }
        // Validate everything first so a refused call changes nothing.
        for id in ids {
            let t = self.tags_mut(id)?;
            let after = t.len() + tags.iter().filter(|(k, _)| !t.contains_key(k)).count();
            if after > 50 {
                return Err(ApiError::new(
                    "TagLimitExceeded",
                    format!("The maximum number of tags for {id} is 50"),
                ));
            }
        }
        for id in ids {
            let t = self.tags_mut(id)?;
            for (k, v) in tags {
                t.insert(k.clone(), v.clone());
            }
        }
        Ok(())
    }

    /// `DeleteTags`: a tag with a value is removed only when the value matches.
    pub fn delete_tags(
        &mut self,
        ids: &[String],
        tags: &[(String, Option<String>)],
    ) -> ApiResult<()> {
        for id in ids {
            self.tags_mut(id)?;
        }
        for id in ids {
            let t = self.tags_mut(id)?;
            if tags.is_empty() {
                t.clear();
            }
            for (k, v) in tags {
                if v.as_ref().is_none_or(|v| t.get(k) == Some(v)) {
                    t.remove(k);
                }
            }
        }
        Ok(())
    }

    // ----- IMDS views ------------------------------------------------------------------

    fn imds_view(&self, inst: &Instance) -> ImdsView {
        let mut enis: Vec<ImdsEni> = self
            .enis
            .values()
            .filter(|e| {
                e.attachment
                    .as_ref()
                    .is_some_and(|a| a.instance_id == inst.id && a.state == AttachState::Attached)
            })
            .filter_map(|e| {
                let a = e.attachment.as_ref()?;
                let s = self.subnets.get(&e.subnet_id)?;
                Some(ImdsEni {
                    mac: e.mac.clone(),
                    eni_id: e.id.clone(),
                    device_number: a.device_index,
                    network_card: a.network_card_index,
                    local_ipv4s: e.private_ips.clone(),
                    ipv4_prefixes: e.prefixes.clone(),
                    subnet_id: s.id.clone(),
                    subnet_cidr: s.cidr,
                    vpc_id: e.vpc_id.clone(),
                    vpc_cidrs: vec![self.vpc.cidr],
                    security_group_ids: e.groups.clone(),
                    owner_id: self.cfg.account_id.clone(),
                })
            })
            .collect();
        enis.sort_by_key(|e| (e.network_card, e.device_number));
        let mac = self
            .enis
            .get(&inst.primary_eni)
            .map(|e| e.mac.clone())
            .unwrap_or_default();
        ImdsView {
            instance_id: inst.id.clone(),
            instance_type: inst.instance_type.clone(),
            image_id: inst.image_id.clone(),
            account_id: self.cfg.account_id.clone(),
            az: inst.az.clone(),
            az_id: self.zone_id(&inst.az).unwrap_or_default().to_string(),
            region: self.cfg.region.clone(),
            local_ipv4: inst.private_ip,
            mac,
            security_group_names: inst
                .security_groups
                .iter()
                .filter_map(|g| self.security_groups.get(g).map(|g| g.name.clone()))
                .collect(),
            enis,
            block_devices: vec![
                ("ami".into(), "/dev/xvda".into()),
                ("root".into(), "/dev/xvda".into()),
            ],
        }
    }

    /// Records a new IMDS view for every running instance whose view changed.
    pub fn refresh_imds(&mut self, now: Instant) {
        let lag = Duration::from_millis(self.timing.imds_lag_ms);
        let views: Vec<ImdsView> = self
            .instances
            .values()
            .filter(|i| i.state == InstanceState::Running)
            .map(|i| self.imds_view(i))
            .collect();
        for v in views {
            let hist = self.imds.entry(v.instance_id.clone()).or_default();
            if hist.back().is_some_and(|(_, last)| **last == v) {
                continue;
            }
            // The first view of an instance is visible at once (metadata exists at boot).
            let at = if hist.is_empty() {
                now.checked_sub(lag).unwrap_or(now)
            } else {
                now
            };
            hist.push_back((at, Arc::new(v)));
            // Forget views that can no longer be served.
            while hist.len() > 1 && hist[1].0 + lag <= now {
                hist.pop_front();
            }
        }
        self.imds.retain(|id, _| {
            self.instances
                .get(id)
                .is_some_and(|i| i.state == InstanceState::Running)
        });
    }

    /// What IMDS shows the instance at `now`: the newest view at least `imds_lag` old.
    pub fn imds_at(&self, instance_id: &str, now: Instant) -> Option<Arc<ImdsView>> {
        let lag = Duration::from_millis(self.timing.imds_lag_ms);
        let hist = self.imds.get(instance_id)?;
        hist.iter()
            .rev()
            .find(|(at, _)| *at + lag <= now)
            .or(hist.front())
            .map(|(_, v)| v.clone())
    }
}

/// EC2-style id: prefix, dash, 17 lowercase hex digits.
fn gen_id(rng: &mut StdRng, prefix: &str) -> String {
    let n: u128 = rng.random();
    format!("{prefix}-{:017x}", n & ((1u128 << 68) - 1))
}

fn check_id(id: &str, prefix: &str, kind: &str) -> ApiResult<()> {
    let rest = id
        .strip_prefix(prefix)
        .ok_or_else(|| ApiError::malformed(kind, id))?;
    if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::malformed(kind, id));
    }
    Ok(())
}

fn validate_tag_key(k: &str) -> ApiResult<()> {
    if k.is_empty() || k.len() > 128 {
        return Err(ApiError::invalid_param(format!(
            "Tag key '{k}' must be 1 to 128 characters"
        )));
    }
    if k.starts_with("aws:") {
        return Err(ApiError::invalid_param(
            "Tag keys starting with 'aws:' are reserved for internal use",
        ));
    }
    Ok(())
}

/// The tags of the `TagSpecification`s for `resource_type`; a specification for any other type is
/// refused, as EC2 does for types the action does not create. Keys are validated.
pub(crate) fn tags_for(specs: &[TagSpec], resource_type: &str) -> ApiResult<Tags> {
    let mut out = Tags::new();
    for (rt, tags) in specs {
        if rt != resource_type {
            return Err(ApiError::invalid_param(format!(
                "'{rt}' is not a valid taggable resource type for this operation."
            )));
        }
        for (k, v) in tags {
            validate_tag_key(k)?;
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// Paging over a sorted list: `NextToken` is the id of the first item of the next page.
pub fn page<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> &str,
    max_results: Option<i64>,
    next_token: Option<&str>,
    bounds: (i64, i64),
) -> ApiResult<(Vec<T>, Option<String>)> {
    let mut items = items;
    if let Some(tok) = next_token {
        if tok.is_empty() {
            return Err(ApiError::invalid_param("The token '' is invalid"));
        }
        // Items are sorted by id: the page starts at the first id not below the token.
        let start = items
            .iter()
            .position(|x| id(x) >= tok)
            .unwrap_or(items.len());
        items.drain(..start);
    }
    let Some(max) = max_results else {
        return Ok((items, None));
    };
    if max < bounds.0 || max > bounds.1 {
        return Err(ApiError::invalid_param(format!(
            "Value ( {max} ) for parameter maxResults is invalid. Expecting a value between {} and {}.",
            bounds.0, bounds.1
        )));
    }
    let max = max as usize;
    if items.len() <= max {
        return Ok((items, None));
    }
    let next = id(&items[max]).to_string();
    items.truncate(max);
    Ok((items, Some(next)))
}

/// Picks a random free, non-reserved address of `subnet` (EC2 does not hand them out in order).
pub(crate) fn pick_ip(rng: &mut StdRng, subnet: &Subnet) -> ApiResult<Ipv4Addr> {
    if subnet.available() == 0 {
        return Err(ApiError::new(
            "InsufficientFreeAddressesInSubnet",
            format!(
                "There are not enough free addresses in subnet '{}' to satisfy the requested number of instances.",
                subnet.id
            ),
        ));
    }
    let base = u32::from(subnet.cidr.network());
    let size = 1u32 << (32 - subnet.cidr.prefix_len());
    let start = rng.random_range(0..size);
    for k in 0..size {
        let ip = Ipv4Addr::from(base + (start + k) % size);
        if !subnet.is_reserved(ip) && !subnet.used.contains(&ip) {
            return Ok(ip);
        }
    }
    Err(ApiError::new(
        "InsufficientFreeAddressesInSubnet",
        format!("subnet '{}' is full", subnet.id),
    ))
}

/// Picks a random /28 of `subnet` with all 16 addresses free and none reserved.
pub(crate) fn pick_prefix(rng: &mut StdRng, subnet: &Subnet) -> ApiResult<ipnet::Ipv4Net> {
    let base = u32::from(subnet.cidr.network());
    let blocks = 1u32 << (28u8.saturating_sub(subnet.cidr.prefix_len()));
    let start = rng.random_range(0..blocks);
    for k in 0..blocks {
        let b = base + ((start + k) % blocks) * 16;
        let free = (b..b + 16)
            .map(Ipv4Addr::from)
            .all(|ip| !subnet.is_reserved(ip) && !subnet.used.contains(&ip));
        if free {
            return Ok(
                ipnet::Ipv4Net::new(Ipv4Addr::from(b), 28).expect("28 is a valid prefix length")
            );
        }
    }
    Err(ApiError::new(
        "InsufficientCidrBlocks",
        format!(
            "The specified subnet '{}' does not have enough free cidr blocks to satisfy the request.",
            subnet.id
        ),
    ))
}

#[cfg(test)]
mod tests;
