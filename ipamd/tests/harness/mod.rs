//! The ipamd test harness: the real binary inside a vpcsim node namespace, a gRPC client on its
//! unix socket. Shared by the e2e tests and `make bench-ipamd`.
#![allow(dead_code)]

use e2e::node::NodeInfo;
use nodewire_proto::IPAM_PROTOCOL_VERSION;
use nodewire_proto::ipam::ipam_client::IpamClient;
use nodewire_proto::ipam::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub struct Ipamd {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Ipamd {
    /// Starts `bin` inside the node's namespace, pointed at vpcsim's EC2 endpoint and IMDS.
    pub fn start_bin(bin: &Path, node: &NodeInfo, dir: &Path, env: &[(&str, &str)]) -> Ipamd {
        let log = dir.join("ipamd.log");
        let (mut cmd, socket) = node.ipamd_command(bin, dir);
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ipamd {
            child: cmd.spawn().expect("spawn ipamd"),
            socket,
            log,
        }
    }

    pub async fn client(&self) -> IpamClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(ch) = nodewire_cni::ipam::channel(&self.socket, Duration::from_secs(1)).await
            {
                return IpamClient::new(ch);
            }
            assert!(
                Instant::now() < deadline,
                "ipamd never listened: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Ipamd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

pub fn key(n: usize) -> AttachmentKey {
    AttachmentKey {
        network_name: "aws-cni".into(),
        container_id: format!("sandbox-{n}"),
        ifname: "eth0".into(),
    }
}

pub fn add(n: usize) -> AddRequest {
    AddRequest {
        key: Some(key(n)),
        pod: Some(PodRef {
            namespace: "default".into(),
            name: format!("pod-{n}"),
            ..Default::default()
        }),
        netns: format!("/var/run/netns/cni-{n}"),
        host_ifname: format!("eni{n:011}"),
        client_version: IPAM_PROTOCOL_VERSION,
    }
}

impl Ipamd {
    /// Waits (polling STATUS, bounded) until ipamd is ready with at least `at_least` free addresses.
    pub async fn wait_free(&self, at_least: usize) {
        let mut c = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let st = c
                .status(StatusRequest {
                    client_version: IPAM_PROTOCOL_VERSION,
                })
                .await
                .expect("status")
                .into_inner();
            // The reason reads "<n> addresses free" when there are any.
            let free: usize = st
                .reason
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if st.ready && free >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pool never reached {at_least} free ({st:?}); log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Fast but non-zero vpcsim transitions: callers still poll, as on EC2.
pub fn quick_timing() -> e2e::sim::Timing {
    e2e::sim::Timing::quick()
}

/// `vpc-cni` next to the `ipamd` binary (`cargo test --workspace` builds both).
pub fn vpc_cni_next_to(ipamd_bin: &Path) -> PathBuf {
    let p = ipamd_bin.with_file_name("vpc-cni");
    assert!(
        p.exists(),
        "{} missing: build it with `cargo build -p nodewire-cni` (cargo test --workspace does)",
        p.display()
    );
    p
}

/// A namespace's `ip -4 rule` and `ip -4 route show table <table>`, as text.
pub fn host_state(ns: &str, table: &str) -> (String, String) {
    let run = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["-4", "-n", ns])
            .args(args)
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    (run(&["rule"]), run(&["route", "show", "table", table]))
}
