//! The gateway's userspace TCP/IP stack (smoltcp): terminates connections to
//! the gateway address that the data plane punts to it. Today it serves DNS
//! over TCP; the same thread is where outbound NAT and published ports plug
//! in.

pub mod device;
pub mod dns_tcp;
pub mod stack;
