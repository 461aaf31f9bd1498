//! Round-trip, NDP option and never-panic tests for ICMPv6.

use super::*;
use proptest::prelude::*;

fn arb_mac() -> impl Strategy<Value = Option<MacAddr>> {
    proptest::option::of(any::<[u8; 6]>().prop_map(MacAddr))
}

fn arb_repr(data: &[u8]) -> impl Strategy<Value = Icmpv6Repr<'_>> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<bool>()).prop_map(move |(i, s, req)| if req {
            Icmpv6Repr::EchoRequest {
                ident: i,
                seq_no: s,
                data,
            }
        } else {
            Icmpv6Repr::EchoReply {
                ident: i,
                seq_no: s,
                data,
            }
        }),
        arb_mac().prop_map(|lladdr| Icmpv6Repr::RouterSolicit { lladdr }),
        (
            any::<(u8, u8, u16, u32, u32)>(),
            arb_mac(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(
                |(
                    (hop_limit, flags, router_lifetime, reachable_time, retrans_time),
                    lladdr,
                    mtu,
                )| {
                    Icmpv6Repr::RouterAdvert {
                        hop_limit,
                        flags,
                        router_lifetime,
                        reachable_time,
                        retrans_time,
                        lladdr,
                        mtu,
                    }
                }
            ),
        (any::<u128>(), arb_mac()).prop_map(|(t, lladdr)| Icmpv6Repr::NeighborSolicit {
            target_addr: t.into(),
            lladdr
        }),
        (any::<u8>(), any::<u128>(), arb_mac()).prop_map(|(f, t, lladdr)| {
            Icmpv6Repr::NeighborAdvert {
                flags: f & 0xe0,
                target_addr: t.into(),
                lladdr,
            }
        }),
    ]
}

const DATA: [u8; 13] = *b"hello, world!";

proptest! {
    #[test]
    fn repr_round_trip(r in arb_repr(&DATA), s in any::<u128>(), d in any::<u128>()) {
        let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
        let mut b = [0u8; 64];
        let n = r.emit(&mut b, &s, &d).unwrap();
        prop_assert_eq!(n, r.buffer_len());
        let p = Packet::new_checked(&b[..n]).unwrap();
        prop_assert_eq!(Icmpv6Repr::parse(&p, &s, &d).unwrap(), r);
        let e = etherparse::Icmpv6Slice::from_slice(&b[..n]).unwrap();
        prop_assert_eq!(e.icmp_type().calc_checksum(s.octets(), d.octets(), e.payload()).unwrap(), p.checksum());
    }

    #[test]
    fn any_bytes_never_panic(mut b in proptest::collection::vec(any::<u8>(), 0..80), t in 128u8..138) {
        if b.len() > 1 && b[1] & 1 == 0 { b[0] = t; b[1] = 0; }
        let (s, d) = (Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
        if let Ok(mut p) = Packet::new_checked(&mut b[..]) {
            let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.echo_ident(), p.echo_seq_no());
            let _ = (p.ra_hop_limit(), p.ra_flags(), p.ra_router_lifetime(), p.ra_reachable_time());
            let _ = (p.ra_retrans_time(), p.na_flags(), p.target_addr(), p.body().len());
            for o in p.ndp_options() { let _ = o.map(|o| o.link_layer_addr()); }
            p.fill_checksum(&s, &d);
            prop_assert!(p.verify_checksum(&s, &d));
        }
        if let Ok(p) = Packet::new_checked(&b[..]) {
            let _ = Icmpv6Repr::parse(&p, &s, &d);
        }
    }
}

#[test]
fn zero_length_option_rejected() {
    let (s, d) = (Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST);
    let mut b = [0u8; 32];
    b[0] = 135;
    b[24] = 1; // source lladdr, length 0
    Packet::new_unchecked(&mut b[..]).fill_checksum(&s, &d);
    let p = Packet::new_checked(&b[..]).unwrap();
    assert_eq!(Icmpv6Repr::parse(&p, &s, &d), Err(Error::Malformed));
    assert_eq!(p.ndp_options().count(), 1);
    let mut b = [0u8; 30];
    b[0] = 135;
    b[24] = 1;
    b[25] = 1; // runs past the end
    Packet::new_unchecked(&mut b[..]).fill_checksum(&s, &d);
    let p = Packet::new_checked(&b[..]).unwrap();
    assert_eq!(Icmpv6Repr::parse(&p, &s, &d), Err(Error::Truncated));
    assert_eq!(Packet::new_checked(&b[..20]).err(), Some(Error::Truncated));
}
