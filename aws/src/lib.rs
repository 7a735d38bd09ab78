//! Shared AWS plumbing for nodewire's daemons.
//!
//! Owns: construction of the EC2 client (endpoint, region, retries from the standard SDK
//! configuration), the IMDSv2 client, application-level retry/backoff policy, and the built-in
//! instance-type limits table used when `DescribeInstanceTypes` is unavailable.
//!
//! Must not touch: the kernel (netlink, mounts, block devices) or any node-local state. This is the
//! only crate that links `aws-sdk-ec2`; the CNI plugin must never depend on it.

pub mod ec2;
pub mod imds;
pub mod limits;
pub mod retry;
pub mod time;

pub use aws_sdk_ec2;
