//! EC2 client construction.
//!
//! Production: the standard SDK configuration chain (`AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL`,
//! credentials from the environment, profile, web identity or the instance role), region from
//! the caller (ipamd reads it from IMDS). Tests and vpcsim users: [`client_for_endpoint`].

use aws_config::{BehaviorVersion, Region, retry::RetryConfig};
use aws_sdk_ec2::config::Credentials;

/// Builds an EC2 client from the standard SDK configuration.
///
/// `region` overrides the configured region (ipamd passes the one IMDS reports).
pub async fn client_from_env(region: Option<String>) -> aws_sdk_ec2::Client {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).retry_config(RetryConfig::standard());
    if let Some(r) = region {
        loader = loader.region(Region::new(r));
    }
    let conf = loader.load().await;
    aws_sdk_ec2::Client::new(&conf)
}

/// Builds an EC2 client for an explicit endpoint with static credentials (vpcsim, moto, tests).
///
/// `max_attempts` 1 disables the SDK's own retries so callers see every error as EC2 sent it.
pub fn client_for_endpoint(endpoint: &str, region: &str, max_attempts: u32) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "nodewire", "nodewire", None, None, "static",
        ))
        .retry_config(RetryConfig::standard().with_max_attempts(max_attempts.max(1)))
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}
