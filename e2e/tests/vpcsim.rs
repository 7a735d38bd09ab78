//! End-to-end: vpcsim driven with `aws-sdk-ec2` and the SDK's IMDS client from inside node
//! namespaces, with real links, packets and block devices checked.

mod common;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use common::*;
use e2e::api::{Fault, ThrottleReq};
use e2e::client::Admin;
use e2e::node::netns;
use e2e::sim::throttle::ActionClass;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eni_hotplug_seen_through_the_sdk_imds_and_the_kernel() {
    let (sim, _dir) = up(1, quick()).await;
    let node = sim.info.nodes[0].clone();
    let endpoint = sim.info.ec2_endpoint.clone();
    let imds_url = sim.info.imds_endpoint.clone();

    // Discover the node the way ipamd will: IMDSv2 through the SDK's client, inside the node.
    let (iid, mac, subnet) = in_netns(&node.netns, move || async move {
        let imds = nodewire_aws::imds::Imds::new(Some(&imds_url)).expect("imds client");
        let iid = imds
            .get("instance-id")
            .await
            .expect("imds")
            .expect("instance-id");
        let mac = imds.get("mac").await.expect("imds").expect("mac");
        let subnet = imds
            .get(&format!("network/interfaces/macs/{mac}/subnet-id"))
            .await
            .expect("imds")
            .expect("subnet");
        (iid, mac, subnet)
    })
    .await;
    assert_eq!(
        (iid.as_str(), mac.as_str(), subnet.as_str()),
        (
            node.instance_id.as_str(),
            node.mac.as_str(),
            node.subnet_id.as_str()
        )
    );

    let ns = node.netns.clone();
    let (eni_id, eni_mac) = in_netns(&node.netns, move || async move {
        let ec2 = ec2(&endpoint);
        let tag = Tag::builder()
            .key("node.k8s.amazonaws.com/instance_id")
            .value(&iid)
            .build();
        let created = ec2
            .create_network_interface()
            .subnet_id(&subnet)
            .description("aws-K8S-i-test")
            .secondary_private_ip_address_count(2)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::NetworkInterface)
                    .tags(tag)
                    .build(),
            )
            .send()
            .await
            .expect("create ENI");
        let eni = created.network_interface().expect("eni").clone();
        assert_eq!(eni.private_ip_addresses().len(), 3);
        assert_eq!(
            eni.private_ip_addresses()
                .iter()
                .filter(|a| a.primary() == Some(true))
                .count(),
            1
        );
        let eni_id = eni.network_interface_id().expect("id").to_string();
        let att = ec2
            .attach_network_interface()
            .network_interface_id(&eni_id)
            .instance_id(&iid)
            .device_index(1)
            .send()
            .await
            .expect("attach");
        let att_id = att.attachment_id().expect("attachment id").to_string();
        // In progress first, like EC2.
        let d = ec2
            .describe_network_interfaces()
            .network_interface_ids(&eni_id)
            .send()
            .await
            .expect("describe");
        assert_eq!(
            d.network_interfaces()[0].status().map(|s| s.as_str()),
            Some("attaching")
        );
        wait_eni(&ec2, &eni_id, "in-use").await;
        ec2.modify_network_interface_attribute()
            .network_interface_id(&eni_id)
            .attachment(
                aws_sdk_ec2::types::NetworkInterfaceAttachmentChanges::builder()
                    .attachment_id(&att_id)
                    .delete_on_termination(true)
                    .build(),
            )
            .send()
            .await
            .expect("DeleteOnTermination");
        let err = ec2
            .delete_network_interface()
            .network_interface_id(&eni_id)
            .send()
            .await
            .expect_err("in use");
        assert_eq!(code(&err), "InvalidNetworkInterface.InUse");
        // Device index taken, then the instance type's ENI limit (m5.large: 3).
        let other = ec2
            .create_network_interface()
            .subnet_id(&subnet)
            .send()
            .await
            .expect("create");
        let other_id = other
            .network_interface()
            .and_then(|e| e.network_interface_id())
            .expect("id")
            .to_string();
        let err = ec2
            .attach_network_interface()
            .network_interface_id(&other_id)
            .instance_id(&iid)
            .device_index(1)
            .send()
            .await
            .expect_err("index");
        assert_eq!(code(&err), "InvalidParameterValue");
        // Filters the way ipamd finds its ENIs.
        let mine = ec2
            .describe_network_interfaces()
            .filters(
                Filter::builder()
                    .name("tag:node.k8s.amazonaws.com/instance_id")
                    .values(&iid)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("attachment.instance-id")
                    .values(&iid)
                    .build(),
            )
            .send()
            .await
            .expect("filtered describe");
        assert_eq!(mine.network_interfaces().len(), 1);
        let mac = eni.mac_address().expect("mac").to_string();
        (eni_id, mac)
    })
    .await;

    // The kernel side: eth1 with the ENI's MAC appeared in the node namespace.
    sim.settle().await;
    assert!(
        links(&ns).contains(&("eth1".to_string(), eni_mac.clone())),
        "{:?}",
        links(&ns)
    );

    // IMDS catches up after its lag and lists the new ENI's MAC with device-number 1.
    let imds_url = sim.info.imds_endpoint.clone();
    let m = eni_mac.clone();
    in_netns(&node.netns, move || async move {
        let imds = nodewire_aws::imds::Imds::new(Some(&imds_url)).expect("imds client");
        wait_for("IMDS to list the new ENI", || {
            let imds = imds.clone();
            let m = m.clone();
            async move {
                imds.list("network/interfaces/macs/")
                    .await
                    .ok()?
                    .contains(&format!("{m}/"))
                    .then_some(())
            }
        })
        .await;
        let dev = imds
            .get(&format!("network/interfaces/macs/{m}/device-number"))
            .await
            .expect("imds");
        assert_eq!(dev.as_deref(), Some("1"));
        assert_eq!(
            imds.get(&format!("network/interfaces/macs/{m}/local-ipv4s"))
                .await
                .expect("imds")
                .map(|s| s.lines().count()),
            Some(3)
        );
    })
    .await;

    // Prefixes: the reply lists only the new /28, aligned; the fabric routes it to eth1's link.
    let endpoint = sim.info.ec2_endpoint_local.clone();
    let ec2h = ec2(&endpoint);
    let r = ec2h
        .assign_private_ip_addresses()
        .network_interface_id(&eni_id)
        .ipv4_prefix_count(1)
        .send()
        .await
        .expect("prefix");
    let prefix = r.assigned_ipv4_prefixes()[0]
        .ipv4_prefix()
        .expect("prefix")
        .to_string();
    assert!(r.assigned_private_ip_addresses().is_empty());
    let net: ipnet::Ipv4Net = prefix.parse().expect("cidr");
    assert_eq!((net.prefix_len(), u32::from(net.network()) % 16), (28, 0));
    sim.settle().await;
    let routes = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["-n", &sim.info.fabric_netns, "route"])
            .output()
            .expect("ip route")
            .stdout,
    )
    .to_string();
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains("n1c0d1")),
        "{routes}"
    );

    // Detach: the link goes away; delete.
    let d = ec2h
        .describe_network_interfaces()
        .network_interface_ids(&eni_id)
        .send()
        .await
        .expect("describe");
    let att_id = d.network_interfaces()[0]
        .attachment()
        .and_then(|a| a.attachment_id())
        .expect("att")
        .to_string();
    ec2h.detach_network_interface()
        .attachment_id(&att_id)
        .send()
        .await
        .expect("detach");
    wait_eni(&ec2h, &eni_id, "available").await;
    sim.settle().await;
    assert!(
        !links(&ns).iter().any(|(n, _)| n == "eth1"),
        "{:?}",
        links(&ns)
    );
    ec2h.delete_network_interface()
        .network_interface_id(&eni_id)
        .send()
        .await
        .expect("delete");
    let err = ec2h
        .describe_network_interfaces()
        .network_interface_ids(&eni_id)
        .send()
        .await
        .expect_err("gone");
    assert_eq!(code(&err), "InvalidNetworkInterfaceID.NotFound");

    // Every call from inside the node was attributed to its instance.
    let stats = Admin::new(&sim.info.admin_url)
        .stats()
        .await
        .expect("stats");
    assert_eq!(
        stats.per_instance[&node.instance_id]["AttachNetworkInterface"],
        2
    );
    assert_eq!(stats.actions["AttachNetworkInterface"].errors, 1);
    sim.shutdown().await.expect("shutdown");
    assert!(!netns::exists(&ns), "namespace removed");
}

fn send_udp(ns: &str, from: Ipv4Addr, to: SocketAddr, payload: &'static [u8]) {
    netns::run_in(ns, move || {
        let s = UdpSocket::bind((from, 0)).expect("bind");
        s.send_to(payload, to).expect("send");
    })
    .expect("netns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fabric_delivers_between_nodes_and_enforces_source_destination_check() {
    let (sim, _dir) = up(2, quick()).await;
    let (n1, n2) = (sim.info.nodes[0].clone(), sim.info.nodes[1].clone());
    let admin = Admin::new(&sim.info.admin_url);
    let to = SocketAddr::from((n2.primary_ip, 40_000));
    let rx = netns::run_in(&n2.netns, move || {
        let s = UdpSocket::bind(to).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    })
    .expect("netns");

    // Node to node through the fabric, from the primary address: delivered.
    send_udp(&n1.netns, n1.primary_ip, to, b"from-primary");
    let mut buf = [0u8; 64];
    let (n, src) = rx.recv_from(&mut buf).expect("delivered");
    assert_eq!(
        (&buf[..n], src.ip()),
        (&b"from-primary"[..], std::net::IpAddr::V4(n1.primary_ip))
    );

    // From an address node1's ENI does not own: dropped by the fabric and counted.
    let spoof = Ipv4Addr::new(10, 90, 15, 250);
    let st = std::process::Command::new("ip")
        .args([
            "-n",
            &n1.netns,
            "addr",
            "add",
            &format!("{spoof}/32"),
            "dev",
            "lo",
        ])
        .status()
        .expect("ip addr");
    assert!(st.success());
    let before = admin.fabric_drops().await.expect("drops");
    send_udp(&n1.netns, spoof, to, b"spoofed");
    wait_for("the fabric to count a src/dst-check drop", || {
        let admin = admin.clone();
        async move { (admin.fabric_drops().await.ok()? > before).then_some(()) }
    })
    .await;

    // An address EC2 gave another node's ENI, sent from node1 (a wrong per-ENI route): dropped.
    let ec2 = ec2(&sim.info.ec2_endpoint_local);
    let theirs = ec2
        .assign_private_ip_addresses()
        .network_interface_id(&n2.eni_id)
        .secondary_private_ip_address_count(1)
        .send()
        .await
        .expect("assign to node2");
    let theirs: Ipv4Addr = theirs.assigned_private_ip_addresses()[0]
        .private_ip_address()
        .expect("ip")
        .parse()
        .expect("ipv4");
    sim.settle().await;
    let st = std::process::Command::new("ip")
        .args([
            "-n",
            &n1.netns,
            "addr",
            "add",
            &format!("{theirs}/32"),
            "dev",
            "lo",
        ])
        .status()
        .expect("ip addr");
    assert!(st.success());
    let before = admin.fabric_drops().await.expect("drops");
    send_udp(&n1.netns, theirs, to, b"not-mine");
    wait_for("a drop for another ENI's address", || {
        let admin = admin.clone();
        async move { (admin.fabric_drops().await.ok()? > before).then_some(()) }
    })
    .await;

    // With the source/destination check off for node1's ENI, EC2 forwards it.
    ec2.modify_network_interface_attribute()
        .network_interface_id(&n1.eni_id)
        .source_dest_check(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(false)
                .build(),
        )
        .send()
        .await
        .expect("check off");
    sim.settle().await;
    send_udp(&n1.netns, theirs, to, b"check-off");
    let (n, src) = rx
        .recv_from(&mut buf)
        .expect("delivered with the check off");
    assert_eq!(
        (&buf[..n], src.ip()),
        (&b"check-off"[..], std::net::IpAddr::V4(theirs))
    );
    ec2.modify_network_interface_attribute()
        .network_interface_id(&n1.eni_id)
        .source_dest_check(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(true)
                .build(),
        )
        .send()
        .await
        .expect("check on");
    sim.settle().await;

    // Once EC2 assigns the first address to node1's ENI, its packet is delivered.
    ec2.assign_private_ip_addresses()
        .network_interface_id(&n1.eni_id)
        .private_ip_addresses(spoof.to_string())
        .send()
        .await
        .expect("assign");
    sim.settle().await;
    send_udp(&n1.netns, spoof, to, b"now-owned");
    let (n, src) = rx.recv_from(&mut buf).expect("delivered after assignment");
    assert_eq!(
        (&buf[..n], src.ip()),
        (&b"now-owned"[..], std::net::IpAddr::V4(spoof))
    );
    sim.shutdown().await.expect("shutdown");
}

fn loop_of(dev_dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    std::fs::read_link(dev_dir.join(name)).expect("device symlink")
}

fn dev_size(dev: &std::path::Path) -> u64 {
    let name = dev.file_name().expect("name").to_string_lossy().to_string();
    let sectors: u64 = std::fs::read_to_string(format!("/sys/block/{name}/size"))
        .expect("sysfs")
        .trim()
        .parse()
        .expect("num");
    sectors * 512
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_hotplug_keep_data_grow_and_snapshot() {
    let (sim, _dir) = up(2, quick()).await;
    let (n1, n2) = (sim.info.nodes[0].clone(), sim.info.nodes[1].clone());
    let ec2 = ec2(&sim.info.ec2_endpoint_local);
    let vol = ec2
        .create_volume()
        .availability_zone(&n1.az)
        .size(1)
        .volume_type(aws_sdk_ec2::types::VolumeType::Gp3)
        .client_token("pvc-e2e-1")
        .send()
        .await
        .expect("create");
    let vid = vol.volume_id().expect("id").to_string();
    assert_eq!(vol.state().map(|s| s.as_str()), Some("creating"));
    let again = ec2
        .create_volume()
        .availability_zone(&n1.az)
        .size(1)
        .volume_type(aws_sdk_ec2::types::VolumeType::Gp3)
        .client_token("pvc-e2e-1")
        .send()
        .await
        .expect("replay");
    assert_eq!(
        again.volume_id(),
        Some(vid.as_str()),
        "ClientToken idempotency"
    );
    wait_volume(&ec2, &vid, "volume available", |s| s.0 == "available").await;
    let attach = |inst: String| {
        ec2.attach_volume()
            .volume_id(&vid)
            .instance_id(inst)
            .device("/dev/xvdaa")
            .send()
    };
    attach(n1.instance_id.clone())
        .await
        .expect("attach to node1");
    wait_volume(&ec2, &vid, "attached", |s| {
        s.1.as_deref() == Some("attached")
    })
    .await;
    sim.settle().await;
    let by_id = format!(
        "disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
        vid.replace('-', "")
    );
    let dev = loop_of(&n1.device_dir, &by_id);
    assert_eq!(
        dev,
        loop_of(&n1.device_dir, "xvdaa"),
        "both names point at one device"
    );
    let kname = dev.file_name().expect("name").to_string_lossy().to_string();
    assert_eq!(
        std::fs::read_to_string(n1.device_dir.join("serial").join(&kname)).expect("serial"),
        vid.replace('-', "")
    );
    assert_eq!(dev_size(&dev), 1 << 30);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&dev)
            .expect("open device");
        f.seek(SeekFrom::Start(4096 * 100)).expect("seek");
        f.write_all(b"nodewire-was-here").expect("write");
        f.sync_all().expect("sync");
    }
    let err = ec2
        .delete_volume()
        .volume_id(&vid)
        .send()
        .await
        .expect_err("attached");
    assert_eq!(code(&err), "VolumeInUse");

    ec2.detach_volume()
        .volume_id(&vid)
        .instance_id(&n1.instance_id)
        .send()
        .await
        .expect("detach");
    wait_volume(&ec2, &vid, "available after detach", |s| s.0 == "available").await;
    sim.settle().await;
    assert!(
        !n1.device_dir.join(&by_id).exists(),
        "by-id link removed on detach"
    );

    // Same data on the other node.
    attach(n2.instance_id.clone())
        .await
        .expect("attach to node2");
    wait_volume(&ec2, &vid, "attached to node2", |s| {
        s.1.as_deref() == Some("attached")
    })
    .await;
    sim.settle().await;
    let dev2 = loop_of(&n2.device_dir, &by_id);
    let read_marker = |dev: &std::path::Path| {
        let mut f = std::fs::File::open(dev).expect("open");
        f.seek(SeekFrom::Start(4096 * 100)).expect("seek");
        let mut b = [0u8; 17];
        f.read_exact(&mut b).expect("read");
        b
    };
    assert_eq!(&read_marker(&dev2), b"nodewire-was-here");

    // Growth: the attached device's capacity follows once the modification is optimizing.
    let m = ec2
        .modify_volume()
        .volume_id(&vid)
        .size(2)
        .send()
        .await
        .expect("modify");
    assert_eq!(
        m.volume_modification()
            .and_then(|m| m.modification_state())
            .map(|s| s.as_str()),
        Some("modifying")
    );
    let err = ec2
        .modify_volume()
        .volume_id(&vid)
        .size(3)
        .send()
        .await
        .expect_err("still modifying");
    assert_eq!(code(&err), "VolumeModificationRateExceeded");
    wait_for("modification completed", || {
        let ec2 = ec2.clone();
        let vid = vid.clone();
        async move {
            let d = ec2
                .describe_volumes_modifications()
                .volume_ids(vid)
                .send()
                .await
                .ok()?;
            (d.volumes_modifications()[0]
                .modification_state()
                .map(|s| s.as_str())
                == Some("completed"))
            .then_some(())
        }
    })
    .await;
    sim.settle().await;
    assert_eq!(dev_size(&dev2), 2 << 30);

    // Snapshot, then a volume from it carries the data.
    let snap = ec2
        .create_snapshot()
        .volume_id(&vid)
        .description("e2e")
        .send()
        .await
        .expect("snapshot");
    let sid = snap.snapshot_id().expect("id").to_string();
    wait_for("snapshot completed", || {
        let ec2 = ec2.clone();
        let sid = sid.clone();
        async move {
            let d = ec2
                .describe_snapshots()
                .snapshot_ids(sid)
                .send()
                .await
                .ok()?;
            (d.snapshots()[0].state().map(|s| s.as_str()) == Some("completed")).then_some(())
        }
    })
    .await;
    let restored = ec2
        .create_volume()
        .availability_zone(&n1.az)
        .snapshot_id(&sid)
        .volume_type(aws_sdk_ec2::types::VolumeType::Gp3)
        .send()
        .await
        .expect("from snapshot");
    let rid = restored.volume_id().expect("id").to_string();
    assert_eq!(restored.size(), Some(2));
    wait_volume(&ec2, &rid, "restored available", |s| s.0 == "available").await;
    ec2.attach_volume()
        .volume_id(&rid)
        .instance_id(&n1.instance_id)
        .device("/dev/xvdab")
        .send()
        .await
        .expect("attach restored");
    wait_volume(&ec2, &rid, "restored attached", |s| {
        s.1.as_deref() == Some("attached")
    })
    .await;
    sim.settle().await;
    assert_eq!(
        &read_marker(&loop_of(&n1.device_dir, "xvdab")),
        b"nodewire-was-here"
    );

    let state_dir = sim.info.state_dir.clone();
    sim.shutdown().await.expect("shutdown");
    assert!(
        e2e::node::blockdev::loops_under(&state_dir).is_empty(),
        "loop devices freed"
    );
    assert!(!state_dir.exists(), "state directory removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_faults_and_latency_are_steerable() {
    let (sim, _dir) = up(1, quick()).await;
    let admin = Admin::new(&sim.info.admin_url);
    let node = sim.info.nodes[0].clone();
    let ec2 = ec2(&sim.info.ec2_endpoint_local);

    admin
        .throttle(ThrottleReq {
            class: Some(ActionClass::Mutating),
            capacity: Some(2.0),
            refill_per_sec: Some(0.0),
            enabled: None,
        })
        .await
        .expect("throttle");
    let tag = |k: &str| {
        ec2.create_tags()
            .resources(&node.eni_id)
            .tags(Tag::builder().key(k).value("v").build())
            .send()
    };
    tag("a").await.expect("first");
    tag("b").await.expect("second");
    let err = tag("c").await.expect_err("bucket empty");
    assert_eq!(code(&err), "RequestLimitExceeded");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    ec2.describe_vpcs()
        .send()
        .await
        .expect("other classes unaffected");
    admin
        .throttle(ThrottleReq {
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .expect("off");
    tag("c").await.expect("throttling off");

    admin
        .set_fault(
            "DescribeVpcs",
            Fault {
                error_rate: 1.0,
                error_code: "Unavailable".into(),
                latency_ms: 0,
            },
        )
        .await
        .expect("fault");
    let err = ec2.describe_vpcs().send().await.expect_err("injected");
    assert_eq!(
        (code(&err), err.raw_response().map(|r| r.status().as_u16())),
        ("Unavailable".to_string(), Some(503))
    );
    admin
        .set_fault(
            "*",
            Fault {
                error_rate: 0.0,
                error_code: "InternalError".into(),
                latency_ms: 150,
            },
        )
        .await
        .expect("latency");
    // `*` applies to actions without a fault of their own; DescribeVpcs keeps its own (errors).
    let t = std::time::Instant::now();
    ec2.describe_subnets().send().await.expect("slow but fine");
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "latency injected"
    );
    admin.clear_faults().await.expect("clear");

    let stats = admin.stats().await.expect("stats");
    let c = &stats.actions["CreateTags"];
    assert_eq!((c.calls, c.throttled), (4, 1));
    assert_eq!(stats.actions["DescribeVpcs"].injected, 1);
    sim.shutdown().await.expect("shutdown");
}

/// Raw HTTP/1.0 exchange inside a namespace; returns the status code.
fn http_status(ns: &str, addr: SocketAddr, req: String) -> u16 {
    netns::run_in(ns, move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(req.as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status")
    })
    .expect("netns")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_requires_v2_tokens() {
    let (sim, _dir) = up(1, quick()).await;
    let ns = sim.info.nodes[0].netns.clone();
    let imds = SocketAddr::from((e2e::node::METADATA_IP, 80));
    let get = "GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n".to_string();
    assert_eq!(http_status(&ns, imds, get), 401, "IMDSv1 refused");
    let put = "PUT /latest/api/token HTTP/1.0\r\n\r\n".to_string();
    assert_eq!(http_status(&ns, imds, put), 400, "token needs a TTL");
    let fwd = "PUT /latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n".to_string();
    assert_eq!(
        http_status(&ns, imds, fwd),
        403,
        "proxied token requests refused"
    );
    let bad =
        "GET /latest/meta-data/instance-id HTTP/1.0\r\nX-aws-ec2-metadata-token: nope\r\n\r\n"
            .to_string();
    assert_eq!(http_status(&ns, imds, bad), 401);
    sim.shutdown().await.expect("shutdown");
}

#[test]
fn cli_up_prints_one_json_line_and_down_cleans_up_after_a_crash() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpcsim"))
        .args(["up", "--nodes", "2", "--transition-ms", "0", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vpcsim");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read line");
    let info: e2e::node::UpInfo = serde_json::from_str(&line).expect("one JSON line");
    assert_eq!(info.nodes.len(), 2);
    for n in &info.nodes {
        assert!(netns::exists(&n.netns));
        assert!(links(&n.netns).contains(&("eth0".to_string(), n.mac.clone())));
    }
    // Attach a volume so a loop device exists, then crash.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ec2 = ec2(&info.ec2_endpoint_local);
        let v = ec2
            .create_volume()
            .availability_zone(&info.nodes[0].az)
            .size(1)
            .send()
            .await
            .expect("create");
        let vid = v.volume_id().expect("id").to_string();
        ec2.attach_volume()
            .volume_id(&vid)
            .instance_id(&info.nodes[0].instance_id)
            .device("/dev/xvdba")
            .send()
            .await
            .expect("attach");
        wait_for("device to appear", || {
            let p = info.nodes[0].device_dir.join("xvdba");
            async move { p.exists().then_some(()) }
        })
        .await;
    });
    assert_eq!(e2e::node::blockdev::loops_under(&info.state_dir).len(), 1);
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(
        netns::exists(&info.fabric_netns),
        "a crash leaves things behind"
    );
    let st = Command::new(env!("CARGO_BIN_EXE_vpcsim"))
        .args(["down", "--state-dir"])
        .arg(&state)
        .status()
        .expect("down");
    assert!(st.success());
    assert!(!netns::exists(&info.fabric_netns));
    assert!(info.nodes.iter().all(|n| !netns::exists(&n.netns)));
    assert!(e2e::node::blockdev::loops_under(&info.state_dir).is_empty());
    assert!(!state.exists());
}

#[test]
fn cli_up_stops_cleanly_on_sigterm() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpcsim"))
        .args(["up", "--nodes", "1", "--state-dir"])
        .arg(dir.path().join("s"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    let info: e2e::node::UpInfo = serde_json::from_str(&line).expect("json");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(!netns::exists(&info.fabric_netns));
    assert!(!netns::exists(&info.nodes[0].netns));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_attach_volume_shows_up_on_both_nodes_and_detaches_per_node() {
    let (sim, _dir) = up(2, quick()).await;
    let (n1, n2) = (sim.info.nodes[0].clone(), sim.info.nodes[1].clone());
    let ec2 = ec2(&sim.info.ec2_endpoint_local);
    let v = ec2
        .create_volume()
        .availability_zone(&n1.az)
        .size(4)
        .volume_type(aws_sdk_ec2::types::VolumeType::Io2)
        .iops(100)
        .multi_attach_enabled(true)
        .send()
        .await
        .expect("io2 multi-attach");
    let vid = v.volume_id().expect("id").to_string();
    wait_volume(&ec2, &vid, "available", |s| s.0 == "available").await;
    for n in [&n1, &n2] {
        ec2.attach_volume()
            .volume_id(&vid)
            .instance_id(&n.instance_id)
            .device("/dev/xvdbb")
            .send()
            .await
            .expect("attach");
    }
    wait_for("two attachments", || {
        let ec2 = ec2.clone();
        let vid = vid.clone();
        async move {
            let d = ec2.describe_volumes().volume_ids(vid).send().await.ok()?;
            let atts = d.volumes()[0].attachments();
            (atts.len() == 2
                && atts
                    .iter()
                    .all(|a| a.state().map(|s| s.as_str()) == Some("attached")))
            .then_some(())
        }
    })
    .await;
    sim.settle().await;
    let (d1, d2) = (
        loop_of(&n1.device_dir, "xvdbb"),
        loop_of(&n2.device_dir, "xvdbb"),
    );
    assert_ne!(d1, d2, "one device per node");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&d1)
            .expect("open");
        f.write_all(b"shared-bytes").expect("write");
        f.sync_all().expect("sync");
    }
    let mut b = [0u8; 12];
    std::fs::File::open(&d2)
        .expect("open")
        .read_exact(&mut b)
        .expect("read");
    assert_eq!(&b, b"shared-bytes");
    ec2.detach_volume()
        .volume_id(&vid)
        .instance_id(&n1.instance_id)
        .send()
        .await
        .expect("detach node1");
    wait_for("one attachment left", || {
        let ec2 = ec2.clone();
        let vid = vid.clone();
        async move {
            let d = ec2.describe_volumes().volume_ids(vid).send().await.ok()?;
            (d.volumes()[0].attachments().len() == 1).then_some(())
        }
    })
    .await;
    sim.settle().await;
    assert!(!n1.device_dir.join("xvdbb").exists(), "gone from node1");
    assert_eq!(
        loop_of(&n2.device_dir, "xvdbb"),
        d2,
        "node2 keeps its device"
    );
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_cleans_up_even_when_the_state_directory_went_first() {
    let (sim, dir) = up(1, quick()).await;
    let ns = sim.info.nodes[0].netns.clone();
    let fabric = sim.info.fabric_netns.clone();
    // A panicking test drops its temporary directory before the simulation.
    drop(dir);
    drop(sim);
    assert!(
        !netns::exists(&ns) && !netns::exists(&fabric),
        "namespaces removed"
    );
}
