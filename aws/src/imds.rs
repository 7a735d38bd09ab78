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
        match self.client.get(full.clone()).await {
            Ok(v) => Ok(Some(v.into())),
            Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => Ok(None),
            Err(source) => Err(Error::Request {
                path: full,
                source: Box::new(source),
            }),
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
