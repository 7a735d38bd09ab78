//! ebs-csi end to end against vpcsim: the real binary as controller (on the host, EC2 through
//! vpcsim's endpoint) and as the node plugin of each of two nodes (in the node's network
//! namespace for IMDS, the host's mount namespace for mounts), driven over their unix sockets
//! as the external-provisioner/attacher/resizer/snapshotter and kubelet would.

mod harness;
use harness::*;

use e2e::node::{NodeInfo, Options, Vpcsim};
use nodewire_proto::csi::controller_client::ControllerClient;
use nodewire_proto::csi::identity_client::IdentityClient;
use nodewire_proto::csi::node_client::NodeClient;
use nodewire_proto::csi::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ebs-csi"))
}

fn controller_with(sim: &Vpcsim, dir: &Path, name: &str, args: &[&str]) -> Plugin {
    harness::controller_with(bin(), sim, dir, name, args)
}

fn node_plugin(node: &NodeInfo, dir: &Path, kubelet: &Path) -> Plugin {
    harness::node_plugin(bin(), node, dir, kubelet)
}

fn controller(sim: &Vpcsim, dir: &Path) -> Plugin {
    controller_with(sim, dir, "controller", &["--ec2-wait-seconds", "30"])
}

struct World {
    ctl: ControllerClient<Channel>,
    nodes: Vec<(NodeInfo, NodeClient<Channel>)>,
    kubelet: PathBuf,
}

impl World {
    fn staging(&self, vol: &str) -> String {
        self.kubelet
            .join(format!("plugins/kubernetes.io/csi/ebs/{vol}/globalmount"))
            .display()
            .to_string()
    }
    fn target(&self, vol: &str, pod: &str) -> String {
        self.kubelet
            .join(format!("pods/{pod}/volumes/kubernetes.io~csi/{vol}/mount"))
            .display()
            .to_string()
    }

    /// ControllerPublish + NodeStage + NodePublish on node `n`: the pod's path.
    async fn attach(
        &mut self,
        vol: &str,
        n: usize,
        fs: &str,
        ctx: &HashMap<String, String>,
    ) -> String {
        let node_id = self.nodes[n].0.instance_id.clone();
        let pc = self
            .ctl
            .controller_publish_volume(ControllerPublishVolumeRequest {
                volume_id: vol.into(),
                node_id,
                volume_capability: Some(cap_of(fs)),
                ..Default::default()
            })
            .await
            .expect("ControllerPublish")
            .into_inner()
            .publish_context;
        assert!(pc["devicePath"].starts_with("/dev/xvd"), "{pc:?}");
        let staging = self.staging(vol);
        let target = self.target(vol, &format!("pod-{n}"));
        let nc = &mut self.nodes[n].1;
        for _ in 0..2 {
            // Twice: stage is idempotent.
            nc.node_stage_volume(NodeStageVolumeRequest {
                volume_id: vol.into(),
                publish_context: pc.clone(),
                staging_target_path: staging.clone(),
                volume_capability: Some(cap_of(fs)),
                volume_context: ctx.clone(),
                ..Default::default()
            })
            .await
            .expect("NodeStage");
        }
        for _ in 0..2 {
            nc.node_publish_volume(NodePublishVolumeRequest {
                volume_id: vol.into(),
                publish_context: pc.clone(),
                staging_target_path: staging.clone(),
                target_path: target.clone(),
                volume_capability: Some(cap_of(fs)),
                ..Default::default()
            })
            .await
            .expect("NodePublish");
        }
        target
    }

    async fn detach(&mut self, vol: &str, n: usize, target: &str) {
        let staging = self.staging(vol);
        let nc = &mut self.nodes[n].1;
        for _ in 0..2 {
            nc.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: vol.into(),
                target_path: target.into(),
            })
            .await
            .expect("NodeUnpublish");
            nc.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: staging.clone(),
            })
            .await
            .expect("NodeUnstage");
        }
        assert!(!Path::new(target).exists(), "target removed");
        let node_id = self.nodes[n].0.instance_id.clone();
        for _ in 0..2 {
            self.ctl
                .controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                    volume_id: vol.into(),
                    node_id: node_id.clone(),
                    ..Default::default()
                })
                .await
                .expect("ControllerUnpublish");
        }
    }
}

fn write_data(target: &str, fs: &str, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    if fs == "block" {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(target)
            .expect("open block");
        f.write_all(&data).expect("write block");
        f.sync_all().expect("sync");
    } else {
        let p = Path::new(target).join("data.bin");
        std::fs::write(&p, &data).expect("write file");
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .expect("sync");
    }
    data
}

fn read_data(target: &str, fs: &str, len: usize) -> Vec<u8> {
    if fs == "block" {
        use std::io::Read;
        let mut buf = vec![0; len];
        std::fs::File::open(target)
            .expect("open block")
            .read_exact(&mut buf)
            .expect("read");
        buf
    } else {
        std::fs::read(Path::new(target).join("data.bin")).expect("read file")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_move_between_nodes_grow_and_restore_from_snapshots() {
    let dir = tempfile::tempdir().expect("tmp");
    let sim = Vpcsim::start(Options {
        nodes: 2,
        instance_type: "m5.large".into(),
        state_dir: dir.path().join("vpc"),
        timing: e2e::sim::Timing::quick(),
        seed: 5,
        imds_v1: false,
        zone: None,
    })
    .await
    .expect("vpcsim");
    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).expect("kubelet dir");
    let mounts = Mounts(kubelet.clone());
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").to_string()
    };
    let ctl_p = controller_with(
        &sim,
        dir.path(),
        "controller",
        &["--ec2-wait-seconds", "30", "--http-endpoint", &metrics_addr],
    );
    let node_ps: Vec<Plugin> = sim
        .info
        .nodes
        .iter()
        .map(|n| node_plugin(n, dir.path(), &kubelet))
        .collect();
    let ctl = ControllerClient::new(ctl_p.channel().await);
    let mut nodes = vec![];
    for (n, p) in sim.info.nodes.iter().zip(&node_ps) {
        nodes.push((n.clone(), NodeClient::new(p.channel().await)));
    }
    let az = sim.info.nodes[0].az.clone();
    let mut w = World {
        ctl,
        nodes,
        kubelet: kubelet.clone(),
    };

    // Identity and node info.
    let mut id = IdentityClient::new(ctl_p.channel().await);
    let info = id
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.name, "ebs.csi.nodewire.dev");
    assert_eq!(
        id.probe(ProbeRequest {})
            .await
            .expect("probe")
            .into_inner()
            .ready,
        Some(true)
    );
    let mut node_id = IdentityClient::new(node_ps[0].channel().await);
    assert_eq!(
        node_id
            .probe(ProbeRequest {})
            .await
            .expect("node probe")
            .into_inner()
            .ready,
        Some(true)
    );
    let caps = node_id
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .expect("caps")
        .into_inner();
    assert!(
        !caps.capabilities.iter().any(|c| matches!(&c.r#type, Some(plugin_capability::Type::Service(s)) if s.r#type == plugin_capability::service::Type::ControllerService as i32)),
        "a node-only plugin does not offer the controller service"
    );
    let ni = w.nodes[0]
        .1
        .node_get_info(NodeGetInfoRequest {})
        .await
        .expect("NodeGetInfo")
        .into_inner();
    assert_eq!(ni.node_id, sim.info.nodes[0].instance_id);
    assert_eq!(
        ni.max_volumes_per_node, 26,
        "m5.large: 27 shared slots − root, one ENI"
    );
    assert_eq!(
        ni.accessible_topology.expect("topology").segments["topology.kubernetes.io/zone"],
        az
    );

    let mut volumes = vec![];
    for fs in ["ext4", "xfs", "block"] {
        let name = format!("pvc-{fs}");
        let req = create_req(&name, 10, fs, &az);
        let v = w
            .ctl
            .create_volume(req.clone())
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .expect("volume");
        assert_eq!(v.capacity_bytes, 10 * GIB);
        // Idempotent by name; other parameters for the same name: AlreadyExists.
        let again = w
            .ctl
            .create_volume(req.clone())
            .await
            .expect("repeat")
            .into_inner()
            .volume
            .expect("volume");
        assert_eq!(again.volume_id, v.volume_id);
        let mut other = req.clone();
        other.capacity_range = Some(CapacityRange {
            required_bytes: 11 * GIB,
            limit_bytes: 0,
        });
        let e = w.ctl.create_volume(other).await.expect_err("other size");
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        let vol = v.volume_id.clone();
        let ctx = v.volume_context.clone();

        let t1 = w.attach(&vol, 0, fs, &ctx).await;
        let data = write_data(&t1, fs, 7);
        w.detach(&vol, 0, &t1).await;
        let t2 = w.attach(&vol, 1, fs, &ctx).await;
        assert!(
            read_data(&t2, fs, data.len()) == data,
            "{fs}: data moved with the volume"
        );
        volumes.push((vol, fs, t2, data));
    }

    // Online expansion of the xfs volume on node 2: the filesystem sees it (df). (Online ext4
    // growth needs CAP_SYS_RESOURCE, which the CI machine's bounding set lacks; the node
    // DaemonSet has it.)
    let (vol, _, t2, _) = volumes[1].clone();
    let r = w
        .ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: vol.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 20 * GIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_cap("xfs")),
            ..Default::default()
        })
        .await
        .expect("ControllerExpand")
        .into_inner();
    assert_eq!(r.capacity_bytes, 20 * GIB);
    assert!(r.node_expansion_required);
    w.nodes[1]
        .1
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: vol.clone(),
            volume_path: t2.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 20 * GIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("NodeExpand");
    let stats = w.nodes[1]
        .1
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: vol.clone(),
            volume_path: t2.clone(),
            staging_target_path: String::new(),
        })
        .await
        .expect("stats")
        .into_inner();
    let total = stats
        .usage
        .iter()
        .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
        .expect("bytes")
        .total;
    assert!(total > 19 * GIB, "df shows the new size: {total}");
    assert!(!stats.volume_condition.expect("condition").abnormal);
    let df = Command::new("df")
        .args(["-B1", "--output=size", &t2])
        .output()
        .expect("df");
    let df_size: i64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(df_size > 19 * GIB, "df: {df_size}");

    // Snapshot of the ext4 volume → a new volume from it → the same bytes.
    let (vol, _, _, data) = volumes[0].clone();
    let snap = w
        .ctl
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: vol.clone(),
            name: "snap-1".into(),
            ..Default::default()
        })
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    let again = w
        .ctl
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: vol.clone(),
            name: "snap-1".into(),
            ..Default::default()
        })
        .await
        .expect("repeat snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert_eq!(again.snapshot_id, snap.snapshot_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = w
            .ctl
            .list_snapshots(ListSnapshotsRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .expect("ListSnapshots")
            .into_inner();
        if l.entries
            .first()
            .and_then(|e| e.snapshot.as_ref())
            .is_some_and(|s| s.ready_to_use)
        {
            break;
        }
        assert!(Instant::now() < deadline, "snapshot never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut from = create_req("pvc-restored", 20, "ext4", &az);
    from.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let restored = w
        .ctl
        .create_volume(from)
        .await
        .expect("from snapshot")
        .into_inner()
        .volume
        .expect("volume");
    let rt = w
        .attach(&restored.volume_id, 0, "ext4", &restored.volume_context)
        .await;
    assert!(
        read_data(&rt, "ext4", data.len()) == data,
        "restored bytes match"
    );
    w.detach(&restored.volume_id, 0, &rt).await;
    volumes.push((restored.volume_id.clone(), "ext4", String::new(), vec![]));

    // Delete everything.
    for (vol, fs, t, _) in &volumes {
        if !t.is_empty() {
            w.detach(vol, 1, t).await;
        }
        let _ = fs;
        for _ in 0..2 {
            w.ctl
                .delete_volume(DeleteVolumeRequest {
                    volume_id: vol.clone(),
                    ..Default::default()
                })
                .await
                .expect("DeleteVolume");
        }
    }
    for _ in 0..2 {
        w.ctl
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .expect("DeleteSnapshot");
    }
    // The controller's EC2 metrics, under upstream's names.
    let metrics = {
        use std::io::{Read, Write};
        let mut t = std::net::TcpStream::connect(&metrics_addr).expect("metrics endpoint");
        t.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        t.read_to_string(&mut body).expect("response");
        body
    };
    for want in [
        "aws_ebs_csi_api_request_duration_seconds_count{request=\"AttachVolume\"}",
        "aws_ebs_csi_api_request_duration_seconds_count{request=\"CreateVolume\"}",
        "aws_ebs_csi_api_request_errors_total{code=\"IdempotentParameterMismatch\",request=\"CreateVolume\"} 3",
        "nodewire_ebs_csi_ec2_requests_total{request=\"ModifyVolume\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} missing from\n{metrics}");
    }
    sim.settle().await;
    {
        let s = sim.shared.sim();
        let left: Vec<&String> = s
            .volumes
            .values()
            .filter(|v| !v.is_root)
            .map(|v| &v.id)
            .collect();
        assert!(left.is_empty(), "volumes left: {left:?}");
        assert!(s.snapshots.is_empty(), "snapshots left");
        assert!(
            s.volumes
                .values()
                .all(|v| v.is_root || v.attachments.is_empty())
        );
    }
    let left_mounts: Vec<_> = ebs_csi::mount::mounts()
        .expect("mountinfo")
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&kubelet))
        .collect();
    assert!(left_mounts.is_empty(), "mounts left: {left_mounts:?}");
    assert!(
        e2e::node::blockdev::loops_under(&dir.path().join("vpc")).is_empty(),
        "loop devices left"
    );
    drop(mounts);
    drop(node_ps);
    drop(ctl_p);
    sim.shutdown().await.expect("shutdown");
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// The CSI spec's required-argument, not-found and idempotency rules, concurrent duplicates,
/// and the attachment limit NodeGetInfo announces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_rules_concurrency_and_the_attachment_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let sim = Vpcsim::start(Options {
        nodes: 1,
        instance_type: "m5.large".into(),
        state_dir: dir.path().join("vpc"),
        timing: e2e::sim::Timing {
            attach_ms: 20,
            detach_ms: 20,
            create_ms: 10,
            modify_ms: 20,
            snapshot_ms: 20,
            imds_lag_ms: 50,
        },
        seed: 6,
        imds_v1: false,
        zone: None,
    })
    .await
    .expect("vpcsim");
    let admin = e2e::client::Admin::new(&sim.info.admin_url);
    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).expect("kubelet dir");
    let _mounts = Mounts(kubelet.clone());
    let ctl_p = controller(&sim, dir.path());
    let node = sim.info.nodes[0].clone();
    let node_p = node_plugin(&node, dir.path(), &kubelet);
    let mut c = ControllerClient::new(ctl_p.channel().await);
    let mut n = NodeClient::new(node_p.channel().await);
    let az = node.az.clone();
    let missing_vol = "vol-0123456789abcdef0".to_string();
    let k = |p: &str| kubelet.join(p).display().to_string();

    let v = c
        .create_volume(create_req("pvc-rules", 1, "ext4", &az))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    let vol = v.volume_id.clone();

    // Controller.
    let mut bad_mode = create_req("pvc-x", 1, "ext4", &az);
    bad_mode.volume_capabilities[0].access_mode = Some(volume_capability::AccessMode {
        mode: volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
    });
    let mut no_caps = create_req("pvc-x", 1, "ext4", &az);
    no_caps.volume_capabilities.clear();
    let mut bad_param = create_req("pvc-x", 1, "ext4", &az);
    bad_param.parameters.insert("type".into(), "gp9".into());
    let mut too_big = create_req("pvc-x", 20000, "ext4", &az);
    too_big.parameters.insert("type".into(), "gp3".into());
    let mut from_missing = create_req("pvc-x", 1, "ext4", &az);
    from_missing.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: "snap-0123456789abcdef0".into(),
            },
        )),
    });
    let mut bad_mutable = create_req("pvc-x", 1, "ext4", &az);
    bad_mutable
        .mutable_parameters
        .insert("XXX_FakeKey".into(), "x".into());
    let cases: Vec<(&str, Code, Code)> = vec![
        (
            "CreateVolume no name",
            code(c.create_volume(create_req("", 1, "ext4", &az)).await),
            Code::InvalidArgument,
        ),
        (
            "CreateVolume no capabilities",
            code(c.create_volume(no_caps).await),
            Code::InvalidArgument,
        ),
        (
            "CreateVolume multi-node",
            code(c.create_volume(bad_mode).await),
            Code::InvalidArgument,
        ),
        (
            "CreateVolume bad parameter",
            code(c.create_volume(bad_param).await),
            Code::InvalidArgument,
        ),
        (
            "CreateVolume too big",
            code(c.create_volume(too_big).await),
            Code::OutOfRange,
        ),
        (
            "CreateVolume missing snapshot",
            code(c.create_volume(from_missing).await),
            Code::NotFound,
        ),
        (
            "CreateVolume bad mutable parameter",
            code(c.create_volume(bad_mutable).await),
            Code::InvalidArgument,
        ),
        (
            "Expand empty capacity",
            code(
                c.controller_expand_volume(ControllerExpandVolumeRequest {
                    volume_id: vol.clone(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: 0,
                        limit_bytes: 0,
                    }),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Expand below the current size's limit",
            code(
                c.controller_expand_volume(ControllerExpandVolumeRequest {
                    volume_id: vol.clone(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: 0,
                        limit_bytes: GIB / 2,
                    }),
                    ..Default::default()
                })
                .await,
            ),
            Code::OutOfRange,
        ),
        (
            "NodeExpand outside the kubelet root",
            code(
                n.node_expand_volume(NodeExpandVolumeRequest {
                    volume_id: vol.clone(),
                    volume_path: "/".into(),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Stats outside the kubelet root",
            code(
                n.node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: vol.clone(),
                    volume_path: "/etc".into(),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "DeleteVolume no id",
            code(c.delete_volume(DeleteVolumeRequest::default()).await),
            Code::InvalidArgument,
        ),
        (
            "DeleteVolume missing",
            code(
                c.delete_volume(DeleteVolumeRequest {
                    volume_id: missing_vol.clone(),
                    ..Default::default()
                })
                .await,
            ),
            Code::Ok,
        ),
        (
            "DeleteVolume malformed id",
            code(
                c.delete_volume(DeleteVolumeRequest {
                    volume_id: "vol-fake".into(),
                    ..Default::default()
                })
                .await,
            ),
            Code::Ok,
        ),
        (
            "Publish no volume",
            code(
                c.controller_publish_volume(ControllerPublishVolumeRequest {
                    node_id: node.instance_id.clone(),
                    volume_capability: Some(mount_cap("ext4")),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Publish no node",
            code(
                c.controller_publish_volume(ControllerPublishVolumeRequest {
                    volume_id: vol.clone(),
                    volume_capability: Some(mount_cap("ext4")),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Publish no capability",
            code(
                c.controller_publish_volume(ControllerPublishVolumeRequest {
                    volume_id: vol.clone(),
                    node_id: node.instance_id.clone(),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Publish missing volume",
            code(
                c.controller_publish_volume(ControllerPublishVolumeRequest {
                    volume_id: missing_vol.clone(),
                    node_id: node.instance_id.clone(),
                    volume_capability: Some(mount_cap("ext4")),
                    ..Default::default()
                })
                .await,
            ),
            Code::NotFound,
        ),
        (
            "Publish missing node",
            code(
                c.controller_publish_volume(ControllerPublishVolumeRequest {
                    volume_id: vol.clone(),
                    node_id: "i-0123456789abcdef0".into(),
                    volume_capability: Some(mount_cap("ext4")),
                    ..Default::default()
                })
                .await,
            ),
            Code::NotFound,
        ),
        (
            "Unpublish missing volume",
            code(
                c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                    volume_id: missing_vol.clone(),
                    node_id: node.instance_id.clone(),
                    ..Default::default()
                })
                .await,
            ),
            Code::Ok,
        ),
        (
            "Unpublish not attached",
            code(
                c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                    volume_id: vol.clone(),
                    node_id: node.instance_id.clone(),
                    ..Default::default()
                })
                .await,
            ),
            Code::Ok,
        ),
        (
            "Validate missing volume",
            code(
                c.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                    volume_id: missing_vol.clone(),
                    volume_capabilities: vec![mount_cap("ext4")],
                    ..Default::default()
                })
                .await,
            ),
            Code::NotFound,
        ),
        (
            "Validate no capabilities",
            code(
                c.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                    volume_id: vol.clone(),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Expand no capacity",
            code(
                c.controller_expand_volume(ControllerExpandVolumeRequest {
                    volume_id: vol.clone(),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Expand missing volume",
            code(
                c.controller_expand_volume(ControllerExpandVolumeRequest {
                    volume_id: missing_vol.clone(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: 2 * GIB,
                        limit_bytes: 0,
                    }),
                    ..Default::default()
                })
                .await,
            ),
            Code::NotFound,
        ),
        (
            "Modify missing volume",
            code(
                c.controller_modify_volume(ControllerModifyVolumeRequest {
                    volume_id: missing_vol.clone(),
                    mutable_parameters: [("iops".to_string(), "4000".to_string())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                })
                .await,
            ),
            Code::NotFound,
        ),
        (
            "Modify bad parameter",
            code(
                c.controller_modify_volume(ControllerModifyVolumeRequest {
                    volume_id: vol.clone(),
                    mutable_parameters: [("size".to_string(), "4".to_string())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Snapshot no name",
            code(
                c.create_snapshot(CreateSnapshotRequest {
                    source_volume_id: vol.clone(),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Snapshot missing volume",
            code(
                c.create_snapshot(CreateSnapshotRequest {
                    source_volume_id: missing_vol.clone(),
                    name: "s".into(),
                    ..Default::default()
                })
                .await,
            ),
            Code::NotFound,
        ),
        (
            "DeleteSnapshot no id",
            code(c.delete_snapshot(DeleteSnapshotRequest::default()).await),
            Code::InvalidArgument,
        ),
        (
            "DeleteSnapshot missing",
            code(
                c.delete_snapshot(DeleteSnapshotRequest {
                    snapshot_id: "snap-0123456789abcdef0".into(),
                    ..Default::default()
                })
                .await,
            ),
            Code::Ok,
        ),
        (
            "ListSnapshots bad token",
            code(
                c.list_snapshots(ListSnapshotsRequest {
                    starting_token: "nope".into(),
                    ..Default::default()
                })
                .await,
            ),
            Code::Aborted,
        ),
        (
            "ListVolumes",
            code(c.list_volumes(ListVolumesRequest::default()).await),
            Code::Unimplemented,
        ),
        // Node.
        (
            "Stage no volume",
            code(
                n.node_stage_volume(NodeStageVolumeRequest {
                    staging_target_path: k("s"),
                    volume_capability: Some(mount_cap("ext4")),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Stage no path",
            code(
                n.node_stage_volume(NodeStageVolumeRequest {
                    volume_id: vol.clone(),
                    volume_capability: Some(mount_cap("ext4")),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Stage no capability",
            code(
                n.node_stage_volume(NodeStageVolumeRequest {
                    volume_id: vol.clone(),
                    staging_target_path: k("s"),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Stage outside the kubelet root",
            code(
                n.node_stage_volume(NodeStageVolumeRequest {
                    volume_id: vol.clone(),
                    staging_target_path: "/etc/x".into(),
                    volume_capability: Some(mount_cap("ext4")),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Stage with ..",
            code(
                n.node_stage_volume(NodeStageVolumeRequest {
                    volume_id: vol.clone(),
                    staging_target_path: k("a/../../../etc"),
                    volume_capability: Some(mount_cap("ext4")),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Stage a volume not attached here",
            code(
                n.node_stage_volume(NodeStageVolumeRequest {
                    volume_id: missing_vol.clone(),
                    staging_target_path: k("s"),
                    volume_capability: Some(mount_cap("ext4")),
                    publish_context: [("devicePath".to_string(), "/dev/xvdzz".to_string())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                })
                .await,
            ),
            Code::NotFound,
        ),
        (
            "Unstage not staged",
            code(
                n.node_unstage_volume(NodeUnstageVolumeRequest {
                    volume_id: vol.clone(),
                    staging_target_path: k("s"),
                })
                .await,
            ),
            Code::Ok,
        ),
        (
            "Publish no target",
            code(
                n.node_publish_volume(NodePublishVolumeRequest {
                    volume_id: vol.clone(),
                    staging_target_path: k("s"),
                    volume_capability: Some(mount_cap("ext4")),
                    ..Default::default()
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "Publish not staged",
            code(
                n.node_publish_volume(NodePublishVolumeRequest {
                    volume_id: vol.clone(),
                    staging_target_path: k("s"),
                    target_path: k("t"),
                    volume_capability: Some(mount_cap("ext4")),
                    ..Default::default()
                })
                .await,
            ),
            Code::FailedPrecondition,
        ),
        (
            "Unpublish not published",
            code(
                n.node_unpublish_volume(NodeUnpublishVolumeRequest {
                    volume_id: vol.clone(),
                    target_path: k("t"),
                })
                .await,
            ),
            Code::Ok,
        ),
        (
            "Stats missing path",
            code(
                n.node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: vol.clone(),
                    volume_path: k("gone"),
                    ..Default::default()
                })
                .await,
            ),
            Code::NotFound,
        ),
        (
            "Expand missing path",
            code(
                n.node_expand_volume(NodeExpandVolumeRequest {
                    volume_id: vol.clone(),
                    volume_path: k("gone"),
                    ..Default::default()
                })
                .await,
            ),
            Code::NotFound,
        ),
    ];
    let wrong: Vec<_> = cases.iter().filter(|(_, got, want)| got != want).collect();
    assert!(
        wrong.is_empty(),
        "wrong codes (case, got, want): {wrong:#?}"
    );

    // Concurrent duplicates: while one publish waits for a slow attach, the same call answers
    // ABORTED (the CO retries), and the retry after it finishes succeeds with the same device.
    let mut slow = admin.timing().await.expect("timing");
    slow.attach_ms = 1500;
    admin.set_timing(slow).await.expect("slow attach");
    let publish = ControllerPublishVolumeRequest {
        volume_id: vol.clone(),
        node_id: node.instance_id.clone(),
        volume_capability: Some(mount_cap("ext4")),
        ..Default::default()
    };
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let first = tokio::spawn({
        let p = publish.clone();
        async move { c1.controller_publish_volume(p).await }
    });
    // The second call starts once the first has reserved its device name (EC2 shows it attaching).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sim.shared.sim().volumes[&vol]
        .attachments
        .iter()
        .any(|a| a.instance_id == node.instance_id)
    {
        assert!(Instant::now() < deadline, "first publish never attached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dup = c2.controller_publish_volume(publish.clone()).await;
    assert_eq!(code(dup), Code::Aborted);
    let dev1 = first
        .await
        .expect("join")
        .expect("first publish")
        .into_inner()
        .publish_context;
    slow.attach_ms = 20;
    admin.set_timing(slow).await.expect("fast attach");
    let dev2 = c
        .controller_publish_volume(publish.clone())
        .await
        .expect("retry")
        .into_inner()
        .publish_context;
    assert_eq!(dev1, dev2, "a repeated publish answers the same device");

    // An expansion and a modification arriving together are one EC2 ModifyVolume.
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let (vid1, vid2) = (vol.clone(), vol.clone());
    let (e, m) = tokio::join!(
        async move {
            c1.controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: vid1,
                capacity_range: Some(CapacityRange {
                    required_bytes: 2 * GIB,
                    limit_bytes: 0,
                }),
                volume_capability: Some(mount_cap("ext4")),
                ..Default::default()
            })
            .await
        },
        async move {
            c2.controller_modify_volume(ControllerModifyVolumeRequest {
                volume_id: vid2,
                mutable_parameters: [("throughput".to_string(), "200".to_string())]
                    .into_iter()
                    .collect(),
                ..Default::default()
            })
            .await
        }
    );
    e.expect("expand");
    m.expect("modify");
    {
        let s = sim.shared.sim();
        let mods = &s.modifications[&vol];
        assert_eq!(mods.len(), 1, "one ModifyVolume: {mods:?}");
        assert_eq!(
            (mods[0].target.size_gib, mods[0].target.throughput),
            (2, Some(200))
        );
    }

    // A stale by-id link naming a volume that is not here, pointing at another volume's device:
    // NodeStage proves the device's identity by its serial and refuses to touch it.
    let by_id = node.device_dir.join("disk/by-id");
    let real = std::fs::read_link(by_id.join(format!(
        "nvme-Amazon_Elastic_Block_Store_{}",
        vol.replace('-', "")
    )))
    .expect("the published volume's by-id link");
    let fake = by_id.join(format!(
        "nvme-Amazon_Elastic_Block_Store_{}",
        missing_vol.replace('-', "")
    ));
    std::os::unix::fs::symlink(&real, &fake).expect("stale link");
    let e = n
        .node_stage_volume(NodeStageVolumeRequest {
            volume_id: missing_vol.clone(),
            staging_target_path: k("stale"),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await;
    std::fs::remove_file(&fake).expect("remove the stale link");
    let e = e.expect_err("stale link");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains(&vol),
        "names the volume it found: {}",
        e.message()
    );

    // A volume stuck attaching is detached again, and the retry avoids its device name.
    let impatient = controller_with(&sim, dir.path(), "impatient", &["--ec2-wait-seconds", "1"]);
    let mut ci = ControllerClient::new(impatient.channel().await);
    let stuck = c
        .create_volume(create_req("pvc-stuck", 1, "ext4", &az))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume")
        .volume_id;
    let mut p_stuck = publish.clone();
    p_stuck.volume_id = stuck.clone();
    slow.attach_ms = 10_000;
    admin.set_timing(slow).await.expect("very slow attach");
    let e = ci
        .controller_publish_volume(p_stuck.clone())
        .await
        .expect_err("stuck");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    let stuck_dev = e
        .message()
        .split(" as ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_default()
        .to_string();
    assert!(stuck_dev.starts_with("/dev/xvd"), "{}", e.message());
    sim.settle().await;
    assert!(
        sim.shared.sim().volumes[&stuck].attachments.is_empty(),
        "the stuck attachment was undone"
    );
    slow.attach_ms = 20;
    admin.set_timing(slow).await.expect("fast attach");
    let d = ci
        .controller_publish_volume(p_stuck.clone())
        .await
        .expect("retry")
        .into_inner()
        .publish_context;
    assert_ne!(
        d["devicePath"], stuck_dev,
        "the retry avoids the stuck name"
    );
    c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: stuck.clone(),
        node_id: node.instance_id.clone(),
        ..Default::default()
    })
    .await
    .expect("unpublish");
    c.delete_volume(DeleteVolumeRequest {
        volume_id: stuck.clone(),
        ..Default::default()
    })
    .await
    .expect("delete");
    drop(impatient);

    // The attachment limit: NodeGetInfo says 26 on an m5.large with one ENI; the 27th volume is
    // refused with RESOURCE_EXHAUSTED.
    let max = n
        .node_get_info(NodeGetInfoRequest {})
        .await
        .expect("info")
        .into_inner()
        .max_volumes_per_node;
    assert_eq!(max, 26);
    let mut ids = vec![vol.clone()];
    for i in 1..=max {
        let v = c
            .create_volume(create_req(&format!("pvc-lim-{i}"), 1, "ext4", &az))
            .await
            .expect("create")
            .into_inner()
            .volume
            .expect("volume");
        ids.push(v.volume_id.clone());
        let mut p = publish.clone();
        p.volume_id = v.volume_id.clone();
        let r = c.controller_publish_volume(p).await;
        if i < max {
            r.expect("within the limit");
        } else {
            assert_eq!(
                code(r),
                Code::ResourceExhausted,
                "volume {} of {max}",
                i + 1
            );
        }
    }
    let e = c
        .delete_volume(DeleteVolumeRequest {
            volume_id: vol.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        code(e),
        Code::FailedPrecondition,
        "an attached volume is not deleted"
    );
    for id in &ids {
        c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
            volume_id: id.clone(),
            node_id: node.instance_id.clone(),
            ..Default::default()
        })
        .await
        .expect("unpublish");
        c.delete_volume(DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    }
    sim.settle().await;
    assert!(
        sim.shared.sim().volumes.values().all(|v| v.is_root),
        "volumes left"
    );
    drop(node_p);
    drop(ctl_p);
    sim.shutdown().await.expect("shutdown");
}

/// Xen (m4.large): no NVMe, no by-id link and (here) no readable serial — the device is found
/// by its attach name; volumes have their own 39 slots, minus the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xen_nodes_find_volumes_by_attach_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let sim = Vpcsim::start(Options {
        nodes: 1,
        instance_type: "m4.large".into(),
        state_dir: dir.path().join("vpc"),
        timing: e2e::sim::Timing::zero(),
        seed: 8,
        imds_v1: false,
        zone: None,
    })
    .await
    .expect("vpcsim");
    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).expect("kubelet dir");
    let mounts = Mounts(kubelet.clone());
    let node = sim.info.nodes[0].clone();
    let no_serials = dir.path().join("no-serials");
    std::fs::create_dir_all(&no_serials).expect("dir");
    let ctl_p = controller(&sim, dir.path());
    let node_p = harness::node_plugin_with(bin(), &node, dir.path(), &kubelet, &no_serials);
    let ctl = ControllerClient::new(ctl_p.channel().await);
    let mut nc = NodeClient::new(node_p.channel().await);
    let info = nc
        .node_get_info(NodeGetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(
        info.max_volumes_per_node, 38,
        "m4.large: 39 dedicated − root"
    );
    let mut w = World {
        ctl,
        nodes: vec![(node.clone(), nc)],
        kubelet: kubelet.clone(),
    };
    let v = w
        .ctl
        .create_volume(create_req("pvc-xen", 2, "ext4", &node.az))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    let t = w.attach(&v.volume_id, 0, "ext4", &v.volume_context).await;
    assert!(
        !node.device_dir.join("disk/by-id").exists()
            || std::fs::read_dir(node.device_dir.join("disk/by-id"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0,
        "no by-id links on Xen"
    );
    let data = write_data(&t, "ext4", 3);
    assert!(read_data(&t, "ext4", data.len()) == data);
    w.detach(&v.volume_id, 0, &t).await;
    w.ctl
        .delete_volume(DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    drop(mounts);
    drop(node_p);
    drop(ctl_p);
    sim.shutdown().await.expect("shutdown");
}
