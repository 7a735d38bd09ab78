//! The datastore: the node's ENIs, their CIDRs (/32 secondary IPs or /28 prefixes) and which
//! address is assigned to which pod attachment.
//!
//! Pure: time is passed in (Unix milliseconds) and nothing here does I/O. Allocation packs
//! deterministically — lowest device number, then lowest CIDR, then lowest address — so ENIs and
//! prefixes drain and become freeable. A released address cools down for `cooldown_ms` and counts
//! as unavailable while it does (upstream counts it as available, #2896).

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Identifies one pod network attachment, as the CNI spec keys IPAM: (network, container, ifname).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    #[serde(rename = "networkName")]
    pub network: String,
    #[serde(rename = "containerID")]
    pub container: String,
    #[serde(rename = "ifName")]
    pub ifname: String,
}

impl Key {
    pub fn new(network: &str, container: &str, ifname: &str) -> Key {
        Key {
            network: network.into(),
            container: container.into(),
            ifname: ifname.into(),
        }
    }
}

/// Kubernetes identity of the pod holding an address (for logs, metrics and introspection).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMeta {
    #[serde(rename = "k8sPodNamespace", default)]
    pub namespace: String,
    #[serde(rename = "k8sPodName", default)]
    pub name: String,
    /// The pod's host-side veth (vpc-cni names it); a restored allocation whose veth is gone
    /// belongs to a pod deleted while ipamd was down.
    #[serde(
        rename = "hostIfName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub host_ifname: String,
}

/// State of one address that has been handed out at least once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Assigned {
        key: Key,
        meta: PodMeta,
        since_ms: u64,
    },
    /// Released at `since_ms`; reusable from `since_ms + cooldown`.
    Cooling { since_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CidrKind {
    /// A secondary private IP (/32).
    Ip,
    /// A delegated /28 prefix.
    Prefix,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub net: Ipv4Net,
    pub kind: CidrKind,
    /// Only addresses that were used: absent means free.
    pub slots: BTreeMap<Ipv4Addr, Slot>,
}

impl Cidr {
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let base = u32::from(self.net.network());
        let n = 1u32 << (32 - self.net.prefix_len());
        (0..n).map(move |i| Ipv4Addr::from(base + i))
    }
    pub fn size(&self) -> usize {
        1usize << (32 - self.net.prefix_len())
    }
    pub fn assigned(&self) -> usize {
        self.slots
            .values()
            .filter(|s| matches!(s, Slot::Assigned { .. }))
            .count()
    }
    pub fn cooling(&self, now_ms: u64, cooldown_ms: u64) -> usize {
        self.slots
            .values()
            .filter(|s| is_cooling(s, now_ms, cooldown_ms))
            .count()
    }
    /// Nothing assigned and nothing cooling: the CIDR can go back to EC2.
    pub fn is_free(&self, now_ms: u64, cooldown_ms: u64) -> bool {
        self.slots
            .values()
            .all(|s| !matches!(s, Slot::Assigned { .. }) && !is_cooling(s, now_ms, cooldown_ms))
    }
}

fn is_cooling(s: &Slot, now_ms: u64, cooldown_ms: u64) -> bool {
    matches!(s, Slot::Cooling { since_ms } if since_ms.saturating_add(cooldown_ms) > now_ms)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    pub device_number: u32,
    pub primary: bool,
    /// The ENI's own primary address (never given to pods).
    pub primary_ip: Ipv4Addr,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    /// 254 (main) for the primary ENI, device number + 1 otherwise.
    pub route_table: u32,
    pub created_ms: u64,
    pub cidrs: BTreeMap<Ipv4Net, Cidr>,
}

impl Eni {
    pub fn route_table_for(device_number: u32, primary: bool) -> u32 {
        if primary { 254 } else { device_number + 1 }
    }
}

/// What an ADD got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub device_number: u32,
    pub route_table: u32,
    /// The key already held this address (a repeated ADD).
    pub existing: bool,
}

/// Why an ADD could not be served from the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error(
        "no free address in the pool ({assigned} assigned, {cooling} in cooldown, {total} total)"
    )]
    Empty {
        total: usize,
        assigned: usize,
        cooling: usize,
    },
}

/// Pool counts in the current mode (IPs or prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub enis: usize,
    pub total: usize,
    pub assigned: usize,
    pub cooling: usize,
    /// `total − assigned − cooling`: what an ADD can get right now.
    pub available: usize,
    pub prefixes: usize,
    /// Prefixes with nothing assigned and nothing cooling.
    pub free_prefixes: usize,
}

#[derive(Debug, Clone)]
pub struct Datastore {
    /// By device number: iteration order is packing order.
    pub enis: BTreeMap<u32, Eni>,
    /// Prefix delegation: serve from /28 prefixes, not /32 IPs.
    pub prefix_mode: bool,
    pub cooldown_ms: u64,
}

impl Datastore {
    pub fn new(prefix_mode: bool, cooldown_ms: u64) -> Datastore {
        Datastore {
            enis: BTreeMap::new(),
            prefix_mode,
            cooldown_ms,
        }
    }

    fn mode_kind(&self) -> CidrKind {
        if self.prefix_mode {
            CidrKind::Prefix
        } else {
            CidrKind::Ip
        }
    }

    /// Adds (or replaces the identity of) an ENI; its CIDRs are kept when it is already known.
    pub fn add_eni(&mut self, mut eni: Eni) {
        if let Some(old) = self.enis.remove(&eni.device_number)
            && old.id == eni.id
        {
            eni.cidrs = old.cidrs;
        }
        self.enis.insert(eni.device_number, eni);
    }

    pub fn eni_by_id(&self, id: &str) -> Option<&Eni> {
        self.enis.values().find(|e| e.id == id)
    }

    fn eni_mut(&mut self, id: &str) -> Option<&mut Eni> {
        self.enis.values_mut().find(|e| e.id == id)
    }

    /// Adds CIDRs to an ENI (addresses already known keep their state). Returns how many were new.
    pub fn add_cidrs(&mut self, eni_id: &str, nets: &[Ipv4Net], kind: CidrKind) -> usize {
        let Some(e) = self.eni_mut(eni_id) else {
            return 0;
        };
        let mut n = 0;
        for net in nets {
            if *net == Ipv4Net::new(e.primary_ip, 32).expect("32 is valid") {
                continue;
            }
            e.cidrs.entry(*net).or_insert_with(|| {
                n += 1;
                Cidr {
                    net: *net,
                    kind,
                    slots: BTreeMap::new(),
                }
            });
        }
        n
    }

    /// Removes a CIDR. Refuses (returns false) while it has assigned or cooling addresses unless
    /// `force` (EC2 no longer has it).
    pub fn remove_cidr(&mut self, eni_id: &str, net: Ipv4Net, now_ms: u64, force: bool) -> bool {
        let cd = self.cooldown_ms;
        let Some(e) = self.eni_mut(eni_id) else {
            return false;
        };
        match e.cidrs.get(&net) {
            Some(c) if force || c.is_free(now_ms, cd) => {
                e.cidrs.remove(&net);
                true
            }
            _ => false,
        }
    }

    /// Removes an ENI; refused for the primary and while anything is assigned or cooling, unless
    /// `force`.
    pub fn remove_eni(&mut self, eni_id: &str, now_ms: u64, force: bool) -> bool {
        let cd = self.cooldown_ms;
        let Some((&dev, e)) = self.enis.iter().find(|(_, e)| e.id == eni_id) else {
            return false;
        };
        if !force && (e.primary || e.cidrs.values().any(|c| !c.is_free(now_ms, cd))) {
            return false;
        }
        self.enis.remove(&dev);
        true
    }

    /// The address a key holds, if any.
    pub fn lookup(&self, key: &Key) -> Option<(Ipv4Addr, &Eni)> {
        self.enis.values().find_map(|e| {
            e.cidrs.values().find_map(|c| {
                c.slots.iter().find_map(|(ip, s)| match s {
                    Slot::Assigned { key: k, .. } if k == key => Some((*ip, e)),
                    _ => None,
                })
            })
        })
    }

    /// The key's assignment: (address, pod, assigned at).
    pub fn held(&self, key: &Key) -> Option<(Ipv4Addr, PodMeta, u64)> {
        self.enis
            .values()
            .flat_map(|e| e.cidrs.values())
            .find_map(|c| {
                c.slots.iter().find_map(|(ip, s)| match s {
                    Slot::Assigned {
                        key: k,
                        meta,
                        since_ms,
                    } if k == key => Some((*ip, meta.clone(), *since_ms)),
                    _ => None,
                })
            })
    }

    /// Assigns the lowest free address (idempotent per key).
    pub fn assign(
        &mut self,
        key: &Key,
        meta: &PodMeta,
        now_ms: u64,
    ) -> Result<Assignment, AssignError> {
        if let Some((ip, e)) = self.lookup(key) {
            return Ok(Assignment {
                ip,
                eni_id: e.id.clone(),
                device_number: e.device_number,
                route_table: e.route_table,
                existing: true,
            });
        }
        let kind = self.mode_kind();
        let cd = self.cooldown_ms;
        for e in self.enis.values_mut() {
            for c in e.cidrs.values_mut().filter(|c| c.kind == kind) {
                let free = c.addresses().find(|ip| match c.slots.get(ip) {
                    None => true,
                    Some(s @ Slot::Cooling { .. }) => !is_cooling(s, now_ms, cd),
                    Some(Slot::Assigned { .. }) => false,
                });
                if let Some(ip) = free {
                    c.slots.insert(
                        ip,
                        Slot::Assigned {
                            key: key.clone(),
                            meta: meta.clone(),
                            since_ms: now_ms,
                        },
                    );
                    return Ok(Assignment {
                        ip,
                        eni_id: e.id.clone(),
                        device_number: e.device_number,
                        route_table: e.route_table,
                        existing: false,
                    });
                }
            }
        }
        let s = self.stats(now_ms);
        Err(AssignError::Empty {
            total: s.total,
            assigned: s.assigned,
            cooling: s.cooling,
        })
    }

    /// Releases the key's address into cooldown. Unknown keys are not an error (`None`).
    pub fn release(&mut self, key: &Key, now_ms: u64) -> Option<Assignment> {
        for e in self.enis.values_mut() {
            for c in e.cidrs.values_mut() {
                let hit = c.slots.iter().find_map(|(ip, s)| match s {
                    Slot::Assigned { key: k, .. } if k == key => Some(*ip),
                    _ => None,
                });
                if let Some(ip) = hit {
                    c.slots.insert(ip, Slot::Cooling { since_ms: now_ms });
                    return Some(Assignment {
                        ip,
                        eni_id: e.id.clone(),
                        device_number: e.device_number,
                        route_table: e.route_table,
                        existing: true,
                    });
                }
            }
        }
        None
    }

    /// Releases without cooldown: the address never reached a running pod (its ADD was unwound),
    /// so no endpoint or connection can still point at it.
    pub fn release_unused(&mut self, key: &Key) -> Option<Assignment> {
        let a = self.release(key, 0)?;
        for c in self.enis.values_mut().flat_map(|e| e.cidrs.values_mut()) {
            if matches!(c.slots.get(&a.ip), Some(Slot::Cooling { .. })) {
                c.slots.remove(&a.ip);
            }
        }
        Some(a)
    }

    /// Drops the key's slot entirely, as if the assignment never happened (undoing an
    /// assignment that could not be persisted).
    pub fn forget(&mut self, key: &Key) {
        for c in self.enis.values_mut().flat_map(|e| e.cidrs.values_mut()) {
            c.slots
                .retain(|_, s| !matches!(s, Slot::Assigned { key: k, .. } if k == key));
        }
    }

    /// Restores an allocation from a checkpoint. Returns false when the address is in no known
    /// CIDR (stale) or already held by another key.
    pub fn restore(&mut self, key: &Key, meta: &PodMeta, ip: Ipv4Addr, since_ms: u64) -> bool {
        for e in self.enis.values_mut() {
            for c in e.cidrs.values_mut() {
                if !c.net.contains(&ip) {
                    continue;
                }
                return match c.slots.get(&ip) {
                    Some(Slot::Assigned { key: k, .. }) if k != key => false,
                    _ => {
                        c.slots.insert(
                            ip,
                            Slot::Assigned {
                                key: key.clone(),
                                meta: meta.clone(),
                                since_ms,
                            },
                        );
                        true
                    }
                };
            }
        }
        false
    }

    /// Restores a cooldown from a checkpoint (ignored for unknown or assigned addresses).
    pub fn restore_cooldown(&mut self, ip: Ipv4Addr, since_ms: u64) {
        for c in self.enis.values_mut().flat_map(|e| e.cidrs.values_mut()) {
            if c.net.contains(&ip) && !matches!(c.slots.get(&ip), Some(Slot::Assigned { .. })) {
                c.slots.insert(ip, Slot::Cooling { since_ms });
            }
        }
    }

    /// Forgets cooldowns that have run out (keeps the maps and the checkpoint small).
    pub fn expire_cooldowns(&mut self, now_ms: u64) {
        let cd = self.cooldown_ms;
        for c in self.enis.values_mut().flat_map(|e| e.cidrs.values_mut()) {
            c.slots
                .retain(|_, s| !matches!(s, Slot::Cooling { .. }) || is_cooling(s, now_ms, cd));
        }
    }

    /// Every assignment, in packing order.
    pub fn allocations(&self) -> Vec<(Key, PodMeta, Ipv4Addr, u64)> {
        self.allocations_ref()
            .map(|(k, m, ip, t)| (k.clone(), m.clone(), ip, t))
            .collect()
    }

    /// [`Datastore::allocations`], borrowed (the checkpoint writer's path: no copies).
    pub fn allocations_ref(&self) -> impl Iterator<Item = (&Key, &PodMeta, Ipv4Addr, u64)> {
        self.enis
            .values()
            .flat_map(|e| e.cidrs.values())
            .flat_map(|c| c.slots.iter())
            .filter_map(|(ip, s)| match s {
                Slot::Assigned {
                    key,
                    meta,
                    since_ms,
                } => Some((key, meta, *ip, *since_ms)),
                _ => None,
            })
    }

    /// Every address still cooling at `now_ms`, with its release time.
    pub fn cooldowns(&self, now_ms: u64) -> Vec<(Ipv4Addr, u64)> {
        let cd = self.cooldown_ms;
        let mut v = Vec::new();
        for c in self.enis.values().flat_map(|e| e.cidrs.values()) {
            for (ip, s) in &c.slots {
                if let Slot::Cooling { since_ms } = s
                    && is_cooling(s, now_ms, cd)
                {
                    v.push((*ip, *since_ms));
                }
            }
        }
        v
    }

    pub fn stats(&self, now_ms: u64) -> Stats {
        let kind = self.mode_kind();
        let cd = self.cooldown_ms;
        let mut s = Stats {
            enis: self.enis.len(),
            ..Stats::default()
        };
        for c in self
            .enis
            .values()
            .flat_map(|e| e.cidrs.values())
            .filter(|c| c.kind == kind)
        {
            s.total += c.size();
            s.assigned += c.assigned();
            s.cooling += c.cooling(now_ms, cd);
            if c.kind == CidrKind::Prefix {
                s.prefixes += 1;
                if c.is_free(now_ms, cd) {
                    s.free_prefixes += 1;
                }
            }
        }
        s.available = s.total - s.assigned - s.cooling;
        s
    }

    /// CIDRs that can go back to EC2, highest first (the reverse of packing order), at most `max`.
    /// Mode-mismatched leftovers (after a PD toggle) come first: they are never used.
    pub fn freeable_cidrs(&self, now_ms: u64, max: usize) -> Vec<(String, Ipv4Net)> {
        let kind = self.mode_kind();
        let cd = self.cooldown_ms;
        let mut leftovers = Vec::new();
        let mut surplus = Vec::new();
        for e in self.enis.values().rev() {
            for c in e.cidrs.values().rev() {
                if !c.is_free(now_ms, cd) {
                    continue;
                }
                if c.kind == kind {
                    surplus.push((e.id.clone(), c.net))
                } else {
                    leftovers.push((e.id.clone(), c.net))
                }
            }
        }
        leftovers.into_iter().chain(surplus).take(max).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("cidr")
    }

    fn eni(id: &str, dev: u32, primary_ip: &str) -> Eni {
        Eni {
            id: id.into(),
            device_number: dev,
            primary: dev == 0,
            primary_ip: primary_ip.parse().expect("ip"),
            subnet_id: "subnet-1".into(),
            subnet_cidr: net("10.0.0.0/20"),
            route_table: Eni::route_table_for(dev, dev == 0),
            created_ms: 0,
            cidrs: BTreeMap::new(),
        }
    }

    fn key(n: u32) -> Key {
        Key::new("aws-cni", &format!("c{n}"), "eth0")
    }

    fn ds_ips() -> Datastore {
        let mut d = Datastore::new(false, 30_000);
        d.add_eni(eni("eni-1", 1, "10.0.1.10"));
        d.add_eni(eni("eni-0", 0, "10.0.0.10"));
        d.add_cidrs(
            "eni-1",
            &[net("10.0.1.12/32"), net("10.0.1.11/32")],
            CidrKind::Ip,
        );
        d.add_cidrs(
            "eni-0",
            &[
                net("10.0.0.12/32"),
                net("10.0.0.11/32"),
                net("10.0.0.10/32"),
            ],
            CidrKind::Ip,
        );
        d
    }

    #[test]
    fn packs_lowest_device_then_lowest_address_and_skips_the_eni_primary() {
        let mut d = ds_ips();
        let got: Vec<(String, u32)> = (0..4)
            .map(|n| {
                let a = d.assign(&key(n), &PodMeta::default(), 0).expect("assign");
                (a.ip.to_string(), a.route_table)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.11".into(), 254),
                ("10.0.0.12".into(), 254),
                ("10.0.1.11".into(), 2),
                ("10.0.1.12".into(), 2)
            ]
        );
        assert!(matches!(
            d.assign(&key(9), &PodMeta::default(), 0),
            Err(AssignError::Empty {
                total: 4,
                assigned: 4,
                cooling: 0
            })
        ));
    }

    #[test]
    fn repeated_add_is_idempotent_and_unknown_del_is_not_an_error() {
        let mut d = ds_ips();
        let a = d.assign(&key(1), &PodMeta::default(), 0).expect("first");
        let b = d.assign(&key(1), &PodMeta::default(), 5).expect("again");
        assert_eq!((a.ip, b.existing), (b.ip, true));
        assert_eq!(d.stats(5).assigned, 1);
        assert!(d.release(&key(42), 5).is_none());
        assert_eq!(d.release(&key(1), 5).map(|r| r.ip), Some(a.ip));
        assert!(d.release(&key(1), 6).is_none(), "second DEL finds nothing");
    }

    #[test]
    fn an_unwound_add_gives_its_address_back_without_cooldown() {
        let mut d = ds_ips();
        let a = d.assign(&key(1), &PodMeta::default(), 0).expect("assign");
        let r = d.release_unused(&key(1)).expect("held");
        assert_eq!(r.ip, a.ip);
        let s = d.stats(10);
        assert_eq!((s.assigned, s.cooling, s.available), (0, 0, 4));
        let again = d.assign(&key(2), &PodMeta::default(), 10).expect("reuse");
        assert_eq!(again.ip, a.ip, "lowest address free again at once");
        assert!(
            d.release_unused(&key(1)).is_none(),
            "nothing left to release"
        );
    }

    #[test]
    fn cooldown_blocks_reuse_and_counts_as_unavailable() {
        let mut d = ds_ips();
        let a = d.assign(&key(1), &PodMeta::default(), 0).expect("assign");
        d.release(&key(1), 1_000);
        let s = d.stats(1_000);
        assert_eq!((s.total, s.assigned, s.cooling, s.available), (4, 0, 1, 3));
        let b = d
            .assign(&key(2), &PodMeta::default(), 2_000)
            .expect("assign");
        assert_ne!(b.ip, a.ip, "cooling address skipped");
        assert_eq!(
            d.stats(31_000).cooling,
            0,
            "cooldown over at release + 30 s"
        );
        d.release(&key(2), 31_000);
        let c = d
            .assign(&key(3), &PodMeta::default(), 31_000)
            .expect("assign");
        assert_eq!(c.ip, a.ip, "reusable once cooled");
        assert_eq!(d.cooldowns(31_000), vec![(b.ip, 31_000)]);
    }

    #[test]
    fn prefix_mode_serves_prefixes_from_base_upward_and_ignores_ip_leftovers() {
        let mut d = Datastore::new(true, 0);
        d.add_eni(eni("eni-0", 0, "10.0.0.10"));
        d.add_cidrs("eni-0", &[net("10.0.0.11/32")], CidrKind::Ip);
        d.add_cidrs(
            "eni-0",
            &[net("10.0.4.32/28"), net("10.0.4.16/28")],
            CidrKind::Prefix,
        );
        let ips: Vec<String> = (0..17)
            .map(|n| {
                d.assign(&key(n), &PodMeta::default(), 0)
                    .expect("assign")
                    .ip
                    .to_string()
            })
            .collect();
        assert_eq!(
            (ips[0].as_str(), ips[15].as_str(), ips[16].as_str()),
            ("10.0.4.16", "10.0.4.31", "10.0.4.32")
        );
        let s = d.stats(0);
        assert_eq!((s.total, s.prefixes, s.free_prefixes), (32, 2, 0));
        // The /32 leftover from non-PD mode is first to go back to EC2.
        assert_eq!(
            d.freeable_cidrs(0, 10),
            vec![("eni-0".to_string(), net("10.0.0.11/32"))]
        );
    }

    #[test]
    fn freeable_skips_assigned_and_cooling_and_takes_the_highest_first() {
        let mut d = ds_ips();
        d.assign(&key(1), &PodMeta::default(), 0).expect("assign"); // 10.0.0.11
        d.assign(&key(2), &PodMeta::default(), 0).expect("assign"); // 10.0.0.12
        d.release(&key(2), 100);
        let f = d.freeable_cidrs(100, 10);
        assert_eq!(
            f,
            vec![
                ("eni-1".to_string(), net("10.0.1.12/32")),
                ("eni-1".to_string(), net("10.0.1.11/32"))
            ]
        );
        assert!(
            !d.remove_cidr("eni-0", net("10.0.0.12/32"), 100, false),
            "cooling CIDR kept"
        );
        assert!(
            d.remove_cidr("eni-0", net("10.0.0.12/32"), 30_100, false),
            "after cooldown"
        );
        assert!(
            !d.remove_eni("eni-0", 30_100, false),
            "primary never removed"
        );
        assert!(d.remove_eni("eni-1", 30_100, false));
    }

    #[test]
    fn restore_rejects_stale_and_conflicting_allocations() {
        let mut d = ds_ips();
        let ip: Ipv4Addr = "10.0.0.11".parse().expect("ip");
        assert!(d.restore(&key(1), &PodMeta::default(), ip, 7));
        assert!(
            d.restore(&key(1), &PodMeta::default(), ip, 7),
            "same key again is fine"
        );
        assert!(
            !d.restore(&key(2), &PodMeta::default(), ip, 7),
            "held by another key"
        );
        assert!(
            !d.restore(
                &key(3),
                &PodMeta::default(),
                "10.9.9.9".parse().expect("ip"),
                7
            ),
            "in no CIDR"
        );
        d.restore_cooldown("10.0.0.12".parse().expect("ip"), 10);
        assert_eq!(d.stats(20).cooling, 1);
        assert_eq!(d.allocations(), vec![(key(1), PodMeta::default(), ip, 7)]);
        d.expire_cooldowns(40_000);
        assert!(d.cooldowns(40_000).is_empty());
    }
}
