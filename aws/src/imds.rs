//! IMDSv2 client: a thin wrapper over the SDK's IMDS client that turns "404" into `None`.

use aws_config::imds::client::{Client, error::ImdsError};
use std::time::Duration;

/// Errors from instance metadata.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid IMDS endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("IMDS request for {path:?} failed: {source}")]
    Request {
        path: String,
        #[source]
        source: Box<ImdsError>,
    },
}

/// An IMDSv2 client (token fetched and refreshed by the SDK).
#[derive(Debug, Clone)]
pub struct Imds {
    client: Client,
}

impl Imds {
    /// `endpoint` defaults to the SDK's (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, else
    /// `http://169.254.169.254`).
    pub fn new(endpoint: Option<&str>) -> Result<Self, Error> {
        let mut b = Client::builder()
            .max_attempts(4)
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2));
        if let Some(e) = endpoint {
            b = b.endpoint(e).map_err(|err| Error::Endpoint {
                endpoint: e.to_string(),
                reason: err.to_string(),
            })?;
        }
        Ok(Imds { client: b.build() })
    }

    /// GETs a metadata path (relative to `/latest/meta-data/` when it does not start with `/`).
    /// A 404 is `Ok(None)`.
    pub async fn get(&self, path: &str) -> Result<Option<String>, Error> {
        let full = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/latest/meta-data/{path}")
        };
        // A connection reset or closed under a request is retried at once (twice), and a
        // request that timed out once more: the SDK retries only 5xx and 401, so that a
        // credentials chain off EC2 fails fast, but ipamd and the CSI node plugin cannot start
        // without IMDS, and one stalled answer during a node's start must not stop them (seen in
        // vpcsim while ipamd set up the same node). A refused connection still fails at once.
        let (mut resets, mut timeouts) = (0, 0);
        loop {
            match self.client.get(full.clone()).await {
                Ok(v) => return Ok(Some(v.into())),
                Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => {
                    return Ok(None);
                }
                Err(e) if resets < 2 && connection_dropped(&e) => {
                    resets += 1;
                    tracing::debug!(path = %full, error = %e, "IMDS connection dropped; retrying");
                }
                Err(e) if timeouts < 1 && timed_out(&e) => {
                    timeouts += 1;
                    tracing::warn!(path = %full, error = %e, "IMDS did not answer in time; retrying");
                }
                Err(source) => {
                    return Err(Error::Request {
                        path: full,
                        source: Box::new(source),
                    });
                }
            }
        }
    }

    /// GETs a listing and splits it into lines (trailing `/` of sub-listings kept).
    pub async fn list(&self, path: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .get(path)
            .await?
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Did the request fail because the connection was reset or closed under it (somewhere in the
/// error's source chain)?
fn connection_dropped(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Did the request time out (a connect or read timeout somewhere in the error's source chain)?
/// The SDK keeps its connector error for the token request, but unwraps it for a metadata GET,
/// where only the timeout itself remains in the chain.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    use aws_smithy_async::future::timeout::TimedOutError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<ConnectorError>()
            .is_some_and(ConnectorError::is_timeout)
            || err.is::<TimedOutError>()
            || err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Reads one request's head (no bodies here) and returns its first line.
    fn request_line(s: &mut std::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => buf.push(b[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Answers a token PUT with a token, anything else with an instance id.
    fn answer(s: &mut std::net::TcpStream, line: &str) {
        let body = if line.starts_with("PUT /latest/api/token") {
            "token-abc"
        } else {
            "i-0123456789abcdef0"
        };
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    #[tokio::test]
    async fn a_reset_connection_is_retried() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (n, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { break };
                if n == 0 {
                    // Wait for the request, then close with it unread: the kernel answers RST.
                    let _ = s.peek(&mut [0u8; 1]);
                    drop(s);
                    seen.push("reset".to_string());
                    continue;
                }
                let line = request_line(&mut s);
                answer(&mut s, &line);
                seen.push(line);
                if seen.len() == 3 {
                    break;
                }
            }
            seen
        });
        let imds = Imds::new(Some(&format!("http://127.0.0.1:{port}"))).expect("client");
        let got = imds
            .get("instance-id")
            .await
            .expect("retried past the reset");
        assert_eq!(got.as_deref(), Some("i-0123456789abcdef0"));
        let seen = server.join().expect("server");
        assert_eq!(seen[0], "reset");
        assert!(seen[1].starts_with("PUT /latest/api/token"), "{seen:?}");
        assert!(
            seen[2].starts_with("GET /latest/meta-data/instance-id"),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_token_request_that_times_out_is_retried_once() {
        stalled_request_is_retried(0).await;
    }

    #[tokio::test]
    async fn a_metadata_request_that_times_out_is_retried_once() {
        stalled_request_is_retried(1).await;
    }

    /// The server reads the `stall`-th request (0: the token PUT, 1: the metadata GET) and never
    /// answers it; the client must retry and get the instance id.
    async fn stalled_request_is_retried(stall: usize) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut held = Vec::new();
            for (n, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { break };
                if stop_rx.try_recv().is_ok() {
                    // The client is done (and woke this accept): a failed run ends here.
                    return seen;
                }
                let line = request_line(&mut s);
                if n == stall {
                    // Read the request and never answer (the client's read timeout fires).
                    held.push(s);
                    seen.push(format!("stalled {line}"));
                    continue;
                }
                answer(&mut s, &line);
                seen.push(line);
                if seen.len() == 3 {
                    break;
                }
            }
            // The stalled connection stays open until the client is done.
            let _ = stop_rx.recv();
            drop(held);
            seen
        });
        let imds = Imds::new(Some(&format!("http://127.0.0.1:{port}"))).expect("client");
        let got = imds.get("instance-id").await;
        let _ = stop_tx.send(());
        // Wakes the server if it still waits for a connection (a client that gave up).
        let _ = std::net::TcpStream::connect(("127.0.0.1", port));
        let seen = server.join().expect("server");
        assert_eq!(
            got.expect("retried past the stall").as_deref(),
            Some("i-0123456789abcdef0")
        );
        let want: &[&str] = if stall == 0 {
            &[
                "stalled PUT /latest/api/token",
                "PUT /latest/api/token",
                "GET /latest/meta-data/instance-id",
            ]
        } else {
            &[
                "PUT /latest/api/token",
                "stalled GET /latest/meta-data/instance-id",
                "GET /latest/meta-data/instance-id",
            ]
        };
        assert_eq!(seen.len(), want.len(), "{seen:?}");
        for (s, w) in seen.iter().zip(want) {
            assert!(s.starts_with(w), "{seen:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_fails_fast() {
        // A port nobody listens on (bound, then released).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let imds = Imds::new(Some(&format!("http://127.0.0.1:{port}"))).expect("client");
        let t = std::time::Instant::now();
        assert!(imds.get("instance-id").await.is_err());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
