//! CreateVolume's parameters (StorageClass `parameters` plus what the external-provisioner adds),
//! validated into a [`VolumeSpec`]: plain data in, plain data or a message naming the key out.
//!
//! Keys are matched case-insensitively as upstream does (`iopsPerGB` = `iopspergb`); values are
//! case-sensitive. Every problem is an [`Invalid`] naming the key, which the controller answers
//! with `INVALID_ARGUMENT` — never upstream's catch-all `Aborted`.

use std::collections::BTreeMap;

pub const GIB: i64 = 1 << 30;
/// Size when the request has no capacity range (upstream's default).
pub const DEFAULT_SIZE_GIB: i64 = 100;

/// Tag keys the driver sets itself; a `tagSpecification_N` may not use them.
pub const TAG_VOLUME_NAME: &str = "CSIVolumeName";
pub const TAG_SNAPSHOT_NAME: &str = "CSIVolumeSnapshotName";
pub const TAG_CLUSTER: &str = "ebs.csi.aws.com/cluster";
pub const TAG_IOPS_PER_GB: &str = "ebs.csi.aws.com/IOPSPerGb";
pub const TAG_PVC_NAME: &str = "kubernetes.io/created-for/pvc/name";
pub const TAG_PVC_NAMESPACE: &str = "kubernetes.io/created-for/pvc/namespace";
pub const TAG_PV_NAME: &str = "kubernetes.io/created-for/pv/name";

/// The filesystems the node can make and grow.
pub const FS_TYPES: &[&str] = &["ext2", "ext3", "ext4", "xfs"];
pub const DEFAULT_FS: &str = "ext4";

/// A parameter the driver cannot accept, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {key}: {why}")]
pub struct Invalid {
    pub key: String,
    pub why: String,
    /// The size, not a parameter, is what cannot be served (CSI: `OUT_OF_RANGE`).
    pub out_of_range: bool,
}

fn invalid(key: &str, why: impl Into<String>) -> Invalid {
    Invalid {
        key: key.to_string(),
        why: why.into(),
        out_of_range: false,
    }
}

/// An EBS volume type and EC2's limits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeLimits {
    pub name: &'static str,
    pub min_gib: i64,
    pub max_gib: i64,
    /// (min, max, max per GiB) when the type takes an IOPS figure.
    pub iops: Option<(i64, i64, i64)>,
    /// Whether IOPS must be given (io1, io2).
    pub iops_required: bool,
    /// (min, max) MiB/s when the type takes a throughput figure (gp3).
    pub throughput: Option<(i64, i64)>,
}

pub const TYPES: &[TypeLimits] = &[
    TypeLimits {
        name: "gp3",
        min_gib: 1,
        max_gib: 16384,
        iops: Some((3000, 16000, 500)),
        iops_required: false,
        throughput: Some((125, 1000)),
    },
    TypeLimits {
        name: "gp2",
        min_gib: 1,
        max_gib: 16384,
        iops: None,
        iops_required: false,
        throughput: None,
    },
    TypeLimits {
        name: "io1",
        min_gib: 4,
        max_gib: 16384,
        iops: Some((100, 64000, 50)),
        iops_required: true,
        throughput: None,
    },
    TypeLimits {
        name: "io2",
        min_gib: 4,
        max_gib: 65536,
        iops: Some((100, 256000, 1000)),
        iops_required: true,
        throughput: None,
    },
    TypeLimits {
        name: "st1",
        min_gib: 125,
        max_gib: 16384,
        iops: None,
        iops_required: false,
        throughput: None,
    },
    TypeLimits {
        name: "sc1",
        min_gib: 125,
        max_gib: 16384,
        iops: None,
        iops_required: false,
        throughput: None,
    },
    TypeLimits {
        name: "standard",
        min_gib: 1,
        max_gib: 1024,
        iops: None,
        iops_required: false,
        throughput: None,
    },
];

pub fn type_limits(name: &str) -> Option<&'static TypeLimits> {
    TYPES.iter().find(|t| t.name == name)
}

/// gp3 throughput may be at most this fraction of its IOPS (MiB/s per IOPS).
const GP3_THROUGHPUT_PER_IOPS: f64 = 0.25;
const GP3_BASE_IOPS: i64 = 3000;

/// mkfs options from the StorageClass, checked against the filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormatOptions {
    pub block_size: Option<String>,
    pub inode_size: Option<String>,
    pub bytes_per_inode: Option<String>,
    pub number_of_inodes: Option<String>,
    pub ext4_bigalloc: bool,
    pub ext4_cluster_size: Option<String>,
}

/// Volume-context keys that carry the format options to the node.
pub const FORMAT_KEYS: &[&str] = &[
    "blockSize",
    "inodeSize",
    "bytesPerInode",
    "numberOfInodes",
    "ext4BigAlloc",
    "ext4ClusterSize",
];

impl FormatOptions {
    pub fn is_empty(&self) -> bool {
        *self == FormatOptions::default()
    }

    /// The options as volume-context entries (what the node receives).
    pub fn to_context(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v.clone());
            }
        };
        put("blockSize", &self.block_size);
        put("inodeSize", &self.inode_size);
        put("bytesPerInode", &self.bytes_per_inode);
        put("numberOfInodes", &self.number_of_inodes);
        put("ext4ClusterSize", &self.ext4_cluster_size);
        if self.ext4_bigalloc {
            m.insert("ext4BigAlloc".into(), "true".into());
        }
        m
    }

    /// Reads the options back from a volume context (the node re-validates them).
    pub fn from_context(ctx: &BTreeMap<String, String>) -> Result<FormatOptions, Invalid> {
        let mut f = FormatOptions::default();
        for (k, v) in ctx {
            f.set(k, v)?;
        }
        Ok(f)
    }

    /// Takes one key if it is a format option (`Ok(false)` when it is not one).
    fn set(&mut self, key: &str, v: &str) -> Result<bool, Invalid> {
        let number = |v: &str| -> Result<Option<String>, Invalid> {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 10 {
                Err(invalid(
                    key,
                    format!("{v:?} is not a positive whole number"),
                ))
            } else if v.trim_start_matches('0').is_empty() {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(Some(v.to_string()))
            }
        };
        match key.to_ascii_lowercase().as_str() {
            "blocksize" => self.block_size = number(v)?,
            "inodesize" => self.inode_size = number(v)?,
            "bytesperinode" => self.bytes_per_inode = number(v)?,
            "numberofinodes" => self.number_of_inodes = number(v)?,
            "ext4clustersize" => self.ext4_cluster_size = number(v)?,
            "ext4bigalloc" => self.ext4_bigalloc = bool_param(key, v)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks the options against the filesystem they will be given to.
    pub fn check(&self, fs: &str) -> Result<(), Invalid> {
        let ext = matches!(fs, "ext2" | "ext3" | "ext4");
        let not_for = |key: &str| invalid(key, format!("not supported for fsType {fs}"));
        if !ext && fs != "xfs" && (self.block_size.is_some() || self.inode_size.is_some()) {
            return Err(not_for(if self.block_size.is_some() {
                "blockSize"
            } else {
                "inodeSize"
            }));
        }
        if !ext {
            if self.bytes_per_inode.is_some() {
                return Err(not_for("bytesPerInode"));
            }
            if self.number_of_inodes.is_some() {
                return Err(not_for("numberOfInodes"));
            }
        }
        if fs != "ext4" {
            if self.ext4_bigalloc {
                return Err(not_for("ext4BigAlloc"));
            }
            if self.ext4_cluster_size.is_some() {
                return Err(not_for("ext4ClusterSize"));
            }
        }
        if self.ext4_cluster_size.is_some() && !self.ext4_bigalloc {
            return Err(invalid(
                "ext4ClusterSize",
                "needs ext4BigAlloc \"true\" (a cluster size only exists with bigalloc)",
            ));
        }
        Ok(())
    }

    /// mkfs arguments for `fs` (after [`check`](Self::check)), device and force flag excluded.
    pub fn mkfs_args(&self, fs: &str) -> Vec<String> {
        let mut a = Vec::new();
        let mut pair = |flag: &str, v: String| {
            a.push(flag.to_string());
            a.push(v);
        };
        if fs == "xfs" {
            if let Some(b) = &self.block_size {
                pair("-b", format!("size={b}"));
            }
            if let Some(i) = &self.inode_size {
                pair("-i", format!("size={i}"));
            }
        } else {
            if let Some(b) = &self.block_size {
                pair("-b", b.clone());
            }
            if let Some(i) = &self.inode_size {
                pair("-I", i.clone());
            }
            if let Some(i) = &self.bytes_per_inode {
                pair("-i", i.clone());
            }
            if let Some(n) = &self.number_of_inodes {
                pair("-N", n.clone());
            }
            if self.ext4_bigalloc {
                pair("-O", "bigalloc".into());
            }
            if let Some(c) = &self.ext4_cluster_size {
                pair("-C", c.clone());
            }
        }
        a
    }
}

fn bool_param(key: &str, v: &str) -> Result<bool, Invalid> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, format!("{v:?} is not \"true\" or \"false\""))),
    }
}

fn int_param(key: &str, v: &str) -> Result<i64, Invalid> {
    match v.parse::<i32>() {
        Ok(n) if n > 0 => Ok(n as i64),
        Ok(_) => Err(invalid(key, "must be greater than 0")),
        Err(_) => Err(invalid(key, format!("{v:?} is not a whole number"))),
    }
}

/// What the CO knows about the PVC/PV (external-provisioner `--extra-create-metadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sMeta {
    pub pvc_name: Option<String>,
    pub pvc_namespace: Option<String>,
    pub pv_name: Option<String>,
}

/// A validated CreateVolume: what EC2 is asked for, what the node will get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub volume_type: &'static str,
    pub size_gib: i64,
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    /// Sorted: the EC2 ClientToken covers the whole request, so a retry must send the same.
    pub tags: BTreeMap<String, String>,
    pub format: FormatOptions,
    pub fs_type: String,
}

/// How the request wants the volume used (from its capabilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Mount,
    Block,
}

/// Rounds a capacity range up to whole GiB; `Err` says what is wrong with the range.
pub fn size_gib(required: i64, limit: i64) -> Result<i64, String> {
    if required < 0 || limit < 0 {
        return Err("capacity_range bytes must not be negative".into());
    }
    if required == 0 && limit == 0 {
        return Ok(DEFAULT_SIZE_GIB);
    }
    let want = if required > 0 {
        required
    } else {
        // Only a limit: the largest whole GiB under it, at least 1.
        (limit / GIB).max(1) * GIB
    };
    let gib = want / GIB + i64::from(want % GIB != 0);
    if limit > 0 && gib.saturating_mul(GIB) > limit {
        return Err(format!(
            "capacity_range: {required} bytes rounded up to whole GiB ({gib} GiB) exceeds limit_bytes {limit}"
        ));
    }
    Ok(gib)
}

/// IOPS from `iopsPerGB` × size, capped as upstream does: below the type's minimum it becomes
/// the minimum when `allow_increase`, otherwise it is refused; above the maximum, the maximum.
fn iops_per_gb(
    t: &TypeLimits,
    per_gb: i64,
    size: i64,
    allow_increase: bool,
) -> Result<i64, Invalid> {
    let Some((min, max, _)) = t.iops else {
        return Err(invalid(
            "iopsPerGB",
            format!("{} volumes take no IOPS figure", t.name),
        ));
    };
    let want = per_gb.saturating_mul(size);
    if want < min {
        if allow_increase {
            return Ok(min);
        }
        return Err(invalid(
            "iopsPerGB",
            format!(
                "{per_gb} × {size} GiB = {want} IOPS is below the {} minimum of {min}; set allowAutoIOPSPerGBIncrease \"true\" to raise it",
                t.name
            ),
        ));
    }
    Ok(want.min(max))
}

/// Explicit `iops`, checked against the type's range and its per-GiB ratio at this size.
fn check_iops(t: &TypeLimits, iops: i64, size: i64) -> Result<i64, Invalid> {
    let Some((min, max, per_gib)) = t.iops else {
        return Err(invalid(
            "iops",
            format!("{} volumes take no IOPS figure", t.name),
        ));
    };
    if iops < min || iops > max {
        return Err(invalid(
            "iops",
            format!("{iops} is outside {min}..={max} for {}", t.name),
        ));
    }
    let ratio_cap = per_gib * size;
    if iops > min.max(ratio_cap) {
        return Err(invalid(
            "iops",
            format!(
                "{iops} IOPS on {size} GiB exceeds {per_gib} IOPS per GiB for {} (at most {ratio_cap})",
                t.name
            ),
        ));
    }
    Ok(iops)
}

/// Substitutes `{{ .PVCName }}`, `{{ .PVCNamespace }}`, `{{ .PVName }}` in a tag value.
fn interpolate(key: &str, v: &str, meta: &K8sMeta) -> Result<String, Invalid> {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            return Err(invalid(key, "unclosed {{ in tag value"));
        };
        let field = after[..j].trim();
        let val = match field {
            ".PVCName" => meta.pvc_name.as_deref(),
            ".PVCNamespace" => meta.pvc_namespace.as_deref(),
            ".PVName" => meta.pv_name.as_deref(),
            other => {
                return Err(invalid(
                    key,
                    format!(
                        "unknown template field {other:?} (known: .PVCName, .PVCNamespace, .PVName)"
                    ),
                ));
            }
        };
        out.push_str(val.unwrap_or(""));
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn reserved_tag(k: &str) -> bool {
    k == TAG_VOLUME_NAME
        || k == TAG_SNAPSHOT_NAME
        || k.starts_with("kubernetes.io/")
        || k.starts_with("ebs.csi.aws.com/")
        || k.starts_with("aws:")
}

/// Parses a `tagSpecification_N` value (`key=value`).
pub fn tag_spec(key: &str, v: &str, meta: &K8sMeta) -> Result<(String, String), Invalid> {
    let Some((k, val)) = v.split_once('=') else {
        return Err(invalid(key, format!("{v:?} is not key=value")));
    };
    let k = k.trim();
    if k.is_empty() || k.len() > 128 {
        return Err(invalid(key, "the tag key must be 1-128 characters"));
    }
    if reserved_tag(k) {
        return Err(invalid(
            key,
            format!("tag key {k:?} is reserved for the driver"),
        ));
    }
    let val = interpolate(key, val.trim(), meta)?;
    if val.len() > 256 {
        return Err(invalid(key, "the tag value must be at most 256 characters"));
    }
    Ok((k.to_string(), val))
}

/// Validates CreateVolume's parameters for a volume named `name` of `size` GiB.
///
/// `cap_fs`: the filesystem the capabilities ask for ("" when unset); `access`: mount or block.
pub fn volume_spec(
    name: &str,
    size: i64,
    params: &BTreeMap<String, String>,
    cap_fs: &str,
    access: Access,
) -> Result<VolumeSpec, Invalid> {
    let mut volume_type = "gp3";
    let (mut iops, mut per_gb, mut throughput) = (None, None, None);
    let mut allow_increase = false;
    let (mut encrypted, mut kms) = (false, None);
    let mut format = FormatOptions::default();
    let mut fs_param = None;
    let mut meta = K8sMeta::default();
    let mut tag_specs = Vec::new();
    for (k, v) in params {
        if k.len() > "tagSpecification_".len()
            && k[.."tagSpecification_".len()].eq_ignore_ascii_case("tagSpecification_")
        {
            tag_specs.push((k.clone(), v.clone()));
            continue;
        }
        if format.set(k, v)? {
            continue;
        }
        match k.to_ascii_lowercase().as_str() {
            "type" => {
                volume_type = type_limits(v).map(|t| t.name).ok_or_else(|| {
                    invalid(
                        k,
                        format!(
                            "unknown volume type {v:?} (one of {})",
                            TYPES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                        ),
                    )
                })?
            }
            "iops" => iops = Some(int_param(k, v)?),
            "iopspergb" => per_gb = Some(int_param(k, v)?),
            "allowautoiopspergbincrease" => allow_increase = bool_param(k, v)?,
            "throughput" => throughput = Some(int_param(k, v)?),
            // Upstream: only the exact "true" encrypts.
            "encrypted" => encrypted = bool_param(k, v)?,
            "kmskeyid" => {
                if !v.is_empty() {
                    kms = Some(v.clone())
                }
            }
            "csi.storage.k8s.io/fstype" | "fstype" => fs_param = Some(v.clone()),
            "csi.storage.k8s.io/pvc/name" => meta.pvc_name = Some(v.clone()),
            "csi.storage.k8s.io/pvc/namespace" => meta.pvc_namespace = Some(v.clone()),
            "csi.storage.k8s.io/pv/name" => meta.pv_name = Some(v.clone()),
            // Deprecated upstream no-op, accepted so existing StorageClasses keep working.
            "blockexpress" => {}
            _ => {
                return Err(invalid(
                    k,
                    "unknown parameter (see docs/ebs-csi.md for the accepted keys)",
                ));
            }
        }
    }
    let t = type_limits(volume_type).ok_or_else(|| invalid("type", "unknown volume type"))?;
    // The size against the type: checked here so the message names the type (OUT_OF_RANGE is the
    // controller's business; here it is a parameter combination).
    if size < t.min_gib || size > t.max_gib {
        return Err(Invalid {
            out_of_range: true,
            ..invalid(
                "type",
                format!(
                    "{} volumes are {}..={} GiB, not {size} GiB",
                    t.name, t.min_gib, t.max_gib
                ),
            )
        });
    }
    let iops = match (iops, per_gb) {
        (Some(_), Some(_)) => {
            return Err(invalid("iops", "give either iops or iopsPerGB, not both"));
        }
        (Some(i), None) => Some(check_iops(t, i, size)?),
        (None, Some(p)) => Some(iops_per_gb(t, p, size, allow_increase)?),
        (None, None) if t.iops_required => {
            return Err(invalid(
                "iops",
                format!("{} volumes need iops or iopsPerGB", t.name),
            ));
        }
        (None, None) => None,
    };
    if let Some(tp) = throughput {
        let Some((min, max)) = t.throughput else {
            return Err(invalid(
                "throughput",
                format!("{} volumes take no throughput figure (gp3 only)", t.name),
            ));
        };
        if tp < min || tp > max {
            return Err(invalid(
                "throughput",
                format!("{tp} MiB/s is outside {min}..={max} for {}", t.name),
            ));
        }
        let with = iops.unwrap_or(GP3_BASE_IOPS);
        if tp as f64 > with as f64 * GP3_THROUGHPUT_PER_IOPS {
            return Err(invalid(
                "throughput",
                format!(
                    "{tp} MiB/s needs at least {} IOPS (0.25 MiB/s per IOPS; this volume has {with})",
                    (tp as f64 / GP3_THROUGHPUT_PER_IOPS).ceil() as i64
                ),
            ));
        }
    }
    if kms.is_some() {
        encrypted = true;
    }
    let fs_type = match (cap_fs, fs_param.as_deref()) {
        ("", None) => DEFAULT_FS.to_string(),
        ("", Some(p)) => p.to_ascii_lowercase(),
        (c, _) => c.to_ascii_lowercase(),
    };
    if access == Access::Mount && !FS_TYPES.contains(&fs_type.as_str()) {
        return Err(invalid(
            "csi.storage.k8s.io/fstype",
            format!(
                "unsupported fsType {fs_type:?} (one of {})",
                FS_TYPES.join(", ")
            ),
        ));
    }
    if access == Access::Block && !format.is_empty() {
        let key = format.to_context().into_keys().next().unwrap_or_default();
        return Err(invalid(
            &key,
            "formatting parameters make no sense for a raw block volume",
        ));
    }
    if access == Access::Mount {
        format.check(&fs_type)?;
    }
    let mut tags = BTreeMap::new();
    tags.insert(TAG_VOLUME_NAME.to_string(), name.to_string());
    tags.insert(TAG_CLUSTER.to_string(), "true".to_string());
    for (tag, v) in [
        (TAG_PVC_NAME, &meta.pvc_name),
        (TAG_PVC_NAMESPACE, &meta.pvc_namespace),
        (TAG_PV_NAME, &meta.pv_name),
    ] {
        if let Some(v) = v {
            tags.insert(tag.to_string(), v.clone());
        }
    }
    if let Some(p) = per_gb {
        tags.insert(TAG_IOPS_PER_GB.to_string(), p.to_string());
    }
    for (k, v) in &tag_specs {
        let (tk, tv) = tag_spec(k, v, &meta)?;
        tags.insert(tk, tv);
    }
    if tags.len() > 50 {
        return Err(invalid(
            "tagSpecification_N",
            format!("{} tags; EC2 allows 50 per volume", tags.len()),
        ));
    }
    Ok(VolumeSpec {
        volume_type,
        size_gib: size,
        iops,
        throughput,
        encrypted,
        kms_key_id: kms,
        tags,
        format,
        fs_type,
    })
}

/// ControllerModifyVolume's `mutable_parameters` (a VolumeAttributesClass).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modification {
    pub volume_type: Option<&'static str>,
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
    pub add_tags: BTreeMap<String, String>,
    pub delete_tags: Vec<String>,
}

pub fn modification(params: &BTreeMap<String, String>) -> Result<Modification, Invalid> {
    let mut m = Modification::default();
    let meta = K8sMeta::default();
    for (k, v) in params {
        if let Some(n) = k.strip_prefix("tagSpecification_")
            && !n.is_empty()
        {
            let (tk, tv) = tag_spec(k, v, &meta)?;
            m.add_tags.insert(tk, tv);
            continue;
        }
        if let Some(n) = k.strip_prefix("tagDeletion_")
            && !n.is_empty()
        {
            if reserved_tag(v) {
                return Err(invalid(
                    k,
                    format!("tag key {v:?} is reserved for the driver"),
                ));
            }
            m.delete_tags.push(v.clone());
            continue;
        }
        match k.as_str() {
            "type" | "volumeType" => {
                m.volume_type = Some(
                    type_limits(v)
                        .map(|t| t.name)
                        .ok_or_else(|| invalid(k, format!("unknown volume type {v:?}")))?,
                )
            }
            "iops" => m.iops = Some(int_param(k, v)?),
            "throughput" => m.throughput = Some(int_param(k, v)?),
            _ => {
                return Err(invalid(
                    k,
                    "unknown mutable parameter (type, iops, throughput, tagSpecification_N, tagDeletion_N)",
                ));
            }
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sizes_round_up_to_gib_within_the_limit() {
        let cases: &[(i64, i64, Result<i64, &str>)] = &[
            (0, 0, Ok(100)),
            (1, 0, Ok(1)),
            (GIB, 0, Ok(1)),
            (GIB + 1, 0, Ok(2)),
            (10 * GIB, 10 * GIB, Ok(10)),
            (0, 5 * GIB + 7, Ok(5)),
            (0, 100, Err("exceeds limit_bytes")),
            (GIB + 1, 2 * GIB - 1, Err("exceeds limit_bytes")),
            (-1, 0, Err("negative")),
        ];
        for (req, lim, want) in cases {
            match (size_gib(*req, *lim), want) {
                (Ok(g), Ok(w)) => assert_eq!(g, *w, "{req} {lim}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{req} {lim}: {e}"),
                (got, want) => panic!("{req} {lim}: {got:?}, want {want:?}"),
            }
        }
    }

    /// Every parameter and every invalid combination: the spec or the key the error names.
    #[test]
    fn parameters_table() {
        type Want = Result<fn(&VolumeSpec) -> bool, &'static str>;
        type Case = (
            &'static str,
            i64,
            Vec<(&'static str, &'static str)>,
            &'static str,
            Access,
            Want,
        );
        let cases: Vec<Case> = vec![
            (
                "defaults",
                10,
                vec![],
                "",
                Access::Mount,
                Ok(|s| {
                    s.volume_type == "gp3"
                        && s.iops.is_none()
                        && s.fs_type == "ext4"
                        && !s.encrypted
                }),
            ),
            (
                "case-insensitive keys",
                10,
                vec![("TYPE", "gp2")],
                "",
                Access::Mount,
                Ok(|s| s.volume_type == "gp2"),
            ),
            (
                "unknown key",
                10,
                vec![("colour", "blue")],
                "",
                Access::Mount,
                Err("colour"),
            ),
            (
                "unknown type",
                10,
                vec![("type", "gp9")],
                "",
                Access::Mount,
                Err("type"),
            ),
            (
                "type value is case-sensitive",
                10,
                vec![("type", "GP3")],
                "",
                Access::Mount,
                Err("type"),
            ),
            (
                "gp3 iops",
                10,
                vec![("iops", "5000")],
                "",
                Access::Mount,
                Ok(|s| s.iops == Some(5000)),
            ),
            (
                "gp3 iops below min",
                10,
                vec![("iops", "2000")],
                "",
                Access::Mount,
                Err("iops"),
            ),
            (
                "gp3 iops above max",
                100,
                vec![("iops", "17000")],
                "",
                Access::Mount,
                Err("iops"),
            ),
            (
                "gp3 iops over ratio",
                6,
                vec![("iops", "4000")],
                "",
                Access::Mount,
                Err("iops"),
            ),
            (
                "iops not a number",
                10,
                vec![("iops", "lots")],
                "",
                Access::Mount,
                Err("iops"),
            ),
            (
                "iops zero",
                10,
                vec![("iops", "0")],
                "",
                Access::Mount,
                Err("iops"),
            ),
            (
                "iops overflow",
                10,
                vec![("iops", "99999999999")],
                "",
                Access::Mount,
                Err("iops"),
            ),
            (
                "gp2 takes no iops",
                10,
                vec![("type", "gp2"), ("iops", "3000")],
                "",
                Access::Mount,
                Err("iops"),
            ),
            (
                "st1 takes no iopsPerGB",
                500,
                vec![("type", "st1"), ("iopsPerGB", "3")],
                "",
                Access::Mount,
                Err("iopsPerGB"),
            ),
            (
                "io1 needs iops",
                10,
                vec![("type", "io1")],
                "",
                Access::Mount,
                Err("iops"),
            ),
            (
                "io1 iopsPerGB",
                10,
                vec![("type", "io1"), ("iopsPerGB", "50")],
                "",
                Access::Mount,
                Ok(|s| {
                    s.iops == Some(500)
                        && s.tags.get(TAG_IOPS_PER_GB).map(String::as_str) == Some("50")
                }),
            ),
            (
                "io1 iopsPerGB capped at max",
                2000,
                vec![("type", "io1"), ("iopsPerGB", "50")],
                "",
                Access::Mount,
                Ok(|s| s.iops == Some(64000)),
            ),
            (
                "io1 iopsPerGB below min",
                10,
                vec![("type", "io1"), ("iopsPerGB", "5")],
                "",
                Access::Mount,
                Err("allowAutoIOPSPerGBIncrease"),
            ),
            (
                "io1 iopsPerGB raised",
                10,
                vec![
                    ("type", "io1"),
                    ("iopsPerGB", "5"),
                    ("allowAutoIOPSPerGBIncrease", "true"),
                ],
                "",
                Access::Mount,
                Ok(|s| s.iops == Some(100)),
            ),
            (
                "allowAuto not bool",
                10,
                vec![("allowAutoIOPSPerGBIncrease", "yes")],
                "",
                Access::Mount,
                Err("allowAutoIOPSPerGBIncrease"),
            ),
            (
                "io2 iops",
                100,
                vec![("type", "io2"), ("iops", "100000")],
                "",
                Access::Mount,
                Ok(|s| s.iops == Some(100000)),
            ),
            (
                "iops with iopsPerGB",
                10,
                vec![("iops", "3000"), ("iopsPerGB", "10")],
                "",
                Access::Mount,
                Err("not both"),
            ),
            (
                "io2 too small",
                2,
                vec![("type", "io2"), ("iops", "100")],
                "",
                Access::Mount,
                Err("4..=65536"),
            ),
            (
                "st1 too small",
                10,
                vec![("type", "st1")],
                "",
                Access::Mount,
                Err("125..=16384"),
            ),
            (
                "standard too big",
                2000,
                vec![("type", "standard")],
                "",
                Access::Mount,
                Err("1..=1024"),
            ),
            (
                "gp3 throughput",
                10,
                vec![("throughput", "250")],
                "",
                Access::Mount,
                Ok(|s| s.throughput == Some(250)),
            ),
            (
                "gp3 throughput too low",
                10,
                vec![("throughput", "100")],
                "",
                Access::Mount,
                Err("throughput"),
            ),
            (
                "gp3 throughput over iops ratio",
                10,
                vec![("throughput", "800")],
                "",
                Access::Mount,
                Err("needs at least 3200 IOPS"),
            ),
            (
                "gp3 throughput with enough iops",
                10,
                vec![("throughput", "1000"), ("iops", "4000")],
                "",
                Access::Mount,
                Ok(|s| s.throughput == Some(1000)),
            ),
            (
                "throughput on io1",
                10,
                vec![("type", "io1"), ("iops", "100"), ("throughput", "200")],
                "",
                Access::Mount,
                Err("throughput"),
            ),
            (
                "encrypted",
                10,
                vec![("encrypted", "true")],
                "",
                Access::Mount,
                Ok(|s| s.encrypted && s.kms_key_id.is_none()),
            ),
            (
                "encrypted not bool",
                10,
                vec![("encrypted", "True")],
                "",
                Access::Mount,
                Err("encrypted"),
            ),
            (
                "kms forces encryption",
                10,
                vec![("kmsKeyId", "arn:aws:kms:us-east-1:1:key/x")],
                "",
                Access::Mount,
                Ok(|s| s.encrypted && s.kms_key_id.is_some()),
            ),
            (
                "fstype from capability",
                10,
                vec![],
                "xfs",
                Access::Mount,
                Ok(|s| s.fs_type == "xfs"),
            ),
            (
                "fstype param",
                10,
                vec![("csi.storage.k8s.io/fstype", "ext3")],
                "",
                Access::Mount,
                Ok(|s| s.fs_type == "ext3"),
            ),
            (
                "fstype unsupported",
                10,
                vec![],
                "btrfs",
                Access::Mount,
                Err("fstype"),
            ),
            (
                "block size ext4",
                10,
                vec![("blockSize", "4096")],
                "",
                Access::Mount,
                Ok(|s| s.format.mkfs_args("ext4") == ["-b", "4096"]),
            ),
            (
                "block size xfs",
                10,
                vec![("blockSize", "4096"), ("inodeSize", "512")],
                "xfs",
                Access::Mount,
                Ok(|s| s.format.mkfs_args("xfs") == ["-b", "size=4096", "-i", "size=512"]),
            ),
            (
                "block size not a number",
                10,
                vec![("blockSize", "4k")],
                "",
                Access::Mount,
                Err("blockSize"),
            ),
            (
                "block size shell",
                10,
                vec![("blockSize", "1;reboot")],
                "",
                Access::Mount,
                Err("blockSize"),
            ),
            (
                "bytesPerInode on xfs",
                10,
                vec![("bytesPerInode", "8192")],
                "xfs",
                Access::Mount,
                Err("bytesPerInode"),
            ),
            (
                "numberOfInodes on xfs",
                10,
                vec![("numberOfInodes", "1000")],
                "xfs",
                Access::Mount,
                Err("numberOfInodes"),
            ),
            (
                "ext options",
                10,
                vec![
                    ("bytesPerInode", "8192"),
                    ("numberOfInodes", "1000"),
                    ("inodeSize", "256"),
                ],
                "ext3",
                Access::Mount,
                Ok(|s| s.format.mkfs_args("ext3") == ["-I", "256", "-i", "8192", "-N", "1000"]),
            ),
            (
                "bigalloc on ext3",
                10,
                vec![("ext4BigAlloc", "true")],
                "ext3",
                Access::Mount,
                Err("ext4BigAlloc"),
            ),
            (
                "bigalloc",
                10,
                vec![("ext4BigAlloc", "true"), ("ext4ClusterSize", "65536")],
                "",
                Access::Mount,
                Ok(|s| s.format.mkfs_args("ext4") == ["-O", "bigalloc", "-C", "65536"]),
            ),
            (
                "cluster size without bigalloc",
                10,
                vec![("ext4ClusterSize", "65536")],
                "",
                Access::Mount,
                Err("ext4ClusterSize"),
            ),
            (
                "format params on block",
                10,
                vec![("blockSize", "4096")],
                "",
                Access::Block,
                Err("blockSize"),
            ),
            (
                "block ignores fstype",
                10,
                vec![],
                "",
                Access::Block,
                Ok(|s| s.format.is_empty()),
            ),
            (
                "pvc metadata tags",
                10,
                vec![
                    ("csi.storage.k8s.io/pvc/name", "data"),
                    ("csi.storage.k8s.io/pvc/namespace", "db"),
                    ("csi.storage.k8s.io/pv/name", "pv-1"),
                ],
                "",
                Access::Mount,
                Ok(|s| {
                    s.tags[TAG_PVC_NAME] == "data"
                        && s.tags[TAG_PVC_NAMESPACE] == "db"
                        && s.tags[TAG_PV_NAME] == "pv-1"
                        && s.tags[TAG_VOLUME_NAME] == "pvc-1"
                        && s.tags[TAG_CLUSTER] == "true"
                }),
            ),
            (
                "tag spec templated",
                10,
                vec![
                    (
                        "tagSpecification_1",
                        "owner={{ .PVCNamespace }}/{{.PVCName}}",
                    ),
                    ("csi.storage.k8s.io/pvc/name", "data"),
                    ("csi.storage.k8s.io/pvc/namespace", "db"),
                ],
                "",
                Access::Mount,
                Ok(|s| s.tags["owner"] == "db/data"),
            ),
            (
                "tag spec without =",
                10,
                vec![("tagSpecification_1", "owner")],
                "",
                Access::Mount,
                Err("tagSpecification_1"),
            ),
            (
                "tag spec reserved",
                10,
                vec![("tagSpecification_2", "CSIVolumeName=x")],
                "",
                Access::Mount,
                Err("reserved"),
            ),
            (
                "tag spec unknown field",
                10,
                vec![("tagSpecification_3", "a={{ .Secret }}")],
                "",
                Access::Mount,
                Err("unknown template field"),
            ),
            (
                "blockExpress no-op",
                10,
                vec![("blockExpress", "true")],
                "",
                Access::Mount,
                Ok(|s| s.volume_type == "gp3"),
            ),
        ];
        for (what, size, params, fs, access, want) in cases {
            let got = volume_spec("pvc-1", size, &p(&params), fs, access);
            match (got, want) {
                (Ok(s), Ok(check)) => assert!(check(&s), "{what}: {s:?}"),
                (Err(e), Err(key)) => assert!(
                    e.to_string().contains(key),
                    "{what}: {e} does not name {key}"
                ),
                (got, _) => panic!("{what}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn format_options_round_trip_through_the_volume_context() {
        let s = volume_spec(
            "v",
            10,
            &p(&[
                ("ext4BigAlloc", "true"),
                ("ext4ClusterSize", "16384"),
                ("blockSize", "4096"),
            ]),
            "",
            Access::Mount,
        )
        .expect("valid");
        let ctx = s.format.to_context();
        assert_eq!(FormatOptions::from_context(&ctx), Ok(s.format));
    }

    #[test]
    fn modifications() {
        let m = modification(&p(&[
            ("type", "io2"),
            ("iops", "4000"),
            ("tagSpecification_1", "team=db"),
            ("tagDeletion_1", "old"),
        ]))
        .expect("valid");
        assert_eq!(m.volume_type, Some("io2"));
        assert_eq!(m.iops, Some(4000));
        assert_eq!(m.add_tags["team"], "db");
        assert_eq!(m.delete_tags, ["old"]);
        for bad in [
            ("type", "fast"),
            ("size", "10"),
            ("iops", "-1"),
            ("tagDeletion_1", "CSIVolumeName"),
        ] {
            assert!(modification(&p(&[bad])).is_err(), "{bad:?}");
        }
    }
}
