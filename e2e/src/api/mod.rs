//! The HTTP shell around the core: the EC2 Query endpoint, the admin endpoint (call counters,
//! throttling, fault injection, timing) and the shared state both use.

pub mod actions;
pub mod imds;
pub mod params;
pub mod xml;

use crate::sim::error::ApiError;
use crate::sim::throttle::{ActionClass, Throttle};
use crate::sim::{Event, Sim, Timing};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use params::Params;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// An injected fault for one action (or `*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Probability in [0, 1] that a call fails with `error_code`.
    #[serde(default)]
    pub error_rate: f64,
    /// `InternalError` (500), `Unavailable` (503) or any other EC2 code (400).
    #[serde(default = "default_fault_code")]
    pub error_code: String,
    /// Added to every call, before it is served.
    #[serde(default)]
    pub latency_ms: u64,
}

fn default_fault_code() -> String {
    "InternalError".into()
}

/// Per-action accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub calls: u64,
    pub errors: u64,
    pub throttled: u64,
    pub injected: u64,
}

/// What `GET /admin/stats` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub actions: BTreeMap<String, Counter>,
    /// Calls per calling instance (known when the call came through a node's endpoint).
    pub per_instance: BTreeMap<String, BTreeMap<String, u64>>,
    pub imds_calls: BTreeMap<String, u64>,
}

pub struct Control {
    pub throttle: Throttle,
    pub faults: BTreeMap<String, Fault>,
    pub stats: Stats,
    rng: StdRng,
}

/// State shared by every endpoint of one simulation.
pub struct Shared {
    pub sim: Mutex<Sim>,
    pub ctl: Mutex<Control>,
    /// Wakes the ticker when a new in-progress state was scheduled.
    pub wake: Notify,
    pub events: mpsc::UnboundedSender<Event>,
    /// Allow IMDSv1 (no token).
    pub imds_v1: bool,
    /// Returns the fabric's source/destination-check drop count.
    pub fabric_drops: Mutex<Option<Box<dyn Fn() -> u64 + Send>>>,
    request_seq: AtomicU64,
    /// Events handed to the node side so far, and how many it has applied.
    sent: AtomicU64,
    pub applied: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub fn new(
        sim: Sim,
        events: mpsc::UnboundedSender<Event>,
        seed: u64,
        imds_v1: bool,
    ) -> Arc<Self> {
        Arc::new(Shared {
            sim: Mutex::new(sim),
            ctl: Mutex::new(Control {
                throttle: Throttle::default(),
                faults: BTreeMap::new(),
                stats: Stats::default(),
                rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            }),
            wake: Notify::new(),
            events,
            imds_v1,
            fabric_drops: Mutex::new(None),
            request_seq: AtomicU64::new(1),
            sent: AtomicU64::new(0),
            applied: tokio::sync::watch::channel(0).0,
        })
    }

    pub fn sim(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ctl(&self) -> MutexGuard<'_, Control> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Advances the simulation to `now` and forwards its events.
    pub fn tick(&self, now: Instant) -> Option<Instant> {
        let mut sim = self.sim();
        sim.advance(now);
        for e in sim.drain_events() {
            self.emit(e);
        }
        sim.next_due()
    }

    /// Updates one action's counters.
    fn count(&self, action: &str, f: impl FnOnce(&mut Counter)) {
        f(self
            .ctl()
            .stats
            .actions
            .entry(action.to_string())
            .or_default());
    }

    /// Hands an event to the node side.
    pub fn emit(&self, e: Event) {
        self.sent.fetch_add(1, Ordering::SeqCst);
        if self.events.send(e).is_err() {
            // No node side (pure API use): count it as applied.
            self.applied.send_modify(|n| *n += 1);
        }
    }

    /// Waits until the node side has applied every event emitted so far (links plugged,
    /// routes synced, devices exposed), after ending every in-progress state that is due.
    pub async fn settle(&self) {
        self.tick(Instant::now());
        let target = self.sent.load(Ordering::SeqCst);
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|n| *n >= target).await;
    }

    fn request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:08x}-0000-4000-8000-{n:012x}",
            n.wrapping_mul(2654435761) & 0xffff_ffff
        )
    }
}

/// Keeps time moving: ends in-progress states when they are due, even when nobody calls the API.
pub fn spawn_ticker(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match shared.tick(Instant::now()) {
                Some(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t.into()) => {}
                        _ = shared.wake.notified() => {}
                    }
                }
                None => shared.wake.notified().await,
            }
        }
    })
}

/// An EC2 endpoint without a node side (no namespaces, no hot-plug), on the host's loopback.
/// For API-level tests and the contract suite. Returns the endpoint URL and the admin URL.
pub struct ApiOnly {
    pub endpoint: String,
    pub admin_url: String,
    pub shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ApiOnly {
    pub async fn start(cfg: crate::sim::SimConfig) -> std::io::Result<ApiOnly> {
        let (tx, rx) = mpsc::unbounded_channel();
        drop(rx);
        let seed = cfg.seed;
        let shared = Shared::new(Sim::new(cfg), tx, seed, false);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let a = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", l.local_addr()?);
        let admin_url = format!("http://{}", a.local_addr()?);
        let tasks = vec![
            serve(l, ec2_router(shared.clone(), None)),
            serve(a, admin_router(shared.clone())),
            spawn_ticker(shared.clone()),
        ];
        Ok(ApiOnly {
            endpoint,
            admin_url,
            shared,
            tasks,
        })
    }
}

impl Drop for ApiOnly {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Serves a router on a listener until aborted.
pub fn serve(l: tokio::net::TcpListener, r: Router) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, r).await {
            tracing::error!(error = %e, "server stopped");
        }
    })
}

/// The EC2 endpoint's router; `caller` is the instance whose namespace the listener lives in.
pub fn ec2_router(shared: Arc<Shared>, caller: Option<String>) -> Router {
    Router::new()
        .fallback(any(ec2_handler))
        .with_state((shared, caller))
}

async fn ec2_handler(
    State((shared, caller)): State<(Arc<Shared>, Option<String>)>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let p = if method == Method::GET {
        Params::parse(query.unwrap_or_default().as_bytes())
    } else {
        Params::parse(&body)
    };
    let rid = shared.request_id();
    let Some(action) = p.get("Action").map(String::from) else {
        return error_response(
            &ApiError::new(
                "MissingAction",
                "The request must contain the parameter Action",
            ),
            &rid,
        );
    };
    let class = ActionClass::of(&action, p.narrowed());
    let (fault, latency) = {
        let mut ctl = shared.ctl();
        let c = ctl.stats.actions.entry(action.clone()).or_default();
        c.calls += 1;
        if let Some(i) = &caller {
            *ctl.stats
                .per_instance
                .entry(i.clone())
                .or_default()
                .entry(action.clone())
                .or_default() += 1;
        }
        let f = ctl
            .faults
            .get(&action)
            .or_else(|| ctl.faults.get("*"))
            .cloned()
            .unwrap_or_default();
        let hit = f.error_rate > 0.0 && ctl.rng.random::<f64>() < f.error_rate;
        (hit.then(|| f.error_code.clone()), f.latency_ms)
    };
    if latency > 0 {
        // Injected latency is the product feature here, not synchronisation.
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let now = Instant::now();
    let result = if !shared.ctl().throttle.admit(class, now) {
        shared.count(&action, |c| c.throttled += 1);
        Err(ApiError::new(
            "RequestLimitExceeded",
            "Request limit exceeded.",
        ))
    } else if let Some(code) = fault {
        shared.count(&action, |c| c.injected += 1);
        let msg = match code.as_str() {
            "InternalError" => "An internal error has occurred",
            "Unavailable" => "The server is overloaded and can't handle the request.",
            _ => "Injected fault",
        };
        Err(ApiError::new(&code, msg))
    } else {
        let mut sim = shared.sim();
        let r = actions::dispatch(&mut sim, now, &action, &p);
        // Hand events over while still holding the lock, so the node side sees them in the
        // order the state changed (a detach's unplug never overtakes its attach's plug).
        for e in sim.drain_events() {
            shared.emit(e);
        }
        drop(sim);
        shared.wake.notify_one();
        r
    };
    match result {
        Ok(inner) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{}\"><requestId>{rid}</requestId>{inner}</{action}Response>",
                xml::NS
            );
            ([(header::CONTENT_TYPE, "text/xml;charset=UTF-8")], body).into_response()
        }
        Err(e) => {
            shared.count(&action, |c| c.errors += 1);
            tracing::debug!(action, code = %e.code, "EC2 error");
            error_response(&e, &rid)
        }
    }
}

fn error_response(e: &ApiError, rid: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>",
        xml::escape(&e.code),
        xml::escape(&e.message)
    );
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
        body,
    )
        .into_response()
}

// ----- admin -------------------------------------------------------------------------------

/// `PUT /admin/throttle` body: reconfigure one class, or switch throttling on/off.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ThrottleReq {
    pub class: Option<ActionClass>,
    pub capacity: Option<f64>,
    pub refill_per_sec: Option<f64>,
    pub enabled: Option<bool>,
}

/// `PUT /admin/faults` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultReq {
    /// An action name or `*` for all.
    pub action: String,
    #[serde(flatten)]
    pub fault: Fault,
}

/// The admin endpoint (JSON): stats, faults, throttling, timing, state summary.
pub fn admin_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/admin/stats", get(get_stats).delete(reset_stats))
        .route(
            "/admin/faults",
            get(get_faults).put(put_fault).delete(clear_faults),
        )
        .route("/admin/throttle", get(get_throttle).put(put_throttle))
        .route("/admin/timing", get(get_timing).put(put_timing))
        .route("/admin/fabric", get(get_fabric))
        .route("/admin/state", get(get_state))
        .route("/admin/tick", post(post_tick))
        .with_state(shared)
}

type S = State<Arc<Shared>>;

async fn get_stats(State(s): S) -> axum::Json<Stats> {
    axum::Json(s.ctl().stats.clone())
}

async fn reset_stats(State(s): S) -> StatusCode {
    s.ctl().stats = Stats::default();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(s): S) -> axum::Json<BTreeMap<String, Fault>> {
    axum::Json(s.ctl().faults.clone())
}

async fn put_fault(State(s): S, axum::Json(r): axum::Json<FaultReq>) -> Response {
    if !(0.0..=1.0).contains(&r.fault.error_rate) {
        return (StatusCode::BAD_REQUEST, "error_rate must be within [0, 1]").into_response();
    }
    if r.action != "*" && !actions::ACTIONS.contains(&r.action.as_str()) {
        return (
            StatusCode::BAD_REQUEST,
            format!("unknown action {}", r.action),
        )
            .into_response();
    }
    s.ctl().faults.insert(r.action, r.fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(s): S) -> StatusCode {
    s.ctl().faults.clear();
    StatusCode::NO_CONTENT
}

#[derive(Serialize)]
struct ThrottleView {
    enabled: bool,
    buckets: BTreeMap<String, (f64, f64, f64)>,
}

async fn get_throttle(State(s): S) -> axum::Json<ThrottleView> {
    let ctl = s.ctl();
    axum::Json(ThrottleView {
        enabled: ctl.throttle.enabled,
        buckets: ctl
            .throttle
            .buckets
            .iter()
            .map(|(c, b)| {
                (
                    c.name().to_string(),
                    (b.capacity, b.refill_per_sec, b.tokens()),
                )
            })
            .collect(),
    })
}

async fn put_throttle(State(s): S, axum::Json(r): axum::Json<ThrottleReq>) -> Response {
    let mut ctl = s.ctl();
    if let Some(e) = r.enabled {
        ctl.throttle.enabled = e;
    }
    if let Some(c) = r.class {
        let (dc, dr) = c.default_limits();
        let (cap, rate) = (r.capacity.unwrap_or(dc), r.refill_per_sec.unwrap_or(dr));
        if cap < 0.0 || rate < 0.0 {
            return (StatusCode::BAD_REQUEST, "capacity and refill must be >= 0").into_response();
        }
        ctl.throttle.configure(c, cap, rate);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn get_timing(State(s): S) -> axum::Json<Timing> {
    axum::Json(s.sim().timing)
}

async fn put_timing(State(s): S, axum::Json(t): axum::Json<Timing>) -> StatusCode {
    s.sim().timing = t;
    StatusCode::NO_CONTENT
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct FabricView {
    /// Packets dropped by the source/destination check.
    pub src_dst_check_drops: u64,
}

async fn get_fabric(State(s): S) -> axum::Json<FabricView> {
    let drops = s
        .fabric_drops
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map_or(0, |f| f());
    axum::Json(FabricView {
        src_dst_check_drops: drops,
    })
}

#[derive(Serialize)]
struct StateView {
    vpc: String,
    subnets: BTreeMap<String, (String, String, u64)>,
    instances: BTreeMap<String, (String, String)>,
    enis: BTreeMap<String, (String, Vec<String>, Vec<String>)>,
    volumes: BTreeMap<String, (String, u32)>,
}

async fn get_state(State(s): S) -> axum::Json<StateView> {
    let sim = s.sim();
    axum::Json(StateView {
        vpc: sim.vpc.id.clone(),
        subnets: sim
            .subnets
            .values()
            .map(|x| {
                (
                    x.id.clone(),
                    (x.cidr.to_string(), x.az.clone(), x.available()),
                )
            })
            .collect(),
        instances: sim
            .instances
            .values()
            .map(|i| {
                (
                    i.id.clone(),
                    (i.instance_type.clone(), i.state.name().into()),
                )
            })
            .collect(),
        enis: sim
            .enis
            .values()
            .map(|e| {
                (
                    e.id.clone(),
                    (
                        e.status().into(),
                        e.private_ips.iter().map(|i| i.to_string()).collect(),
                        e.prefixes.iter().map(|p| p.to_string()).collect(),
                    ),
                )
            })
            .collect(),
        volumes: sim
            .volumes
            .values()
            .map(|v| (v.id.clone(), (v.state.name().into(), v.spec.size_gib)))
            .collect(),
    })
}

async fn post_tick(State(s): S) -> StatusCode {
    s.tick(Instant::now());
    StatusCode::NO_CONTENT
}
