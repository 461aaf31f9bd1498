//! System calls that need `unsafe`: the only place in the crate where it is
//! allowed. Every block says why it is sound.
#![allow(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod fd;
