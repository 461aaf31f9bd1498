//! udp (to be written)
