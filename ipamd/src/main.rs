//! ipamd: the per-node IP address manager (warm pool of ENI IPs/prefixes, host ENI networking,
//! checkpoint, gRPC for vpc-cni, metrics).
//!
//! Owns: the node's ENIs, their addresses and the host routing for them.
//! Must not touch: pod network namespaces (vpc-cni's job) or volumes.
//!
//! This build is the workspace foundation: it reports its version; the daemon arrives with the
//! ipamd issue.

use clap::Parser;

#[derive(Parser)]
#[command(name = "ipamd", version, about = "nodewire node IP address manager")]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("ipamd: the daemon is not part of this build yet")
}
