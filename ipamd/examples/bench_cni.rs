//! `make bench-cni`: pod ADD and DEL latency of vpc-cni (with ipamd on a vpcsim m5.4xlarge node)
//! against Debian's `ptp` + `host-local`, in the same run, 200 pods sequentially and 8 in
//! parallel. Only the plugin exec is timed (fork, exec, wait); creating and deleting the pod
//! netns and building the DEL config with prevResult are not. Both plugins run in a network
//! namespace of their own (ptp's in a throwaway "host" namespace, since it turns on the host's
//! ip_forward). Prints median and p99 per case and the ratio ours/ptp, and the stripped size of
//! the vpc-cni binary. vpc-cni is the static release build (what ships, `make cni-static`),
//! exec'd from where `vpc-cni install` put it (ptp and host-local copied alike); ipamd and this
//! driver are `perf`.
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
    /// CNI_PATH: where its IPAM plugin is (ptp's host-local).
    cni_path: PathBuf,
    /// The IPAM daemon whose CPU time counts for this plugin (ours: ipamd; ptp has none).
    ipamd_pid: Option<u32>,
}

fn pod_ns(tag: &str, plugin: &str, i: usize) -> String {
    format!("{tag}-{plugin}{i}")
}

/// One exec's outcome: wall time, the result JSON, and the child's CPU time (user + system).
struct Exec {
    took: Duration,
    result: Value,
    cpu: Duration,
}

/// Execs the plugin from the current thread (which is inside the plugin's host namespace) and
/// reaps it with wait4, for its own CPU time.
// The child is reaped by that wait4, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn exec(p: &Plugin, cmd: &str, i: usize, netns: &str, conf: &Value) -> Exec {
    use std::io::Read;
    let body = conf.to_string();
    let start = Instant::now();
    let mut child = Command::new(&p.bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", format!("bench-{i}"))
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &p.cni_path)
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
    // Both outputs are small (well under a pipe's buffer): read one, then the other.
    let (mut out, mut err) = (Vec::new(), Vec::new());
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("plugin stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_end(&mut err)
        .expect("plugin stderr");
    let mut status = 0;
    // SAFETY: wait4 writes only the status and rusage it is given; the child is ours and not
    // waited for elsewhere (std's Child never reaps on drop).
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        let pid = libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru);
        assert_eq!(pid, child.id() as libc::pid_t, "wait4 on the plugin");
        ru
    };
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&out);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{} {cmd} pod {i} failed ({status:#x}): {text} {}",
        p.name,
        String::from_utf8_lossy(&err)
    );
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Exec {
        took,
        result: serde_json::from_str(&text).unwrap_or(Value::Null),
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
    }
}

/// CPU time in ms: of the plugin execs (each reaped with wait4), of ipamd (its threads'
/// schedstat), and of the whole machine (every busy state of /proc/stat, kernel threads
/// included); [`Cpu::now`] reads the last two, a phase sums the first.
#[derive(Clone, Copy, Default)]
struct Cpu {
    plugin: f64,
    ipamd: f64,
    machine: f64,
}

impl Cpu {
    /// ipamd's and the machine's CPU so far; `plugin` is summed from the execs (wait4).
    fn now(ipamd: Option<u32>) -> Cpu {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // ipamd: its threads' run time in ns (schedstat), not clock ticks: a tick is 10 ms, a
        // pod's share of ipamd a few hundred microseconds.
        let ipamd = ipamd
            .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
            .map(|tasks| {
                tasks
                    .filter_map(|t| {
                        let p = t.ok()?.path().join("schedstat");
                        let s = std::fs::read_to_string(p).ok()?;
                        s.split_whitespace().next()?.parse::<f64>().ok()
                    })
                    .sum::<f64>()
                    / 1e6
            })
            .unwrap_or(0.0);
        let machine = machine_ticks().map_or(0.0, |(busy, _)| busy) * 1e3 / hz;
        Cpu {
            plugin: 0.0,
            ipamd,
            machine,
        }
    }

    /// Per pod since `before`; `plugin_ms` is the execs' summed CPU over the same pods.
    fn per_pod_since(self, before: Cpu, plugin_ms: f64, pods: usize) -> Cpu {
        let n = pods.max(1) as f64;
        Cpu {
            plugin: plugin_ms / n,
            ipamd: (self.ipamd - before.ipamd) / n,
            machine: (self.machine - before.machine) / n,
        }
    }
}

/// What one plugin got out of a phase: sorted exec times and CPU per pod.
struct Outcome {
    times: Vec<Duration>,
    cpu: Cpu,
}

/// One phase: `par` threads over pods 0..pods, each exec from inside its plugin's host netns.
/// With two plugins each pod index is run by both, in alternating order, so both see the same
/// machine at the same moment; the machine's CPU is then shared by the two (reported as half
/// each), ipamd's by the plugins that use it, and each plugin's own CPU is still its own (wait4).
fn phase(
    plugins: &[&Plugin],
    tag: &str,
    par: usize,
    cmd: &'static str,
    results: &[Arc<Mutex<Vec<Value>>>],
    pods: usize,
) -> Vec<Outcome> {
    let n = plugins.len();
    let ipamd_pid = plugins.iter().find_map(|p| p.ipamd_pid);
    let ipamd_users = plugins.iter().filter(|p| p.ipamd_pid.is_some()).count();
    let cpu = Cpu::now(ipamd_pid);
    let window = Window::start();
    let next = Arc::new(AtomicUsize::new(0));
    // Per plugin: exec times and summed exec CPU.
    let times = Arc::new(Mutex::new(vec![
        (Vec::with_capacity(pods), Duration::ZERO);
        n
    ]));
    let threads: Vec<_> = (0..par)
        .map(|_| {
            let plugins: Vec<Plugin> = plugins.iter().map(|p| (*p).clone()).collect();
            let results = results.to_vec();
            let (next, times) = (next.clone(), times.clone());
            let tag = tag.to_string();
            std::thread::spawn(move || {
                let hosts: Vec<std::fs::File> = plugins
                    .iter()
                    .map(|p| std::fs::File::open(netns::path(&p.host_ns)).expect("host netns"))
                    .collect();
                let mut inside = None;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= pods {
                        break;
                    }
                    for j in 0..n {
                        // Alternate who goes first, so neither always follows the other.
                        let k = if i % 2 == 0 { j } else { n - 1 - j };
                        let p = &plugins[k];
                        if inside != Some(&p.host_ns) {
                            nix::sched::setns(&hosts[k], nix::sched::CloneFlags::CLONE_NEWNET)
                                .expect("setns");
                            inside = Some(&p.host_ns);
                        }
                        let ns = pod_ns(&tag, p.name, i);
                        let path = netns::path(&ns).display().to_string();
                        let e = if cmd == "ADD" {
                            netns::create(&ns).expect("pod netns");
                            let e = exec(p, "ADD", i, &path, &p.conf);
                            results[k].lock().expect("results")[i] = e.result.clone();
                            e
                        } else {
                            let mut conf = p.conf.clone();
                            conf["prevResult"] = results[k].lock().expect("results")[i].clone();
                            let e = exec(p, "DEL", i, &path, &conf);
                            netns::delete(&ns).expect("pod netns delete");
                            e
                        };
                        let mut t = times.lock().expect("times");
                        t[k].0.push(e.took);
                        t[k].1 += e.cpu;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("bench thread");
    }
    let names: Vec<_> = plugins.iter().map(|p| p.name).collect();
    window.end(&format!("{} {cmd} {par}-way", names.join("+")));
    let shared = Cpu::now(ipamd_pid);
    let per = std::mem::take(&mut *times.lock().expect("times"));
    per.into_iter()
        .zip(plugins)
        .map(|((mut v, exec_cpu), p)| {
            v.sort();
            let mut c = shared.per_pod_since(cpu, exec_cpu.as_secs_f64() * 1e3, pods);
            c.ipamd = match p.ipamd_pid {
                Some(_) => c.ipamd / ipamd_users.max(1) as f64,
                None => 0.0,
            };
            c.machine /= n as f64;
            Outcome { times: v, cpu: c }
        })
        .collect()
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
    let results = [Arc::new(Mutex::new(vec![Value::Null; PODS]))];
    let tag = format!("{tag}w");
    phase(&[p], &tag, 1, "ADD", &results, WARM_UP);
    phase(&[p], &tag, 1, "DEL", &results, WARM_UP);
}

/// The whole machine's busy and total clock ticks so far (/proc/stat's first line: user nice
/// system idle iowait irq softirq steal; busy is all but idle and iowait).
fn machine_ticks() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<f64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = f.iter().take(8).sum();
    Some((total - f.get(3)? - f.get(4)?, total))
}

/// Waits (up to 2 s) until the machine is nearly idle: the kernel work a phase left behind
/// (veth teardown, address configuration, netns cleanup in kernel workers) is finished before
/// the next phase starts, so each plugin is timed with its own aftermath only.
fn quiesce() {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let Some((b0, t0)) = machine_ticks() else {
            return;
        };
        std::thread::sleep(Duration::from_millis(50));
        let Some((b1, t1)) = machine_ticks() else {
            return;
        };
        if t1 > t0 && (b1 - b0) / (t1 - t0) < 0.05 {
            return;
        }
    }
}

/// One case (ADD then DEL, `par` at a time) for both plugins.
///
/// Two builds of ours (A/B) take turns pod by pod, 100 pods each (ipamd's pool holds 200).
/// Ours and ptp run one after the other, 200 pods each, every phase starting on a quiet
/// machine ([`quiesce`]), so each plugin meets only its own aftermath: ptp's DEL leaves its veth
/// teardown to kernel workers that outlive the exec, and taking turns pod by pod put that work
/// into our next exec (our DEL p50 2.2 ms instead of 1.7). Tried and dropped: ABBA blocks of 50
/// pods against this machine's drift; the ratios spread as widely between runs (0.19-0.27x
/// sequential ADD) and our 8-way DEL read 0.20-0.23x instead of 0.13-0.18x.
fn run_case(ours: &Plugin, other: &Plugin, tag: &str, par: usize, rows: &mut Vec<Row>) {
    let fresh = || Arc::new(Mutex::new(vec![Value::Null; PODS]));
    let both_ours = other.ipamd_pid.is_some();
    let pods = if both_ours { PODS / 2 } else { PODS };
    let (add, del): (Vec<Outcome>, Vec<Outcome>) = if both_ours {
        let results = [fresh(), fresh()];
        quiesce();
        let add = phase(&[ours, other], tag, par, "ADD", &results, pods);
        quiesce();
        let del = phase(&[ours, other], tag, par, "DEL", &results, pods);
        (add, del)
    } else {
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for p in [ours, other] {
            let results = [fresh()];
            quiesce();
            add.extend(phase(&[p], tag, par, "ADD", &results, PODS));
            quiesce();
            del.extend(phase(&[p], tag, par, "DEL", &results, PODS));
        }
        (add, del)
    };
    for (name, t) in [("ADD", &add), ("DEL", &del)] {
        rows.push(Row {
            case: format!("{name} x{pods}, {par}-way"),
            ours: (pct(&t[0].times, 0.5), pct(&t[0].times, 0.99)),
            ptp: (pct(&t[1].times, 0.5), pct(&t[1].times, 0.99)),
            cpu: [t[0].cpu, t[1].cpu],
        });
    }
}

/// Where the runtime execs plugins from, filled the way a node's is: ours by `vpc-cni install`
/// (as the DaemonSet does), ptp and host-local by the same one-write copy. Not the build output
/// itself: a freshly linked file sits in the page cache as 4 KiB pages, an installed one in
/// large folios (2 MiB here), which the kernel maps in far fewer, cheaper faults: the same
/// vpc-cni bytes start ~12% faster installed. Both plugins get the installed kind.
fn install_ours(bin: &Path, dir: &Path, socket: &Path) -> PathBuf {
    let out = Command::new(bin)
        .arg("install")
        .arg("--bin-dir")
        .arg(dir)
        .arg("--conf-dir")
        .arg(dir.join("net.d"))
        .arg("--socket")
        .arg(socket)
        .args(["--wait-timeout", "60"])
        .env_remove("CNI_COMMAND")
        .output()
        .expect("vpc-cni install");
    assert!(
        out.status.success(),
        "vpc-cni install into {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("vpc-cni")
}

/// A Debian plugin copied into `dir` in one write, as `vpc-cni install` copies ours.
fn install_copy(src: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let name = src.file_name().expect("plugin file name");
    let dest = dir.join(name);
    std::fs::create_dir_all(dir).expect("plugin dir");
    let bytes = std::fs::read(src).expect("plugin binary");
    std::fs::write(&dest, bytes).expect("plugin copy");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dest
}

/// A tmpfs mounted for the run, unmounted (and its directory removed) on drop, panics included.
/// `ours`: the directory is the run's own and goes too; otherwise (a system directory mounted
/// over) it stays.
struct Tmpfs {
    dir: PathBuf,
    ours: bool,
}

impl Tmpfs {
    fn mount(dir: &Path, ours: bool) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "nodewire-bench"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs on {}", dir.display());
        Tmpfs {
            dir: dir.to_path_buf(),
            ours,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        if self.ours {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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
    let _tmpfs = Tmpfs::mount(&run_dir, true);
    // Pod namespaces are pinned under /run/netns, a tmpfs on a node (/run) but the root disk on
    // this machine: creating and deleting a namespace file there is ext4 work (journal, directory
    // search) that 8 plugins at a time compete with for the CPU. A tmpfs over it for the run
    // (namespaces made before it, none of ours, are hidden meanwhile).
    std::fs::create_dir_all(netns::NETNS_DIR).expect("netns dir");
    let _netns_tmpfs = Tmpfs::mount(Path::new(netns::NETNS_DIR), false);
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
        bin: install_ours(&ours_bin, &dir.path().join("bin-ours"), &ipamd.socket),
        host_ns: node.netns.clone(),
        conf: json!({
            "cniVersion": "1.0.0", "name": "nodewire", "type": "vpc-cni", "mtu": 1500,
            "ipamdSocket": ipamd.socket,
            "logFile": log.clone().unwrap_or_default(), "logLevel": if log.is_some() { "debug" } else { "info" },
        }),
        args: |i| format!("K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{i}"),
        cni_path: dir.path().join("bin-ours"),
        ipamd_pid: Some(ipamd.child.id()),
    };
    let ptp_dir = dir.path().join("bin-ptp");
    install_copy(Path::new("/usr/lib/cni/host-local"), &ptp_dir);
    let ptp = Plugin {
        name: "ptp",
        bin: install_copy(&ptp_bin, &ptp_dir),
        host_ns: ptp_host.clone(),
        conf: json!({
            "cniVersion": "1.0.0", "name": "test-ptp", "type": "ptp", "ipMasq": false, "mtu": 1500,
            "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.99.0.0/16" }]],
                      "routes": [{ "dst": "0.0.0.0/0" }],
                      "dataDir": dir.path().join("ipam") },
        }),
        args: |_| String::new(),
        cni_path: ptp_dir,
        ipamd_pid: None,
    };

    // BENCH_CNI_AB=<another vpc-cni>: that build takes ptp's place (same ipamd, same run), so
    // the ratio column compares two builds of ours; for telling small changes from this
    // machine's run-to-run noise. The two run pod by pod in turn (100 pods each), not one
    // phase after the other: this machine's speed drifts by 10-20% over seconds.
    let ab = std::env::var_os("BENCH_CNI_AB").is_some();
    let ptp = match std::env::var_os("BENCH_CNI_AB") {
        Some(b) => {
            println!(
                "BENCH_CNI_AB: the ptp columns are {}",
                Path::new(&b).display()
            );
            let b_dir = dir.path().join("bin-oursb");
            Plugin {
                name: "oursb",
                bin: install_ours(Path::new(&b), &b_dir, &ipamd.socket),
                cni_path: b_dir,
                // Its own pod names: the host veth is named after the pod.
                args: |i| format!("K8S_POD_NAMESPACE=benchb;K8S_POD_NAME=pod-{i}"),
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
