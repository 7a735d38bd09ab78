use super::ebs::CreateVolume;
use super::net::{Assign, CreateEni, RunInstance};
use super::*;

fn sim() -> (Sim, Instant) {
    let now = Instant::now();
    let cfg = SimConfig {
        timing: Timing::zero(),
        ..SimConfig::default()
    };
    (Sim::new(cfg), now)
}

fn subnet_a(s: &Sim) -> String {
    s.subnet_in_zone("us-east-1a").expect("zone a").id.clone()
}

fn launch(s: &mut Sim, now: Instant, t: &str) -> String {
    let sub = subnet_a(s);
    s.run_instance(
        now,
        RunInstance {
            instance_type: t.into(),
            subnet_id: Some(sub),
            ..Default::default()
        },
    )
    .expect("launch")
}

fn eni(s: &mut Sim, count: u32, prefixes: u32) -> String {
    let sub = subnet_a(s);
    s.create_eni(CreateEni {
        subnet_id: sub,
        secondary_count: count,
        prefix_count: prefixes,
        ..Default::default()
    })
    .expect("create eni")
}

#[test]
fn launch_creates_primary_eni_and_root_volume() {
    let (mut s, now) = sim();
    let i = launch(&mut s, now, "m5.large");
    let inst = s.instance(&i).expect("exists").clone();
    let e = s.eni(&inst.primary_eni).expect("primary eni");
    let a = e.attachment.as_ref().expect("attached");
    assert_eq!(
        (a.device_index, a.delete_on_termination, e.status()),
        (0, true, "in-use")
    );
    assert_eq!(e.primary_ip(), inst.private_ip);
    assert!(
        s.subnet(&inst.subnet_id)
            .expect("subnet")
            .cidr
            .contains(&inst.private_ip)
    );
    let root = s
        .volume(inst.root_volume.as_deref().expect("root"))
        .expect("root volume");
    assert_eq!(root.attachments[0].device, "/dev/xvda");
    assert!(
        s.drain_events().is_empty(),
        "the root volume and eth0 are not hot-plugged"
    );
}

#[test]
fn eni_limit_per_instance_type_and_device_index_uniqueness() {
    let (mut s, now) = sim();
    let i = launch(&mut s, now, "m5.large"); // 3 ENIs
    let e1 = eni(&mut s, 0, 0);
    let e2 = eni(&mut s, 0, 0);
    let e3 = eni(&mut s, 0, 0);
    s.attach_eni(now, &e1, &i, 1, 0).expect("second ENI");
    let err = s
        .attach_eni(now, &e2, &i, 1, 0)
        .expect_err("device index 1 taken");
    assert_eq!(err.code, "InvalidParameterValue");
    s.attach_eni(now, &e2, &i, 2, 0).expect("third ENI");
    let err = s
        .attach_eni(now, &e3, &i, 3, 0)
        .expect_err("over the limit");
    assert_eq!(err.code, "AttachmentLimitExceeded");
    let err = s
        .attach_eni(now, &e1, &i, 5, 0)
        .expect_err("already attached");
    assert_eq!(err.code, "InvalidNetworkInterface.InUse");
    let err = s
        .delete_eni(&e1)
        .expect_err("attached ENI cannot be deleted");
    assert_eq!(err.code, "InvalidNetworkInterface.InUse");
}

#[test]
fn multi_card_type_limits_per_card() {
    let (mut s, now) = sim();
    let i = launch(&mut s, now, "c6in.32xlarge"); // 2 cards × 8
    for d in 1..8 {
        let e = eni(&mut s, 0, 0);
        s.attach_eni(now, &e, &i, d, 0).expect("card 0 fills to 8");
    }
    let e = eni(&mut s, 0, 0);
    assert_eq!(
        s.attach_eni(now, &e, &i, 8, 0)
            .expect_err("card 0 full")
            .code,
        "AttachmentLimitExceeded"
    );
    s.attach_eni(now, &e, &i, 0, 1)
        .expect("card 1 has room, device index 0 on card 1 is free");
    let e = eni(&mut s, 0, 0);
    assert_eq!(
        s.attach_eni(now, &e, &i, 1, 2).expect_err("no card 2").code,
        "InvalidParameterValue"
    );
}

#[test]
fn ip_limit_counts_ips_and_prefixes() {
    let (mut s, now) = sim();
    let i = launch(&mut s, now, "t3.medium"); // 6 IPv4 per ENI
    let e = eni(&mut s, 0, 0);
    s.attach_eni(now, &e, &i, 1, 0).expect("attach");
    let (ips, _) = s
        .assign_private_ips(
            now,
            Assign {
                eni_id: e.clone(),
                count: 3,
                ..Default::default()
            },
        )
        .expect("3 IPs");
    assert_eq!(ips.len(), 3, "reply lists only new IPs");
    let (_, p) = s
        .assign_private_ips(
            now,
            Assign {
                eni_id: e.clone(),
                prefix_count: 2,
                ..Default::default()
            },
        )
        .expect("2 prefixes");
    assert_eq!(p.len(), 2);
    let err = s
        .assign_private_ips(
            now,
            Assign {
                eni_id: e.clone(),
                count: 1,
                ..Default::default()
            },
        )
        .expect_err("6 slots used");
    assert_eq!(err.code, "PrivateIpAddressLimitExceeded");
    assert_eq!(s.eni(&e).expect("eni").address_slots(), 6);
}

#[test]
fn prefixes_are_aligned_and_addresses_unique_across_the_subnet() {
    let (mut s, _) = sim();
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let e = eni(&mut s, 9, 3);
        let eni = s.eni(&e).expect("eni").clone();
        for ip in &eni.private_ips {
            assert!(seen.insert(*ip), "{ip} handed out twice");
        }
        for p in &eni.prefixes {
            assert_eq!(p.prefix_len(), 28);
            assert_eq!(u32::from(p.network()) % 16, 0, "{p} not aligned");
            for ip in p.hosts().chain([p.network(), p.broadcast()]) {
                assert!(seen.insert(ip), "{ip} of {p} overlaps");
            }
        }
    }
    let sub = s.subnet(&subnet_a(&s)).expect("subnet").clone();
    assert_eq!(sub.used.len(), seen.len());
    assert!(
        seen.iter().all(|ip| !sub.is_reserved(*ip)),
        "reserved addresses never handed out"
    );
}

#[test]
fn explicit_addresses_are_validated() {
    let (mut s, now) = sim();
    let sub = s.subnet(&subnet_a(&s)).expect("subnet").clone();
    let base = u32::from(sub.cidr.network());
    let ip = Ipv4Addr::from(base + 10);
    let e = s
        .create_eni(CreateEni {
            subnet_id: sub.id.clone(),
            private_ips: vec![(ip, true)],
            ..Default::default()
        })
        .expect("explicit primary");
    assert_eq!(s.eni(&e).expect("eni").primary_ip(), ip);
    let dup = CreateEni {
        subnet_id: sub.id.clone(),
        private_ips: vec![(ip, true)],
        ..Default::default()
    };
    assert_eq!(
        s.create_eni(dup).expect_err("in use").code,
        "InvalidIPAddress.InUse"
    );
    let reserved = CreateEni {
        subnet_id: sub.id.clone(),
        private_ips: vec![(Ipv4Addr::from(base + 1), true)],
        ..Default::default()
    };
    assert_eq!(
        s.create_eni(reserved).expect_err("reserved").code,
        "InvalidParameterValue"
    );
    let outside = Assign {
        eni_id: e.clone(),
        ips: vec!["192.168.9.9".parse().expect("ip")],
        ..Default::default()
    };
    assert_eq!(
        s.assign_private_ips(now, outside)
            .expect_err("outside")
            .code,
        "InvalidParameterValue"
    );
    let misaligned = Assign {
        eni_id: e.clone(),
        prefixes: vec!["10.90.1.8/28".parse().expect("net")],
        ..Default::default()
    };
    assert_eq!(
        s.assign_private_ips(now, misaligned)
            .expect_err("misaligned")
            .code,
        "InvalidParameterValue"
    );
    let aligned: ipnet::Ipv4Net = "10.90.1.16/28".parse().expect("net");
    let (_, got) = s
        .assign_private_ips(
            now,
            Assign {
                eni_id: e.clone(),
                prefixes: vec![aligned],
                ..Default::default()
            },
        )
        .expect("explicit prefix");
    assert_eq!(got, vec![aligned]);
}

#[test]
fn unassign_refuses_primary_and_foreign_addresses() {
    let (mut s, now) = sim();
    let e = eni(&mut s, 2, 1);
    let eni = s.eni(&e).expect("eni").clone();
    let err = s
        .unassign_private_ips(now, &e, &[eni.primary_ip()], &[])
        .expect_err("primary");
    assert_eq!(err.code, "InvalidParameterValue");
    let err = s
        .unassign_private_ips(now, &e, &["10.90.15.200".parse().expect("ip")], &[])
        .expect_err("foreign");
    assert_eq!(err.code, "InvalidParameterValue");
    let before = s.subnet(&eni.subnet_id).expect("subnet").available();
    s.unassign_private_ips(now, &e, &[eni.private_ips[1]], &eni.prefixes)
        .expect("unassign");
    let after = s.subnet(&eni.subnet_id).expect("subnet").available();
    assert_eq!(after, before + 1 + 16, "addresses go back to the subnet");
}

#[test]
fn subnet_exhaustion_and_no_free_cidr_block() {
    let cfg = SimConfig {
        timing: Timing::zero(),
        subnet_prefix_len: 26,
        ..SimConfig::default()
    }; // 64 addresses
    let now = Instant::now();
    let mut s = Sim::new(cfg);
    let sub = subnet_a(&s);
    assert_eq!(s.subnet(&sub).expect("subnet").available(), 59);
    // Block 0 holds .0-.3 and block 3 the broadcast: only blocks 1 and 2 can be prefixes.
    let e = s
        .create_eni(CreateEni {
            subnet_id: sub.clone(),
            prefix_count: 2,
            private_ips: vec![("10.90.0.4".parse().expect("ip"), true)],
            ..Default::default()
        })
        .expect("two prefixes");
    let err = s
        .assign_private_ips(
            now,
            Assign {
                eni_id: e.clone(),
                prefix_count: 1,
                ..Default::default()
            },
        )
        .expect_err("no aligned /28 left");
    assert_eq!(err.code, "InsufficientCidrBlocks");
    let free = s.subnet(&sub).expect("subnet").available() as u32;
    let err = s
        .create_eni(CreateEni {
            subnet_id: sub.clone(),
            secondary_count: free,
            ..Default::default()
        })
        .expect_err("one too many");
    assert_eq!(err.code, "InsufficientFreeAddressesInSubnet");
    assert_eq!(
        s.subnet(&sub).expect("subnet").available() as u32,
        free,
        "a failed call claims nothing"
    );
}

#[test]
fn attach_passes_through_attaching_and_emits_hotplug_events() {
    let now = Instant::now();
    let mut s = Sim::new(SimConfig {
        timing: Timing {
            attach_ms: 100,
            detach_ms: 50,
            ..Timing::zero()
        },
        ..SimConfig::default()
    });
    let i = launch(&mut s, now, "m5.large");
    let e = eni(&mut s, 1, 0);
    s.attach_eni(now, &e, &i, 1, 0).expect("attach");
    assert_eq!(s.eni(&e).expect("eni").status(), "attaching");
    assert!(
        s.imds_at(&i, now).expect("view").enis.len() == 1,
        "IMDS does not show it yet"
    );
    s.advance(now + Duration::from_millis(99));
    assert_eq!(s.eni(&e).expect("eni").status(), "attaching");
    assert!(s.drain_events().is_empty());
    s.advance(now + Duration::from_millis(100));
    assert_eq!(s.eni(&e).expect("eni").status(), "in-use");
    let ev = s.drain_events();
    assert!(
        matches!(
            &ev[..],
            [Event::EniAttached {
                device_index: 1,
                ..
            }]
        ),
        "{ev:?}"
    );
    let att = s
        .eni(&e)
        .expect("eni")
        .attachment
        .clone()
        .expect("attachment");
    s.detach_eni(now + Duration::from_millis(200), &att.id, false)
        .expect("detach");
    assert_eq!(s.eni(&e).expect("eni").status(), "detaching");
    s.advance(now + Duration::from_millis(250));
    assert_eq!(s.eni(&e).expect("eni").status(), "available");
    assert!(matches!(&s.drain_events()[..], [Event::EniDetached { .. }]));
    let primary_att = s
        .eni(&s.instance(&i).expect("i").primary_eni.clone())
        .expect("eni")
        .attachment
        .clone()
        .expect("att");
    assert_eq!(
        s.detach_eni(now, &primary_att.id, false)
            .expect_err("device 0")
            .code,
        "OperationNotPermitted"
    );
}

#[test]
fn imds_lags_behind_ec2() {
    let now = Instant::now();
    let mut s = Sim::new(SimConfig {
        timing: Timing {
            imds_lag_ms: 500,
            ..Timing::zero()
        },
        ..SimConfig::default()
    });
    let i = launch(&mut s, now, "m5.large");
    let primary = s.instance(&i).expect("i").primary_eni.clone();
    assert_eq!(
        s.imds_at(&i, now).expect("boot view visible at once").enis[0]
            .local_ipv4s
            .len(),
        1
    );
    let t1 = now + Duration::from_millis(10);
    s.assign_private_ips(
        t1,
        Assign {
            eni_id: primary,
            count: 2,
            ..Default::default()
        },
    )
    .expect("assign");
    assert_eq!(
        s.imds_at(&i, t1 + Duration::from_millis(499))
            .expect("view")
            .enis[0]
            .local_ipv4s
            .len(),
        1,
        "still stale"
    );
    assert_eq!(
        s.imds_at(&i, t1 + Duration::from_millis(500))
            .expect("view")
            .enis[0]
            .local_ipv4s
            .len(),
        3,
        "caught up"
    );
}

#[test]
fn terminate_honours_delete_on_termination() {
    let (mut s, now) = sim();
    let i = launch(&mut s, now, "m5.large");
    let keep = eni(&mut s, 0, 0);
    let gone = eni(&mut s, 0, 0);
    s.attach_eni(now, &keep, &i, 1, 0).expect("attach");
    let (att, _) = s.attach_eni(now, &gone, &i, 2, 0).expect("attach");
    s.modify_eni_attribute(&gone, Some((att, true)), None, None, None)
        .expect("DeleteOnTermination");
    let primary = s.instance(&i).expect("i").primary_eni.clone();
    s.drain_events();
    s.terminate_instance(now, &i).expect("terminate");
    assert_eq!(s.eni(&keep).expect("kept").status(), "available");
    assert_eq!(
        s.eni(&gone).expect_err("deleted").code,
        "InvalidNetworkInterfaceID.NotFound"
    );
    assert_eq!(
        s.eni(&primary).expect_err("primary deleted").code,
        "InvalidNetworkInterfaceID.NotFound"
    );
    assert_eq!(s.instance(&i).expect("i").state, InstanceState::Terminated);
}

fn vol(s: &mut Sim, now: Instant, size: u32, t: &str) -> String {
    s.create_volume(
        now,
        CreateVolume {
            size_gib: Some(size),
            volume_type: Some(t.into()),
            az: Some("us-east-1a".into()),
            ..Default::default()
        },
    )
    .expect("create volume")
}

#[test]
#[allow(clippy::type_complexity)]
fn volume_type_limits() {
    use super::ebs::validate_spec;
    let cases: &[(
        u32,
        &str,
        Option<u32>,
        Option<u32>,
        Result<(Option<u32>, Option<u32>), &str>,
    )] = &[
        (10, "gp3", None, None, Ok((Some(3000), Some(125)))),
        (1, "gp3", None, None, Ok((Some(3000), Some(125)))),
        (10, "gp3", Some(6000), None, Err("InvalidParameterValue")), // 600/GiB > 500
        (
            20,
            "gp3",
            Some(10000),
            Some(1000),
            Ok((Some(10000), Some(1000))),
        ),
        (
            20,
            "gp3",
            Some(3000),
            Some(1000),
            Err("InvalidParameterValue"),
        ), // > 0.25 MiB/s per IOPS
        (0, "gp3", None, None, Err("InvalidParameterValue")),
        (16385, "gp2", None, None, Err("InvalidParameterValue")),
        (
            10,
            "gp2",
            Some(100),
            None,
            Err("InvalidParameterCombination"),
        ),
        (10, "io1", None, None, Err("MissingParameter")),
        (10, "io1", Some(500), None, Ok((Some(500), None))),
        (10, "io1", Some(501), None, Err("InvalidParameterValue")),
        (100, "io2", Some(64000), None, Ok((Some(64000), None))),
        (300, "io2", Some(256001), None, Err("InvalidParameterValue")),
        (100, "st1", None, None, Err("InvalidParameterValue")),
        (125, "sc1", None, None, Ok((None, None))),
        (1025, "standard", None, None, Err("InvalidParameterValue")),
        (10, "gp9", None, None, Err("InvalidParameterValue")),
    ];
    for (size, t, iops, tp, want) in cases {
        let got = validate_spec(*size, t, *iops, *tp)
            .map(|s| (s.iops, s.throughput))
            .map_err(|e| e.code);
        assert_eq!(
            got,
            (*want).map_err(String::from),
            "{size} GiB {t} iops={iops:?} tp={tp:?}"
        );
    }
    let msg = validate_spec(100, "io1", Some(70000), None)
        .expect_err("too high")
        .message;
    assert_eq!(
        msg, "Volume iops of 70000 is too high; maximum is 64000",
        "upstream CSI parses this text"
    );
}

#[test]
fn create_volume_idempotency() {
    let (mut s, now) = sim();
    let req = CreateVolume {
        size_gib: Some(10),
        volume_type: Some("gp3".into()),
        az: Some("us-east-1a".into()),
        client_token: Some("pvc-1".into()),
        ..Default::default()
    };
    let a = s.create_volume(now, req.clone()).expect("first");
    let b = s.create_volume(now, req.clone()).expect("replay");
    assert_eq!(a, b, "same token and parameters: same volume");
    assert_eq!(s.volumes.values().filter(|v| !v.is_root).count(), 1);
    let err = s
        .create_volume(
            now,
            CreateVolume {
                size_gib: Some(11),
                ..req
            },
        )
        .expect_err("other size");
    assert_eq!(err.code, "IdempotentParameterMismatch");
    let dry = CreateVolume {
        size_gib: Some(10),
        volume_type: Some("gp3".into()),
        az: Some("us-east-1a".into()),
        dry_run: true,
        ..Default::default()
    };
    assert_eq!(
        s.create_volume(now, dry).expect_err("dry run").code,
        "DryRunOperation"
    );
}

#[test]
fn volume_attach_rules() {
    let (mut s, now) = sim();
    let i = launch(&mut s, now, "m5.large");
    let v = vol(&mut s, now, 10, "gp3");
    let v2 = vol(&mut s, now, 10, "gp3");
    assert_eq!(
        s.attach_volume(now, &v, &i, "foo")
            .expect_err("bad name")
            .code,
        "InvalidParameterValue"
    );
    assert_eq!(
        s.attach_volume(now, &v, &i, "/dev/xvda")
            .expect_err("root's name")
            .code,
        "InvalidParameterValue"
    );
    s.attach_volume(now, &v, &i, "/dev/xvdaa").expect("attach");
    assert_eq!(
        s.attach_volume(now, &v2, &i, "/dev/xvdaa")
            .expect_err("name in use")
            .code,
        "InvalidParameterValue"
    );
    assert_eq!(s.delete_volume(&v).expect_err("in use").code, "VolumeInUse");
    let other = s
        .create_volume(
            now,
            CreateVolume {
                size_gib: Some(1),
                volume_type: Some("gp3".into()),
                az: Some("us-east-1b".into()),
                ..Default::default()
            },
        )
        .expect("zone b");
    assert_eq!(
        s.attach_volume(now, &other, &i, "/dev/xvdab")
            .expect_err("zone")
            .code,
        "InvalidVolume.ZoneMismatch"
    );
    let i2 = launch(&mut s, now, "m5.large");
    assert_eq!(
        s.attach_volume(now, &v, &i2, "/dev/xvdaa")
            .expect_err("attached elsewhere")
            .code,
        "VolumeInUse"
    );
    assert_eq!(
        s.detach_volume(now, &v, Some(&i2), None, false)
            .expect_err("wrong instance")
            .code,
        "InvalidAttachment.NotFound"
    );
    s.detach_volume(now, &v, Some(&i), None, false)
        .expect("detach");
    assert_eq!(s.volume(&v).expect("v").state, VolumeState::Available);
    assert_eq!(
        s.detach_volume(now, &v, None, None, false)
            .expect_err("not attached")
            .code,
        "IncorrectState"
    );
    s.delete_volume(&v).expect("delete");
    assert_eq!(
        s.volume(&v).expect_err("gone").code,
        "InvalidVolume.NotFound"
    );
}

#[test]
fn volume_attachment_limit_shares_slots_with_enis() {
    let (mut s, now) = sim();
    let i = launch(&mut s, now, "m5.large"); // 27 shared, root uses one
    let e = eni(&mut s, 0, 0);
    s.attach_eni(now, &e, &i, 1, 0).expect("eni");
    let mut n = 0;
    let err = loop {
        let v = vol(&mut s, now, 1, "gp3");
        let dev = format!(
            "/dev/xvd{}{}",
            (b'a' + (n / 26) as u8) as char,
            (b'a' + (n % 26) as u8) as char
        );
        match s.attach_volume(now, &v, &i, &dev) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err.code, "AttachmentLimitExceeded");
    assert_eq!(
        n,
        27 - 1 - 1,
        "27 slots minus the root volume minus the second ENI"
    );
}

#[test]
fn modify_volume_phases_and_rate_limit() {
    let now = Instant::now();
    let mut s = Sim::new(SimConfig {
        timing: Timing {
            modify_ms: 100,
            ..Timing::zero()
        },
        ..SimConfig::default()
    });
    let v = vol(&mut s, now, 10, "gp3");
    assert_eq!(
        s.modify_volume(now, &v, Some(5), None, None, None)
            .expect_err("shrink")
            .code,
        "InvalidParameterValue"
    );
    let m = s
        .modify_volume(now, &v, Some(20), None, Some(4000), None)
        .expect("grow");
    assert_eq!(m.state, ModState::Modifying);
    let err = s
        .modify_volume(now, &v, Some(30), None, None, None)
        .expect_err("in progress");
    assert_eq!(err.code, "VolumeModificationRateExceeded");
    s.drain_events();
    s.advance(now + Duration::from_millis(100));
    assert_eq!(
        s.modifications[&v].last().expect("mod").state,
        ModState::Optimizing
    );
    assert_eq!(
        s.volume(&v).expect("v").spec.size_gib,
        20,
        "new size usable while optimizing"
    );
    assert_eq!(
        s.drain_events(),
        vec![Event::VolumeResized {
            volume_id: v.clone(),
            size_gib: 20
        }]
    );
    s.advance(now + Duration::from_millis(200));
    assert_eq!(
        s.modifications[&v].last().expect("mod").state,
        ModState::Completed
    );
    let m = s
        .modify_volume(
            now + Duration::from_millis(200),
            &v,
            None,
            Some("io2".into()),
            Some(1000),
            None,
        )
        .expect("type change");
    assert_eq!(
        (
            m.target.volume_type.as_str(),
            m.target.iops,
            m.target.throughput
        ),
        ("io2", Some(1000), None)
    );
}

#[test]
fn snapshots_and_volumes_from_them() {
    let now = Instant::now();
    let mut s = Sim::new(SimConfig {
        timing: Timing {
            snapshot_ms: 100,
            ..Timing::zero()
        },
        ..SimConfig::default()
    });
    let v = vol(&mut s, now, 10, "gp3");
    let snap = s
        .create_snapshot(now, &v, "backup".into(), Tags::new())
        .expect("snapshot");
    assert_eq!(
        s.snapshot(&snap).expect("snap").state,
        SnapshotState::Pending
    );
    let from = CreateVolume {
        snapshot_id: Some(snap.clone()),
        az: Some("us-east-1b".into()),
        volume_type: Some("gp3".into()),
        ..Default::default()
    };
    assert_eq!(
        s.create_volume(now, from.clone())
            .expect_err("pending")
            .code,
        "IncorrectState"
    );
    s.advance(now + Duration::from_millis(100));
    let nv = s.create_volume(now, from.clone()).expect("from snapshot");
    assert_eq!(
        s.volume(&nv).expect("v").spec.size_gib,
        10,
        "size defaults to the snapshot's"
    );
    let small = CreateVolume {
        size_gib: Some(5),
        ..from
    };
    assert_eq!(
        s.create_volume(now, small).expect_err("smaller").code,
        "InvalidParameterValue"
    );
    let ev = s.drain_events();
    assert!(ev.contains(&Event::SnapshotStarted {
        snapshot_id: snap.clone(),
        volume_id: v.clone()
    }));
    assert!(ev.contains(&Event::VolumeCreated {
        volume_id: nv,
        size_gib: 10,
        from_snapshot: Some(snap.clone())
    }));
    s.delete_snapshot(&snap).expect("delete");
    assert_eq!(
        s.delete_snapshot(&snap).expect_err("twice").code,
        "InvalidSnapshot.NotFound"
    );
}

#[test]
fn paging_walks_everything_once() {
    let items: Vec<String> = (0..23).map(|i| format!("eni-{i:03}")).collect();
    let mut token = None;
    let mut seen = Vec::new();
    loop {
        let (page, next) = page(
            items.clone(),
            |s| s.as_str(),
            Some(5),
            token.as_deref(),
            (5, 1000),
        )
        .expect("page");
        seen.extend(page);
        match next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, items);
    assert!(
        page(items, |s| s.as_str(), Some(4), None, (5, 1000)).is_err(),
        "MaxResults below 5"
    );
}

#[test]
fn tags_and_filters() {
    let (mut s, _) = sim();
    let e = eni(&mut s, 0, 0);
    let e2 = eni(&mut s, 0, 0);
    s.create_tags(
        std::slice::from_ref(&e),
        &[("node.k8s.amazonaws.com/instance_id".into(), "i-1".into())],
    )
    .expect("tag");
    let got = filter::apply(
        s.enis.values().cloned().collect(),
        &[filter::Filter {
            name: "tag:node.k8s.amazonaws.com/instance_id".into(),
            values: vec!["i-*".into()],
        }],
        filter::ENI,
        &filter::eni,
    )
    .expect("filter");
    assert_eq!(
        got.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        vec![e.clone()]
    );
    let err = filter::apply(
        Vec::<Eni>::new(),
        &[filter::Filter {
            name: "bogus".into(),
            values: vec![],
        }],
        filter::ENI,
        &filter::eni,
    )
    .expect_err("unknown filter");
    assert_eq!(err.code, "InvalidParameterValue");
    s.delete_tags(
        std::slice::from_ref(&e),
        &[(
            "node.k8s.amazonaws.com/instance_id".into(),
            Some("other".into()),
        )],
    )
    .expect("no-op");
    assert_eq!(
        s.eni(&e).expect("e").tags.len(),
        1,
        "value mismatch keeps the tag"
    );
    s.delete_tags(
        std::slice::from_ref(&e),
        &[("node.k8s.amazonaws.com/instance_id".into(), None)],
    )
    .expect("delete");
    assert!(s.eni(&e).expect("e").tags.is_empty());
    assert_eq!(
        s.create_tags(&[e2, "eni-0000".into()], &[("k".into(), "v".into())])
            .expect_err("bad id")
            .code,
        "InvalidNetworkInterfaceID.NotFound"
    );
}

#[test]
fn xen_types_refuse_prefixes_and_address_changes_reach_the_fabric() {
    let (mut s, now) = sim();
    let i = launch(&mut s, now, "m4.large");
    let primary = s.instance(&i).expect("i").primary_eni.clone();
    let err = s
        .assign_private_ips(
            now,
            Assign {
                eni_id: primary.clone(),
                prefix_count: 1,
                ..Default::default()
            },
        )
        .expect_err("no prefix delegation on Xen");
    assert_eq!(err.code, "InvalidParameterValue");
    s.drain_events();
    let (ips, _) = s
        .assign_private_ips(
            now,
            Assign {
                eni_id: primary.clone(),
                count: 1,
                ..Default::default()
            },
        )
        .expect("an IP");
    assert_eq!(
        s.drain_events(),
        vec![Event::AddressesChanged],
        "attached ENI: fabric must resync"
    );
    s.unassign_private_ips(now, &primary, &ips, &[])
        .expect("unassign");
    assert_eq!(s.drain_events(), vec![Event::AddressesChanged]);
    let loose = eni(&mut s, 0, 0);
    s.assign_private_ips(
        now,
        Assign {
            eni_id: loose,
            count: 1,
            ..Default::default()
        },
    )
    .expect("unattached");
    assert!(
        s.drain_events().is_empty(),
        "unattached ENI: nothing routed"
    );
}

#[test]
fn reassignment_moves_an_ip_within_the_subnet_and_resyncs_the_fabric() {
    let (mut s, now) = sim();
    let i = launch(&mut s, now, "m5.large");
    let a = eni(&mut s, 1, 0);
    let b = eni(&mut s, 0, 0);
    s.attach_eni(now, &a, &i, 1, 0).expect("attach");
    let ip = s.eni(&a).expect("a").private_ips[1];
    let plain = Assign {
        eni_id: b.clone(),
        ips: vec![ip],
        ..Default::default()
    };
    assert_eq!(
        s.assign_private_ips(now, plain.clone())
            .expect_err("in use")
            .code,
        "InvalidIPAddress.InUse"
    );
    s.drain_events();
    let (got, _) = s
        .assign_private_ips(
            now,
            Assign {
                allow_reassignment: true,
                ..plain
            },
        )
        .expect("reassigned");
    assert_eq!(got, vec![ip]);
    assert!(!s.eni(&a).expect("a").private_ips.contains(&ip));
    assert_eq!(
        s.drain_events(),
        vec![Event::AddressesChanged],
        "the old holder is attached"
    );
    let sub = s.eni(&b).expect("b").subnet_id.clone();
    assert!(
        s.subnet(&sub).expect("subnet").used.contains(&ip),
        "still claimed exactly once"
    );
    let reserved = Assign {
        eni_id: b.clone(),
        ips: vec![s.subnet(&sub).expect("subnet").gateway()],
        allow_reassignment: true,
        ..Default::default()
    };
    assert_eq!(
        s.assign_private_ips(now, reserved)
            .expect_err("reserved")
            .code,
        "InvalidParameterValue"
    );
}

#[test]
fn duplicates_and_exact_limits() {
    let (mut s, now) = sim();
    let sub = s.subnet(&subnet_a(&s)).expect("subnet").clone();
    let base = u32::from(sub.cidr.network());
    let ip = |k: u32| Ipv4Addr::from(base + k);
    let e = eni(&mut s, 0, 0);
    let twice = Assign {
        eni_id: e.clone(),
        ips: vec![ip(40), ip(40)],
        ..Default::default()
    };
    assert_eq!(
        s.assign_private_ips(now, twice).expect_err("twice").code,
        "InvalidParameterValue"
    );
    let p: ipnet::Ipv4Net = ipnet::Ipv4Net::new(ip(48), 28).expect("net");
    let inside = CreateEni {
        subnet_id: sub.id.clone(),
        private_ips: vec![(ip(50), true)],
        prefixes: vec![p],
        ..Default::default()
    };
    assert_eq!(
        s.create_eni(inside).expect_err("ip inside prefix").code,
        "InvalidParameterValue"
    );
    let dup_prefix = CreateEni {
        subnet_id: sub.id.clone(),
        prefixes: vec![p, p],
        ..Default::default()
    };
    assert_eq!(
        s.create_eni(dup_prefix).expect_err("prefix twice").code,
        "InvalidParameterValue"
    );
    // Exactly the largest per-interface limit (50) with explicit addresses and no flagged primary.
    let explicit: Vec<(Ipv4Addr, bool)> = (0..50).map(|k| (ip(100 + k), false)).collect();
    let id = s
        .create_eni(CreateEni {
            subnet_id: sub.id.clone(),
            private_ips: explicit,
            ..Default::default()
        })
        .expect("exactly 50");
    assert_eq!(s.eni(&id).expect("eni").private_ips.len(), 50);
}

#[test]
fn create_eni_client_token_is_idempotent() {
    let (mut s, _) = sim();
    let sub = subnet_a(&s);
    let req = CreateEni {
        subnet_id: sub,
        secondary_count: 2,
        client_token: Some("tok".into()),
        ..Default::default()
    };
    let a = s.create_eni(req.clone()).expect("first");
    assert_eq!(s.create_eni(req.clone()).expect("replay"), a);
    let other = CreateEni {
        secondary_count: 3,
        ..req
    };
    assert_eq!(
        s.create_eni(other).expect_err("mismatch").code,
        "IdempotentParameterMismatch"
    );
}

#[test]
fn device_index_beyond_the_card_is_refused() {
    let (mut s, now) = sim();
    let i = launch(&mut s, now, "m5.large");
    let e = eni(&mut s, 0, 0);
    assert_eq!(
        s.attach_eni(now, &e, &i, 3, 0)
            .expect_err("index 3 on a 3-ENI card")
            .code,
        "InvalidParameterValue"
    );
    assert_eq!(
        s.attach_eni(now, &e, &i, 4_000_000_000, 0)
            .expect_err("huge")
            .code,
        "InvalidParameterValue"
    );
}

#[test]
fn tag_limit_refuses_without_partial_changes() {
    let (mut s, _) = sim();
    let a = eni(&mut s, 0, 0);
    let b = eni(&mut s, 0, 0);
    let many: Vec<(String, String)> = (0..50).map(|k| (format!("k{k}"), "v".into())).collect();
    s.create_tags(std::slice::from_ref(&b), &many)
        .expect("50 on b");
    let err = s
        .create_tags(&[a.clone(), b.clone()], &[("extra".into(), "v".into())])
        .expect_err("b would have 51");
    assert_eq!(err.code, "TagLimitExceeded");
    assert!(s.eni(&a).expect("a").tags.is_empty(), "a untouched");
}

#[test]
fn security_groups_are_created_unique_per_vpc_and_default_stays_default() {
    let (mut s, _) = sim();
    let default = s.default_security_group();
    let vpc = s.vpc.id.clone();
    let id = s
        .create_security_group("web", "web tier", Some(&vpc))
        .expect("create");
    assert!(id.starts_with("sg-") && id != default);
    assert_eq!(
        s.default_security_group(),
        default,
        "whatever the ids' order"
    );
    for (name, vpc_id, code) in [
        ("web", None, "InvalidGroup.Duplicate"),
        ("WEB", None, "InvalidGroup.Duplicate"),
        ("default", None, "InvalidGroup.Reserved"),
        ("other", Some("vpc-0000"), "InvalidVpcID.NotFound"),
        ("", None, "InvalidParameterValue"),
        ("sg-x", None, "InvalidParameterValue"),
    ] {
        let e = s.create_security_group(name, "d", vpc_id).expect_err(name);
        assert_eq!(e.code, code, "{name:?}");
    }
    // An ENI can be given the new group (and only existing ones).
    let e = eni(&mut s, 0, 0);
    s.modify_eni_attribute(
        &e,
        None,
        Some(vec![default.clone(), id.clone()]),
        None,
        None,
    )
    .expect("modify groups");
    assert_eq!(s.eni(&e).expect("eni").groups, vec![default, id]);
    assert!(
        s.modify_eni_attribute(&e, None, Some(vec!["sg-404".into()]), None, None)
            .is_err()
    );
}
