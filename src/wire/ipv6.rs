//! ipv6 (to be written)
