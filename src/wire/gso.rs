//! gso (to be written)
