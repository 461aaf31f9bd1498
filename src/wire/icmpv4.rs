//! icmpv4 (to be written)
