//! The control plane (slow path): the network/endpoint model, IPAM,
//! persistence, the daemon that applies changes to the data plane, and the
//! JSON API over a Unix socket with its server and client. It decides and
//! publishes tables; it never touches a packet.

pub mod api;
pub mod attach;
pub mod attach_fake;
pub mod capture;
pub mod client;
pub mod cluster;
pub mod daemon;
pub mod error;
pub mod ipam;
pub mod metrics;
pub mod model;
pub mod net;
pub mod paths;
pub mod publication_pattern;
pub mod server;
pub mod store;
pub mod trace;

/// Largest MAC-learning cap a network may ask for (`mac_cap`): 16 Mi
/// entries, about 400 MiB of table per worker at most.
pub const MAX_MAC_CAP: usize = 1 << 24;
