//! `nodewire-demo` (`make demo`): a two-node simulated VPC with nodewire running on it the way
//! a cluster runs it, driven the way a kubelet and the CSI sidecars drive it; then a report, and
//! a teardown that leaves the machine as it was — also after Ctrl-C.
//!
//! 1. vpcsim: 2 × m5.large (EC2 API, IMDS, ENI and volume hot-plug, the VPC fabric);
//! 2. per node: `ipamd --host-setup` (the DaemonSet's init container), then ipamd; the ebs-csi
//!    node plugin; the ebs-csi controller on the host; node ready once `vpc-cni` STATUS says so;
//! 3. pods: a network namespace each, wired by `vpc-cni` ADD (several at a time, as kubelet);
//! 4. traffic: pod ↔ pod across nodes (ICMP, TCP), pod → node, pod → outside the VPC (SNAT);
//! 5. a gp3 volume: create, attach + stage + publish on node 1, write, move to node 2, read,
//!    expand, and delete;
//! 6. DEL of every pod; the report; teardown.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use demo::{EniRow, NodeReport, PodRow, Report, Step, Traffic, human, percentile};
use e2e::node::{NodeInfo, Options, Vpcsim, fabric, netns};
use futures::StreamExt;
use nodewire_proto::csi::controller_client::ControllerClient;
use nodewire_proto::csi::identity_client::IdentityClient;
use nodewire_proto::csi::node_client::NodeClient;
use nodewire_proto::csi::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Channel;

const GIB: i64 = 1 << 30;
/// An address outside the VPC, put on the fabric's loopback: what "the internet" is here.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const PORT: u16 = 8080;

#[derive(Clone, Copy, ValueEnum)]
enum TimingArg {
    /// EC2-like waits: attach/detach 300 ms, create 200 ms, IMDS 200 ms behind EC2.
    Realistic,
    /// 50 ms waits (the tests use these).
    Quick,
}

#[derive(Parser)]
#[command(
    version,
    about = "nodewire on a two-node simulated VPC: pods on VPC IPs, traffic across nodes, an EBS volume moving between nodes; then a report and a full teardown"
)]
struct Cli {
    /// Pods per node. An m5.large holds 27 pod IPs with secondary IPs (its max pods is 29 with
    /// the two host-network pods); --prefix-delegation lifts that to its max pods.
    #[arg(long, default_value_t = 20)]
    pods: usize,
    /// Both nodes' instance type.
    #[arg(long, default_value = "m5.large")]
    instance_type: String,
    /// /28 prefixes instead of secondary IPs (ipamd's ENABLE_PREFIX_DELEGATION=true).
    #[arg(long)]
    prefix_delegation: bool,
    /// Pod sandboxes set up at once, as kubelet starts several pods in parallel.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// The demo volume's size in GiB (1–8192); it is expanded to twice that.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i64).range(1..=8192))]
    volume_gib: i64,
    /// vpcsim's EC2 state-change delays.
    #[arg(long, value_enum, default_value = "realistic")]
    timing: TimingArg,
    /// Where `ipamd`, `vpc-cni` and `ebs-csi` are (default: next to this binary; `make demo`
    /// builds them there).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep every daemon's log here (default: in the demo's temporary directory, removed at the
    /// end; the last lines are printed if something fails).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

static START: OnceLock<Instant> = OnceLock::new();

/// A progress line: seconds since start, then the message.
fn say(msg: impl AsRef<str>) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    out(&format!("[{t:6.1}s] {}\n", msg.as_ref()));
}

/// Writes to stdout, ignoring failures: a closed terminal (after SIGHUP) or pipe must not stop
/// the teardown that follows.
fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

// ---------------------------------------------------------------------------------------------
// Things that must go away: each a guard whose Drop removes it, so an error or a Ctrl-C at any
// point leaves nothing behind.

/// A daemon the demo started, in its own process group (a terminal's Ctrl-C reaches the demo,
/// which stops them in order). SIGTERM on drop, SIGKILL if it has not exited after 10 s.
struct Proc {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: std::process::Command, log: PathBuf) -> Result<Proc> {
        let f =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Proc {
            name: name.into(),
            child,
            log,
        })
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process group the daemon leads (its pid): it and whatever it runs (mkfs, mount…).
    fn group(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Is anything of its process group still alive?
    fn group_alive(&self) -> bool {
        nix::sys::signal::killpg(self.group(), None).is_ok()
    }

    /// SIGTERM to the whole group; SIGKILL to what is left after 10 s; reaps the daemon.
    fn stop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        let _ = killpg(self.group(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Its children (a mkfs or mount in flight) go too.
        let _ = killpg(self.group(), Signal::SIGKILL);
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.group_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last `n` lines of its log.
    fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pod network namespaces; deleting one takes its eth0 and the host end of its veth with it.
#[derive(Default)]
struct PodNamespaces(Vec<String>);

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        for n in self.0.drain(..) {
            let _ = netns::delete(&n);
        }
    }
}

/// Everything mounted under a directory (the demo's kubelet root), unmounted deepest first.
struct Mounts(PathBuf);

impl Mounts {
    fn under(&self) -> Vec<PathBuf> {
        mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&self.0))
            .collect()
    }

    fn unmount_all(&self) {
        for _ in 0..4 {
            let mut under = self.under();
            if under.is_empty() {
                return;
            }
            under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in under {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        self.unmount_all();
    }
}

/// Mount points from /proc/self/mountinfo (octal escapes decoded).
fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            let mut out = Vec::new();
            let b = m.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\'
                    && i + 3 < b.len()
                    && let Ok(v) = u8::from_str_radix(&m[i + 1..i + 4], 8)
                {
                    out.push(v);
                    i += 4;
                    continue;
                }
                out.push(b[i]);
                i += 1;
            }
            PathBuf::from(String::from_utf8_lossy(&out).into_owned())
        })
        .collect()
}

/// A task aborted when dropped (the demo's TCP listeners).
struct Task(tokio::task::JoinHandle<()>);
impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// All the demo made. Fields drop in declaration order: listeners and pods first, then mounts,
/// the daemons, the simulation, and last the working directory.
struct World {
    listeners: Vec<Task>,
    pods: PodNamespaces,
    mounts: Mounts,
    csi: Vec<Proc>,
    ipamd: Vec<Proc>,
    sim: Option<Vpcsim>,
    /// Namespaces to check for after teardown: the pods' and the simulation's.
    namespaces: Vec<String>,
    work: tempfile::TempDir,
    /// `work`'s path, canonical (mountinfo and losetup report canonical paths).
    root: PathBuf,
    logs: PathBuf,
}

impl World {
    fn new(cli: &Cli) -> Result<World> {
        let work = tempfile::Builder::new()
            .prefix("nodewire-demo.")
            .tempdir()
            .context("creating the demo's working directory")?;
        let root = work
            .path()
            .canonicalize()
            .context("resolving the working directory")?;
        let logs = match &cli.log_dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                d.canonicalize()?
            }
            None => root.join("logs"),
        };
        std::fs::create_dir_all(&logs)?;
        let kubelet = root.join("kubelet");
        std::fs::create_dir_all(&kubelet)?;
        Ok(World {
            listeners: Vec::new(),
            pods: PodNamespaces::default(),
            mounts: Mounts(kubelet),
            csi: Vec::new(),
            ipamd: Vec::new(),
            sim: None,
            namespaces: Vec::new(),
            work,
            root,
            logs,
        })
    }

    fn kubelet(&self) -> &Path {
        &self.mounts.0
    }

    /// The last lines of every daemon's log (for a failure message).
    fn log_tails(&self) -> String {
        let mut s = String::new();
        for p in self.ipamd.iter().chain(&self.csi) {
            s.push_str(&format!(
                "\n--- {} ({}), last lines ---\n{}\n",
                p.name,
                p.log.display(),
                p.tail(15)
            ));
        }
        s
    }

    /// Removes everything, in order, saying what it does; then checks that nothing is left.
    async fn teardown(mut self) -> Result<()> {
        let t = Instant::now();
        say("teardown: TCP listeners and pod namespaces");
        self.listeners.clear();
        let pods = std::mem::take(&mut self.pods.0);
        self.namespaces.extend(pods.iter().cloned());
        drop(PodNamespaces(pods));
        // The CSI plugins stop before the unmount, so none can mount after it.
        say("teardown: ebs-csi (controller, node plugins) and ipamd, SIGTERM");
        let mut stopped = Vec::new();
        for mut p in self.csi.drain(..).chain(self.ipamd.drain(..)) {
            p.stop();
            stopped.push(p);
        }
        say("teardown: mounts under the kubelet root");
        self.mounts.unmount_all();
        if let Some(sim) = self.sim.take() {
            say("teardown: vpcsim (node namespaces, fabric, ENI links, loop devices)");
            self.namespaces.push(sim.info.fabric_netns.clone());
            self.namespaces
                .extend(sim.info.nodes.iter().map(|n| n.netns.clone()));
            sim.shutdown().await.context("vpcsim teardown")?;
        }
        let root = self.root.clone();
        let ns_left: Vec<&String> = self
            .namespaces
            .iter()
            .filter(|n| netns::exists(n))
            .collect();
        let mounts_left: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&root))
            .collect();
        let loops_left = loops_under(&root);
        let procs_left: Vec<String> = stopped
            .iter()
            .filter(|p| p.group_alive())
            .map(|p| format!("{} (process group {})", p.name, p.group()))
            .collect();
        let n_ns = self.namespaces.len();
        if !(ns_left.is_empty()
            && mounts_left.is_empty()
            && loops_left.is_empty()
            && procs_left.is_empty())
        {
            // The working directory stays: removing files under a mount would reach into it.
            bail!(
                "left behind: namespaces {ns_left:?}, mounts {mounts_left:?}, loop devices {loops_left:?}, processes {procs_left:?}; working directory {} kept",
                root.display()
            );
        }
        self.work
            .close()
            .context("removing the working directory")?;
        say(format!(
            "teardown done in {}: {n_ns} namespaces, every mount, loop device and daemon gone; the machine is as it was",
            human(t.elapsed())
        ));
        Ok(())
    }
}

/// Loop devices whose backing file is under `root` (`losetup` failing counts as one: the check
/// must not pass because it could not look).
fn loops_under(root: &Path) -> Vec<String> {
    let out = match helper("losetup")
        .args(["--list", "--json", "--output", "NAME,BACK-FILE"])
        .output()
    {
        Ok(o) if o.status.success() => o.stdout,
        _ => return vec!["(losetup --list failed)".into()],
    };
    if out.iter().all(u8::is_ascii_whitespace) {
        return Vec::new(); // no loop devices at all: losetup prints nothing
    }
    let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    v["loopdevices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|d| {
            d["back-file"]
                .as_str()
                .is_some_and(|f| Path::new(f.trim_end_matches(" (deleted)")).starts_with(root))
        })
        .map(|d| d["name"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// A helper command in its own process group: a second Ctrl-C during teardown must not kill an
/// `ip` or `losetup` half way.
fn helper(program: &str) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    c.process_group(0);
    c
}

// ---------------------------------------------------------------------------------------------
// The binaries, run as the cluster would run them.

struct Bins {
    ipamd: PathBuf,
    cni: PathBuf,
    csi: PathBuf,
}

impl Bins {
    fn find(dir: Option<&Path>) -> Result<Bins> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()
                .context("locating this binary")?
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| anyhow!("this binary has no directory"))?,
        };
        let get = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                bail!(
                    "{} is missing: `make demo` builds it (cargo build -p nodewire-ipamd -p nodewire-cni -p nodewire-csi), or pass --bin-dir",
                    p.display()
                )
            }
        };
        Ok(Bins {
            ipamd: get("ipamd")?,
            cni: get("vpc-cni")?,
            csi: get("ebs-csi")?,
        })
    }
}

fn ns_path(ns: &str) -> String {
    netns::path(ns).display().to_string()
}

/// One pod sandbox.
#[derive(Clone)]
struct Pod {
    node: usize,
    name: String,
    ns: String,
    container: String,
    ip: Ipv4Addr,
    result: Value,
    add: Duration,
}

/// The network configuration kubelet's runtime would read from the conflist.
fn net_conf(socket: &Path, prev: Option<&Value>) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "aws-cni",
        "type": "vpc-cni",
        "mtu": 9001,
        "vethPrefix": "eni",
        "ipamdSocket": socket,
    });
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

/// Execs `vpc-cni` in the node's network namespace, as the container runtime on that node
/// would; returns how long it took and its result (or its CNI error as text).
async fn cni(
    bin: &Path,
    node: &NodeInfo,
    cmd: &str,
    pod: Option<(&str, &str, &str)>,
    conf: &Value,
) -> Result<(Duration, Value), String> {
    let (container, netns_path, name) = pod.unwrap_or(("", "", ""));
    let t = Instant::now();
    let mut child = tokio::process::Command::new("nsenter")
        .arg(format!("--net={}", ns_path(&node.netns)))
        .arg(bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin.parent().unwrap_or(Path::new("/")))
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={container}"
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("exec {}: {e}", bin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        // A plugin that exits without reading its config (it failed early) breaks the pipe; its
        // own error, on stdout, is the one worth showing.
        match stdin.write_all(conf.to_string().as_bytes()).await {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(format!("writing the config to vpc-cni: {e}"));
            }
            _ => {}
        }
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("vpc-cni {cmd}: {e}"))?;
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.to_string()))
    };
    if out.status.success() {
        Ok((took, v))
    } else {
        Err(match (&v["code"], &v["msg"]) {
            (Value::Number(c), Value::String(m)) => format!(
                "vpc-cni {cmd} failed (CNI code {c}): {m}{}",
                v["details"]
                    .as_str()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
            _ => format!(
                "vpc-cni {cmd} failed: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

/// GET from a localhost HTTP endpoint inside a namespace (ipamd's introspection API).
async fn http_get(ns: &str, port: u16, path: &str) -> Result<Value> {
    let (ns2, path2) = (ns.to_string(), path.to_string());
    let raw = tokio::task::spawn_blocking(move || {
        netns::run_in(&ns2, move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path2} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
    })
    .await?
    .and_then(|r| r)
    .with_context(|| format!("GET 127.0.0.1:{port}{path} in namespace {ns}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {path}: no HTTP reply"))?;
    if !head.lines().next().is_some_and(|l| l.contains(" 200")) {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    serde_json::from_str(body).with_context(|| format!("GET {path}: not JSON"))
}

/// A channel to a CSI endpoint, waiting (bounded) for the plugin to listen; fails at once, with
/// its log, if the plugin exited.
async fn csi_channel(p: &mut Proc, socket: &Path) -> Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = nodewire_cni::ipam::channel(socket, Duration::from_secs(1)).await {
            return Ok(ch);
        }
        if !p.running() {
            bail!("{} exited before listening:\n{}", p.name, p.tail(15));
        }
        if Instant::now() > deadline {
            bail!(
                "{} never listened on {}:\n{}",
                p.name,
                socket.display(),
                p.tail(15)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pod's rules (priority 512 and 1536) and host routes to pod veths, in a node namespace.
fn pod_wiring(ns: &str) -> usize {
    let run = |args: &[&str]| {
        helper("ip")
            .args(["-4", "-n", ns])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let rules = run(&["rule"])
        .lines()
        .filter(|l| l.starts_with("512:") || l.starts_with("1536:"))
        .count();
    let routes = run(&["route", "show", "table", "main"])
        .lines()
        .filter(|l| l.contains(" dev eni"))
        .count();
    rules + routes
}

fn vol_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: "xfs".into(),
                ..Default::default()
            },
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

/// Deterministic pseudo-random bytes (xorshift), so the read-back can be compared by hash.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The scenario.

async fn run(w: &mut World, cli: &Cli, bins: &Bins) -> Result<Report> {
    // /proc/self belongs to the effective user.
    let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?);
    if euid != 0 {
        bail!("the demo needs root: it creates network namespaces, loop devices and mounts");
    }
    if cli.pods == 0 || cli.parallel == 0 || cli.volume_gib < 1 {
        bail!("--pods, --parallel and --volume-gib must be at least 1");
    }
    let mut timings: Vec<(String, String)> = Vec::new();

    // 1. The VPC.
    let t = Instant::now();
    say(format!(
        "vpcsim: starting a VPC with 2 × {}",
        cli.instance_type
    ));
    let timing = match cli.timing {
        TimingArg::Realistic => e2e::sim::Timing::default(),
        TimingArg::Quick => e2e::sim::Timing::quick(),
    };
    let sim = Vpcsim::start(Options {
        nodes: 2,
        instance_type: cli.instance_type.clone(),
        state_dir: w.root.join("vpc"),
        timing,
        seed: 2026,
        imds_v1: false,
        zone: None,
    })
    .await
    .context("starting vpcsim")?;
    let nodes = sim.info.nodes.clone();
    let vpc_cidr = sim.info.vpc_cidr;
    let fabric_ns = sim.info.fabric_netns.clone();
    let admin = e2e::client::Admin::new(&sim.info.admin_url);
    let ec2_local = sim.info.ec2_endpoint_local.clone();
    w.sim = Some(sim);
    for n in &nodes {
        say(format!(
            "vpcsim: {} is {} ({}, {}), primary ENI {} at {}, namespace {}",
            n.name, n.instance_id, n.instance_type, n.az, n.eni_id, n.primary_ip, n.netns
        ));
    }
    timings.push((
        format!("vpcsim up (VPC {vpc_cidr}, 2 × {})", cli.instance_type),
        human(t.elapsed()),
    ));

    // 2. The node agents.
    let mut sockets = Vec::new();
    let mut started = Vec::new();
    for n in &nodes {
        let dir = w.root.join(format!("ipamd-{}", n.name));
        std::fs::create_dir_all(&dir)?;
        let setup = tokio::process::Command::new("ip")
            .args(["netns", "exec", &n.netns])
            .arg(&bins.ipamd)
            .arg("--host-setup")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .process_group(0)
            .kill_on_drop(true)
            .output()
            .await
            .context("ipamd --host-setup")?;
        if !setup.status.success() {
            bail!(
                "{}: ipamd --host-setup failed: {}",
                n.name,
                String::from_utf8_lossy(&setup.stderr)
            );
        }
        let (mut cmd, socket) = n.ipamd_command(&bins.ipamd, &dir);
        if cli.prefix_delegation {
            cmd.env("ENABLE_PREFIX_DELEGATION", "true");
        }
        let log = w.logs.join(format!("ipamd-{}.log", n.name));
        w.ipamd
            .push(Proc::spawn(&format!("ipamd on {}", n.name), cmd, log)?);
        started.push(Instant::now());
        sockets.push(socket);
        say(format!(
            "{}: ipamd --host-setup done; ipamd started (defaults: WARM_ENI_TARGET=1{})",
            n.name,
            if cli.prefix_delegation {
                ", ENABLE_PREFIX_DELEGATION=true"
            } else {
                ""
            }
        ));
    }
    // The CSI controller on the host (EC2 through vpcsim's host endpoint), a node plugin per node
    // (its network namespace for IMDS, the host's mounts as a privileged DaemonSet pod has).
    let csi_dir = w.root.join("csi");
    std::fs::create_dir_all(&csi_dir)?;
    let ctl_socket = csi_dir.join("controller.sock");
    let mut cmd = std::process::Command::new(&bins.csi);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", "demo")
        .env("AWS_SECRET_ACCESS_KEY", "demo")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_EC2", &ec2_local)
        .env("RUST_LOG", "info")
        .args(["--mode", "controller", "--ec2-wait-seconds", "60"])
        .arg(format!("--endpoint=unix://{}", ctl_socket.display()));
    w.csi.push(Proc::spawn(
        "ebs-csi controller",
        cmd,
        w.logs.join("ebs-csi-controller.log"),
    )?);
    let mut node_sockets = Vec::new();
    for n in &nodes {
        let socket = csi_dir.join(format!("{}.sock", n.name));
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net={}", ns_path(&n.netns)))
            .arg(&bins.csi)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .args(["--mode", "node", "--device-wait-seconds", "30"])
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .arg(format!("--dev-root={}", n.device_dir.display()))
            .arg(format!(
                "--serial-dir={}",
                n.device_dir.join("serial").display()
            ))
            .arg(format!("--kubelet-root={}", w.kubelet().display()));
        w.csi.push(Proc::spawn(
            &format!("ebs-csi node on {}", n.name),
            cmd,
            w.logs.join(format!("ebs-csi-{}.log", n.name)),
        )?);
        node_sockets.push(socket);
    }
    say("ebs-csi: controller on the host, a node plugin on each node");

    // Node network-ready: the runtime's CNI STATUS succeeds (ipamd can serve an ADD now).
    // Both nodes polled at once, so neither's time includes waiting on the other.
    let mut pending: Vec<usize> = (0..nodes.len()).collect();
    let mut ready = vec![Duration::ZERO; nodes.len()];
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pending.is_empty() {
        let polls = futures::future::join_all(pending.iter().map(|&i| {
            let conf = net_conf(&sockets[i], None);
            let (bin, node) = (&bins.cni, &nodes[i]);
            async move { (i, cni(bin, node, "STATUS", None, &conf).await) }
        }))
        .await;
        for (i, r) in polls {
            let n = &nodes[i];
            match r {
                Ok(_) => {
                    ready[i] = started[i].elapsed();
                    pending.retain(|&p| p != i);
                    say(format!(
                        "{}: network-ready after {} (vpc-cni STATUS succeeds)",
                        n.name,
                        human(ready[i])
                    ));
                }
                Err(last) => {
                    if !w.ipamd[i].running() {
                        bail!("ipamd on {} exited:\n{}", n.name, w.ipamd[i].tail(20));
                    }
                    if Instant::now() > deadline {
                        bail!("{} never became network-ready: {last}", n.name);
                    }
                }
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let config = http_get(&nodes[0].netns, 61679, "/v1/config").await?;
    if let Some(cap) = demo::pod_capacity(&config)
        && cli.pods > cap
    {
        bail!(
            "{} pods per node do not fit: an {} holds {cap} pods in this mode{}",
            cli.pods,
            cli.instance_type,
            if cli.prefix_delegation {
                ""
            } else {
                "; pass --prefix-delegation or fewer --pods"
            }
        );
    }

    // 3. Pods.
    let wiring_before: Vec<usize> = nodes.iter().map(|n| pod_wiring(&n.netns)).collect();
    let tag = format!("cn{:04x}", std::process::id() & 0xffff);
    let mut jobs = Vec::new();
    for (i, _) in nodes.iter().enumerate() {
        for k in 1..=cli.pods {
            let ns = format!("{tag}-n{}p{k}", i + 1);
            netns::create(&ns).with_context(|| format!("creating pod namespace {ns}"))?;
            w.pods.0.push(ns.clone());
            jobs.push((i, k, ns));
        }
    }
    let total = jobs.len();
    say(format!(
        "pods: creating {} per node through vpc-cni ADD, {} at a time",
        cli.pods, cli.parallel
    ));
    let t_pods = Instant::now();
    let mut stream = futures::stream::iter(jobs.into_iter().map(|(i, k, ns)| {
        let node = &nodes[i];
        let socket = &sockets[i];
        let bin = &bins.cni;
        async move {
            let name = format!("pod-{}-{k:02}", i + 1);
            let container = format!("{:0>64}", format!("{}{k:02}", i + 1));
            let path = ns_path(&ns);
            let r = cni(
                bin,
                node,
                "ADD",
                Some((&container, &path, &name)),
                &net_conf(socket, None),
            )
            .await;
            (i, name, ns, container, r)
        }
    }))
    .buffer_unordered(cli.parallel);
    let mut pods: Vec<Pod> = Vec::new();
    let step = (total / 8).max(1);
    while let Some((i, name, ns, container, r)) = stream.next().await {
        let (add, result) = r.map_err(|e| anyhow!("{name} on {}: {e}", nodes[i].name))?;
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("{name}: ADD returned no address: {result}"))?;
        if !vpc_cidr.contains(&ip) {
            bail!("{name} got {ip}, outside the VPC {vpc_cidr}");
        }
        pods.push(Pod {
            node: i,
            name,
            ns,
            container,
            ip,
            result,
            add,
        });
        if pods.len().is_multiple_of(step) || pods.len() == total {
            say(format!("pods: {}/{total} up", pods.len()));
        }
    }
    drop(stream);
    let pods_wall = t_pods.elapsed();
    pods.sort_by(|a, b| (a.node, &a.name).cmp(&(b.node, &b.name)));
    let adds: Vec<Duration> = pods.iter().map(|p| p.add).collect();
    let distinct: std::collections::BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    if distinct.len() != pods.len() {
        bail!("two pods got the same address");
    }
    let wiring_up: Vec<usize> = nodes.iter().map(|n| pod_wiring(&n.netns)).collect();

    // ipamd's own view: which ENI each pod's address is on.
    let mut node_reports = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let enis = http_get(&n.netns, 61679, "/v1/enis").await?;
        let (rows, by_ip): (Vec<EniRow>, _) = demo::enis_from_introspection(&enis);
        let pod_rows = pods
            .iter()
            .filter(|p| p.node == i)
            .map(|p| {
                let (eni, device) = match by_ip.get(&p.ip) {
                    Some((e, d)) => (e.clone(), Some(*d)),
                    None => ("?".to_string(), None),
                };
                PodRow {
                    name: p.name.clone(),
                    ip: p.ip,
                    eni,
                    device,
                    add: p.add,
                }
            })
            .collect::<Vec<_>>();
        let secondary = pod_rows
            .iter()
            .filter(|p| matches!(p.device, Some(d) if d != 0))
            .count();
        say(format!(
            "{}: {} pods on {} ENIs ({} of them on secondary ENIs)",
            n.name,
            pod_rows.len(),
            rows.iter().filter(|e| e.pods > 0).count(),
            secondary
        ));
        node_reports.push(NodeReport {
            name: n.name.clone(),
            instance_id: n.instance_id.clone(),
            instance_type: n.instance_type.clone(),
            primary_ip: n.primary_ip,
            enis: rows,
            pods: pod_rows,
        });
    }

    // 4. Traffic.
    say("traffic: pod ↔ pod across nodes (ICMP, TCP), pod → other node, pod → outside the VPC");
    let t_traffic = Instant::now();
    for p in &pods {
        w.listeners
            .push(Task(tell_peer(&p.ns, SocketAddr::from((p.ip, PORT)))?));
    }
    let st = helper("ip")
        .args([
            "-n",
            &fabric_ns,
            "addr",
            "add",
            &format!("{OUTSIDE}/32"),
            "dev",
            "lo",
        ])
        .status()
        .context("ip addr add")?;
    if !st.success() {
        bail!("could not put {OUTSIDE} on the fabric's loopback");
    }
    w.listeners.push(Task(tell_peer(
        &fabric_ns,
        SocketAddr::from((OUTSIDE, PORT)),
    )?));
    let drops_before = fabric::src_dst_drops(&fabric_ns);
    let per_node = cli.pods;
    let checks = futures::stream::iter(pods.iter().enumerate().map(|(k, p)| {
        let peer = &pods[(k + per_node) % pods.len()];
        let other = &nodes[1 - p.node];
        let me = &nodes[p.node];
        async move {
            let icmp = ping(&p.ns, peer.ip).await;
            let tcp = tcp_ask(&p.ns, SocketAddr::from((peer.ip, PORT))).await;
            let to_node = ping(&p.ns, other.primary_ip).await;
            let out = tcp_ask(&p.ns, SocketAddr::from((OUTSIDE, PORT))).await;
            (
                icmp,
                tcp.is_ok(),
                tcp.as_deref() == Ok(p.ip.to_string().as_str()),
                to_node,
                out.as_deref() == Ok(me.primary_ip.to_string().as_str()),
            )
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    let mut traffic = Traffic::default();
    for (icmp, tcp, kept, to_node, snat) in checks {
        traffic.icmp.add(icmp);
        traffic.tcp.add(tcp);
        traffic.source_kept.add(kept);
        traffic.to_node.add(to_node);
        traffic.snat.add(snat);
    }
    traffic.src_dst_drops = fabric::src_dst_drops(&fabric_ns).saturating_sub(drops_before);
    w.listeners.clear();
    say(format!(
        "traffic: ICMP {}, TCP {} (source kept {}), to node {}, SNAT {}, src/dst drops {}",
        traffic.icmp,
        traffic.tcp,
        traffic.source_kept,
        traffic.to_node,
        traffic.snat,
        traffic.src_dst_drops
    ));
    let traffic_wall = t_traffic.elapsed();

    // 5. The volume's journey.
    let journey = volume_journey(w, cli, &nodes, &pods, &ctl_socket, &node_sockets).await?;

    // 6. DEL every pod, as kubelet does when the pods go away.
    say(format!("pods: deleting all {total} through vpc-cni DEL"));
    let t_del = Instant::now();
    let dels = futures::stream::iter(pods.iter().map(|p| {
        let node = &nodes[p.node];
        let socket = &sockets[p.node];
        let bin = &bins.cni;
        async move {
            let path = ns_path(&p.ns);
            let r = cni(
                bin,
                node,
                "DEL",
                Some((&p.container, &path, &p.name)),
                &net_conf(socket, Some(&p.result)),
            )
            .await;
            (p, r)
        }
    }))
    .buffer_unordered(cli.parallel)
    .collect::<Vec<_>>()
    .await;
    let mut del_times = Vec::new();
    for (p, r) in dels {
        let (took, _) = r.map_err(|e| anyhow!("DEL {}: {e}", p.name))?;
        del_times.push(took);
    }
    let del_wall = t_del.elapsed();
    // Counted while the pods' namespaces (and so their veths) still exist: a route DEL left
    // behind would otherwise vanish with the veth and go unseen.
    let wiring_after: Vec<usize> = nodes.iter().map(|n| pod_wiring(&n.netns)).collect();
    let ns_names = std::mem::take(&mut w.pods.0);
    drop(PodNamespaces(ns_names.clone()));
    w.namespaces.extend(ns_names);
    say(format!(
        "pods: all deleted; pod rules and routes left: {}",
        wiring_after
            .iter()
            .zip(&wiring_before)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum::<usize>()
    ));

    // EC2 calls, by action and by caller.
    let stats = admin.stats().await.context("vpcsim stats")?;
    let totals: BTreeMap<String, u64> = stats
        .actions
        .iter()
        .map(|(k, c)| (k.clone(), c.calls))
        .collect();
    let node_ids: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.instance_id.clone()))
        .collect();
    let ec2 = demo::ec2_table(&totals, &stats.per_instance, &node_ids);
    let ipamd_calls: u64 = nodes
        .iter()
        .filter_map(|n| stats.per_instance.get(&n.instance_id))
        .flat_map(|m| m.values())
        .sum();

    let pct = |v: &[Duration], p: f64| percentile(v, p).map(human).unwrap_or_default();
    for (i, n) in nodes.iter().enumerate() {
        timings.push((
            format!("{}: ipamd start → network-ready", n.name),
            human(ready[i]),
        ));
    }
    timings.push((
        format!(
            "pod ADD ({total} pods, {} at a time): p50 / p99",
            cli.parallel
        ),
        format!("{} / {}", pct(&adds, 50.0), pct(&adds, 99.0)),
    ));
    timings.push((
        "all pods up (first ADD → last ADD done)".into(),
        human(pods_wall),
    ));
    timings.push((
        "pod DEL: p50 / p99".into(),
        format!("{} / {}", pct(&del_times, 50.0), pct(&del_times, 99.0)),
    ));
    timings.push(("all pods deleted".into(), human(del_wall)));
    timings.push(("traffic checks".into(), human(traffic_wall)));
    timings.push((
        "EC2 calls by ipamd, whole run (start, pool growth, pods)".into(),
        format!("{ipamd_calls} for {total} pods on 2 nodes"),
    ));
    let journey_total: Duration = journey
        .iter()
        .filter(|s| !s.what.starts_with("pod "))
        .map(|s| s.took)
        .sum();
    timings.push((
        "volume: the journey's CSI calls, summed".into(),
        human(journey_total),
    ));

    let pod_wiring_rows = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.name.clone(),
                wiring_up[i].saturating_sub(wiring_before[i]),
                wiring_after[i].saturating_sub(wiring_before[i]),
            )
        })
        .collect();
    Ok(Report {
        title: format!(
            "nodewire demo: 2 × {} on vpcsim, {} pods per node, one gp3 volume",
            cli.instance_type, cli.pods
        ),
        nodes: node_reports,
        traffic,
        journey,
        ec2,
        timings,
        pod_wiring: pod_wiring_rows,
    })
}

/// A listener in `ns` that answers each connection with the address it came from.
fn tell_peer(ns: &str, addr: SocketAddr) -> Result<tokio::task::JoinHandle<()>> {
    let l =
        netns::tcp_listener(ns, addr).with_context(|| format!("listening on {addr} in {ns}"))?;
    Ok(tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, peer)) = l.accept().await {
            let _ = s.write_all(peer.ip().to_string().as_bytes()).await;
        }
    }))
}

async fn ping(ns: &str, to: Ipv4Addr) -> bool {
    tokio::process::Command::new("nsenter")
        .arg(format!("--net={}", ns_path(ns)))
        .args(["ping", "-c1", "-W3", "-q"])
        .arg(to.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Connects from `ns` and returns what the server said (the source address it saw).
async fn tcp_ask(ns: &str, to: SocketAddr) -> Result<String, String> {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || {
        netns::run_in(&ns, move || -> Result<String, String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
                .map_err(|e| format!("connect {to}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .map_err(|e| e.to_string())?;
            let mut out = String::new();
            s.read_to_string(&mut out)
                .map_err(|e| format!("read {to}: {e}"))?;
            Ok(out)
        })
        .map_err(|e| e.to_string())?
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A gp3 volume, created and used as the external-provisioner, -attacher and -resizer and
/// kubelet would: on node 1 a pod writes, the pod moves to node 2 and reads, then it grows.
async fn volume_journey(
    w: &mut World,
    cli: &Cli,
    nodes: &[NodeInfo],
    pods: &[Pod],
    ctl_socket: &Path,
    node_sockets: &[PathBuf],
) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    let mut step = |what: &str, node: &str, detail: String, took: Duration| {
        say(format!("volume: {what} {node} {detail} ({})", human(took)));
        steps.push(Step {
            what: what.into(),
            node: node.into(),
            detail,
            took,
        });
    };
    let ctl_ch = csi_channel(&mut w.csi[0], ctl_socket).await?;
    let mut ctl = ControllerClient::new(ctl_ch.clone());
    let driver = IdentityClient::new(ctl_ch)
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .context("GetPluginInfo")?
        .into_inner()
        .name;
    let mut node_clients = Vec::new();
    for (i, s) in node_sockets.iter().enumerate() {
        node_clients.push(NodeClient::new(csi_channel(&mut w.csi[i + 1], s).await?));
    }
    let pvc = format!("pvc-demo-{}", std::process::id());
    let zone = nodes[0].az.clone();
    let want = cli.volume_gib * GIB;

    // CreateVolume, as external-provisioner sends it (--extra-create-metadata).
    let t = Instant::now();
    let vol = ctl
        .create_volume(CreateVolumeRequest {
            name: pvc.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: want,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![vol_cap()],
            parameters: [
                ("type", "gp3"),
                ("csi.storage.k8s.io/pvc/name", "data"),
                ("csi.storage.k8s.io/pvc/namespace", "demo"),
                ("csi.storage.k8s.io/pv/name", pvc.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            accessibility_requirements: Some(TopologyRequirement {
                requisite: vec![],
                preferred: vec![Topology {
                    segments: [("topology.kubernetes.io/zone".to_string(), zone.clone())]
                        .into_iter()
                        .collect(),
                }],
            }),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("CreateVolume: {}", s.message()))?
        .into_inner()
        .volume
        .ok_or_else(|| anyhow!("CreateVolume returned no volume"))?;
    let vol_id = vol.volume_id.clone();
    step(
        "CreateVolume",
        "-",
        format!(
            "{vol_id}, gp3 {} in {zone} ({driver})",
            demo::bytes(vol.capacity_bytes as u64)
        ),
        t.elapsed(),
    );

    let staging = w
        .kubelet()
        .join(format!(
            "plugins/kubernetes.io/csi/{driver}/{vol_id}/globalmount"
        ))
        .display()
        .to_string();
    let target = |pod: &str| {
        w.kubelet()
            .join(format!("pods/{pod}/volumes/kubernetes.io~csi/{pvc}/mount"))
            .display()
            .to_string()
    };
    let pod1 = pods
        .iter()
        .find(|p| p.node == 0)
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "pod-1".into());
    let pod2 = pods
        .iter()
        .find(|p| p.node == 1)
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "pod-2".into());
    let data = payload(16 << 20, 0x5eed);
    let note = format!("written by {pod1} on {}\n", nodes[0].name);
    let sum = sha_hex(&data);

    for (n, pod) in [(0usize, pod1.clone()), (1, pod2.clone())] {
        let node_id = nodes[n].instance_id.clone();
        let nname = nodes[n].name.clone();
        let nc = &mut node_clients[n];
        let tp = target(&pod);

        let t = Instant::now();
        let pc = ctl
            .controller_publish_volume(ControllerPublishVolumeRequest {
                volume_id: vol_id.clone(),
                node_id: node_id.clone(),
                volume_capability: Some(vol_cap()),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow!("ControllerPublish to {nname}: {}", s.message()))?
            .into_inner()
            .publish_context;
        step(
            "ControllerPublish (attach)",
            &nname,
            format!("at {}", pc.get("devicePath").cloned().unwrap_or_default()),
            t.elapsed(),
        );

        let t = Instant::now();
        nc.node_stage_volume(NodeStageVolumeRequest {
            volume_id: vol_id.clone(),
            publish_context: pc.clone(),
            staging_target_path: staging.clone(),
            volume_capability: Some(vol_cap()),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("NodeStage on {nname}: {}", s.message()))?;
        step(
            "NodeStage",
            &nname,
            if n == 0 {
                "blank: mkfs.xfs, mounted at the global mount".into()
            } else {
                "xfs found, mounted as is".into()
            },
            t.elapsed(),
        );

        let t = Instant::now();
        nc.node_publish_volume(NodePublishVolumeRequest {
            volume_id: vol_id.clone(),
            publish_context: pc.clone(),
            staging_target_path: staging.clone(),
            target_path: tp.clone(),
            volume_capability: Some(vol_cap()),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("NodePublish on {nname}: {}", s.message()))?;
        step(
            "NodePublish",
            &nname,
            format!("bind-mounted into {pod}"),
            t.elapsed(),
        );

        let t = Instant::now();
        let dir = PathBuf::from(&tp);
        if n == 0 {
            std::fs::write(dir.join("data.bin"), &data)?;
            std::fs::write(dir.join("NOTE"), &note)?;
            std::fs::File::open(dir.join("data.bin"))?.sync_all()?;
            step(
                "pod writes",
                &nname,
                format!("{pod1}: 16 MiB, sha256 {}…", &sum[..12]),
                t.elapsed(),
            );
        } else {
            let back = std::fs::read(dir.join("data.bin")).context("reading on node 2")?;
            let note_back = std::fs::read_to_string(dir.join("NOTE")).unwrap_or_default();
            let ok = sha_hex(&back) == sum && note_back == note;
            if !ok {
                bail!("the data read on {nname} differs from what {pod1} wrote");
            }
            step(
                "pod reads",
                &nname,
                format!("{pod2}: 16 MiB, sha256 matches; NOTE: {}", note_back.trim()),
                t.elapsed(),
            );

            // Expansion, as external-resizer then kubelet do it, with the pod still running.
            let bigger = 2 * want;
            let t = Instant::now();
            let r = ctl
                .controller_expand_volume(ControllerExpandVolumeRequest {
                    volume_id: vol_id.clone(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: bigger,
                        limit_bytes: 0,
                    }),
                    volume_capability: Some(vol_cap()),
                    ..Default::default()
                })
                .await
                .map_err(|s| anyhow!("ControllerExpandVolume: {}", s.message()))?
                .into_inner();
            step(
                "ControllerExpandVolume",
                "-",
                format!(
                    "{} → {} (EC2 ModifyVolume)",
                    demo::bytes(want as u64),
                    demo::bytes(r.capacity_bytes as u64)
                ),
                t.elapsed(),
            );
            let t = Instant::now();
            nc.node_expand_volume(NodeExpandVolumeRequest {
                volume_id: vol_id.clone(),
                volume_path: tp.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: bigger,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow!("NodeExpandVolume on {nname}: {}", s.message()))?;
            let stats = nc
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: vol_id.clone(),
                    volume_path: tp.clone(),
                    staging_target_path: String::new(),
                })
                .await
                .map_err(|s| anyhow!("NodeGetVolumeStats: {}", s.message()))?
                .into_inner();
            let size = stats
                .usage
                .iter()
                .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
                .map(|u| u.total)
                .unwrap_or(0);
            if size <= want {
                bail!(
                    "after NodeExpandVolume the filesystem is still {}",
                    demo::bytes(size as u64)
                );
            }
            step(
                "NodeExpandVolume",
                &nname,
                format!(
                    "xfs_growfs online; the pod's df now shows {}",
                    demo::bytes(size as u64)
                ),
                t.elapsed(),
            );
        }

        // The pod goes away: unpublish, unstage, detach.
        let t = Instant::now();
        nc.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: vol_id.clone(),
            target_path: tp.clone(),
        })
        .await
        .map_err(|s| anyhow!("NodeUnpublish on {nname}: {}", s.message()))?;
        nc.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: vol_id.clone(),
            staging_target_path: staging.clone(),
        })
        .await
        .map_err(|s| anyhow!("NodeUnstage on {nname}: {}", s.message()))?;
        step(
            "NodeUnpublish + NodeUnstage",
            &nname,
            format!("{pod} gone; unmounted"),
            t.elapsed(),
        );
        let t = Instant::now();
        ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
            volume_id: vol_id.clone(),
            node_id: node_id.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("ControllerUnpublish from {nname}: {}", s.message()))?;
        step(
            "ControllerUnpublish (detach)",
            &nname,
            "detached".into(),
            t.elapsed(),
        );
    }

    let t = Instant::now();
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: vol_id.clone(),
        secrets: HashMap::new(),
    })
    .await
    .map_err(|s| anyhow!("DeleteVolume: {}", s.message()))?;
    step(
        "DeleteVolume",
        "-",
        format!("{vol_id} deleted"),
        t.elapsed(),
    );
    Ok(steps)
}

// ---------------------------------------------------------------------------------------------

enum Outcome {
    Done(Result<Box<Report>>),
    /// What happened and the exit code (128 + the signal's number).
    Interrupted(&'static str, u8),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    START.get_or_init(Instant::now);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodewire-demo: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(demo_main(cli));
    // Blocking probes cancelled by a Ctrl-C (a TCP connect with a 3 s timeout) need not be
    // waited for: their namespaces are gone.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn demo_main(cli: Cli) -> ExitCode {
    // Signals are ours from the start: Ctrl-C anywhere means "tear down", never a bare exit.
    let (mut int, mut term, mut hup) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => {
            eprintln!("nodewire-demo: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let bins = match Bins::find(cli.bin_dir.as_deref()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("nodewire-demo: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut w = match World::new(&cli) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("nodewire-demo: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = tokio::select! {
        r = run(&mut w, &cli, &bins) => Outcome::Done(r.map(Box::new)),
        _ = int.recv() => Outcome::Interrupted("interrupted (SIGINT)", 130),
        _ = term.recv() => Outcome::Interrupted("terminated (SIGTERM)", 143),
        _ = hup.recv() => Outcome::Interrupted("hung up (SIGHUP)", 129),
    };
    // Further signals while tearing down are acknowledged, not obeyed: stopping half way would
    // leave namespaces, mounts or loop devices behind.
    let nag = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            say("still tearing down; it finishes by itself in a few seconds");
        }
    });
    let mut code = match &outcome {
        Outcome::Done(Ok(report)) => {
            out(&format!("{}\n", demo::render(report)));
            let ok =
                report.traffic.all_ok() && report.pod_wiring.iter().all(|(_, _, left)| *left == 0);
            if ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("nodewire-demo: some checks failed (see the report above)");
                ExitCode::FAILURE
            }
        }
        Outcome::Done(Err(e)) => {
            eprintln!("\nnodewire-demo failed: {e:#}{}", w.log_tails());
            ExitCode::FAILURE
        }
        Outcome::Interrupted(why, code) => {
            say(format!("{why}: stopping and tearing everything down"));
            ExitCode::from(*code)
        }
    };
    if let Err(e) = w.teardown().await {
        eprintln!("nodewire-demo: teardown: {e:#}");
        code = ExitCode::FAILURE;
    }
    nag.abort();
    code
}
