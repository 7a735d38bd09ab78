//! ebs-csi: the EBS CSI driver (controller / node / all).
//!
//! Owns: the CSI gRPC services, EBS volume lifecycle through EC2, and node-side format/mount.
//! Must not touch: node networking.
//!
//! This build is the workspace foundation: it reports its version; the driver arrives with the
//! ebs-csi issue.

use clap::Parser;

#[derive(Parser)]
#[command(name = "ebs-csi", version, about = "nodewire EBS CSI driver")]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("ebs-csi: the driver is not part of this build yet")
}
