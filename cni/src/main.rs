//! `vpc-cni`: a CNI plugin when `CNI_COMMAND` is set (the runtime execs it), otherwise a small
//! CLI whose `install` subcommand puts the plugin and its conflist on the node.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vpc-cni",
    version,
    about = "nodewire's CNI plugin: pods on VPC IPs from ipamd. The container runtime runs it with \
             CNI_COMMAND set; run `vpc-cni install` from the networking DaemonSet to install it."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Wait until ipamd can serve an ADD, then install the binary and conflist on the host.
    Install(nodewire_cni::install::Install),
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os("CNI_COMMAND").is_some() {
        nodewire_cni::cni_main();
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Install(i) => rt.block_on(nodewire_cni::install::run(i)),
    }
}
