//! Instances, ENIs, private IPs and /28 prefixes.

use super::error::{ApiError, ApiResult};
use super::*;
use ipnet::Ipv4Net;

/// `RunInstances` for one instance.
#[derive(Debug, Clone, Default)]
pub struct RunInstance {
    pub instance_type: String,
    pub image_id: String,
    pub subnet_id: Option<String>,
    pub az: Option<String>,
    pub private_ip: Option<Ipv4Addr>,
    pub security_groups: Vec<String>,
    pub tags: Tags,
    pub eni_tags: Tags,
}

/// `CreateNetworkInterface`.
#[derive(Debug, Clone, Default)]
pub struct CreateEni {
    pub subnet_id: String,
    pub groups: Vec<String>,
    pub description: String,
    pub secondary_count: u32,
    /// Explicit addresses; at most one flagged primary.
    pub private_ips: Vec<(Ipv4Addr, bool)>,
    pub prefix_count: u32,
    pub prefixes: Vec<Ipv4Net>,
    pub tags: Tags,
    pub client_token: Option<String>,
}

/// `AssignPrivateIpAddresses`.
#[derive(Debug, Clone, Default)]
pub struct Assign {
    pub eni_id: String,
    pub count: u32,
    pub ips: Vec<Ipv4Addr>,
    pub prefix_count: u32,
    pub prefixes: Vec<Ipv4Net>,
    pub allow_reassignment: bool,
}

/// Refuses an address or prefix named twice, or an address inside a named prefix.
fn reject_duplicates(ips: &[Ipv4Addr], prefixes: &[Ipv4Net]) -> ApiResult<()> {
    let mut seen = HashSet::new();
    if let Some(ip) = ips.iter().find(|ip| !seen.insert(**ip)) {
        return Err(ApiError::invalid_param(format!(
            "Address {ip} is specified more than once"
        )));
    }
    let mut seen = HashSet::new();
    if let Some(p) = prefixes.iter().find(|p| !seen.insert(**p)) {
        return Err(ApiError::invalid_param(format!(
            "Prefix {p} is specified more than once"
        )));
    }
    if let Some(ip) = ips
        .iter()
        .find(|ip| prefixes.iter().any(|p| p.contains(*ip)))
    {
        return Err(ApiError::invalid_param(format!(
            "Address {ip} lies inside a requested prefix"
        )));
    }
    Ok(())
}

/// Largest `Ipv4AddressesPerInterface` in the table: the cap for an ENI not attached anywhere.
fn unattached_slot_limit() -> u32 {
    nodewire_aws::limits::INSTANCE_TYPES
        .iter()
        .map(|t| t.ipv4_addresses_per_interface)
        .max()
        .unwrap_or(50)
}

impl Sim {
    fn claim(&mut self, subnet_id: &str, ip: Ipv4Addr) {
        if let Some(s) = self.subnets.get_mut(subnet_id) {
            s.used.insert(ip);
        }
    }

    fn release(&mut self, subnet_id: &str, ip: Ipv4Addr) {
        if let Some(s) = self.subnets.get_mut(subnet_id) {
            s.used.remove(&ip);
        }
    }

    fn claim_prefix(&mut self, subnet_id: &str, p: Ipv4Net) {
        for ip in p.hosts().chain([p.network(), p.broadcast()]) {
            self.claim(subnet_id, ip);
        }
    }

    fn release_prefix(&mut self, subnet_id: &str, p: Ipv4Net) {
        for ip in p.hosts().chain([p.network(), p.broadcast()]) {
            self.release(subnet_id, ip);
        }
    }

    /// Checks that `ip` may be assigned in `subnet_id` (inside, not reserved, not in use).
    fn check_free_ip(&self, subnet_id: &str, ip: Ipv4Addr) -> ApiResult<()> {
        self.check_ip_in_subnet(subnet_id, ip)?;
        if self.subnet(subnet_id)?.used.contains(&ip) {
            return Err(ApiError::new(
                "InvalidIPAddress.InUse",
                format!("Address {ip} is in use."),
            ));
        }
        Ok(())
    }

    /// Checks that `ip` lies in `subnet_id` and is not one AWS reserves.
    fn check_ip_in_subnet(&self, subnet_id: &str, ip: Ipv4Addr) -> ApiResult<()> {
        let s = self.subnet(subnet_id)?;
        if !s.cidr.contains(&ip) {
            return Err(ApiError::invalid_param(format!(
                "Address {ip} does not fall within the subnet's address range ({})",
                s.cidr
            )));
        }
        if s.is_reserved(ip) {
            return Err(ApiError::invalid_param(format!(
                "Address {ip} is reserved by AWS"
            )));
        }
        Ok(())
    }

    fn check_free_prefix(&self, subnet_id: &str, p: Ipv4Net) -> ApiResult<()> {
        let s = self.subnet(subnet_id)?;
        if p.prefix_len() != 28 || p.network() != p.addr() {
            return Err(ApiError::invalid_param(format!(
                "The prefix {p} is not a valid /28 IPv4 prefix"
            )));
        }
        if !s.cidr.contains(&p) {
            return Err(ApiError::invalid_param(format!(
                "Prefix {p} is not within the subnet {}",
                s.cidr
            )));
        }
        let addrs = p.hosts().chain([p.network(), p.broadcast()]);
        for ip in addrs {
            if s.is_reserved(ip) || s.used.contains(&ip) {
                return Err(ApiError::new(
                    "InvalidParameterValue",
                    format!("Prefix {p} overlaps addresses in use"),
                ));
            }
        }
        Ok(())
    }

    /// The `Ipv4AddressesPerInterface` that applies to an ENI, and whether prefixes are allowed.
    fn eni_limits(&self, eni: &Eni) -> (u32, bool, Option<String>) {
        match eni
            .attachment
            .as_ref()
            .and_then(|a| self.instances.get(&a.instance_id))
        {
            Some(inst) => match nodewire_aws::limits::lookup(&inst.instance_type) {
                Some(t) => (
                    t.ipv4_addresses_per_interface,
                    t.supports_prefix_delegation(),
                    Some(t.name.to_string()),
                ),
                None => (unattached_slot_limit(), true, None),
            },
            None => (unattached_slot_limit(), true, None),
        }
    }

    // ----- instances -------------------------------------------------------------------

    /// Launches one instance with its primary ENI (device 0, DeleteOnTermination) and an 8 GiB
    /// gp3 root volume on `/dev/xvda`. Instances are `running` at once.
    pub fn run_instance(&mut self, now: Instant, req: RunInstance) -> ApiResult<String> {
        self.instance_type(&req.instance_type)?;
        let subnet_id = match (&req.subnet_id, &req.az) {
            (Some(s), _) => self.subnet(s)?.id.clone(),
            (None, Some(az)) => self
                .subnet_in_zone(az)
                .ok_or_else(|| {
                    ApiError::invalid_param(format!("Invalid availability zone: [{az}]"))
                })?
                .id
                .clone(),
            (None, None) => self
                .subnets
                .keys()
                .next()
                .cloned()
                .ok_or_else(|| ApiError::missing("SubnetId"))?,
        };
        let groups = if req.security_groups.is_empty() {
            vec![self.default_security_group()]
        } else {
            req.security_groups.clone()
        };
        for g in &groups {
            if !self.security_groups.contains_key(g) {
                return Err(ApiError::not_found("sg", g));
            }
        }
        let s = self.subnet(&subnet_id)?.clone();
        let ip = match req.private_ip {
            Some(ip) => {
                self.check_free_ip(&subnet_id, ip)?;
                ip
            }
            None => pick_ip(self.rng(), &s)?,
        };
        let id = self.new_id("i");
        let eni_id = self.new_id("eni");
        let att_id = self.new_id("eni-attach");
        let mac = self.new_mac();
        self.claim(&subnet_id, ip);
        let wall = SystemTime::now();
        self.enis.insert(
            eni_id.clone(),
            Eni {
                id: eni_id.clone(),
                subnet_id: subnet_id.clone(),
                vpc_id: s.vpc_id.clone(),
                az: s.az.clone(),
                description: String::new(),
                groups: groups.clone(),
                mac,
                private_ips: vec![ip],
                prefixes: vec![],
                attachment: Some(EniAttachment {
                    id: att_id,
                    instance_id: id.clone(),
                    device_index: 0,
                    network_card_index: 0,
                    state: AttachState::Attached,
                    delete_on_termination: true,
                    attach_time: wall,
                    due: None,
                }),
                source_dest_check: true,
                requester_managed: false,
                tags: req.eni_tags.clone(),
            },
        );
        let root = self.new_id("vol");
        self.volumes.insert(
            root.clone(),
            Volume {
                id: root.clone(),
                spec: VolumeSpec {
                    size_gib: 8,
                    volume_type: "gp3".into(),
                    iops: Some(3000),
                    throughput: Some(125),
                },
                az: s.az.clone(),
                encrypted: false,
                kms_key_id: None,
                snapshot_id: None,
                multi_attach: false,
                state: VolumeState::InUse,
                create_time: wall,
                due: None,
                attachments: vec![VolumeAttachment {
                    instance_id: id.clone(),
                    device: "/dev/xvda".into(),
                    state: AttachState::Attached,
                    attach_time: wall,
                    delete_on_termination: true,
                    due: None,
                }],
                is_root: true,
                tags: Tags::new(),
            },
        );
        self.instances.insert(
            id.clone(),
            Instance {
                id: id.clone(),
                instance_type: req.instance_type,
                image_id: if req.image_id.is_empty() {
                    "ami-0nodewire0000000".into()
                } else {
                    req.image_id
                },
                az: s.az.clone(),
                subnet_id,
                vpc_id: s.vpc_id,
                private_ip: ip,
                primary_eni: eni_id,
                security_groups: groups,
                state: InstanceState::Running,
                launch_time: wall,
                root_volume: Some(root),
                tags: req.tags,
            },
        );
        self.refresh_imds(now);
        Ok(id)
    }

    /// Terminates an instance: ENIs with DeleteOnTermination are deleted, the others detached;
    /// volumes are detached, those with DeleteOnTermination (the root) deleted.
    pub fn terminate_instance(
        &mut self,
        now: Instant,
        id: &str,
    ) -> ApiResult<(&'static str, &'static str)> {
        let inst = self.instance(id)?;
        if inst.state == InstanceState::Terminated {
            return Ok(("terminated", "terminated"));
        }
        let eni_ids: Vec<String> = self
            .enis
            .values()
            .filter(|e| e.attached_to(id))
            .map(|e| e.id.clone())
            .collect();
        for eid in eni_ids {
            let delete = self
                .enis
                .get(&eid)
                .and_then(|e| e.attachment.as_ref())
                .is_some_and(|a| a.delete_on_termination);
            self.finish_eni_detach(&eid);
            if delete {
                self.remove_eni(&eid);
            }
        }
        let vol_ids: Vec<String> = self
            .volumes
            .values()
            .filter(|v| v.attachments.iter().any(|a| a.instance_id == id))
            .map(|v| v.id.clone())
            .collect();
        for vid in vol_ids {
            let Some(v) = self.volumes.get_mut(&vid) else {
                continue;
            };
            let mut delete = false;
            let mut events = Vec::new();
            v.attachments.retain(|a| {
                if a.instance_id != id {
                    return true;
                }
                delete |= a.delete_on_termination;
                if !v.is_root && a.state != AttachState::Attaching {
                    events.push(Event::VolumeDetached {
                        instance_id: id.to_string(),
                        volume_id: vid.clone(),
                        device: a.device.clone(),
                    });
                }
                false
            });
            if v.attachments.is_empty() {
                v.state = VolumeState::Available;
            }
            let root = v.is_root;
            for e in events {
                self.emit(e);
            }
            if delete {
                self.volumes.remove(&vid);
                if !root {
                    self.emit(Event::VolumeDeleted { volume_id: vid });
                }
            }
        }
        if let Some(i) = self.instances.get_mut(id) {
            i.state = InstanceState::Terminated;
        }
        self.refresh_imds(now);
        Ok(("running", "terminated"))
    }

    /// Removes an instance without a trace (a `RunInstances` that did not reach MinCount).
    pub fn discard_instance(&mut self, now: Instant, id: &str) {
        if self.terminate_instance(now, id).is_ok() {
            self.instances.remove(id);
            self.refresh_imds(now);
        }
    }

    // ----- ENIs -----------------------------------------------------------------------

    pub fn create_eni(&mut self, req: CreateEni) -> ApiResult<String> {
        let fingerprint = format!(
            "{:?}",
            (
                &req.subnet_id,
                &req.groups,
                &req.description,
                req.secondary_count,
                &req.private_ips,
                req.prefix_count,
                &req.prefixes,
                &req.tags
            )
        );
        if let Some(id) = self.check_token(req.client_token.as_deref(), &fingerprint)? {
            return Ok(id);
        }
        let s = self.subnet(&req.subnet_id)?.clone();
        let groups = if req.groups.is_empty() {
            vec![self.default_security_group()]
        } else {
            req.groups.clone()
        };
        for g in &groups {
            match self.security_groups.get(g) {
                None => return Err(ApiError::not_found("sg", g)),
                Some(sg) if sg.vpc_id != s.vpc_id => {
                    return Err(ApiError::invalid_param(format!(
                        "Security group {g} and subnet belong to different networks"
                    )));
                }
                Some(_) => {}
            }
        }
        if req.private_ips.iter().filter(|(_, p)| *p).count() > 1 {
            return Err(ApiError::invalid_param(
                "Only one primary private IP address may be specified",
            ));
        }
        if req.prefix_count > 0 && !req.prefixes.is_empty() {
            return Err(ApiError::combination(
                "Ipv4PrefixCount and Ipv4Prefixes cannot both be specified",
            ));
        }
        let explicit_secondaries = req.private_ips.iter().filter(|(_, p)| !*p).count() as u32;
        if explicit_secondaries > 0 && req.secondary_count > 0 {
            // EC2 allows a primary plus a count, but not explicit secondaries plus a count.
            return Err(ApiError::combination(
                "SecondaryPrivateIpAddressCount cannot be specified with secondary PrivateIpAddresses",
            ));
        }
        // The final address list: the explicit ones (one of them primary) or a random primary,
        // plus the counted secondaries.
        let ip_count = (req.private_ips.len() as u32).max(1) + req.secondary_count;
        let prefix_count = req.prefix_count + req.prefixes.len() as u32;
        let slots = ip_count + prefix_count;
        let limit = unattached_slot_limit();
        if slots > limit {
            return Err(ApiError::new(
                "PrivateIpAddressLimitExceeded",
                format!(
                    "Number of private addresses will exceed the limit of {limit} for an interface"
                ),
            ));
        }
        // Validate explicit addresses and make sure the subnet can hold the rest, before claiming.
        let explicit: Vec<Ipv4Addr> = req.private_ips.iter().map(|(ip, _)| *ip).collect();
        reject_duplicates(&explicit, &req.prefixes)?;
        for ip in &explicit {
            self.check_free_ip(&s.id, *ip)?;
        }
        for p in &req.prefixes {
            self.check_free_prefix(&s.id, *p)?;
        }
        let need = ip_count as u64 + 16 * prefix_count as u64;
        if need > s.available() {
            return Err(ApiError::new(
                "InsufficientFreeAddressesInSubnet",
                format!(
                    "There are not enough free addresses in subnet '{}' to satisfy the requested number of addresses.",
                    s.id
                ),
            ));
        }
        // Claim: explicit first, then the primary (if not given), then counts.
        let mut ips: Vec<Ipv4Addr> = Vec::new();
        let mut prefixes = Vec::new();
        let mut claimed = Vec::new();
        let primary_explicit = req.private_ips.iter().find(|(_, p)| *p).map(|(ip, _)| *ip);
        for (ip, _) in &req.private_ips {
            self.claim(&s.id, *ip);
            claimed.push(*ip);
        }
        for p in &req.prefixes {
            self.claim_prefix(&s.id, *p);
            prefixes.push(*p);
        }
        let result = (|| -> ApiResult<()> {
            let primary = match primary_explicit {
                Some(ip) => ip,
                None => {
                    // The first explicit address is primary when none is flagged; else random.
                    match req.private_ips.first() {
                        Some((ip, _)) => *ip,
                        None => {
                            let sub = self.subnet(&s.id)?.clone();
                            let ip = pick_ip(self.rng(), &sub)?;
                            self.claim(&s.id, ip);
                            claimed.push(ip);
                            ip
                        }
                    }
                }
            };
            ips.push(primary);
            for (ip, _) in &req.private_ips {
                if *ip != primary {
                    ips.push(*ip);
                }
            }
            for _ in 0..req.secondary_count {
                let sub = self.subnet(&s.id)?.clone();
                let ip = pick_ip(self.rng(), &sub)?;
                self.claim(&s.id, ip);
                claimed.push(ip);
                ips.push(ip);
            }
            for _ in 0..req.prefix_count {
                let sub = self.subnet(&s.id)?.clone();
                let p = pick_prefix(self.rng(), &sub)?;
                self.claim_prefix(&s.id, p);
                prefixes.push(p);
            }
            Ok(())
        })();
        if let Err(e) = result {
            for ip in claimed {
                self.release(&s.id, ip);
            }
            for p in prefixes {
                self.release_prefix(&s.id, p);
            }
            return Err(e);
        }
        let id = self.new_id("eni");
        let mac = self.new_mac();
        self.enis.insert(
            id.clone(),
            Eni {
                id: id.clone(),
                subnet_id: s.id.clone(),
                vpc_id: s.vpc_id.clone(),
                az: s.az.clone(),
                description: req.description,
                groups,
                mac,
                private_ips: ips,
                prefixes,
                attachment: None,
                source_dest_check: true,
                requester_managed: false,
                tags: req.tags,
            },
        );
        self.remember_token(req.client_token.as_deref(), fingerprint, &id);
        Ok(id)
    }

    /// Starts an attachment (`attaching` for `timing.attach_ms`). Returns (attachment id, card).
    pub fn attach_eni(
        &mut self,
        now: Instant,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        card: u32,
    ) -> ApiResult<(String, u32)> {
        let inst = self.instance(instance_id)?.clone();
        let eni = self.eni(eni_id)?.clone();
        if inst.state != InstanceState::Running {
            return Err(ApiError::new(
                "IncorrectInstanceState",
                format!("The instance '{instance_id}' is not in a valid state for this operation."),
            ));
        }
        if let Some(a) = &eni.attachment {
            return Err(ApiError::new(
                "InvalidNetworkInterface.InUse",
                format!(
                    "Interface: [{eni_id}] in use by instance {}.",
                    a.instance_id
                ),
            ));
        }
        if eni.az != inst.az {
            return Err(ApiError::combination(format!(
                "The network interface {eni_id} and instance {instance_id} are in different availability zones"
            )));
        }
        let t = self.instance_type(&inst.instance_type)?;
        let Some(card_max) = t.card_enis(card) else {
            return Err(ApiError::invalid_param(format!(
                "Network card index {card} is not valid for instance type {}",
                t.name
            )));
        };
        let on_instance: Vec<&Eni> = self
            .enis
            .values()
            .filter(|e| e.attached_to(instance_id))
            .collect();
        if on_instance.iter().any(|e| {
            e.attachment
                .as_ref()
                .is_some_and(|a| a.device_index == device_index && a.network_card_index == card)
        }) {
            return Err(ApiError::invalid_param(format!(
                "Instance '{instance_id}' already has an interface attached at device index '{device_index}'."
            )));
        }
        let on_card = on_instance
            .iter()
            .filter(|e| {
                e.attachment
                    .as_ref()
                    .is_some_and(|a| a.network_card_index == card)
            })
            .count() as u32;
        if on_card >= card_max {
            return Err(ApiError::new(
                "AttachmentLimitExceeded",
                format!(
                    "Interface count {} exceeds the limit for {}",
                    on_card + 1,
                    t.name
                ),
            ));
        }
        if device_index >= card_max {
            return Err(ApiError::invalid_param(format!(
                "Device index {device_index} exceeds the maximum of {} for instance type {}",
                card_max - 1,
                t.name
            )));
        }
        if eni.address_slots() as u32 > t.ipv4_addresses_per_interface {
            return Err(ApiError::new(
                "PrivateIpAddressLimitExceeded",
                format!(
                    "Number of private addresses ({}) exceeds the limit of {} for instance type {}",
                    eni.address_slots(),
                    t.ipv4_addresses_per_interface,
                    t.name
                ),
            ));
        }
        if !eni.prefixes.is_empty() && !t.supports_prefix_delegation() {
            return Err(ApiError::invalid_param(format!(
                "Instance type {} does not support IPv4 prefixes",
                t.name
            )));
        }
        let att_id = self.new_id("eni-attach");
        let due = self.due_in(now, self.timing.attach_ms);
        let e = self.eni_mut(eni_id)?;
        e.attachment = Some(EniAttachment {
            id: att_id.clone(),
            instance_id: instance_id.to_string(),
            device_index,
            network_card_index: card,
            state: AttachState::Attaching,
            delete_on_termination: false,
            attach_time: SystemTime::now(),
            due,
        });
        self.advance(now);
        Ok((att_id, card))
    }

    fn eni_by_attachment(&self, attachment_id: &str) -> ApiResult<&Eni> {
        self.enis
            .values()
            .find(|e| e.attachment.as_ref().is_some_and(|a| a.id == attachment_id))
            .ok_or_else(|| ApiError::not_found("attachment", attachment_id))
    }

    pub fn detach_eni(&mut self, now: Instant, attachment_id: &str, _force: bool) -> ApiResult<()> {
        let eni = self.eni_by_attachment(attachment_id)?;
        let a = eni.attachment.as_ref().expect("found by attachment");
        if a.device_index == 0 && a.network_card_index == 0 {
            return Err(ApiError::new(
                "OperationNotPermitted",
                "The network interface at device index 0 cannot be detached.",
            ));
        }
        if a.state == AttachState::Detaching {
            return Ok(());
        }
        let id = eni.id.clone();
        let due = self.due_in(now, self.timing.detach_ms);
        let e = self.eni_mut(&id)?;
        let a = e.attachment.as_mut().expect("checked above");
        if a.state == AttachState::Attaching {
            // Never reached the node: nothing to unplug.
            e.attachment = None;
        } else {
            a.state = AttachState::Detaching;
            a.due = due;
        }
        self.advance(now);
        Ok(())
    }

    /// Removes an ENI's attachment, emitting `EniDetached` if the node had seen it.
    pub(crate) fn finish_eni_detach(&mut self, id: &str) {
        let Some(e) = self.enis.get_mut(id) else {
            return;
        };
        let Some(a) = e.attachment.take() else { return };
        if a.state != AttachState::Attaching {
            let ev = Event::EniDetached {
                instance_id: a.instance_id,
                eni_id: e.id.clone(),
                mac: e.mac.clone(),
                device_index: a.device_index,
            };
            self.emit(ev);
        }
    }

    fn remove_eni(&mut self, id: &str) {
        if let Some(e) = self.enis.remove(id) {
            for ip in &e.private_ips {
                self.release(&e.subnet_id, *ip);
            }
            for p in &e.prefixes {
                self.release_prefix(&e.subnet_id, *p);
            }
            self.macs.remove(&e.mac);
        }
    }

    pub fn delete_eni(&mut self, id: &str) -> ApiResult<()> {
        let e = self.eni(id)?;
        if e.attachment.is_some() {
            return Err(ApiError::new(
                "InvalidNetworkInterface.InUse",
                format!("The network interface '{id}' is currently in use."),
            ));
        }
        self.remove_eni(id);
        Ok(())
    }

    /// `ModifyNetworkInterfaceAttribute`: exactly one attribute per call, as on EC2.
    pub fn modify_eni_attribute(
        &mut self,
        id: &str,
        delete_on_termination: Option<(String, bool)>,
        groups: Option<Vec<String>>,
        description: Option<String>,
        source_dest_check: Option<bool>,
    ) -> ApiResult<()> {
        let n = [
            delete_on_termination.is_some(),
            groups.is_some(),
            description.is_some(),
            source_dest_check.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n != 1 {
            return Err(ApiError::combination(
                "Exactly one attribute must be specified",
            ));
        }
        if let Some(gs) = &groups {
            for g in gs {
                if !self.security_groups.contains_key(g) {
                    return Err(ApiError::not_found("sg", g));
                }
            }
        }
        let e = self.eni_mut(id)?;
        if let Some((att, dot)) = delete_on_termination {
            match e.attachment.as_mut() {
                Some(a) if a.id == att => a.delete_on_termination = dot,
                _ => return Err(ApiError::not_found("attachment", &att)),
            }
        }
        if let Some(gs) = groups {
            e.groups = gs;
        }
        if let Some(d) = description {
            e.description = d;
        }
        if let Some(s) = source_dest_check {
            e.source_dest_check = s;
            let ev = Event::SourceDestCheckChanged {
                eni_id: e.id.clone(),
                enabled: s,
            };
            self.emit(ev);
        }
        Ok(())
    }

    /// Assigns IPs and/or prefixes; returns only what was newly assigned.
    pub fn assign_private_ips(
        &mut self,
        now: Instant,
        req: Assign,
    ) -> ApiResult<(Vec<Ipv4Addr>, Vec<Ipv4Net>)> {
        let eni = self.eni(&req.eni_id)?.clone();
        let wants_ips = req.count > 0 || !req.ips.is_empty();
        let wants_prefixes = req.prefix_count > 0 || !req.prefixes.is_empty();
        if wants_ips && wants_prefixes {
            return Err(ApiError::combination(
                "IP addresses and IPv4 prefixes cannot be assigned in the same request",
            ));
        }
        if !wants_ips && !wants_prefixes {
            return Err(ApiError::missing(
                "SecondaryPrivateIpAddressCount, PrivateIpAddress or Ipv4Prefix",
            ));
        }
        if req.count > 0 && !req.ips.is_empty() || req.prefix_count > 0 && !req.prefixes.is_empty()
        {
            return Err(ApiError::combination(
                "A count and explicit values cannot both be specified",
            ));
        }
        let (limit, pd_ok, tname) = self.eni_limits(&eni);
        if wants_prefixes && !pd_ok {
            return Err(ApiError::invalid_param(format!(
                "Prefix delegation is not supported for instance type {}",
                tname.unwrap_or_default()
            )));
        }
        // Explicit IPs already on this ENI are skipped (EC2 returns only new assignments).
        let new_ips: Vec<Ipv4Addr> = req
            .ips
            .iter()
            .copied()
            .filter(|ip| !eni.private_ips.contains(ip))
            .collect();
        let new_prefixes: Vec<Ipv4Net> = req
            .prefixes
            .iter()
            .copied()
            .filter(|p| !eni.prefixes.contains(p))
            .collect();
        let adding =
            req.count as usize + new_ips.len() + req.prefix_count as usize + new_prefixes.len();
        if eni.address_slots() + adding > limit as usize {
            return Err(ApiError::new(
                "PrivateIpAddressLimitExceeded",
                format!(
                    "Number of private addresses will exceed limit of {limit} for the interface {}",
                    eni.id
                ),
            ));
        }
        reject_duplicates(&req.ips, &req.prefixes)?;
        // With AllowReassignment, a secondary IP of another ENI in the same subnet may move here.
        let movable = |sim: &Sim, ip: &Ipv4Addr| {
            req.allow_reassignment
                && sim.enis.values().any(|e| {
                    e.id != eni.id
                        && e.subnet_id == eni.subnet_id
                        && e.private_ips[1..].contains(ip)
                })
        };
        for ip in &new_ips {
            if movable(self, ip) {
                self.check_ip_in_subnet(&eni.subnet_id, *ip)?;
            } else {
                self.check_free_ip(&eni.subnet_id, *ip)?;
            }
        }
        for p in &new_prefixes {
            self.check_free_prefix(&eni.subnet_id, *p)?;
        }
        let s = self.subnet(&eni.subnet_id)?.clone();
        if req.count as u64 > s.available() {
            return Err(ApiError::new(
                "InsufficientFreeAddressesInSubnet",
                format!(
                    "The specified subnet '{}' does not have enough free addresses to satisfy the request.",
                    s.id
                ),
            ));
        }
        // Reassignment: take explicit IPs away from the ENI that holds them.
        if req.allow_reassignment {
            let holders: Vec<(String, Ipv4Addr)> = self
                .enis
                .values()
                .filter(|e| e.id != eni.id && e.subnet_id == eni.subnet_id)
                .flat_map(|e| {
                    e.private_ips[1..]
                        .iter()
                        .filter(|ip| new_ips.contains(ip))
                        .map(|ip| (e.id.clone(), *ip))
                })
                .collect();
            for (holder, ip) in holders {
                if let Some(h) = self.enis.get_mut(&holder) {
                    h.private_ips.retain(|x| *x != ip);
                    if h.attachment.is_some() {
                        self.emit(Event::AddressesChanged);
                    }
                }
                self.release(&eni.subnet_id, ip);
            }
        }
        let mut got_ips = new_ips.clone();
        let mut got_prefixes = new_prefixes.clone();
        for ip in &new_ips {
            self.claim(&eni.subnet_id, *ip);
        }
        for p in &new_prefixes {
            self.claim_prefix(&eni.subnet_id, *p);
        }
        for _ in 0..req.count {
            let sub = self.subnet(&eni.subnet_id)?.clone();
            match pick_ip(self.rng(), &sub) {
                Ok(ip) => {
                    self.claim(&eni.subnet_id, ip);
                    got_ips.push(ip);
                }
                Err(e) => {
                    self.rollback(&eni.subnet_id, &got_ips, &got_prefixes);
                    return Err(e);
                }
            }
        }
        for _ in 0..req.prefix_count {
            let sub = self.subnet(&eni.subnet_id)?.clone();
            match pick_prefix(self.rng(), &sub) {
                Ok(p) => {
                    self.claim_prefix(&eni.subnet_id, p);
                    got_prefixes.push(p);
                }
                Err(e) => {
                    self.rollback(&eni.subnet_id, &got_ips, &got_prefixes);
                    return Err(e);
                }
            }
        }
        let e = self.eni_mut(&req.eni_id)?;
        e.private_ips.extend(&got_ips);
        e.prefixes.extend(&got_prefixes);
        if e.attachment.is_some() {
            self.emit(Event::AddressesChanged);
        }
        self.refresh_imds(now);
        Ok((got_ips, got_prefixes))
    }

    fn rollback(&mut self, subnet_id: &str, ips: &[Ipv4Addr], prefixes: &[Ipv4Net]) {
        for ip in ips {
            self.release(subnet_id, *ip);
        }
        for p in prefixes {
            self.release_prefix(subnet_id, *p);
        }
    }

    /// Unassigns secondary IPs and prefixes. All must be on the ENI; the primary is refused.
    pub fn unassign_private_ips(
        &mut self,
        now: Instant,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Net],
    ) -> ApiResult<()> {
        let eni = self.eni(eni_id)?.clone();
        if ips.is_empty() && prefixes.is_empty() {
            return Err(ApiError::missing("PrivateIpAddress or Ipv4Prefix"));
        }
        for ip in ips {
            if *ip == eni.primary_ip() {
                return Err(ApiError::invalid_param(format!(
                    "The primary private IP address {ip} of network interface {eni_id} cannot be unassigned"
                )));
            }
            if !eni.private_ips.contains(ip) {
                return Err(ApiError::invalid_param(format!(
                    "Some of the specified addresses are not assigned to interface {eni_id}"
                )));
            }
        }
        for p in prefixes {
            if !eni.prefixes.contains(p) {
                return Err(ApiError::invalid_param(format!(
                    "Some of the specified prefixes are not assigned to interface {eni_id}"
                )));
            }
        }
        let e = self.eni_mut(eni_id)?;
        e.private_ips.retain(|x| !ips.contains(x));
        e.prefixes.retain(|x| !prefixes.contains(x));
        let attached = e.attachment.is_some();
        self.rollback(&eni.subnet_id, ips, prefixes);
        if attached {
            self.emit(Event::AddressesChanged);
        }
        self.refresh_imds(now);
        Ok(())
    }
}
