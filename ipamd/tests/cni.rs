//! vpc-cni + ipamd end to end on vpcsim: two m5.xlarge nodes, ipamd in each node namespace, the
//! real `vpc-cni` binary exec'd as a runtime would for 30 pods per node, then traffic across the
//! VPC fabric (ICMP and TCP, pod to pod, pod to node, pod to outside the VPC through SNAT), GC,
//! and DEL back to the exact host state of before the first ADD.
//!
//! `vpc-cni` is taken from next to this package's `ipamd` binary (`cargo test --workspace` builds
//! both).

use e2e::node::{NodeInfo, Options, Vpcsim, fabric, netns};
use harness::host_state;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod harness;

const PODS: usize = 30;

/// Pod namespaces (`cn<4 hex>-…`), deleted on drop.
struct PodNs(Vec<String>);

impl Drop for PodNs {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = netns::delete(n);
        }
    }
}

struct Pod {
    node: usize,
    ns: String,
    container: String,
    name: String,
    ip: Ipv4Addr,
    result: Value,
}

fn conf(socket: &Path, prev: Option<&Value>) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "nodewire",
        "type": "vpc-cni",
        "ipamdSocket": socket,
    });
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

/// Execs vpc-cni in the node namespace, as the runtime on that node would.
fn cni(node: &NodeInfo, cmd: &str, pod: Option<(&str, &str, &str)>, conf: &Value) -> (bool, Value) {
    let (container, netns, name) = pod.unwrap_or(("", "", ""));
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(harness::vpc_cni_next_to(Path::new(env!(
            "CARGO_BIN_EXE_ipamd"
        ))))
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAME={name};IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vpc-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("config");
    let out = child.wait_with_output().expect("vpc-cni");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    if !out.status.success() {
        eprintln!("{cmd}: {v} {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), v)
}

fn ping(from_ns: &str, to: Ipv4Addr) -> bool {
    Command::new("ip")
        .args(["netns", "exec", from_ns, "ping", "-c1", "-W3", "-q"])
        .arg(to.to_string())
        .stdout(Stdio::null())
        .status()
        .expect("ping")
        .success()
}

/// An echo server in `ns` on `addr` answering each connection with its peer's address.
fn tell_peer_server(ns: &str, addr: SocketAddr) {
    let l = netns::run_in(ns, move || std::net::TcpListener::bind(addr))
        .expect("netns")
        .expect("bind");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let peer = s
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = s.write_all(peer.as_bytes());
        }
    });
}

/// Connects from `ns` and returns what the server said (the source address it saw).
fn tcp_ask(ns: &str, to: SocketAddr) -> Result<String, String> {
    netns::run_in(ns, move || {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_thirty_pods_each_reach_across_the_vpc_and_leave_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Vpcsim::start(Options {
        nodes: 2,
        instance_type: "m5.xlarge".into(),
        state_dir: dir.path().join("vpc"),
        timing: harness::quick_timing(),
        seed: 21,
        imds_v1: false,
        zone: None,
    })
    .await
    .expect("vpcsim");
    let nodes = sim.info.nodes.clone();
    // A pool sized before the first ADD (32 addresses: the primary ENI's 14, a second ENI's 14
    // and 4 on a third), so EC2 state and host tables do not change while pods come and go.
    let ipamds: Vec<harness::Ipamd> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let d = dir.path().join(format!("ipamd{i}"));
            std::fs::create_dir_all(&d).expect("dir");
            harness::Ipamd::start_bin(
                Path::new(env!("CARGO_BIN_EXE_ipamd")),
                n,
                &d,
                &[
                    ("MINIMUM_IP_TARGET", "32"),
                    ("WARM_IP_TARGET", "1"),
                    ("IP_COOLDOWN_PERIOD", "30"),
                ],
            )
        })
        .collect();
    for ipamd in &ipamds {
        ipamd.wait_free(32).await;
    }
    let before: Vec<_> = nodes.iter().map(|n| host_state(&n.netns, "all")).collect();
    let drops_before = fabric::src_dst_drops(&sim.info.fabric_netns);

    // 30 pods per node through the real plugin.
    let tag = format!("cn{:04x}", std::process::id() & 0xffff);
    let mut guard = PodNs(Vec::new());
    let mut pods: Vec<Pod> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for p in 0..PODS {
            let ns = format!("{tag}-n{i}p{p}");
            netns::create(&ns).expect("pod netns");
            guard.0.push(ns.clone());
            let container = format!("sandbox-{i}-{p}");
            let name = format!("pod-{i}-{p}");
            let path = netns::path(&ns).display().to_string();
            let (ok, r) = cni(
                node,
                "ADD",
                Some((&container, &path, &name)),
                &conf(&ipamds[i].socket, None),
            );
            assert!(ok, "ADD {name}: {r}");
            let ip: Ipv4Addr = r["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
                .expect("pod address");
            assert!(sim.info.vpc_cidr.contains(&ip), "{ip} is a VPC address");
            pods.push(Pod {
                node: i,
                ns,
                container,
                name,
                ip,
                result: r,
            });
        }
    }
    let distinct: std::collections::BTreeSet<_> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(
        distinct.len(),
        2 * PODS,
        "every pod has its own VPC address"
    );
    // Some pods on each node live on a secondary ENI (their from-rule at 1536).
    for (i, node) in nodes.iter().enumerate() {
        let rules = host_state(&node.netns, "all").0;
        let secondary = pods
            .iter()
            .filter(|p| p.node == i && rules.contains(&format!("1536:\tfrom {} lookup", p.ip)))
            .count();
        assert!(
            secondary >= 10,
            "node {i}: {secondary} pods on secondary ENIs\n{rules}"
        );
    }
    // CHECK agrees with what ADD built.
    let (ok, e) = cni(
        &nodes[0],
        "CHECK",
        Some((
            &pods[20].container,
            &netns::path(&pods[20].ns).display().to_string(),
            &pods[20].name,
        )),
        &conf(&ipamds[0].socket, Some(&pods[20].result)),
    );
    assert!(ok, "CHECK: {e}");

    // Every pod reaches its peer on the other node and the other node itself, ICMP and TCP.
    for p in &pods {
        tell_peer_server(&p.ns, SocketAddr::from((p.ip, 7000)));
    }
    for n in &nodes {
        tell_peer_server(&n.netns, SocketAddr::from((n.primary_ip, 7001)));
    }
    for (k, p) in pods.iter().enumerate() {
        let peer = &pods[(k + PODS) % (2 * PODS)];
        let other = &nodes[1 - p.node];
        assert!(ping(&p.ns, peer.ip), "ping {} -> {}", p.ip, peer.ip);
        assert!(
            ping(&p.ns, other.primary_ip),
            "ping {} -> node {}",
            p.ip,
            other.primary_ip
        );
        // Inside the VPC no SNAT: the peer sees the pod's own address.
        let seen = tcp_ask(&p.ns, SocketAddr::from((peer.ip, 7000))).expect("pod to pod");
        assert_eq!(seen, p.ip.to_string());
        let seen = tcp_ask(&p.ns, SocketAddr::from((other.primary_ip, 7001))).expect("pod to node");
        assert_eq!(seen, p.ip.to_string());
    }
    // Outside the VPC: a listener in the fabric sees the node's primary address (SNAT), for
    // pods on the primary ENI and on secondary ENIs alike.
    let outside = Ipv4Addr::new(203, 0, 113, 10);
    Command::new("ip")
        .args([
            "-n",
            &sim.info.fabric_netns,
            "addr",
            "add",
            "203.0.113.10/32",
            "dev",
            "lo",
        ])
        .status()
        .expect("ip addr");
    tell_peer_server(&sim.info.fabric_netns, SocketAddr::from((outside, 7002)));
    for p in &pods {
        let seen = tcp_ask(&p.ns, SocketAddr::from((outside, 7002)))
            .unwrap_or_else(|e| panic!("{} to the outside: {e}", p.ip));
        assert_eq!(
            seen,
            nodes[p.node].primary_ip.to_string(),
            "{} SNATed",
            p.ip
        );
    }
    // Pods on secondary ENIs left through their own ENI: the fabric's src/dst check saw nothing.
    assert_eq!(fabric::src_dst_drops(&sim.info.fabric_netns), drops_before);

    // GC with the last pod of node 0 missing from the valid list: ipamd releases it and removes
    // its host rules and route.
    let gone = &pods[PODS - 1];
    let valid: Vec<Value> = pods
        .iter()
        .filter(|p| p.node == 0 && p.container != gone.container)
        .map(|p| json!({ "containerID": p.container, "ifname": "eth0" }))
        .collect();
    let mut gc = conf(&ipamds[0].socket, None);
    gc["cni.dev/valid-attachments"] = json!(valid);
    let (ok, e) = cni(&nodes[0], "GC", None, &gc);
    assert!(ok, "GC: {e}");
    let (rules, routes) = host_state(&nodes[0].netns, "all");
    assert!(
        !rules.contains(&format!("{} ", gone.ip)),
        "GC left a rule:\n{rules}"
    );
    assert!(
        !routes.contains(&format!("{} dev", gone.ip)),
        "GC left a route:\n{routes}"
    );

    // DEL of every pod (the GC'd one too: DEL is idempotent) restores the host exactly.
    for p in &pods {
        let path = netns::path(&p.ns).display().to_string();
        let (ok, e) = cni(
            &nodes[p.node],
            "DEL",
            Some((&p.container, &path, &p.name)),
            &conf(&ipamds[p.node].socket, Some(&p.result)),
        );
        assert!(ok, "DEL {}: {e}", p.name);
    }
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(
            host_state(&n.netns, "all"),
            before[i],
            "node {i} host state after DEL"
        );
    }
    drop(guard);
    drop(ipamds);
    sim.shutdown().await.expect("shutdown");
}
