//! The pure half of `make demo`: percentiles, text tables and the final report, built from
//! what the driver (`main.rs`) measured.
//!
//! Owns: turning measurements into the text a user reads. Must not touch: processes,
//! namespaces, mounts or files — the driver does all of that, and tears it all down.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Nearest-rank percentile (`p` in 0..=100) of `v`; `None` when `v` is empty.
pub fn percentile(v: &[Duration], p: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

/// A duration the way people read it: `850 µs`, `12.3 ms`, `4.20 s`.
pub fn human(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// Bytes in binary units: `4.0 GiB`, `16 MiB`.
pub fn bytes(n: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if n >= GIB {
        format!("{:.1} GiB", n as f64 / GIB as f64)
    } else if n >= MIB {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} B")
    }
}

/// A plain text table: left-aligned text, right-aligned numbers, two spaces between columns.
#[derive(Debug, Default, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Right-aligned: a number, optionally with a unit (`12`, `4.0 GiB`, `22.2 ms / 37.6 ms`,
    /// `6/6`); not addresses or names.
    fn numeric(cell: &str) -> bool {
        cell.chars().next().is_some_and(|c| c.is_ascii_digit())
            && cell.split_whitespace().all(|w| {
                w.chars().filter(|c| *c == '.').count() <= 1
                    && (w.chars().all(|c| c.is_ascii_digit() || "./".contains(c))
                        || ["ms", "s", "µs", "GiB", "MiB", "B", "/"].contains(&w))
            })
    }

    /// Renders with `indent` spaces before each line.
    pub fn render(&self, indent: usize) -> String {
        let cols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let cell = |r: &Vec<String>, i: usize| r.get(i).cloned().unwrap_or_default();
        let mut width = vec![0usize; cols];
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, w) in width.iter_mut().enumerate() {
                *w = (*w).max(cell(r, i).chars().count());
            }
        }
        let line = |r: &Vec<String>| {
            let mut s = " ".repeat(indent);
            for (i, w) in width.iter().enumerate() {
                let c = cell(r, i);
                let pad = w - c.chars().count();
                if Self::numeric(&c) && !std::ptr::eq(r, &self.headers) {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(&c);
                } else {
                    s.push_str(&c);
                    s.push_str(&" ".repeat(pad));
                }
                if i + 1 < cols {
                    s.push_str("  ");
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.headers);
        let rule: Vec<String> = width.iter().map(|w| "─".repeat(*w)).collect();
        out.push_str(&line(&rule));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

/// One pod as the demo created it.
#[derive(Debug, Clone)]
pub struct PodRow {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The ENI holding the address (from ipamd's `/v1/enis`), `?` when unknown.
    pub eni: String,
    pub device: Option<u32>,
    pub add: Duration,
}

/// One ENI of a node as ipamd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniRow {
    pub id: String,
    pub device: u32,
    pub primary: bool,
    pub route_table: u32,
    /// Addresses ipamd holds on it for pods: its secondary IPs, or 16 per /28 prefix.
    pub addresses: usize,
    pub pods: usize,
}

#[derive(Debug, Clone)]
pub struct NodeReport {
    pub name: String,
    pub instance_id: String,
    pub instance_type: String,
    pub primary_ip: Ipv4Addr,
    pub enis: Vec<EniRow>,
    pub pods: Vec<PodRow>,
}

/// Successes out of attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub ok: usize,
    pub of: usize,
}

impl Count {
    pub fn add(&mut self, ok: bool) {
        self.of += 1;
        self.ok += usize::from(ok);
    }
    pub fn all(&self) -> bool {
        self.ok == self.of
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ok, self.of)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// Pod → the pod with the same index on the other node.
    pub icmp: Count,
    pub tcp: Count,
    /// TCP connections where the peer saw the pod's own address (no NAT inside the VPC).
    pub source_kept: Count,
    /// Pod → the other node's primary IP.
    pub to_node: Count,
    /// Pod → an address outside the VPC, seen from there as the node's primary IP (SNAT).
    pub snat: Count,
    /// Packets the fabric dropped for failing EC2's source/destination check.
    pub src_dst_drops: u64,
}

impl Traffic {
    pub fn all_ok(&self) -> bool {
        [
            self.icmp,
            self.tcp,
            self.source_kept,
            self.to_node,
            self.snat,
        ]
        .iter()
        .all(Count::all)
            && self.src_dst_drops == 0
    }
}

/// One step of the volume's journey.
#[derive(Debug, Clone)]
pub struct Step {
    pub what: String,
    pub node: String,
    pub detail: String,
    pub took: Duration,
}

/// EC2 calls by action: one column per node (calls made through that node's endpoint, i.e. by
/// its ipamd), one for the host (the CSI controller), and the total.
pub fn ec2_table(
    total: &BTreeMap<String, u64>,
    per_instance: &BTreeMap<String, BTreeMap<String, u64>>,
    nodes: &[(String, String)],
) -> Table {
    let mut headers = vec!["EC2 ACTION".to_string()];
    headers.extend(nodes.iter().map(|(name, _)| format!("{name} (ipamd)")));
    headers.push("controller (ebs-csi)".into());
    headers.push("total".into());
    let mut t = Table {
        headers,
        rows: Vec::new(),
    };
    let mut sums = vec![0u64; nodes.len() + 2];
    for (action, &n) in total.iter().filter(|(_, n)| **n > 0) {
        let mut row = vec![action.clone()];
        let mut from_nodes = 0;
        for (i, (_, iid)) in nodes.iter().enumerate() {
            let c = per_instance
                .get(iid)
                .and_then(|m| m.get(action))
                .copied()
                .unwrap_or(0);
            from_nodes += c;
            sums[i] += c;
            row.push(c.to_string());
        }
        let host = n.saturating_sub(from_nodes);
        sums[nodes.len()] += host;
        sums[nodes.len() + 1] += n;
        row.push(host.to_string());
        row.push(n.to_string());
        t.rows.push(row);
    }
    let mut row = vec!["all actions".to_string()];
    row.extend(sums.iter().map(u64::to_string));
    t.rows.push(row);
    t
}

/// Everything the demo prints at the end.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub title: String,
    pub nodes: Vec<NodeReport>,
    pub traffic: Traffic,
    pub journey: Vec<Step>,
    pub ec2: Table,
    /// (what, how long / how many) lines of the timing summary.
    pub timings: Vec<(String, String)>,
    /// Per node: pod rules (priority 512/1536) and pod routes with the pods up, and left after
    /// every pod's DEL.
    pub pod_wiring: Vec<(String, usize, usize)>,
}

/// The report as text (no colour, so it can be saved or pasted).
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\n{}\n{}", r.title, "═".repeat(r.title.chars().count()));

    let _ = writeln!(o, "\nNodes and their ENIs (ipamd's view, /v1/enis)");
    let mut t = Table::new(&[
        "NODE", "INSTANCE", "TYPE", "NODE IP", "ENI", "DEVICE", "TABLE", "ADDRS", "PODS",
    ]);
    for n in &r.nodes {
        for (k, e) in n.enis.iter().enumerate() {
            let first = k == 0;
            let show = |s: &str| if first { s.to_string() } else { String::new() };
            t.row(vec![
                show(&n.name),
                show(&n.instance_id),
                show(&n.instance_type),
                show(&n.primary_ip.to_string()),
                format!("{}{}", e.id, if e.primary { " (primary)" } else { "" }),
                e.device.to_string(),
                if e.primary {
                    "main".into()
                } else {
                    e.route_table.to_string()
                },
                e.addresses.to_string(),
                e.pods.to_string(),
            ]);
        }
    }
    o.push_str(&t.render(2));

    let _ = writeln!(
        o,
        "\nPods (created through vpc-cni ADD, as a kubelet would)"
    );
    let mut headers: Vec<String> = Vec::new();
    for n in &r.nodes {
        headers.extend([
            format!("{} POD", n.name.to_uppercase()),
            "IP".into(),
            "ENI (device)".into(),
            "ADD".into(),
        ]);
    }
    let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut t = Table::new(&refs);
    let rows = r.nodes.iter().map(|n| n.pods.len()).max().unwrap_or(0);
    for k in 0..rows {
        let mut row = Vec::new();
        for n in &r.nodes {
            match n.pods.get(k) {
                Some(p) => row.extend([
                    p.name.clone(),
                    p.ip.to_string(),
                    match p.device {
                        Some(d) => format!("{} ({d})", p.eni),
                        None => p.eni.clone(),
                    },
                    human(p.add),
                ]),
                None => row.extend([String::new(), String::new(), String::new(), String::new()]),
            }
        }
        t.row(row);
    }
    o.push_str(&t.render(2));

    let tr = &r.traffic;
    let _ = writeln!(o, "\nTraffic across the VPC fabric");
    let mut t = Table::new(&["CHECK", "RESULT"]);
    t.row(vec![
        "pod → pod on the other node, ICMP".into(),
        tr.icmp.to_string(),
    ]);
    t.row(vec![
        "pod → pod on the other node, TCP".into(),
        tr.tcp.to_string(),
    ]);
    t.row(vec![
        "  peer saw the pod's own IP (no NAT in the VPC)".into(),
        tr.source_kept.to_string(),
    ]);
    t.row(vec![
        "pod → the other node's IP, ICMP".into(),
        tr.to_node.to_string(),
    ]);
    t.row(vec![
        "pod → outside the VPC, SNAT to its node's IP".into(),
        tr.snat.to_string(),
    ]);
    t.row(vec![
        "src/dst-check drops (secondary-ENI pods leave by their own ENI)".into(),
        tr.src_dst_drops.to_string(),
    ]);
    o.push_str(&t.render(2));

    let _ = writeln!(
        o,
        "\nThe volume's journey (CSI calls to ebs-csi, as kubelet and the sidecars make them)"
    );
    let mut t = Table::new(&["STEP", "NODE", "DETAIL", "TOOK"]);
    for s in &r.journey {
        t.row(vec![
            s.what.clone(),
            s.node.clone(),
            s.detail.clone(),
            human(s.took),
        ]);
    }
    o.push_str(&t.render(2));

    let _ = writeln!(o, "\nEC2 API calls by action (counted by vpcsim)");
    o.push_str(&r.ec2.render(2));

    let _ = writeln!(o, "\nTimings");
    let mut t = Table::new(&["WHAT", "VALUE"]);
    for (k, v) in &r.timings {
        t.row(vec![k.clone(), v.clone()]);
    }
    for (node, up, left) in &r.pod_wiring {
        t.row(vec![
            format!("{node}: pod rules + routes, pods up → after DEL"),
            format!(
                "{up} → {left}{}",
                if *left == 0 { "" } else { "  LEFT BEHIND" }
            ),
        ]);
    }
    o.push_str(&t.render(2));
    o
}

/// Groups ipamd's `/v1/enis` answer into rows and an IP → (ENI, device) map.
pub fn enis_from_introspection(
    v: &serde_json::Value,
) -> (Vec<EniRow>, BTreeMap<Ipv4Addr, (String, u32)>) {
    let mut rows = Vec::new();
    let mut by_ip = BTreeMap::new();
    for e in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let id = e["id"].as_str().unwrap_or("?").to_string();
        let device = e["device_number"].as_u64().unwrap_or(0) as u32;
        let (mut addresses, mut pods) = (0, 0);
        for c in e["cidrs"].as_array().map(Vec::as_slice).unwrap_or_default() {
            // A /32 secondary IP holds one pod address, a /28 prefix sixteen.
            let len: u32 = c["cidr"]
                .as_str()
                .and_then(|s| s.split('/').nth(1))
                .and_then(|l| l.parse().ok())
                .unwrap_or(32);
            addresses += 1usize << (32 - len.clamp(24, 32));
            for a in c["addresses"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if a["pod"].is_string() {
                    pods += 1;
                    if let Some(ip) = a["ip"].as_str().and_then(|s| s.parse().ok()) {
                        by_ip.insert(ip, (id.clone(), device));
                    }
                }
            }
        }
        rows.push(EniRow {
            id,
            device,
            primary: e["primary"].as_bool().unwrap_or(false),
            route_table: e["route_table"].as_u64().unwrap_or(0) as u32,
            addresses,
            pods,
        });
    }
    rows.sort_by_key(|e| e.device);
    (rows, by_ip)
}

/// How many pods a node can hold: addresses on every ENI (`slots_per_eni` already leaves out
/// each ENI's primary address) times the addresses per slot (1 for secondary IPs, 16 for /28
/// prefixes), and no more than the node's max pods. From ipamd's `/v1/config`.
pub fn pod_capacity(config: &serde_json::Value) -> Option<usize> {
    let l = &config["limits"];
    let addresses = l["max_enis"].as_u64()?
        * l["slots_per_eni"].as_u64()?
        * l["addresses_per_slot"].as_u64()?;
    let max_pods = l["max_pods"].as_u64().unwrap_or(u64::MAX);
    Some(addresses.min(max_pods) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=10).map(ms).collect();
        for (p, want) in [(50.0, 5), (90.0, 9), (99.0, 10), (100.0, 10), (0.0, 1)] {
            assert_eq!(percentile(&v, p), Some(ms(want)), "p{p}");
        }
        assert_eq!(percentile(&[ms(7)], 50.0), Some(ms(7)));
        assert_eq!(percentile(&[], 50.0), None);
        // Order of input does not matter.
        assert_eq!(percentile(&[ms(3), ms(1), ms(2)], 50.0), Some(ms(2)));
    }

    #[test]
    fn human_units() {
        for (d, want) in [
            (Duration::from_micros(850), "850 µs"),
            (Duration::from_micros(12_340), "12.3 ms"),
            (Duration::from_millis(4_200), "4.20 s"),
        ] {
            assert_eq!(human(d), want);
        }
        assert_eq!(bytes(4 << 30), "4.0 GiB");
        assert_eq!(bytes(16 << 20), "16 MiB");
        assert_eq!(bytes(12), "12 B");
    }

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let mut t = Table::new(&["NAME", "N"]);
        t.row(vec!["a".into(), "7".into()]);
        t.row(vec!["longer".into(), "123".into()]);
        t.row(vec!["short row".into()]);
        assert_eq!(
            t.render(1),
            " NAME       N\n ─────────  ───\n a            7\n longer     123\n short row\n"
        );
        for (cell, right) in [
            ("12", true),
            ("4.0 GiB", true),
            ("22.2 ms / 37.6 ms", true),
            ("6/6", true),
            ("10.90.1.46", false),
            ("-", false),
            ("node1", false),
            ("6 → 0", false),
        ] {
            assert_eq!(Table::numeric(cell), right, "{cell}");
        }
    }

    #[test]
    fn ec2_calls_split_between_nodes_and_the_controller() {
        let total: BTreeMap<String, u64> = [
            ("AttachNetworkInterface".to_string(), 3),
            ("CreateVolume".to_string(), 1),
            ("DescribeInstances".to_string(), 4),
            ("Unused".to_string(), 0),
        ]
        .into();
        let per: BTreeMap<String, BTreeMap<String, u64>> = [
            (
                "i-1".to_string(),
                [
                    ("AttachNetworkInterface".to_string(), 2),
                    ("DescribeInstances".to_string(), 1),
                ]
                .into(),
            ),
            (
                "i-2".to_string(),
                [("AttachNetworkInterface".to_string(), 1)].into(),
            ),
        ]
        .into();
        let nodes = [
            ("node1".to_string(), "i-1".to_string()),
            ("node2".to_string(), "i-2".to_string()),
        ];
        let t = ec2_table(&total, &per, &nodes);
        assert_eq!(
            t.rows,
            vec![
                vec!["AttachNetworkInterface", "2", "1", "0", "3"],
                vec!["CreateVolume", "0", "0", "1", "1"],
                vec!["DescribeInstances", "1", "0", "3", "4"],
                vec!["all actions", "3", "1", "4", "8"],
            ]
        );
        assert_eq!(t.headers[1], "node1 (ipamd)");
    }

    #[test]
    fn enis_grouped_and_pods_mapped_to_their_eni() {
        let v = json!([
            {"id": "eni-b", "device_number": 1, "primary": false, "route_table": 2, "cidrs": [
                {"cidr": "10.0.0.20/32", "addresses": [{"ip": "10.0.0.20", "pod": "demo/p3"}]},
                {"cidr": "10.0.0.21/32", "addresses": [{"ip": "10.0.0.21", "cooling_since_ms": 5}]}
            ]},
            {"id": "eni-a", "device_number": 0, "primary": true, "route_table": 254, "cidrs": [
                {"cidr": "10.0.0.10/32", "addresses": [{"ip": "10.0.0.10", "pod": "demo/p1"}]},
                {"cidr": "10.0.0.11/32", "addresses": []}
            ]},
            {"id": "eni-c", "device_number": 2, "primary": false, "route_table": 3, "cidrs": [
                {"cidr": "10.0.1.0/28", "prefix": true, "addresses": [{"ip": "10.0.1.3", "pod": "demo/p9"}]}
            ]}
        ]);
        let (rows, by_ip) = enis_from_introspection(&v);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].id.as_str(), rows[0].pods, rows[0].addresses),
            ("eni-a", 1, 2)
        );
        assert_eq!(
            (rows[2].id.as_str(), rows[2].pods, rows[2].addresses),
            ("eni-c", 1, 16)
        );
        assert_eq!(
            (rows[1].id.as_str(), rows[1].pods, rows[1].addresses),
            ("eni-b", 1, 2)
        );
        assert_eq!(
            by_ip.get(&"10.0.0.20".parse().expect("ip")),
            Some(&("eni-b".to_string(), 1))
        );
        assert!(!by_ip.contains_key(&"10.0.0.21".parse().expect("ip")));
        assert!(enis_from_introspection(&json!(null)).0.is_empty());
    }

    #[test]
    fn capacity_from_ipamd_limits() {
        // m5.large: 3 ENIs × 10 IPv4 addresses, one of them each ENI's own.
        let ips = json!({"limits": {"max_enis": 3, "slots_per_eni": 9, "addresses_per_slot": 1, "max_pods": 29}});
        assert_eq!(pod_capacity(&ips), Some(27));
        // Prefix delegation: 27 /28s, but kubelet's max pods caps it.
        let pd = json!({"limits": {"max_enis": 3, "slots_per_eni": 9, "addresses_per_slot": 16, "max_pods": 110}});
        assert_eq!(pod_capacity(&pd), Some(110));
        assert_eq!(pod_capacity(&json!({})), None);
    }

    #[test]
    fn report_has_every_section_and_flags_a_changed_host() {
        let r = Report {
            title: "demo".into(),
            nodes: vec![NodeReport {
                name: "node1".into(),
                instance_id: "i-1".into(),
                instance_type: "m5.large".into(),
                primary_ip: Ipv4Addr::new(10, 0, 0, 5),
                enis: vec![EniRow {
                    id: "eni-a".into(),
                    device: 0,
                    primary: true,
                    route_table: 254,
                    addresses: 9,
                    pods: 1,
                }],
                pods: vec![PodRow {
                    name: "p1".into(),
                    ip: Ipv4Addr::new(10, 0, 0, 10),
                    eni: "eni-a".into(),
                    device: Some(0),
                    add: ms(12),
                }],
            }],
            traffic: Traffic::default(),
            journey: vec![Step {
                what: "CreateVolume".into(),
                node: "-".into(),
                detail: "vol-1".into(),
                took: ms(210),
            }],
            ec2: Table::new(&["EC2 ACTION"]),
            timings: vec![("vpcsim up".into(), "1.0 s".into())],
            pod_wiring: vec![("node1".into(), 2, 1)],
        };
        let text = render(&r);
        for want in [
            "Nodes and their ENIs",
            "eni-a (primary)",
            "NODE1 POD",
            "10.0.0.10",
            "eni-a (0)",
            "12.0 ms",
            "The volume's journey",
            "vol-1",
            "EC2 API calls",
            "2 → 1  LEFT BEHIND",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
