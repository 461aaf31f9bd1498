//! vxlan (to be written)
