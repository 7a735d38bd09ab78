//! `vpc-cni install`: what the networking DaemonSet runs to put the plugin on the node. It waits
//! until ipamd reports it can serve an ADD, then copies this binary and writes the conflist
//! (`vpc-cni` first, `portmap` chained) into the host's CNI directories, each by an atomic
//! rename, so kubelet never sees the node network-ready before ipamd can give addresses and never
//! reads a half-written file. Re-runs rewrite nothing that is already identical.

use crate::ipam::Ipamd;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct Install {
    /// Host CNI binary directory (mounted into the container).
    #[arg(
        long,
        env = "NODEWIRE_CNI_BIN_DIR",
        default_value = "/host/opt/cni/bin"
    )]
    pub bin_dir: PathBuf,
    /// Host CNI configuration directory.
    #[arg(
        long,
        env = "NODEWIRE_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    pub conf_dir: PathBuf,
    /// File name of the conflist (the runtime loads the lexically first one).
    #[arg(
        long,
        env = "NODEWIRE_CNI_CONFLIST",
        default_value = "10-nodewire.conflist"
    )]
    pub conflist: String,
    /// Network name in the conflist.
    #[arg(long, env = "NODEWIRE_CNI_NETWORK_NAME", default_value = "nodewire")]
    pub network_name: String,
    /// cniVersion of the conflist (0.4.0, 1.0.0 or 1.1.0; 1.1.0 needs a runtime with GC/STATUS).
    #[arg(long, env = "NODEWIRE_CNI_VERSION", default_value = "1.0.0")]
    pub cni_version: String,
    /// ipamd's socket, written into the conflist and used to wait for readiness.
    #[arg(long, env = "NODEWIRE_IPAMD_SOCKET", default_value = crate::spec::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Pod interface MTU.
    #[arg(long, env = "AWS_VPC_ENI_MTU", default_value_t = crate::spec::DEFAULT_MTU)]
    pub mtu: u32,
    /// Host veth name prefix (1-4 characters, not eth, lo or vlan).
    #[arg(long, env = "AWS_VPC_K8S_CNI_VETHPREFIX", default_value = "eni")]
    pub veth_prefix: String,
    /// Plugin log file on the host ("stderr" for the runtime's log).
    #[arg(
        long,
        env = "AWS_VPC_K8S_PLUGIN_LOG_FILE",
        default_value = "/var/log/nodewire/plugin.log"
    )]
    pub plugin_log_file: String,
    /// Plugin log level: error, warn, info, debug.
    #[arg(long, env = "AWS_VPC_K8S_PLUGIN_LOG_LEVEL", default_value = "info")]
    pub plugin_log_level: String,
    /// Chain the `portmap` plugin (hostPort support) after vpc-cni.
    #[arg(long, env = "NODEWIRE_CNI_PORTMAP", default_value_t = true, action = clap::ArgAction::Set)]
    pub portmap: bool,
    /// Give up waiting for ipamd after this many seconds (0: wait forever).
    #[arg(long, default_value_t = 0)]
    pub wait_timeout: u64,
    /// After installing, keep running (a DaemonSet container) until SIGTERM.
    #[arg(long)]
    pub stay: bool,
}

/// The conflist text for these settings.
pub fn conflist(i: &Install) -> String {
    let mut plugins = vec![json!({
        "type": "vpc-cni",
        "mtu": i.mtu,
        "vethPrefix": i.veth_prefix,
        "ipamdSocket": i.socket,
        "logFile": i.plugin_log_file,
        "logLevel": i.plugin_log_level,
    })];
    if i.portmap {
        plugins.push(
            json!({ "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }),
        );
    }
    let v = json!({ "cniVersion": i.cni_version, "name": i.network_name, "plugins": plugins });
    // Invariant: a json! value always serialises.
    serde_json::to_string_pretty(&v).expect("serialising the conflist") + "\n"
}

/// Checks the settings the way the plugin will read them.
pub fn validate(i: &Install) -> anyhow::Result<()> {
    let text = conflist(i);
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let mut plugin = v["plugins"][0].clone();
    plugin["cniVersion"] = v["cniVersion"].clone();
    plugin["name"] = v["name"].clone();
    crate::spec::parse_config(plugin.to_string().as_bytes(), crate::spec::Command::Add)
        .map_err(|e| anyhow::anyhow!("invalid install settings: {}", e.msg))?;
    if i.conflist.contains('/') || !i.conflist.ends_with(".conflist") {
        anyhow::bail!(
            "--conflist must be a file name ending in .conflist, got {:?}",
            i.conflist
        );
    }
    Ok(())
}

/// Writes `bytes` to `dest` by temp file + fsync + rename, unless it already holds them.
/// Returns whether it wrote.
pub fn install_file(dest: &Path, bytes: &[u8], mode: u32) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(dest).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        // The rename itself survives a crash only once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|_| true)
}

/// Polls ipamd's STATUS until it is ready (or the timeout passes).
async fn wait_ready(socket: &Path, timeout: Option<Duration>) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut last = String::new();
    loop {
        let why = match Ipamd::connect(socket, Duration::from_secs(2)).await {
            Ok(mut c) => match c.status().await {
                Ok(s) if s.ready => return Ok(()),
                Ok(s) => s.reason,
                Err(e) => e.msg,
            },
            Err(e) => e.to_string(),
        };
        if why != last {
            tracing::info!(reason = %why, "waiting for ipamd to be ready");
            last = why;
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            anyhow::bail!("ipamd was not ready after {:?}: {last}", start.elapsed());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

pub async fn run(i: Install) -> anyhow::Result<()> {
    validate(&i)?;
    let timeout = (i.wait_timeout > 0).then(|| Duration::from_secs(i.wait_timeout));
    wait_ready(&i.socket, timeout).await?;
    let me = std::env::current_exe()?;
    let bin = std::fs::read(&me).map_err(|e| anyhow::anyhow!("reading {}: {e}", me.display()))?;
    let wrote_bin = install_file(&i.bin_dir.join("vpc-cni"), &bin, 0o755)?;
    // The binary first: a conflist naming a plugin that is not there yet would fail pods.
    let wrote_conf = install_file(
        &i.conf_dir.join(&i.conflist),
        conflist(&i).as_bytes(),
        0o644,
    )?;
    tracing::info!(
        bin = %i.bin_dir.display(),
        conf = %i.conf_dir.join(&i.conflist).display(),
        wrote_bin,
        wrote_conf,
        "vpc-cni installed"
    );
    if i.stay {
        // Blocked only now, so that SIGTERM and ^C still end the wait for ipamd above. This
        // process has one thread (a current-thread runtime, no blocking pool), so no other
        // thread can take the signal with its default action.
        let stop = stop_signals();
        stop.thread_block()?;
        let sig = stop.wait()?;
        tracing::info!(signal = %sig, "stopping");
    }
    Ok(())
}

/// What ends `--stay`: the kubelet's SIGTERM, or ^C.
fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut s = SigSet::empty();
    s.add(Signal::SIGTERM);
    s.add(Signal::SIGINT);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        i: Install,
    }

    fn parse(args: &[&str]) -> Install {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .expect("args")
            .i
    }

    #[test]
    fn conflist_chains_portmap_and_parses() {
        let i = parse(&["--mtu", "1500", "--veth-prefix", "abc"]);
        validate(&i).expect("valid");
        let v: serde_json::Value = serde_json::from_str(&conflist(&i)).expect("json");
        assert_eq!(v["plugins"][0]["type"], "vpc-cni");
        assert_eq!(v["plugins"][0]["mtu"], 1500);
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
        let i = parse(&["--portmap", "false"]);
        let v: serde_json::Value = serde_json::from_str(&conflist(&i)).expect("json");
        assert_eq!(v["plugins"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn bad_settings_are_refused() {
        for args in [
            &["--veth-prefix", "eth"][..],
            &["--mtu", "20000"],
            &["--cni-version", "0.3.1"],
            &["--conflist", "x.conf"],
        ] {
            assert!(validate(&parse(args)).is_err(), "{args:?}");
        }
    }

    #[test]
    fn install_file_is_atomic_and_idempotent() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("sub/f");
        assert!(install_file(&p, b"one", 0o644).expect("write"));
        assert!(!install_file(&p, b"one", 0o644).expect("same"));
        assert!(install_file(&p, b"two", 0o644).expect("rewrite"));
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path().join("sub"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp files left: {names:?}");
    }
}
