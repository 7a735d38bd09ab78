//! `make demo` end to end: the real `nodewire-demo` binary with the real ipamd, vpc-cni and
//! ebs-csi next to it (`cargo test --workspace` builds them all), on vpcsim.
//!
//! One test function, run in order, because each part checks the whole machine for leftovers:
//! a full run whose report must show every check passing; Ctrl-C while the volume is mounted;
//! SIGTERM while the nodes come up; a pod count that cannot fit, refused with a message that says
//! why.
//! After each: no namespace, loop device, mount or daemon of the demo's is left.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    let demo = Path::new(env!("CARGO_BIN_EXE_nodewire-demo"));
    for daemon in ["ipamd", "vpc-cni", "ebs-csi"] {
        assert!(
            demo.with_file_name(daemon).exists(),
            "{daemon} missing next to {}: run `cargo test --workspace` (or `make test`), which builds it",
            demo.display()
        );
    }
    demo
}

/// What the demo could leave behind: namespaces, loop devices, mounts, daemons.
#[derive(Debug, PartialEq, Eq)]
struct Machine {
    namespaces: Vec<String>,
    loops: Vec<String>,
    mounts: Vec<String>,
    daemons: Vec<String>,
}

fn lines(cmd: &[&str]) -> Vec<String> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().expect(cmd[0]);
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// The demo's own kinds only (vpcsim and pod namespaces, vpcsim volume files, mounts under a
/// demo directory, daemons from this build), so nothing else on the machine disturbs the check.
fn machine() -> Machine {
    let dir = bin().parent().expect("target dir").display().to_string();
    let ours = |v: Vec<String>, keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        v.into_iter().filter(|l| keep(l)).collect()
    };
    let sim_ns = |l: &str| {
        let name = l.split_whitespace().next().unwrap_or_default();
        (name.starts_with("vs") || name.starts_with("cn"))
            && name.len() > 7
            && name[2..6].chars().all(|c| c.is_ascii_hexdigit())
            && &name[6..7] == "-"
    };
    Machine {
        namespaces: ours(lines(&["ip", "netns", "list"]), &sim_ns),
        loops: ours(
            lines(&[
                "losetup",
                "--list",
                "--noheadings",
                "--output",
                "NAME,BACK-FILE",
            ]),
            &|l| l.contains("/volumes/vol-"),
        ),
        mounts: ours(lines(&["findmnt", "-rn", "-o", "TARGET"]), &|l| {
            l.contains("/nodewire-demo.") || l.starts_with("/run/netns/") && sim_ns(&l[11..])
        }),
        daemons: lines(&[
            "pgrep",
            "-f",
            "-a",
            &format!("{dir}/(ipamd|ebs-csi|vpc-cni)"),
        ]),
    }
}

/// A running demo, interrupted (SIGINT) and reaped if the test fails while it runs.
struct Running(std::process::Child);
impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = self.0.wait();
        }
    }
}

/// Reads a pipe to its end on a thread, line by line into `tx`.
fn pump(
    r: impl std::io::Read + Send + 'static,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    })
}

fn demo(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(["--timing", "quick"]).args(args);
    c
}

/// Starts the demo; once a stdout line contains `when` (if given) sends `sig`. Waits (bounded)
/// for it to exit; returns (exit code, stdout, stderr).
fn drive(
    args: &[&str],
    interrupt: Option<(&str, nix::sys::signal::Signal)>,
) -> (i32, String, String) {
    let mut child = demo(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nodewire-demo");
    let (tx, rx) = mpsc::channel();
    let (etx, erx) = mpsc::channel();
    let readers = [
        pump(child.stdout.take().expect("stdout"), tx),
        pump(child.stderr.take().expect("stderr"), etx),
    ];
    let running = Running(child);
    let pid = nix::unistd::Pid::from_raw(running.0.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = Vec::new();
    let mut sent = interrupt.is_none();
    // Until stdout closes (the demo exited) or the deadline passes.
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some((when, sig)) = interrupt
            && !sent
            && l.contains(when)
        {
            nix::sys::signal::kill(pid, sig).expect("signal");
            sent = true;
        }
        seen.push(l);
    }
    assert!(
        Instant::now() < deadline,
        "the demo did not finish in time; printed:\n{}",
        seen.join("\n")
    );
    let mut running = running;
    let status = running.0.wait().expect("wait");
    for r in readers {
        r.join().expect("reader");
    }
    let out = seen.join("\n");
    let err = erx.try_iter().collect::<Vec<_>>().join("\n");
    assert!(
        sent,
        "never printed {interrupt:?}; printed:\n{out}\nstderr:\n{err}"
    );
    (status.code().unwrap_or(-1), out, err)
}

#[test]
fn demo_runs_reports_survives_ctrl_c_and_leaves_the_machine_as_it_was() {
    let before = machine();

    // 1. A full run, 12 pods per node: more than an m5.large's primary ENI holds, so some pods
    //    land on a secondary ENI.
    let (code, out, err) = drive(&["--pods", "12", "--parallel", "3"], None);
    assert_eq!(code, 0, "demo failed:\n{out}\n{err}");
    for want in [
        "pods: 24/24 up",
        "sha256 matches; NOTE: written by pod-1-01 on node1",
        "DeleteVolume",
        "the machine is as it was",
    ] {
        assert!(out.contains(want), "{want:?} missing from\n{out}");
    }
    for check in [
        "pod → pod on the other node, ICMP",
        "pod → pod on the other node, TCP",
        "peer saw the pod's own IP (no NAT in the VPC)",
        "pod → the other node's IP, ICMP",
        "pod → outside the VPC, SNAT to its node's IP",
    ] {
        let l = out
            .lines()
            .find(|l| l.contains(check))
            .unwrap_or_else(|| panic!("{check:?} missing from\n{out}"));
        assert!(l.trim_end().ends_with(" 24/24"), "{l}");
    }
    // Expanded from 4 GiB to 8 GiB: the pod's filesystem grew (xfs keeps its log out of df).
    let df: f64 = out
        .split("the pod's df now shows ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no df size in\n{out}"));
    assert!(df > 4.0 && df <= 8.0, "df shows {df} GiB");
    // Every pod is in the table with an address and its ENI; 12 pods do not fit on an
    // m5.large's primary ENI (9 addresses), so some are on device 1.
    for n in 1..=2 {
        for k in 1..=12 {
            let row = out
                .lines()
                .filter(|l| l.starts_with("  pod-1-"))
                .find(|l| l.split_whitespace().any(|w| w == format!("pod-{n}-{k:02}")))
                .unwrap_or_else(|| panic!("pod-{n}-{k:02} missing from\n{out}"));
            assert!(row.contains("10.90."), "{row}");
        }
    }
    assert!(out.contains(" (1) "), "no pod on a secondary ENI:\n{out}");
    // Traffic from secondary-ENI pods left through their own ENI, and DEL left nothing.
    let drops = out
        .lines()
        .find(|l| l.contains("src/dst-check drops"))
        .expect("drops line");
    assert!(drops.trim_end().ends_with(" 0"), "{drops}");
    for n in ["node1", "node2"] {
        let l = out
            .lines()
            .find(|l| l.contains(&format!("{n}: pod rules + routes")))
            .expect("wiring line");
        assert!(l.trim_end().ends_with("→ 0"), "{l}");
    }
    // EC2 calls: ipamd's through the nodes, the volume's through the controller.
    let ec2_table = out
        .split("EC2 API calls by action")
        .nth(1)
        .expect("EC2 table");
    let ec2 = |action: &str| -> Vec<u64> {
        ec2_table
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{action} ")))
            .unwrap_or_else(|| panic!("{action} missing from\n{out}"))
            .split_whitespace()
            .skip(1)
            .map(|n| n.parse().expect("count"))
            .collect()
    };
    // Volume calls come from the controller only (retries would add to its column).
    for action in [
        "CreateVolume",
        "AttachVolume",
        "DetachVolume",
        "DeleteVolume",
    ] {
        let c = ec2(action);
        assert!(
            c[0] == 0 && c[1] == 0 && c[2] >= 1 && c[3] == c[2],
            "{action}: {c:?}"
        );
    }
    assert!(ec2("AttachVolume")[2] >= 2, "attached to both nodes");
    let attach_eni = ec2("AttachNetworkInterface");
    assert!(
        attach_eni[0] >= 1 && attach_eni[1] >= 1 && attach_eni[2] == 0,
        "{attach_eni:?}"
    );
    assert_eq!(machine(), before, "the full run left something behind");

    // 2. Ctrl-C with the volume mounted on node 1 and pods up: exit 130, all gone.
    let (code, out, _) = drive(
        &["--pods", "3"],
        Some(("volume: pod writes", nix::sys::signal::Signal::SIGINT)),
    );
    assert_eq!(code, 130, "{out}");
    assert!(
        out.contains("interrupted (SIGINT): stopping and tearing everything down"),
        "{out}"
    );
    assert!(out.contains("the machine is as it was"), "{out}");
    assert_eq!(
        machine(),
        before,
        "Ctrl-C with a mounted volume left something behind"
    );

    // 3. SIGTERM while the nodes come up: exit 143, all gone.
    let (code, out, _) = drive(
        &["--pods", "3"],
        Some((
            "ebs-csi: controller on the host",
            nix::sys::signal::Signal::SIGTERM,
        )),
    );
    assert_eq!(code, 143, "{out}");
    assert!(out.contains("the machine is as it was"), "{out}");
    assert_eq!(
        machine(),
        before,
        "Ctrl-C during start-up left something behind"
    );

    // 4. More pods than an m5.large holds with secondary IPs: refused, saying what to do.
    let (code, out, err) = drive(&["--pods", "28"], None);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("28 pods per node do not fit: an m5.large holds 27 pods in this mode; pass --prefix-delegation or fewer --pods"),
        "{err}"
    );
    assert!(out.contains("the machine is as it was"), "{out}");
    assert_eq!(machine(), before, "a refused run left something behind");
}
