//! TCP receive coalescing: two arbitrary frames (split where the first byte
//! says), the head plain or already coalesced; deciding and merging never
//! panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::wire::gro;
use switchyard::wire::virtio_net::{GsoType, VirtioNetHdr, F_NEEDS_CSUM};

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
});
