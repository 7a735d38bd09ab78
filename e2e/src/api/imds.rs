//! Per-instance instance metadata service (IMDSv2, optional v1), served from the instance's view
//! in the core (which lags EC2 state by the configured propagation delay).

use super::Shared;
use crate::sim::ImdsView;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    instance_id: String,
    tokens: Arc<Mutex<HashMap<String, Instant>>>,
}

pub fn router(shared: Arc<Shared>, instance_id: String) -> Router {
    Router::new().fallback(handler).with_state(Ctx {
        shared,
        instance_id,
        tokens: Default::default(),
    })
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body.into()).into_response()
}

async fn handler(State(ctx): State<Ctx>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    *ctx.shared
        .ctl()
        .stats
        .imds_calls
        .entry(ctx.instance_id.clone())
        .or_default() += 1;
    if path == "/latest/api/token" {
        if req.method() != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        if headers.contains_key("x-forwarded-for") {
            return text(StatusCode::FORBIDDEN, "Forbidden");
        }
        let ttl: Option<u64> = headers
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
            return text(
                StatusCode::BAD_REQUEST,
                "Bad Request: missing or invalid token TTL",
            );
        };
        let token: String = {
            let mut r = rand::rng();
            (0..56)
                .map(|_| {
                    char::from(
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                            [r.random_range(0..62)],
                    )
                })
                .collect()
        };
        let mut toks = ctx.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        toks.retain(|_, exp| *exp > now);
        toks.insert(token.clone(), now + Duration::from_secs(ttl));
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/plain".to_string()),
                (
                    TTL_HEADER.parse().expect("static header name"),
                    ttl.to_string(),
                ),
            ],
            token,
        )
            .into_response();
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    if !authorized(&ctx, &headers) {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let view = ctx.shared.sim().imds_at(&ctx.instance_id, Instant::now());
    let Some(view) = view else {
        return text(StatusCode::NOT_FOUND, "Not Found");
    };
    match lookup(&view, &path) {
        Some(body) => text(StatusCode::OK, body),
        None => text(StatusCode::NOT_FOUND, "Not Found"),
    }
}

fn authorized(ctx: &Ctx, headers: &HeaderMap) -> bool {
    match headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        Some(t) => ctx
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(t)
            .is_some_and(|exp| *exp > Instant::now()),
        None => ctx.shared.imds_v1,
    }
}

fn lines<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Resolves a metadata path against a view. Pure, so it is tested without HTTP.
pub fn lookup(v: &ImdsView, path: &str) -> Option<String> {
    if path == "/latest/dynamic/instance-identity/document" {
        return Some(
            serde_json::json!({
                "accountId": v.account_id, "architecture": "x86_64", "availabilityZone": v.az,
                "imageId": v.image_id, "instanceId": v.instance_id, "instanceType": v.instance_type,
                "pendingTime": "2026-01-01T00:00:00Z", "privateIp": v.local_ipv4.to_string(),
                "region": v.region, "version": "2017-09-30"
            })
            .to_string(),
        );
    }
    let rest = path.strip_prefix("/latest/meta-data")?;
    let rest = rest.trim_start_matches('/');
    let hostname = format!(
        "ip-{}.ec2.internal",
        v.local_ipv4.to_string().replace('.', "-")
    );
    let top = [
        "ami-id",
        "block-device-mapping/",
        "hostname",
        "instance-id",
        "instance-type",
        "local-hostname",
        "local-ipv4",
        "mac",
        "network/",
        "placement/",
        "security-groups",
        "services/",
    ];
    let r = match rest {
        "" => lines(top),
        "ami-id" => v.image_id.clone(),
        "instance-id" => v.instance_id.clone(),
        "instance-type" => v.instance_type.clone(),
        "local-ipv4" => v.local_ipv4.to_string(),
        "hostname" | "local-hostname" => hostname,
        "mac" => v.mac.clone(),
        "security-groups" => lines(&v.security_group_names),
        "placement" | "placement/" => {
            lines(["availability-zone", "availability-zone-id", "region"])
        }
        "placement/availability-zone" => v.az.clone(),
        "placement/availability-zone-id" => v.az_id.clone(),
        "placement/region" => v.region.clone(),
        "services" | "services/" => lines(["domain", "partition"]),
        "services/domain" => "amazonaws.com".into(),
        "services/partition" => "aws".into(),
        "block-device-mapping" | "block-device-mapping/" => {
            lines(v.block_devices.iter().map(|(k, _)| k))
        }
        "network" | "network/" => "interfaces/".into(),
        "network/interfaces" | "network/interfaces/" => "macs/".into(),
        "network/interfaces/macs" | "network/interfaces/macs/" => {
            lines(v.enis.iter().map(|e| format!("{}/", e.mac)))
        }
        _ => {
            if let Some(dev) = rest.strip_prefix("block-device-mapping/") {
                return v
                    .block_devices
                    .iter()
                    .find(|(k, _)| k == dev)
                    .map(|(_, d)| d.trim_start_matches("/dev/").to_string());
            }
            let mac_path = rest.strip_prefix("network/interfaces/macs/")?;
            let (mac, key) = mac_path.split_once('/').unwrap_or((mac_path, ""));
            let e = v.enis.iter().find(|e| e.mac == mac)?;
            match key {
                "" => {
                    let mut keys = vec![
                        "device-number",
                        "interface-id",
                        "local-hostname",
                        "local-ipv4s",
                        "mac",
                        "network-card",
                        "owner-id",
                        "security-group-ids",
                        "subnet-id",
                        "subnet-ipv4-cidr-block",
                        "vpc-id",
                        "vpc-ipv4-cidr-block",
                        "vpc-ipv4-cidr-blocks",
                    ];
                    if !e.ipv4_prefixes.is_empty() {
                        keys.push("ipv4-prefix");
                    }
                    keys.sort_unstable();
                    lines(keys)
                }
                "device-number" => e.device_number.to_string(),
                "network-card" => e.network_card.to_string(),
                "interface-id" => e.eni_id.clone(),
                "mac" => e.mac.clone(),
                "owner-id" => e.owner_id.clone(),
                "local-hostname" => format!(
                    "ip-{}.ec2.internal",
                    e.local_ipv4s[0].to_string().replace('.', "-")
                ),
                "local-ipv4s" => lines(&e.local_ipv4s),
                "ipv4-prefix" if !e.ipv4_prefixes.is_empty() => lines(&e.ipv4_prefixes),
                "subnet-id" => e.subnet_id.clone(),
                "subnet-ipv4-cidr-block" => e.subnet_cidr.to_string(),
                "vpc-id" => e.vpc_id.clone(),
                "vpc-ipv4-cidr-block" => e
                    .vpc_cidrs
                    .first()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                "vpc-ipv4-cidr-blocks" => lines(&e.vpc_cidrs),
                "security-group-ids" => lines(&e.security_group_ids),
                _ => return None,
            }
        }
    };
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::net::Assign;
    use crate::sim::{Sim, SimConfig, Timing, net::RunInstance};

    #[test]
    fn paths() {
        let now = Instant::now();
        let mut s = Sim::new(SimConfig {
            timing: Timing::zero(),
            ..SimConfig::default()
        });
        let i = s
            .run_instance(
                now,
                RunInstance {
                    instance_type: "m5.large".into(),
                    ..Default::default()
                },
            )
            .expect("launch");
        let eni = s.instance(&i).expect("i").primary_eni.clone();
        s.assign_private_ips(
            now,
            Assign {
                eni_id: eni.clone(),
                prefix_count: 1,
                ..Default::default()
            },
        )
        .expect("prefix");
        let v = s.imds_at(&i, now).expect("view");
        let mac = v.mac.clone();
        assert_eq!(
            lookup(&v, "/latest/meta-data/instance-id").as_deref(),
            Some(i.as_str())
        );
        assert_eq!(
            lookup(&v, "/latest/meta-data/network/interfaces/macs/"),
            Some(format!("{mac}/"))
        );
        let base = format!("/latest/meta-data/network/interfaces/macs/{mac}");
        assert_eq!(
            lookup(&v, &format!("{base}/device-number")).as_deref(),
            Some("0")
        );
        assert_eq!(lookup(&v, &format!("{base}/interface-id")), Some(eni));
        assert_eq!(
            lookup(&v, &format!("{base}/local-ipv4s")),
            Some(v.local_ipv4.to_string())
        );
        assert_eq!(
            lookup(&v, &format!("{base}/ipv4-prefix")),
            Some(v.enis[0].ipv4_prefixes[0].to_string())
        );
        assert_eq!(
            lookup(&v, &format!("{base}/subnet-ipv4-cidr-block")).as_deref(),
            Some("10.90.0.0/20")
        );
        assert!(lookup(&v, &format!("{base}/bogus")).is_none());
        assert!(
            lookup(
                &v,
                "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:00/"
            )
            .is_none()
        );
        assert_eq!(
            lookup(&v, "/latest/meta-data/block-device-mapping/root").as_deref(),
            Some("xvda")
        );
        let doc: serde_json::Value = serde_json::from_str(
            &lookup(&v, "/latest/dynamic/instance-identity/document").expect("doc"),
        )
        .expect("json");
        assert_eq!(doc["region"], "us-east-1");
    }
}
