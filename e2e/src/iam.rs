//! Checking an IAM policy against the code: the EC2 actions a crate's source calls (found as
//! `.<client field>.<operation>(`), and the actions a policy document allows. Used by the tests
//! that keep `deploy/iam/*.json` exactly as wide as the code needs.

use std::collections::BTreeSet;
use std::path::Path;

/// `describe_network_interfaces` → `DescribeNetworkInterfaces`.
pub fn camel(snake: &str) -> String {
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

/// `ec2:<Action>` for every `.<field>.<operation>(` in the Rust files directly under `dir`
/// (whitespace ignored, so rustfmt's line breaks do not hide a call).
pub fn called(dir: &Path, field: &str) -> BTreeSet<String> {
    let needle = format!(".{field}.");
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).expect("source dir") {
        let p = e.expect("entry").path();
        if p.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let src = std::fs::read_to_string(&p).expect("source");
        let squashed: String = src.chars().filter(|c| !c.is_whitespace()).collect();
        let mut rest = squashed.as_str();
        while let Some(i) = rest.find(&needle) {
            rest = &rest[i + needle.len()..];
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

/// Every action an IAM policy document allows (all statements must be `Allow`).
pub fn policy_actions(path: &Path) -> BTreeSet<String> {
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

/// Fails unless `policy` allows exactly what `code` calls, plus `implied` (permissions a request
/// needs beyond its own action, e.g. tagging at create time).
pub fn assert_exact(
    what: &str,
    code: &BTreeSet<String>,
    policy: &BTreeSet<String>,
    implied: &[&str],
) {
    let missing: Vec<_> = code.difference(policy).collect();
    assert!(
        missing.is_empty(),
        "{what} calls EC2 actions its policy does not allow: {missing:?}"
    );
    let unused: Vec<_> = policy
        .difference(code)
        .filter(|a| !implied.contains(&a.as_str()))
        .collect();
    assert!(
        unused.is_empty(),
        "{what}'s policy allows actions no code calls (least privilege): {unused:?}"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn operation_names_become_action_names() {
        assert_eq!(
            super::camel("describe_network_interfaces"),
            "DescribeNetworkInterfaces"
        );
        assert_eq!(
            super::camel("assign_private_ip_addresses"),
            "AssignPrivateIpAddresses"
        );
    }
}
