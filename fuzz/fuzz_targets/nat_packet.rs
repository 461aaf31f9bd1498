//! The gateway stack's packet classifier (flow key, TCP flags, L4 bounds) on
//! any frame: never panics, and its bounds stay inside the frame.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::gateway::flow::PacketInfo;
use switchyard::pipeline::frame::Frame;
use switchyard::wire::ethernet;

fuzz_target!(|data: &[u8]| {
    let mut f = Frame::alloc();
    f.fill(data);
    let Ok(l2) = ethernet::parse_l2(f.data()) else {
        return;
    };
    f.meta.l3_offset = l2.l3_offset;
    if let Some(info) = PacketInfo::parse(&f) {
        assert!(info.l4 <= info.end && info.end <= f.len());
    }
});
