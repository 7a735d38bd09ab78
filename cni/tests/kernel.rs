//! Kernel tests: the real `vpc-cni` binary run inside a throwaway "host" namespace against a
//! scripted ipamd, with links, addresses, routes, neighbours and rules read back by iproute2.

mod common;

use common::*;
use serde_json::{Value, json};

const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                        K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u1";
/// sha1("default.web-0")[:11] with the default prefix.
const VETH: &str = "eni0d7763386da";

struct World {
    _dir: tempfile::TempDir,
    host: Ns,
    pod: Ns,
    ipamd: FakeIpamd,
}

fn world(tag: &str, ip: &str, table: u32) -> World {
    let dir = tempfile::tempdir().expect("tmp");
    let host = Ns::new(&format!("{tag}-h"));
    let pod = Ns::new(&format!("{tag}-p"));
    let ipamd = FakeIpamd::start(dir.path(), ip, table);
    ipamd.set(|s| s.host_ns = Some(host.0.clone()));
    World {
        _dir: dir,
        host,
        pod,
        ipamd,
    }
}

impl World {
    fn call<'a>(&'a self, command: &'a str, conf: Value) -> Call<'a> {
        Call {
            host: &self.host,
            command,
            container: "c1",
            netns: self.pod.path(),
            ifname: "eth0",
            args: POD_ARGS,
            conf,
        }
    }

    fn conf(&self, version: &str) -> Value {
        conf(version, &self.ipamd.socket)
    }

    fn with_prev(&self, version: &str, prev: &Value) -> Value {
        let mut c = self.conf(version);
        c["prevResult"] = prev.clone();
        c
    }

    /// Host state the pod left: rules at 512/1536 and routes in main.
    fn host_pod_state(&self) -> (Vec<String>, Vec<String>) {
        (self.host.pod_rules(), self.host.routes("main"))
    }
}

fn assert_wired(w: &World, ip: &str, result: &Value, table: Option<u32>) {
    // Host: the veth with a locally administered unicast MAC, up, MTU from the config.
    let veth = w.host.link(VETH).expect("host veth");
    let mac = veth["address"].as_str().expect("mac").to_string();
    let first = u8::from_str_radix(&mac[..2], 16).expect("hex");
    assert_eq!(first & 0x03, 0x02, "locally administered unicast: {mac}");
    assert!(
        veth["flags"]
            .as_array()
            .expect("flags")
            .contains(&json!("UP"))
    );
    assert_eq!(veth["mtu"], 1500);
    assert_eq!(veth["ifalias"], "c1/eth0", "tagged with its attachment");
    // IPv6 on the host end as upstream sets it: no router advertisements from the pod.
    for (k, want) in [
        ("accept_ra", "0"),
        ("accept_redirects", "1"),
        ("forwarding", "0"),
    ] {
        let f = format!("/proc/sys/net/ipv6/conf/{VETH}/{k}");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &w.host.0, "cat", &f])
            .output()
            .expect("ip netns exec");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{f}");
    }
    // One queue each way on both ends, allocated so (not trimmed after registration, which
    // waits for an RCU grace period under the RTNL lock).
    for (ns, dev) in [(&w.host, VETH), (&w.pod, "eth0")] {
        let d = ns.ip_json(&["-d", "link", "show", "dev", dev]);
        assert_eq!(
            (&d[0]["num_tx_queues"], &d[0]["num_rx_queues"]),
            (&json!(1), &json!(1)),
            "{dev}'s queues"
        );
    }
    assert_eq!(
        w.host.routes("main"),
        vec![format!("{ip} dev {VETH} scope link")]
    );
    let mut want_rules = vec![format!("512: to {ip} lookup main")];
    if let Some(t) = table {
        want_rules.push(format!("1536: from {ip} lookup {t}"));
    }
    assert_eq!(w.host.pod_rules(), want_rules);
    // Pod: eth0 with the /32, the link-scope gateway route, the default route, the neighbour.
    let eth0 = w.pod.link("eth0").expect("pod eth0");
    assert_eq!(eth0["mtu"], 1500);
    let addrs = w.pod.ip_json(&["addr", "show", "dev", "eth0"]);
    let inet: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect();
    assert_eq!(inet, vec![format!("{ip}/32")]);
    assert_eq!(
        w.pod.routes("main"),
        vec![
            "default via 169.254.1.1 dev eth0".to_string(),
            "169.254.1.1 dev eth0 scope link".to_string()
        ]
    );
    let neigh = w.pod.ip_json(&["neigh", "show", "dev", "eth0"]);
    let gw = neigh
        .as_array()
        .expect("neigh")
        .iter()
        .find(|n| n["dst"] == "169.254.1.1")
        .expect("gateway neighbour");
    assert_eq!(gw["lladdr"], mac);
    assert!(
        gw["state"]
            .as_array()
            .expect("state")
            .contains(&json!("PERMANENT"))
    );
    // Each end's index is its own netns's: the host end names the pod end as its peer
    // (IFLA_LINK, left out when the two indexes are equal).
    match veth.get("link_index") {
        Some(peer) => assert_eq!(peer, &eth0["ifindex"], "the host end's peer"),
        None => assert_eq!(veth["ifindex"], eth0["ifindex"], "same index, no IFLA_LINK"),
    }
    // The result names both ends and the address.
    assert_eq!(result["interfaces"][0]["name"], VETH);
    assert_eq!(result["interfaces"][0]["mac"], mac);
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], w.pod.path());
    assert_eq!(
        result["interfaces"][1]["mac"],
        eth0["address"].as_str().expect("pod mac")
    );
    assert_eq!(result["ips"][0]["address"], format!("{ip}/32"));
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(result["ips"][0]["interface"], 1);
    assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(result["dns"]["nameservers"][0], "10.100.0.10");
}

#[test]
fn add_then_del_on_the_primary_eni() {
    let w = world("pri", "10.0.1.20", 254);
    let before = w.host_pod_state();
    let (ok, r) = run(&w.call("ADD", w.conf("1.0.0")));
    assert!(ok, "{r}");
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_wired(&w, "10.0.1.20", &r, None);
    assert_eq!(w.ipamd.calls(), vec![format!("add c1 eth0 {VETH}")]);
    // Fresh namespaces: both ends got index 2 (ADD must not mix up the two sides' indexes).
    let idx = |ns: &Ns, dev: &str| ns.link(dev).expect("link")["ifindex"].clone();
    assert_eq!(idx(&w.host, VETH), idx(&w.pod, "eth0"));

    // CHECK passes on what ADD built.
    let (ok, e) = run(&w.call("CHECK", w.with_prev("1.0.0", &r)));
    assert!(ok, "{e}");

    let (ok, e) = run(&w.call("DEL", w.with_prev("1.0.0", &r)));
    assert!(ok, "{e}");
    assert_eq!(
        w.host_pod_state(),
        before,
        "rules and routes back as before ADD"
    );
    // The veth goes with the netns (the runtime deletes it); nothing else is left.
    let pod_path = w.pod.path();
    let plain = w.conf("1.0.0");
    drop(w.pod);
    // The kernel dismantles a deleted netns asynchronously (cleanup_net): poll, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.host.link(VETH).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "host veth outlived the pod netns"
        );
        std::thread::yield_now();
    }
    // A second DEL, with the netns gone and no prevResult (containerd's), still succeeds.
    let mut again = Call {
        host: &w.host,
        command: "DEL",
        container: "c1",
        netns: pod_path,
        ifname: "eth0",
        args: POD_ARGS,
        conf: plain,
    };
    assert!(run(&again).0);
    again.netns = String::new();
    assert!(run(&again).0);
    assert_eq!(
        w.ipamd.calls(),
        vec![
            format!("add c1 eth0 {VETH}"),
            "check 10.0.1.20".into(),
            "del c1 eth0".into(),
            "del c1 eth0".into(),
            "del c1 eth0".into()
        ]
    );
}

#[test]
fn add_then_del_on_a_secondary_eni() {
    let w = world("sec", "10.0.2.33", 3);
    // Two links on the host first: the host end's index is not the pod end's.
    sh(&[
        "ip", "-n", &w.host.0, "link", "add", "d1", "type", "veth", "peer", "name", "d2",
    ]);
    let (ok, r) = run(&w.call("ADD", w.conf("1.1.0")));
    assert!(ok, "{r}");
    assert_eq!(
        r["interfaces"][1]["mtu"], 1500,
        "1.1.0 results carry the MTU"
    );
    assert_wired(&w, "10.0.2.33", &r, Some(3));
    let veth = w.host.link(VETH).expect("host veth");
    assert!(veth.get("link_index").is_some(), "{veth}");
    assert_ne!(
        veth["ifindex"],
        w.pod.link("eth0").expect("eth0")["ifindex"]
    );
    // DEL without prevResult: ipamd removes the host side as it releases the address.
    let (ok, _) = run(&w.call("DEL", w.conf("1.1.0")));
    assert!(ok);
    assert_eq!(w.host_pod_state(), (vec![], vec![]));
}

#[test]
fn version_0_4_0_results_and_repeated_add() {
    let w = world("v04", "10.0.1.21", 254);
    let (ok, r) = run(&w.call("ADD", w.conf("0.4.0")));
    assert!(ok, "{r}");
    assert_eq!(r["ips"][0]["version"], "4");
    // The runtime repeats ADD for the same container: same address, wiring rebuilt once.
    let (ok, r2) = run(&w.call("ADD", w.conf("0.4.0")));
    assert!(ok, "{r2}");
    assert_wired(&w, "10.0.1.21", &r2, None);
    assert_eq!(
        w.host
            .links()
            .iter()
            .filter(|l| l.starts_with("eni"))
            .count(),
        1
    );
}

#[test]
fn del_with_ipamd_down_tears_down_from_prev_result() {
    let w = world("down", "10.0.2.40", 2);
    let (ok, r) = run(&w.call("ADD", w.conf("1.0.0")));
    assert!(ok, "{r}");
    let mut conf = w.with_prev("1.0.0", &r);
    conf["ipamdSocket"] = json!("/nonexistent/ipamd.sock");
    let (ok, e) = run(&w.call("DEL", conf.clone()));
    assert!(ok, "DEL must succeed with ipamd down: {e}");
    assert_eq!(w.host_pod_state(), (vec![], vec![]));
    // Without prevResult and ipamd, the address comes from the host veth's route.
    let (ok, r) = run(&w.call("ADD", w.conf("1.0.0")));
    assert!(ok, "{r}");
    conf.as_object_mut().expect("obj").remove("prevResult");
    let wired = w.host_pod_state();
    // An older sandbox of the same pod (same host veth name) deleted late must not unwire this
    // one: neither through the veth's route nor through its prevResult naming the same address.
    let mut old = w.call("DEL", conf.clone());
    old.container = "c0";
    assert!(run(&old).0);
    assert_eq!(
        w.host_pod_state(),
        wired,
        "the newer sandbox's wiring stays"
    );
    let mut old_prev = conf.clone();
    old_prev["prevResult"] = r.clone();
    old.conf = old_prev;
    assert!(run(&old).0);
    assert_eq!(
        w.host_pod_state(),
        wired,
        "the newer sandbox's wiring stays"
    );
    assert!(run(&w.call("DEL", conf)).0);
    assert_eq!(w.host_pod_state(), (vec![], vec![]));
}

#[test]
fn del_succeeds_whatever_ipamd_answers() {
    let w = world("delerr", "10.0.2.41", 2);
    for (code, msg) in [
        // ipamd itself never fails a DEL; an error means it could not be asked properly.
        (tonic::Code::Internal, "task failed"),
        // ipamd refusing this client's protocol version must not block pod deletion.
        (
            tonic::Code::FailedPrecondition,
            "protocol version 1 unsupported",
        ),
    ] {
        let (ok, r) = run(&w.call("ADD", w.conf("1.0.0")));
        assert!(ok, "{r}");
        assert_ne!(w.host_pod_state(), (vec![], vec![]));
        w.ipamd.set(|s| s.del_error = Some((code, msg.into())));
        let (ok, e) = run(&w.call("DEL", w.with_prev("1.0.0", &r)));
        assert!(ok, "{code:?}: {e}");
        assert_eq!(
            w.host_pod_state(),
            (vec![], vec![]),
            "{code:?}: torn down locally"
        );
        w.ipamd.set(|s| s.del_error = None);
        assert!(run(&w.call("DEL", w.conf("1.0.0"))).0);
        // The runtime deletes the pod netns, and the veth with it.
        sh(&["ip", "-n", &w.host.0, "link", "del", VETH]);
    }
}

#[test]
fn failure_after_the_grant_gives_the_address_back_and_leaves_nothing() {
    let w = world("unw", "10.0.2.50", 4);
    let before = (w.host.links(), w.host_pod_state());
    // CNI_IFNAME=lo: the pod already has it and it cannot be deleted, so the veth cannot exist.
    let mut c = w.call("ADD", w.conf("1.0.0"));
    c.ifname = "lo";
    let (ok, e) = run(&c);
    assert!(!ok);
    assert_eq!(e["code"], 102, "{e}");
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or("")
            .contains("pod network setup failed"),
        "{e}"
    );
    assert_eq!(
        w.ipamd.calls(),
        vec![
            format!("add c1 lo {}", e_name("lo")),
            "del c1 lo (unused)".into()
        ]
    );
    assert_eq!((w.host.links(), w.host_pod_state()), before);

    // ipamd answering garbage is refused the same way.
    w.ipamd.set(|s| s.ip = "not-an-ip".into());
    let (ok, e) = run(&w.call("ADD", w.conf("1.0.0")));
    assert!(!ok);
    assert_eq!(e["code"], 101, "{e}");
    assert_eq!((w.host.links(), w.host_pod_state()), before);
}

/// The veth name for a non-eth0 interface of web-0.
fn e_name(ifname: &str) -> String {
    let mut env = nodewire_cni::spec::parse_env(|k| match k {
        "CNI_COMMAND" => Some("ADD".into()),
        "CNI_CONTAINERID" => Some("c1".into()),
        "CNI_NETNS" => Some("/x".into()),
        "CNI_IFNAME" => Some(ifname.into()),
        "CNI_ARGS" => Some(POD_ARGS.into()),
        _ => None,
    })
    .expect("env");
    env.ifname = ifname.into();
    nodewire_cni::spec::host_veth_name("eni", &env)
}

#[test]
fn check_reports_drift() {
    let w = world("chk", "10.0.2.60", 5);
    let (ok, r) = run(&w.call("ADD", w.conf("1.0.0")));
    assert!(ok, "{r}");
    let check = || run(&w.call("CHECK", w.with_prev("1.0.0", &r)));
    assert!(check().0);
    sh(&["ip", "-n", &w.host.0, "rule", "del", "priority", "1536"]);
    let (ok, e) = check();
    assert!(!ok);
    assert_eq!(e["code"], 103);
    assert!(e["msg"].as_str().unwrap_or("").contains("1536"), "{e}");
    sh(&[
        "ip",
        "-n",
        &w.host.0,
        "rule",
        "add",
        "from",
        "10.0.2.60",
        "lookup",
        "5",
        "priority",
        "1536",
    ]);
    assert!(check().0);
    sh(&[
        "ip",
        "-n",
        &w.pod.0,
        "neigh",
        "del",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    let (ok, e) = check();
    assert!(!ok);
    assert!(e["msg"].as_str().unwrap_or("").contains("neighbour"), "{e}");
    // CHECK without prevResult is a config error; an address ipamd does not hold is drift.
    let (ok, e) = run(&w.call("CHECK", w.conf("1.0.0")));
    assert!(!ok);
    assert_eq!(e["code"], 7);
    let mut other = r.clone();
    other["ips"][0]["address"] = json!("10.0.2.61/32");
    let (ok, e) = run(&w.call("CHECK", w.with_prev("1.0.0", &other)));
    assert!(!ok);
    assert_eq!(e["code"], 103, "{e}");
    assert!(run(&w.call("DEL", w.with_prev("1.0.0", &r))).0);
}

#[test]
fn ipamd_answers_map_to_spec_codes() {
    let w = world("codes", "10.0.1.70", 254);
    let cases = [
        (
            tonic::Code::Unavailable,
            "0 assigned, 0 in cooldown, 0 total",
            11,
        ),
        (tonic::Code::ResourceExhausted, "max pods 29 reached", 100),
        (
            tonic::Code::FailedPrecondition,
            "client speaks ipam protocol 2",
            101,
        ),
    ];
    for (code, msg, want) in cases {
        w.ipamd.set(|s| s.add_error = Some((code, msg.into())));
        let (ok, e) = run(&w.call("ADD", w.conf("1.0.0")));
        assert!(!ok);
        assert_eq!(e["code"], want, "{e}");
        assert!(e["msg"].as_str().unwrap_or("").contains(msg), "{e}");
        assert_eq!(e["cniVersion"], "1.0.0");
        // The veth made while ipamd was asked is gone again, in both namespaces.
        assert_eq!(w.host.link(VETH), None, "host veth left after {code:?}");
        assert_eq!(w.pod.link("eth0"), None, "pod eth0 left after {code:?}");
    }
    // ipamd down: try again later, naming the socket.
    let mut c = w.conf("1.0.0");
    c["ipamdSocket"] = json!("/nonexistent/ipamd.sock");
    let (ok, e) = run(&w.call("ADD", c));
    assert!(!ok);
    assert_eq!(e["code"], 11);
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/ipamd.sock"),
        "{e}"
    );
    // A netns that does not exist costs no address.
    let n = w.ipamd.calls().len();
    let mut c = w.call("ADD", w.conf("1.0.0"));
    c.netns = "/var/run/netns/does-not-exist".into();
    let (ok, e) = run(&c);
    assert!(!ok);
    assert_eq!(e["code"], 3, "{e}");
    assert_eq!(w.ipamd.calls().len(), n, "no ipamd call");
    assert!(w.host_pod_state() == (vec![], vec![]));
}

#[test]
fn status_and_gc() {
    let w = world("stat", "10.0.1.80", 254);
    let call = |cmd: &'static str, conf: Value| Call {
        host: &w.host,
        command: cmd,
        container: "",
        netns: String::new(),
        ifname: "",
        args: "",
        conf,
    };
    let (ok, out) = run(&call("STATUS", w.conf("1.1.0")));
    assert!(ok, "{out}");
    assert_eq!(out, Value::Null, "STATUS prints nothing on success");
    w.ipamd
        .set(|s| s.not_ready = Some("max pods 29 reached".into()));
    let (ok, e) = run(&call("STATUS", w.conf("1.1.0")));
    assert!(!ok);
    assert_eq!(e["code"], 50);
    assert!(
        e["msg"].as_str().unwrap_or("").contains("max pods 29"),
        "{e}"
    );
    let mut down = w.conf("1.1.0");
    down["ipamdSocket"] = json!("/nonexistent/ipamd.sock");
    let (ok, e) = run(&call("STATUS", down));
    assert!(!ok);
    assert_eq!(e["code"], 50);
    // STATUS needs a 1.1.0 config.
    let (ok, e) = run(&call("STATUS", w.conf("1.0.0")));
    assert!(!ok);
    assert_eq!(e["code"], 1);

    let mut gc = w.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([
        { "containerID": "keep-1", "ifname": "eth0" },
        { "containerID": "keep-2", "ifname": "eth0" }
    ]);
    let (ok, e) = run(&call("GC", gc));
    assert!(ok, "{e}");
    let s = w.ipamd.script.lock().expect("script");
    assert_eq!(
        s.gc_valid,
        vec![
            (
                "nodewire".to_string(),
                "keep-1".to_string(),
                "eth0".to_string()
            ),
            (
                "nodewire".to_string(),
                "keep-2".to_string(),
                "eth0".to_string()
            )
        ]
    );
}

#[test]
fn batched_netlink_answers_go_to_their_requests() {
    use nodewire_cni::net::{Batch, del_link, get_link, link_reply};
    let ns = Ns::new("batch");
    sh(&[
        "ip", "-n", &ns.0, "link", "add", "dummy7", "type", "veth", "peer", "name", "dummy7p",
    ]);
    let path = ns.path();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut b = Batch::open().expect("netlink");
        for _ in 0..3 {
            // Replies land at their request's position, across runs on one socket.
            let r = b
                .run(vec![
                    get_link("dummy7"),
                    del_link("absent0"),
                    get_link("lo"),
                ])
                .expect("batch");
            assert_eq!(r.len(), 3);
            assert_eq!(link_reply(&r[2]).map(|(i, _)| i), Some(1), "lo is 1");
            assert!(link_reply(&r[0]).is_some_and(|(i, _)| i > 1));
            assert!(r[1].is_empty(), "a tolerated ENODEV");
        }
        // Two batches in flight, read in turn.
        let s1 = b.send(vec![get_link("lo")]).expect("send");
        let s2 = b.send(vec![get_link("dummy7")]).expect("send");
        let r1 = b.answers(s1).expect("first");
        let r2 = b.answers(s2).expect("second");
        assert_eq!(link_reply(&r1[0]).map(|(i, _)| i), Some(1));
        assert!(link_reply(&r2[0]).is_some_and(|(i, _)| i > 1));
        // The error names the request that failed, not its neighbours.
        let e = b
            .run(vec![
                get_link("lo"),
                get_link("absent1"),
                get_link("dummy7"),
            ])
            .expect_err("absent1 fails");
        assert!(e.to_string().contains("looking up link absent1"), "{e}");
    })
    .join()
    .expect("batch test thread");
}
