//! The allocation checkpoint: written atomically (temp file, fsync, rename, fsync of the
//! directory) on every assign and release, before the reply. Our format is upstream's
//! `vpc-cni-ipam/1` plus the cooldowns (upstream loses them on restart, #1127), so an upstream
//! file is read as-is when a node switches from aws-node.

use crate::datastore::{Datastore, Key, PodMeta};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub const VERSION: &str = "nodewire-ipam/1";
pub const UPSTREAM_VERSION: &str = "vpc-cni-ipam/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    #[serde(flatten)]
    pub key: Key,
    #[serde(rename = "ipv4", default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// Unix nanoseconds, as upstream writes it.
    #[serde(rename = "allocationTimestamp", default)]
    pub allocated_ns: u64,
    #[serde(default)]
    pub metadata: PodMeta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cooldown {
    pub ipv4: Ipv4Addr,
    /// Unix nanoseconds.
    #[serde(rename = "releasedAt")]
    pub released_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: String,
    pub allocations: Vec<Allocation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cooldowns: Vec<Cooldown>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("checkpoint {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "checkpoint {path} has version {version:?}; expected {VERSION:?} or {UPSTREAM_VERSION:?}"
    )]
    Version { path: PathBuf, version: String },
}

impl Checkpoint {
    /// The datastore's allocations and live cooldowns.
    pub fn of(ds: &Datastore, now_ms: u64) -> Checkpoint {
        Checkpoint {
            version: VERSION.into(),
            allocations: ds
                .allocations()
                .into_iter()
                .map(|(key, metadata, ip, since_ms)| Allocation {
                    key,
                    ipv4: Some(ip),
                    allocated_ns: since_ms * 1_000_000,
                    metadata,
                })
                .collect(),
            cooldowns: cooldowns(ds, now_ms),
        }
    }
}

/// The datastore's live cooldowns, as written.
fn cooldowns(ds: &Datastore, now_ms: u64) -> Vec<Cooldown> {
    ds.cooldowns(now_ms)
        .into_iter()
        .map(|(ipv4, since_ms)| Cooldown {
            ipv4,
            released_ns: since_ms * 1_000_000,
        })
        .collect()
}

/// One allocation as [`Writer`] writes it, borrowed from the datastore; serialises exactly as
/// [`Allocation`] (same fields, same order).
#[derive(Serialize)]
struct AllocationRef<'a> {
    #[serde(rename = "networkName")]
    network: &'a str,
    #[serde(rename = "containerID")]
    container: &'a str,
    #[serde(rename = "ifName")]
    ifname: &'a str,
    ipv4: Ipv4Addr,
    #[serde(rename = "allocationTimestamp")]
    allocated_ns: u64,
    metadata: &'a PodMeta,
}

/// Writes the datastore's checkpoint ([`Checkpoint::of`]) on every change, keeping what makes
/// that cheap between writes: each allocation's JSON (ipamd writes the whole file on every
/// ADD and DEL, under its state lock, and at 200 pods re-serialising every allocation was most
/// of an ADD's checkpoint cost) and the directory's handle, for its fsync. Same bytes as
/// [`write`] of [`Checkpoint::of`].
pub struct Writer {
    path: PathBuf,
    /// Opened (and created) on the first write; dropped after a failed one.
    dir: Option<fs::File>,
    /// Address → the allocation it was serialised for, and its JSON.
    cache: HashMap<Ipv4Addr, Cached>,
    generation: u64,
}

struct Cached {
    key: Key,
    meta: PodMeta,
    since_ms: u64,
    json: Vec<u8>,
    /// The last write that used it.
    generation: u64,
}

impl Writer {
    pub fn new(path: &Path) -> Writer {
        Writer {
            path: path.to_path_buf(),
            dir: None,
            cache: HashMap::new(),
            generation: 0,
        }
    }

    /// Writes `ds` atomically (see [`write_bytes`]).
    pub fn write(&mut self, ds: &Datastore, now_ms: u64) -> Result<(), Error> {
        let err = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let mut body = Vec::with_capacity(256 + 224 * self.cache.len());
        body.extend_from_slice(b"{\"version\":");
        serde_json::to_writer(&mut body, VERSION).map_err(|e| err(io::Error::other(e)))?;
        body.extend_from_slice(b",\"allocations\":[");
        // Entries used by this write carry its generation; the others are dropped after it.
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let mut used = 0;
        for (i, (key, meta, ipv4, since_ms)) in ds.allocations_ref().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            match self.cache.get_mut(&ipv4) {
                Some(c) if c.since_ms == since_ms && &c.key == key && &c.meta == meta => {
                    c.generation = generation;
                    body.extend_from_slice(&c.json);
                }
                _ => {
                    let a = AllocationRef {
                        network: &key.network,
                        container: &key.container,
                        ifname: &key.ifname,
                        ipv4,
                        allocated_ns: since_ms * 1_000_000,
                        metadata: meta,
                    };
                    let json = serde_json::to_vec(&a).map_err(|e| err(io::Error::other(e)))?;
                    body.extend_from_slice(&json);
                    let c = Cached {
                        key: key.clone(),
                        meta: meta.clone(),
                        since_ms,
                        json,
                        generation,
                    };
                    self.cache.insert(ipv4, c);
                }
            }
            used += 1;
        }
        if self.cache.len() > used {
            self.cache.retain(|_, c| c.generation == generation);
        }
        body.push(b']');
        let cd = cooldowns(ds, now_ms);
        if !cd.is_empty() {
            body.extend_from_slice(b",\"cooldowns\":");
            serde_json::to_writer(&mut body, &cd).map_err(|e| err(io::Error::other(e)))?;
        }
        body.push(b'}');
        let mut written = Err(io::Error::from(io::ErrorKind::NotFound));
        for _ in 0..2 {
            let dir = match self.dir.take() {
                Some(d) => d,
                None => open_dir(&self.path).map_err(err)?,
            };
            written = write_in(&self.path, &dir, &body);
            match &written {
                // The directory was removed since the last write: once more, recreated.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // Kept only after a good write (a failed one may mean the directory changed).
                Ok(()) => self.dir = Some(dir),
                Err(_) => {}
            }
            break;
        }
        written.map_err(err)
    }
}

/// Writes the checkpoint atomically: a reader sees the old file or the new one, never a mix.
pub fn write(path: &Path, cp: &Checkpoint) -> Result<(), Error> {
    let body = serde_json::to_vec(cp).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    write_bytes(path, &body)
}

fn write_bytes(path: &Path, body: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = open_dir(path).map_err(io)?;
    write_in(path, &dir, body).map_err(io)
}

/// The directory `path` is in, created if need be, opened for its fsync.
fn open_dir(path: &Path) -> io::Result<fs::File> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    fs::File::open(dir)
}

/// A reader sees the old file or the new one, never a mix: a temporary file next to `path`,
/// fsync'd, renamed over it, then the directory (`dir`) fsync'd.
fn write_in(path: &Path, dir: &fs::File, body: &[u8]) -> io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (tmp_path, mut tmp) = tempfile_in(parent, path)?;
    let written = tmp.write_all(body).and_then(|()| tmp.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    fs::rename(&tmp_path, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp_path);
    })?;
    dir.sync_all()
}

fn tempfile_in(dir: &Path, path: &Path) -> io::Result<(PathBuf, fs::File)> {
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "ipam.json".into());
    for n in 0..1000u32 {
        let p = dir.join(format!(".{base}.tmp{}.{n}", std::process::id()));
        match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free temporary file name"))
}

/// Reads a checkpoint (ours or upstream's). A missing file is `Ok(None)`.
pub fn read(path: &Path) -> Result<Option<Checkpoint>, Error> {
    let body = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let cp: Checkpoint = serde_json::from_slice(&body).map_err(|source| Error::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if cp.version != VERSION && cp.version != UPSTREAM_VERSION {
        return Err(Error::Version {
            path: path.to_path_buf(),
            version: cp.version,
        });
    }
    Ok(Some(cp))
}

/// Reads ours, else upstream's (a node switching from aws-node keeps its pods' addresses).
pub fn read_either(ours: &Path, upstream: &Path) -> Result<Option<Checkpoint>, Error> {
    match read(ours)? {
        Some(cp) => Ok(Some(cp)),
        None => read(upstream),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{CidrKind, Eni};
    use std::collections::BTreeMap;

    fn ds() -> Datastore {
        let mut d = Datastore::new(false, 30_000);
        d.add_eni(Eni {
            id: "eni-0".into(),
            device_number: 0,
            primary: true,
            primary_ip: "10.0.0.10".parse().expect("ip"),
            subnet_id: "s".into(),
            subnet_cidr: "10.0.0.0/20".parse().expect("net"),
            route_table: 254,
            created_ms: 0,
            cidrs: BTreeMap::new(),
        });
        d.add_cidrs(
            "eni-0",
            &[
                "10.0.0.11/32".parse().expect("net"),
                "10.0.0.12/32".parse().expect("net"),
            ],
            CidrKind::Ip,
        );
        d
    }

    #[test]
    fn the_writer_writes_the_same_bytes_as_the_owned_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.json");
        let c = dir.path().join("sub/c.json");
        let writer = std::cell::RefCell::new(Writer::new(&c));
        let same = |d: &Datastore, now: u64| {
            write(&a, &Checkpoint::of(d, now)).expect("owned");
            let x = String::from_utf8_lossy(&fs::read(&a).expect("a")).to_string();
            // The caching writer, fresh and after earlier writes, writes the same bytes.
            for w in [&mut Writer::new(&c), &mut *writer.borrow_mut()] {
                w.write(d, now).expect("cached");
                let z = fs::read(&c).expect("c");
                assert_eq!(x, String::from_utf8_lossy(&z));
            }
            x
        };
        let mut d = ds();
        // A host veth name that needs escaping, and none (the field is then left out).
        for (i, host) in [(1, "eni\"q\""), (2, "")] {
            let meta = PodMeta {
                namespace: "kube-system".into(),
                name: format!("pod-{i}"),
                host_ifname: host.into(),
            };
            d.assign(
                &Key::new("aws-cni", &format!("c{i}"), "eth0"),
                &meta,
                1_000 * i,
            )
            .expect("assign");
        }
        let both = same(&d, 3_000);
        assert!(both.contains("pod-1") && both.contains("pod-2") && !both.contains("cooldowns"));
        // c2's address, cooled down and given to another pod between two writes: written from
        // the new allocation, not from what the writer kept for c2.
        d.release(&Key::new("aws-cni", "c2", "eth0"), 5_000);
        let meta = PodMeta {
            namespace: "default".into(),
            name: "pod-3".into(),
            host_ifname: "eni3".into(),
        };
        let got = d
            .assign(&Key::new("aws-cni", "c3", "eth0"), &meta, 40_000)
            .expect("assign");
        assert_eq!(got.ip.to_string(), "10.0.0.12", "c2's address again");
        let after = same(&d, 40_000);
        assert!(
            after.contains("pod-3") && !after.contains("pod-2"),
            "{after}"
        );
        d.release(&Key::new("aws-cni", "c3", "eth0"), 41_000);
        assert!(same(&d, 41_000).contains("cooldowns"));
    }

    #[test]
    fn the_writer_recreates_a_directory_removed_between_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub/ipam.json");
        let d = ds();
        let mut w = Writer::new(&p);
        w.write(&d, 1_000).expect("first");
        fs::remove_dir_all(dir.path().join("sub")).expect("rm");
        w.write(&d, 2_000)
            .expect("second, after the directory went");
        let cp = read(&p).expect("read").expect("written");
        assert_eq!(cp.version, VERSION);
    }

    #[test]
    fn round_trip_keeps_allocations_and_cooldowns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub/ipam.json");
        let mut d = ds();
        let meta = PodMeta {
            namespace: "default".into(),
            name: "web-0".into(),
            ..Default::default()
        };
        d.assign(&Key::new("aws-cni", "c1", "eth0"), &meta, 1_000)
            .expect("assign");
        d.assign(&Key::new("aws-cni", "c2", "eth0"), &meta, 1_000)
            .expect("assign");
        d.release(&Key::new("aws-cni", "c2", "eth0"), 2_000);
        write(&p, &Checkpoint::of(&d, 2_000)).expect("write");
        let cp = read(&p).expect("read").expect("present");
        let mut fresh = ds();
        for a in &cp.allocations {
            assert!(fresh.restore(
                &a.key,
                &a.metadata,
                a.ipv4.expect("ip"),
                a.allocated_ns / 1_000_000
            ));
        }
        for c in &cp.cooldowns {
            fresh.restore_cooldown(c.ipv4, c.released_ns / 1_000_000);
        }
        assert_eq!(fresh.allocations(), d.allocations());
        assert_eq!(
            fresh.cooldowns(2_000),
            vec![("10.0.0.12".parse().expect("ip"), 2_000)],
            "cooldown survives restart"
        );
        let leftovers: Vec<_> = fs::read_dir(p.parent().expect("dir"))
            .expect("ls")
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left");
    }

    #[test]
    fn reads_upstreams_file_when_ours_is_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let upstream = dir.path().join("aws-node/ipam.json");
        fs::create_dir_all(upstream.parent().expect("dir")).expect("mkdir");
        fs::write(
            &upstream,
            r#"{"version":"vpc-cni-ipam/1","allocations":[{"networkName":"aws-cni","containerID":"abc","ifName":"eth0","ipv4":"10.0.1.17","allocationTimestamp":1724190000000000000,"metadata":{"k8sPodNamespace":"default","k8sPodName":"web-0","interfacesCount":1}}]}"#,
        )
        .expect("write upstream");
        let cp = read_either(&dir.path().join("nodewire/ipam.json"), &upstream)
            .expect("read")
            .expect("present");
        assert_eq!(cp.allocations[0].key, Key::new("aws-cni", "abc", "eth0"));
        assert_eq!(
            cp.allocations[0].ipv4,
            Some("10.0.1.17".parse().expect("ip"))
        );
        assert_eq!(cp.allocations[0].metadata.name, "web-0");
        assert!(
            read_either(&dir.path().join("none"), &dir.path().join("none2"))
                .expect("ok")
                .is_none()
        );
        fs::write(
            &upstream,
            r#"{"version":"vpc-cni-ipam/9","allocations":[]}"#,
        )
        .expect("write");
        assert!(matches!(read(&upstream), Err(Error::Version { .. })));
        fs::write(&upstream, "{").expect("write");
        assert!(matches!(read(&upstream), Err(Error::Parse { .. })));
    }
}
