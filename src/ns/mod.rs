//! Namespaces: sandboxes for `run`/`up`, and attaching TAP devices inside a
//! sandbox's network namespace.

pub mod sandbox;
