//! Embedded DNS: the switch's own resolver for container names, and the
//! forwarder that sends every other name to the host's upstream servers.

pub mod forward;
pub mod upstream;
