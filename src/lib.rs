//! Switchyard: a rootless userspace virtual switch for containers.
pub mod wire;
