//! The packet pipeline: frames move in batches through stages, each a plain
//! function over the batch that only sets each frame's [`frame::Action`];
//! the worker then sends the batch out grouped by output port.
//!
//! Standard order: `decap -> parse -> ingress -> learn -> [dns -> nat] -> gateway -> overlay -> forward`, then the
//! worker's dispatch (flood expansion, cross-worker hand-off, offload
//! adaptation, tx). A new stage is added with [`Pipeline::insert_before`]
//! without touching the others.

pub mod busy_poll;
pub mod capture;
pub mod decap;
pub mod dns;
pub mod drop;
pub mod forward;
pub mod frame;
pub mod gateway;
pub mod ingress;
pub mod inject;
pub mod learn;
pub mod nat;
pub mod ndp;
pub mod offload;
pub mod overlay;
pub mod parse;
pub mod pool;
pub mod punt;
pub mod stage;
pub mod trace;
pub mod worker;

pub use stage::{Pipeline, Stage, StageContext};

/// Most frames a port read or a stage pass handles at once.
pub const BATCH_SIZE: usize = 64;
