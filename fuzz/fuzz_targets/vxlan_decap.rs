//! Arbitrary datagrams from an arbitrary underlay source through the decap
//! stage of an overlay network (control-plane remotes when the first byte is
//! even, static learning otherwise). Never panics; a frame that passes is a
//! well-formed inner frame on a tunnel port.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use switchyard::pipeline::decap::decapsulate;
use switchyard::pipeline::frame::Frame;
use switchyard::tables::overlay::fixture::{topology, vtep_b, TUNNEL_B, TUNNEL_C};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // Half the inputs come from the known VTEP, so the fuzzer gets past the
    // source check; the others from an address taken from the input.
    let (src, datagram) = match rest.split_first_chunk::<6>() {
        Some((a, d)) if sel & 2 != 0 => {
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            (SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[4], a[5]])), d)
        }
        _ => (vtep_b(), rest),
    };
    let topo = topology(sel & 1 == 1);
    let mut f = Frame::alloc();
    f.fill(datagram);
    if let Ok(port) = decapsulate(&topo, Some(src), &mut f) {
        assert!(port == TUNNEL_B || port == TUNNEL_C);
        assert!(f.len() >= 14);
        assert_eq!(f.len() + 8, datagram.len());
    }
});
