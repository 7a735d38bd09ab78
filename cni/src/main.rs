//! `vpc-cni`: a CNI plugin when `CNI_COMMAND` is set (the runtime execs it), otherwise a small
//! CLI whose `install` subcommand puts the plugin and its conflist on the node.

// The C `main` below, not Rust's: see there. (Test builds bring their own harness `main`.)
#![cfg_attr(not(test), no_main)]

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

/// The process entry, as C sees it. Rust's own start-up (checking fds 0-2 with `poll`, reading
/// `/proc/self/maps` to find the main thread's stack, an alternate signal stack and SIGSEGV/SIGBUS
/// handlers so a stack overflow is reported by name, then the same alternate stack for every
/// thread) is skipped: the plugin is exec'd for every pod. Of it, only SIGPIPE matters here: it
/// is ignored, as Rust does, so a write to a closed pipe or socket (ipamd restarting mid-call)
/// is an error the plugin reports as a CNI error, not a silent death. `std::env::args` still
/// works (glibc hands std the arguments before `main`).
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    // SAFETY: sets a signal disposition before any other thread exists; SIG_IGN has no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if std::env::var_os("CNI_COMMAND").is_some() {
        nodewire_cni::cni_main();
    }
    match cli_main() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e:?}");
            1
        }
    }
}

/// `vpc-cni install …` and `--help`/`--version`.
#[cfg_attr(test, allow(dead_code))]
fn cli_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    nodewire_cni::log::Logger::new(tracing::Level::INFO, Box::new(std::io::stderr())).install();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Install(i) => rt.block_on(nodewire_cni::install::run(i)),
    }
}
