//! The daemon: the datastore behind a lock, the checkpoint written before every reply, and the
//! reconciler that executes the warm-pool plan against EC2.
//!
//! EC2 calls are made without holding the datastore lock; results are applied under it. An ADD
//! that finds the pool empty while it can still grow waits (bounded) for the reconciler instead
//! of failing; when it cannot grow it fails at once with the reason.

use crate::checkpoint;
use crate::cloud::{Cloud, CloudError, EniInfo, NewEni, Node};
use crate::config::Config;
use crate::datastore::{AssignError, Assignment, CidrKind, Datastore, Eni, Key, PodMeta};
use crate::pool::{self, Action, Blocked, Limits, Target};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, Notify};

pub const TAG_INSTANCE: &str = "node.k8s.amazonaws.com/instance_id";
pub const TAG_CREATED: &str = "node.k8s.amazonaws.com/createdAt";
pub const TAG_NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";
pub const TAG_CLUSTER: &str = "cluster.k8s.amazonaws.com/name";

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What [`Ipamd::sync_with_ec2`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub cidrs_added: usize,
    pub cidrs_removed: usize,
    pub enis_adopted: usize,
    pub enis_removed: usize,
    /// Managed ENIs whose security groups were set to the primary ENI's.
    pub security_groups_synced: usize,
}

/// The instance type's limits: from the on-disk cache, else `DescribeInstanceTypes` (then
/// cached), else `None` (the caller falls back to the built-in table).
async fn instance_limits<C: Cloud>(
    cfg: &Config,
    cloud: &C,
    name: &str,
) -> Option<(u32, u32, bool)> {
    let path = &cfg.instance_type_cache;
    let mut cache: BTreeMap<String, (u32, u32, bool)> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(t) = cache.get(name) {
        return Some(*t);
    }
    let t = cloud.instance_type(name).await.ok().flatten()?;
    cache.insert(name.to_string(), t);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(body) = serde_json::to_vec(&cache) {
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, body).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
    Some(t)
}

#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The pool is empty and cannot grow; the message names why.
    #[error("no free address: {0}")]
    Exhausted(String),
    /// The pool is growing but no address arrived in time.
    #[error("no free address yet: the pool is growing ({0}); retry")]
    Timeout(String),
    #[error("could not persist the allocation: {0}")]
    Checkpoint(#[from] checkpoint::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    #[error("instance type {0} is unknown to EC2 and to the built-in table")]
    UnknownType(String),
    #[error("host networking: {0}")]
    Host(#[from] crate::hostnet::Error),
    #[error("SNAT rules: {0}")]
    Snat(#[from] crate::snat::Error),
}

struct State {
    ds: Datastore,
    /// ENI id → attachment id (for detach).
    attachments: HashMap<String, String>,
    /// Device indexes in use on card 0, ours or not (unmanaged ENIs included).
    used_devices: BTreeSet<u32>,
    /// No growth attempts before this (subnet exhausted, throttled).
    backoff_until: Option<Instant>,
    backoff_reason: Option<String>,
    /// The backoff is for an exhausted subnet (ADDs fail at once) rather than throttling (ADDs
    /// wait, bounded).
    backoff_exhausted: bool,
    /// CIDRs and ENIs ipamd changed itself, and when (the resync leaves them alone for a while).
    recent: HashMap<String, Instant>,
    last_decrease: Option<Instant>,
    /// The pool has had a free address at least once: from then on, a pool that is empty but
    /// growing still counts as ready (ADDs wait for it), so a busy node does not flap NotReady.
    has_served: bool,
}

pub struct Ipamd<C: Cloud> {
    /// Host networking of the ENIs (absent when ipamd runs without netlink, e.g. unit tests).
    host: Option<crate::hostnet::HostNet>,
    pub cfg: Config,
    pub node: Node,
    pub limits: Limits,
    pub target: Target,
    pub cloud: C,
    state: Mutex<State>,
    /// Signalled whenever the pool changes (waiting ADDs re-check).
    changed: Notify,
    /// Asks the reconciler for a pass now.
    wake: Notify,
    pub counters: crate::observe::Counters,
    /// ENI id → MAC (to find its link).
    macs: Mutex<HashMap<String, String>>,
    /// Stop allocating (SIGTERM).
    stopping: std::sync::atomic::AtomicBool,
    subnet_backoff: Duration,
    /// The security groups new ENIs get: the primary ENI's, followed when they change.
    security_groups: std::sync::Mutex<Vec<String>>,
    /// Writes the checkpoint; used only with `state` locked.
    checkpoint: std::sync::Mutex<checkpoint::Writer>,
}

impl<C: Cloud> Ipamd<C> {
    /// Builds the datastore from EC2's view of the node, then loads the checkpoint (ours, else
    /// upstream's) and keeps the allocations whose address is still on the node.
    pub async fn init(
        cfg: Config,
        node: Node,
        cloud: C,
        host: Option<crate::hostnet::HostNet>,
    ) -> Result<Arc<Self>, InitError> {
        let (per_eni, card_enis, nitro) =
            match instance_limits(&cfg, &cloud, &node.instance_type).await {
                Some(t) => t,
                None => {
                    let t = nodewire_aws::limits::lookup(&node.instance_type)
                        .ok_or_else(|| InitError::UnknownType(node.instance_type.clone()))?;
                    (
                        t.ipv4_addresses_per_interface,
                        t.default_card_enis(),
                        t.supports_prefix_delegation(),
                    )
                }
            };
        let prefix_mode = cfg.prefix_delegation && nitro;
        let max_enis = cfg.max_eni.map_or(card_enis, |m| m.min(card_enis));
        let per_slot = if prefix_mode { 16 } else { 1 };
        let formula_pods = card_enis * per_eni.saturating_sub(1) + 2;
        let limits = Limits {
            max_enis,
            slots_per_eni: per_eni.saturating_sub(1),
            per_slot,
            max_pods: cfg
                .max_pods
                .unwrap_or(if prefix_mode { 110 } else { formula_pods }),
        };
        let target = if prefix_mode || !cfg.prefix_delegation {
            cfg.target()
        } else {
            // Prefix delegation asked for on a non-Nitro type: upstream falls back to IPs.
            Config {
                prefix_delegation: false,
                ..cfg.clone()
            }
            .target()
        };
        let mut ds = Datastore::new(prefix_mode, cfg.ip_cooldown.as_millis() as u64);
        let mut attachments = HashMap::new();
        let mut macs = HashMap::new();
        let mut used_devices = BTreeSet::new();
        for e in cloud.enis_of(&node.instance_id).await? {
            if e.network_card != 0 {
                continue;
            }
            if let Some(d) = e.device_index {
                used_devices.insert(d);
            }
            if !managed(&cfg, &node, &e) {
                continue;
            }
            if let Some(a) = &e.attachment_id {
                attachments.insert(e.id.clone(), a.clone());
            }
            macs.insert(e.id.clone(), e.mac.clone());
            add_eni(&mut ds, &node, &e, now_ms());
        }
        let state = State {
            ds,
            attachments,
            used_devices,
            backoff_until: None,
            backoff_reason: None,
            backoff_exhausted: false,
            recent: HashMap::new(),
            last_decrease: None,
            has_served: false,
        };
        let me = Arc::new(Ipamd {
            host,
            subnet_backoff: cfg.subnet_backoff,
            security_groups: std::sync::Mutex::new(node.security_groups.clone()),
            checkpoint: std::sync::Mutex::new(checkpoint::Writer::new(&cfg.backing_store)),
            target,
            limits,
            node,
            cloud,
            state: Mutex::new(state),
            changed: Notify::new(),
            wake: Notify::new(),
            macs: Mutex::new(macs),
            counters: Default::default(),
            stopping: Default::default(),
            cfg,
        });
        me.setup_host().await?;
        me.setup_snat().await?;
        me.load_checkpoint().await?;
        Ok(me)
    }

    /// Re-applies host networking for every managed ENI (idempotent).
    async fn setup_host(&self) -> Result<(), InitError> {
        let Some(h) = &self.host else { return Ok(()) };
        h.setup_primary(&self.node.primary_mac, self.cfg.eni_mtu)
            .await?;
        let enis: Vec<(String, Ipv4Addr, u32, String)> = {
            let st = self.state.lock().await;
            st.ds
                .enis
                .values()
                .filter(|e| !e.primary)
                .map(|e| {
                    (
                        e.id.clone(),
                        e.primary_ip,
                        e.route_table,
                        e.subnet_id.clone(),
                    )
                })
                .collect()
        };
        for (id, ip, table, subnet) in enis {
            let Some(mac) = self.macs.lock().await.get(&id).cloned() else {
                continue;
            };
            if subnet != self.node.subnet_id {
                tracing::warn!(eni = %id, %subnet, "ENI outside the node's subnet: host routes not managed");
                continue;
            }
            h.setup_eni(&self.eni_net(&mac, ip, table)).await?;
        }
        Ok(())
    }

    /// SNAT / connmark rules and the fwmark rule (idempotent: the table is replaced).
    async fn setup_snat(&self) -> Result<(), InitError> {
        let Some(h) = &self.host else { return Ok(()) };
        let primary_if = h.link_name(&self.node.primary_mac).await?;
        crate::hostnet::HostNet::sysctls(&primary_if)?;
        let rs = crate::snat::ruleset(
            &self.cfg,
            self.node.primary_ip,
            &primary_if,
            &self.node.vpc_cidrs,
        );
        tokio::task::spawn_blocking(move || crate::snat::apply(&rs))
            .await
            .map_err(|e| InitError::Snat(crate::snat::Error::Apply(e.to_string())))??;
        if !self.cfg.external_snat || self.cfg.node_port_support {
            h.ensure_fwmark_rule(self.cfg.connmark, crate::snat::FWMARK_RULE_PRIORITY)
                .await?;
        }
        Ok(())
    }

    fn eni_net(&self, mac: &str, ip: Ipv4Addr, table: u32) -> crate::hostnet::EniNet {
        crate::hostnet::EniNet {
            mac: mac.to_string(),
            primary_ip: ip,
            subnet: self.node.subnet_cidr,
            table,
            mtu: self.cfg.eni_mtu,
        }
    }

    async fn load_checkpoint(&self) -> Result<(), InitError> {
        let cp =
            checkpoint::read_either(&self.cfg.backing_store, &self.cfg.upstream_backing_store)?;
        let mut st = self.state.lock().await;
        if let Some(cp) = cp {
            let mut dropped = 0;
            let mut not_here = Vec::new();
            for a in &cp.allocations {
                let Some(ip) = a.ipv4 else { continue };
                if !st
                    .ds
                    .restore(&a.key, &a.metadata, ip, a.allocated_ns / 1_000_000)
                {
                    dropped += 1;
                    not_here.push(ip);
                }
            }
            // Addresses no longer on the node (unassigned while ipamd was down): their pods'
            // rules and routes can only mislead, unless another restored allocation holds the
            // address (a duplicate in the file).
            if let Some(h) = &self.host {
                let held: std::collections::HashSet<Ipv4Addr> = st
                    .ds
                    .allocations()
                    .into_iter()
                    .map(|(.., ip, _)| ip)
                    .collect();
                for ip in not_here.into_iter().filter(|ip| !held.contains(ip)) {
                    let pruned = h.prune_pod(ip).await?;
                    tracing::info!(%ip, pruned, "checkpointed address no longer on the node: dropped");
                }
            }
            for c in &cp.cooldowns {
                st.ds.restore_cooldown(c.ipv4, c.released_ns / 1_000_000);
            }
            // Pods deleted while ipamd was down: their host veth is gone, or its name now serves
            // a newer sandbox of the same pod (the alias vpc-cni tags it with names another
            // attachment). Their rules are pruned and their addresses go into cooldown
            // (endpoints may still point at them).
            if let Some(h) = &self.host {
                let links = h.link_aliases().await?;
                let gone: Vec<(Key, Ipv4Addr)> = st
                    .ds
                    .allocations()
                    .into_iter()
                    .filter(|(k, meta, ..)| {
                        host_veth(&self.cfg.veth_prefix, meta)
                            .is_some_and(|v| !veth_serves(links.get(&v), k))
                    })
                    .map(|(k, _, ip, _)| (k, ip))
                    .collect();
                for (k, ip) in gone {
                    let pruned = h.prune_pod(ip).await?;
                    st.ds.release(&k, now_ms());
                    dropped += 1;
                    tracing::info!(%ip, pruned, container = %k.container, "pod gone while ipamd was down: address released");
                }
            }
            tracing::info!(
                restored = cp.allocations.len() - dropped,
                dropped,
                "checkpoint loaded"
            );
        }
        self.persist(&st.ds)?;
        Ok(())
    }

    /// Writes the checkpoint (called with the state lock held, so the writer is never
    /// contended).
    fn persist(&self, ds: &Datastore) -> Result<(), checkpoint::Error> {
        let mut w = self
            .checkpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.write(ds, now_ms())
    }

    /// Why the pool cannot grow right now, if it cannot.
    fn cannot_grow(&self, st: &State) -> Option<String> {
        if let Some(until) = st.backoff_until
            && Instant::now() < until
            && st.backoff_exhausted
        {
            return Some(
                st.backoff_reason
                    .clone()
                    .unwrap_or_else(|| "backing off".into()),
            );
        }
        let (actions, blocked) = pool::plan(&st.ds, now_ms(), self.target, &self.limits, |_| false);
        let growing = actions
            .iter()
            .any(|a| matches!(a, Action::Assign { .. } | Action::CreateEni { .. }));
        let s = st.ds.stats(now_ms());
        match blocked {
            Some(Blocked::EniLimit { max_enis }) => Some(format!(
                "all {max_enis} ENIs of {} are in use and full ({} addresses assigned, {} in cooldown)",
                self.node.instance_type, s.assigned, s.cooling
            )),
            Some(Blocked::MaxPods { max_pods }) => Some(format!("max pods ({max_pods}) reached")),
            None if !growing && s.total as u32 >= self.limits.max_pods => Some(format!(
                "max pods ({}) reached ({} addresses assigned, {} in cooldown)",
                self.limits.max_pods, s.assigned, s.cooling
            )),
            None if !growing
                && s.assigned + s.cooling >= s.total
                && s.enis as u32 >= self.limits.max_enis =>
            {
                Some(format!(
                    "all {} ENIs of {} are in use and full ({} addresses assigned, {} in cooldown)",
                    self.limits.max_enis, self.node.instance_type, s.assigned, s.cooling
                ))
            }
            None => None,
        }
    }

    /// ADD: an address for `key` (the same one again for a repeated ADD).
    pub async fn add(&self, key: &Key, meta: &PodMeta) -> Result<Assignment, AddError> {
        crate::observe::Counters::inc(&self.counters.add);
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AddError::Exhausted("ipamd is shutting down".into()));
        }
        let deadline = Instant::now() + self.cfg.add_wait;
        loop {
            let waiter = self.changed.notified();
            tokio::pin!(waiter);
            waiter.as_mut().enable();
            {
                let mut st = self.state.lock().await;
                let now = now_ms();
                match st.ds.assign(key, meta, now) {
                    Ok(a) => {
                        st.has_served = true;
                        if !a.existing
                            && let Err(e) = self.persist(&st.ds)
                        {
                            st.ds.forget(key);
                            return Err(e.into());
                        }
                        // The reconciler only when this address took the pool below its
                        // target: an ADD can shrink a surplus but never make one, and waking
                        // it on every ADD costs a plan over the whole pool on ipamd's one
                        // thread while the plugin is still wiring the pod.
                        let short = pool::shortage(&st.ds.stats(now), self.target, &self.limits);
                        drop(st);
                        if short > 0 {
                            self.wake.notify_one();
                        }
                        return Ok(a);
                    }
                    Err(AssignError::Empty { .. }) => {
                        crate::observe::Counters::inc(&self.counters.no_available);
                        if let Some(why) = self.cannot_grow(&st) {
                            return Err(AddError::Exhausted(why));
                        }
                    }
                }
            }
            self.wake.notify_one();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, waiter).await.is_err() {
                let st = self.state.lock().await;
                let s = st.ds.stats(now_ms());
                return Err(AddError::Timeout(format!(
                    "{} assigned, {} in cooldown, {} total",
                    s.assigned, s.cooling, s.total
                )));
            }
        }
    }

    /// Removes a held address's host rules and route (vpc-cni's wiring) while the state lock
    /// is held, so no other pod can have been given the address yet. A failure is logged, not
    /// fatal: the pod is going away either way.
    async fn prune_held(&self, ip: Ipv4Addr, why: &str) {
        if let Some(h) = &self.host {
            match h.prune_pod(ip).await {
                Ok(n) => tracing::debug!(%ip, removed = n, why, "host rules and route removed"),
                Err(e) => tracing::warn!(%ip, error = %e, why, "removing host rules failed"),
            }
        }
    }

    /// DEL: removes the pod's host rules and route, then releases its address into cooldown
    /// (none when `unused`: vpc-cni unwound the ADD, so nothing can point at the address).
    /// Unknown keys are fine, and so is a checkpoint write that fails (see below): DEL never
    /// fails.
    pub async fn del(&self, key: &Key, unused: bool) -> Option<Assignment> {
        // Upstream's reasons for awscni_del_ip_req_count.
        self.counters.del(if unused {
            "SetupNSFailed"
        } else {
            "PodDeleted"
        });
        let mut st = self.state.lock().await;
        if let Some((ip, ..)) = st.ds.held(key) {
            self.prune_held(ip, "DEL").await;
        }
        let r = if unused {
            st.ds.release_unused(key)
        } else {
            st.ds.release(key, now_ms())
        };
        if r.is_some() {
            // A DEL must not block pod deletion, so a failed write does not undo the release:
            // the next successful write (every write is the whole datastore) records it, and if
            // ipamd dies first, restart recovery releases the pod anyway (its veth is gone).
            if let Err(e) = self.persist(&st.ds) {
                tracing::warn!(error = %e, "DEL: checkpoint write failed; the release is recorded with the next write");
            }
            drop(st);
            self.wake.notify_one();
        }
        r
    }

    /// GC: removes the host rules and routes of every allocation of `network` not in `valid`
    /// (the CNI's DEL never ran for them) and releases them, all under the state lock; if the
    /// release cannot be recorded, none of it happened.
    pub async fn gc(&self, network: &str, valid: &[Key]) -> Result<Vec<Key>, checkpoint::Error> {
        let mut st = self.state.lock().await;
        let now = now_ms();
        let stale: Vec<(Key, PodMeta, Ipv4Addr, u64)> = st
            .ds
            .allocations()
            .into_iter()
            .filter(|(k, ..)| k.network == network && !valid.contains(k))
            .collect();
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        for (k, meta, ip, since) in &stale {
            self.prune_held(*ip, "GC").await;
            st.ds.release(k, now);
            tracing::info!(%ip, container = %k.container, since, pod = %meta.name, "GC released a stale attachment");
        }
        if let Err(e) = self.persist(&st.ds) {
            for (k, meta, ip, since) in &stale {
                st.ds.restore(k, meta, *ip, *since);
            }
            return Err(e);
        }
        drop(st);
        self.wake.notify_one();
        Ok(stale.into_iter().map(|(k, ..)| k).collect())
    }

    /// The address a key holds and its ENI's route table, if any.
    pub async fn lookup(&self, key: &Key) -> Option<(Ipv4Addr, u32)> {
        self.state
            .lock()
            .await
            .ds
            .lookup(key)
            .map(|(ip, e)| (ip, e.route_table))
    }

    /// Whether an ADD can be served now (a free address exists), and why not.
    pub async fn status(&self) -> (bool, String) {
        let mut st = self.state.lock().await;
        let s = st.ds.stats(now_ms());
        if s.available > 0 {
            st.has_served = true;
            return (true, format!("{} addresses free", s.available));
        }
        // Not ready while the pool is still filling for the first time (a node's first seconds):
        // an ADD now would wait or fail, and the installer must not mark the node network-ready
        // yet (upstream #330). Later, an empty pool that is growing is a busy node, not a broken
        // one: ADDs wait for the growth, and saying not ready would flap the node.
        match self.cannot_grow(&st) {
            Some(why) => (false, why),
            None => (
                st.has_served,
                format!(
                    "no free address right now: the pool is growing ({} assigned, {} in cooldown){}",
                    s.assigned,
                    s.cooling,
                    if st.has_served {
                        "; an ADD waits for it"
                    } else {
                        ""
                    }
                ),
            ),
        }
    }

    /// Deletes this node's leaked ENIs: `available`, tagged with our instance id, made by us
    /// (`aws-K8S-` description) and older than the grace period (a crash between create and
    /// attach, or between detach and delete, leaves one).
    pub async fn sweep_leaked(&self) -> Result<Vec<String>, CloudError> {
        let found = self
            .cloud
            .available_tagged(&self.node.vpc_id, TAG_INSTANCE)
            .await?;
        let doomed = leaked(
            &found,
            &self.node.instance_id,
            SystemTime::now(),
            self.cfg.leaked_eni_grace,
        );
        let mut deleted = Vec::new();
        for id in doomed {
            match self.cloud.delete_eni(&id).await {
                Ok(()) => {
                    tracing::info!(eni = %id, "deleted a leaked ENI");
                    deleted.push(id);
                }
                Err(e) => tracing::warn!(eni = %id, error = %e, "could not delete a leaked ENI"),
            }
        }
        Ok(deleted)
    }

    /// Runs the leaked-ENI sweep every `interval` (jittered) until [`Ipamd::stop`].
    pub async fn run_sweeper(self: Arc<Self>, interval: Duration) {
        while !self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            let jitter = 0.5 + 0.5 * rand_unit();
            tokio::time::sleep(interval.mul_f64(jitter)).await;
            if let Err(e) = self.sweep_leaked().await {
                tracing::warn!(error = %e, "leaked-ENI sweep failed");
            }
        }
    }

    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// A copy of the datastore (introspection).
    pub async fn datastore(&self) -> Datastore {
        self.state.lock().await.ds.clone()
    }

    pub async fn stats(&self) -> crate::datastore::Stats {
        self.state.lock().await.ds.stats(now_ms())
    }

    /// Runs the reconciler until [`Ipamd::stop`].
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut last_sync = Instant::now();
        while !self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = %e, "pool reconcile failed");
            }
            // EC2 is the truth: resync on the same task, so it never races a pool action.
            if last_sync.elapsed() >= self.cfg.ec2_sync_interval {
                last_sync = Instant::now();
                if let Err(e) = self.sync_with_ec2().await {
                    tracing::warn!(error = %e, "EC2 resync failed");
                }
            }
            let wait = interval.min(self.cfg.ec2_sync_interval);
            let _ = tokio::time::timeout(wait, self.wake.notified()).await;
        }
    }

    /// Aligns the datastore with EC2's view of the node: addresses assigned behind ipamd's back
    /// join the pool; addresses and ENIs EC2 no longer has leave it (pods on them lose them, as
    /// upstream's force-removal); managed ENIs attached behind its back are adopted.
    pub async fn sync_with_ec2(&self) -> Result<SyncReport, CloudError> {
        let enis = self.cloud.enis_of(&self.node.instance_id).await?;
        let now = now_ms();
        let mut report = SyncReport::default();
        let mut adopt = Vec::new();
        {
            let mut st = self.state.lock().await;
            let grace = self.cfg.ec2_sync_grace;
            st.recent.retain(|_, t| t.elapsed() < grace);
            let recent = |st: &State, k: &str| st.recent.contains_key(k);
            // Device indexes in use are EC2's word, ours and other tenants' alike.
            st.used_devices = enis
                .iter()
                .filter(|e| e.network_card == 0)
                .filter_map(|e| e.device_index)
                .collect();
            let attached: BTreeSet<String> = enis.iter().map(|e| e.id.clone()).collect();
            let gone: Vec<String> = st
                .ds
                .enis
                .values()
                .filter(|e| !attached.contains(&e.id) && !recent(&st, &e.id))
                .map(|e| e.id.clone())
                .collect();
            for id in gone {
                st.ds.remove_eni(&id, now, true);
                st.attachments.remove(&id);
                report.enis_removed += 1;
            }
            for e in enis.iter().filter(|e| e.network_card == 0) {
                if !managed(&self.cfg, &self.node, e) {
                    continue;
                }
                let Some(known) = st.ds.eni_by_id(&e.id).cloned() else {
                    if e.status == "in-use" {
                        adopt.push(e.clone());
                    }
                    continue;
                };
                let want: BTreeSet<Ipv4Net> = e
                    .ips
                    .iter()
                    .map(|ip| Ipv4Net::new(*ip, 32).expect("32 is valid"))
                    .chain(e.prefixes.iter().copied())
                    .collect();
                let stale: Vec<Ipv4Net> = known
                    .cidrs
                    .keys()
                    .filter(|n| {
                        !want.contains(n)
                            && !recent(&st, &n.addr().to_string())
                            && !recent(&st, &n.to_string())
                    })
                    .copied()
                    .collect();
                for net in stale {
                    st.ds.remove_cidr(&e.id, net, now, true);
                    report.cidrs_removed += 1;
                }
                let missing_ips: Vec<Ipv4Addr> = e
                    .ips
                    .iter()
                    .copied()
                    .filter(|ip| {
                        !known
                            .cidrs
                            .contains_key(&Ipv4Net::new(*ip, 32).expect("32 is valid"))
                            && !recent(&st, &ip.to_string())
                    })
                    .collect();
                let missing_prefixes: Vec<Ipv4Net> = e
                    .prefixes
                    .iter()
                    .copied()
                    .filter(|p| !known.cidrs.contains_key(p) && !recent(&st, &p.to_string()))
                    .collect();
                report.cidrs_added += missing_ips.len() + missing_prefixes.len();
                add_cidrs(&mut st.ds, &e.id, &missing_ips, &missing_prefixes);
            }
            if report.cidrs_removed + report.enis_removed > 0 {
                let _ = self.persist(&st.ds);
            }
        }
        for e in adopt {
            let device = e.device_index.unwrap_or(0);
            self.macs.lock().await.insert(e.id.clone(), e.mac.clone());
            if let (Some(h), Some(ip)) = (&self.host, e.primary_ip)
                && let Err(err) = h
                    .setup_eni(&self.eni_net(&e.mac, ip, Eni::route_table_for(device, false)))
                    .await
            {
                tracing::warn!(eni = %e.id, error = %err, "could not set up an adopted ENI");
                continue;
            }
            let mut st = self.state.lock().await;
            if let Some(a) = &e.attachment_id {
                st.attachments.insert(e.id.clone(), a.clone());
            }
            add_eni(&mut st.ds, &self.node, &e, now);
            report.enis_adopted += 1;
        }
        // Security-group drift: the node's groups are its primary ENI's; managed ENIs follow
        // them (upstream refreshes from IMDS every 30 s; EC2's answer above costs nothing more).
        // Only ENIs carrying this node's tag (ipamd's own, or adopted as ours) are kept in step:
        // an untagged one may be another controller's (a trunk ENI) with deliberate groups.
        let ours = |e: &EniInfo| {
            managed(&self.cfg, &self.node, e)
                && e.tags.get(TAG_INSTANCE) == Some(&self.node.instance_id)
        };
        if let Some((groups, stale)) = sg_drift(&enis, ours) {
            {
                let mut cur = self
                    .security_groups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if *cur != groups {
                    tracing::info!(from = ?*cur, to = ?groups, "the primary ENI's security groups changed");
                    *cur = groups.clone();
                }
            }
            for id in stale {
                match self.cloud.set_security_groups(&id, &groups).await {
                    Ok(()) => {
                        tracing::info!(eni = %id, ?groups, "security groups synced to the primary ENI's");
                        report.security_groups_synced += 1;
                    }
                    Err(e) => {
                        // The rest wait for the next resync; a throttle backs the pool off too.
                        tracing::warn!(eni = %id, error = %e, "could not sync security groups");
                        self.note_error(&e).await;
                        break;
                    }
                }
            }
        }
        if report != SyncReport::default() {
            tracing::info!(?report, "resynced with EC2");
            self.changed.notify_waiters();
        }
        Ok(report)
    }

    /// One pass: plan under the lock, call EC2 outside it, apply the results under it.
    pub async fn reconcile_once(&self) -> Result<(), CloudError> {
        let now = now_ms();
        let (actions, device_slots) = {
            let st = self.state.lock().await;
            if st.backoff_until.is_some_and(|u| Instant::now() < u) {
                return Ok(());
            }
            let created: BTreeMap<String, u64> = st
                .ds
                .enis
                .values()
                .map(|e| (e.id.clone(), e.created_ms))
                .collect();
            let (mut actions, _) = pool::plan(&st.ds, now, self.target, &self.limits, |id| {
                created.get(id).is_some_and(|c| {
                    now.saturating_sub(*c) >= self.cfg.min_eni_lifetime.as_millis() as u64
                })
            });
            // Scale-downs are spaced (upstream: 30 s).
            if st
                .last_decrease
                .is_some_and(|t| t.elapsed() < self.cfg.decrease_interval)
            {
                actions.retain(|a| matches!(a, Action::Assign { .. } | Action::CreateEni { .. }));
            }
            let free: Vec<u32> = (1..self.limits.max_enis.max(1) + 8)
                .filter(|d| !st.used_devices.contains(d))
                .collect();
            (actions, free)
        };
        let mut free_devices = device_slots.into_iter();
        let mut creates = Vec::new();
        for a in actions {
            match a {
                Action::Assign { eni_id, count } => self.grow_eni(&eni_id, count).await?,
                Action::CreateEni { count } => {
                    let Some(dev) = free_devices.next() else {
                        break;
                    };
                    creates.push(self.create_eni(dev, count));
                }
                Action::Release { cidrs } => self.release_cidrs(cidrs).await?,
                Action::FreeEni { eni_id } => self.free_eni(&eni_id).await?,
            }
        }
        // Several ENIs are brought up concurrently when the deficit needs them.
        for r in futures::future::join_all(creates).await {
            r?;
        }
        Ok(())
    }

    fn counts(&self, count: u32) -> (u32, u32) {
        if self.limits.per_slot == 16 {
            (0, count)
        } else {
            (count, 0)
        }
    }

    async fn note_error(&self, e: &CloudError) {
        if e.is_subnet_exhausted() || e.is_throttle() {
            let mut st = self.state.lock().await;
            st.backoff_until = Some(Instant::now() + self.subnet_backoff);
            st.backoff_exhausted = e.is_subnet_exhausted();
            st.backoff_reason = Some(if e.is_subnet_exhausted() {
                format!(
                    "subnet {} has no free addresses ({})",
                    self.node.subnet_id, e.code
                )
            } else {
                format!("EC2 is throttling ({})", e.code)
            });
            drop(st);
            self.changed.notify_waiters();
        }
    }

    async fn grow_eni(&self, eni_id: &str, count: u32) -> Result<(), CloudError> {
        let (ips, prefixes) = self.counts(count);
        match self.cloud.assign(eni_id, ips, prefixes).await {
            Ok((got_ips, got_prefixes)) => {
                let mut st = self.state.lock().await;
                add_cidrs(&mut st.ds, eni_id, &got_ips, &got_prefixes);
                touch(
                    &mut st.recent,
                    got_ips
                        .iter()
                        .map(|i| i.to_string())
                        .chain(got_prefixes.iter().map(|p| p.to_string())),
                );
                drop(st);
                self.changed.notify_waiters();
                Ok(())
            }
            Err(e) => {
                self.note_error(&e).await;
                Err(e)
            }
        }
    }

    async fn create_eni(&self, device: u32, count: u32) -> Result<(), CloudError> {
        let (ips, prefixes) = self.counts(count);
        let mut tags = self.cfg.additional_eni_tags.clone();
        tags.insert(TAG_INSTANCE.into(), self.node.instance_id.clone());
        tags.insert(TAG_CREATED.into(), rfc3339_now());
        if let Some(c) = &self.cfg.cluster_name {
            tags.insert(TAG_CLUSTER.into(), c.clone());
        }
        let req = NewEni {
            subnet_id: self.node.subnet_id.clone(),
            security_groups: self
                .security_groups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            description: format!("aws-K8S-{}", self.node.instance_id),
            tags,
            ips,
            prefixes,
        };
        let eni = match self.cloud.create_eni(req).await {
            Ok(e) => e,
            Err(e) => {
                self.note_error(&e).await;
                return Err(e);
            }
        };
        self.state.lock().await.used_devices.insert(device);
        let attachment = match self
            .cloud
            .attach_eni(&eni.id, &self.node.instance_id, device)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                // Never leave an unattached ENI of ours behind.
                let _ = self.cloud.delete_eni(&eni.id).await;
                self.state.lock().await.used_devices.remove(&device);
                return Err(e);
            }
        };
        if let Err(e) = self.cloud.delete_on_termination(&eni.id, &attachment).await {
            let _ = self.detach_and_delete(&eni.id, &attachment).await;
            self.state.lock().await.used_devices.remove(&device);
            return Err(e);
        }
        // Wait for EC2 to finish attaching (it passes through `attaching`), then for the link.
        let attached = match self.wait_status(&eni.id, "in-use").await {
            Ok(a) => a,
            Err(e) => {
                let _ = self.detach_and_delete(&eni.id, &attachment).await;
                self.state.lock().await.used_devices.remove(&device);
                return Err(e);
            }
        };
        self.macs
            .lock()
            .await
            .insert(eni.id.clone(), attached.mac.clone());
        if let (Some(h), Some(ip)) = (&self.host, attached.primary_ip) {
            let table = Eni::route_table_for(device, false);
            if let Err(e) = h.setup_eni(&self.eni_net(&attached.mac, ip, table)).await {
                tracing::error!(eni = %eni.id, error = %e, "host setup failed; giving the ENI back");
                let _ = self.detach_and_delete(&eni.id, &attachment).await;
                self.state.lock().await.used_devices.remove(&device);
                return Err(CloudError {
                    action: "HostSetup",
                    code: "HostNetworking".into(),
                    message: e.to_string(),
                });
            }
        }
        let mut st = self.state.lock().await;
        touch(&mut st.recent, std::iter::once(eni.id.clone()));
        st.attachments.insert(eni.id.clone(), attachment);
        add_eni(
            &mut st.ds,
            &self.node,
            &EniInfo {
                device_index: Some(device),
                ..attached
            },
            now_ms(),
        );
        drop(st);
        self.changed.notify_waiters();
        tracing::info!(eni = %eni.id, device, ips, prefixes, "ENI attached");
        Ok(())
    }

    async fn wait_status(&self, eni_id: &str, status: &str) -> Result<EniInfo, CloudError> {
        let policy = nodewire_aws::retry::Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            factor: 1.5,
            max_attempts: 40,
        };
        let mut attempt = 0;
        loop {
            if let Some(e) = self.cloud.eni(eni_id).await?
                && e.status == status
            {
                return Ok(e);
            }
            let Some(d) = policy.delay(attempt) else {
                return Err(CloudError {
                    action: "DescribeNetworkInterfaces",
                    code: "Timeout".into(),
                    message: format!("{eni_id} did not become {status}"),
                });
            };
            tokio::time::sleep(d).await;
            attempt += 1;
        }
    }

    async fn detach_and_delete(&self, eni_id: &str, attachment: &str) -> Result<(), CloudError> {
        self.cloud.detach_eni(attachment).await?;
        self.wait_status(eni_id, "available").await?;
        self.cloud.delete_eni(eni_id).await
    }

    async fn release_cidrs(&self, cidrs: Vec<(String, Ipv4Net)>) -> Result<(), CloudError> {
        let now = now_ms();
        let mut by_eni: BTreeMap<String, Vec<Ipv4Net>> = BTreeMap::new();
        {
            let mut st = self.state.lock().await;
            for (eni, net) in cidrs {
                // Still free? (an ADD may have taken it since the plan)
                if st.ds.remove_cidr(&eni, net, now, false) {
                    touch(&mut st.recent, std::iter::once(net.trunc().to_string()));
                    touch(&mut st.recent, std::iter::once(net.addr().to_string()));
                    by_eni.entry(eni).or_default().push(net);
                }
            }
            st.last_decrease = Some(Instant::now());
        }
        let mut first_err = None;
        for (eni, nets) in by_eni {
            let ips: Vec<Ipv4Addr> = nets
                .iter()
                .filter(|n| n.prefix_len() == 32)
                .map(|n| n.addr())
                .collect();
            let prefixes: Vec<Ipv4Net> = nets
                .iter()
                .filter(|n| n.prefix_len() != 32)
                .copied()
                .collect();
            if let Err(e) = self
                .cloud
                .unassign(&eni, ips.clone(), prefixes.clone())
                .await
            {
                // EC2 still has them: keep them in the pool, and go on with the other ENIs.
                let mut st = self.state.lock().await;
                add_cidrs(&mut st.ds, &eni, &ips, &prefixes);
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn free_eni(&self, eni_id: &str) -> Result<(), CloudError> {
        let (attachment, device, ip) = {
            let mut st = self.state.lock().await;
            let ip = st.ds.eni_by_id(eni_id).map(|e| e.primary_ip);
            let device = st.ds.eni_by_id(eni_id).map(|e| e.device_number);
            if !st.ds.remove_eni(eni_id, now_ms(), false) {
                return Ok(());
            }
            st.last_decrease = Some(Instant::now());
            (st.attachments.remove(eni_id), device, ip)
        };
        // Netlink outside the lock: ADD and DEL never wait behind it.
        if let (Some(h), Some(ip)) = (&self.host, ip)
            && let Err(e) = h.remove_eni(ip).await
        {
            tracing::warn!(eni = eni_id, error = %e, "could not remove the ENI rule");
        }
        if let Some(a) = attachment {
            self.detach_and_delete(eni_id, &a).await?;
        }
        if let Some(d) = device {
            self.state.lock().await.used_devices.remove(&d);
        }
        tracing::info!(eni = eni_id, "ENI freed");
        Ok(())
    }
}

/// Security-group drift (pure): the primary ENI's groups, and the managed, attached secondary
/// ENIs on network card 0 in the primary's subnet whose groups differ from them (ENIs in another
/// subnet are custom networking's, with their own groups). `None` when EC2's answer has no
/// primary ENI or it has no groups (nothing to follow).
pub fn sg_drift(
    enis: &[EniInfo],
    managed: impl Fn(&EniInfo) -> bool,
) -> Option<(Vec<String>, Vec<String>)> {
    let primary = enis
        .iter()
        .find(|e| e.device_index == Some(0) && e.network_card == 0)?;
    let mut want = primary.security_groups.clone();
    want.sort();
    want.dedup();
    if want.is_empty() {
        return None;
    }
    let stale = enis
        .iter()
        .filter(|e| e.network_card == 0 && e.device_index.is_some_and(|d| d != 0))
        .filter(|e| e.status == "in-use" && e.subnet_id == primary.subnet_id && managed(e))
        .filter(|e| {
            let mut have = e.security_groups.clone();
            have.sort();
            have.dedup();
            have != want
        })
        .map(|e| e.id.clone())
        .collect();
    Some((want, stale))
}

fn managed(cfg: &Config, node: &Node, e: &EniInfo) -> bool {
    if e.device_index == Some(0) {
        return true;
    }
    if e.tags.get(TAG_NO_MANAGE).is_some_and(|v| v == "true") {
        return false;
    }
    match e.tags.get(TAG_INSTANCE) {
        Some(i) => *i == node.instance_id,
        None => cfg.manage_untagged_eni,
    }
}

fn add_eni(ds: &mut Datastore, node: &Node, e: &EniInfo, now: u64) {
    let device = e.device_index.unwrap_or(0);
    let Some(primary_ip) = e.primary_ip else {
        return;
    };
    ds.add_eni(Eni {
        id: e.id.clone(),
        device_number: device,
        primary: device == 0,
        primary_ip,
        subnet_id: e.subnet_id.clone(),
        subnet_cidr: node.subnet_cidr,
        route_table: Eni::route_table_for(device, device == 0),
        created_ms: now,
        cidrs: Default::default(),
    });
    add_cidrs(ds, &e.id, &e.ips, &e.prefixes);
}

fn add_cidrs(ds: &mut Datastore, eni_id: &str, ips: &[Ipv4Addr], prefixes: &[Ipv4Net]) {
    let nets: Vec<Ipv4Net> = ips
        .iter()
        .map(|ip| Ipv4Net::new(*ip, 32).expect("32 is valid"))
        .collect();
    ds.add_cidrs(eni_id, &nets, CidrKind::Ip);
    ds.add_cidrs(eni_id, prefixes, CidrKind::Prefix);
}

fn rfc3339_now() -> String {
    nodewire_aws::time::format(SystemTime::now(), false)
}

fn rand_unit() -> f64 {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (n % 1_000_000) as f64 / 1_000_000.0
}

/// Which of `enis` are this node's leaked ENIs at `now` (pure; see [`Ipamd::sweep_leaked`]).
pub fn leaked(
    enis: &[EniInfo],
    instance_id: &str,
    now: SystemTime,
    grace: Duration,
) -> Vec<String> {
    enis.iter()
        .filter(|e| e.status == "available")
        .filter(|e| e.tags.get(TAG_INSTANCE).is_some_and(|i| i == instance_id))
        .filter(|e| e.description.starts_with("aws-K8S-"))
        .filter(|e| {
            e.tags
                .get(TAG_CREATED)
                .and_then(|t| nodewire_aws::time::parse(t))
                .is_some_and(|c| now.duration_since(c).unwrap_or_default() >= grace)
        })
        .map(|e| e.id.clone())
        .collect()
}

/// The pod's host veth: as recorded at ADD, else upstream's name for it (an allocation taken over
/// from aws-node's checkpoint): the prefix and the first 11 hex digits of sha1("<ns>.<name>").
fn host_veth(prefix: &str, meta: &PodMeta) -> Option<String> {
    if !meta.host_ifname.is_empty() {
        return Some(meta.host_ifname.clone());
    }
    if meta.name.is_empty() {
        return None;
    }
    let hex = sha1_smol::Sha1::from(format!("{}.{}", meta.namespace, meta.name))
        .digest()
        .to_string();
    Some(format!("{prefix}{}", &hex[..11]))
}

/// Whether a host veth (its alias, `None` when the link is gone) still serves attachment `k`.
/// A veth without alias (made by upstream's plugin, or before aliases) is taken at its name.
fn veth_serves(alias: Option<&String>, k: &Key) -> bool {
    match alias {
        None => false,
        Some(a) => a.is_empty() || *a == nodewire_proto::veth_alias(&k.container, &k.ifname),
    }
}

/// Marks CIDRs or ENIs (by their text) as changed by ipamd just now.
fn touch(recent: &mut HashMap<String, Instant>, keys: impl IntoIterator<Item = String>) {
    let now = Instant::now();
    for k in keys {
        recent.insert(k, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(
        id: &str,
        status: &str,
        instance: Option<&str>,
        desc: &str,
        created: Option<&str>,
    ) -> EniInfo {
        let mut tags = BTreeMap::new();
        if let Some(i) = instance {
            tags.insert(TAG_INSTANCE.to_string(), i.to_string());
        }
        if let Some(c) = created {
            tags.insert(TAG_CREATED.to_string(), c.to_string());
        }
        EniInfo {
            id: id.into(),
            status: status.into(),
            description: desc.into(),
            tags,
            ..Default::default()
        }
    }

    #[test]
    fn security_group_drift_follows_the_primary_eni() {
        let e = |id: &str, dev: Option<u32>, card: u32, status: &str, sgs: &[&str]| EniInfo {
            id: id.into(),
            device_index: dev,
            network_card: card,
            status: status.into(),
            security_groups: sgs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let all = |_: &EniInfo| true;
        let none_but = |keep: &'static str| move |x: &EniInfo| x.id == keep;
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // (EC2's ENIs, whether only eni-b is managed, the expected drift)
        type Drift = Option<(Vec<String>, Vec<String>)>;
        let cases: Vec<(Vec<EniInfo>, bool, Drift)> = vec![
            // In step: nothing to do.
            (
                vec![
                    e("eni-a", Some(0), 0, "in-use", &["sg-1", "sg-2"]),
                    e("eni-b", Some(1), 0, "in-use", &["sg-2", "sg-1"]),
                ],
                false,
                Some((s(&["sg-1", "sg-2"]), vec![])),
            ),
            // The primary gained a group: the secondary follows; an ENI on card 1, one still
            // attaching and the primary itself are left alone.
            (
                vec![
                    e("eni-a", Some(0), 0, "in-use", &["sg-2", "sg-1"]),
                    e("eni-b", Some(1), 0, "in-use", &["sg-1"]),
                    e("eni-c", Some(0), 1, "in-use", &["sg-9"]),
                    e("eni-d", Some(2), 0, "attaching", &["sg-1"]),
                ],
                false,
                Some((s(&["sg-1", "sg-2"]), s(&["eni-b"]))),
            ),
            // An unmanaged ENI (no_manage, another node's, untagged) keeps its groups, and so
            // does one in another subnet (custom networking's).
            (
                vec![
                    e("eni-a", Some(0), 0, "in-use", &["sg-2"]),
                    EniInfo {
                        subnet_id: "subnet-other".into(),
                        ..e("eni-b", Some(1), 0, "in-use", &["sg-1"])
                    },
                ],
                false,
                Some((s(&["sg-2"]), vec![])),
            ),
            (
                vec![
                    e("eni-a", Some(0), 0, "in-use", &["sg-2"]),
                    e("eni-b", Some(1), 0, "in-use", &["sg-1"]),
                    e("eni-x", Some(2), 0, "in-use", &["sg-1"]),
                ],
                true,
                Some((s(&["sg-2"]), s(&["eni-b"]))),
            ),
            // No primary in EC2's answer, or no groups on it: nothing to follow.
            (
                vec![e("eni-b", Some(1), 0, "in-use", &["sg-1"])],
                false,
                None,
            ),
            (
                vec![
                    e("eni-a", Some(0), 0, "in-use", &[]),
                    e("eni-b", Some(1), 0, "in-use", &["sg-1"]),
                ],
                false,
                None,
            ),
        ];
        for (i, (enis, only_b, want)) in cases.into_iter().enumerate() {
            let got = if only_b {
                sg_drift(&enis, none_but("eni-b"))
            } else {
                sg_drift(&enis, all)
            };
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn host_veth_names() {
        let recorded = PodMeta {
            host_ifname: "eni0123".into(),
            ..Default::default()
        };
        assert_eq!(host_veth("eni", &recorded).as_deref(), Some("eni0123"));
        let upstream = PodMeta {
            namespace: "default".into(),
            name: "web-0".into(),
            ..Default::default()
        };
        let want = "eni0d7763386da".to_string(); // sha1("default.web-0")
        assert_eq!(host_veth("eni", &upstream), Some(want));
        assert_eq!(host_veth("eni", &PodMeta::default()), None);
    }

    #[test]
    fn a_host_veth_serves_the_attachment_its_alias_names() {
        let k = Key {
            network: "aws-cni".into(),
            container: "c1".into(),
            ifname: "eth0".into(),
        };
        let a = |s: &str| Some(s.to_string());
        for (alias, serves) in [
            (None, false),         // the veth is gone
            (a(""), true),         // no alias (upstream's plugin): taken at its name
            (a("c1/eth0"), true),  // ours
            (a("c2/eth0"), false), // a newer sandbox of the same pod
            (a("c1/eth1"), false), // another interface of the sandbox
        ] {
            assert_eq!(veth_serves(alias.as_ref(), &k), serves, "{alias:?}");
        }
    }

    #[test]
    fn leaked_enis_are_ours_available_and_old() {
        let now = nodewire_aws::time::parse("2026-11-21T15:00:00Z").expect("time");
        let enis = [
            eni(
                "old",
                "available",
                Some("i-me"),
                "aws-K8S-i-me",
                Some("2026-11-21T14:00:00Z"),
            ),
            eni(
                "young",
                "available",
                Some("i-me"),
                "aws-K8S-i-me",
                Some("2026-11-21T14:58:00Z"),
            ),
            eni(
                "foreign",
                "available",
                Some("i-other"),
                "aws-K8S-i-other",
                Some("2026-11-21T14:00:00Z"),
            ),
            eni(
                "in-use",
                "in-use",
                Some("i-me"),
                "aws-K8S-i-me",
                Some("2026-11-21T14:00:00Z"),
            ),
            eni(
                "not-ours",
                "available",
                Some("i-me"),
                "someone else's",
                Some("2026-11-21T14:00:00Z"),
            ),
            eni("undated", "available", Some("i-me"), "aws-K8S-i-me", None),
        ];
        assert_eq!(
            leaked(&enis, "i-me", now, Duration::from_secs(300)),
            vec!["old".to_string()]
        );
    }
}
