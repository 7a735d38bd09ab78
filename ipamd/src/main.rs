//! ipamd: the per-node IP address manager (warm pool of ENI IPs/prefixes, checkpoint, gRPC for
//! vpc-cni).
//!
//! Owns: the node's ENIs, their addresses and (later) the host routing for them.
//! Must not touch: pod network namespaces (vpc-cni's job) or volumes.

use anyhow::{Context, Result};
use clap::Parser;
use ipamd::cloud::{self, SdkCloud};
use ipamd::config::Config;
use ipamd::daemon::Ipamd;
use std::time::Duration;

const ENV_HELP: &str = "\
Configuration comes from the environment, with upstream aws-node's names and defaults:
  WARM_ENI_TARGET (1)  WARM_IP_TARGET  MINIMUM_IP_TARGET  WARM_PREFIX_TARGET (1 with PD)
  ENABLE_PREFIX_DELEGATION (false)  MAX_ENI (-1: instance limit)  MAX_PODS
  IP_COOLDOWN_PERIOD (30 s)  AWS_VPC_ENI_MTU (9001)  AWS_VPC_K8S_CNI_EXTERNALSNAT (false)
  AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS  AWS_VPC_K8S_CNI_RANDOMIZESNAT (prng|hashrandom|none)
  AWS_VPC_CNI_NODE_PORT_SUPPORT (true)  AWS_VPC_K8S_CNI_CONNMARK (0x80)  AWS_EXTERNAL_SERVICE_CIDRS
  AWS_VPC_K8S_CNI_VETHPREFIX (eni)  AWS_VPC_K8S_CNI_BACKING_STORE (upstream checkpoint, read once)
  DISABLE_LEAKED_ENI_CLEANUP  MANAGE_UNTAGGED_ENI (true)  ADDITIONAL_ENI_TAGS ({})  CLUSTER_NAME
  INTROSPECTION_BIND_ADDRESS (127.0.0.1:61679)  DISABLE_INTROSPECTION  DISABLE_METRICS
  AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG (false; true is refused: ENIConfig is not supported)
nodewire's own:
  NODEWIRE_IPAMD_SOCKET (/var/run/nodewire/ipamd.sock)  NODEWIRE_BACKING_STORE (/var/run/nodewire/ipam.json)
  NODEWIRE_ADD_WAIT_MS (5000)  NODEWIRE_LEAKED_ENI_GRACE_SECONDS (300)  NODEWIRE_METRICS_BIND_ADDRESS
  NODEWIRE_MIN_ENI_LIFETIME_SECONDS (60)  NODEWIRE_DECREASE_INTERVAL_SECONDS (30)
  NODEWIRE_SUBNET_BACKOFF_SECONDS (10)  NODEWIRE_LEAK_SWEEP_INTERVAL_SECONDS (3600)
  NODEWIRE_EC2_SYNC_INTERVAL_SECONDS (60)  NODEWIRE_EC2_SYNC_GRACE_SECONDS (60)  NODEWIRE_INSTANCE_TYPE_CACHE (/var/run/nodewire/instance-types.json)
EC2 and IMDS: the standard AWS SDK configuration (AWS_ENDPOINT_URL_EC2, credentials chain,
AWS_EC2_METADATA_SERVICE_ENDPOINT); the region comes from IMDS.
A bad value makes ipamd exit non-zero with one line naming the variable.";

#[derive(Parser)]
#[command(name = "ipamd", version, about = "nodewire node IP address manager", after_help = ENV_HELP)]
struct Cli {
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// Seconds between pool reconciliations (a change wakes the reconciler at once).
    #[arg(long, default_value_t = 5)]
    reconcile_interval: u64,
    /// Set the host sysctls ipamd needs (rp_filter on the primary interface, ip_forward) and
    /// exit: the privileged init container's job, so ipamd itself needs no write access to
    /// /proc/sys.
    #[arg(long, conflicts_with = "probe")]
    host_setup: bool,
    /// Ask the running ipamd's gRPC health service over its socket; exit 0 when SERVING (the
    /// DaemonSet's liveness and readiness probe).
    #[arg(long)]
    probe: bool,
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
    let cfg = match Config::from_env(|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ipamd: {e}");
            std::process::exit(2);
        }
    };
    // One thread: a CNI call (one connection per exec) is accepted, answered and written, and a
    // DEL's host rules removed over netlink, without handing work between threads. On the
    // 2-worker runtime each call cost futex wake-ups between the accepting thread, a worker
    // and the netlink task (and, on a busy 2-vCPU node, waits for a core while the plugin
    // builds the pod's veth): 0.52-0.79 ms of ipamd CPU per ADD in `make bench-cni` against
    // 0.28 ms here. Nothing here computes for long; blocking work (nftables) goes to
    // `spawn_blocking`.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if cli.probe {
        return rt.block_on(probe(&cfg.socket));
    }
    if cli.host_setup {
        return rt.block_on(host_setup());
    }
    rt.block_on(run(cfg, Duration::from_secs(cli.reconcile_interval)))
}

async fn probe(socket: &std::path::Path) -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let ch = nodewire_cni::ipam::channel(socket, Duration::from_secs(2))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        HealthClient::new(ch).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .context("no health answer within 3 s")?
    .context("health check")?
    .into_inner();
    anyhow::ensure!(
        r.status == ServingStatus::Serving as i32,
        "ipamd is not serving (status {})",
        r.status
    );
    println!("SERVING");
    Ok(())
}

async fn host_setup() -> Result<()> {
    let imds = nodewire_aws::imds::Imds::new(None).context("IMDS client")?;
    let node = cloud::discover(&imds)
        .await
        .context("discovering the node from IMDS")?;
    let host = ipamd::hostnet::HostNet::new().context("netlink")?;
    let primary_if = host
        .link_name(&node.primary_mac)
        .await
        .context("finding the primary interface")?;
    ipamd::hostnet::HostNet::sysctls(&primary_if).context("writing sysctls")?;
    tracing::info!(%primary_if, "host sysctls set");
    Ok(())
}

async fn run(cfg: Config, interval: Duration) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let imds = nodewire_aws::imds::Imds::new(None).context("IMDS client")?;
    let node = cloud::discover(&imds)
        .await
        .context("discovering the node from IMDS")?;
    tracing::info!(instance = %node.instance_id, r#type = %node.instance_type, az = %node.az, "node discovered");
    let ec2 = nodewire_aws::ec2::client_from_env(Some(node.region.clone())).await;
    let listener = ipamd::server::bind(&cfg.socket)
        .with_context(|| format!("binding {}", cfg.socket.display()))?;
    let host = ipamd::hostnet::HostNet::new().context("netlink")?;
    let ipamd = Ipamd::init(cfg, node, SdkCloud::new(ec2), Some(host))
        .await
        .context("initialising the pool")?;
    let reconciler = tokio::spawn(ipamd.clone().run(interval));
    if !ipamd.cfg.disable_leaked_eni_cleanup {
        tokio::spawn(ipamd.clone().run_sweeper(ipamd.cfg.leak_sweep_interval));
    }
    if !ipamd.cfg.disable_metrics {
        let l = tokio::net::TcpListener::bind(&ipamd.cfg.metrics_bind)
            .await
            .with_context(|| format!("binding metrics on {}", ipamd.cfg.metrics_bind))?;
        tokio::spawn(axum::serve(l, ipamd::observe::metrics_router(ipamd.clone())).into_future());
    }
    if !ipamd.cfg.disable_introspection {
        let l = tokio::net::TcpListener::bind(&ipamd.cfg.introspection_bind)
            .await
            .with_context(|| {
                format!("binding introspection on {}", ipamd.cfg.introspection_bind)
            })?;
        tokio::spawn(axum::serve(l, ipamd::observe::introspection(ipamd.clone())).into_future());
    }
    let stopper = ipamd.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: no new allocations, finishing in-flight calls");
        stopper.stop();
    };
    ipamd::server::serve(ipamd.clone(), listener, shutdown)
        .await
        .context("gRPC server")?;
    let _ = reconciler.await;
    let _ = std::fs::remove_file(&ipamd.cfg.socket);
    Ok(())
}
