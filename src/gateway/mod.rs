//! The gateway's userspace TCP/IP stack (smoltcp): terminates connections to
//! the gateway address that the data plane punts to it (DNS over TCP) and
//! carries sandboxes' TCP and UDP flows to the outside over host sockets
//! (outbound NAT), with its own flow table in front of smoltcp.

pub mod claim;
pub mod device;
pub mod dns_reply;
pub mod dns_tcp;
pub mod flow;
pub mod icmp_nat;
pub mod nat;
pub mod neighbours;
pub mod publish;
pub mod splice;
pub mod stack;
pub mod tcp_nat;
pub mod udp_nat;
