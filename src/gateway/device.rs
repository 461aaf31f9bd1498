//! The smoltcp device of one network's gateway: received frames are the ones
//! the workers punted (moved in as frame handles, returned to the pool after
//! smoltcp read them); transmitted frames are written straight into pool
//! buffers and injected to the worker that owns the client's port.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::pipeline::frame::Frame;
use crate::pipeline::inject::Injector;
use crate::ports::PortId;
use crate::wire::virtio_net::{GsoType, VirtioNetHdr};
use crate::wire::MacAddr;

/// Ethernet header length (smoltcp's MTU for Ethernet includes it).
const ETHERNET_HEADER: usize = 14;

/// What the stack sent that did not reach a sandbox, for the stack to count
/// and act on.
#[derive(Debug, Default)]
pub struct TxTally {
    /// Frames that found no port (unknown or broadcast destination).
    pub unroutable: u64,
    /// Addresses smoltcp asked for (ARP request, neighbour solicitation):
    /// sandboxes its neighbour cache lost, typically evicted by others.
    /// The requests are dropped (the gateway stage answers for the gateway,
    /// and a sandbox's answer would not come back here), so the stack
    /// re-announces these neighbours instead.
    pub solicited: Vec<IpAddr>,
}

/// Where frames from the stack go: which port each client MAC sits on.
pub struct TxSide<'a> {
    /// Frames into the data plane.
    pub injector: &'a mut Injector,
    /// Client MAC to port, learned from punted frames.
    pub clients: &'a HashMap<MacAddr, PortId>,
    /// What did not reach a sandbox.
    pub tally: &'a mut TxTally,
    /// The sandbox's port takes offloads: TCP leaves as large segments with
    /// a virtio-net header (GSO, partial checksum), cut to `seg_mtu` by the
    /// sandbox's kernel or by the switch for ports without offloads.
    pub offload: bool,
    /// The network's MTU.
    pub seg_mtu: usize,
}

/// One network's device for one `Interface::poll`.
pub struct PuntDevice<'a> {
    /// Punted frames not yet read by smoltcp.
    pub rx: &'a mut VecDeque<Frame>,
    /// Frames smoltcp has read, to go back to the pool.
    pub done: &'a mut Vec<Frame>,
    /// Output.
    pub tx: TxSide<'a>,
    /// The network's MTU (IP).
    pub mtu: usize,
}

impl<'a> PuntDevice<'a> {
    /// A device reading `rx` and sending to the clients of `clients`;
    /// `offload`: large TCP segments (64 KiB MTU) cut to `seg_mtu` later.
    pub fn new(
        rx: &'a mut VecDeque<Frame>,
        done: &'a mut Vec<Frame>,
        injector: &'a mut Injector,
        clients: &'a HashMap<MacAddr, PortId>,
        tally: &'a mut TxTally,
        seg_mtu: usize,
        offload: bool,
    ) -> PuntDevice<'a> {
        PuntDevice {
            rx,
            done,
            tx: TxSide {
                injector,
                clients,
                tally,
                offload,
                seg_mtu,
            },
            mtu: if offload { LARGE_MTU } else { seg_mtu },
        }
    }
}

/// IP MTU towards sandboxes whose ports take offloads: segments up to
/// 64 KiB, cut by the sandbox's kernel (or the switch) afterwards.
pub const LARGE_MTU: usize = u16::MAX as usize;

/// Capabilities of every gateway device: Ethernet; received TCP/UDP
/// checksums are not verified because a TAP with checksum offload hands over
/// partial ones (the kernel that sent them vouches for the data).
pub fn capabilities(mtu: usize, offload: bool) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ethernet;
    caps.max_transmission_unit = mtu + ETHERNET_HEADER;
    let mut sums = ChecksumCapabilities::default();
    sums.ipv4 = Checksum::Both;
    // With offloads the TCP checksum is left to whoever cuts the segment.
    sums.tcp = if offload {
        Checksum::None
    } else {
        Checksum::Tx
    };
    sums.udp = Checksum::Tx;
    sums.icmpv4 = Checksum::Tx;
    caps.checksum = sums;
    caps
}

/// A frame for smoltcp to read.
pub struct RxToken<'a> {
    frame: Frame,
    done: &'a mut Vec<Frame>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.frame.data());
        self.done.push(self.frame);
        r
    }
}

/// Room for one frame from smoltcp.
pub struct TxToken<'a> {
    tx: TxSide<'a>,
}

impl TxSide<'_> {
    fn reborrow(&mut self) -> TxSide<'_> {
        TxSide {
            injector: &mut *self.injector,
            clients: self.clients,
            tally: &mut *self.tally,
            offload: self.offload,
            seg_mtu: self.seg_mtu,
        }
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let Some(mut frame) = self.tx.injector.alloc() else {
            // No buffer: let smoltcp write into scratch; TCP retransmits.
            let mut scratch = vec![0u8; len];
            self.tx.tally.unroutable += 1;
            return f(&mut scratch);
        };
        let space = frame.receive_space();
        let len = len.min(space.len());
        let r = f(&mut space[..len]);
        frame.set_len(len);
        if self.tx.offload {
            frame.vnet = tcp_offload(frame.data_mut(), self.tx.seg_mtu);
        }
        let dst = MacAddr::from_bytes(&frame.data()[..6.min(len)]);
        // ARP and NDP are the pipeline's gateway stage's job; smoltcp only
        // answers the requests the stack feeds it.
        let chatter = gateway_chatter(frame.data()) || dst.is_multicast();
        match self.tx.clients.get(&dst).filter(|_| !chatter) {
            Some(&port) => {
                self.tx.injector.send_frame(port, frame);
            }
            None => {
                // ARP or NDP, or a client that vanished.
                self.tx.tally.unroutable += u64::from(!chatter);
                if let Some(ip) = solicited(frame.data()) {
                    self.tx.tally.solicited.push(ip);
                }
                self.tx.injector.free(frame);
            }
        }
        r
    }
}

impl phy::Device for PuntDevice<'_> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((
            RxToken {
                frame,
                done: self.done,
            },
            TxToken {
                tx: self.tx.reborrow(),
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken {
            tx: self.tx.reborrow(),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.mtu, self.tx.offload)
    }
}

/// For a TCP frame over IPv4 or IPv6 (no extension headers): puts the
/// partial (pseudo-header) checksum in the TCP header and returns the
/// virtio-net header that asks for it to be completed, and, above `seg_mtu`,
/// for segmentation. Other frames get none.
fn tcp_offload(frame: &mut [u8], seg_mtu: usize) -> VirtioNetHdr {
    use crate::wire::gso::partial_pseudo_csum;
    use crate::wire::ipv6::addr_at;
    use crate::wire::IpProtocol;
    use std::net::IpAddr;
    const L3: usize = ETHERNET_HEADER;
    let addr4 = |b: &[u8]| IpAddr::from([b[0], b[1], b[2], b[3]]);
    let (ip_hdr, tcp_len, src, dst, gso) = match frame.get(12..14) {
        Some([0x08, 0x00]) => {
            let Some(ip) = frame.get(L3..L3 + 20) else {
                return VirtioNetHdr::NONE;
            };
            if ip[0] >> 4 != 4 || ip[9] != 6 {
                return VirtioNetHdr::NONE;
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let tcp_len = total.saturating_sub(ihl);
            (
                ihl,
                tcp_len,
                addr4(&ip[12..16]),
                addr4(&ip[16..20]),
                GsoType::TcpV4,
            )
        }
        Some([0x86, 0xdd]) => {
            let Some(ip) = frame.get(L3..L3 + 40) else {
                return VirtioNetHdr::NONE;
            };
            let addrs = (addr_at(ip, 8), addr_at(ip, 24));
            let (Some(src), Some(dst)) = addrs else {
                return VirtioNetHdr::NONE;
            };
            if ip[0] >> 4 != 6 || ip[6] != 6 {
                return VirtioNetHdr::NONE;
            }
            let tcp_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            (40, tcp_len, src.into(), dst.into(), GsoType::TcpV6)
        }
        _ => return VirtioNetHdr::NONE,
    };
    let l4 = L3 + ip_hdr;
    let Some(doff) = frame.get(l4 + 12).map(|b| usize::from(b >> 4) * 4) else {
        return VirtioNetHdr::NONE;
    };
    if l4 + 18 > frame.len() || tcp_len < doff {
        return VirtioNetHdr::NONE;
    }
    let partial = partial_pseudo_csum(&src, &dst, IpProtocol::Tcp, tcp_len as u32);
    frame[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let mut hdr = VirtioNetHdr {
        flags: crate::wire::virtio_net::F_NEEDS_CSUM,
        csum_start: l4 as u16,
        csum_offset: 16,
        ..VirtioNetHdr::NONE
    };
    let mss = seg_mtu.saturating_sub(ip_hdr + doff);
    if tcp_len - doff > mss && mss > 0 {
        hdr.gso_type = gso;
        hdr.gso_size = mss as u16;
        hdr.hdr_len = (l4 + doff) as u16;
    }
    hdr
}

/// True for what the stack's smoltcp says on its own and the pipeline's
/// gateway stage already says for it: ARP, and neighbour discovery (router
/// and neighbour solicitations and advertisements, redirects); with
/// multicast (MLD reports for its groups) none of it reaches a sandbox. A
/// sandbox must
/// not get smoltcp's advertisements: they lack the router flag, and Linux
/// drops its default route on hearing the gateway is not a router.
fn gateway_chatter(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x06]) => true,
        Some([0x86, 0xdd]) => {
            let l4 = ETHERNET_HEADER + 40;
            frame.get(ETHERNET_HEADER + 6) == Some(&crate::pipeline::ndp::PROTO_ICMPV6)
                && frame.get(l4).is_some_and(|t| (133..=137).contains(t))
        }
        _ => false,
    }
}

/// The address an ARP request or neighbour solicitation asks for.
fn solicited(frame: &[u8]) -> Option<IpAddr> {
    const ARP_REQUEST: [u8; 2] = [0, 1];
    const NEIGHBOUR_SOLICITATION: u8 = 135;
    match frame.get(12..14)? {
        [0x08, 0x06] => {
            let arp = frame.get(ETHERNET_HEADER..ETHERNET_HEADER + 28)?;
            if arp[6..8] != ARP_REQUEST {
                return None;
            }
            Some(Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]).into())
        }
        [0x86, 0xdd] => {
            let l4 = ETHERNET_HEADER + 40;
            let is_ns = frame.get(ETHERNET_HEADER + 6) == Some(&crate::pipeline::ndp::PROTO_ICMPV6)
                && frame.get(l4) == Some(&NEIGHBOUR_SOLICITATION);
            if !is_ns {
                return None;
            }
            crate::wire::ipv6::addr_at(frame, l4 + 8).map(IpAddr::V6)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::gso::complete_checksum;

    /// An Ethernet/IPv4/TCP frame with `payload` bytes and a valid checksum.
    fn tcp_frame(payload: usize) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(80, 40000, 1, 65535);
        let mut out = Vec::new();
        b.write(&mut out, &vec![7u8; payload]).unwrap();
        out
    }

    #[test]
    fn small_tcp_gets_a_partial_checksum_large_gets_gso() {
        let mut f = tcp_frame(100);
        let good = f.clone();
        let h = tcp_offload(&mut f, 1500);
        assert!(h.needs_csum() && !h.is_gso());
        complete_checksum(&mut f, &h).unwrap();
        assert_eq!(f, good, "completing the partial checksum restores it");

        let mut f = tcp_frame(20_000);
        let h = tcp_offload(&mut f, 1500);
        assert_eq!(h.gso_type, GsoType::TcpV4);
        assert_eq!(h.gso_size, 1460);
        assert_eq!(h.hdr_len, 54);
        assert_eq!((h.csum_start, h.csum_offset), (34, 16));
    }

    #[test]
    fn other_frames_are_left_alone() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(tcp_offload(&mut arp, 1500), VirtioNetHdr::NONE);
        assert_eq!(tcp_offload(&mut [0u8; 20], 1500), VirtioNetHdr::NONE);
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut udp, &[1, 2, 3])
            .unwrap();
        assert_eq!(tcp_offload(&mut udp, 1500), VirtioNetHdr::NONE);
    }

    #[test]
    fn ipv6_tcp_gets_a_partial_checksum_and_gso_v6() {
        let b = || {
            etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
                .ipv6(
                    [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    [0xfd; 16],
                    64,
                )
                .tcp(80, 40000, 1, 65535)
        };
        let mut f = Vec::new();
        b().write(&mut f, &[7u8; 100]).unwrap();
        let good = f.clone();
        let h = tcp_offload(&mut f, 1500);
        assert!(h.needs_csum() && !h.is_gso());
        assert_eq!((h.csum_start, h.csum_offset), (54, 16));
        complete_checksum(&mut f, &h).unwrap();
        assert_eq!(f, good, "completing the partial checksum restores it");

        let mut f = Vec::new();
        b().write(&mut f, &vec![7u8; 20_000]).unwrap();
        let h = tcp_offload(&mut f, 1500);
        assert_eq!(h.gso_type, GsoType::TcpV6);
        assert_eq!(h.gso_size, 1440);
        assert_eq!(h.hdr_len, 74);
    }

    #[test]
    fn arp_and_neighbour_discovery_are_chatter() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(gateway_chatter(&arp));
        let mut na = vec![0u8; 14 + 40 + 32];
        na[12..14].copy_from_slice(&[0x86, 0xdd]);
        na[14 + 6] = 58;
        na[14 + 40] = 136;
        assert!(gateway_chatter(&na));
        na[14 + 40] = 129; // echo reply
        assert!(!gateway_chatter(&na));
        assert!(!gateway_chatter(&tcp_frame(10)));
    }
}
