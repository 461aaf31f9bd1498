//! TCP and UDP receive coalescing, and cutting USO frames: two arbitrary
//! frames (split where the first byte says), the head plain or already
//! coalesced, the next plain or with a partial checksum; deciding and
//! merging never panics, a UDP merge always ends in a frame that cuts back
//! into datagrams carrying the same payload, and cutting either input as a
//! USO frame never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::wire::virtio_net::{GsoType, VirtioNetHdr, F_NEEDS_CSUM};
use switchyard::wire::{gro, udp_gro, udp_gso};

/// Cuts `frame` as a USO frame with `vnet`, if it is one; returns the
/// datagrams' payloads joined.
fn cut_uso(frame: &[u8], vnet: &VirtioNetHdr) -> Option<Vec<u8>> {
    let plan = udp_gso::plan(frame, vnet).ok()?;
    let mut buf = vec![0u8; 65_600];
    let mut payload = Vec::new();
    for i in 0..plan.segments {
        let (n, seg) = udp_gso::write_segment(frame, &plan, i, &mut buf).expect("a planned cut");
        assert_eq!(n, plan.segment_len(i));
        payload.extend_from_slice(&buf[usize::from(seg.csum_start) + 8..n]);
    }
    Some(payload)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (usize::from(cut) * 4).min(rest.len());
    let (head, next) = rest.split_at(cut);
    let merged = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GsoType::TcpV4,
        gso_size: 1400,
        ..VirtioNetHdr::NONE
    };
    for vnet in [VirtioNetHdr::NONE, merged] {
        if let Some((at, mss)) = gro::continues(head, &vnet, next, &VirtioNetHdr::NONE) {
            let mut f = head.to_vec();
            f.extend_from_slice(&next[at..]);
            let psh = gro::has_psh(next);
            let _ = gro::finish(&mut f, mss, psh);
        }
    }
    let partial = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VirtioNetHdr::NONE
    };
    let uso = |gso_size| VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GsoType::UdpL4,
        gso_size,
        ..VirtioNetHdr::NONE
    };
    let mss = u16::from(cut as u8);
    for vnet in [VirtioNetHdr::NONE, uso(mss), uso(1)] {
        for next_vnet in [VirtioNetHdr::NONE, partial] {
            if let Some(m) = udp_gro::continues(head, &vnet, next, &next_vnet) {
                let mut f = head[..m.head_len].to_vec();
                f.extend_from_slice(&next[m.payload.0..m.payload.1]);
                let out = udp_gro::finish(&mut f, m.mss);
                assert_eq!(out.gso_type, GsoType::UdpL4);
                assert_eq!(out.gso_size, m.mss);
                let hdr = usize::from(out.hdr_len);
                let joined = cut_uso(&f, &out).expect("a merged frame cuts");
                assert_eq!(joined, f[hdr..]);
            }
        }
    }
    for gso_size in [mss, 1, 1400] {
        let _ = cut_uso(head, &uso(gso_size));
        let _ = cut_uso(next, &uso(gso_size));
    }
});
