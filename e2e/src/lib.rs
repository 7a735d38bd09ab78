//! vpcsim: a simulated VPC to run nodewire against on one machine.
//!
//! Owns: the EC2 Query API emulator (`sim` is its pure state machine, `api` the HTTP shell), the
//! per-instance IMDS, the admin/fault-injection endpoint, and the node side of a simulation:
//! network namespaces, the VPC fabric, hot-plugged ENI links and loop-device volumes.
//!
//! Must not touch: anything outside the namespaces, links, loop devices and files it created
//! itself (all recorded under its state directory so `vpcsim down` can remove them), and no
//! traffic leaves the namespaces it made. nodewire's daemons must not depend on this crate.

pub mod api;
pub mod client;
pub mod iam;
pub mod node;
pub mod sim;

/// The directory of the package whose tests are running, read when they run: a test binary
/// built from another checkout sharing the same `CARGO_TARGET_DIR` (CI's clean clone) is reused
/// by cargo as is, so a path baked in with `env!` would point into that checkout.
pub fn package_dir(compiled_in: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(compiled_in))
}
