//! SNAT and connmark for pod egress, as upstream's nftables backend does it, in ipamd's own table
//! `ip nodewire` (replaced atomically on every apply, so a restart never duplicates a rule):
//!
//! * chain `snat` (nat, postrouting, srcnat): traffic to the VPC CIDRs and
//!   `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS` keeps its source; everything else leaving by a non-VLAN
//!   interface is SNATed to the node's primary IP (`--random-fully` / `--random` / none per
//!   `AWS_VPC_K8S_CNI_RANDOMIZESNAT`). Absent with `AWS_VPC_K8S_CNI_EXTERNALSNAT=true`.
//! * chain `connmark` (nat, prerouting, priority -90 — after kube-proxy's DNAT at -100): new
//!   connections from pod veths (`<vethPrefix>*`) to non-VPC destinations get ct mark 0x80
//!   (`AWS_VPC_K8S_CNI_CONNMARK`). Absent with external SNAT too (the pod's own ENI carries it).
//! * chain `mangle` (filter, prerouting, mangle): the mark is copied to the packet mark for pod
//!   traffic, and (NodePort support) connections arriving on the primary interface for a local
//!   address are marked, so replies return through it.
//! * rule `fwmark 0x80/0x80 lookup main` at priority 1024 (netlink) sends marked traffic out of the
//!   primary ENI even from pods on secondary ENIs.
//!
//! The ruleset is built as libnftables JSON, checked against the `nftables` crate's typed schema,
//! and applied by that crate (through the `nft` binary).

use crate::config::{Config, SnatRandom};
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use std::net::Ipv4Addr;

pub const TABLE: &str = "nodewire";
pub const FWMARK_RULE_PRIORITY: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the ruleset does not match nftables' schema: {0}")]
    Schema(#[from] serde_json::Error),
    #[error("applying the ruleset: {0}")]
    Apply(String),
}

fn daddr_in(cidrs: &[Ipv4Net]) -> Value {
    let set: Vec<Value> = cidrs
        .iter()
        .map(|c| json!({"prefix": {"addr": c.network().to_string(), "len": c.prefix_len()}}))
        .collect();
    json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": set}}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "ip", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn chain(name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": name, "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}})
}

fn iifname(pattern: &str) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": pattern}})
}

fn local_daddr() -> Value {
    json!({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}})
}

fn ct_mark_or(mark: u32) -> Value {
    json!({"mangle": {"key": {"ct": {"key": "mark"}}, "value": {"|": [{"ct": {"key": "mark"}}, mark]}}})
}

fn meta_mark_or(mark: u32) -> Value {
    json!({"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, mark]}}})
}

/// The whole ruleset (pure): delete-and-recreate of our table in one transaction.
pub fn ruleset(
    cfg: &Config,
    primary_ip: Ipv4Addr,
    primary_if: &str,
    vpc_cidrs: &[Ipv4Net],
) -> Value {
    let mut exempt: Vec<Ipv4Net> = vpc_cidrs.to_vec();
    exempt.extend(cfg.exclude_snat_cidrs.iter().copied());
    exempt.sort();
    exempt.dedup();
    let pods = format!("{}*", cfg.veth_prefix);
    let mark = cfg.connmark;
    let mut cmds = vec![
        json!({"add": {"table": {"family": "ip", "name": TABLE}}}),
        json!({"delete": {"table": {"family": "ip", "name": TABLE}}}),
        json!({"add": {"table": {"family": "ip", "name": TABLE}}}),
    ];
    if !cfg.external_snat {
        cmds.push(chain("snat", "nat", "postrouting", 100));
        cmds.push(rule(
            "snat",
            vec![daddr_in(&exempt), json!({"return": null})],
        ));
        cmds.push(rule("snat", vec![
            json!({"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "vlan*"}}),
            json!({"return": null}),
        ]));
        let mut nat = json!({"addr": primary_ip.to_string()});
        match cfg.randomize_snat {
            SnatRandom::Prng => nat["flags"] = json!(["fully-random"]),
            SnatRandom::HashRandom => nat["flags"] = json!(["random"]),
            SnatRandom::None => {}
        }
        cmds.push(rule("snat", vec![json!({"snat": nat})]));
    }
    // Pod egress marking exists for our SNAT only: with an external NAT the pod's own ENI must
    // carry its non-VPC traffic unchanged (upstream gates these rules on !externalSNAT too).
    if !cfg.external_snat {
        cmds.push(chain("connmark", "nat", "prerouting", -90));
        cmds.push(rule(
            "connmark",
            vec![local_daddr(), json!({"return": null})],
        ));
        cmds.push(rule(
            "connmark",
            vec![iifname(&pods), daddr_in(&exempt), json!({"return": null})],
        ));
        // The packet mark too: routing of this first packet happens right after this hook, and
        // the mangle chain (earlier, at -150) ran before the connection had its mark. Without it
        // a secondary-ENI pod's first packet leaves through its own ENI with the node's address
        // and EC2's source/destination check drops it (the SYN is only retried a second later).
        cmds.push(rule(
            "connmark",
            vec![iifname(&pods), ct_mark_or(mark), meta_mark_or(mark)],
        ));
    }
    // Replies to NodePort connections (marked on the primary interface) and later packets of
    // marked pod connections get the packet mark back, so they route by main.
    if !cfg.external_snat || cfg.node_port_support {
        cmds.push(chain("mangle", "filter", "prerouting", -150));
        if cfg.node_port_support {
            cmds.push(rule(
                "mangle",
                vec![iifname(primary_if), local_daddr(), ct_mark_or(mark)],
            ));
        }
        // Only our bit of the packet mark changes (kube-proxy, Calico and others use the rest).
        cmds.push(rule("mangle", vec![
            iifname(&pods),
            json!({"match": {"op": "==", "left": {"&": [{"ct": {"key": "mark"}}, mark]}, "right": mark}}),
            meta_mark_or(mark),
        ]));
    }
    json!({"nftables": cmds})
}

/// Applies the ruleset atomically.
pub fn apply(ruleset: &Value) -> Result<(), Error> {
    let typed: nftables::schema::Nftables = serde_json::from_value(ruleset.clone())?;
    nftables::helper::apply_ruleset(&typed).map_err(|e| Error::Apply(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(env: &[(&str, &str)]) -> Config {
        let m: std::collections::BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_env(|k| m.get(k).cloned()).expect("config")
    }

    fn text(v: &Value) -> String {
        v.to_string()
    }

    #[test]
    fn default_ruleset_snats_non_vpc_egress_and_marks_pod_connections() {
        let vpc = ["10.90.0.0/16".parse().expect("net")];
        let r = ruleset(
            &cfg(&[("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "192.168.0.0/16")]),
            "10.90.1.5".parse().expect("ip"),
            "eth0",
            &vpc,
        );
        let t = text(&r);
        assert!(
            t.contains(r#""snat":{"addr":"10.90.1.5","flags":["fully-random"]}"#),
            "{t}"
        );
        assert!(
            t.contains(r#"{"prefix":{"addr":"10.90.0.0","len":16}}"#)
                && t.contains(r#"{"prefix":{"addr":"192.168.0.0","len":16}}"#)
        );
        assert!(
            t.contains(r#""right":"eni*""#),
            "pod veths matched by the veth prefix"
        );
        assert!(
            t.contains(r#""name":"connmark","policy":"accept","prio":-90"#),
            "after kube-proxy's DNAT: {t}"
        );
        let typed: nftables::schema::Nftables =
            serde_json::from_value(r).expect("matches the nftables schema");
        assert_eq!(typed.objects.len(), 3 + 1 + 3 + 1 + 3 + 1 + 2);
    }

    #[test]
    fn external_snat_drops_the_snat_chain_and_randomisation_follows_the_variable() {
        let vpc = ["10.90.0.0/16".parse().expect("net")];
        let ip = "10.90.1.5".parse().expect("ip");
        let t = text(&ruleset(
            &cfg(&[("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true")]),
            ip,
            "eth0",
            &vpc,
        ));
        assert!(!t.contains(r#""snat":{"#), "{t}");
        // NodePort replies still return by main, but pod egress is not marked: the external NAT
        // needs it to leave through the pod's own ENI.
        assert!(
            !t.contains(r#""name":"connmark""#) && t.contains(r#""name":"mangle""#),
            "{t}"
        );
        assert!(
            t.contains(r#""right":"eth0""#),
            "NodePort mark on the primary: {t}"
        );
        let t = text(&ruleset(
            &cfg(&[
                ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
                ("AWS_VPC_CNI_NODE_PORT_SUPPORT", "false"),
            ]),
            ip,
            "eth0",
            &vpc,
        ));
        assert!(
            !t.contains(r#""name":"connmark""#) && !t.contains(r#""name":"mangle""#),
            "nothing to mark: {t}"
        );
        let t = text(&ruleset(
            &cfg(&[("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "hashrandom")]),
            ip,
            "eth0",
            &vpc,
        ));
        assert!(t.contains(r#""flags":["random"]"#), "{t}");
        let t = text(&ruleset(
            &cfg(&[
                ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "none"),
                ("AWS_VPC_K8S_CNI_CONNMARK", "0x100"),
            ]),
            ip,
            "eth0",
            &vpc,
        ));
        assert!(!t.contains("flags\":[\"random") && t.contains("256"), "{t}");
    }
}
