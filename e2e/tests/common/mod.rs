//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use e2e::node::{Options, Vpcsim, netns};
use e2e::sim::Timing;
use std::future::Future;
use std::time::{Duration, Instant};

/// Brings up a simulation in a fresh state directory.
pub async fn up(nodes: usize, timing: Timing) -> (Vpcsim, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        nodes,
        instance_type: "m5.large".into(),
        state_dir: dir.path().join("state"),
        timing,
        seed: 7,
        imds_v1: false,
        zone: None,
    };
    let sim = Vpcsim::start(opts).await.expect("vpcsim up");
    (sim, dir)
}

/// Fast but non-zero transitions: callers must poll, as on EC2.
pub fn quick() -> Timing {
    Timing::quick()
}

/// Runs `f` on a thread inside namespace `ns` with its own current-thread runtime, so every
/// socket it opens (the SDK's included) lives in that namespace.
pub async fn in_netns<F, Fut, T>(ns: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || {
        netns::run_in(&ns, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
        .expect("entering the namespace")
    })
    .await
    .expect("netns task")
}

/// An EC2 client without SDK retries, so each error arrives as sent.
pub fn ec2(endpoint: &str) -> Client {
    nodewire_aws::ec2::client_for_endpoint(endpoint, "us-east-1", 1)
}

/// Polls `probe` until it yields `Some`, as an EC2 client waits out an in-progress state.
pub async fn wait_for<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn code<E: ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("<none>").to_string()
}

/// Links in a namespace as (name, MAC).
pub fn links(ns: &str) -> Vec<(String, String)> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?.split('@').next()?.to_string();
            let mac = l
                .split("link/ether ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_string();
            Some((name, mac))
        })
        .collect()
}

/// An ENI's status, `None` while the call fails.
pub async fn eni_status(ec2: &Client, id: &str) -> Option<String> {
    let d = ec2
        .describe_network_interfaces()
        .network_interface_ids(id)
        .send()
        .await
        .ok()?;
    d.network_interfaces()[0]
        .status()
        .map(|s| s.as_str().to_string())
}

pub async fn vol_state(ec2: &Client, id: &str) -> Option<(String, Option<String>, i32)> {
    let d = ec2.describe_volumes().volume_ids(id).send().await.ok()?;
    let v = &d.volumes()[0];
    Some((
        v.state()?.as_str().to_string(),
        v.attachments()
            .first()
            .and_then(|a| a.state())
            .map(|s| s.as_str().to_string()),
        v.size()?,
    ))
}

/// Waits until an ENI reaches `status`.
pub async fn wait_eni(ec2: &Client, id: &str, status: &str) {
    wait_for(&format!("{id} {status}"), || async {
        (eni_status(ec2, id).await? == status).then_some(())
    })
    .await
}

/// Waits until a volume's (state, first attachment state, size) satisfies `want`.
pub async fn wait_volume(
    ec2: &Client,
    id: &str,
    what: &str,
    want: impl Fn(&(String, Option<String>, i32)) -> bool,
) {
    wait_for(what, || async {
        vol_state(ec2, id).await.filter(|s| want(s)).map(drop)
    })
    .await
}
