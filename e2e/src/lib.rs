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
pub mod node;
pub mod sim;
