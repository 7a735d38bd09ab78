//! The ebs-csi test harness: the real binary as controller (host) and node plugin (a vpcsim
//! node's network namespace, the host's mount namespace), gRPC channels on their sockets, and
//! request builders. Shared by the e2e tests and `make bench-csi`.
#![allow(dead_code)]

use e2e::node::{NodeInfo, Vpcsim};
use nodewire_proto::csi::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub const GIB: i64 = 1 << 30;

pub struct Plugin {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Plugin {
    pub fn start(cmd: &mut Command, socket: PathBuf, log: PathBuf) -> Plugin {
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"));
        Plugin {
            child: cmd.spawn().expect("spawn ebs-csi"),
            socket,
            log,
        }
    }

    pub async fn channel(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The same HTTP/2-over-unix-socket channel vpc-cni uses to reach ipamd.
            if let Ok(ch) = nodewire_cni::ipam::channel(&self.socket, Duration::from_secs(1)).await
            {
                return ch;
            }
            assert!(
                Instant::now() < deadline,
                "ebs-csi never listened: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn base_cmd(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("RUST_LOG", "info");
    c
}

/// The controller on the host, EC2 through vpcsim's host endpoint.
pub fn controller_with(bin: &Path, sim: &Vpcsim, dir: &Path, name: &str, args: &[&str]) -> Plugin {
    let socket = dir.join(format!("{name}.sock"));
    let mut c = base_cmd(bin);
    c.env("AWS_ENDPOINT_URL_EC2", &sim.info.ec2_endpoint_local)
        .env("AWS_REGION", "us-east-1")
        .args(["--mode", "controller"])
        .args(args)
        .arg(format!("--endpoint=unix://{}", socket.display()));
    Plugin::start(&mut c, socket, dir.join(format!("{name}.log")))
}

/// The node plugin: in the node's network namespace (IMDS), the host's mount namespace.
pub fn node_plugin(bin: &Path, node: &NodeInfo, dir: &Path, kubelet: &Path) -> Plugin {
    node_plugin_with(bin, node, dir, kubelet, &node.device_dir.join("serial"))
}

/// The node plugin reading device serials from `serials` (vpcsim's are in `<device dir>/serial`).
pub fn node_plugin_with(
    bin: &Path,
    node: &NodeInfo,
    dir: &Path,
    kubelet: &Path,
    serials: &Path,
) -> Plugin {
    let socket = dir.join(format!("{}.sock", node.name));
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/{}", node.netns))
        .arg(bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .args(["--mode", "node", "--device-wait-seconds", "15"])
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg(format!("--dev-root={}", node.device_dir.display()))
        .arg(format!("--serial-dir={}", serials.display()))
        .arg(format!("--kubelet-root={}", kubelet.display()));
    Plugin::start(&mut c, socket, dir.join(format!("{}.log", node.name)))
}

/// Unmounts everything under `root` (deepest first), also when a test fails half way.
pub struct Mounts(pub PathBuf);
impl Drop for Mounts {
    fn drop(&mut self) {
        for _ in 0..4 {
            let ms = ebs_csi::mount::mounts().unwrap_or_default();
            let mut under: Vec<_> = ms
                .iter()
                .filter(|m| m.mount_point.starts_with(&self.0))
                .map(|m| m.mount_point.clone())
                .collect();
            if under.is_empty() {
                return;
            }
            under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in under {
                let _ = Command::new("umount").arg("-l").arg(&p).status();
            }
        }
    }
}

pub fn mount_cap(fs: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: fs.into(),
                ..Default::default()
            },
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

pub fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

pub fn cap_of(fs: &str) -> VolumeCapability {
    if fs == "block" {
        block_cap()
    } else {
        mount_cap(fs)
    }
}

pub fn create_req(name: &str, gib: i64, fs: &str, az: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: gib * GIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap_of(fs)],
        parameters: [("type".to_string(), "gp3".to_string())]
            .into_iter()
            .collect(),
        accessibility_requirements: Some(TopologyRequirement {
            requisite: vec![],
            preferred: vec![Topology {
                segments: [("topology.kubernetes.io/zone".to_string(), az.to_string())]
                    .into_iter()
                    .collect(),
            }],
        }),
        ..Default::default()
    }
}
