//! ipamd's library: the pure core of the node IP address manager.
//!
//! Owns: the datastore (ENIs → CIDRs → addresses, assignment by CNI key, cooldowns), the
//! warm-pool policy, the checkpoint format and its atomic file, and configuration from upstream's
//! environment variables.
//!
//! Must not touch: EC2, IMDS, netlink or the clock directly — the daemon's shell calls those and
//! passes plain data (and `now`) in. Pod network namespaces belong to vpc-cni.

pub mod checkpoint;
pub mod cloud;
pub mod config;
pub mod daemon;
pub mod datastore;
pub mod hostnet;
pub mod observe;
pub mod pool;
pub mod server;
pub mod snat;
