//! tcp (to be written)
