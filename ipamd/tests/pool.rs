//! ipamd end to end against vpcsim: the real binary inside a node namespace, driven over its
//! unix socket by a gRPC client, with EC2's state read back from the simulation.

use e2e::node::{NodeInfo, Options, Vpcsim};
use e2e::sim::Timing;
use nodewire_aws::aws_sdk_ec2;
use nodewire_proto::IPAM_PROTOCOL_VERSION;
use nodewire_proto::ipam::ipam_client::IpamClient;
use nodewire_proto::ipam::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

mod harness;
use harness::{add, key, quick_timing as quick};

/// The ipamd under test (this package's binary).
struct Ipamd;
impl Ipamd {
    fn start(node: &NodeInfo, dir: &Path, env: &[(&str, &str)]) -> harness::Ipamd {
        harness::Ipamd::start_bin(Path::new(env!("CARGO_BIN_EXE_ipamd")), node, dir, env)
    }
}

/// A one-node m5.large VPC under `dir`.
async fn vpc(dir: &Path, seed: u64, timing: Timing) -> Vpcsim {
    let opts = Options {
        nodes: 1,
        instance_type: "m5.large".into(),
        state_dir: dir.join("vpc"),
        timing,
        seed,
        imds_v1: false,
        zone: None,
    };
    Vpcsim::start(opts).await.expect("vpcsim")
}

/// (ENIs attached to the instance with their address counts, ENIs `available` in the VPC).
fn ec2_view(sim: &Vpcsim, instance: &str) -> (Vec<usize>, usize) {
    let s = sim.shared.sim();
    let mine = s
        .enis
        .values()
        .filter(|e| e.attached_to(instance))
        .map(|e| e.private_ips.len())
        .collect();
    let available = s.enis.values().filter(|e| e.attachment.is_none()).count();
    (mine, available)
}

async fn wait_for(what: &str, log: &Path, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; ipamd log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m5_large_defaults_fill_to_27_pods_then_fail_fast_and_shrink_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = vpc(dir.path(), 11, quick()).await;
    let node = sim.info.nodes[0].clone();
    // The pool cannot fill at first: STATUS must say not ready (upstream #330) until it has.
    let admin = e2e::client::Admin::new(&sim.info.admin_url);
    admin
        .set_fault(
            "AssignPrivateIpAddresses",
            e2e::api::Fault {
                error_rate: 1.0,
                error_code: "InternalError".into(),
                latency_ms: 0,
            },
        )
        .await
        .expect("faults");
    let ipamd = Ipamd::start(
        &node,
        dir.path(),
        &[
            ("IP_COOLDOWN_PERIOD", "1"),
            ("NODEWIRE_MIN_ENI_LIFETIME_SECONDS", "0"),
            ("NODEWIRE_DECREASE_INTERVAL_SECONDS", "0"),
            ("NODEWIRE_ADD_WAIT_MS", "10000"),
        ],
    );
    let mut c = ipamd.client().await;
    let st = c
        .status(StatusRequest {
            client_version: IPAM_PROTOCOL_VERSION,
        })
        .await
        .expect("status")
        .into_inner();
    assert!(
        !st.ready && st.reason.contains("growing"),
        "an empty pool is not ready: {st:?}"
    );
    admin.clear_faults().await.expect("clear faults");

    // WARM_ENI_TARGET=1 on a fresh node: the primary ENI filled with 9 secondary IPs, no other ENI.
    wait_for("the warm pool", &ipamd.log, || {
        ec2_view(&sim, &node.instance_id) == (vec![10], 0)
    })
    .await;
    let st = c
        .status(StatusRequest {
            client_version: IPAM_PROTOCOL_VERSION,
        })
        .await
        .expect("status")
        .into_inner();
    assert!(st.ready, "{st:?}");

    // Once it has served, an empty pool that is growing stays ready (ADDs wait): the second ENI
    // is slow to come, and the primary's 9 addresses are taken meanwhile.
    admin
        .set_fault(
            "CreateNetworkInterface",
            e2e::api::Fault {
                error_rate: 0.0,
                error_code: String::new(),
                latency_ms: 2000,
            },
        )
        .await
        .expect("faults");
    let mut ips = BTreeSet::new();
    for n in 0..9 {
        let r = c.add(add(n)).await.expect("add").into_inner();
        ips.insert(r.ipv4);
    }
    let st = c
        .status(StatusRequest {
            client_version: IPAM_PROTOCOL_VERSION,
        })
        .await
        .expect("status")
        .into_inner();
    assert!(
        st.ready && st.reason.contains("growing"),
        "a busy node stays ready: {st:?}"
    );
    admin.clear_faults().await.expect("clear faults");

    // 27 pods fit (3 ENIs × 9), packed, all distinct.
    for n in 0..27 {
        let r = c
            .add(add(n))
            .await
            .unwrap_or_else(|e| panic!("add {n}: {e}"))
            .into_inner();
        // The first 9 were added above: a repeated ADD answers the same address.
        assert!(
            ips.insert(r.ipv4.clone()) == (n >= 9),
            "{} handed out twice",
            r.ipv4
        );
        assert_eq!(
            (r.route_table, r.device_number),
            if n < 9 {
                (254, 0)
            } else {
                (r.device_number + 1, r.device_number)
            }
        );
        assert_eq!(r.mtu, 9001);
    }
    // Host networking of the two secondary ENIs, exactly once each.
    let enis: Vec<(u32, String)> = {
        let s = sim.shared.sim();
        s.enis
            .values()
            .filter_map(|e| {
                let a = e.attachment.as_ref()?;
                (a.instance_id == node.instance_id && a.device_index > 0)
                    .then(|| (a.device_index, e.primary_ip().to_string()))
            })
            .collect()
    };
    let ip = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["-n", &node.netns])
            .args(args)
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let rules = ip(&["-4", "rule"]);
    let main = ip(&["-4", "route", "show", "table", "main"]);
    for (dev, eni_ip) in &enis {
        let table = dev + 1;
        let rule = format!("32765:\tfrom {eni_ip} lookup {table}");
        assert_eq!(rules.matches(&rule).count(), 1, "{rule:?} in\n{rules}");
        let routes = ip(&["-4", "route", "show", "table", &table.to_string()]);
        assert!(
            routes.contains(&format!("default via 10.90.0.1 dev eth{dev}")),
            "{routes}"
        );
        assert!(
            routes
                .lines()
                .any(|l| l.starts_with(&format!("10.90.0.1 dev eth{dev} "))
                    && l.contains("scope link")),
            "{routes}"
        );
        assert!(
            !main.contains(&format!("dev eth{dev}")),
            "subnet route left in main:\n{main}"
        );
        let addr = ip(&["-4", "-br", "addr", "show", &format!("eth{dev}")]);
        assert!(
            addr.contains(&format!("{eni_ip}/20")) && addr.contains("UP"),
            "{addr}"
        );
        let link = ip(&["link", "show", &format!("eth{dev}")]);
        assert!(link.contains("mtu 9001"), "{link}");
    }
    assert_eq!(enis.len(), 2);

    let again = c.add(add(3)).await.expect("repeated ADD").into_inner();
    assert!(
        ips.contains(&again.ipv4),
        "a repeated ADD returns the same address"
    );
    assert_eq!(ec2_view(&sim, &node.instance_id), (vec![10, 10, 10], 0));

    // Metrics (upstream names) and introspection, from inside the node.
    let http = |url: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &node.netns, "curl", "-sf", url])
            .output()
            .expect("curl");
        assert!(out.status.success(), "GET {url} failed");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let m = http("http://127.0.0.1:61678/metrics");
    for line in [
        "awscni_assigned_ip_addresses 27",
        "awscni_total_ip_addresses 27",
        "awscni_eni_allocated 3",
        "awscni_eni_max 3",
        "awscni_ip_max 27",
    ] {
        assert!(m.lines().any(|l| l == line), "{line:?} missing from\n{m}");
    }
    assert!(
        m.contains("awscni_ec2api_req_count{fn=\"CreateNetworkInterface\"} 2"),
        "{m}"
    );
    let pods: serde_json::Value =
        serde_json::from_str(&http("http://127.0.0.1:61679/v1/pods")).expect("json");
    assert_eq!(pods.as_array().map(Vec::len), Some(27));
    let enis = http("http://127.0.0.1:61679/v1/enis");
    assert!(!enis.contains("sandbox-"), "container ids never shown");
    assert!(enis.contains("default/pod-0"));

    // The 28th fails at once, naming the limit.
    let t = Instant::now();
    let err = c.add(add(27)).await.expect_err("no room");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("3 ENIs of m5.large"),
        "{}",
        err.message()
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "failed fast: {:?}",
        t.elapsed()
    );
    let st = c
        .status(StatusRequest {
            client_version: IPAM_PROTOCOL_VERSION,
        })
        .await
        .expect("status")
        .into_inner();
    assert!(!st.ready && st.reason.contains("m5.large"), "{st:?}");

    // A client speaking another protocol version is refused.
    let mut old = add(99);
    old.client_version = 0;
    assert_eq!(
        c.add(old).await.expect_err("version").code(),
        tonic::Code::FailedPrecondition
    );

    // Release everything: after the cooldown the surplus ENIs go back to EC2, none left available.
    for n in 0..27 {
        let r = c
            .del(DelRequest {
                key: Some(key(n)),
                client_version: IPAM_PROTOCOL_VERSION,
                ..Default::default()
            })
            .await
            .expect("del")
            .into_inner();
        assert!(!r.ipv4.is_empty());
    }
    let r = c
        .del(DelRequest {
            key: Some(key(0)),
            client_version: IPAM_PROTOCOL_VERSION,
            ..Default::default()
        })
        .await
        .expect("second DEL");
    assert!(
        r.into_inner().ipv4.is_empty(),
        "unknown key is not an error"
    );
    wait_for("the pool to shrink to one warm ENI", &ipamd.log, || {
        ec2_view(&sim, &node.instance_id) == (vec![10], 0)
    })
    .await;

    // The checkpoint on disk is the upstream-compatible shape.
    let cp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("ipam.json")).expect("checkpoint"))
            .expect("json");
    assert_eq!(cp["version"], "nodewire-ipam/1");
    assert_eq!(cp["allocations"].as_array().map(Vec::len), Some(0));
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_nothing_and_keeps_cooldowns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = vpc(dir.path(), 12, quick()).await;
    let node = sim.info.nodes[0].clone();
    let env = [("NODEWIRE_ADD_WAIT_MS", "10000")];
    let mut ipamd = Ipamd::start(&node, dir.path(), &env);
    let mut c = ipamd.client().await;
    let mut held = std::collections::BTreeMap::new();
    for n in 0..12 {
        held.insert(n, c.add(add(n)).await.expect("add").into_inner().ipv4);
    }
    let mut released = BTreeSet::new();
    for n in 0..4 {
        c.del(DelRequest {
            key: Some(key(n)),
            client_version: IPAM_PROTOCOL_VERSION,
            ..Default::default()
        })
        .await
        .expect("del");
        released.insert(held.remove(&n).expect("held"));
    }
    // A burst of concurrent ADDs; kill -9 once some have been answered.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for n in 12..24 {
        let mut c = c.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let r = c.add(add(n)).await.map(|r| r.into_inner().ipv4);
            let _ = tx.send((n, r));
        });
    }
    drop(tx);
    for _ in 0..3 {
        let (n, r) = rx.recv().await.expect("an answer");
        held.insert(n, r.expect("answered before the kill"));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ipamd.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    ipamd.child.wait().expect("reaped");
    while let Some((n, r)) = rx.recv().await {
        if let Ok(ip) = r {
            held.insert(n, ip);
        }
    }
    drop(ipamd);

    // The pods' host veths (vpc-cni's): every held pod has one, except pod 4, deleted while
    // ipamd was down — its leftover host rules must go and its address must cool down.
    let sh = |args: &[&str]| {
        let st = Command::new("ip")
            .args(["-n", &node.netns])
            .args(args)
            .status()
            .expect("ip");
        assert!(st.success(), "ip {args:?}");
    };
    for n in held.keys().filter(|n| **n != 4) {
        sh(&[
            "link",
            "add",
            &format!("eni{n:011}"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("pod{n}"),
        ]);
    }
    let gone_ip = held.remove(&4).expect("pod 4 held");
    let kept_ip = held[&5].clone();
    for ip in [&gone_ip, &kept_ip] {
        sh(&["rule", "add", "to", ip, "lookup", "main", "priority", "512"]);
        sh(&["rule", "add", "from", ip, "lookup", "2", "priority", "1536"]);
    }
    released.insert(gone_ip.clone());
    // Pod 6's address is unassigned behind ipamd's back while it is down: its allocation is
    // dropped on restart and its rules pruned, although its veth is still there.
    let lost_ip = held.remove(&6).expect("pod 6 held");
    let lost_eni = {
        let s = sim.shared.sim();
        s.enis
            .values()
            .find(|e| {
                e.attached_to(&node.instance_id)
                    && e.private_ips.iter().any(|i| i.to_string() == lost_ip)
            })
            .map(|e| e.id.clone())
            .expect("the ENI holding pod 6's address")
    };
    nodewire_aws::ec2::client_for_endpoint(&sim.info.ec2_endpoint_local, "us-east-1", 1)
        .unassign_private_ip_addresses()
        .network_interface_id(&lost_eni)
        .private_ip_addresses(&lost_ip)
        .send()
        .await
        .expect("unassign behind its back");
    sh(&[
        "rule", "add", "to", &lost_ip, "lookup", "main", "priority", "512",
    ]);

    let ipamd = Ipamd::start(&node, dir.path(), &env);
    let mut c = ipamd.client().await;
    // The socket is bound before the restart work; an answered call means the work is done.
    c.status(StatusRequest {
        client_version: IPAM_PROTOCOL_VERSION,
    })
    .await
    .expect("status");
    let rules = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-n", &node.netns, "rule"])
            .output()
            .expect("ip rule")
            .stdout,
    )
    .to_string();
    assert!(
        !rules.contains(&format!("{gone_ip} ")) && !rules.contains(&format!("{gone_ip}\n")),
        "gone pod's rules pruned:\n{rules}\nipamd log:\n{}",
        std::fs::read_to_string(&ipamd.log).unwrap_or_default()
    );
    assert!(
        !rules.contains(&format!("{lost_ip} ")) && !rules.contains(&format!("{lost_ip}\n")),
        "rules of an address no longer on the node pruned:\n{rules}"
    );
    let secondary = sim
        .shared
        .sim()
        .enis
        .values()
        .filter(|e| {
            e.attachment
                .as_ref()
                .is_some_and(|a| a.instance_id == node.instance_id && a.device_index > 0)
        })
        .count();
    assert_eq!(
        rules.matches("32765:").count(),
        secondary,
        "one ENI rule per secondary ENI after the restart:\n{rules}"
    );
    assert_eq!(
        rules.matches(&format!(" {kept_ip} ")).count(),
        2,
        "living pod's rules kept:\n{rules}"
    );
    // Every acknowledged allocation of a living pod survived with its address.
    for (n, ip) in &held {
        let r = c.add(add(*n)).await.expect("re-ADD").into_inner();
        assert_eq!(&r.ipv4, ip, "pod {n} kept its address");
    }
    // The runtime's GC releases anything persisted whose reply was lost in the kill.
    let valid: Vec<AttachmentKey> = held.keys().map(|n| key(*n)).collect();
    c.gc(GcRequest {
        network_name: "aws-cni".into(),
        valid,
        client_version: IPAM_PROTOCOL_VERSION,
    })
    .await
    .expect("gc");
    // Released addresses are still cooling: new pods never get them; nothing is handed out twice.
    let mut all: BTreeSet<String> = held.values().cloned().collect();
    assert_eq!(all.len(), held.len(), "no duplicates before the restart");
    let mut n = 100;
    let err = loop {
        match c.add(add(n)).await {
            Ok(r) => {
                let ip = r.into_inner().ipv4;
                assert!(!released.contains(&ip), "{ip} reused inside its cooldown");
                assert!(all.insert(ip.clone()), "{ip} handed out twice");
                n += 1;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("in cooldown"), "{}", err.message());
    assert!(
        !err.message().contains(" 0 in cooldown"),
        "the cooldowns survived the restart: {}",
        err.message()
    );
    // Every address ipamd hands out is one EC2 has on this node.
    let on_node: BTreeSet<String> = {
        let s = sim.shared.sim();
        s.enis
            .values()
            .filter(|e| e.attached_to(&node.instance_id))
            .flat_map(|e| e.private_ips.iter().map(|i| i.to_string()))
            .collect()
    };
    assert!(all.is_subset(&on_node), "ipamd's view matches EC2");
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}

/// (secondary IPs, prefixes) per attached ENI of the instance, by device index.
fn addresses(sim: &Vpcsim, instance: &str) -> Vec<(usize, usize)> {
    let s = sim.shared.sim();
    let mut v: Vec<(u32, usize, usize)> = s
        .enis
        .values()
        .filter_map(|e| {
            let a = e.attachment.as_ref()?;
            (a.instance_id == instance)
                .then(|| (a.device_index, e.private_ips.len() - 1, e.prefixes.len()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, i, p)| (i, p)).collect()
}

async fn start_with(
    env: &[(&str, &str)],
    seed: u64,
) -> (
    Vpcsim,
    harness::Ipamd,
    IpamClient<Channel>,
    NodeInfo,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = vpc(dir.path(), seed, quick()).await;
    let node = sim.info.nodes[0].clone();
    let ipamd = Ipamd::start(&node, dir.path(), env);
    let c = ipamd.client().await;
    (sim, ipamd, c, node, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_delegation_serves_110_pods_from_7_prefixes_and_returns_the_surplus() {
    let env = [
        ("ENABLE_PREFIX_DELEGATION", "true"),
        ("WARM_PREFIX_TARGET", "1"),
        ("IP_COOLDOWN_PERIOD", "1"),
        ("NODEWIRE_DECREASE_INTERVAL_SECONDS", "0"),
        ("NODEWIRE_ADD_WAIT_MS", "10000"),
    ];
    let (sim, ipamd, mut c, node, _dir) = start_with(&env, 21).await;
    wait_for("one warm prefix", &ipamd.log, || {
        addresses(&sim, &node.instance_id) == vec![(0, 1)]
    })
    .await;
    let mut ips = BTreeSet::new();
    for n in 0..110 {
        let r = c
            .add(add(n))
            .await
            .unwrap_or_else(|e| panic!("add {n}: {e}"))
            .into_inner();
        assert!(r.from_prefix);
        assert!(ips.insert(r.ipv4.clone()), "{} twice", r.ipv4);
    }
    // 110 addresses need 7 /28s (112); with max pods reached no eighth is taken.
    wait_for("7 prefixes", &ipamd.log, || {
        addresses(&sim, &node.instance_id) == vec![(0, 7)]
    })
    .await;
    let prefixes: Vec<ipnet::Ipv4Net> = {
        let s = sim.shared.sim();
        s.enis
            .values()
            .filter(|e| e.attached_to(&node.instance_id))
            .flat_map(|e| e.prefixes.clone())
            .collect()
    };
    for ip in &ips {
        let ip: std::net::Ipv4Addr = ip.parse().expect("ip");
        assert!(
            prefixes.iter().any(|p| p.contains(&ip)),
            "{ip} inside an assigned prefix"
        );
    }
    for n in 0..110 {
        c.del(DelRequest {
            key: Some(key(n)),
            client_version: IPAM_PROTOCOL_VERSION,
            ..Default::default()
        })
        .await
        .expect("del");
    }
    wait_for("back to one warm prefix", &ipamd.log, || {
        addresses(&sim, &node.instance_id) == vec![(0, 1)]
    })
    .await;
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_ip_and_minimum_ip_targets_settle_at_their_formulas() {
    let env = [
        ("WARM_IP_TARGET", "5"),
        ("MINIMUM_IP_TARGET", "10"),
        ("IP_COOLDOWN_PERIOD", "1"),
        ("NODEWIRE_DECREASE_INTERVAL_SECONDS", "0"),
        ("NODEWIRE_MIN_ENI_LIFETIME_SECONDS", "0"),
    ];
    let (sim, ipamd, mut c, node, _dir) = start_with(&env, 22).await;
    let total = |sim: &Vpcsim| {
        addresses(sim, &node.instance_id)
            .iter()
            .map(|(i, _)| i)
            .sum::<usize>()
    };
    // MINIMUM_IP_TARGET=10: 9 on the primary ENI and one on a second ENI.
    wait_for("10 IPs", &ipamd.log, || {
        addresses(&sim, &node.instance_id) == vec![(9, 0), (1, 0)]
    })
    .await;
    for n in 0..8 {
        c.add(add(n)).await.expect("add");
    }
    // 8 assigned + WARM_IP_TARGET 5 = 13.
    wait_for("13 IPs", &ipamd.log, || total(&sim) == 13).await;
    for n in 0..8 {
        c.del(DelRequest {
            key: Some(key(n)),
            client_version: IPAM_PROTOCOL_VERSION,
            ..Default::default()
        })
        .await
        .expect("del");
    }
    // Back to the minimum once the cooldown is over; the surplus goes back to EC2.
    wait_for("back to 10 IPs", &ipamd.log, || total(&sim) == 10).await;
    assert_eq!(
        sim.shared
            .sim()
            .enis
            .values()
            .filter(|e| e.attachment.is_none())
            .count(),
        0,
        "no available ENI left"
    );
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_eni_sweep_deletes_only_our_old_available_enis() {
    let env = [("NODEWIRE_LEAK_SWEEP_INTERVAL_SECONDS", "1")];
    let (sim, ipamd, _c, node, _dir) = start_with(&env, 31).await;
    wait_for("the warm pool", &ipamd.log, || {
        ec2_view(&sim, &node.instance_id) == (vec![10], 0)
    })
    .await;
    let ec2 = nodewire_aws::ec2::client_for_endpoint(&sim.info.ec2_endpoint_local, "us-east-1", 1);
    let make = |instance: &str, created: &str| {
        let spec = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::NetworkInterface)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("node.k8s.amazonaws.com/instance_id")
                    .value(instance)
                    .build(),
            )
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("node.k8s.amazonaws.com/createdAt")
                    .value(created)
                    .build(),
            )
            .build();
        ec2.create_network_interface()
            .subnet_id(&node.subnet_id)
            .description(format!("aws-K8S-{instance}"))
            .tag_specifications(spec)
            .send()
    };
    let now = nodewire_aws::time::format(std::time::SystemTime::now(), false);
    let id = |r: aws_sdk_ec2::operation::create_network_interface::CreateNetworkInterfaceOutput| {
        r.network_interface()
            .and_then(|e| e.network_interface_id())
            .expect("id")
            .to_string()
    };
    let old = id(make(&node.instance_id, "2020-01-01T00:00:00Z")
        .await
        .expect("old"));
    let young = id(make(&node.instance_id, &now).await.expect("young"));
    let foreign = id(make("i-0123456789abcdef0", "2020-01-01T00:00:00Z")
        .await
        .expect("foreign"));
    wait_for("the old leaked ENI to go", &ipamd.log, || {
        !sim.shared.sim().enis.contains_key(&old)
    })
    .await;
    {
        let s = sim.shared.sim();
        assert!(s.enis.contains_key(&young), "young ENI kept (grace period)");
        assert!(s.enis.contains_key(&foreign), "another node's ENI kept");
    }
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_subnet_fails_fast_naming_it_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = vpc(
        dir.path(),
        41,
        Timing {
            attach_ms: 20,
            detach_ms: 20,
            create_ms: 20,
            modify_ms: 20,
            snapshot_ms: 20,
            imds_lag_ms: 50,
        },
    )
    .await;
    let node = sim.info.nodes[0].clone();
    // Another tenant takes every address of the subnet.
    let ec2 = nodewire_aws::ec2::client_for_endpoint(&sim.info.ec2_endpoint_local, "us-east-1", 1);
    let mut hogs = Vec::new();
    loop {
        let free = sim
            .shared
            .sim()
            .subnet(&node.subnet_id)
            .expect("subnet")
            .available() as i32;
        if free == 0 {
            break;
        }
        let r = ec2
            .create_network_interface()
            .subnet_id(&node.subnet_id)
            .secondary_private_ip_address_count((free - 1).min(49))
            .send()
            .await
            .expect("hog");
        hogs.push(
            r.network_interface()
                .and_then(|e| e.network_interface_id())
                .expect("id")
                .to_string(),
        );
    }
    let env = [
        ("NODEWIRE_SUBNET_BACKOFF_SECONDS", "1"),
        ("NODEWIRE_ADD_WAIT_MS", "10000"),
    ];
    let ipamd = Ipamd::start(&node, dir.path(), &env);
    let mut c = ipamd.client().await;
    wait_for("ipamd to hit the exhausted subnet", &ipamd.log, || {
        std::fs::read_to_string(&ipamd.log)
            .unwrap_or_default()
            .contains("InsufficientFreeAddressesInSubnet")
    })
    .await;
    let t = Instant::now();
    let err = c.add(add(0)).await.expect_err("no addresses anywhere");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains(&node.subnet_id), "{}", err.message());
    assert!(t.elapsed() < Duration::from_secs(1));
    // Addresses free up: the pool recovers by itself and the ADD succeeds.
    for h in hogs.drain(..) {
        ec2.delete_network_interface()
            .network_interface_id(h)
            .send()
            .await
            .expect("free");
    }
    wait_for("the pool to recover", &ipamd.log, || {
        ec2_view(&sim, &node.instance_id).0.first() == Some(&10)
    })
    .await;
    c.add(add(0)).await.expect("recovered");
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reaches_its_target_with_throttling_and_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = vpc(dir.path(), 51, quick()).await;
    let node = sim.info.nodes[0].clone();
    let admin = e2e::client::Admin::new(&sim.info.admin_url);
    admin
        .set_fault(
            "*",
            e2e::api::Fault {
                error_rate: 0.2,
                error_code: "RequestLimitExceeded".into(),
                latency_ms: 200,
            },
        )
        .await
        .expect("faults");
    let env = [
        ("WARM_IP_TARGET", "12"),
        ("NODEWIRE_SUBNET_BACKOFF_SECONDS", "1"),
        ("NODEWIRE_ADD_WAIT_MS", "20000"),
    ];
    let ipamd = Ipamd::start(&node, dir.path(), &env);
    let mut c = ipamd.client().await;
    // WARM_IP_TARGET=12: 9 on the primary ENI, 3 on a second.
    wait_for("the warm target under faults", &ipamd.log, || {
        addresses(&sim, &node.instance_id)
            .iter()
            .map(|(i, _)| i)
            .sum::<usize>()
            == 12
    })
    .await;
    for n in 0..3 {
        c.add(add(n)).await.expect("add under faults");
    }
    let stats = admin.stats().await.expect("stats");
    assert!(
        stats.actions.values().map(|a| a.injected).sum::<u64>() > 0,
        "faults were injected: {stats:?}"
    );
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_behind_ipamds_back_are_picked_up_from_ec2() {
    let env = [
        ("NODEWIRE_EC2_SYNC_INTERVAL_SECONDS", "1"),
        ("NODEWIRE_EC2_SYNC_GRACE_SECONDS", "0"),
    ];
    let (sim, ipamd, _c, node, _dir) = start_with(&env, 61).await;
    wait_for("the warm pool", &ipamd.log, || {
        ec2_view(&sim, &node.instance_id) == (vec![10], 0)
    })
    .await;
    let ec2 = nodewire_aws::ec2::client_for_endpoint(&sim.info.ec2_endpoint_local, "us-east-1", 1);
    // Someone unassigns two of the pool's addresses: ipamd drops them and grows back.
    let taken: Vec<String> = {
        let s = sim.shared.sim();
        s.enis[&node.eni_id].private_ips[1..3]
            .iter()
            .map(|i| i.to_string())
            .collect()
    };
    ec2.unassign_private_ip_addresses()
        .network_interface_id(&node.eni_id)
        .set_private_ip_addresses(Some(taken.clone()))
        .send()
        .await
        .expect("unassign behind its back");
    wait_for("ipamd to notice and refill", &ipamd.log, || {
        ec2_view(&sim, &node.instance_id) == (vec![10], 0)
    })
    .await;
    // Someone attaches an ENI tagged for this node: ipamd adopts it and routes it.
    let eni = ec2
        .create_network_interface()
        .subnet_id(&node.subnet_id)
        .secondary_private_ip_address_count(2)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::NetworkInterface)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("node.k8s.amazonaws.com/instance_id")
                        .value(&node.instance_id)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("create");
    let eni = eni.network_interface().expect("eni");
    let eni_ip = eni.private_ip_address().expect("ip").to_string();
    ec2.attach_network_interface()
        .network_interface_id(eni.network_interface_id().expect("id"))
        .instance_id(&node.instance_id)
        .device_index(1)
        .send()
        .await
        .expect("attach");
    let rule = format!("32765:\tfrom {eni_ip} lookup 2");
    wait_for("the adopted ENI's rule", &ipamd.log, || {
        let out = Command::new("ip")
            .args(["-n", &node.netns, "rule"])
            .output()
            .expect("ip rule");
        String::from_utf8_lossy(&out.stdout).contains(&rule)
    })
    .await;
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}

/// Security-group ids of every ENI attached to `instance`, by device index.
fn groups_by_device(sim: &Vpcsim, instance: &str) -> Vec<(u32, Vec<String>)> {
    let s = sim.shared.sim();
    let mut v: Vec<(u32, Vec<String>)> = s
        .enis
        .values()
        .filter_map(|e| {
            let a = e.attachment.as_ref()?;
            let mut g = e.groups.clone();
            g.sort();
            (a.instance_id == instance).then_some((a.device_index, g))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_enis_follow_the_primary_enis_security_groups() {
    let env = [("NODEWIRE_EC2_SYNC_INTERVAL_SECONDS", "1")];
    let (sim, ipamd, mut c, node, _dir) = start_with(&env, 67).await;
    wait_for("the warm pool", &ipamd.log, || {
        ec2_view(&sim, &node.instance_id) == (vec![10], 0)
    })
    .await;
    // Five pods: 4 addresses left on the primary ENI, fewer than WARM_ENI_TARGET=1 wants, so the
    // pool grows onto a second ENI (created with the node's default group) and stops there.
    for n in 0..5 {
        c.add(add(n)).await.expect("add");
    }
    wait_for("a second ENI", &ipamd.log, || {
        groups_by_device(&sim, &node.instance_id).len() == 2
    })
    .await;
    let default = sim.shared.sim().default_security_group();
    assert_eq!(
        groups_by_device(&sim, &node.instance_id),
        vec![(0, vec![default.clone()]), (1, vec![default.clone()])]
    );
    // The operator adds a group to the node (its primary ENI), as EKS does for a new rule set.
    let ec2 = nodewire_aws::ec2::client_for_endpoint(&sim.info.ec2_endpoint_local, "us-east-1", 1);
    let sg = ec2
        .create_security_group()
        .group_name("pods-extra")
        .description("extra rules for the node")
        .vpc_id(&sim.info.vpc_id)
        .send()
        .await
        .expect("CreateSecurityGroup")
        .group_id()
        .expect("group id")
        .to_string();
    ec2.modify_network_interface_attribute()
        .network_interface_id(&node.eni_id)
        .groups(&default)
        .groups(&sg)
        .send()
        .await
        .expect("ModifyNetworkInterfaceAttribute");
    let mut both = vec![default.clone(), sg.clone()];
    both.sort();
    // ipamd's next EC2 sync brings the secondary ENI into line…
    wait_for("the secondary ENI's groups", &ipamd.log, || {
        groups_by_device(&sim, &node.instance_id)
            .iter()
            .all(|(_, g)| *g == both)
    })
    .await;
    // …and ENIs created from then on get the new groups at creation: 11 pods leave 7 free, so
    // a third ENI comes.
    for n in 5..11 {
        c.add(add(n)).await.expect("add");
    }
    // Attached, and ipamd done with it (its DeleteOnTermination call is made after the attach).
    wait_for("a third ENI", &ipamd.log, || {
        std::fs::read_to_string(&ipamd.log)
            .unwrap_or_default()
            .matches("ENI attached")
            .count()
            == 2
    })
    .await;
    assert_eq!(groups_by_device(&sim, &node.instance_id).len(), 3);
    assert!(
        groups_by_device(&sim, &node.instance_id)
            .iter()
            .all(|(_, g)| *g == both),
        "{:?}",
        groups_by_device(&sim, &node.instance_id)
    );
    // One ModifyNetworkInterfaceAttribute per ENI created (DeleteOnTermination) plus one sync of
    // the second ENI: the third was created with the new groups, not fixed up afterwards.
    let stats = e2e::client::Admin::new(&sim.info.admin_url)
        .stats()
        .await
        .expect("stats");
    assert_eq!(
        stats.per_instance[&node.instance_id].get("ModifyNetworkInterfaceAttribute"),
        Some(&3),
        "{:?}\n{}",
        stats.per_instance[&node.instance_id],
        std::fs::read_to_string(&ipamd.log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&ipamd.log).unwrap_or_default();
    assert_eq!(
        log.matches("security groups synced to the primary ENI's")
            .count(),
        1,
        "{log}"
    );
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snat_and_connmark_rules_are_installed_once_and_survive_restarts() {
    let (sim, ipamd, mut c, node, dir) = start_with(&[], 71).await;
    c.status(StatusRequest {
        client_version: IPAM_PROTOCOL_VERSION,
    })
    .await
    .expect("ready");
    let ruleset = || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.netns,
                "nft",
                "-j",
                "list",
                "table",
                "ip",
                "nodewire",
            ])
            .output()
            .expect("nft");
        assert!(
            out.status.success(),
            "nft list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let rules: Vec<serde_json::Value> = v["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|o| o.get("rule").cloned())
            .collect();
        rules
    };
    let fwmark_rules = || {
        let out = Command::new("ip")
            .args(["-n", &node.netns, "rule"])
            .output()
            .expect("ip rule");
        String::from_utf8_lossy(&out.stdout)
            .matches("1024:\tfrom all fwmark 0x80/0x80 lookup main")
            .count()
    };
    let first = ruleset();
    let text = serde_json::to_string(&first).expect("json");
    assert!(
        text.contains(&format!("\"addr\":\"{}\"", node.primary_ip)),
        "SNAT to the node's primary IP: {text}"
    );
    assert!(text.contains("fully-random"), "{text}");
    assert!(
        text.contains("\"10.90.0.0\""),
        "the VPC CIDR is exempt: {text}"
    );
    assert_eq!(first.iter().filter(|r| r["chain"] == "snat").count(), 3);
    assert_eq!(fwmark_rules(), 1);
    let sysctl = |k: &str| {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.netns,
                "cat",
                &format!("/proc/sys/net/ipv4/{k}"),
            ])
            .output()
            .expect("cat");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        (sysctl("conf/eth0/rp_filter"), sysctl("ip_forward")),
        ("2".to_string(), "1".to_string())
    );
    drop(ipamd);
    let ipamd = Ipamd::start(&node, dir.path(), &[]);
    let mut c = ipamd.client().await;
    c.status(StatusRequest {
        client_version: IPAM_PROTOCOL_VERSION,
    })
    .await
    .expect("ready again");
    assert_eq!(ruleset().len(), first.len(), "replaced, not duplicated");
    assert_eq!(fwmark_rules(), 1, "one fwmark rule after a restart");
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
}

/// The DaemonSet's helpers: `ipamd --host-setup` (the privileged init container) sets the
/// sysctls so ipamd need not, and `ipamd --probe` (liveness/readiness) answers from the health
/// service over the socket — 0 while ipamd serves, non-zero once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_setup_and_the_health_probe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = vpc(dir.path(), 31, quick()).await;
    let node = sim.info.nodes[0].clone();
    let in_node = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .args(args)
            .env(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                "http://169.254.169.254",
            )
            .env("NODEWIRE_IPAMD_SOCKET", dir.path().join("ipamd.sock"))
            .output()
            .expect("run in node")
    };
    let sysctl = |k: &str| {
        String::from_utf8_lossy(&in_node(&["sysctl", "-n", k]).stdout)
            .trim()
            .to_string()
    };
    in_node(&[
        "sysctl",
        "-qw",
        "net.ipv4.conf.eth0.rp_filter=1",
        "net.ipv4.ip_forward=0",
    ]);
    let bin = env!("CARGO_BIN_EXE_ipamd");
    let out = in_node(&[bin, "--host-setup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sysctl("net.ipv4.conf.eth0.rp_filter"), "2");
    assert_eq!(sysctl("net.ipv4.ip_forward"), "1");

    let down = in_node(&[bin, "--probe"]);
    assert!(!down.status.success(), "no ipamd yet: the probe fails");
    let ipamd = Ipamd::start(&node, dir.path(), &[]);
    let _c = ipamd.client().await;
    let up = in_node(&[bin, "--probe"]);
    assert!(
        up.status.success() && String::from_utf8_lossy(&up.stdout).contains("SERVING"),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    drop(ipamd);
    assert!(
        !in_node(&[bin, "--probe"]).status.success(),
        "ipamd stopped"
    );
    sim.shutdown().await.expect("shutdown");
}
