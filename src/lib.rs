//! Switchyard: a rootless, high-performance userspace virtual switch for
//! containers.
//!
//! Layers (a module's path says its layer): [`wire`] parses and builds bytes;
//! [`pipeline`] decides what happens to frames, in batches, on worker
//! threads; [`tables`] holds what the pipeline reads per packet; [`ports`]
//! moves frames in and out; [`dataplane`] is the control plane's handle on all
//! of it; [`dns`] holds the gateway's DNS records, responder and forwarder;
//! [`gateway`] runs the userspace TCP/IP stack behind the gateway address;
//! [`ns`] reaches into sandboxes' namespaces; [`sys`] holds the system calls
//! that need `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod clock;
pub mod control;
pub mod dataplane;
pub mod dns;
pub mod gateway;
pub mod ns;
pub mod pipeline;
pub mod ports;
pub mod stats;
pub mod sys;
pub mod tables;
pub mod wire;

/// Internal entry points run instead of the CLI when the binary is re-executed
/// as a helper (`switchyard __attach ...`). Returns the exit code if `args`
/// named one; `None` lets the CLI run.
pub fn internal_entry(args: &[String]) -> Option<i32> {
    match args.get(1).map(String::as_str) {
        Some(ns::ATTACH_VERB) => Some(ns::attach::attach_helper_main()),
        Some(ns::SANDBOX_VERB) => Some(ns::sandbox::sandbox_helper_main(&args[2..])),
        _ => None,
    }
}
