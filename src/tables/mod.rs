//! Tables the data plane reads on every packet: the MAC learning table (one
//! per worker, kept in sync by learn messages) and the topology (ports and
//! networks), published by the control plane as immutable snapshots.

pub mod mac;
pub mod overlay;
pub mod topology;
