//! icmpv6 (to be written)
