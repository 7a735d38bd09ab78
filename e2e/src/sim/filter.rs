//! `Filter.N.Name` / `Filter.N.Value.M` matching, with EC2's `*` and `?` wildcards.

use super::error::{ApiError, ApiResult};
use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

/// Glob match with `*` (any run) and `?` (one character).
pub fn glob(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// The values a resource has for a filter name; `None` when the name is not a filter of this
/// resource kind.
pub type Extract<'a, T> = &'a dyn Fn(&T, &str) -> Option<Vec<String>>;

/// Filter names each resource kind accepts; `tag:` stands for `tag:<key>`, `tag-key` and
/// `tag-value`.
pub const ENI: &[&str] = &[
    "tag:",
    "network-interface-id",
    "subnet-id",
    "vpc-id",
    "availability-zone",
    "description",
    "status",
    "mac-address",
    "group-id",
    "private-ip-address",
    "addresses.private-ip-address",
    "ipv4-prefix",
    "source-dest-check",
    "requester-managed",
    "interface-type",
    "owner-id",
    "attachment.instance-id",
    "attachment.attachment-id",
    "attachment.device-index",
    "attachment.network-card-index",
    "attachment.status",
    "attachment.delete-on-termination",
];
pub const VOLUME: &[&str] = &[
    "tag:",
    "volume-id",
    "status",
    "availability-zone",
    "volume-type",
    "size",
    "snapshot-id",
    "encrypted",
    "multi-attach-enabled",
    "attachment.instance-id",
    "attachment.device",
    "attachment.status",
    "attachment.delete-on-termination",
];
pub const SNAPSHOT: &[&str] = &[
    "tag:",
    "snapshot-id",
    "volume-id",
    "status",
    "owner-id",
    "volume-size",
    "description",
    "encrypted",
];
pub const MODIFICATION: &[&str] = &[
    "volume-id",
    "modification-state",
    "target-size",
    "target-volume-type",
    "original-size",
    "original-volume-type",
];
pub const INSTANCE: &[&str] = &[
    "tag:",
    "instance-id",
    "instance-type",
    "instance-state-name",
    "availability-zone",
    "subnet-id",
    "vpc-id",
    "private-ip-address",
    "image-id",
    "network-interface.network-interface-id",
    "network-interface.addresses.private-ip-address",
];
pub const SUBNET: &[&str] = &[
    "tag:",
    "subnet-id",
    "vpc-id",
    "availability-zone",
    "availability-zone-id",
    "cidr-block",
    "cidr",
    "state",
    "default-for-az",
];
pub const VPC: &[&str] = &[
    "tag:",
    "vpc-id",
    "cidr",
    "cidr-block-association.cidr-block",
    "state",
    "is-default",
];
pub const SECURITY_GROUP: &[&str] = &["tag:", "group-id", "group-name", "vpc-id", "description"];
pub const ZONE: &[&str] = &["zone-name", "zone-id", "region-name", "state"];
pub const INSTANCE_TYPE: &[&str] = &[
    "instance-type",
    "hypervisor",
    "network-info.ipv4-addresses-per-interface",
    "network-info.maximum-network-interfaces",
    "ebs-info.nvme-support",
    "bare-metal",
];

fn known(name: &str, names: &[&str]) -> bool {
    names.contains(&name)
        || (names.contains(&"tag:")
            && (name.starts_with("tag:") || name == "tag-key" || name == "tag-value"))
}

/// Keeps the items that match every filter (values within one filter are OR-ed). A filter name
/// the resource kind does not have is refused, whatever the items.
pub fn apply<T>(
    items: Vec<T>,
    filters: &[Filter],
    names: &[&str],
    extract: Extract<'_, T>,
) -> ApiResult<Vec<T>> {
    if let Some(f) = filters.iter().find(|f| !known(&f.name, names)) {
        return Err(ApiError::invalid_param(format!(
            "The filter '{}' is invalid",
            f.name
        )));
    }
    Ok(items
        .into_iter()
        .filter(|it| {
            filters.iter().all(|f| {
                let have = extract(it, &f.name).unwrap_or_default();
                f.values
                    .iter()
                    .any(|want| have.iter().any(|h| glob(want, h)))
            })
        })
        .collect())
}

fn tag_values(tags: &Tags, name: &str) -> Option<Option<Vec<String>>> {
    if let Some(k) = name.strip_prefix("tag:") {
        return Some(Some(tags.get(k).cloned().into_iter().collect()));
    }
    if name == "tag-key" {
        return Some(Some(tags.keys().cloned().collect()));
    }
    if name == "tag-value" {
        return Some(Some(tags.values().cloned().collect()));
    }
    None
}

fn one(s: impl ToString) -> Option<Vec<String>> {
    Some(vec![s.to_string()])
}

pub fn eni(e: &Eni, name: &str) -> Option<Vec<String>> {
    if let Some(t) = tag_values(&e.tags, name) {
        return t;
    }
    let a = e.attachment.as_ref();
    match name {
        "network-interface-id" => one(&e.id),
        "subnet-id" => one(&e.subnet_id),
        "vpc-id" => one(&e.vpc_id),
        "availability-zone" => one(&e.az),
        "description" => one(&e.description),
        "status" => one(e.status()),
        "mac-address" => one(&e.mac),
        "group-id" => Some(e.groups.clone()),
        "private-ip-address" | "addresses.private-ip-address" => {
            Some(e.private_ips.iter().map(|i| i.to_string()).collect())
        }
        "ipv4-prefix" => Some(e.prefixes.iter().map(|p| p.to_string()).collect()),
        "source-dest-check" => one(e.source_dest_check),
        "requester-managed" => one(e.requester_managed),
        "interface-type" => one("interface"),
        "owner-id" => one("123456789012"),
        "attachment.instance-id" => Some(a.map(|a| a.instance_id.clone()).into_iter().collect()),
        "attachment.attachment-id" => Some(a.map(|a| a.id.clone()).into_iter().collect()),
        "attachment.device-index" => {
            Some(a.map(|a| a.device_index.to_string()).into_iter().collect())
        }
        "attachment.network-card-index" => Some(
            a.map(|a| a.network_card_index.to_string())
                .into_iter()
                .collect(),
        ),
        "attachment.status" => Some(a.map(|a| a.state.name().to_string()).into_iter().collect()),
        "attachment.delete-on-termination" => Some(
            a.map(|a| a.delete_on_termination.to_string())
                .into_iter()
                .collect(),
        ),
        _ => None,
    }
}

pub fn volume(v: &Volume, name: &str) -> Option<Vec<String>> {
    if let Some(t) = tag_values(&v.tags, name) {
        return t;
    }
    let atts = || v.attachments.iter();
    match name {
        "volume-id" => one(&v.id),
        "status" => one(v.state.name()),
        "availability-zone" => one(&v.az),
        "volume-type" => one(&v.spec.volume_type),
        "size" => one(v.spec.size_gib),
        "snapshot-id" => Some(v.snapshot_id.clone().into_iter().collect()),
        "encrypted" => one(v.encrypted),
        "multi-attach-enabled" => one(v.multi_attach),
        "attachment.instance-id" => Some(atts().map(|a| a.instance_id.clone()).collect()),
        "attachment.device" => Some(atts().map(|a| a.device.clone()).collect()),
        "attachment.status" => Some(atts().map(|a| a.state.name().to_string()).collect()),
        "attachment.delete-on-termination" => Some(
            atts()
                .map(|a| a.delete_on_termination.to_string())
                .collect(),
        ),
        _ => None,
    }
}

pub fn snapshot(s: &Snapshot, name: &str) -> Option<Vec<String>> {
    if let Some(t) = tag_values(&s.tags, name) {
        return t;
    }
    match name {
        "snapshot-id" => one(&s.id),
        "volume-id" => one(&s.volume_id),
        "status" => one(s.state_name()),
        "owner-id" => one("123456789012"),
        "volume-size" => one(s.size_gib),
        "description" => one(&s.description),
        "encrypted" => one(s.encrypted),
        _ => None,
    }
}

pub fn modification(m: &Modification, name: &str) -> Option<Vec<String>> {
    match name {
        "volume-id" => one(&m.volume_id),
        "modification-state" => one(m.state.name()),
        "target-size" => one(m.target.size_gib),
        "target-volume-type" => one(&m.target.volume_type),
        "original-size" => one(m.original.size_gib),
        "original-volume-type" => one(&m.original.volume_type),
        _ => None,
    }
}

/// Instance filters need the ENIs (network-interface.*), so they take the simulation.
pub fn instance(sim: &Sim) -> impl Fn(&Instance, &str) -> Option<Vec<String>> + '_ {
    move |i, name| {
        if let Some(t) = tag_values(&i.tags, name) {
            return t;
        }
        let enis = || sim.enis.values().filter(|e| e.attached_to(&i.id));
        match name {
            "instance-id" => one(&i.id),
            "instance-type" => one(&i.instance_type),
            "instance-state-name" => one(i.state.name()),
            "availability-zone" => one(&i.az),
            "subnet-id" => one(&i.subnet_id),
            "vpc-id" => one(&i.vpc_id),
            "private-ip-address" => one(i.private_ip),
            "image-id" => one(&i.image_id),
            "network-interface.network-interface-id" => {
                Some(enis().map(|e| e.id.clone()).collect())
            }
            "network-interface.addresses.private-ip-address" => Some(
                enis()
                    .flat_map(|e| e.private_ips.iter().map(|x| x.to_string()))
                    .collect(),
            ),
            _ => None,
        }
    }
}

pub fn subnet(s: &Subnet, name: &str) -> Option<Vec<String>> {
    if let Some(t) = tag_values(&s.tags, name) {
        return t;
    }
    match name {
        "subnet-id" => one(&s.id),
        "vpc-id" => one(&s.vpc_id),
        "availability-zone" => one(&s.az),
        "availability-zone-id" => one(&s.az_id),
        "cidr-block" | "cidr" => one(s.cidr),
        "state" => one("available"),
        "default-for-az" => one(false),
        _ => None,
    }
}

pub fn vpc(v: &Vpc, name: &str) -> Option<Vec<String>> {
    if let Some(t) = tag_values(&v.tags, name) {
        return t;
    }
    match name {
        "vpc-id" => one(&v.id),
        "cidr" | "cidr-block-association.cidr-block" => one(v.cidr),
        "state" => one("available"),
        "is-default" => one(false),
        _ => None,
    }
}

pub fn security_group(g: &SecurityGroup, name: &str) -> Option<Vec<String>> {
    if let Some(t) = tag_values(&g.tags, name) {
        return t;
    }
    match name {
        "group-id" => one(&g.id),
        "group-name" => one(&g.name),
        "vpc-id" => one(&g.vpc_id),
        "description" => one(&g.description),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        let cases = [
            ("m5.*", "m5.large", true),
            ("m5.*", "m6i.large", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*large", "m5.xlarge", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(glob(p, s), want, "{p} vs {s}");
        }
    }
}
