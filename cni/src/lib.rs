//! vpc-cni: the CNI plugin the container runtime execs for every pod sandbox.
//!
//! Owns: the CNI protocol (`CNI_*` environment, config on stdin, result or error JSON on stdout;
//! spec 0.4.0, 1.0.0 and 1.1.0), pod wiring (veth, pod address/routes/neighbour, host /32 route
//! and rules 512/1536) and the installer that puts the plugin on the node once ipamd is ready.
//! Talks only to ipamd, over its unix socket.
//!
//! Must not touch: the AWS SDK or any EC2/IMDS call (it must stay small and start fast), the
//! node's ENIs, tables and SNAT (ipamd's), and any state between calls other than what the
//! kernel and ipamd hold.
//!
//! Core/shell split: `spec` is pure (parsing, validation, naming, result JSON) and table-tested;
//! `ipam` (gRPC) and `net` (netlink) are the edges; `plugin` sequences them.

pub mod install;
pub mod ipam;
pub mod log;
pub mod net;
pub mod plugin;
pub mod spec;

use spec::{CniError, Code, Command, LATEST, SUPPORTED};
use std::io::{Read, Write};

/// Sends `tracing` output to the config's log file (created if needed), or warnings and worse
/// to stderr, which the runtime logs.
fn init_logging(conf: &spec::NetConf) {
    let level = match conf.log_level {
        spec::LogLevel::Error => tracing::Level::ERROR,
        spec::LogLevel::Warn => tracing::Level::WARN,
        spec::LogLevel::Info => tracing::Level::INFO,
        spec::LogLevel::Debug => tracing::Level::DEBUG,
    };
    let file = conf.log_file.as_ref().and_then(|p| {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    match file {
        Some(f) => log::Logger::new(level, Box::new(f)).install(),
        None => {
            log::Logger::new(level.min(tracing::Level::WARN), Box::new(std::io::stderr())).install()
        }
    }
}

/// One plugin invocation: what to print on stdout and the exit status.
pub fn invoke(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (String, i32) {
    let version = spec::config_version(stdin)
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_string());
    let fail = |e: CniError| (e.to_json(&version).to_string(), 1);
    let env = match spec::parse_env(get) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    if env.command == Command::Version {
        let v = spec::version_result(spec::config_version(stdin).as_deref());
        return (v.to_string(), 0);
    }
    let conf = match spec::parse_config(stdin, env.command) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    init_logging(&conf);
    // ADD starts its netlink work before the runtime exists (see `plugin::start_add`).
    let add_start = match env.command {
        Command::Add => match plugin::start_add(&env, &conf) {
            Ok(s) => Some(s),
            Err(e) => return fail(e),
        },
        _ => None,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            if let Some(s) = add_start {
                s.abandon();
            }
            return fail(CniError::new(
                Code::Io,
                format!("starting the runtime: {e}"),
            ));
        }
    };
    match rt.block_on(plugin::run(&env, &conf, add_start)) {
        Ok(Some(v)) => (v.to_string(), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => {
            tracing::warn!(code = e.code as u32, msg = %e.msg, command = ?env.command, "failed");
            fail(e)
        }
    }
}

/// The plugin's `main` when `CNI_COMMAND` is set: reads stdin, prints, exits.
pub fn cni_main() -> ! {
    // A panic still answers with a spec error object, never a bare stack trace.
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("vpc-cni bug: {info}");
        let e = CniError::new(Code::Setup, msg).to_json(LATEST);
        let _ = writeln!(std::io::stdout(), "{e}");
        std::process::exit(1);
    }));
    let mut stdin = Vec::new();
    let (out, code) = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => invoke(|k| std::env::var(k).ok(), &stdin),
        Err(e) => (
            CniError::new(
                Code::Io,
                format!("reading the network configuration from stdin: {e}"),
            )
            .to_json(LATEST)
            .to_string(),
            1,
        ),
    };
    let mut o = std::io::stdout().lock();
    if !out.is_empty() {
        let _ = writeln!(o, "{out}");
    }
    let _ = o.flush();
    std::process::exit(code)
}
