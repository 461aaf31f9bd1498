//! Stage `parse`: reads the Ethernet header (and VLAN tags) of each frame into
//! its metadata; frames too short to parse are dropped as malformed, and so
//! are frames whose partial checksum (virtio-net `csum_start`) would be
//! written into their Ethernet or IP headers: completing it for a port
//! without offloads would change addresses after port security checked
//! them.

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::stage::{Stage, StageContext};
use crate::wire::ethernet::{self, EtherType};
use crate::wire::ipv6::walk_extension_headers;
use crate::wire::{IpProtocol, MacAddr};

/// The parse stage.
pub struct Parse;

impl Stage for Parse {
    fn name(&self) -> &'static str {
        "parse"
    }

    fn process(&mut self, _cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        for f in frames.iter_mut() {
            if f.meta.action.is_final() {
                continue;
            }
            if !read_l2(f) || (f.vnet.needs_csum() && !partial_checksum_past_l3(f)) {
                f.meta.action = Action::Drop(DropReason::Malformed);
            }
        }
    }
}

/// Fills the frame's L2 metadata; false if it is too short to parse.
#[inline(always)]
fn read_l2(f: &mut Frame) -> bool {
    // Untagged frames, nearly all of them: fields go straight from the
    // frame to the metadata. Building parse_l2's result on the stack and
    // copying it field by field made the CPU reload bytes it had just
    // stored in different widths, which stalls.
    if let Some(h) = f.data().first_chunk::<{ ethernet::HEADER_LEN }>() {
        let et = u16::from_be_bytes([h[12], h[13]]);
        if !ethernet::is_tag(et) {
            let (dst, src) = (MacAddr::from_bytes(&h[..6]), MacAddr::from_bytes(&h[6..]));
            let m = &mut f.meta;
            m.dst = dst;
            m.src = src;
            m.ethertype = EtherType::from(et);
            m.l3_offset = ethernet::HEADER_LEN as u16;
            return true;
        }
    }
    match ethernet::parse_l2(f.data()) {
        Ok(h) => {
            f.meta.dst = h.dst;
            f.meta.src = h.src;
            f.meta.ethertype = h.ethertype;
            f.meta.l3_offset = h.l3_offset;
            true
        }
        Err(_) => false,
    }
}

/// Whether a partial checksum starts past the frame's L2 and L3 headers
/// (the outer ones: a tunnel inside the sandbox may leave its inner L4
/// checksum partial, past an outer UDP header) and ends inside the frame.
fn partial_checksum_past_l3(f: &Frame) -> bool {
    let b = f.data();
    let l3 = usize::from(f.meta.l3_offset);
    let start = usize::from(f.vnet.csum_start);
    let end = start + usize::from(f.vnet.csum_offset) + 2;
    let l4 = match f.meta.ethertype {
        EtherType::Ipv4 => b.get(l3).map(|v| l3 + usize::from(v & 0x0f) * 4),
        EtherType::Ipv6 => b.get(l3 + 6).and_then(|&next| {
            let ext = b.get(l3 + 40..)?;
            let (_, off) = walk_extension_headers(ext, IpProtocol::from(next)).ok()?;
            Some(l3 + 40 + off)
        }),
        _ => Some(l3),
    };
    l4.is_some_and(|l4| start >= l4.max(l3 + 20)) && end <= b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortId;
    use crate::wire::virtio_net::{VirtioNetHdr, F_NEEDS_CSUM};

    fn with_csum(bytes: &[u8], start: u16, offset: u16) -> Frame {
        let mut f = Frame::parsed(bytes, PortId(1));
        f.vnet = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: start,
            csum_offset: offset,
            ..VirtioNetHdr::NONE
        };
        f
    }

    fn udp4() -> Vec<u8> {
        let mut b = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .udp(1, 2)
            .write(&mut b, &[7; 40])
            .unwrap();
        b
    }

    #[test]
    fn partial_checksums_must_lie_past_the_ip_header() {
        let b = udp4();
        assert!(
            partial_checksum_past_l3(&with_csum(&b, 34, 6)),
            "the UDP checksum"
        );
        // A tunnel's inner checksum, further in, is fine too.
        assert!(partial_checksum_past_l3(&with_csum(&b, 50, 16)));
        for (start, offset) in [(20, 6), (14, 10), (0, 6), (33, 0)] {
            assert!(
                !partial_checksum_past_l3(&with_csum(&b, start, offset)),
                "{start}+{offset} writes into the headers"
            );
        }
        assert!(
            !partial_checksum_past_l3(&with_csum(&b, 34, b.len() as u16)),
            "past the end"
        );
        // The stage drops them; frames without the flag are not checked.
        let mut frames = vec![
            with_csum(&b, 20, 6),
            with_csum(&b, 34, 6),
            Frame::parsed(&b, PortId(1)),
        ];
        frames[2].vnet.csum_start = 3;
        for f in frames.iter_mut() {
            f.meta = Default::default();
        }
        let topo = crate::tables::topology::Topology::default();
        crate::pipeline::stage::run_alone(&mut Parse, &topo, &mut frames);
        assert_eq!(frames[0].meta.action, Action::Drop(DropReason::Malformed));
        assert!(!frames[1].meta.action.is_final());
        assert!(!frames[2].meta.action.is_final());
    }

    #[test]
    fn ipv6_partial_checksums_count_extension_headers() {
        let mut b = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(1, 2)
            .write(&mut b, &[7; 40])
            .unwrap();
        // Insert a hop-by-hop header (8 bytes) after the fixed header.
        b[20] = 0;
        let plen = u16::from_be_bytes([b[18], b[19]]) + 8;
        b[18..20].copy_from_slice(&plen.to_be_bytes());
        b.splice(54..54, [17u8, 0, 1, 4, 0, 0, 0, 0]);
        assert!(partial_checksum_past_l3(&with_csum(&b, 62, 6)));
        assert!(
            !partial_checksum_past_l3(&with_csum(&b, 54, 6)),
            "inside the hop-by-hop header"
        );
        assert!(
            !partial_checksum_past_l3(&with_csum(&b, 22, 6)),
            "the source address"
        );
    }
}
