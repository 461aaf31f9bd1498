//! A minimal rtnetlink client over a raw `NETLINK_ROUTE` socket: link up/down,
//! MTU, MAC, addresses, default routes, link deletion. Messages are built by
//! pure functions (tested without a kernel); every request asks for an ACK
//! and a kernel error becomes a typed [`NetlinkError`].

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

use crate::wire::MacAddr;

// Message types and flags from <linux/netlink.h> and <linux/rtnetlink.h>.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
// Attribute types from <linux/if_link.h>, <linux/if_addr.h>, <linux/rtnetlink.h>.
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;

const NLMSG_HDR_LEN: usize = 16;
const NLA_HDR_LEN: usize = 4;

/// Why a netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// `socket(AF_NETLINK)` or `bind` failed.
    #[error("cannot open a NETLINK_ROUTE socket: {0}")]
    Socket(#[source] io::Error),
    /// The interface does not exist in this network namespace.
    #[error("no interface named {name:?} in this network namespace")]
    NoSuchLink {
        /// The name looked up.
        name: String,
        /// What `if_nametoindex` said.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving on the socket failed.
    #[error("netlink socket I/O failed: {0}")]
    Io(#[source] io::Error),
    /// The kernel answered with something that is not an ACK for our request.
    #[error("unexpected netlink reply: {0}")]
    Protocol(&'static str),
    /// The kernel refused the request.
    #[error("{op} refused by the kernel: {source}{hint}", hint = hint(source))]
    Refused {
        /// What we asked for, e.g. `"set MTU of eth0"`.
        op: String,
        /// The errno from `NLMSG_ERROR`.
        #[source]
        source: io::Error,
    },
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "; this needs CAP_NET_ADMIN in the network namespace's user namespace"
        }
        Some(libc::EEXIST) => "; it already exists",
        _ => "",
    }
}

/// Appends a netlink attribute (type, payload, padding to 4 bytes).
fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = (NLA_HDR_LEN + payload.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

/// Starts a message: a header whose length is fixed by [`finish`].
fn start(kind: u16, flags: u16, seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b
}

fn finish(mut b: Vec<u8>) -> Vec<u8> {
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_ne_bytes());
    b
}

/// `struct ifinfomsg` for `index`, changing only the `IFF_UP` flag when `up`
/// is given.
fn ifinfomsg(b: &mut Vec<u8>, index: u32, up: Option<bool>) {
    b.push(libc::AF_UNSPEC as u8);
    b.push(0);
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    let (flags, change) = match up {
        Some(true) => (libc::IFF_UP as u32, libc::IFF_UP as u32),
        Some(false) => (0, libc::IFF_UP as u32),
        None => (0, 0),
    };
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
}

/// What to change on a link with [`link_set_msg`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkChange {
    /// Bring it up (`true`) or down (`false`).
    pub up: Option<bool>,
    /// New MTU.
    pub mtu: Option<u32>,
    /// New MAC address.
    pub mac: Option<MacAddr>,
}

/// `RTM_NEWLINK` changing flags, MTU or MAC of link `index`.
pub fn link_set_msg(seq: u32, index: u32, change: &LinkChange) -> Vec<u8> {
    let mut b = start(libc::RTM_NEWLINK, 0, seq);
    ifinfomsg(&mut b, index, change.up);
    if let Some(mtu) = change.mtu {
        put_attr(&mut b, IFLA_MTU, &mtu.to_ne_bytes());
    }
    if let Some(mac) = change.mac {
        put_attr(&mut b, IFLA_ADDRESS, &mac.0);
    }
    finish(b)
}

/// `RTM_DELLINK` for link `index`.
pub fn link_del_msg(seq: u32, index: u32) -> Vec<u8> {
    let mut b = start(libc::RTM_DELLINK, 0, seq);
    ifinfomsg(&mut b, index, None);
    finish(b)
}

/// `RTM_NEWADDR` adding `addr/prefix` to link `index` (IPv6 without duplicate
/// address detection, so it is usable at once).
pub fn addr_add_msg(seq: u32, index: u32, addr: IpAddr, prefix: u8) -> Vec<u8> {
    let mut b = start(libc::RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq);
    let (family, flags, bytes) = match addr {
        IpAddr::V4(a) => (libc::AF_INET, 0, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6, IFA_F_NODAD, a.octets().to_vec()),
    };
    b.push(family as u8);
    b.push(prefix);
    b.push(flags);
    b.push(libc::RT_SCOPE_UNIVERSE);
    b.extend_from_slice(&index.to_ne_bytes());
    if addr.is_ipv4() {
        put_attr(&mut b, IFA_LOCAL, &bytes);
    }
    put_attr(&mut b, IFA_ADDRESS, &bytes);
    finish(b)
}

/// `RTM_NEWROUTE` adding a default route via `gateway` out of link `index`.
pub fn default_route_msg(seq: u32, index: u32, gateway: IpAddr) -> Vec<u8> {
    let mut b = start(libc::RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, seq);
    let (family, bytes) = match gateway {
        IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec()),
    };
    b.extend_from_slice(&[
        family as u8,
        0, // dst_len: default route
        0, // src_len
        0, // tos
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        libc::RT_SCOPE_UNIVERSE,
        libc::RTN_UNICAST,
    ]);
    b.extend_from_slice(&0u32.to_ne_bytes());
    put_attr(&mut b, libc::RTA_GATEWAY, &bytes);
    put_attr(&mut b, libc::RTA_OIF, &index.to_ne_bytes());
    finish(b)
}

/// Reads the ACK for `seq` from a reply datagram: `Ok(())`, or the errno the
/// kernel reported (positive).
pub fn parse_ack(buf: &[u8], seq: u32) -> Result<Result<(), i32>, &'static str> {
    let mut at = 0;
    while at + NLMSG_HDR_LEN <= buf.len() {
        let h = &buf[at..];
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let kind = u16::from_ne_bytes([h[4], h[5]]);
        let mseq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        if len < NLMSG_HDR_LEN || at + len > buf.len() {
            return Err("truncated message");
        }
        if kind == NLMSG_ERROR && mseq == seq {
            let p = &h[NLMSG_HDR_LEN..len];
            if p.len() < 4 {
                return Err("truncated NLMSG_ERROR");
            }
            let err = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
            return Ok(if err == 0 { Ok(()) } else { Err(-err) });
        }
        at += (len + 3) & !3;
    }
    Err("no ACK for our request")
}

/// An open rtnetlink socket in the current network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens and binds a `NETLINK_ROUTE` socket.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|e| NetlinkError::Socket(e.into()))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
            .map_err(|e| NetlinkError::Socket(e.into()))?;
        Ok(Netlink { fd, seq: 1 })
    }

    /// The index of interface `name`.
    pub fn index(name: &str) -> Result<u32, NetlinkError> {
        nix::net::if_::if_nametoindex(name).map_err(|e| NetlinkError::NoSuchLink {
            name: name.to_string(),
            source: e.into(),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `msg` (built with sequence number `seq`) and waits for its ACK.
    fn request(
        &mut self,
        seq: u32,
        msg: &[u8],
        op: impl FnOnce() -> String,
    ) -> Result<(), NetlinkError> {
        send(self.fd.as_raw_fd(), msg, MsgFlags::empty())
            .map_err(|e| NetlinkError::Io(e.into()))?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|e| NetlinkError::Io(e.into()))?;
            match parse_ack(&buf[..n], seq) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(errno)) => {
                    return Err(NetlinkError::Refused {
                        op: op(),
                        source: io::Error::from_raw_os_error(errno),
                    })
                }
                // A reply to an older request (not ours): keep reading.
                Err("no ACK for our request") => continue,
                Err(why) => return Err(NetlinkError::Protocol(why)),
            }
        }
    }

    /// Changes flags, MTU or MAC of interface `name`.
    pub fn set_link(&mut self, name: &str, change: &LinkChange) -> Result<(), NetlinkError> {
        let index = Self::index(name)?;
        let seq = self.next_seq();
        let msg = link_set_msg(seq, index, change);
        self.request(seq, &msg, || format!("changing link {name} ({change:?})"))
    }

    /// Brings interface `name` up.
    pub fn set_up(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.set_link(
            name,
            &LinkChange {
                up: Some(true),
                ..LinkChange::default()
            },
        )
    }

    /// Deletes interface `name`.
    pub fn delete_link(&mut self, name: &str) -> Result<(), NetlinkError> {
        let index = Self::index(name)?;
        let seq = self.next_seq();
        let msg = link_del_msg(seq, index);
        self.request(seq, &msg, || format!("deleting link {name}"))
    }

    /// Adds `addr/prefix` to interface `name`.
    pub fn add_address(
        &mut self,
        name: &str,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let index = Self::index(name)?;
        let seq = self.next_seq();
        let msg = addr_add_msg(seq, index, addr, prefix);
        self.request(seq, &msg, || {
            format!("adding address {addr}/{prefix} to {name}")
        })
    }

    /// Adds a default route via `gateway` out of interface `name`.
    pub fn add_default_route(&mut self, name: &str, gateway: IpAddr) -> Result<(), NetlinkError> {
        let index = Self::index(name)?;
        let seq = self.next_seq();
        let msg = default_route_msg(seq, index, gateway);
        self.request(seq, &msg, || {
            format!("adding default route via {gateway} on {name}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_ne_bytes([b[i], b[i + 1]])
    }

    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }

    #[test]
    fn link_change_carries_flags_mtu_and_mac() {
        let change = LinkChange {
            up: Some(true),
            mtu: Some(9000),
            mac: Some(MacAddr([2, 0, 0, 0, 0, 7])),
        };
        let m = link_set_msg(42, 5, &change);
        // header 16 + ifinfomsg 16 + MTU attr 8 + MAC attr (4 + 6, padded) 12
        assert_eq!(m.len(), 52);
        assert_eq!(u32_at(&m, 0), 52);
        assert_eq!(u16_at(&m, 4), libc::RTM_NEWLINK);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&m, 8), 42);
        assert_eq!(u32_at(&m, 20), 5, "ifindex");
        assert_eq!(u32_at(&m, 24), libc::IFF_UP as u32, "flags");
        assert_eq!(u32_at(&m, 28), libc::IFF_UP as u32, "change mask");
        assert_eq!(
            (u16_at(&m, 32), u16_at(&m, 34), u32_at(&m, 36)),
            (8, IFLA_MTU, 9000)
        );
        assert_eq!((u16_at(&m, 40), u16_at(&m, 42)), (10, IFLA_ADDRESS));
        assert_eq!(&m[44..50], &[2, 0, 0, 0, 0, 7]);
        assert_eq!(&m[50..52], &[0, 0], "padding");

        let down = link_set_msg(
            1,
            5,
            &LinkChange {
                up: Some(false),
                ..LinkChange::default()
            },
        );
        assert_eq!(
            (u32_at(&down, 24), u32_at(&down, 28)),
            (0, libc::IFF_UP as u32)
        );
        assert_eq!(u16_at(&link_del_msg(1, 5), 4), libc::RTM_DELLINK);
    }

    #[test]
    fn addresses_are_created_exclusively() {
        let m = addr_add_msg(3, 9, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 24);
        assert_eq!(u16_at(&m, 4), libc::RTM_NEWADDR);
        assert_eq!(
            u16_at(&m, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(u32_at(&m, 20), 9);
        assert_eq!((u16_at(&m, 24), u16_at(&m, 26)), (8, IFA_LOCAL));
        assert_eq!(&m[28..32], &[10, 1, 2, 3]);
        assert_eq!((u16_at(&m, 32), u16_at(&m, 34)), (8, IFA_ADDRESS));
        assert_eq!(m.len(), 40);

        let m = addr_add_msg(3, 9, IpAddr::V6(Ipv6Addr::LOCALHOST), 64);
        assert_eq!(&m[16..18], &[libc::AF_INET6 as u8, 64]);
        assert_eq!(m[18], IFA_F_NODAD);
        assert_eq!((u16_at(&m, 24), u16_at(&m, 26)), (20, IFA_ADDRESS));
        assert_eq!(m.len(), 44);
    }

    #[test]
    fn default_route_names_gateway_and_device() {
        let m = default_route_msg(7, 4, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(u16_at(&m, 4), libc::RTM_NEWROUTE);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 0, "dst_len 0: default route");
        assert_eq!(m[20], libc::RT_TABLE_MAIN);
        assert_eq!((u16_at(&m, 28), u16_at(&m, 30)), (8, libc::RTA_GATEWAY));
        assert_eq!(&m[32..36], &[10, 0, 0, 1]);
        assert_eq!(
            (u16_at(&m, 36), u16_at(&m, 38), u32_at(&m, 40)),
            (8, libc::RTA_OIF, 4)
        );
        let m6 = default_route_msg(7, 4, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(m6[16], libc::AF_INET6 as u8);
        assert_eq!(u16_at(&m6, 28), 20);
    }

    fn error_msg(seq: u32, errno: i32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(-errno).to_ne_bytes());
        b.extend_from_slice(&[0u8; 16]); // the request's header
        b
    }

    #[test]
    fn acks_and_kernel_errors_are_told_apart() {
        assert_eq!(parse_ack(&error_msg(5, 0), 5), Ok(Ok(())));
        assert_eq!(
            parse_ack(&error_msg(5, libc::EPERM), 5),
            Ok(Err(libc::EPERM))
        );
        assert!(parse_ack(&error_msg(4, 0), 5).is_err(), "other sequence");
        assert!(parse_ack(&error_msg(5, 0)[..20], 5).is_err(), "truncated");
        let e = NetlinkError::Refused {
            op: "adding address".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(e.to_string().contains("CAP_NET_ADMIN"));
    }
}
