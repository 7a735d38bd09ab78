//! EC2 actions: Query parameters in, calls on the core, XML out (element names as EC2's).

use super::params::Params;
use super::xml::Xml;
use crate::sim::ebs::{AttachmentReply, CreateVolume};
use crate::sim::error::{ApiError, ApiResult};
use crate::sim::filter;
use crate::sim::net::{Assign, CreateEni, RunInstance};
use crate::sim::*;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::time::Instant;

/// Every action vpcsim implements.
pub const ACTIONS: &[&str] = &[
    "AssignPrivateIpAddresses",
    "AttachNetworkInterface",
    "AttachVolume",
    "CreateNetworkInterface",
    "CreateSecurityGroup",
    "CreateSnapshot",
    "CreateTags",
    "CreateVolume",
    "DeleteNetworkInterface",
    "DeleteSnapshot",
    "DeleteTags",
    "DeleteVolume",
    "DescribeAvailabilityZones",
    "DescribeInstanceTypes",
    "DescribeInstances",
    "DescribeNetworkInterfaces",
    "DescribeSecurityGroups",
    "DescribeSnapshots",
    "DescribeSubnets",
    "DescribeVolumes",
    "DescribeVolumesModifications",
    "DescribeVpcs",
    "DetachNetworkInterface",
    "DetachVolume",
    "ModifyNetworkInterfaceAttribute",
    "ModifyVolume",
    "RunInstances",
    "TerminateInstances",
    "UnassignPrivateIpAddresses",
];

/// Runs one action against the simulation; returns the response body's inner XML.
pub fn dispatch(sim: &mut Sim, now: Instant, action: &str, p: &Params) -> ApiResult<String> {
    if !ACTIONS.contains(&action) {
        return Err(ApiError::new(
            "InvalidAction",
            format!("The action {action} is not valid for this web service."),
        ));
    }
    // DryRun: CreateVolume validates its parameters first (the CSI driver relies on that).
    if p.bool("DryRun")? == Some(true) && action != "CreateVolume" {
        return Err(crate::sim::ebs::dry_run_error());
    }
    sim.advance(now);
    let mut x = Xml::default();
    match action {
        "DescribeAvailabilityZones" => describe_azs(sim, p, &mut x)?,
        "DescribeVpcs" => {
            let d = Describe {
                ids: "VpcId",
                kind: "vpc",
                set: "vpcSet",
                bounds: (5, 1000),
                names: filter::VPC,
                id: |v: &Vpc| &v.id,
            };
            describe(&mut x, p, vec![sim.vpc.clone()], d, &filter::vpc, |x, v| {
                x.leaf("vpcId", &v.id)
                    .leaf("state", "available")
                    .leaf("cidrBlock", v.cidr)
                    .set("cidrBlockAssociationSet", [v.cidr], |x, c| {
                        x.leaf("cidrBlock", c).node("cidrBlockState", |x| {
                            x.leaf("state", "associated");
                        });
                    })
                    .leaf("ownerId", &sim.cfg.account_id)
                    .leaf("instanceTenancy", "default")
                    .leaf("isDefault", false)
                    .tags(&v.tags);
            })?;
        }
        "DescribeSubnets" => {
            let d = Describe {
                ids: "SubnetId",
                kind: "subnet",
                set: "subnetSet",
                bounds: (5, 1000),
                names: filter::SUBNET,
                id: |s: &Subnet| &s.id,
            };
            describe(
                &mut x,
                p,
                sim.subnets.values().cloned().collect(),
                d,
                &filter::subnet,
                |x, s| {
                    x.leaf("subnetId", &s.id)
                        .leaf("state", "available")
                        .leaf("vpcId", &s.vpc_id)
                        .leaf("cidrBlock", s.cidr)
                        .leaf("availableIpAddressCount", s.available())
                        .leaf("availabilityZone", &s.az)
                        .leaf("availabilityZoneId", &s.az_id)
                        .leaf("defaultForAz", false)
                        .leaf("mapPublicIpOnLaunch", false)
                        .leaf("ownerId", &sim.cfg.account_id)
                        .tags(&s.tags);
                },
            )?;
        }
        "CreateSecurityGroup" => {
            let id = sim.create_security_group(
                p.req("GroupName")?,
                p.req("GroupDescription")?,
                p.get("VpcId"),
            )?;
            x.leaf("return", true).leaf("groupId", &id);
        }
        "DescribeSecurityGroups" => {
            let d = Describe {
                ids: "GroupId",
                kind: "sg",
                set: "securityGroupInfo",
                bounds: (5, 1000),
                names: filter::SECURITY_GROUP,
                id: |g: &SecurityGroup| &g.id,
            };
            let items = sim.security_groups.values().cloned().collect();
            describe(&mut x, p, items, d, &filter::security_group, |x, g| {
                x.leaf("ownerId", &sim.cfg.account_id)
                    .leaf("groupId", &g.id)
                    .leaf("groupName", &g.name)
                    .leaf("groupDescription", &g.description)
                    .leaf("vpcId", &g.vpc_id)
                    .tags(&g.tags);
            })?;
        }
        "DescribeInstanceTypes" => describe_instance_types(p, &mut x)?,
        "RunInstances" => run_instances(sim, now, p, &mut x)?,
        "TerminateInstances" => {
            let ids = p.list("InstanceId");
            if ids.is_empty() {
                return Err(ApiError::missing("InstanceId"));
            }
            for id in &ids {
                sim.instance(id)?;
            }
            let mut out = Vec::new();
            for id in ids {
                let (prev, cur) = sim.terminate_instance(now, &id)?;
                out.push((id, prev, cur));
            }
            x.set("instancesSet", out, |x, (id, prev, cur)| {
                x.leaf("instanceId", id)
                    .node("currentState", |x| {
                        x.leaf("code", 48).leaf("name", cur);
                    })
                    .node("previousState", |x| {
                        x.leaf("code", if prev == "running" { 16 } else { 48 })
                            .leaf("name", prev);
                    });
            });
        }
        "DescribeInstances" => {
            let d = Describe {
                ids: "InstanceId",
                kind: "instance",
                set: "reservationSet",
                bounds: (5, 1000),
                names: filter::INSTANCE,
                id: |i: &Instance| &i.id,
            };
            let items = sim.instances.values().cloned().collect();
            describe(&mut x, p, items, d, &filter::instance(sim), |x, i| {
                x.leaf("reservationId", format!("r-{}", &i.id[2..]))
                    .leaf("ownerId", &sim.cfg.account_id)
                    .node("groupSet", |_| {})
                    .set("instancesSet", [&i], |x, i| instance_xml(sim, x, i));
            })?;
        }
        "CreateNetworkInterface" => {
            let mut explicit: Vec<(Ipv4Addr, bool)> = Vec::new();
            for n in p.indices("PrivateIpAddresses") {
                let ip = ip_param(p, &format!("PrivateIpAddresses.{n}.PrivateIpAddress"))?;
                let primary = p
                    .bool(&format!("PrivateIpAddresses.{n}.Primary"))?
                    .unwrap_or(false);
                explicit.push((ip, primary));
            }
            if let Some(ip) = p.parsed::<Ipv4Addr>("PrivateIpAddress", "IPv4 address")? {
                if explicit.iter().any(|(_, pr)| *pr) {
                    return Err(ApiError::combination(
                        "PrivateIpAddress and a primary PrivateIpAddresses entry",
                    ));
                }
                explicit.insert(0, (ip, true));
            }
            let prefixes = p
                .list_of("Ipv4Prefix", "Ipv4Prefix")
                .iter()
                .map(|s| net_param(s))
                .collect::<ApiResult<Vec<_>>>()?;
            let req = CreateEni {
                subnet_id: p.req("SubnetId")?.to_string(),
                groups: p.list("SecurityGroupId"),
                description: p.get("Description").unwrap_or_default().to_string(),
                secondary_count: p.num("SecondaryPrivateIpAddressCount")?.unwrap_or(0),
                private_ips: explicit,
                prefix_count: p.num("Ipv4PrefixCount")?.unwrap_or(0),
                prefixes,
                tags: tags_for(&p.tag_specs()?, "network-interface")?,
                client_token: p.get("ClientToken").map(String::from),
            };
            let id = sim.create_eni(req)?;
            let eni = sim.eni(&id)?.clone();
            x.node("networkInterface", |x| eni_xml(sim, x, &eni));
            x.opt("clientToken", p.get("ClientToken"));
        }
        "AttachNetworkInterface" => {
            let (att, card) = sim.attach_eni(
                now,
                p.req("NetworkInterfaceId")?,
                p.req("InstanceId")?,
                p.num("DeviceIndex")?
                    .ok_or_else(|| ApiError::missing("DeviceIndex"))?,
                p.num("NetworkCardIndex")?.unwrap_or(0),
            )?;
            x.leaf("attachmentId", att).leaf("networkCardIndex", card);
        }
        "DetachNetworkInterface" => {
            sim.detach_eni(
                now,
                p.req("AttachmentId")?,
                p.bool("Force")?.unwrap_or(false),
            )?;
            x.leaf("return", true);
        }
        "DeleteNetworkInterface" => {
            sim.delete_eni(p.req("NetworkInterfaceId")?)?;
            x.leaf("return", true);
        }
        "ModifyNetworkInterfaceAttribute" => {
            let dot = match p.get("Attachment.AttachmentId") {
                Some(a) => Some((
                    a.to_string(),
                    p.bool("Attachment.DeleteOnTermination")?
                        .ok_or_else(|| ApiError::missing("Attachment.DeleteOnTermination"))?,
                )),
                None => None,
            };
            let groups = p.list("SecurityGroupId");
            sim.modify_eni_attribute(
                p.req("NetworkInterfaceId")?,
                dot,
                (!groups.is_empty()).then_some(groups),
                p.get("Description.Value").map(String::from),
                p.bool("SourceDestCheck.Value")?,
            )?;
            x.leaf("return", true);
        }
        "DescribeNetworkInterfaces" => {
            let d = Describe {
                ids: "NetworkInterfaceId",
                kind: "eni",
                set: "networkInterfaceSet",
                bounds: (5, 1000),
                names: filter::ENI,
                id: |e: &Eni| &e.id,
            };
            describe(
                &mut x,
                p,
                sim.enis.values().cloned().collect(),
                d,
                &filter::eni,
                |x, e| eni_xml(sim, x, &e),
            )?;
        }
        "AssignPrivateIpAddresses" => {
            let ips = p
                .list("PrivateIpAddress")
                .iter()
                .map(|s| ip_str(s))
                .collect::<ApiResult<Vec<_>>>()?;
            let prefixes = p
                .list("Ipv4Prefix")
                .iter()
                .map(|s| net_param(s))
                .collect::<ApiResult<Vec<_>>>()?;
            let eni_id = p.req("NetworkInterfaceId")?.to_string();
            let (got_ips, got_prefixes) = sim.assign_private_ips(
                now,
                Assign {
                    eni_id: eni_id.clone(),
                    count: p.num("SecondaryPrivateIpAddressCount")?.unwrap_or(0),
                    ips,
                    prefix_count: p.num("Ipv4PrefixCount")?.unwrap_or(0),
                    prefixes,
                    allow_reassignment: p.bool("AllowReassignment")?.unwrap_or(false),
                },
            )?;
            x.leaf("networkInterfaceId", eni_id);
            x.set("assignedPrivateIpAddressesSet", got_ips, |x, ip| {
                x.leaf("privateIpAddress", ip);
            });
            x.set("assignedIpv4PrefixSet", got_prefixes, |x, pf| {
                x.leaf("ipv4Prefix", pf);
            });
            x.leaf("return", true);
        }
        "UnassignPrivateIpAddresses" => {
            let ips = p
                .list("PrivateIpAddress")
                .iter()
                .map(|s| ip_str(s))
                .collect::<ApiResult<Vec<_>>>()?;
            let prefixes = p
                .list("Ipv4Prefix")
                .iter()
                .map(|s| net_param(s))
                .collect::<ApiResult<Vec<_>>>()?;
            sim.unassign_private_ips(now, p.req("NetworkInterfaceId")?, &ips, &prefixes)?;
            x.leaf("return", true);
        }
        "CreateTags" => {
            let tags: Vec<(String, String)> = p
                .tags("Tag")?
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect();
            sim.create_tags(&p.list("ResourceId"), &tags)?;
            x.leaf("return", true);
        }
        "DeleteTags" => {
            sim.delete_tags(&p.list("ResourceId"), &p.tags("Tag")?)?;
            x.leaf("return", true);
        }
        "CreateVolume" => {
            let req = CreateVolume {
                size_gib: p.num("Size")?,
                volume_type: p.get("VolumeType").map(String::from),
                iops: p.num("Iops")?,
                throughput: p.num("Throughput")?,
                encrypted: p.bool("Encrypted")?,
                kms_key_id: p.get("KmsKeyId").map(String::from),
                snapshot_id: p.get("SnapshotId").map(String::from),
                az: p.get("AvailabilityZone").map(String::from),
                multi_attach: p.bool("MultiAttachEnabled")?.unwrap_or(false),
                tags: tags_for(&p.tag_specs()?, "volume")?,
                client_token: p.get("ClientToken").map(String::from),
                dry_run: p.bool("DryRun")?.unwrap_or(false),
            };
            let id = sim.create_volume(now, req)?;
            let v = sim.volume(&id)?.clone();
            volume_xml(sim, &mut x, &v);
        }
        "DeleteVolume" => {
            sim.delete_volume(p.req("VolumeId")?)?;
            x.leaf("return", true);
        }
        "AttachVolume" => {
            let r = sim.attach_volume(
                now,
                p.req("VolumeId")?,
                p.req("InstanceId")?,
                p.req("Device")?,
            )?;
            attachment_xml(&mut x, &r);
        }
        "DetachVolume" => {
            let r = sim.detach_volume(
                now,
                p.req("VolumeId")?,
                p.get("InstanceId"),
                p.get("Device"),
                p.bool("Force")?.unwrap_or(false),
            )?;
            attachment_xml(&mut x, &r);
        }
        "DescribeVolumes" => {
            let d = Describe {
                ids: "VolumeId",
                kind: "volume",
                set: "volumeSet",
                bounds: (5, 500),
                names: filter::VOLUME,
                id: |v: &Volume| &v.id,
            };
            describe(
                &mut x,
                p,
                sim.volumes.values().cloned().collect(),
                d,
                &filter::volume,
                |x, v| volume_xml(sim, x, &v),
            )?;
        }
        "ModifyVolume" => {
            let m = sim.modify_volume(
                now,
                p.req("VolumeId")?,
                p.num("Size")?,
                p.get("VolumeType").map(String::from),
                p.num("Iops")?,
                p.num("Throughput")?,
            )?;
            x.node("volumeModification", |x| modification_xml(x, &m));
        }
        "DescribeVolumesModifications" => {
            let ids = p.list("VolumeId");
            for id in &ids {
                sim.volume(id)?;
                // As EC2: asking for a volume that was never modified is an error.
                if sim.modifications.get(id).is_none_or(|m| m.is_empty()) {
                    return Err(ApiError::new(
                        "InvalidVolumeModification.NotFound",
                        format!("Modification for volume '{id}' does not exist."),
                    ));
                }
            }
            let latest: Vec<Modification> = sim
                .modifications
                .values()
                .filter_map(|ms| ms.last().cloned())
                .filter(|m| ids.is_empty() || ids.contains(&m.volume_id))
                .collect();
            let items = filter::apply(
                latest,
                &p.filters()?,
                filter::MODIFICATION,
                &filter::modification,
            )?;
            let (items, next) = page(
                items,
                |m| &m.volume_id,
                p.num("MaxResults")?,
                p.get("NextToken"),
                (1, 500),
            )?;
            x.set("volumeModificationSet", items, |x, m| {
                modification_xml(x, &m)
            });
            x.opt("nextToken", next);
        }
        "CreateSnapshot" => {
            let tags = tags_for(&p.tag_specs()?, "snapshot")?;
            let id = sim.create_snapshot(
                now,
                p.req("VolumeId")?,
                p.get("Description").unwrap_or_default().into(),
                tags,
            )?;
            let s = sim.snapshot(&id)?.clone();
            snapshot_xml(sim, &mut x, &s);
        }
        "DeleteSnapshot" => {
            sim.delete_snapshot(p.req("SnapshotId")?)?;
            x.leaf("return", true);
        }
        "DescribeSnapshots" => {
            if p.list("Owner")
                .iter()
                .any(|o| o != "self" && o != &sim.cfg.account_id)
            {
                // Public snapshots of other owners: vpcsim has none.
                x.node("snapshotSet", |_| {});
                return Ok(x.0);
            }
            let d = Describe {
                ids: "SnapshotId",
                kind: "snapshot",
                set: "snapshotSet",
                bounds: (5, 1000),
                names: filter::SNAPSHOT,
                id: |s: &Snapshot| &s.id,
            };
            let items = sim.snapshots.values().cloned().collect();
            describe(&mut x, p, items, d, &filter::snapshot, |x, s| {
                snapshot_xml(sim, x, &s)
            })?;
        }
        _ => unreachable!("checked against ACTIONS"),
    }
    Ok(x.0)
}

/// How one Describe action lists a resource kind.
struct Describe<T> {
    /// Query parameter naming ids (`VolumeId` for `VolumeId.N`).
    ids: &'static str,
    kind: &'static str,
    /// Element of the reply's list.
    set: &'static str,
    /// EC2's MaxResults bounds for the action.
    bounds: (i64, i64),
    /// Filter names the kind accepts.
    names: &'static [&'static str],
    id: fn(&T) -> &String,
}

/// The common shape of Describe calls: ids (all must exist), then filters, then paging.
fn describe<T>(
    x: &mut Xml,
    p: &Params,
    items: Vec<T>,
    d: Describe<T>,
    extract: filter::Extract<'_, T>,
    render: impl FnMut(&mut Xml, T),
) -> ApiResult<()> {
    let ids = p.list(d.ids);
    no_ids_with_max(&ids, p)?;
    let items = select(items, &ids, d.id, d.kind)?;
    let items = filter::apply(items, &p.filters()?, d.names, extract)?;
    let (items, next) = page(
        items,
        |t| (d.id)(t).as_str(),
        p.num("MaxResults")?,
        p.get("NextToken"),
        d.bounds,
    )?;
    x.set(d.set, items, render);
    x.opt("nextToken", next);
    Ok(())
}

/// EC2 refuses MaxResults together with explicit ids.
fn no_ids_with_max(ids: &[String], p: &Params) -> ApiResult<()> {
    if !ids.is_empty() && p.get("MaxResults").is_some() {
        return Err(ApiError::combination(
            "The parameter ids cannot be used with the parameter maxResults",
        ));
    }
    Ok(())
}

/// Restricts to `ids` (all must exist) or returns everything.
fn select<T>(
    items: Vec<T>,
    ids: &[String],
    id: impl Fn(&T) -> &String,
    kind: &str,
) -> ApiResult<Vec<T>> {
    if ids.is_empty() {
        return Ok(items);
    }
    let missing: Vec<&String> = ids
        .iter()
        .filter(|w| !items.iter().any(|it| id(it) == *w))
        .collect();
    if let Some(m) = missing.first() {
        let prefix = match kind {
            "eni" => "eni-",
            "instance" => "i-",
            "volume" => "vol-",
            "snapshot" => "snap-",
            "subnet" => "subnet-",
            "sg" => "sg-",
            _ => "",
        };
        if !m.starts_with(prefix) {
            return Err(ApiError::malformed(kind, m));
        }
        return Err(ApiError::not_found(kind, m));
    }
    Ok(items
        .into_iter()
        .filter(|it| ids.contains(id(it)))
        .collect())
}

fn ip_str(s: &str) -> ApiResult<Ipv4Addr> {
    s.parse()
        .map_err(|_| ApiError::invalid_param(format!("Invalid IPv4 address: {s}")))
}

fn ip_param(p: &Params, k: &str) -> ApiResult<Ipv4Addr> {
    ip_str(p.req(k)?)
}

fn net_param(s: &str) -> ApiResult<Ipv4Net> {
    s.parse()
        .map_err(|_| ApiError::invalid_param(format!("Invalid IPv4 prefix: {s}")))
}

fn describe_azs(sim: &Sim, p: &Params, x: &mut Xml) -> ApiResult<()> {
    let names = p.list("ZoneName");
    for n in &names {
        if sim.zone_id(n).is_none() {
            return Err(ApiError::invalid_param(format!(
                "The zone '{n}' does not exist."
            )));
        }
    }
    let zones: Vec<&(String, String)> = sim
        .cfg
        .zones
        .iter()
        .filter(|(n, _)| names.is_empty() || names.contains(n))
        .collect();
    let region = sim.cfg.region.clone();
    let extract = move |z: &&(String, String), f: &str| -> Option<Vec<String>> {
        let v = match f {
            "zone-name" => z.0.clone(),
            "zone-id" => z.1.clone(),
            "region-name" => region.clone(),
            "state" => "available".into(),
            _ => return None,
        };
        Some(vec![v])
    };
    let zones = filter::apply(zones, &p.filters()?, filter::ZONE, &extract)?;
    x.set("availabilityZoneInfo", zones, |x, (n, id)| {
        x.leaf("zoneName", n)
            .leaf("zoneId", id)
            .leaf("zoneState", "available")
            .leaf("regionName", &sim.cfg.region)
            .leaf("zoneType", "availability-zone")
            .leaf("optInStatus", "opt-in-not-required")
            .leaf("groupName", &sim.cfg.region)
            .leaf("networkBorderGroup", &sim.cfg.region);
    });
    Ok(())
}

fn describe_instance_types(p: &Params, x: &mut Xml) -> ApiResult<()> {
    use nodewire_aws::limits::{INSTANCE_TYPES, InstanceTypeInfo, lookup};
    let names = p.list("InstanceType");
    for n in &names {
        if lookup(n).is_none() {
            return Err(ApiError::new(
                "InvalidInstanceType",
                format!("The following supplied instance types do not exist: [{n}]"),
            ));
        }
    }
    let mut items: Vec<_> = INSTANCE_TYPES
        .iter()
        .filter(|t| names.is_empty() || names.iter().any(|n| n == t.name))
        .collect();
    // Paging resumes by name, so the list must be in name order.
    items.sort_by_key(|t| t.name);
    let extract = |t: &&InstanceTypeInfo, f: &str| -> Option<Vec<String>> {
        let v = match f {
            "instance-type" => t.name.to_string(),
            "hypervisor" => t.hypervisor.as_str().to_string(),
            "network-info.ipv4-addresses-per-interface" => {
                t.ipv4_addresses_per_interface.to_string()
            }
            "network-info.maximum-network-interfaces" => t.maximum_network_interfaces.to_string(),
            "ebs-info.nvme-support" => {
                (if t.nvme { "required" } else { "unsupported" }).to_string()
            }
            "bare-metal" => t.bare_metal.to_string(),
            _ => return None,
        };
        Some(vec![v])
    };
    let items = filter::apply(items, &p.filters()?, filter::INSTANCE_TYPE, &extract)?;
    let (items, next) = page(
        items,
        |t| t.name,
        p.num("MaxResults")?,
        p.get("NextToken"),
        (5, 100),
    )?;
    x.set("instanceTypeSet", items, |x, t| {
        x.leaf("instanceType", t.name)
            .leaf("currentGeneration", true)
            .leaf("bareMetal", t.bare_metal)
            .leaf("hypervisor", t.hypervisor.as_str())
            .node("vCpuInfo", |x| {
                x.leaf("defaultVCpus", t.vcpus);
            })
            .node("memoryInfo", |x| {
                x.leaf("sizeInMiB", t.memory_mib);
            })
            .node("ebsInfo", |x| {
                x.leaf("ebsOptimizedSupport", "default")
                    .leaf("encryptionSupport", "supported")
                    .leaf(
                        "nvmeSupport",
                        if t.nvme { "required" } else { "unsupported" },
                    )
                    .leaf("maximumEbsAttachments", t.maximum_ebs_attachments)
                    .leaf("attachmentLimitType", t.attachment_limit_type.as_str());
            })
            .node("networkInfo", |x| {
                x.leaf("networkPerformance", "Up to 10 Gigabit")
                    .leaf("maximumNetworkInterfaces", t.maximum_network_interfaces)
                    .leaf("maximumNetworkCards", t.network_cards.len())
                    .leaf("defaultNetworkCardIndex", t.default_network_card_index)
                    .set("networkCards", t.network_cards, |x, c| {
                        x.leaf("networkCardIndex", c.index)
                            .leaf("maximumNetworkInterfaces", c.maximum_network_interfaces);
                    })
                    .leaf("ipv4AddressesPerInterface", t.ipv4_addresses_per_interface)
                    .leaf("ipv6AddressesPerInterface", t.ipv6_addresses_per_interface)
                    .leaf("ipv6Supported", true)
                    .leaf(
                        "enaSupport",
                        if t.hypervisor == nodewire_aws::limits::Hypervisor::Nitro {
                            "required"
                        } else {
                            "unsupported"
                        },
                    );
            });
    });
    x.opt("nextToken", next);
    Ok(())
}

/// Instances one `RunInstances` call may launch (a stand-in for EC2's vCPU quota).
const MAX_LAUNCH: u32 = 20;

fn run_instances(sim: &mut Sim, now: Instant, p: &Params, x: &mut Xml) -> ApiResult<()> {
    let min: u32 = p
        .num("MinCount")?
        .ok_or_else(|| ApiError::missing("MinCount"))?;
    let max: u32 = p
        .num("MaxCount")?
        .ok_or_else(|| ApiError::missing("MaxCount"))?;
    if min == 0 || max < min {
        return Err(ApiError::invalid_param(
            "MinCount must be at least 1 and no more than MaxCount",
        ));
    }
    if min > MAX_LAUNCH {
        return Err(ApiError::new(
            "InstanceLimitExceeded",
            format!(
                "Your quota allows for {MAX_LAUNCH} more running instance(s). You requested at least {min}."
            ),
        ));
    }
    let max = max.min(MAX_LAUNCH);
    let specs = p.tag_specs()?;
    if let Some((rt, _)) = specs
        .iter()
        .find(|(rt, _)| !["instance", "network-interface", "volume"].contains(&rt.as_str()))
    {
        return Err(ApiError::invalid_param(format!(
            "'{rt}' is not a valid taggable resource type for this operation."
        )));
    }
    let inst_tags: Tags = specs
        .iter()
        .filter(|(rt, _)| rt == "instance")
        .flat_map(|(_, t)| t.clone())
        .collect();
    let eni_tags: Tags = specs
        .iter()
        .filter(|(rt, _)| rt == "network-interface")
        .flat_map(|(_, t)| t.clone())
        .collect();
    let mut ids = Vec::new();
    for n in 0..max {
        let req = RunInstance {
            instance_type: p.get("InstanceType").unwrap_or("m5.large").to_string(),
            image_id: p.req("ImageId")?.to_string(),
            subnet_id: p.get("SubnetId").map(String::from),
            az: p.get("Placement.AvailabilityZone").map(String::from),
            private_ip: if n == 0 {
                p.parsed("PrivateIpAddress", "IPv4 address")?
            } else {
                None
            },
            security_groups: p.list("SecurityGroupId"),
            tags: inst_tags.clone(),
            eni_tags: eni_tags.clone(),
        };
        match sim.run_instance(now, req) {
            Ok(id) => ids.push(id),
            Err(e) if n < min => {
                // All or nothing below MinCount: undo the launches of this call.
                for id in &ids {
                    sim.discard_instance(now, id);
                }
                return Err(e);
            }
            Err(_) => break,
        }
    }
    let insts: Vec<Instance> = ids
        .iter()
        .filter_map(|i| sim.instances.get(i).cloned())
        .collect();
    x.leaf("reservationId", format!("r-{}", &ids[0][2..]))
        .leaf("ownerId", &sim.cfg.account_id)
        .node("groupSet", |_| {})
        .set("instancesSet", insts.iter(), |x, i| instance_xml(sim, x, i));
    Ok(())
}

fn instance_xml(sim: &Sim, x: &mut Xml, i: &Instance) {
    let t = nodewire_aws::limits::lookup(&i.instance_type);
    x.leaf("instanceId", &i.id)
        .leaf("imageId", &i.image_id)
        .node("instanceState", |x| {
            x.leaf("code", i.state.code()).leaf("name", i.state.name());
        })
        .leaf(
            "privateDnsName",
            format!(
                "ip-{}.ec2.internal",
                i.private_ip.to_string().replace('.', "-")
            ),
        )
        .leaf("dnsName", "")
        .leaf("amiLaunchIndex", 0)
        .leaf("instanceType", &i.instance_type)
        .time("launchTime", i.launch_time)
        .node("placement", |x| {
            x.leaf("availabilityZone", &i.az).leaf("tenancy", "default");
        })
        .node("monitoring", |x| {
            x.leaf("state", "disabled");
        })
        .leaf("subnetId", &i.subnet_id)
        .leaf("vpcId", &i.vpc_id)
        .leaf("privateIpAddress", i.private_ip)
        .leaf(
            "sourceDestCheck",
            sim.enis
                .get(&i.primary_eni)
                .is_none_or(|e| e.source_dest_check),
        )
        .set("groupSet", &i.security_groups, |x, g| {
            x.leaf("groupId", g).opt(
                "groupName",
                sim.security_groups.get(g).map(|g| g.name.clone()),
            );
        })
        .leaf("architecture", "x86_64")
        .leaf("rootDeviceType", "ebs")
        .leaf("rootDeviceName", "/dev/xvda")
        .set(
            "blockDeviceMapping",
            sim.volumes.values().filter_map(|v| {
                v.attachments
                    .iter()
                    .find(|a| a.instance_id == i.id)
                    .map(|a| (v, a))
            }),
            |x, (v, a)| {
                x.leaf("deviceName", &a.device).node("ebs", |x| {
                    x.leaf("volumeId", &v.id)
                        .leaf("status", a.state.name())
                        .time("attachTime", a.attach_time)
                        .leaf("deleteOnTermination", a.delete_on_termination);
                });
            },
        )
        .leaf("virtualizationType", "hvm")
        .leaf("hypervisor", t.map_or("nitro", |t| t.hypervisor.as_str()))
        .tags(&i.tags)
        .set(
            "networkInterfaceSet",
            sim.enis.values().filter(|e| e.attached_to(&i.id)),
            |x, e| {
                let a = e.attachment.as_ref().expect("filtered on attachment");
                x.leaf("networkInterfaceId", &e.id)
                    .leaf("subnetId", &e.subnet_id)
                    .leaf("vpcId", &e.vpc_id)
                    .leaf("description", &e.description)
                    .leaf("ownerId", &sim.cfg.account_id)
                    .leaf("status", e.status())
                    .leaf("macAddress", &e.mac)
                    .leaf("privateIpAddress", e.primary_ip())
                    .leaf("sourceDestCheck", e.source_dest_check)
                    .leaf("interfaceType", "interface")
                    .set("groupSet", &e.groups, |x, g| {
                        x.leaf("groupId", g);
                    })
                    .node("attachment", |x| {
                        x.leaf("attachmentId", &a.id)
                            .leaf("deviceIndex", a.device_index)
                            .leaf("networkCardIndex", a.network_card_index)
                            .leaf("status", a.state.name())
                            .time("attachTime", a.attach_time)
                            .leaf("deleteOnTermination", a.delete_on_termination);
                    })
                    .set(
                        "privateIpAddressesSet",
                        e.private_ips.iter().enumerate(),
                        |x, (n, ip)| {
                            x.leaf("privateIpAddress", ip).leaf("primary", n == 0);
                        },
                    )
                    .set("ipv4PrefixSet", &e.prefixes, |x, pf| {
                        x.leaf("ipv4Prefix", pf);
                    });
            },
        );
}

fn eni_xml(sim: &Sim, x: &mut Xml, e: &Eni) {
    x.leaf("networkInterfaceId", &e.id)
        .leaf("subnetId", &e.subnet_id)
        .leaf("vpcId", &e.vpc_id)
        .leaf("availabilityZone", &e.az)
        .opt("availabilityZoneId", sim.zone_id(&e.az))
        .leaf("description", &e.description)
        .leaf("ownerId", &sim.cfg.account_id)
        .leaf("requesterManaged", e.requester_managed)
        .leaf("status", e.status())
        .leaf("macAddress", &e.mac)
        .leaf("privateIpAddress", e.primary_ip())
        .leaf(
            "privateDnsName",
            format!(
                "ip-{}.ec2.internal",
                e.primary_ip().to_string().replace('.', "-")
            ),
        )
        .leaf("sourceDestCheck", e.source_dest_check)
        .leaf("interfaceType", "interface")
        .set("groupSet", &e.groups, |x, g| {
            x.leaf("groupId", g).opt(
                "groupName",
                sim.security_groups.get(g).map(|g| g.name.clone()),
            );
        });
    if let Some(a) = &e.attachment {
        x.node("attachment", |x| {
            x.leaf("attachmentId", &a.id)
                .leaf("instanceId", &a.instance_id)
                .leaf("instanceOwnerId", &sim.cfg.account_id)
                .leaf("deviceIndex", a.device_index)
                .leaf("networkCardIndex", a.network_card_index)
                .leaf("status", a.state.name())
                .time("attachTime", a.attach_time)
                .leaf("deleteOnTermination", a.delete_on_termination);
        });
    }
    x.set(
        "privateIpAddressesSet",
        e.private_ips.iter().enumerate(),
        |x, (n, ip)| {
            x.leaf("privateIpAddress", ip)
                .leaf(
                    "privateDnsName",
                    format!("ip-{}.ec2.internal", ip.to_string().replace('.', "-")),
                )
                .leaf("primary", n == 0);
        },
    )
    .set("ipv4PrefixSet", &e.prefixes, |x, pf| {
        x.leaf("ipv4Prefix", pf);
    })
    .node("ipv6AddressesSet", |_| {})
    .tags(&e.tags);
}

fn volume_xml(sim: &Sim, x: &mut Xml, v: &Volume) {
    x.leaf("volumeId", &v.id)
        .leaf("size", v.spec.size_gib)
        .leaf("snapshotId", v.snapshot_id.as_deref().unwrap_or(""))
        .leaf("availabilityZone", &v.az)
        .opt("availabilityZoneId", sim.zone_id(&v.az))
        .leaf("status", v.state.name())
        .time("createTime", v.create_time)
        .set("attachmentSet", &v.attachments, |x, a| {
            x.leaf("volumeId", &v.id)
                .leaf("instanceId", &a.instance_id)
                .leaf("device", &a.device)
                .leaf("status", a.state.name())
                .time("attachTime", a.attach_time)
                .leaf("deleteOnTermination", a.delete_on_termination);
        })
        .leaf("volumeType", &v.spec.volume_type)
        .opt("iops", v.spec.iops)
        .opt("throughput", v.spec.throughput)
        .leaf("encrypted", v.encrypted)
        .opt("kmsKeyId", v.kms_key_id.as_deref())
        .leaf("multiAttachEnabled", v.multi_attach)
        .tags(&v.tags);
}

fn attachment_xml(x: &mut Xml, r: &AttachmentReply) {
    x.leaf("volumeId", &r.volume_id)
        .leaf("instanceId", &r.instance_id)
        .leaf("device", &r.device)
        .leaf("status", r.state)
        .time("attachTime", r.attach_time)
        .leaf("deleteOnTermination", false);
}

fn modification_xml(x: &mut Xml, m: &Modification) {
    x.leaf("volumeId", &m.volume_id)
        .leaf("modificationState", m.state.name())
        .leaf("targetSize", m.target.size_gib)
        .opt("targetIops", m.target.iops)
        .leaf("targetVolumeType", &m.target.volume_type)
        .opt("targetThroughput", m.target.throughput)
        .leaf("originalSize", m.original.size_gib)
        .opt("originalIops", m.original.iops)
        .leaf("originalVolumeType", &m.original.volume_type)
        .opt("originalThroughput", m.original.throughput)
        .leaf("progress", m.progress)
        .time("startTime", m.start_time);
    if let Some(t) = m.end_time {
        x.time("endTime", t);
    }
}

fn snapshot_xml(sim: &Sim, x: &mut Xml, s: &Snapshot) {
    x.leaf("snapshotId", &s.id)
        .leaf("volumeId", &s.volume_id)
        .leaf("status", s.state_name())
        .time("startTime", s.start_time)
        .leaf("progress", s.progress())
        .leaf("ownerId", &sim.cfg.account_id)
        .leaf("volumeSize", s.size_gib)
        .leaf("description", &s.description)
        .leaf("encrypted", s.encrypted)
        .opt("kmsKeyId", s.kms_key_id.as_deref())
        .leaf("storageTier", "standard")
        .tags(&s.tags);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimConfig, Timing};

    fn call(sim: &mut Sim, body: &str) -> ApiResult<String> {
        let p = Params::parse(body.as_bytes());
        let action = p.get("Action").unwrap_or_default().to_string();
        dispatch(sim, Instant::now(), &action, &p)
    }

    fn all<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
        let open = format!("<{tag}>");
        xml.match_indices(&open)
            .map(|(i, _)| {
                let rest = &xml[i + open.len()..];
                &rest[..rest.find('<').unwrap_or(rest.len())]
            })
            .collect()
    }

    #[test]
    fn instance_type_paging_visits_every_type_once() {
        let mut sim = Sim::new(SimConfig {
            timing: Timing::zero(),
            ..SimConfig::default()
        });
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..20 {
            let tok = token
                .as_ref()
                .map(|t| format!("&NextToken={t}"))
                .unwrap_or_default();
            let xml = call(
                &mut sim,
                &format!("Action=DescribeInstanceTypes&MaxResults=5{tok}"),
            )
            .expect("page");
            let page = all(&xml, "instanceType");
            seen.extend(page.iter().map(|s| s.to_string()));
            token = all(&xml, "nextToken").first().map(|s| s.to_string());
            if token.is_none() {
                break;
            }
        }
        let mut want: Vec<String> = nodewire_aws::limits::INSTANCE_TYPES
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn unknown_filters_are_refused_even_on_empty_results() {
        let mut sim = Sim::new(SimConfig::default());
        for action in [
            "DescribeVolumes",
            "DescribeNetworkInterfaces",
            "DescribeAvailabilityZones",
            "DescribeInstanceTypes",
        ] {
            let err = call(
                &mut sim,
                &format!("Action={action}&Filter.1.Name=bogus&Filter.1.Value.1=x"),
            )
            .expect_err(action);
            assert_eq!(err.code, "InvalidParameterValue", "{action}");
        }
        assert!(
            call(
                &mut sim,
                "Action=DescribeVolumes&Filter.1.Name=tag:any&Filter.1.Value.1=x"
            )
            .is_ok()
        );
    }

    #[test]
    fn run_instances_is_all_or_nothing_below_min_count() {
        let mut sim = Sim::new(SimConfig {
            subnet_prefix_len: 28,
            ..SimConfig::default()
        }); // 11 usable addresses
        let subnet = sim.subnet_in_zone("us-east-1a").expect("zone").id.clone();
        let err = call(&mut sim, &format!("Action=RunInstances&ImageId=ami-1&InstanceType=m5.large&MinCount=12&MaxCount=12&SubnetId={subnet}"))
            .expect_err("not enough addresses");
        assert_eq!(err.code, "InsufficientFreeAddressesInSubnet");
        assert!(sim.instances.is_empty(), "nothing left behind");
        assert_eq!(sim.subnet(&subnet).expect("subnet").available(), 11);
        let xml = call(&mut sim, &format!("Action=RunInstances&ImageId=ami-1&InstanceType=m5.large&MinCount=2&MaxCount=50&SubnetId={subnet}")).expect("partial ok");
        assert_eq!(all(&xml, "instanceId").len(), 11, "MaxCount is best effort");
        let err = call(
            &mut sim,
            "Action=RunInstances&ImageId=ami-1&MinCount=21&MaxCount=21",
        )
        .expect_err("quota");
        assert_eq!(err.code, "InstanceLimitExceeded");
    }
}
