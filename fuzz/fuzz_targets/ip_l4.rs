//! IPv4/IPv6 views and reprs, then TCP/UDP/ICMP/ICMPv6 (incl. NDP) on the
//! upper-layer payload, plus the in-place ICMP echo reply.
#![no_main]
use core::net::IpAddr;
use libfuzzer_sys::fuzz_target;
use switchyard::wire::{icmpv4, icmpv6, ipv4, ipv6, tcp, udp, IpProtocol, MacAddr};

fn l4(proto: IpProtocol, b: &[u8], s: IpAddr, d: IpAddr) {
    match proto {
        IpProtocol::Tcp => {
            if let Ok(p) = tcp::Packet::new_checked(b) {
                let _ = (
                    p.src_port(),
                    p.dst_port(),
                    p.seq_number(),
                    p.ack_number(),
                    p.header_len(),
                    p.flags(),
                );
                let _ = (
                    p.window_len(),
                    p.checksum(),
                    p.urgent_at(),
                    p.options(),
                    p.payload(),
                    p.verify_checksum(&s, &d),
                );
                let _ = tcp::TcpRepr::parse(&p, &s, &d);
            }
        }
        IpProtocol::Udp => {
            if let Ok(p) = udp::Packet::new_checked(b) {
                let _ = (
                    p.src_port(),
                    p.dst_port(),
                    p.len(),
                    p.checksum(),
                    p.payload(),
                    p.verify_checksum(&s, &d),
                );
                let _ = udp::UdpRepr::parse(&p, &s, &d);
            }
        }
        IpProtocol::Icmp => {
            if let Ok(p) = icmpv4::Packet::new_checked(b) {
                let _ = (
                    p.msg_type(),
                    p.msg_code(),
                    p.checksum(),
                    p.echo_ident(),
                    p.echo_seq_no(),
                    p.next_hop_mtu(),
                );
                let _ = (p.data(), p.verify_checksum(), icmpv4::Icmpv4Repr::parse(&p));
            }
        }
        IpProtocol::Icmpv6 => {
            if let (Ok(p), IpAddr::V6(s), IpAddr::V6(d)) = (icmpv6::Packet::new_checked(b), s, d) {
                let _ = (
                    p.msg_type(),
                    p.msg_code(),
                    p.checksum(),
                    p.echo_ident(),
                    p.echo_seq_no(),
                    p.ra_hop_limit(),
                );
                let _ = (
                    p.ra_flags(),
                    p.ra_router_lifetime(),
                    p.ra_reachable_time(),
                    p.ra_retrans_time(),
                    p.na_flags(),
                );
                let _ = (
                    p.target_addr(),
                    p.body(),
                    p.verify_checksum(&s, &d),
                    icmpv6::Icmpv6Repr::parse(&p, &s, &d),
                );
                p.ndp_options().for_each(|o| {
                    let _ = o.map(|o| o.link_layer_addr());
                });
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ipv4::Packet::new_checked(data) {
        let _ = (
            p.version(),
            p.header_len(),
            p.dscp(),
            p.ecn(),
            p.total_len(),
            p.ident(),
            p.dont_frag(),
        );
        let _ = (
            p.more_frags(),
            p.frag_offset(),
            p.ttl(),
            p.checksum(),
            p.verify_checksum(),
            p.options(),
        );
        let _ = ipv4::Ipv4Repr::parse(&p);
        l4(
            p.protocol(),
            p.payload(),
            p.src_addr().into(),
            p.dst_addr().into(),
        );
    }
    if let Ok(p) = ipv6::Packet::new_checked(data) {
        let _ = (
            p.version(),
            p.traffic_class(),
            p.flow_label(),
            p.payload_len(),
            p.hop_limit(),
            p.payload(),
        );
        let _ = ipv6::Ipv6Repr::parse(&p);
        if let Ok((proto, off)) = p.upper_layer() {
            let end = 40 + p.payload_len() as usize;
            l4(
                proto,
                &data[off.min(end)..end],
                p.src_addr().into(),
                p.dst_addr().into(),
            );
        }
    }
    let mut f = data.to_vec();
    let _ = icmpv4::make_echo_reply_in_place(&mut f, 14, MacAddr::BROADCAST);
});
