//! ipamd: the node IP address manager.
//!
//! Owns: the node's ENIs and their addresses (datastore, warm pool, checkpoint), the host routing
//! and SNAT they need, and the gRPC service vpc-cni calls.
//!
//! Layout: a pure core — `datastore`, `pool`, `config`, `checkpoint`'s format, `snat::ruleset` —
//! that takes plain data and `now` and is tested with tables; and a thin shell at the edge —
//! `cloud` (EC2/IMDS), `hostnet` (netlink), `snat::apply` (nftables), `server` (gRPC),
//! `observe` (metrics, introspection) and `daemon`, which wires them together.
//!
//! Must not touch: pod network namespaces (vpc-cni's) or volumes (ebs-csi's). A pod's host rules
//! and `/32` route are vpc-cni's wiring; ipamd removes them on release through vpc-cni's own
//! `net::teardown_host`, so both agree on what they are.

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
