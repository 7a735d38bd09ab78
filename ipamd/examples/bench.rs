//! `make bench-ipamd`: ipamd against vpcsim, measured in one run.
//!
//! * EC2 calls by action to fill a cold m5.large to 27 pods (defaults) and a prefix-delegation
//!   m5.large to 110 pods, and the time from ipamd's start to the last allocation;
//! * whether the ADD path calls EC2 (ADD latency with 300 ms of injected EC2 latency);
//! * ipamd's peak RSS holding 250 allocations (c5.18xlarge), of the build that ships (profile
//!   `ipamd`, size-optimised: its code pages are most of what is resident);
//! * datastore assign+release operations per second (in process).
//!
//! Upstream aws-node cannot run here (no Go toolchain, no EKS), so the comparison is against the
//! issue's targets, not a measured peer.

#[path = "../tests/harness/mod.rs"]
mod harness;

use e2e::node::{Options, Vpcsim};
use e2e::sim::Timing;
use harness::{Ipamd, add};
use ipamd::datastore::{CidrKind, Datastore, Eni, Key, PodMeta};
use nodewire_proto::IPAM_PROTOCOL_VERSION;
use nodewire_proto::ipam::StatusRequest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MUTATING: &[&str] = &[
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
];

/// The ipamd under test: BENCH_IPAMD_BIN (`make bench-ipamd` passes the shipped `ipamd`-profile
/// build), else the one next to this driver.
fn ipamd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BENCH_IPAMD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .join("ipamd")
}

async fn sim(instance_type: &str, dir: &Path, seed: u64) -> Vpcsim {
    let timing = Timing {
        attach_ms: 100,
        detach_ms: 100,
        create_ms: 50,
        modify_ms: 50,
        snapshot_ms: 50,
        imds_lag_ms: 100,
    };
    let opts = Options {
        nodes: 1,
        instance_type: instance_type.into(),
        state_dir: dir.join(format!("vpc-{seed}")),
        timing,
        seed,
        imds_v1: false,
        zone: None,
    };
    Vpcsim::start(opts).await.expect("vpcsim")
}

struct Fill {
    calls: BTreeMap<String, u64>,
    seconds: f64,
    enis: usize,
}

/// Starts ipamd on a cold node and allocates `pods`; returns EC2 calls and the time taken.
async fn fill(
    instance_type: &str,
    env: &[(&str, &str)],
    pods: usize,
    dir: &Path,
    seed: u64,
) -> Fill {
    let sim = sim(instance_type, dir, seed).await;
    let node = sim.info.nodes[0].clone();
    let work = dir.join(format!("ipamd-{seed}"));
    std::fs::create_dir_all(&work).expect("dir");
    let t0 = Instant::now();
    let ipamd = Ipamd::start_bin(&ipamd_bin(), &node, &work, env);
    let mut c = ipamd.client().await;
    for n in 0..pods {
        c.add(add(n))
            .await
            .unwrap_or_else(|e| panic!("add {n}: {e}"));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let stats = e2e::client::Admin::new(&sim.info.admin_url)
        .stats()
        .await
        .expect("stats");
    let calls = stats
        .per_instance
        .get(&node.instance_id)
        .cloned()
        .unwrap_or_default();
    let enis = sim
        .shared
        .sim()
        .enis
        .values()
        .filter(|e| e.attached_to(&node.instance_id))
        .count();
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
    Fill {
        calls,
        seconds,
        enis,
    }
}

fn print_calls(title: &str, f: &Fill) {
    println!(
        "\n{title}: {:.2} s from ipamd start to the last allocation, {} ENIs",
        f.seconds, f.enis
    );
    for (a, n) in &f.calls {
        println!("  {a:<34} {n:>4}");
    }
}

fn mutating_per_eni(f: &Fill) -> f64 {
    let eni_calls: u64 = [
        "CreateNetworkInterface",
        "AttachNetworkInterface",
        "ModifyNetworkInterfaceAttribute",
    ]
    .iter()
    .map(|a| f.calls.get(*a).copied().unwrap_or(0))
    .sum();
    let created = f
        .calls
        .get("CreateNetworkInterface")
        .copied()
        .unwrap_or(0)
        .max(1);
    eni_calls as f64 / created as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ADD latency with every EC2 call slowed by 300 ms: an ADD that called EC2 would take longer.
async fn add_path(dir: &Path) -> (f64, u64) {
    let sim = sim("m5.large", dir, 7).await;
    let node = sim.info.nodes[0].clone();
    let work = dir.join("ipamd-addpath");
    std::fs::create_dir_all(&work).expect("dir");
    // MINIMUM_IP_TARGET alone: the pool fills to 20 once and never tops up, so any EC2 call seen
    // during the ADDs would be the ADD path's own.
    let ipamd = Ipamd::start_bin(&ipamd_bin(), &node, &work, &[("MINIMUM_IP_TARGET", "20")]);
    let mut c = ipamd.client().await;
    // Warm means ipamd itself holds the 20 addresses (EC2 showing them is not enough: ipamd may
    // still be finishing the attach), so ask ipamd.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = c
            .status(StatusRequest {
                client_version: IPAM_PROTOCOL_VERSION,
            })
            .await
            .expect("status")
            .into_inner();
        if st.reason == "20 addresses free" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pool never warmed: {}",
            st.reason
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = e2e::client::Admin::new(&sim.info.admin_url);
    admin
        .set_fault(
            "*",
            e2e::api::Fault {
                error_rate: 0.0,
                error_code: "InternalError".into(),
                latency_ms: 300,
            },
        )
        .await
        .expect("latency");
    let before: u64 = admin
        .stats()
        .await
        .expect("stats")
        .per_instance
        .get(&node.instance_id)
        .map_or(0, |m| m.values().sum());
    let mut lat = Vec::new();
    for n in 0..10 {
        let t = Instant::now();
        c.add(add(n)).await.expect("warm add");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = c
        .status(StatusRequest {
            client_version: IPAM_PROTOCOL_VERSION,
        })
        .await;
    let after: u64 = admin
        .stats()
        .await
        .expect("stats")
        .per_instance
        .get(&node.instance_id)
        .map_or(0, |m| m.values().sum());
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
    (median(lat), after - before)
}

/// Peak RSS (VmHWM) of ipamd holding 250 allocations on a c5.18xlarge.
async fn rss(dir: &Path) -> u64 {
    let sim = sim("c5.18xlarge", dir, 9).await;
    let node = sim.info.nodes[0].clone();
    let work = dir.join("ipamd-rss");
    std::fs::create_dir_all(&work).expect("dir");
    let ipamd = Ipamd::start_bin(
        &ipamd_bin(),
        &node,
        &work,
        &[("NODEWIRE_ADD_WAIT_MS", "20000")],
    );
    let mut c = ipamd.client().await;
    for n in 0..250 {
        c.add(add(n))
            .await
            .unwrap_or_else(|e| panic!("add {n}: {e}"));
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", ipamd.child.id())).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    drop(ipamd);
    sim.shutdown().await.expect("shutdown");
    kib
}

/// Assign+release pairs per second on a full c5.18xlarge-sized datastore with 250 pods held.
fn datastore_ops() -> f64 {
    let mut ds = Datastore::new(false, 0);
    for dev in 0..15u32 {
        ds.add_eni(Eni {
            id: format!("eni-{dev}"),
            device_number: dev,
            primary: dev == 0,
            primary_ip: format!("10.1.{dev}.4").parse().expect("ip"),
            subnet_id: "s".into(),
            subnet_cidr: "10.1.0.0/16".parse().expect("net"),
            route_table: Eni::route_table_for(dev, dev == 0),
            created_ms: 0,
            cidrs: Default::default(),
        });
        let nets: Vec<ipnet::Ipv4Net> = (0..49)
            .map(|i| format!("10.1.{dev}.{}/32", 10 + i).parse().expect("net"))
            .collect();
        ds.add_cidrs(&format!("eni-{dev}"), &nets, CidrKind::Ip);
    }
    let meta = PodMeta::default();
    for n in 0..250 {
        ds.assign(&Key::new("aws-cni", &format!("held-{n}"), "eth0"), &meta, 0)
            .expect("assign");
    }
    let keys: Vec<Key> = (0..64)
        .map(|n| Key::new("aws-cni", &format!("churn-{n}"), "eth0"))
        .collect();
    let rounds = 20_000;
    let t = Instant::now();
    for r in 0..rounds {
        let k = &keys[r % keys.len()];
        ds.assign(k, &meta, r as u64).expect("assign");
        ds.release(k, r as u64);
    }
    rounds as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    println!("ipamd under test: {}", ipamd_bin().display());
    let cold = fill(
        "m5.large",
        &[("NODEWIRE_ADD_WAIT_MS", "20000")],
        27,
        dir.path(),
        1,
    )
    .await;
    print_calls("cold m5.large, defaults, 27 pods", &cold);
    let pd = fill(
        "m5.large",
        &[
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_PREFIX_TARGET", "1"),
            ("NODEWIRE_ADD_WAIT_MS", "20000"),
        ],
        110,
        dir.path(),
        2,
    )
    .await;
    print_calls("prefix delegation m5.large, 110 pods", &pd);
    let (add_ms, add_calls) = add_path(dir.path()).await;
    let rss_kib = rss(dir.path()).await;
    let ops = datastore_ops();

    let mpe = mutating_per_eni(&cold);
    let muts: u64 = MUTATING
        .iter()
        .map(|a| cold.calls.get(*a).copied().unwrap_or(0))
        .sum();
    println!(
        "\n{:<52} {:>12} {:>10} {:>4}",
        "measure", "value", "target", "ok"
    );
    let row = |m: &str, v: String, t: &str, ok: bool| {
        println!(
            "{m:<52} {v:>12} {t:>10} {:>4}",
            if ok { "yes" } else { "NO" }
        )
    };
    row(
        "EC2 calls made by 10 ADDs on a warm pool",
        add_calls.to_string(),
        "0",
        add_calls == 0,
    );
    row(
        "warm ADD median latency with 300 ms EC2 latency (ms)",
        format!("{add_ms:.1}"),
        "< 300",
        add_ms < 300.0,
    );
    row(
        "mutating EC2 calls per ENI (create+attach+modify)",
        format!("{mpe:.1}"),
        "<= 3",
        mpe <= 3.0,
    );
    row(
        "mutating EC2 calls, cold m5.large to 27 pods",
        muts.to_string(),
        "",
        true,
    );
    row(
        "seconds from start to 27 pods (m5.large)",
        format!("{:.2}", cold.seconds),
        "",
        true,
    );
    row(
        "seconds from start to 110 pods (PD m5.large)",
        format!("{:.2}", pd.seconds),
        "",
        true,
    );
    row(
        "ipamd peak RSS holding 250 allocations (MiB)",
        format!("{:.1}", rss_kib as f64 / 1024.0),
        "<= 15",
        rss_kib <= 15 * 1024,
    );
    row(
        "datastore assign+release pairs per second",
        format!("{ops:.0}"),
        "",
        true,
    );
    println!(
        "\n(no peer ratio: upstream aws-node cannot run on this machine; targets are the issue's)"
    );
}
