//! ICMP and ICMPv6 echo through the gateway: each sandbox echo flow (address
//! and echo identifier, per destination) gets an unprivileged ping socket
//! (`SOCK_DGRAM`/`IPPROTO_ICMP` or `IPPROTO_ICMPV6`, allowed for groups in
//! `net.ipv4.ping_group_range`, which governs both); the kernel picks the
//! identifier on the wire, and replies are given back the sandbox's own.
//! Where ping sockets are not allowed the flow is refused and counted.

use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::net::UdpSocket;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};

use crate::ports::PortId;
use crate::wire::udp_frame::{self, IP6_HEADERS_LEN, IP_HEADERS_LEN};
use crate::wire::{icmpv4, icmpv6};
use crate::wire::{IpProtocol, MacAddr};

/// Idle timeout of an echo flow (ms).
pub const IDLE_MS: i64 = 30_000;

/// An echo flow.
pub struct IcmpFlow {
    /// The ping socket, connected to the destination.
    pub host: UdpSocket,
    /// The sandbox's echo identifier.
    pub ident: u16,
    /// Gateway and sandbox MACs (replies go from the former to the latter).
    pub macs: (MacAddr, MacAddr),
    /// Destination and sandbox addresses (one family).
    pub ips: (IpAddr, IpAddr),
    /// The sandbox's port.
    pub port: PortId,
    /// Last packet either way (ms).
    pub last_active: i64,
}

impl IcmpFlow {
    /// Opens a ping socket to `to`. `PermissionDenied` where ping sockets
    /// are not allowed for this user.
    pub fn open(
        to: IpAddr,
        sandbox: (MacAddr, IpAddr, PortId),
        ident: u16,
        gateway_mac: MacAddr,
        now: i64,
    ) -> io::Result<IcmpFlow> {
        let (family, protocol) = match to {
            IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp),
            IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6),
        };
        let fd = socket(
            family,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            protocol,
        )
        .map_err(io::Error::from)?;
        let std_sock = std::net::UdpSocket::from(fd);
        std_sock.connect(SocketAddr::new(to, 0))?;
        Ok(IcmpFlow {
            host: UdpSocket::from_std(std_sock),
            ident,
            macs: (gateway_mac, sandbox.0),
            ips: (to, sandbox.1),
            port: sandbox.2,
            last_active: now,
        })
    }

    /// Sends an echo request (the ICMP message as the sandbox sent it).
    pub fn send(&self, icmp: &[u8]) -> io::Result<usize> {
        self.host.send(icmp)
    }

    /// Turns a reply read from the ping socket into a frame for the sandbox
    /// in `buf`; returns its length.
    pub fn reply_frame(&self, icmp: &[u8], buf: &mut [u8]) -> Option<usize> {
        match self.ips {
            (IpAddr::V4(from), IpAddr::V4(to)) => {
                let end = IP_HEADERS_LEN + icmp.len();
                let dst = buf.get_mut(IP_HEADERS_LEN..end)?;
                dst.copy_from_slice(icmp);
                let mut p = icmpv4::Packet::new_checked(&mut dst[..]).ok()?;
                p.set_echo_ident(self.ident);
                p.fill_checksum();
                let ips = (from, to);
                udp_frame::emit_ipv4(buf, self.macs, ips, IpProtocol::Icmp, icmp.len()).ok()
            }
            (IpAddr::V6(from), IpAddr::V6(to)) => {
                let end = IP6_HEADERS_LEN + icmp.len();
                let dst = buf.get_mut(IP6_HEADERS_LEN..end)?;
                dst.copy_from_slice(icmp);
                let mut p = icmpv6::Packet::new_checked(&mut dst[..]).ok()?;
                p.set_echo_ident(self.ident);
                p.fill_checksum(&from, &to);
                let ips = (from, to);
                udp_frame::emit_ipv6(buf, self.macs, ips, IpProtocol::Icmpv6, icmp.len()).ok()
            }
            _ => None,
        }
    }
}
