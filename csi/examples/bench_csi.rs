//! `make bench-csi`: ebs-csi against vpcsim (delays 0) and the raw tools, in one run.
//!
//! * NodeStage of a blank 10 GiB volume whose device is present (find + verify + blank check +
//!   mkfs.ext4 + mount) vs the same `mkfs.ext4` + `mount` run by hand on a 10 GiB loop device:
//!   medians and the ratio;
//! * EC2 calls per create → attach → detach → delete cycle, by action;
//! * CreateVolume → a pod's published mount, median, with vpcsim's delays at 0.
//!
//! `BENCH_CSI_BIN` picks the ebs-csi binary (default: the one next to this example's directory).

#[path = "../tests/harness/mod.rs"]
mod harness;

use e2e::node::{Options, Vpcsim};
use harness::*;
use nodewire_proto::csi::controller_client::ControllerClient;
use nodewire_proto::csi::node_client::NodeClient;
use nodewire_proto::csi::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const ROUNDS: usize = 15;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The peer: `mkfs.ext4` + `mount` by hand on a fresh 10 GiB loop device (ms).
fn raw_stage(dir: &Path, n: usize) -> f64 {
    let img = dir.join(format!("raw-{n}.img"));
    let mnt = dir.join(format!("raw-{n}"));
    std::fs::create_dir_all(&mnt).expect("mnt");
    let f = std::fs::File::create(&img).expect("img");
    f.set_len(10 << 30).expect("size");
    let dev = sh(&["losetup", "--find", "--show", &img.to_string_lossy()]);
    let t = Instant::now();
    sh(&["mkfs.ext4", "-q", "-F", &dev]);
    sh(&["mount", "-t", "ext4", &dev, &mnt.to_string_lossy()]);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    sh(&["umount", &mnt.to_string_lossy()]);
    sh(&["losetup", "-d", &dev]);
    let _ = std::fs::remove_file(&img);
    ms
}

fn ebs_csi_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BENCH_CSI_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("ebs-csi"))
        .expect("target dir");
    assert!(p.exists(), "{} missing: build ebs-csi first", p.display());
    p
}

async fn ec2_calls(admin: &e2e::client::Admin) -> BTreeMap<String, u64> {
    admin
        .stats()
        .await
        .expect("stats")
        .actions
        .into_iter()
        .map(|(k, v)| (k, v.calls))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = ebs_csi_bin();
    let dir = tempfile::tempdir().expect("tmp");
    let sim = Vpcsim::start(Options {
        nodes: 1,
        instance_type: "m5.large".into(),
        state_dir: dir.path().join("vpc"),
        timing: e2e::sim::Timing::zero(),
        seed: 9,
        imds_v1: false,
        zone: None,
    })
    .await
    .expect("vpcsim");
    let admin = e2e::client::Admin::new(&sim.info.admin_url);
    let node = sim.info.nodes[0].clone();
    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).expect("kubelet");
    let mounts = Mounts(kubelet.clone());
    let ctl_p = controller_with(&bin, &sim, dir.path(), "controller", &[]);
    let node_p = node_plugin(&bin, &node, dir.path(), &kubelet);
    let mut ctl = ControllerClient::new(ctl_p.channel().await);
    let mut nc = NodeClient::new(node_p.channel().await);
    println!("ebs-csi: {}", bin.display());

    let (mut ours, mut raw, mut to_mount) = (vec![], vec![], vec![]);
    let mut per_cycle: Vec<BTreeMap<String, u64>> = vec![];
    for n in 0..ROUNDS {
        // Alternate which goes first, so neither always meets a warm or cold page cache.
        if n % 2 == 1 {
            raw.push(raw_stage(dir.path(), n));
        }
        let before = ec2_calls(&admin).await;
        let t0 = Instant::now();
        let v = ctl
            .create_volume(create_req(&format!("bench-{n}"), 10, "ext4", &node.az))
            .await
            .expect("create")
            .into_inner()
            .volume
            .expect("volume");
        let pc = ctl
            .controller_publish_volume(ControllerPublishVolumeRequest {
                volume_id: v.volume_id.clone(),
                node_id: node.instance_id.clone(),
                volume_capability: Some(mount_cap("ext4")),
                ..Default::default()
            })
            .await
            .expect("publish")
            .into_inner()
            .publish_context;
        let staging = kubelet.join(format!("plugins/ebs/{n}/globalmount"));
        let target = kubelet.join(format!("pods/p{n}/volumes/v/mount"));
        // The peer's loop device exists before its clock starts; so must ours (vpcsim creates the
        // node's device link a moment after EC2 reports the attachment).
        let link = node.device_dir.join(format!(
            "disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
            v.volume_id.replace('-', "")
        ));
        while !link.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let ts = Instant::now();
        nc.node_stage_volume(NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            publish_context: pc.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(mount_cap("ext4")),
            volume_context: v.volume_context.clone(),
            ..Default::default()
        })
        .await
        .expect("stage");
        ours.push(ts.elapsed().as_secs_f64() * 1e3);
        nc.node_publish_volume(NodePublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            publish_context: pc,
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await
        .expect("node publish");
        to_mount.push(t0.elapsed().as_secs_f64() * 1e3);
        nc.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .expect("unpublish");
        nc.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .expect("unstage");
        ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            node_id: node.instance_id.clone(),
            ..Default::default()
        })
        .await
        .expect("controller unpublish");
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
        let after = ec2_calls(&admin).await;
        per_cycle.push(
            after
                .iter()
                .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        );
        if n % 2 == 0 {
            raw.push(raw_stage(dir.path(), n));
        }
    }
    drop(mounts);
    if std::env::var_os("BENCH_CSI_LOG").is_some() {
        let log = std::fs::read_to_string(&node_p.log).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("NodeStageVolume")) {
            println!("{l}");
        }
    }
    drop(node_p);
    drop(ctl_p);
    sim.shutdown().await.expect("shutdown");

    let (o, r) = (median(ours.clone()), median(raw.clone()));
    println!(
        "\n{ROUNDS} rounds, 10 GiB gp3, ext4, vpcsim delays 0 (ms; noisy machine: read the ratio)"
    );
    println!("| case | ebs-csi p50 | raw tools p50 | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| NodeStage (find, verify, blank check, mkfs.ext4, mount) vs mkfs.ext4 + mount | {o:.1} | {r:.1} | {:.2}× (target ≤ 1.1×) |",
        o / r
    );
    println!(
        "| CreateVolume → pod mount published | {:.1} | — | — |",
        median(to_mount)
    );
    let total: Vec<f64> = per_cycle
        .iter()
        .map(|m| m.values().sum::<u64>() as f64)
        .collect();
    println!(
        "\nEC2 calls per create → attach → detach → delete cycle: {} (median; by action, last cycle: {:?})",
        median(total),
        per_cycle.last().cloned().unwrap_or_default()
    );
}
