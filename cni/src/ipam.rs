//! The ipamd client: gRPC (nodewire.ipam.v1) over ipamd's unix socket, and the mapping of its
//! answers onto CNI error codes.

use crate::spec::{CniError, Code};
use nodewire_proto::IPAM_PROTOCOL_VERSION;
use nodewire_proto::ipam::ipam_client::IpamClient;
use nodewire_proto::ipam::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// STATUS is polled by runtimes and the installer; it must answer fast or count as not ready.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Ipamd {
    c: IpamClient<Channel>,
    path: PathBuf,
}

/// Why ipamd could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("ipamd is unreachable at {path}: {reason}")]
pub struct Unreachable {
    pub path: String,
    pub reason: String,
}

impl From<Unreachable> for CniError {
    fn from(u: Unreachable) -> CniError {
        CniError::new(Code::TryAgain, u.to_string())
            .details("is the nodewire ipamd DaemonSet pod running on this node? retry later")
    }
}

/// An HTTP/2 channel over ipamd's unix socket, connected within `timeout` (also what ipamd's
/// own health probe uses).
pub async fn channel(path: &Path, timeout: Duration) -> Result<Channel, Unreachable> {
    let p = path.to_path_buf();
    let unreachable = |reason: String| Unreachable {
        path: path.display().to_string(),
        reason,
    };
    let ep = Endpoint::from_static("http://ipamd.local")
        .connect_timeout(timeout)
        .timeout(Duration::from_secs(60));
    let connect = ep.connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
        let p = p.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(p).await?,
            ))
        }
    }));
    let ch = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => {
            use std::error::Error;
            let mut reason = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                reason = format!("{reason}: {s}");
                src = s.source();
            }
            return Err(unreachable(reason));
        }
        Err(_) => return Err(unreachable(format!("no answer within {timeout:?}"))),
    };
    Ok(ch)
}

impl Ipamd {
    /// Connects (HTTP/2 over the unix socket) within `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Ipamd, Unreachable> {
        let ch = channel(path, timeout).await?;
        Ok(Ipamd {
            c: IpamClient::new(ch),
            path: path.to_path_buf(),
        })
    }

    fn err(&self, op: &str, s: tonic::Status) -> CniError {
        use tonic::Code as G;
        let msg = s.message();
        match s.code() {
            G::Unavailable if is_transport(&s) => Unreachable {
                path: self.path.display().to_string(),
                reason: msg.to_string(),
            }
            .into(),
            G::Unavailable | G::DeadlineExceeded => CniError::new(
                Code::TryAgain,
                format!("ipamd has no free address yet: {msg}"),
            )
            .details("the warm pool is growing; the runtime retries the pod"),
            G::ResourceExhausted => CniError::new(
                Code::NoAddress,
                format!("no address for this pod on this node: {msg}"),
            ),
            G::FailedPrecondition => {
                CniError::new(Code::Ipamd, format!("ipamd refused {op}: {msg}"))
            }
            _ => CniError::new(
                Code::Ipamd,
                format!("ipamd {op} failed ({:?}): {msg}", s.code()),
            ),
        }
    }

    pub async fn add(&mut self, r: AddRequest) -> Result<AddReply, CniError> {
        let r = AddRequest {
            client_version: IPAM_PROTOCOL_VERSION,
            ..r
        };
        match self.c.add(r).await {
            Ok(a) => Ok(a.into_inner()),
            Err(s) => Err(self.err("the address", s)),
        }
    }

    /// DEL; `Err` carries the gRPC status so the caller can fall back to local teardown.
    pub async fn del(&mut self, r: DelRequest) -> Result<DelReply, tonic::Status> {
        let r = DelRequest {
            client_version: IPAM_PROTOCOL_VERSION,
            ..r
        };
        self.c.del(r).await.map(|r| r.into_inner())
    }

    /// CHECK: Ok(route table) when ipamd holds `ipv4` for the key.
    pub async fn check(&mut self, key: AttachmentKey, ipv4: String) -> Result<u32, CniError> {
        let r = CheckRequest {
            key: Some(key),
            ipv4,
            client_version: IPAM_PROTOCOL_VERSION,
        };
        match self.c.check(r).await {
            Ok(r) => Ok(r.into_inner().route_table),
            // NotFound: the key holds nothing, or another address (FailedPrecondition is
            // ipamd refusing this client's protocol version, not drift).
            Err(s) if s.code() == tonic::Code::NotFound => Err(CniError::new(
                Code::Drift,
                format!("ipamd: {}", s.message()),
            )),
            Err(s) => Err(self.err("the check", s)),
        }
    }

    pub async fn gc(
        &mut self,
        network: String,
        valid: Vec<AttachmentKey>,
    ) -> Result<GcReply, CniError> {
        let r = GcRequest {
            network_name: network,
            valid,
            client_version: IPAM_PROTOCOL_VERSION,
        };
        match self.c.gc(r).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.err("garbage collection", s)),
        }
    }

    pub async fn status(&mut self) -> Result<StatusReply, CniError> {
        let r = StatusRequest {
            client_version: IPAM_PROTOCOL_VERSION,
        };
        // An ipamd that cannot answer this quickly is not ready to serve pods.
        match tokio::time::timeout(STATUS_TIMEOUT, self.c.status(r)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.err("the status query", s)),
            Err(_) => Err(CniError::new(
                Code::NotAvailable,
                format!(
                    "ipamd at {} did not answer STATUS within {STATUS_TIMEOUT:?}",
                    self.path.display()
                ),
            )),
        }
    }
}

/// A status made by the transport (the connection broke), not by ipamd.
pub fn is_transport(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable && s.metadata().is_empty() && {
        let m = s.message();
        m.contains("transport") || m.contains("connect") || m.contains("broken pipe")
    }
}
