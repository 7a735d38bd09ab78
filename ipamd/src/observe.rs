//! Observability: Prometheus metrics on `:61678/metrics` under upstream's names (plus ours), and
//! the localhost introspection API (`/v1/enis`, `/v1/pods`, `/v1/config`). Container ids are
//! never shown: they are the keys that can release an address.

use crate::cloud::{Cloud, SdkCloud};
use crate::daemon::Ipamd;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters the daemon bumps on its hot paths (cheap atomics; rendered at scrape time).
#[derive(Default)]
pub struct Counters {
    pub add: AtomicU64,
    pub no_available: AtomicU64,
    /// DEL requests by reason.
    pub del: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn del(&self, reason: &'static str) {
        *self
            .del
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// Something that can report EC2 calls by action: (calls, errors).
pub trait CallStats {
    fn calls(&self) -> Vec<(&'static str, u64, u64)>;
}

impl CallStats for SdkCloud {
    fn calls(&self) -> Vec<(&'static str, u64, u64)> {
        self.calls
            .snapshot()
            .into_iter()
            .map(|(k, (c, e))| (k, c, e))
            .collect()
    }
}

/// Renders the metrics text exposition. Names are upstream's (counters without a `_total`
/// suffix, as aws-node exports them) so dashboards keep working.
pub async fn render<C: Cloud + CallStats>(d: &Ipamd<C>) -> String {
    let reg = Registry::new();
    let s = d.stats().await;
    let l = &d.limits;
    let gauges: [(&str, &str, i64); 8] = [
        (
            "awscni_total_ip_addresses",
            "Addresses in the pool",
            s.total as i64,
        ),
        (
            "awscni_assigned_ip_addresses",
            "Addresses assigned to pods",
            s.assigned as i64,
        ),
        (
            "awscni_eni_allocated",
            "ENIs in use by ipamd",
            s.enis as i64,
        ),
        ("awscni_eni_max", "ENIs ipamd may use", l.max_enis as i64),
        (
            "awscni_ip_max",
            "Addresses the node could hold",
            (l.max_enis * l.slots_per_eni * l.per_slot) as i64,
        ),
        (
            "awscni_total_ipv4_prefixes",
            "Delegated /28 prefixes in the pool",
            s.prefixes as i64,
        ),
        (
            "nodewire_cooldown_ip_addresses",
            "Released addresses still cooling down",
            s.cooling as i64,
        ),
        (
            "nodewire_available_ip_addresses",
            "Addresses an ADD can get now",
            s.available as i64,
        ),
    ];
    for (name, help, v) in gauges {
        if let Ok(g) = IntGauge::new(name, help) {
            g.set(v);
            let _ = reg.register(Box::new(g));
        }
    }
    let counter = |name: &str, help: &str, labels: &[&str]| {
        IntCounterVec::new(Opts::new(name, help), labels).ok()
    };
    if let (Some(req), Some(err)) = (
        counter(
            "awscni_ec2api_req_count",
            "EC2 API calls by action",
            &["fn"],
        ),
        counter(
            "awscni_ec2api_error_count",
            "EC2 API errors by action",
            &["fn"],
        ),
    ) {
        for (action, calls, errors) in d.cloud.calls() {
            req.with_label_values(&[action]).inc_by(calls);
            err.with_label_values(&[action]).inc_by(errors);
        }
        let _ = reg.register(Box::new(req));
        let _ = reg.register(Box::new(err));
    }
    for (name, help, v) in [
        (
            "awscni_add_ip_req_count",
            "ADD requests",
            d.counters.add.load(Ordering::Relaxed),
        ),
        (
            "awscni_no_available_ip_addresses",
            "ADDs that found no free address",
            d.counters.no_available.load(Ordering::Relaxed),
        ),
    ] {
        if let Ok(c) = prometheus::IntCounter::new(name, help) {
            c.inc_by(v);
            let _ = reg.register(Box::new(c));
        }
    }
    if let Some(del) = counter(
        "awscni_del_ip_req_count",
        "DEL requests by reason",
        &["reason"],
    ) {
        for (reason, n) in d
            .counters
            .del
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            del.with_label_values(&[reason]).inc_by(*n);
        }
        let _ = reg.register(Box::new(del));
    }
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&reg.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

#[derive(Serialize)]
struct AddressView {
    ip: String,
    /// `namespace/name` of the pod holding it.
    pod: Option<String>,
    cooling_since_ms: Option<u64>,
}

#[derive(Serialize)]
struct CidrView {
    cidr: String,
    prefix: bool,
    addresses: Vec<AddressView>,
}

#[derive(Serialize)]
struct EniView {
    id: String,
    device_number: u32,
    primary: bool,
    primary_ip: String,
    route_table: u32,
    subnet_id: String,
    cidrs: Vec<CidrView>,
}

/// The introspection API (bind it to localhost only).
pub fn introspection<C: Cloud + CallStats>(d: Arc<Ipamd<C>>) -> Router {
    Router::new()
        .route("/v1/enis", get(enis::<C>))
        .route("/v1/pods", get(pods::<C>))
        .route("/v1/config", get(config::<C>))
        .fallback(|| async {
            axum::Json(
                serde_json::json!({"AvailableCommands": ["/v1/enis", "/v1/pods", "/v1/config"]}),
            )
        })
        .with_state(d)
}

/// `/metrics` for Prometheus.
pub fn metrics_router<C: Cloud + CallStats>(d: Arc<Ipamd<C>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<C>))
        .with_state(d)
}

async fn metrics<C: Cloud + CallStats>(State(d): State<Arc<Ipamd<C>>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&d).await,
    )
}

async fn enis<C: Cloud + CallStats>(State(d): State<Arc<Ipamd<C>>>) -> impl IntoResponse {
    let ds = d.datastore().await;
    let view: Vec<EniView> = ds
        .enis
        .values()
        .map(|e| EniView {
            id: e.id.clone(),
            device_number: e.device_number,
            primary: e.primary,
            primary_ip: e.primary_ip.to_string(),
            route_table: e.route_table,
            subnet_id: e.subnet_id.clone(),
            cidrs: e
                .cidrs
                .values()
                .map(|c| CidrView {
                    cidr: c.net.to_string(),
                    prefix: c.kind == crate::datastore::CidrKind::Prefix,
                    addresses: c
                        .slots
                        .iter()
                        .map(|(ip, s)| match s {
                            crate::datastore::Slot::Assigned { meta, .. } => AddressView {
                                ip: ip.to_string(),
                                pod: Some(format!("{}/{}", meta.namespace, meta.name)),
                                cooling_since_ms: None,
                            },
                            crate::datastore::Slot::Cooling { since_ms } => AddressView {
                                ip: ip.to_string(),
                                pod: None,
                                cooling_since_ms: Some(*since_ms),
                            },
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    axum::Json(view)
}

async fn pods<C: Cloud + CallStats>(State(d): State<Arc<Ipamd<C>>>) -> impl IntoResponse {
    let ds = d.datastore().await;
    let v: Vec<serde_json::Value> = ds
        .allocations()
        .into_iter()
        .map(|(_, meta, ip, since)| {
            serde_json::json!({"namespace": meta.namespace, "name": meta.name, "ip": ip.to_string(), "assigned_at_ms": since})
        })
        .collect();
    axum::Json(v)
}

async fn config<C: Cloud + CallStats>(State(d): State<Arc<Ipamd<C>>>) -> impl IntoResponse {
    let c = &d.cfg;
    axum::Json(serde_json::json!({
        "WARM_ENI_TARGET": c.warm_eni_target,
        "WARM_IP_TARGET": c.warm_ip_target,
        "MINIMUM_IP_TARGET": c.minimum_ip_target,
        "WARM_PREFIX_TARGET": c.warm_prefix_target,
        "ENABLE_PREFIX_DELEGATION": c.prefix_delegation,
        "MAX_ENI": c.max_eni,
        "IP_COOLDOWN_PERIOD": c.ip_cooldown.as_secs(),
        "AWS_VPC_ENI_MTU": c.eni_mtu,
        "AWS_VPC_K8S_CNI_EXTERNALSNAT": c.external_snat,
        "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": c.exclude_snat_cidrs.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "AWS_VPC_K8S_CNI_CONNMARK": c.connmark,
        "AWS_VPC_K8S_CNI_VETHPREFIX": c.veth_prefix,
        "MANAGE_UNTAGGED_ENI": c.manage_untagged_eni,
        "target": format!("{:?}", d.target),
        "limits": {"max_enis": d.limits.max_enis, "slots_per_eni": d.limits.slots_per_eni,
                   "addresses_per_slot": d.limits.per_slot, "max_pods": d.limits.max_pods},
    }))
}
