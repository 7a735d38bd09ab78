//! `make demo` end to end: the real `nodewire-demo` binary with the real ipamd, vpc-cni and
//! ebs-csi next to it (`cargo test --workspace` builds them all), on vpcsim.
//!
//! One test function, run in order, because each part checks the whole machine for leftovers:
//! a full run whose report must show every check passing; Ctrl-C while the volume is mounted and
//! while the nodes come up; a pod count that cannot fit, refused with a message that says why.
//! After each: no namespace, loop device, mount or daemon of the demo's is left.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nodewire-demo"))
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

fn machine() -> Machine {
    let dir = bin().parent().expect("target dir").display().to_string();
    Machine {
        namespaces: lines(&["ip", "netns", "list"]),
        loops: lines(&[
            "losetup",
            "--list",
            "--noheadings",
            "--output",
            "NAME,BACK-FILE",
        ]),
        mounts: lines(&["findmnt", "-rn", "-o", "TARGET"]),
        daemons: lines(&[
            "pgrep",
            "-f",
            "-a",
            &format!("{dir}/(ipamd|ebs-csi|vpc-cni)"),
        ]),
    }
}

fn demo(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(["--timing", "quick"]).args(args);
    c
}

/// Runs the demo to the end; returns (exit code, stdout, stderr).
fn run_to_end(args: &[&str]) -> (i32, String, String) {
    let out = demo(args).output().expect("nodewire-demo");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts the demo, sends SIGINT once a progress line contains `when`, and returns its exit code
/// and everything it printed.
fn interrupt_at(args: &[&str], when: &str) -> (i32, String) {
    let mut child = demo(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nodewire-demo");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("never printed {when:?}; printed:\n{}", seen.join("\n")));
        let hit = l.contains(when);
        seen.push(l);
        if hit {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    seen.extend(rx.try_iter());
    (status.code().unwrap_or(-1), seen.join("\n"))
}

#[test]
fn demo_runs_reports_survives_ctrl_c_and_leaves_the_machine_as_it_was() {
    let before = machine();

    // 1. A full run, 12 pods per node: more than an m5.large's primary ENI holds, so some pods
    //    land on a secondary ENI.
    let (code, out, err) = run_to_end(&["--pods", "12", "--parallel", "3"]);
    assert_eq!(code, 0, "demo failed:\n{out}\n{err}");
    for want in [
        "pods: 24/24 up",
        "sha256 matches; NOTE: written by pod-1-01 on node1",
        "the pod's df now shows 7.9 GiB",
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
    assert_eq!(ec2("CreateVolume"), vec![0, 0, 1, 1]);
    assert_eq!(ec2("AttachVolume"), vec![0, 0, 2, 2]);
    let attach_eni = ec2("AttachNetworkInterface");
    assert!(
        attach_eni[0] >= 1 && attach_eni[1] >= 1 && attach_eni[2] == 0,
        "{attach_eni:?}"
    );
    assert_eq!(machine(), before, "the full run left something behind");

    // 2. Ctrl-C with the volume mounted on node 1 and pods up: exit 130, all gone.
    let (code, out) = interrupt_at(&["--pods", "3"], "volume: pod writes");
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

    // 3. Ctrl-C while the nodes come up.
    let (code, out) = interrupt_at(&["--pods", "3"], "ebs-csi: controller on the host");
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("the machine is as it was"), "{out}");
    assert_eq!(
        machine(),
        before,
        "Ctrl-C during start-up left something behind"
    );

    // 4. More pods than an m5.large holds with secondary IPs: refused, saying what to do.
    let (code, out, err) = run_to_end(&["--pods", "28"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("28 pods per node do not fit: an m5.large holds 27 pods in this mode; pass --prefix-delegation or fewer --pods"),
        "{err}"
    );
    assert!(out.contains("the machine is as it was"), "{out}");
    assert_eq!(machine(), before, "a refused run left something behind");
}
