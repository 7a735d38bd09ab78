//! `make bench-cni`: pod ADD and DEL latency of vpc-cni (with ipamd on a vpcsim m5.4xlarge node)
//! against Debian's `ptp` + `host-local`, in the same run, 200 pods sequentially and 8 in
//! parallel. Only the plugin exec is timed (fork, exec, wait); creating and deleting the pod
//! netns and building the DEL config with prevResult are not. Both plugins run in a network
//! namespace of their own (ptp's in a throwaway "host" namespace, since it turns on the host's
//! ip_forward). Prints median and p99 per case and the ratio ours/ptp, and the stripped size of
//! the vpc-cni binary. vpc-cni is the static release build (what ships, `make cni-static`); ipamd
//! and this driver are `perf`.
//!
//! DEL cost note: vpc-cni's DEL removes rules, route and the address but leaves the veth to the
//! runtime's netns deletion, which the kernel finishes asynchronously (as upstream does); ptp
//! deletes its veth inside DEL (16–22 ms of kernel teardown).

#[path = "../tests/harness/mod.rs"]
mod harness;

use e2e::node::{Options, Vpcsim, netns};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PODS: usize = 200;
const WARM_UP: usize = 20;

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_path_buf()
}

#[derive(Clone)]
struct Plugin {
    name: &'static str,
    bin: PathBuf,
    /// Namespace the plugin runs in (the "host").
    host_ns: String,
    conf: Value,
    args: fn(usize) -> String,
    /// The IPAM daemon whose CPU time counts for this plugin (ours: ipamd; ptp has none).
    ipamd_pid: Option<u32>,
}

fn pod_ns(tag: &str, plugin: &str, i: usize) -> String {
    format!("{tag}-{plugin}{i}")
}

/// Execs the plugin from the current thread (which is inside the plugin's host namespace).
fn exec(p: &Plugin, cmd: &str, i: usize, netns: &str, conf: &Value) -> (Duration, Value) {
    let body = conf.to_string();
    let start = Instant::now();
    let mut child = Command::new(&p.bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", format!("bench-{i}"))
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_ARGS", (p.args)(i))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("config");
    let out = child.wait_with_output().expect("plugin");
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {cmd} pod {i} failed: {text} {}",
        p.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (took, v)
}

/// CPU time spent so far, in ms: by this process's waited-for children (the plugin execs), by
/// ipamd, and by the whole machine (every busy state of /proc/stat, kernel threads included).
#[derive(Clone, Copy, Default)]
struct Cpu {
    plugin: f64,
    ipamd: f64,
    machine: f64,
}

impl Cpu {
    fn now(ipamd: Option<u32>) -> Cpu {
        // SAFETY: getrusage only writes the struct it is given.
        let children = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
            ru
        };
        let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ipamd = ipamd
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .and_then(|s| {
                // Fields after the ")" of the command name: utime and stime are 12th and 13th.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<f64> = rest
                    .split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                Some(f.iter().sum::<f64>() * 1e3 / hz)
            })
            .unwrap_or(0.0);
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let f: Vec<f64> = s
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: busy = all but idle, iowait.
                Some(f.iter().take(8).sum::<f64>() - f.get(3)? - f.get(4)?)
            })
            .unwrap_or(0.0)
            * 1e3
            / hz;
        Cpu {
            plugin: tv(children.ru_utime) + tv(children.ru_stime),
            ipamd,
            machine,
        }
    }

    fn per_pod_since(self, before: Cpu, pods: usize) -> Cpu {
        let n = pods.max(1) as f64;
        Cpu {
            plugin: (self.plugin - before.plugin) / n,
            ipamd: (self.ipamd - before.ipamd) / n,
            machine: (self.machine - before.machine) / n,
        }
    }
}

/// One phase: `par` threads, each inside the plugin's host netns, over pods 0..pods.
fn phase(
    p: &Plugin,
    tag: &str,
    par: usize,
    cmd: &'static str,
    results: &Arc<Mutex<Vec<Value>>>,
    pods: usize,
) -> (Vec<Duration>, Cpu) {
    let cpu = Cpu::now(p.ipamd_pid);
    let window = Window::start();
    let next = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(Mutex::new(Vec::with_capacity(pods)));
    let threads: Vec<_> = (0..par)
        .map(|_| {
            let (p, next, times, results) =
                (p.clone(), next.clone(), times.clone(), results.clone());
            let tag = tag.to_string();
            std::thread::spawn(move || {
                let host = std::fs::File::open(netns::path(&p.host_ns)).expect("host netns");
                nix::sched::setns(&host, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= pods {
                        break;
                    }
                    let ns = pod_ns(&tag, p.name, i);
                    let path = netns::path(&ns).display().to_string();
                    if cmd == "ADD" {
                        netns::create(&ns).expect("pod netns");
                        let (t, r) = exec(&p, "ADD", i, &path, &p.conf);
                        results.lock().expect("results")[i] = r;
                        times.lock().expect("times").push(t);
                    } else {
                        let mut conf = p.conf.clone();
                        conf["prevResult"] = results.lock().expect("results")[i].clone();
                        let (t, _) = exec(&p, "DEL", i, &path, &conf);
                        times.lock().expect("times").push(t);
                        netns::delete(&ns).expect("pod netns delete");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("bench thread");
    }
    let mut v = std::mem::take(&mut *times.lock().expect("times"));
    v.sort();
    window.end(&format!("{} {cmd} {par}-way", p.name));
    (v, Cpu::now(p.ipamd_pid).per_pod_since(cpu, pods))
}

/// BENCH_CNI_PHASES=1: each phase's CLOCK_MONOTONIC window on stderr, to cut a system-wide
/// profile (`perf record -k CLOCK_MONOTONIC -a`) down to one phase.
struct Window(Option<f64>);

impl Window {
    fn mono() -> f64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    }

    fn start() -> Window {
        let on = std::env::var("BENCH_CNI_PHASES").is_ok_and(|v| v == "1");
        Window(on.then(Window::mono))
    }

    fn end(self, what: &str) {
        if let Some(t0) = self.0 {
            eprintln!("phase {what}: {t0:.6} {:.6}", Window::mono());
        }
    }
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

struct Row {
    case: String,
    ours: (f64, f64),
    ptp: (f64, f64),
    cpu: [Cpu; 2],
}

/// Unmeasured ADD and DEL of a few pods per plugin before the first case: the first phase of a
/// run is ~10% slower (page cache, ipamd's and the kernel's first allocations), whichever plugin
/// has it.
fn warm_up(p: &Plugin, tag: &str) {
    let results = Arc::new(Mutex::new(vec![Value::Null; PODS]));
    let tag = format!("{tag}w");
    phase(p, &tag, 1, "ADD", &results, WARM_UP);
    phase(p, &tag, 1, "DEL", &results, WARM_UP);
}

fn run_case(ours: &Plugin, ptp: &Plugin, tag: &str, par: usize, rows: &mut Vec<Row>) {
    let mut add = Vec::new();
    let mut del = Vec::new();
    for p in [ours, ptp] {
        let results = Arc::new(Mutex::new(vec![Value::Null; PODS]));
        add.push(phase(p, tag, par, "ADD", &results, PODS));
        del.push(phase(p, tag, par, "DEL", &results, PODS));
    }
    for (name, t) in [("ADD", &add), ("DEL", &del)] {
        rows.push(Row {
            case: format!("{name} x{PODS}, {par}-way"),
            ours: (pct(&t[0].0, 0.5), pct(&t[0].0, 0.99)),
            ptp: (pct(&t[1].0, 0.5), pct(&t[1].0, 0.99)),
            cpu: [t[0].1, t[1].1],
        });
    }
}

/// A tmpfs mounted for the run, unmounted (and its directory removed) on drop, panics included.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "nodewire-bench"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let ptp_bin = PathBuf::from("/usr/lib/cni/ptp");
    assert!(
        ptp_bin.exists() && Path::new("/usr/lib/cni/host-local").exists(),
        "Debian's containernetworking-plugins is missing: run `bash scripts/peers.sh`"
    );
    // The plugin as shipped: the static release build (`make cni-static`, BENCH_CNI_BIN), else
    // the plain release build.
    let ours_bin = std::env::var_os("BENCH_CNI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            profile_dir()
                .parent()
                .expect("target dir")
                .join("release/vpc-cni")
        });
    assert!(
        ours_bin.exists(),
        "{} missing: make cni-static (or cargo build --release -p nodewire-cni)",
        ours_bin.display()
    );
    println!("vpc-cni under test: {}", ours_bin.display());
    let tag = format!("cn{:04x}", std::process::id() & 0xffff);
    // ipamd's checkpoint on tmpfs, as /var/run is on a node (here /run may be on disk: mount one).
    let run_dir = PathBuf::from(format!("/run/nodewire-bench-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).expect("run dir");
    let _tmpfs = Tmpfs::mount(&run_dir);
    let dir = tempfile::tempdir().expect("tempdir");

    let sim = Vpcsim::start(Options {
        nodes: 1,
        instance_type: "m5.4xlarge".into(),
        state_dir: dir.path().join("vpc"),
        timing: harness::quick_timing(),
        seed: 5,
        imds_v1: false,
        zone: None,
    })
    .await
    .expect("vpcsim");
    let node = sim.info.nodes[0].clone();
    // BENCH_CNI_IPAMD: another ipamd binary (A/B runs); default the perf build next to this.
    let ipamd_bin = std::env::var_os("BENCH_CNI_IPAMD")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("ipamd"));
    let ipamd = harness::Ipamd::start_bin(
        &ipamd_bin,
        &node,
        &run_dir,
        &[
            ("MINIMUM_IP_TARGET", "210"),
            ("WARM_IP_TARGET", "10"),
            ("IP_COOLDOWN_PERIOD", "0"),
            ("RUST_LOG", "warn"),
        ],
    );
    ipamd.wait_free(210).await;

    // BENCH_CNI_LOG=<file>: vpc-cni logs at debug level there (phase timings), for diagnosis.
    let log = std::env::var("BENCH_CNI_LOG").ok();
    let ptp_host = format!("{tag}-ptphost");
    netns::create(&ptp_host).expect("ptp host netns");
    let ours = Plugin {
        name: "ours",
        bin: ours_bin.clone(),
        host_ns: node.netns.clone(),
        conf: json!({
            "cniVersion": "1.0.0", "name": "nodewire", "type": "vpc-cni", "mtu": 1500,
            "ipamdSocket": ipamd.socket,
            "logFile": log.clone().unwrap_or_default(), "logLevel": if log.is_some() { "debug" } else { "info" },
        }),
        args: |i| format!("K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{i}"),
        ipamd_pid: Some(ipamd.child.id()),
    };
    let ptp = Plugin {
        name: "ptp",
        bin: ptp_bin,
        host_ns: ptp_host.clone(),
        conf: json!({
            "cniVersion": "1.0.0", "name": "test-ptp", "type": "ptp", "ipMasq": false, "mtu": 1500,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.99.0.0/16" }]],
                      "routes": [{ "dst": "0.0.0.0/0" }],
                      "dataDir": dir.path().join("ipam") },
        }),
        args: |_| String::new(),
        ipamd_pid: None,
    };

    // BENCH_CNI_AB=<another vpc-cni>: that build takes ptp's place (same ipamd, same run), so
    // the ratio column compares two builds of ours; for telling small changes from this
    // machine's run-to-run noise.
    let ab = std::env::var_os("BENCH_CNI_AB").is_some();
    let ptp = match std::env::var_os("BENCH_CNI_AB") {
        Some(b) => {
            println!(
                "BENCH_CNI_AB: the ptp columns are {}",
                Path::new(&b).display()
            );
            Plugin {
                name: "oursb",
                bin: PathBuf::from(b),
                ..ours.clone()
            }
        }
        None => ptp,
    };
    let mut rows = Vec::new();
    // BENCH_CNI_PAR=1 (or 8): only that case, for quick iterations; default both.
    let pars: Vec<usize> = std::env::var("BENCH_CNI_PAR")
        .ok()
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8]);
    warm_up(&ours, &tag);
    warm_up(&ptp, &tag);
    for par in pars {
        run_case(&ours, &ptp, &tag, par, &mut rows);
        ipamd.wait_free(200).await;
    }
    println!("vpc-cni vs Debian ptp+host-local, {PODS} pods per case (ms; plugin exec only)");
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "case", "ours p50", "ours p99", "ptp p50", "ptp p99", "p50 ratio"
    );
    for r in &rows {
        println!(
            "{:<20} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>11.3}x",
            r.case,
            r.ours.0,
            r.ours.1,
            r.ptp.0,
            r.ptp.1,
            r.ours.0 / r.ptp.0
        );
    }
    // Where the CPU goes (tick-based for ipamd and the machine: a guide, not a measurement to
    // the microsecond). "machine" includes netns creation/deletion by this driver and kernel
    // threads (netns and veth teardown), for both plugins alike.
    println!("CPU per pod (ms): plugin execs / ipamd / whole machine");
    println!("{:<20} {:>22} {:>22}", "case", "ours", "ptp+host-local");
    for r in &rows {
        let f = |c: &Cpu, d: bool| {
            if d {
                format!("{:.2} / {:.2} / {:.2}", c.plugin, c.ipamd, c.machine)
            } else {
                format!("{:.2} / - / {:.2}", c.plugin, c.machine)
            }
        };
        println!(
            "{:<20} {:>22} {:>22}",
            r.case,
            f(&r.cpu[0], true),
            f(&r.cpu[1], ab)
        );
    }
    // Size as shipped: stripped.
    let stripped = dir.path().join("vpc-cni.stripped");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&ours_bin)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let size = std::fs::metadata(&stripped).map(|m| m.len()).unwrap_or(0);
        println!(
            "vpc-cni stripped size: {:.2} MB (target <= 6 MB)",
            size as f64 / 1_000_000.0
        );
    }
    let targets: Vec<_> = rows
        .iter()
        .map(|r| (r.case.clone(), r.ours.0 / r.ptp.0 <= 0.2))
        .collect();
    for (case, met) in targets {
        println!(
            "target p50 <= 0.2x ptp, {case}: {}",
            if met { "met" } else { "MISSED" }
        );
    }
    let _ = netns::delete(&ptp_host);
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}
