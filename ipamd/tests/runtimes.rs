//! vpc-cni driven by real third-party clients, on a vpcsim node with ipamd:
//! * `cnitool` (built from Debian's libcni source by `scripts/peers.sh`): ADD, CHECK, DEL of a
//!   conflist chaining Debian's `portmap`, which forwards a host port to the pod;
//! * containerd 1.6 (Debian) with its CRI plugin, driven by the PyPI CRI client
//!   (`scripts/cri.py`): RunPodSandbox gets a VPC address, Stop and Remove release it, including
//!   containerd's second DEL with no netns and no prevResult.
//!
//! Needs `scripts/peers.sh` to have run (`make test` does); they fail, never skip, without it.

use e2e::node::{NodeInfo, Options, Vpcsim, netns};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod harness;

fn repo() -> PathBuf {
    e2e::package_dir(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn peers() -> PathBuf {
    let p = repo().join(".peers");
    assert!(
        p.join("bin/cnitool").exists() && p.join("pause.tar").exists(),
        "test peers missing in {}: run `bash scripts/peers.sh` (make test does)",
        p.display()
    );
    p
}

/// A CNI bin dir (vpc-cni plus Debian's loopback and portmap) and a conf dir with our conflist.
fn cni_dirs(dir: &Path, socket: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let bin = dir.join("bin");
    let conf = dir.join("net.d");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::create_dir_all(&conf).expect("conf");
    std::os::unix::fs::symlink(
        harness::vpc_cni_next_to(Path::new(env!("CARGO_BIN_EXE_ipamd"))),
        bin.join("vpc-cni"),
    )
    .expect("link");
    for p in ["loopback", "portmap"] {
        std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), bin.join(p)).expect("link");
    }
    let log = dir.join("plugin.log");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "nodewire",
        "plugins": [
            { "type": "vpc-cni", "ipamdSocket": socket, "logFile": log, "logLevel": "debug" },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
        ]
    });
    std::fs::write(conf.join("10-nodewire.conflist"), list.to_string()).expect("conflist");
    (bin, conf, log)
}

/// The same network without portmap, for cnitool's CHECK: Debian's portmap 1.1.1 fails CHECK of
/// any IPv4-only pod ("could not check ipv6 dnat: chain CNI-DN-… not found") because it checks
/// an ip6tables chain it never created.
fn plain_conflist(conf: &Path, socket: &Path, log: &Path) {
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "nodewire-plain",
        "plugins": [{ "type": "vpc-cni", "ipamdSocket": socket, "logFile": log, "logLevel": "debug" }]
    });
    std::fs::write(conf.join("20-plain.conflist"), list.to_string()).expect("conflist");
}

async fn node_with_ipamd(dir: &Path, seed: u64) -> (Vpcsim, NodeInfo, harness::Ipamd) {
    let sim = Vpcsim::start(Options {
        nodes: 1,
        instance_type: "m5.large".into(),
        state_dir: dir.join("vpc"),
        timing: harness::quick_timing(),
        seed,
        imds_v1: false,
        zone: None,
    })
    .await
    .expect("vpcsim");
    let node = sim.info.nodes[0].clone();
    let d = dir.join("ipamd");
    std::fs::create_dir_all(&d).expect("dir");
    let ipamd = harness::Ipamd::start_bin(
        Path::new(env!("CARGO_BIN_EXE_ipamd")),
        &node,
        &d,
        // The primary ENI's 9 addresses from the start, enough for every pod here, so no ENI
        // comes or goes while the tests compare the host's rules before and after.
        &[
            ("IP_COOLDOWN_PERIOD", "30"),
            ("WARM_IP_TARGET", "4"),
            ("MINIMUM_IP_TARGET", "9"),
        ],
    );
    ipamd.wait_free(9).await;
    (sim, node, ipamd)
}

/// Allocations in ipamd's checkpoint.
fn held(ipamd_dir: &Path) -> usize {
    let v: Value =
        serde_json::from_slice(&std::fs::read(ipamd_dir.join("ipam.json")).expect("checkpoint"))
            .expect("checkpoint json");
    v["allocations"].as_array().map(Vec::len).unwrap_or(0)
}

fn check(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cnitool_add_check_del_with_portmap_forwarding_a_host_port() {
    let peers = peers();
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, node, ipamd) = node_with_ipamd(dir.path(), 31).await;
    let (bin, conf, log) = cni_dirs(dir.path(), &ipamd.socket);
    plain_conflist(&conf, &ipamd.socket, &log);
    let before = harness::host_state(&node.netns, "main");
    let tag = format!("cn{:04x}", std::process::id() & 0xffff);
    struct Gone(Vec<String>);
    impl Drop for Gone {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = netns::delete(n);
            }
        }
    }
    let (pod, plain) = (format!("{tag}-tool"), format!("{tag}-plain"));
    let _gone = Gone(vec![pod.clone(), plain.clone()]);
    netns::create(&pod).expect("pod netns");
    netns::create(&plain).expect("pod netns");
    let cnitool = |cmd: &str, net: &str, ns: &str| {
        Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(peers.join("bin/cnitool"))
            .args([cmd, net])
            .arg(netns::path(ns))
            .env("NETCONFPATH", &conf)
            .env("CNI_PATH", &bin)
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={ns}"),
            )
            .env(
                "CAP_ARGS",
                r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#,
            )
            .output()
            .expect("cnitool")
    };
    let address = |out: &str| -> Ipv4Addr {
        let r: Value = serde_json::from_str(out).expect("result");
        r["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .expect("address")
    };
    // ADD, CHECK (healthy, then after drift), DEL.
    let plain_ip = address(&check(
        &cnitool("add", "nodewire-plain", &plain),
        "cnitool add",
    ));
    assert!(
        sim.info.vpc_cidr.contains(&plain_ip),
        "{plain_ip} in the VPC"
    );
    check(&cnitool("check", "nodewire-plain", &plain), "cnitool check");
    let status = Command::new("ip")
        .args(["-n", &node.netns, "rule", "del", "priority", "512", "to"])
        .arg(plain_ip.to_string())
        .status()
        .expect("ip rule del");
    assert!(status.success());
    let drifted = cnitool("check", "nodewire-plain", &plain);
    assert!(!drifted.status.success(), "CHECK notices the missing rule");
    assert!(
        String::from_utf8_lossy(&drifted.stderr).contains("512"),
        "{drifted:?}"
    );
    check(&cnitool("del", "nodewire-plain", &plain), "cnitool del");

    // With portmap chained: the pod serves :80, reached from the VPC at the node's :8080.
    let ip = address(&check(&cnitool("add", "nodewire", &pod), "cnitool add"));
    assert!(sim.info.vpc_cidr.contains(&ip), "{ip} in the VPC");
    // A server in the pod on :80, reached from the VPC fabric at the node's address :8080.
    let l = netns::run_in(&pod, move || std::net::TcpListener::bind((ip, 80)))
        .expect("netns")
        .expect("bind");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.write_all(b"hello from the pod");
        }
    });
    let to = SocketAddr::from((node.primary_ip, 8080));
    let got = netns::run_in(&sim.info.fabric_netns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        let mut b = String::new();
        s.read_to_string(&mut b)?;
        Ok::<_, std::io::Error>(b)
    })
    .expect("netns")
    .expect("host port 8080 forwarded to the pod");
    assert_eq!(got, "hello from the pod");

    check(&cnitool("del", "nodewire", &pod), "cnitool del");
    check(&cnitool("del", "nodewire", &pod), "cnitool del again");
    assert_eq!(
        harness::host_state(&node.netns, "main"),
        before,
        "rules and routes as before"
    );
    assert_eq!(held(&dir.path().join("ipamd")), 0, "address released");
    let nat = Command::new("ip")
        .args(["netns", "exec", &node.netns, "iptables", "-t", "nat", "-S"])
        .output()
        .expect("iptables");
    assert!(
        !String::from_utf8_lossy(&nat.stdout).contains("8080"),
        "portmap's DNAT removed"
    );
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}

struct Containerd(PathBuf);

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/containerd.sh"))
            .arg("stop")
            .arg(&self.0)
            .status();
    }
}

fn cri(sock: &Path, args: &[&str]) -> Value {
    let out = Command::new(peers().join("venv/bin/python"))
        .arg(repo().join("scripts/cri.py"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cri.py");
    let text = check(&out, &format!("cri.py {args:?}"));
    if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_cri_sandboxes_get_vpc_addresses_and_give_them_back() {
    peers();
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, node, ipamd) = node_with_ipamd(dir.path(), 41).await;
    let (bin, conf, log) = cni_dirs(dir.path(), &ipamd.socket);
    let before = harness::host_state(&node.netns, "main");
    let ctrd = dir.path().join("c");
    let guard = Containerd(ctrd.clone());
    let out = Command::new("ip")
        .args(["netns", "exec", &node.netns, "bash"])
        .arg(repo().join("scripts/containerd.sh"))
        .arg("start")
        .args([&ctrd, &bin, &conf])
        .output()
        .expect("containerd.sh");
    check(&out, "containerd start");
    let sock = ctrd.join("containerd.sock");
    let sock = sock.as_path();

    let mut pods = Vec::new();
    for n in 0..3 {
        let v = cri(
            sock,
            &[
                "run",
                "--name",
                &format!("web-{n}"),
                "--namespace",
                "default",
            ],
        );
        let ip: Ipv4Addr = v["ip"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("pod ip");
        assert!(sim.info.vpc_cidr.contains(&ip), "{ip} in the VPC");
        pods.push((v["id"].as_str().expect("id").to_string(), ip));
    }
    assert_eq!(held(&dir.path().join("ipamd")), 3);
    // A pod recreated under its old name (a StatefulSet's web-0): the new sandbox's host veth
    // has the old one's name. Removing the old sandbox afterwards (containerd's second DEL,
    // without prevResult) must not unwire the new one.
    let (old_id, _) = pods.remove(0);
    cri(sock, &["stop", &old_id]);
    let v = cri(sock, &["run", "--name", "web-0", "--namespace", "default"]);
    let ip: Ipv4Addr = v["ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("pod ip");
    pods.insert(0, (v["id"].as_str().expect("id").to_string(), ip));
    cri(sock, &["remove", &old_id]);
    assert_eq!(held(&dir.path().join("ipamd")), 3);
    let rules = Command::new("ip")
        .args(["-n", &node.netns, "rule", "show", "priority", "512"])
        .output()
        .expect("ip rule");
    assert!(
        String::from_utf8_lossy(&rules.stdout).contains(&format!("to {ip} lookup main")),
        "the new web-0 keeps its rule"
    );
    // The node reaches each pod through its veth.
    for (_, ip) in &pods {
        let ok = Command::new("ip")
            .args(["netns", "exec", &node.netns, "ping", "-c1", "-W3", "-q"])
            .arg(ip.to_string())
            .stdout(Stdio::null())
            .status()
            .expect("ping")
            .success();
        assert!(ok, "node pings pod {ip}");
    }
    for (id, _) in &pods {
        cri(sock, &["stop", id]);
        cri(sock, &["remove", id]);
    }
    assert_eq!(held(&dir.path().join("ipamd")), 0, "every address released");
    assert_eq!(
        harness::host_state(&node.netns, "main"),
        before,
        "rules and routes as before"
    );
    // Each sandbox had its DEL with the netns (Stop) and the second one without (Remove).
    let text = std::fs::read_to_string(&log).expect("plugin log");
    for id in pods.iter().map(|(id, _)| id).chain([&old_id]) {
        let dels = text
            .lines()
            .filter(|l| l.contains(" DEL") && l.contains(id.as_str()))
            .count();
        assert!(dels >= 2, "{id}: {dels} DELs logged\n{text}");
    }
    drop(guard);
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}
