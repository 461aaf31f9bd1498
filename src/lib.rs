//! Switchyard: a rootless, high-performance userspace virtual switch for
//! containers.
//!
//! Layers (a module's path says its layer): [`wire`] parses and builds bytes;
//! [`pipeline`] decides what happens to frames, in batches, on worker
//! threads; [`tables`] holds what the pipeline reads per packet; [`ports`]
//! moves frames in and out; [`dataplane`] is the control plane's handle on all
//! of it; [`ns`] reaches into sandboxes' namespaces; [`sys`] holds the
//! system calls that need `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod dataplane;
pub mod ns;
pub mod pipeline;
pub mod ports;
pub mod stats;
pub mod sys;
pub mod tables;
pub mod wire;
