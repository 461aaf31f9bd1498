//! Ethernet (with VLAN tags) and ARP views, reprs and the in-place ARP reply.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::wire::{arp, ethernet, MacAddr};

fuzz_target!(|data: &[u8]| {
    let l2 = ethernet::parse_l2(data);
    if let Ok(f) = ethernet::Frame::new_checked(data) {
        let h = l2.expect("parse_l2 agrees with Frame::check_len");
        assert_eq!(h.l3_offset as usize, f.payload_offset());
        let _ = (
            f.dst(),
            f.src(),
            f.outer_ethertype(),
            f.vlan(),
            f.inner_vlan(),
            f.ethertype(),
        );
        let _ = ethernet::EthernetRepr::parse(&f);
        if let Ok(p) = arp::Packet::new_checked(f.payload()) {
            let _ = (
                p.hardware_type(),
                p.protocol_type(),
                p.hardware_len(),
                p.protocol_len(),
            );
            let _ = (
                p.operation(),
                p.source_mac(),
                p.source_ip(),
                p.target_mac(),
                p.target_ip(),
            );
            let _ = arp::ArpRepr::parse(&p);
        }
        let mut copy = data.to_vec();
        let _ = arp::make_reply_in_place(&mut copy, h.l3_offset as usize, MacAddr::BROADCAST);
    }
});
