//! virtio-net header, then GSO segmentation and checksum completion of the
//! bytes after it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::wire::{gso, virtio_net};

fuzz_target!(|data: &[u8]| {
    let Ok(hdr) = virtio_net::VirtioNetHdr::parse(data) else {
        return;
    };
    let _ = (hdr.is_gso(), hdr.needs_csum(), hdr.to_bytes());
    let frame = &data[virtio_net::HEADER_LEN..];
    if let Ok(mut s) = gso::Segmenter::new(frame, &hdr, None) {
        let mut out = [0u8; 2048];
        let n = s.segment_count();
        let mut produced = 0;
        while let Some(r) = s.next_into(&mut out) {
            if r.is_err() {
                break;
            }
            produced += 1;
            assert!(produced <= n);
        }
    }
    let _ = gso::complete_checksum(&mut frame.to_vec(), &hdr);
});
