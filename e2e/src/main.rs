//! `vpcsim`: bring a simulated VPC up or down, or steer a running one.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use e2e::api::{Fault, ThrottleReq};
use e2e::client::Admin;
use e2e::node::{self, Options, Vpcsim};
use e2e::sim::Timing;
use e2e::sim::throttle::ActionClass;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "vpcsim",
    version,
    about = "A simulated AWS VPC: EC2 API, IMDS, ENI and EBS hot-plug, VPC fabric"
)]
struct Cli {
    /// Log as JSON.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring up a VPC with N nodes; prints one JSON line when ready, runs until SIGTERM/SIGINT.
    Up(UpArgs),
    /// Remove everything a (crashed) simulation left under its state directory.
    Down {
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Steer a running simulation through its admin endpoint.
    Ctl(CtlArgs),
}

#[derive(Args)]
struct UpArgs {
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    #[arg(long, default_value = "m5.large")]
    instance_type: String,
    #[arg(long, default_value = "/var/run/vpcsim")]
    state_dir: PathBuf,
    /// Zone of the nodes (default: the first, us-east-1a).
    #[arg(long)]
    zone: Option<String>,
    /// Duration of `attaching`/`detaching`, volume `creating`, `modifying`, snapshot `pending`.
    #[arg(long, default_value_t = 300)]
    transition_ms: u64,
    /// How far IMDS lags EC2.
    #[arg(long, default_value_t = 200)]
    imds_lag_ms: u64,
    /// Allow IMDSv1 (requests without a token).
    #[arg(long)]
    imds_v1: bool,
    /// Seed for ids, MACs and address choice.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct CtlArgs {
    /// Admin URL (default: read from the state directory).
    #[arg(long)]
    admin: Option<String>,
    #[arg(long, default_value = "/var/run/vpcsim")]
    state_dir: PathBuf,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Per-action call counters (and per calling instance), as JSON.
    Stats {
        #[arg(long)]
        reset: bool,
    },
    /// Inject errors and/or latency for one action or `*`.
    Fault {
        #[arg(long, default_value = "*")]
        action: String,
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        #[arg(long, default_value = "InternalError")]
        error_code: String,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// Remove every injected fault.
    ClearFaults,
    /// Configure throttling: a class's bucket, or switch it on/off.
    Throttle {
        /// non-mutating | unfiltered-non-mutating | mutating | resource-intensive
        #[arg(long)]
        class: Option<String>,
        #[arg(long)]
        capacity: Option<f64>,
        #[arg(long)]
        refill_per_sec: Option<f64>,
        #[arg(long)]
        enable: bool,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
    },
    /// Show or set in-progress durations and the IMDS lag (ms).
    Timing {
        #[arg(long)]
        transition_ms: Option<u64>,
        #[arg(long)]
        imds_lag_ms: Option<u64>,
    },
    /// Fabric counters (source/destination check drops).
    Fabric,
    /// A summary of the EC2 state.
    State,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        sub.json().init()
    } else {
        sub.init()
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Up(a) => up(a).await,
            Cmd::Down { state_dir } => {
                node::down(&state_dir)
                    .with_context(|| format!("cleaning up {}", state_dir.display()))?;
                eprintln!("removed the simulation under {}", state_dir.display());
                Ok(())
            }
            Cmd::Ctl(c) => ctl(c).await,
        }
    })
}

async fn up(a: UpArgs) -> Result<()> {
    let t = a.transition_ms;
    let opts = Options {
        nodes: a.nodes,
        instance_type: a.instance_type,
        state_dir: a.state_dir,
        timing: Timing {
            attach_ms: t,
            detach_ms: t,
            create_ms: t,
            modify_ms: t,
            snapshot_ms: t,
            imds_lag_ms: a.imds_lag_ms,
        },
        seed: a.seed.unwrap_or_else(rand::random),
        imds_v1: a.imds_v1,
        zone: a.zone,
    };
    // Handlers first: a supervisor may signal as soon as it has read the JSON line.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let sim = Vpcsim::start(opts)
        .await
        .context("bringing the simulation up")?;
    println!("{}", serde_json::to_string(&sim.info)?);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    sim.shutdown()
        .await
        .context("tearing the simulation down")?;
    Ok(())
}

async fn ctl(c: CtlArgs) -> Result<()> {
    let url = match c.admin {
        Some(u) => u,
        None => {
            let rec = node::load(&c.state_dir)
                .with_context(|| format!("no simulation under {}", c.state_dir.display()))?;
            rec.info.context("the simulation is not up yet")?.admin_url
        }
    };
    let admin = Admin::new(&url);
    match c.cmd {
        CtlCmd::Stats { reset } => {
            println!("{}", serde_json::to_string_pretty(&admin.stats().await?)?);
            if reset {
                admin.reset_stats().await?;
            }
        }
        CtlCmd::Fault {
            action,
            error_rate,
            error_code,
            latency_ms,
        } => {
            admin
                .set_fault(
                    &action,
                    Fault {
                        error_rate,
                        error_code,
                        latency_ms,
                    },
                )
                .await?;
        }
        CtlCmd::ClearFaults => admin.clear_faults().await?,
        CtlCmd::Throttle {
            class,
            capacity,
            refill_per_sec,
            enable,
            disable,
        } => {
            let class = match class {
                Some(s) => {
                    Some(ActionClass::parse(&s).with_context(|| format!("unknown class {s}"))?)
                }
                None => None,
            };
            let enabled = if enable {
                Some(true)
            } else if disable {
                Some(false)
            } else {
                None
            };
            if class.is_none() && enabled.is_none() {
                println!("{}", admin.call("GET", "/admin/throttle", None).await?);
                return Ok(());
            }
            admin
                .throttle(ThrottleReq {
                    class,
                    capacity,
                    refill_per_sec,
                    enabled,
                })
                .await?;
        }
        CtlCmd::Timing {
            transition_ms,
            imds_lag_ms,
        } => {
            let mut t = admin.timing().await?;
            if transition_ms.is_none() && imds_lag_ms.is_none() {
                println!("{}", serde_json::to_string_pretty(&t)?);
                return Ok(());
            }
            if let Some(ms) = transition_ms {
                (
                    t.attach_ms,
                    t.detach_ms,
                    t.create_ms,
                    t.modify_ms,
                    t.snapshot_ms,
                ) = (ms, ms, ms, ms, ms);
            }
            if let Some(l) = imds_lag_ms {
                t.imds_lag_ms = l;
            }
            admin.set_timing(t).await?;
        }
        CtlCmd::Fabric => println!("{}", admin.call("GET", "/admin/fabric", None).await?),
        CtlCmd::State => println!("{}", admin.call("GET", "/admin/state", None).await?),
    }
    Ok(())
}
