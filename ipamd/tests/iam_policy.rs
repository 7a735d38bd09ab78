//! The node role's IAM policy (`deploy/iam/networking-policy.json`) lists exactly the EC2 actions
//! ipamd's code calls: adding an EC2 call without the permission, or keeping a permission no code
//! needs, fails here. Calls are found in the source as `.ec2.<operation>(` (every EC2 request goes
//! through the client field `ec2`), operation names turned into API action names.

use std::collections::BTreeSet;
use std::path::Path;

/// Permissions a request needs beyond its own action: tagging an ENI in its CreateNetworkInterface
/// (TagSpecifications) needs ec2:CreateTags, limited in the policy to that create action.
const IMPLIED: &[&str] = &["ec2:CreateTags"];

fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// `ec2:<Action>` for every `.ec2 . <operation> (` in the Rust files under `dir`.
fn called(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).expect("source dir") {
        let p = e.expect("entry").path();
        if p.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let src = std::fs::read_to_string(&p).expect("source");
        let squashed: String = src.chars().filter(|c| !c.is_whitespace()).collect();
        let mut rest = squashed.as_str();
        while let Some(i) = rest.find(".ec2.") {
            rest = &rest[i + 5..];
            let op: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if rest[op.len()..].starts_with('(') && !op.is_empty() {
                out.insert(format!("ec2:{}", camel(&op)));
            }
        }
    }
    out
}

fn policy_actions(path: &Path) -> BTreeSet<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("policy file"))
            .expect("policy JSON");
    let mut out = BTreeSet::new();
    for st in v["Statement"].as_array().expect("statements") {
        assert_eq!(st["Effect"], "Allow", "{st}");
        match &st["Action"] {
            serde_json::Value::String(a) => {
                out.insert(a.clone());
            }
            serde_json::Value::Array(a) => {
                out.extend(a.iter().filter_map(|x| x.as_str().map(String::from)))
            }
            other => panic!("bad Action {other}"),
        }
    }
    out
}

#[test]
fn the_node_policy_lists_exactly_the_ec2_actions_ipamd_calls() {
    let root = e2e::package_dir(env!("CARGO_MANIFEST_DIR"));
    let code = called(&root.join("src"));
    assert!(
        code.contains("ec2:CreateNetworkInterface") && code.len() >= 8,
        "the source scan found too little: {code:?}"
    );
    let policy = policy_actions(&root.join("../deploy/iam/networking-policy.json"));
    let missing: Vec<_> = code.difference(&policy).collect();
    assert!(
        missing.is_empty(),
        "ipamd calls EC2 actions the node policy does not allow: {missing:?}"
    );
    let unused: Vec<_> = policy
        .difference(&code)
        .filter(|a| !IMPLIED.contains(&a.as_str()))
        .collect();
    assert!(
        unused.is_empty(),
        "the node policy allows actions no code calls (least privilege): {unused:?}"
    );
}

#[test]
fn operation_names_become_action_names() {
    assert_eq!(
        camel("describe_network_interfaces"),
        "DescribeNetworkInterfaces"
    );
    assert_eq!(
        camel("assign_private_ip_addresses"),
        "AssignPrivateIpAddresses"
    );
}
