//! Contract suite: the same `aws-sdk-ec2` calls and assertions run against moto 5.2.5 (an EC2
//! emulator nobody here wrote, from the repo's `.venv`) and against vpcsim, for everything moto
//! models faithfully. It pins vpcsim's wire format and basic semantics to a third party.
//!
//! Only setup differs (moto needs a VPC and subnet made; vpcsim has them). Assertions read state
//! back with Describe calls instead of trusting replies (moto's AssignPrivateIpAddresses reply
//! lists every IP) and poll through in-progress states (which moto skips and vpcsim has).

mod common;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag, TagSpecification, VolumeType};
use common::{code, vol_state, wait_eni, wait_for, wait_volume};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A moto server on loopback, stopped on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Moto {
        let bin = std::env::var("MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                e2e::package_dir(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server")
            });
        assert!(
            bin.exists(),
            "moto_server not found at {} — run `make venv` (the contract suite needs moto 5.2.5)",
            bin.display()
        );
        let mut child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn moto_server");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let endpoint = loop {
            let l = lines
                .next()
                .expect("moto exited before listening")
                .expect("read stderr");
            if let Some(i) = l.find("http://127.0.0.1:") {
                break l[i..]
                    .split_whitespace()
                    .next()
                    .expect("url")
                    .trim_end_matches('/')
                    .to_string();
            }
        };
        // Keep draining stderr so moto never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Moto { child, endpoint }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

async fn eni_ips(ec2: &Client, id: &str) -> Vec<String> {
    let d = ec2
        .describe_network_interfaces()
        .network_interface_ids(id)
        .send()
        .await
        .expect("describe eni");
    d.network_interfaces()[0]
        .private_ip_addresses()
        .iter()
        .filter_map(|a| a.private_ip_address().map(String::from))
        .collect()
}

/// The shared body: everything below must hold on both emulators.
async fn contract(ec2: Client, subnet: String, az: String, target: &str) {
    // Instance types: real limits.
    let types = ec2
        .describe_instance_types()
        .instance_types(InstanceType::M5Large)
        .instance_types(InstanceType::T3Medium)
        .instance_types(InstanceType::C518xlarge)
        .send()
        .await
        .expect("DescribeInstanceTypes");
    let mut got: Vec<(String, i32, i32, String)> = types
        .instance_types()
        .iter()
        .map(|t| {
            let n = t.network_info().expect("network info");
            (
                t.instance_type().expect("type").as_str().to_string(),
                n.maximum_network_interfaces().expect("max enis"),
                n.ipv4_addresses_per_interface().expect("ipv4"),
                t.ebs_info()
                    .and_then(|e| e.nvme_support())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("c5.18xlarge".into(), 15, 50, "required".into()),
            ("m5.large".into(), 3, 10, "required".into()),
            ("t3.medium".into(), 3, 6, "required".into()),
        ],
        "{target}"
    );
    let err = ec2
        .describe_instance_types()
        .instance_types(InstanceType::from("m5.bogus"))
        .send()
        .await
        .expect_err("bogus");
    assert!(
        code(&err).starts_with("InvalidInstanceType"),
        "{target}: {}",
        code(&err)
    );

    let azs = ec2.describe_availability_zones().send().await.expect("AZs");
    assert!(
        azs.availability_zones()
            .iter()
            .any(|z| z.zone_name() == Some(az.as_str())),
        "{target}"
    );
    assert!(
        azs.availability_zones()
            .iter()
            .all(|z| z.region_name() == Some("us-east-1")),
        "{target}"
    );

    let s = ec2
        .describe_subnets()
        .subnet_ids(&subnet)
        .send()
        .await
        .expect("subnet");
    let cidr: ipnet::Ipv4Net = s.subnets()[0]
        .cidr_block()
        .expect("cidr")
        .parse()
        .expect("parse");
    let err = ec2
        .describe_subnets()
        .subnet_ids("subnet-0123456789abcdef0")
        .send()
        .await
        .expect_err("unknown subnet");
    assert_eq!(code(&err), "InvalidSubnetID.NotFound", "{target}");

    // An instance in the subnet, its primary ENI at device index 0.
    let run = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet)
        .send()
        .await
        .expect("RunInstances");
    let inst = &run.instances()[0];
    let iid = inst.instance_id().expect("id").to_string();
    let ip: std::net::Ipv4Addr = inst.private_ip_address().expect("ip").parse().expect("ip");
    assert!(cidr.contains(&ip), "{target}: {ip} not in {cidr}");
    let d = ec2
        .describe_instances()
        .instance_ids(&iid)
        .send()
        .await
        .expect("DescribeInstances");
    let i = &d.reservations()[0].instances()[0];
    assert_eq!(
        i.state().and_then(|s| s.name()).map(|s| s.as_str()),
        Some("running"),
        "{target}"
    );
    assert_eq!(i.network_interfaces().len(), 1, "{target}");
    assert_eq!(
        i.network_interfaces()[0]
            .attachment()
            .and_then(|a| a.device_index()),
        Some(0),
        "{target}"
    );

    // ENI with secondary IPs, description and tags.
    let eni = ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .description("aws-K8S-contract")
        .secondary_private_ip_address_count(2)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::NetworkInterface)
                .tags(tag("node.k8s.amazonaws.com/instance_id", &iid))
                .build(),
        )
        .send()
        .await
        .expect("CreateNetworkInterface");
    let eni = eni.network_interface().expect("eni");
    let eid = eni.network_interface_id().expect("id").to_string();
    assert_eq!(
        eni.status().map(|s| s.as_str()),
        Some("available"),
        "{target}"
    );
    assert_eq!(eni.private_ip_addresses().len(), 3, "{target}");
    assert_eq!(
        eni.private_ip_addresses()
            .iter()
            .filter(|a| a.primary() == Some(true))
            .count(),
        1,
        "{target}"
    );
    assert!(eni.mac_address().is_some_and(|m| m.len() == 17), "{target}");

    for f in [
        Filter::builder()
            .name("tag:node.k8s.amazonaws.com/instance_id")
            .values(&iid)
            .build(),
        Filter::builder()
            .name("tag-key")
            .values("node.k8s.amazonaws.com/instance_id")
            .build(),
        Filter::builder()
            .name("description")
            .values("aws-K8S-contract")
            .build(),
    ] {
        let d = ec2
            .describe_network_interfaces()
            .filters(f.clone())
            .send()
            .await
            .expect("filter");
        let ids: Vec<_> = d
            .network_interfaces()
            .iter()
            .filter_map(|e| e.network_interface_id())
            .collect();
        assert_eq!(ids, vec![eid.as_str()], "{target}: {f:?}");
    }

    // Attach at device index 1 (after any in-progress state).
    let att = ec2
        .attach_network_interface()
        .network_interface_id(&eid)
        .instance_id(&iid)
        .device_index(1)
        .send()
        .await
        .expect("AttachNetworkInterface");
    let att_id = att.attachment_id().expect("attachment").to_string();
    wait_eni(&ec2, &eid, "in-use").await;
    let on = ec2
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(&iid)
                .build(),
        )
        .send()
        .await
        .expect("by instance");
    assert_eq!(on.network_interfaces().len(), 2, "{target}");
    let status = ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("status").values("in-use").build())
        .filters(Filter::builder().name("subnet-id").values(&subnet).build())
        .send()
        .await
        .expect("by status");
    assert!(
        status
            .network_interfaces()
            .iter()
            .any(|e| e.network_interface_id() == Some(eid.as_str())),
        "{target}"
    );

    // Secondary IPs by count and explicitly; unassign.
    ec2.assign_private_ip_addresses()
        .network_interface_id(&eid)
        .secondary_private_ip_address_count(2)
        .send()
        .await
        .expect("assign by count");
    let ips = eni_ips(&ec2, &eid).await;
    assert_eq!(ips.len(), 5, "{target}");
    let unique: std::collections::BTreeSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), 5, "{target}: {ips:?}");
    let explicit = (1..200u32)
        .map(|k| std::net::Ipv4Addr::from(u32::from(cidr.network()) + 20 + k).to_string())
        .find(|c| !ips.contains(c) && *c != ip.to_string())
        .expect("a free address");
    ec2.assign_private_ip_addresses()
        .network_interface_id(&eid)
        .private_ip_addresses(&explicit)
        .send()
        .await
        .expect("assign explicit");
    assert!(eni_ips(&ec2, &eid).await.contains(&explicit), "{target}");
    ec2.unassign_private_ip_addresses()
        .network_interface_id(&eid)
        .private_ip_addresses(&explicit)
        .private_ip_addresses(&ips[4])
        .send()
        .await
        .expect("unassign");
    let after = eni_ips(&ec2, &eid).await;
    assert_eq!(after.len(), 4, "{target}");
    assert!(
        !after.contains(&explicit) && after[0] == ips[0],
        "{target}: primary stays first"
    );

    // Tags.
    ec2.create_tags()
        .resources(&eid)
        .tags(tag("team", "net"))
        .send()
        .await
        .expect("CreateTags");
    let d = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eid)
        .send()
        .await
        .expect("describe");
    assert!(
        d.network_interfaces()[0]
            .tag_set()
            .iter()
            .any(|t| t.key() == Some("team") && t.value() == Some("net")),
        "{target}"
    );
    ec2.delete_tags()
        .resources(&eid)
        .tags(Tag::builder().key("team").build())
        .send()
        .await
        .expect("DeleteTags");
    let d = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eid)
        .send()
        .await
        .expect("describe");
    assert!(
        !d.network_interfaces()[0]
            .tag_set()
            .iter()
            .any(|t| t.key() == Some("team")),
        "{target}"
    );

    // Detach and delete.
    ec2.detach_network_interface()
        .attachment_id(&att_id)
        .send()
        .await
        .expect("detach");
    wait_eni(&ec2, &eid, "available").await;
    ec2.delete_network_interface()
        .network_interface_id(&eid)
        .send()
        .await
        .expect("delete");
    let err = ec2
        .describe_network_interfaces()
        .network_interface_ids(&eid)
        .send()
        .await
        .expect_err("gone");
    assert_eq!(code(&err), "InvalidNetworkInterfaceID.NotFound", "{target}");
    let err = ec2
        .delete_network_interface()
        .network_interface_id(&eid)
        .send()
        .await
        .expect_err("twice");
    assert_eq!(code(&err), "InvalidNetworkInterfaceID.NotFound", "{target}");

    // EBS: create, attach, in use, detach, grow, snapshot, restore, delete.
    let v = ec2
        .create_volume()
        .availability_zone(&az)
        .size(10)
        .volume_type(VolumeType::Gp3)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .tags(tag("CSIVolumeName", "pvc-1"))
                .build(),
        )
        .send()
        .await
        .expect("CreateVolume");
    let vid = v.volume_id().expect("id").to_string();
    assert_eq!(
        (v.size(), v.iops(), v.encrypted()),
        (Some(10), Some(3000), Some(false)),
        "{target}"
    );
    wait_volume(&ec2, &vid, "volume available", |s| s.0 == "available").await;
    let d = ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("tag:CSIVolumeName")
                .values("pvc-1")
                .build(),
        )
        .send()
        .await
        .expect("by tag");
    assert_eq!(
        d.volumes()
            .iter()
            .filter_map(|v| v.volume_id())
            .collect::<Vec<_>>(),
        vec![vid.as_str()],
        "{target}"
    );
    let a = ec2
        .attach_volume()
        .volume_id(&vid)
        .instance_id(&iid)
        .device("/dev/xvdba")
        .send()
        .await
        .expect("AttachVolume");
    assert_eq!(a.device(), Some("/dev/xvdba"), "{target}");
    wait_volume(&ec2, &vid, "attached", |s| {
        s.1.as_deref() == Some("attached")
    })
    .await;
    assert_eq!(
        vol_state(&ec2, &vid).await.map(|s| s.0),
        Some("in-use".into()),
        "{target}"
    );
    let by_inst = ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(&iid)
                .build(),
        )
        .send()
        .await
        .expect("by instance");
    assert!(
        by_inst
            .volumes()
            .iter()
            .any(|v| v.volume_id() == Some(vid.as_str())),
        "{target}"
    );
    let err = ec2
        .delete_volume()
        .volume_id(&vid)
        .send()
        .await
        .expect_err("in use");
    assert_eq!(code(&err), "VolumeInUse", "{target}");
    ec2.detach_volume()
        .volume_id(&vid)
        .instance_id(&iid)
        .send()
        .await
        .expect("DetachVolume");
    wait_volume(&ec2, &vid, "detached", |s| s.0 == "available").await;

    ec2.modify_volume()
        .volume_id(&vid)
        .size(20)
        .send()
        .await
        .expect("ModifyVolume");
    wait_volume(&ec2, &vid, "grown", |s| s.2 == 20).await;
    let m = ec2
        .describe_volumes_modifications()
        .volume_ids(&vid)
        .send()
        .await
        .expect("modifications");
    let last = m.volumes_modifications().last().expect("a modification");
    assert_eq!(
        (last.original_size(), last.target_size()),
        (Some(10), Some(20)),
        "{target}"
    );

    let snap = ec2
        .create_snapshot()
        .volume_id(&vid)
        .description("contract")
        .send()
        .await
        .expect("CreateSnapshot");
    let sid = snap.snapshot_id().expect("id").to_string();
    assert_eq!(snap.volume_size(), Some(20), "{target}");
    wait_for("snapshot completed", || async {
        let d = ec2
            .describe_snapshots()
            .snapshot_ids(&sid)
            .send()
            .await
            .ok()?;
        (d.snapshots()[0].state()?.as_str() == "completed").then_some(())
    })
    .await;
    let by_vol = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(Filter::builder().name("volume-id").values(&vid).build())
        .send()
        .await
        .expect("snapshots by volume");
    assert_eq!(
        by_vol
            .snapshots()
            .iter()
            .filter_map(|s| s.snapshot_id())
            .collect::<Vec<_>>(),
        vec![sid.as_str()],
        "{target}"
    );
    let restored = ec2
        .create_volume()
        .availability_zone(&az)
        .snapshot_id(&sid)
        .send()
        .await
        .expect("from snapshot");
    let rid = restored.volume_id().expect("id").to_string();
    assert_eq!(
        (restored.size(), restored.snapshot_id()),
        (Some(20), Some(sid.as_str())),
        "{target}"
    );
    wait_volume(&ec2, &rid, "restored available", |s| s.0 == "available").await;

    ec2.delete_snapshot()
        .snapshot_id(&sid)
        .send()
        .await
        .expect("DeleteSnapshot");
    let err = ec2
        .delete_snapshot()
        .snapshot_id(&sid)
        .send()
        .await
        .expect_err("twice");
    assert_eq!(code(&err), "InvalidSnapshot.NotFound", "{target}");
    for id in [&vid, &rid] {
        ec2.delete_volume()
            .volume_id(id)
            .send()
            .await
            .expect("DeleteVolume");
        let err = ec2
            .describe_volumes()
            .volume_ids(id)
            .send()
            .await
            .expect_err("gone");
        assert_eq!(code(&err), "InvalidVolume.NotFound", "{target}");
    }

    // Terminate.
    let t = ec2
        .terminate_instances()
        .instance_ids(&iid)
        .send()
        .await
        .expect("TerminateInstances");
    assert_eq!(
        t.terminating_instances()[0].instance_id(),
        Some(iid.as_str()),
        "{target}"
    );
    wait_for("terminated", || async {
        let d = ec2
            .describe_instances()
            .instance_ids(&iid)
            .send()
            .await
            .ok()?;
        let s = d.reservations()[0].instances()[0]
            .state()?
            .name()?
            .as_str()
            .to_string();
        (s == "terminated").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_holds_on_moto() {
    let moto = Moto::start();
    let ec2 = common::ec2(&moto.endpoint);
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.92.0.0/16")
        .send()
        .await
        .expect("CreateVpc");
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc").to_string();
    let s = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.92.0.0/20")
        .availability_zone("us-east-1a")
        .send()
        .await
        .expect("CreateSubnet");
    let subnet = s
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("subnet")
        .to_string();
    contract(ec2, subnet, "us-east-1a".into(), "moto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_holds_on_vpcsim() {
    let cfg = e2e::sim::SimConfig {
        timing: common::quick(),
        seed: 3,
        ..Default::default()
    };
    let api = e2e::api::ApiOnly::start(cfg).await.expect("vpcsim API");
    let ec2 = common::ec2(&api.endpoint);
    let s = ec2
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("availability-zone")
                .values("us-east-1a")
                .build(),
        )
        .send()
        .await
        .expect("DescribeSubnets");
    let subnet = s.subnets()[0].subnet_id().expect("subnet").to_string();
    contract(ec2, subnet, "us-east-1a".into(), "vpcsim").await;
}
