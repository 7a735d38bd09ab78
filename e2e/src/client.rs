//! A small client for the admin endpoint, used by `vpcsim ctl` and the tests.

use crate::api::{Fault, FaultReq, Stats, ThrottleReq};
use crate::sim::Timing;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("admin request {0} failed: {1}")]
    Transport(String, String),
    #[error("admin request {0} answered {1}: {2}")]
    Status(String, u16, String),
    #[error("bad admin reply: {0}")]
    Decode(#[from] serde_json::Error),
}

#[derive(Clone)]
pub struct Admin {
    base: String,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Admin {
    pub fn new(base: &str) -> Admin {
        Admin {
            base: base.trim_end_matches('/').to_string(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request; returns the body text.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<String, Error> {
        let url = format!("{}{path}", self.base);
        let req = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Transport(url.clone(), e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| Error::Transport(url.clone(), e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Transport(url.clone(), e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        if status >= 300 {
            return Err(Error::Status(url, status, text));
        }
        Ok(text)
    }

    pub async fn stats(&self) -> Result<Stats, Error> {
        Ok(serde_json::from_str(
            &self.call("GET", "/admin/stats", None).await?,
        )?)
    }

    pub async fn reset_stats(&self) -> Result<(), Error> {
        self.call("DELETE", "/admin/stats", None).await.map(drop)
    }

    pub async fn set_fault(&self, action: &str, fault: Fault) -> Result<(), Error> {
        let body = serde_json::to_string(&FaultReq {
            action: action.into(),
            fault,
        })?;
        self.call("PUT", "/admin/faults", Some(body))
            .await
            .map(drop)
    }

    pub async fn clear_faults(&self) -> Result<(), Error> {
        self.call("DELETE", "/admin/faults", None).await.map(drop)
    }

    pub async fn throttle(&self, req: ThrottleReq) -> Result<(), Error> {
        self.call("PUT", "/admin/throttle", Some(serde_json::to_string(&req)?))
            .await
            .map(drop)
    }

    pub async fn timing(&self) -> Result<Timing, Error> {
        Ok(serde_json::from_str(
            &self.call("GET", "/admin/timing", None).await?,
        )?)
    }

    pub async fn set_timing(&self, t: Timing) -> Result<(), Error> {
        self.call("PUT", "/admin/timing", Some(serde_json::to_string(&t)?))
            .await
            .map(drop)
    }

    pub async fn fabric_drops(&self) -> Result<u64, Error> {
        let v: crate::api::FabricView =
            serde_json::from_str(&self.call("GET", "/admin/fabric", None).await?)?;
        Ok(v.src_dst_check_drops)
    }
}
