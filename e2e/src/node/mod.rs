//! The node side of a simulation: namespaces, the fabric, hot-plug of ENIs and volumes, and the
//! lifecycle (`up`, `down`) with everything recorded under the state directory.

pub mod blockdev;
pub mod fabric;
pub mod netns;

use crate::api::{self, Shared, serve};
use crate::sim::{Event, Sim, SimConfig, Timing, net::RunInstance};
use blockdev::Store;
use fabric::{Fabric, Plug};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Link-local address of IMDS (and, on another port, of the EC2 endpoint) inside every node.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const EC2_PORT: u16 = 8773;

/// Errors while bringing a simulation up or down.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("EC2 call during setup failed: {0}")]
    Api(#[from] crate::sim::error::ApiError),
    #[error("{0}")]
    Invalid(String),
}

trait Ctx<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T, Error>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T, Error> {
        self.map_err(|source| Error::Io {
            what: what.into(),
            source,
        })
    }
}

/// How to bring a simulation up.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub instance_type: String,
    pub state_dir: PathBuf,
    pub timing: Timing,
    pub seed: u64,
    pub imds_v1: bool,
    /// Zone of the nodes (default: the first zone).
    pub zone: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 1,
            instance_type: "m5.large".into(),
            state_dir: {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::env::temp_dir().join(format!("vpcsim-{}-{n}", std::process::id()))
            },
            timing: Timing::default(),
            seed: rand::random(),
            imds_v1: false,
            zone: None,
        }
    }
}

/// One simulated node, as printed in `vpcsim up`'s JSON line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub netns: String,
    pub instance_id: String,
    pub instance_type: String,
    pub az: String,
    pub subnet_id: String,
    pub primary_ip: Ipv4Addr,
    pub mac: String,
    pub eni_id: String,
    /// Where attached volumes show up (`disk/by-id/…`, `xvdaa`, `serial/loopN`).
    pub device_dir: PathBuf,
}

impl NodeInfo {
    /// nodewire's `ipamd` (at `bin`) as it runs on this node: in its network namespace, EC2
    /// through the node's endpoint, IMDS at the metadata address, any credentials, its socket
    /// and state files under `dir`. The environment is otherwise empty; callers add settings,
    /// stdio and logging. Returns the command and the socket it will listen on.
    pub fn ipamd_command(&self, bin: &Path, dir: &Path) -> (std::process::Command, PathBuf) {
        let socket = dir.join("ipamd.sock");
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "AWS_ENDPOINT_URL_EC2",
                format!("http://{METADATA_IP}:{EC2_PORT}"),
            )
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .env("RUST_LOG", "info")
            .env("NODEWIRE_IPAMD_SOCKET", &socket)
            .env("NODEWIRE_BACKING_STORE", dir.join("ipam.json"))
            .env(
                "NODEWIRE_INSTANCE_TYPE_CACHE",
                dir.join("instance-types.json"),
            )
            .env(
                "AWS_VPC_K8S_CNI_BACKING_STORE",
                dir.join("upstream-ipam.json"),
            );
        (cmd, socket)
    }
}

/// What `vpcsim up` prints when ready.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpInfo {
    /// The EC2 endpoint as the nodes reach it.
    pub ec2_endpoint: String,
    /// The same endpoint on the host's loopback.
    pub ec2_endpoint_local: String,
    pub imds_endpoint: String,
    pub admin_url: String,
    pub region: String,
    pub vpc_id: String,
    pub vpc_cidr: Ipv4Net,
    pub fabric_netns: String,
    pub state_dir: PathBuf,
    pub nodes: Vec<NodeInfo>,
}

/// What `down` needs after a crash, written to `<state-dir>/state.json` as things are made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub pid: u32,
    pub namespaces: Vec<String>,
    pub info: Option<UpInfo>,
}

fn record_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn save(dir: &Path, r: &Record) -> io::Result<()> {
    let tmp = dir.join("state.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(r).map_err(io::Error::other)?,
    )?;
    std::fs::rename(tmp, record_path(dir))
}

pub fn load(dir: &Path) -> io::Result<Record> {
    let b = std::fs::read(record_path(dir))?;
    serde_json::from_slice(&b).map_err(io::Error::other)
}

/// Removes everything a simulation recorded under `dir`: its process (if still alive and not
/// us), namespaces (with every link in them), loop devices, backing files, device directories.
pub fn down(dir: &Path) -> io::Result<()> {
    let rec = match load(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Record::default(),
        Err(e) => return Err(e),
    };
    if rec.pid != 0 && rec.pid != std::process::id() && is_vpcsim(rec.pid) {
        let pid = nix::unistd::Pid::from_raw(rec.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        // Wait (bounded) for it to be gone before taking its namespaces and devices away.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while nix::sys::signal::kill(pid, None).is_ok()
            && is_vpcsim(rec.pid)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let mut first_err = None;
    for ns in &rec.namespaces {
        if let Err(e) = netns::delete(ns) {
            first_err.get_or_insert(e);
        }
    }
    if dir.exists() {
        let canon = dir.canonicalize()?;
        for l in blockdev::loops_under(&canon) {
            if let Err(e) = blockdev::detach_loop(&l) {
                first_err.get_or_insert(e);
            }
        }
        for sub in ["volumes", "snapshots", "nodes"] {
            let p = dir.join(sub);
            if p.exists()
                && let Err(e) = std::fs::remove_dir_all(&p)
            {
                first_err.get_or_insert(e);
            }
        }
        let _ = std::fs::remove_file(record_path(dir));
        let _ = std::fs::remove_file(dir.join("state.json.tmp"));
        let _ = std::fs::remove_dir(dir);
    }
    first_err.map_or(Ok(()), Err)
}

/// Whether `pid` is a running `vpcsim` (a recorded pid may since belong to another program).
fn is_vpcsim(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
        Path::new(std::ffi::OsStr::from_bytes(argv0)).file_name()
            == Some(std::ffi::OsStr::new("vpcsim"))
    })
}

struct Owned {
    primary: Ipv4Addr,
    set: BTreeSet<Ipv4Net>,
    card: u32,
    src_dst_check: bool,
}

struct NodeSide {
    index: usize,
    netns: String,
    device_dir: PathBuf,
    nitro: bool,
}

/// Applies core events to the kernel: plugs ENIs, syncs fabric routes, binds volumes.
struct Worker {
    shared: Arc<Shared>,
    fabric: Fabric,
    store: Store,
    nodes: HashMap<String, NodeSide>,
    /// (volume id, instance id) → (device name, loop device); several for Multi-Attach volumes.
    loops: HashMap<(String, String), (String, String)>,
}

impl Worker {
    /// What the fabric needs to know about an ENI, read from EC2 state.
    fn owned(&self, eni_id: &str) -> Option<Owned> {
        let sim = self.shared.sim();
        let e = sim.enis.get(eni_id)?;
        let mut set: BTreeSet<Ipv4Net> = e
            .private_ips
            .iter()
            .map(|ip| Ipv4Net::new(*ip, 32).expect("32 is valid"))
            .collect();
        set.extend(e.prefixes.iter().copied());
        Some(Owned {
            primary: e.primary_ip(),
            set,
            card: e.attachment.as_ref().map_or(0, |a| a.network_card_index),
            src_dst_check: e.source_dest_check,
        })
    }

    async fn apply(&mut self, ev: Event) -> io::Result<()> {
        match ev {
            Event::EniAttached {
                instance_id,
                eni_id,
                mac,
                device_index,
            } => {
                let Some(node) = self.nodes.get(&instance_id) else {
                    return Ok(());
                };
                let Some(Owned {
                    primary,
                    set: owned,
                    card,
                    src_dst_check,
                }) = self.owned(&eni_id)
                else {
                    return Ok(());
                };
                let fabric_if = format!("n{}c{card}d{device_index}", node.index);
                let node_if = if card == 0 {
                    format!("eth{device_index}")
                } else {
                    format!("c{card}eth{device_index}")
                };
                let ns = node.netns.clone();
                self.fabric
                    .plug(Plug {
                        eni_id: &eni_id,
                        fabric_if: &fabric_if,
                        node_ns: &ns,
                        node_if: &node_if,
                        mac: &mac,
                        primary,
                        owned,
                        src_dst_check,
                    })
                    .await
            }
            Event::SourceDestCheckChanged { eni_id, enabled } => {
                self.fabric.set_src_dst_check(&eni_id, enabled)
            }
            Event::EniDetached { eni_id, .. } => self.fabric.unplug(&eni_id).await,
            Event::AddressesChanged => {
                let ids: Vec<String> = self
                    .shared
                    .sim()
                    .enis
                    .keys()
                    .filter(|id| self.fabric.plugged(id))
                    .cloned()
                    .collect();
                for id in ids {
                    if let Some(o) = self.owned(&id) {
                        self.fabric.sync(&id, o.set).await?;
                    }
                }
                Ok(())
            }
            Event::VolumeCreated {
                volume_id,
                size_gib,
                from_snapshot,
            } => {
                let store = self.store.clone();
                blocking(move || store.create(&volume_id, size_gib, from_snapshot.as_deref())).await
            }
            Event::VolumeDeleted { volume_id } => self.store.delete(&volume_id),
            Event::SnapshotStarted {
                snapshot_id,
                volume_id,
            } => {
                let store = self.store.clone();
                blocking(move || store.snapshot(&snapshot_id, &volume_id)).await
            }
            Event::SnapshotDeleted { snapshot_id } => self.store.delete_snapshot(&snapshot_id),
            Event::VolumeAttached {
                instance_id,
                volume_id,
                device,
            } => {
                let Some(node) = self.nodes.get(&instance_id) else {
                    return Ok(());
                };
                let dev = self
                    .store
                    .attach(&volume_id, &node.device_dir, &device, node.nitro)?;
                self.loops.insert((volume_id, instance_id), (device, dev));
                Ok(())
            }
            Event::VolumeDetached {
                volume_id,
                instance_id,
                ..
            } => {
                let Some((device, dev)) =
                    self.loops.remove(&(volume_id.clone(), instance_id.clone()))
                else {
                    return Ok(());
                };
                let Some(node) = self.nodes.get(&instance_id) else {
                    return Ok(());
                };
                self.store
                    .detach(&volume_id, &node.device_dir, &device, &dev)
            }
            Event::VolumeResized {
                volume_id,
                size_gib,
            } => {
                let devs: Vec<String> = self
                    .loops
                    .iter()
                    .filter(|((v, _), _)| *v == volume_id)
                    .map(|(_, (_, d))| d.clone())
                    .collect();
                self.store.resize(&volume_id, size_gib, &devs)
            }
        }
    }
}

async fn blocking(f: impl FnOnce() -> io::Result<()> + Send + 'static) -> io::Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// A running simulation. Dropping it tears everything down; prefer [`Vpcsim::shutdown`].
pub struct Vpcsim {
    pub info: UpInfo,
    pub shared: Arc<Shared>,
    tasks: Tasks,
    state_dir: PathBuf,
    torn_down: bool,
    /// Also kept in memory: the state directory may be gone before teardown (a test's temporary
    /// directory dropped first while unwinding a panic).
    namespaces: Vec<String>,
    loops_root: PathBuf,
}

impl Vpcsim {
    /// Brings up the VPC: fabric, nodes (instances with `eth0` wired), endpoints, hot-plug.
    pub async fn start(opts: Options) -> Result<Vpcsim, Error> {
        if opts.nodes == 0 || opts.nodes > 64 {
            return Err(Error::Invalid("--nodes must be between 1 and 64".into()));
        }
        std::fs::create_dir_all(&opts.state_dir).ctx("creating the state directory")?;
        let state_dir = opts
            .state_dir
            .canonicalize()
            .ctx("resolving the state directory")?;
        if load(&state_dir).is_ok_and(|r| !r.namespaces.is_empty()) {
            return Err(Error::Invalid(format!(
                "{} holds a simulation already; run `vpcsim down --state-dir {}` first",
                state_dir.display(),
                state_dir.display()
            )));
        }
        let mut rec = Record {
            pid: std::process::id(),
            ..Default::default()
        };
        save(&state_dir, &rec).ctx("writing state.json")?;
        let mut sim_guard = SimGuard {
            dir: state_dir.clone(),
            armed: true,
        };
        let r = Self::build(opts, state_dir.clone(), &mut rec).await;
        if r.is_ok() {
            sim_guard.armed = false;
        }
        r
    }

    async fn build(opts: Options, state_dir: PathBuf, rec: &mut Record) -> Result<Vpcsim, Error> {
        let now = Instant::now();
        let cfg = SimConfig {
            seed: opts.seed,
            timing: opts.timing,
            ..SimConfig::default()
        };
        let mut sim = Sim::new(cfg);
        let zone = opts
            .zone
            .clone()
            .unwrap_or_else(|| sim.cfg.zones[0].0.clone());
        let subnet = sim
            .subnet_in_zone(&zone)
            .ok_or_else(|| Error::Invalid(format!("unknown zone {zone}")))?
            .clone();
        let gateways: Vec<Ipv4Addr> = sim.subnets.values().map(|s| s.gateway()).collect();
        let t = sim.instance_type(&opts.instance_type)?;
        let nitro = t.hypervisor == nodewire_aws::limits::Hypervisor::Nitro;

        let prefix = loop {
            let p = format!("vs{:04x}", rand::random::<u16>());
            if !netns::exists(&format!("{p}-fabric")) {
                break p;
            }
        };
        let fabric_ns = format!("{prefix}-fabric");
        rec.namespaces.push(fabric_ns.clone());
        save(&state_dir, rec).ctx("writing state.json")?;
        let fabric = Fabric::create(&fabric_ns, &gateways)
            .await
            .ctx("creating the fabric")?;
        let drops_ns = fabric_ns.clone();

        let mut nodes = Vec::new();
        let mut sides = HashMap::new();
        for i in 1..=opts.nodes {
            let iid = sim.run_instance(
                now,
                RunInstance {
                    instance_type: opts.instance_type.clone(),
                    subnet_id: Some(subnet.id.clone()),
                    ..Default::default()
                },
            )?;
            let inst = sim.instance(&iid)?.clone();
            let eni = sim.eni(&inst.primary_eni)?.clone();
            let name = format!("node{i}");
            let ns = format!("{prefix}-{name}");
            rec.namespaces.push(ns.clone());
            save(&state_dir, rec).ctx("writing state.json")?;
            netns::create(&ns).ctx(format!("creating namespace {ns}"))?;
            let device_dir = state_dir.join("nodes").join(&name).join("dev");
            std::fs::create_dir_all(device_dir.join("disk/by-id"))
                .ctx("creating the device directory")?;
            nodes.push(NodeInfo {
                name,
                netns: ns.clone(),
                instance_id: iid.clone(),
                instance_type: opts.instance_type.clone(),
                az: inst.az.clone(),
                subnet_id: subnet.id.clone(),
                primary_ip: inst.private_ip,
                mac: eni.mac.clone(),
                eni_id: eni.id.clone(),
                device_dir: device_dir.clone(),
            });
            sides.insert(
                iid,
                NodeSide {
                    index: i,
                    netns: ns,
                    device_dir,
                    nitro,
                },
            );
        }
        sim.drain_events();
        let region = sim.cfg.region.clone();
        let (vpc_id, vpc_cidr) = (sim.vpc.id.clone(), sim.vpc.cidr);

        let (tx, mut rx) = mpsc::unbounded_channel();
        let shared = Shared::new(sim, tx, opts.seed, opts.imds_v1);
        *shared
            .fabric_drops
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            Some(Box::new(move || fabric::src_dst_drops(&drops_ns)));
        let store = Store::new(state_dir.clone()).ctx("creating the volume store")?;
        let mut worker = Worker {
            shared: shared.clone(),
            fabric,
            store,
            nodes: sides,
            loops: HashMap::new(),
        };
        let mut tasks = Tasks::default();

        // Primary ENIs: eth0 with the primary IP, as DHCP would configure it.
        for n in &nodes {
            let Owned {
                primary,
                set: owned,
                src_dst_check,
                ..
            } = worker
                .owned(&n.eni_id)
                .ok_or_else(|| Error::Invalid("primary ENI vanished".into()))?;
            let idx = worker.nodes[&n.instance_id].index;
            worker
                .fabric
                .plug(Plug {
                    eni_id: &n.eni_id,
                    fabric_if: &format!("n{idx}c0d0"),
                    node_ns: &n.netns,
                    node_if: "eth0",
                    mac: &n.mac,
                    primary,
                    owned,
                    src_dst_check,
                })
                .await
                .ctx(format!("plugging eth0 into {}", n.name))?;
            fabric::configure_primary(
                &n.netns,
                "eth0",
                primary,
                subnet.cidr.prefix_len(),
                subnet.gateway(),
            )
            .await
            .ctx(format!("configuring eth0 of {}", n.name))?;
            fabric::add_metadata_address(&n.netns, METADATA_IP)
                .await
                .ctx("adding the metadata address")?;
            let imds = netns::tcp_listener(&n.netns, SocketAddr::from((METADATA_IP, 80)))
                .ctx("binding IMDS")?;
            let ec2 = netns::tcp_listener(&n.netns, SocketAddr::from((METADATA_IP, EC2_PORT)))
                .ctx("binding EC2 in the node")?;
            tasks.push(serve(
                imds,
                api::imds::router(shared.clone(), n.instance_id.clone()),
            ));
            tasks.push(serve(
                ec2,
                api::ec2_router(shared.clone(), Some(n.instance_id.clone())),
            ));
        }

        let local = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .ctx("binding the local EC2 endpoint")?;
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .ctx("binding the admin endpoint")?;
        let local_addr = local.local_addr().ctx("local address")?;
        let admin_addr = admin.local_addr().ctx("admin address")?;
        tasks.push(serve(local, api::ec2_router(shared.clone(), None)));
        tasks.push(serve(admin, api::admin_router(shared.clone())));

        // The hot-plug worker applies events in order; failures are logged, never fatal.
        let applied = shared.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let desc = format!("{ev:?}");
                if let Err(e) = worker.apply(ev).await {
                    tracing::error!(event = %desc, error = %e, "hot-plug failed");
                }
                applied.applied.send_modify(|n| *n += 1);
            }
        }));
        tasks.push(api::spawn_ticker(shared.clone()));

        let info = UpInfo {
            ec2_endpoint: format!("http://{METADATA_IP}:{EC2_PORT}"),
            ec2_endpoint_local: format!("http://{local_addr}"),
            imds_endpoint: format!("http://{METADATA_IP}"),
            admin_url: format!("http://{admin_addr}"),
            region,
            vpc_id,
            vpc_cidr,
            fabric_netns: fabric_ns,
            state_dir: state_dir.clone(),
            nodes,
        };
        rec.info = Some(info.clone());
        save(&state_dir, rec).ctx("writing state.json")?;
        Ok(Vpcsim {
            info,
            shared,
            tasks,
            namespaces: rec.namespaces.clone(),
            loops_root: state_dir.clone(),
            state_dir,
            torn_down: false,
        })
    }

    /// Waits until every hot-plug effect of the calls made so far has been applied.
    pub async fn settle(&self) {
        self.shared.settle().await
    }

    /// Stops serving (waiting for the servers and the hot-plug worker to be gone) and removes
    /// everything the simulation made.
    pub async fn shutdown(mut self) -> io::Result<()> {
        for t in std::mem::take(&mut self.tasks.0) {
            t.abort();
            let _ = t.await;
        }
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        self.tasks.abort_all();
        let mut first_err = None;
        for ns in &self.namespaces {
            if let Err(e) = netns::delete(ns) {
                first_err.get_or_insert(e);
            }
        }
        for l in blockdev::loops_under(&self.loops_root) {
            if let Err(e) = blockdev::detach_loop(&l) {
                first_err.get_or_insert(e);
            }
        }
        let rest = down(&self.state_dir);
        first_err.map_or(rest, Err)
    }
}

impl Drop for Vpcsim {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(error = %e, "vpcsim teardown failed");
        }
    }
}

/// Background tasks of a simulation, aborted when dropped (also when `start` fails half-way).
#[derive(Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    fn push(&mut self, t: JoinHandle<()>) {
        self.0.push(t);
    }
    fn abort_all(&self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// Cleans up a half-built simulation if `start` fails.
struct SimGuard {
    dir: PathBuf,
    armed: bool,
}

impl Drop for SimGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = down(&self.dir);
        }
    }
}
