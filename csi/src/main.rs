//! `ebs-csi`: the binary — flags, logging, metrics endpoint, and the gRPC server on the CSI
//! unix socket.

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use ebs_csi::cloud::{Ec2, Metrics};
use ebs_csi::controller::{ControllerService, Waits};
use ebs_csi::identity::IdentityService;
use ebs_csi::node::{NodeConfig, NodeService};
use nodewire_aws::imds::Imds;
use nodewire_proto::csi::controller_server::ControllerServer;
use nodewire_proto::csi::identity_server::IdentityServer;
use nodewire_proto::csi::node_server::NodeServer;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Controller service only (the Deployment with the external sidecars).
    Controller,
    /// Node service only (the DaemonSet on every node).
    Node,
    /// Both (one process per node, or a laptop).
    All,
}

#[derive(Parser)]
#[command(
    name = "ebs-csi",
    version,
    about = "nodewire EBS CSI driver (CSI 1.11)"
)]
struct Cli {
    /// Which CSI services to serve.
    #[arg(long, value_enum, default_value = "all", env = "CSI_MODE")]
    mode: Mode,
    /// CSI endpoint: unix:///path/to/csi.sock (a stale socket is replaced).
    #[arg(
        long,
        default_value = "unix:///var/lib/csi/sockets/pluginproxy/csi.sock",
        env = "CSI_ENDPOINT"
    )]
    endpoint: String,
    /// Driver name (CSIDriver object, PVs). `ebs.csi.aws.com` takes over upstream's PVs.
    #[arg(long, default_value = ebs_csi::DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Prometheus metrics (EC2 calls) at http://<addr>/metrics; empty disables.
    #[arg(long, default_value = "")]
    http_endpoint: String,
    /// Region for EC2 (controller); default: AWS_REGION, else the instance's region from IMDS.
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// IMDS endpoint override (default http://169.254.169.254 or AWS_EC2_METADATA_SERVICE_ENDPOINT).
    #[arg(long)]
    imds_endpoint: Option<String>,
    /// Directory holding device nodes and disk/by-id (node).
    #[arg(long, default_value = "/dev")]
    dev_root: PathBuf,
    /// Read a device's serial from <dir>/<kernel name> instead of /sys/block/<name>/device/serial.
    #[arg(long)]
    serial_dir: Option<PathBuf>,
    /// Staging and target paths must be under this directory (node).
    #[arg(long, default_value = "/var/lib/kubelet")]
    kubelet_root: PathBuf,
    /// Volumes per node, overriding the instance-type table (node).
    #[arg(long)]
    volume_attach_limit: Option<u32>,
    /// Attachments reserved for non-CSI volumes, instead of counting IMDS's boot mappings + root.
    #[arg(long)]
    reserved_volume_attachments: Option<u32>,
    /// Seconds NodeStage waits for an attached volume's device to appear.
    #[arg(long, default_value_t = 30)]
    device_wait_seconds: u64,
    /// Seconds to wait for EC2 attach/detach/modify before the RPC returns and the CO retries.
    #[arg(long, default_value_t = 90)]
    ec2_wait_seconds: u64,
    /// Expansions and modifications of one volume arriving within this many milliseconds are
    /// sent to EC2 as one ModifyVolume.
    #[arg(long, default_value_t = 500)]
    modify_coalesce_ms: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn socket_path(endpoint: &str) -> Result<PathBuf> {
    match endpoint.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        _ => bail!("--endpoint {endpoint:?}: expected unix:///absolute/path"),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        sub.json().init()
    } else {
        sub.init()
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(cli))
}

/// The CSI spec's plugin name: at most 63 characters, domain notation, starting and ending with
/// a letter or digit.
fn check_driver_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        bail!(
            "--driver-name {n:?}: the CSI spec wants at most 63 characters of letters, digits, '.' and '-', starting and ending with a letter or digit"
        );
    }
    Ok(())
}

async fn run(mut cli: Cli) -> Result<()> {
    check_driver_name(&cli.driver_name)?;
    // mountinfo shows resolved paths: compare against the kubelet root as the kernel sees it.
    if let Ok(p) = std::fs::canonicalize(&cli.kubelet_root) {
        cli.kubelet_root = p;
    }
    let sock = socket_path(&cli.endpoint)?;
    let registry = prometheus::Registry::new();
    let controller = matches!(cli.mode, Mode::Controller | Mode::All);
    let node = matches!(cli.mode, Mode::Node | Mode::All);
    let imds = Imds::new(cli.imds_endpoint.as_deref()).context("IMDS client")?;
    let ec2 = if controller {
        let region = match cli.region.clone() {
            Some(r) => r,
            None => imds
                .get("placement/region")
                .await
                .context("region from IMDS (set AWS_REGION or --region off EC2)")?
                .context("IMDS has no placement/region")?,
        };
        let client = nodewire_aws::ec2::client_from_env(Some(region)).await;
        Some(Ec2::new(client, Metrics::new(&registry)))
    } else {
        None
    };
    let wait = Duration::from_secs(cli.ec2_wait_seconds);
    let mut identity = IdentityService::new(cli.driver_name.clone(), ec2.clone(), controller);
    if node {
        identity.node_dev_root = Some(cli.dev_root.clone());
    }
    let mut router = tonic::transport::Server::builder().add_service(IdentityServer::new(identity));
    if let Some(ec2) = ec2 {
        let waits = Waits {
            attach: wait,
            detach: wait,
            modify: wait,
            coalesce: Duration::from_millis(cli.modify_coalesce_ms),
            ..Waits::default()
        };
        router = router.add_service(ControllerServer::new(ControllerService::new(ec2, waits)));
    }
    if node {
        let cfg = NodeConfig {
            dev_root: cli.dev_root.clone(),
            serial_dir: cli.serial_dir.clone(),
            kubelet_root: cli.kubelet_root.clone(),
            device_wait: Duration::from_secs(cli.device_wait_seconds),
            volume_attach_limit: cli.volume_attach_limit,
            reserved_attachments: cli.reserved_volume_attachments,
        };
        let n = NodeService::new(cfg, imds.clone())
            .await
            .context("node identity from IMDS")?;
        tracing::info!(instance = %n.instance_id, az = %n.az, instance_type = %n.instance_type, "node");
        router = router.add_service(NodeServer::new(n));
    }
    if !cli.http_endpoint.is_empty() {
        let addr: std::net::SocketAddr = cli
            .http_endpoint
            .parse()
            .with_context(|| format!("--http-endpoint {:?}", cli.http_endpoint))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let reg = registry.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let reg = reg.clone();
                async move {
                    let mut buf = String::new();
                    let enc = prometheus::TextEncoder::new();
                    let _ = enc.encode_utf8(&reg.gather(), &mut buf);
                    buf
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
    }
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(&sock) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale {}", sock.display()));
        }
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("binding {}", sock.display()))?;
    tracing::info!(endpoint = %cli.endpoint, mode = ?cli.mode, driver = %cli.driver_name, "serving CSI");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler at start-up");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down: finishing in-flight calls");
    };
    router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
        .context("gRPC server")?;
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn driver_names() {
        for ok in [
            ebs_csi::DEFAULT_DRIVER_NAME,
            ebs_csi::UPSTREAM_DRIVER_NAME,
            "a",
        ] {
            assert!(super::check_driver_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-ebs", "ebs.", "ebs csi", &"a".repeat(64)] {
            assert!(super::check_driver_name(bad).is_err(), "{bad}");
        }
    }
}
