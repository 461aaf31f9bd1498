use std::str::FromStr;

use domain::base::iana::{Class, Opcode, Rcode, Rtype};
use domain::base::{Message, MessageBuilder, Name};
use domain::rdata::{Aaaa, Ptr, Srv, A};
use proptest::prelude::*;

use super::*;
use crate::dns::records::{self, DnsTable, EndpointRecord, NetworkRecords};
use crate::tables::topology::NetworkId;

const UDP: Transport = Transport::Udp { path_max: 1472 };

/// A query for `name` (id 0x1234, RD), with EDNS0 of that payload size.
pub(crate) fn query(name: &str, qtype: Rtype, edns: Option<u16>) -> Vec<u8> {
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(0x1234);
    b.header_mut().set_rd(true);
    let mut q = b.question();
    q.push((Name::<Vec<u8>>::from_str(name).unwrap(), qtype))
        .unwrap();
    match edns {
        Some(size) => {
            let mut a = q.additional();
            a.opt(|o| {
                o.set_udp_payload_size(size);
                Ok(())
            })
            .unwrap();
            a.finish()
        }
        None => q.finish(),
    }
}

struct Answer {
    outcome: Outcome,
    bytes: Vec<u8>,
}

impl Answer {
    fn msg(&self) -> Message<&[u8]> {
        Message::from_octets(&self.bytes[..]).unwrap()
    }
    fn rcode(&self) -> Rcode {
        self.msg().header().rcode()
    }
    fn a(&self) -> Vec<Ipv4Addr> {
        a_records(&self.bytes)
    }
}

/// The addresses of the A records in the answer section of `message`.
pub(crate) fn a_records(message: &[u8]) -> Vec<Ipv4Addr> {
    let m = Message::from_octets(message).unwrap();
    m.answer()
        .unwrap()
        .limit_to::<A>()
        .map(|r| r.unwrap().data().addr())
        .collect()
}

/// The addresses of the AAAA records in the answer section of `message`.
pub(crate) fn aaaa_records(message: &[u8]) -> Vec<Ipv6Addr> {
    let m = Message::from_octets(message).unwrap();
    m.answer()
        .unwrap()
        .limit_to::<Aaaa>()
        .map(|r| r.unwrap().data().addr())
        .collect()
}

fn ask(r: &mut Responder, net: u16, q: &[u8], t: Transport) -> Answer {
    ask_in(&records::sample(), r, net, q, t)
}

fn ask_in(table: &DnsTable, r: &mut Responder, net: u16, q: &[u8], t: Transport) -> Answer {
    let zone = table.zone(NetworkId(net)).unwrap();
    let mut out = Vec::new();
    let outcome = r.respond(&table.settings, zone, q, t, &mut out);
    Answer {
        outcome,
        bytes: out,
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

#[test]
fn names_resolve_bare_qualified_and_case_insensitive() {
    let mut r = Responder::default();
    for name in [
        "web1",
        "WEB1.Switchyard.Internal",
        "web1.front",
        "web1.FRONT.switchyard.internal.",
    ] {
        let a = ask(&mut r, 0, &query(name, Rtype::A, None), UDP);
        assert!(
            matches!(
                a.outcome,
                Outcome::Answered {
                    rcode: Rcode::NOERROR,
                    truncated: false,
                    ..
                }
            ),
            "{name}"
        );
        let m = a.msg();
        assert_eq!(m.header().id(), 0x1234);
        assert!(m.header().qr() && m.header().aa() && m.header().rd());
        assert_eq!(a.a(), [ip(2)], "{name}");
        let rec = m.answer().unwrap().next().unwrap().unwrap();
        assert_eq!(rec.ttl().as_secs(), 0);
    }
}

#[test]
fn services_rotate_and_tasks_list_all() {
    let mut r = Responder::default();
    let q = query("web", Rtype::A, None);
    let first: Vec<_> = (0..4).map(|_| ask(&mut r, 0, &q, UDP).a()).collect();
    assert!(first.iter().all(|a| a.len() == 2));
    assert_ne!(
        first[0][0], first[1][0],
        "round robin rotates the first address"
    );
    assert_eq!(first[0], first[2]);
    let tasks = ask(&mut r, 0, &query("tasks.web", Rtype::A, None), UDP);
    let tasks2 = ask(
        &mut r,
        0,
        &query("tasks.web.switchyard.internal", Rtype::A, None),
        UDP,
    );
    assert_eq!(tasks.a(), [ip(2), ip(3)]);
    assert_eq!(tasks2.a(), [ip(2), ip(3)]);
}

#[test]
fn nodata_nxdomain_and_scoping() {
    let mut r = Responder::default();
    let aaaa = ask(&mut r, 0, &query("web1", Rtype::AAAA, None), UDP);
    assert_eq!(
        aaaa.rcode(),
        Rcode::NOERROR,
        "IPv4-only name: NODATA, not forwarded"
    );
    assert_eq!(aaaa.msg().header_counts().ancount(), 0);
    let mx = ask(&mut r, 0, &query("web1", Rtype::MX, None), UDP);
    assert_eq!(mx.rcode(), Rcode::NOERROR);
    for name in ["db", "db.switchyard.internal", "nosuch.front"] {
        let a = ask(&mut r, 0, &query(name, Rtype::A, None), UDP);
        assert_eq!(a.rcode(), Rcode::NXDOMAIN, "{name} is not on network front");
        assert!(a.msg().header().aa());
    }
    assert_eq!(
        ask(&mut r, 2, &query("db", Rtype::A, None), UDP).a(),
        [ip(2)]
    );
    let a = ask(&mut r, 0, &query("tasks.nosuch", Rtype::A, None), UDP);
    assert_eq!(a.rcode(), Rcode::NXDOMAIN, "tasks. of a label is ours");
}

/// Names in the switch's own scheme that do not resolve are answered here,
/// NXDOMAIN with AA (and RA where the network forwards), never forwarded:
/// another network's names, `tasks.` of an unknown service, unknown names
/// below a network or the search domain.
#[test]
fn switch_names_that_do_not_resolve_never_go_upstream() {
    let mut r = Responder::default();
    // (network, whether it forwards, its name, another network with one of
    // that network's sandboxes).
    for (net, forwards, own, other, theirs) in [
        (0, true, "front", "back", "db"),
        (2, false, "back", "front", "web1"),
    ] {
        for name in [
            format!("{theirs}.{other}"),
            format!("{}.{}.", theirs.to_uppercase(), other.to_uppercase()),
            format!("nosuch.{other}"),
            format!("tasks.{theirs}.{other}"),
            format!("nosuch.{own}"),
            format!("a.b.{own}"),
            format!("tasks.nosuch.{own}"),
            format!("{theirs}.{other}.switchyard.internal"),
            "tasks.nosuch".into(),
            "Tasks.NoSuch.".into(),
            "nosuch.switchyard.internal".into(),
            "x.y.switchyard.internal".into(),
        ] {
            let name = name.as_str();
            for qtype in [Rtype::A, Rtype::AAAA, Rtype::SRV] {
                let a = ask(&mut r, net, &query(name, qtype, Some(1232)), UDP);
                assert!(
                    matches!(
                        a.outcome,
                        Outcome::Answered {
                            rcode: Rcode::NXDOMAIN,
                            truncated: false,
                            malformed: false,
                        }
                    ),
                    "{name} {qtype} on {net}: {:?}",
                    a.outcome
                );
                let h = a.msg().header();
                assert!(h.qr() && h.aa() && h.rd(), "{name}");
                assert_eq!(h.ra(), forwards, "{name} on {net}");
                assert_eq!(a.msg().header_counts().ancount(), 0);
                assert!(a.msg().opt().is_some(), "EDNS0 answered with EDNS0");
            }
        }
    }
    // A name that exists with IPv4 only: AAAA is NODATA, not NXDOMAIN.
    for name in ["web1.front", "tasks.web", "tasks.web1.front"] {
        let a = ask(&mut r, 0, &query(name, Rtype::AAAA, None), UDP);
        assert_eq!(a.rcode(), Rcode::NOERROR, "{name}");
        assert_eq!(a.msg().header_counts().ancount(), 0, "{name}");
    }
    // Real-world names keep going upstream, even when a label of theirs is
    // a network's name, as long as it is not the last.
    for name in [
        "example.com",
        "tasks.example.com",
        "web1.example",
        "front.example",
        "back.front.example",
        "switchyard.example",
    ] {
        let a = ask(&mut r, 0, &query(name, Rtype::A, None), UDP);
        assert!(
            matches!(a.outcome, Outcome::Forward { .. }),
            "{name}: {:?}",
            a.outcome
        );
    }
}

/// A network named like a top-level domain takes that domain over for every
/// sandbox of the daemon (README: pick network names that are not TLDs);
/// other domains are untouched.
#[test]
fn a_network_named_like_a_tld_shadows_it() {
    let net = |id: u16, name: &str| NetworkRecords {
        id: NetworkId(id),
        name: name.into(),
        forward: true,
        mtu: 1500,
        subnets: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, id as u8, 0)), 24)],
        endpoints: vec![EndpointRecord {
            name: format!("ep{id}"),
            aliases: vec![],
            ipv4: Some(Ipv4Addr::new(10, 0, id as u8, 2)),
            ipv6: None,
            srv_port: 0,
        }],
    };
    let table = DnsTable::build(
        records::DnsSettings::default(),
        &[net(0, "front"), net(1, "com")],
    );
    let mut r = Responder::default();
    let a = ask_in(&table, &mut r, 1, &query("ep1.com", Rtype::A, None), UDP);
    assert_eq!(a.a(), [Ipv4Addr::new(10, 0, 1, 2)]);
    for net in [0, 1] {
        let a = ask_in(
            &table,
            &mut r,
            net,
            &query("example.com", Rtype::A, None),
            UDP,
        );
        assert_eq!(a.rcode(), Rcode::NXDOMAIN, "from {net}");
        let a = ask_in(
            &table,
            &mut r,
            net,
            &query("example.org", Rtype::A, None),
            UDP,
        );
        assert!(matches!(a.outcome, Outcome::Forward { .. }), "from {net}");
    }
    // Deeper names below another network are not the scheme's: forwarded
    // from a sandbox of another network, ours below the asking one.
    for (net, local) in [(0, false), (1, true)] {
        let a = ask_in(
            &table,
            &mut r,
            net,
            &query("www.example.com", Rtype::A, None),
            UDP,
        );
        let forwarded = matches!(a.outcome, Outcome::Forward { .. });
        assert_eq!(forwarded, !local, "from {net}");
        let a = ask_in(
            &table,
            &mut r,
            net,
            &query("tasks.ep1.com", Rtype::A, None),
            UDP,
        );
        assert!(!matches!(a.outcome, Outcome::Forward { .. }), "from {net}");
    }
}

#[test]
fn other_names_forward_unless_internal() {
    let mut r = Responder::default();
    let a = ask(&mut r, 0, &query("example.com", Rtype::A, None), UDP);
    assert_eq!(a.outcome, Outcome::Forward { max_len: 512 });
    let a = ask(&mut r, 0, &query("example.com", Rtype::A, Some(4096)), UDP);
    assert_eq!(a.outcome, Outcome::Forward { max_len: 1472 });
    let a = ask(
        &mut r,
        0,
        &query("example.com", Rtype::A, None),
        Transport::Tcp,
    );
    assert_eq!(a.outcome, Outcome::Forward { max_len: u16::MAX });
    let a = ask(&mut r, 2, &query("example.com", Rtype::A, Some(1232)), UDP);
    assert_eq!(a.rcode(), Rcode::REFUSED, "internal networks never forward");
    assert!(a.msg().opt().is_some());
}

#[test]
fn reverse_names() {
    let mut r = Responder::default();
    let a = ask(
        &mut r,
        0,
        &query("2.0.0.10.in-addr.arpa", Rtype::PTR, None),
        UDP,
    );
    let m = a.msg();
    let ptr: Vec<_> = m
        .answer()
        .unwrap()
        .limit_to::<Ptr<_>>()
        .map(|r| r.unwrap().data().ptrdname().to_string())
        .collect();
    assert_eq!(ptr, ["web1.switchyard.internal"]);
    let a = ask(
        &mut r,
        0,
        &query("99.0.0.10.in-addr.arpa", Rtype::PTR, None),
        UDP,
    );
    assert_eq!(a.rcode(), Rcode::NXDOMAIN);
    let a = ask(
        &mut r,
        0,
        &query("8.8.8.8.in-addr.arpa", Rtype::PTR, None),
        UDP,
    );
    assert!(matches!(a.outcome, Outcome::Forward { .. }));
    assert_eq!(
        reverse_addr(b"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa"),
        Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)))
    );
    assert_eq!(reverse_addr(b"1.2.3.in-addr.arpa"), None);
    assert_eq!(reverse_addr(b"300.2.3.4.in-addr.arpa"), None);
}

#[test]
fn srv_and_aaaa() {
    let table = DnsTable::build(
        Default::default(),
        &[NetworkRecords {
            id: NetworkId(0),
            name: "n".into(),
            forward: true,
            mtu: 1500,
            subnets: vec![],
            endpoints: vec![EndpointRecord {
                name: "v6".into(),
                aliases: vec!["svc".into()],
                ipv4: None,
                ipv6: Some("fd00::5".parse().unwrap()),
                srv_port: 8080,
            }],
        }],
    );
    let mut r = Responder::default();
    let a = ask_in(&table, &mut r, 0, &query("v6", Rtype::AAAA, None), UDP);
    assert_eq!(
        aaaa_records(&a.bytes),
        ["fd00::5".parse::<Ipv6Addr>().unwrap()]
    );
    let a = ask_in(&table, &mut r, 0, &query("v6", Rtype::A, None), UDP);
    assert_eq!(
        (a.rcode(), a.a().len()),
        (Rcode::NOERROR, 0),
        "IPv6-only: NODATA for A"
    );
    let a = ask_in(&table, &mut r, 0, &query("svc", Rtype::SRV, None), UDP);
    let m = a.msg();
    let srv: Vec<_> = m
        .answer()
        .unwrap()
        .limit_to::<Srv<_>>()
        .map(|r| {
            let r = r.unwrap();
            (r.data().port(), r.data().target().to_string())
        })
        .collect();
    assert_eq!(srv, [(8080, "v6.switchyard.internal".to_string())]);
}

fn big_service(n: u8) -> DnsTable {
    DnsTable::build(
        Default::default(),
        &[NetworkRecords {
            id: NetworkId(0),
            name: "n".into(),
            forward: true,
            mtu: 1500,
            subnets: vec![],
            endpoints: (0..n)
                .map(|i| EndpointRecord {
                    name: format!("s{i}"),
                    aliases: vec!["big".into()],
                    ipv4: Some(ip(i)),
                    ipv6: None,
                    srv_port: 0,
                })
                .collect(),
        }],
    )
}

#[test]
fn large_answers_truncate_over_udp_and_fit_over_tcp() {
    let table = big_service(200);
    let mut r = Responder::default();
    let q = query("big", Rtype::A, None);
    let a = ask_in(&table, &mut r, 0, &q, UDP);
    assert!(matches!(
        a.outcome,
        Outcome::Answered {
            truncated: true,
            ..
        }
    ));
    assert!(a.msg().header().tc());
    assert_eq!(a.msg().header_counts().ancount(), 0);
    assert!(a.bytes.len() <= 512);
    let a = ask_in(&table, &mut r, 0, &query("big", Rtype::A, Some(4096)), UDP);
    assert!(a.msg().header().tc() && a.bytes.len() <= 1472);
    assert!(
        a.msg().opt().is_some(),
        "EDNS0 answered with OPT even when truncated"
    );
    let a = ask_in(&table, &mut r, 0, &q, Transport::Tcp);
    assert!(!a.msg().header().tc());
    assert_eq!(a.a().len(), 200);
    // 20 addresses fit 512 bytes thanks to name compression.
    let a = ask_in(&big_service(20), &mut r, 0, &q, UDP);
    assert_eq!(a.a().len(), 20);
}

#[test]
fn edns_is_echoed_and_bad_versions_refused() {
    let mut r = Responder::default();
    let a = ask(&mut r, 0, &query("web1", Rtype::A, Some(4096)), UDP);
    assert_eq!(a.msg().opt().unwrap().udp_payload_size(), EDNS_PAYLOAD);
    let mut q = query("web1", Rtype::A, Some(4096));
    // OPT TTL field: extended rcode, version, flags. Version is byte 1 of it.
    let n = q.len();
    q[n - 11 + 6] = 1;
    let a = ask(&mut r, 0, &q, UDP);
    assert!(matches!(
        a.outcome,
        Outcome::Answered {
            malformed: true,
            ..
        }
    ));
    let m = a.msg();
    assert_eq!(m.opt_rcode(), domain::base::iana::OptRcode::BADVERS);
    assert_eq!(m.header_counts().ancount(), 0);
}

#[test]
fn malformed_queries() {
    let mut r = Responder::default();
    let good = query("web1", Rtype::A, None);
    assert_eq!(ask(&mut r, 0, &good[..11], UDP).outcome, Outcome::Dropped);
    let mut response = good.clone();
    response[2] |= 0x80;
    assert_eq!(ask(&mut r, 0, &response, UDP).outcome, Outcome::Dropped);

    let mut opcode = good.clone();
    opcode[2] = (opcode[2] & 0x87) | (2 << 3);
    let a = ask(&mut r, 0, &opcode, UDP);
    assert_eq!(a.rcode(), Rcode::NOTIMP);
    assert_eq!(a.msg().header().opcode(), Opcode::STATUS);

    let formerr = |a: &Answer| {
        matches!(
            a.outcome,
            Outcome::Answered {
                rcode: Rcode::FORMERR,
                malformed: true,
                ..
            }
        ) && a.msg().header().id() == 0x1234
    };
    assert!(
        formerr(&ask(&mut r, 0, &good[..good.len() - 2], UDP)),
        "truncated"
    );
    let mut two = good.clone();
    two[5] = 2;
    assert!(
        formerr(&ask(&mut r, 0, &two, UDP)),
        "two questions, one present"
    );
    let mut huge = good.clone();
    huge[4] = 0xff;
    huge[5] = 0xff;
    assert!(formerr(&ask(&mut r, 0, &huge, UDP)), "huge count");
    let mut chaos = good.clone();
    let n = chaos.len();
    chaos[n - 1] = Class::CH.to_int() as u8;
    assert!(formerr(&ask(&mut r, 0, &chaos, UDP)), "wrong class");
    // A name that is a compression pointer to itself.
    let mut looped = good[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert!(formerr(&ask(&mut r, 0, &looped, UDP)), "compression loop");
    // Huge answer count after a good question: the question is still served.
    let mut extra = good.clone();
    extra[7] = 0xff;
    assert!(matches!(
        ask(&mut r, 0, &extra, UDP).outcome,
        Outcome::Answered { .. }
    ));
    // Still answering good queries.
    assert_eq!(ask(&mut r, 0, &good, UDP).a(), [ip(2)]);
}

#[test]
fn no_allocation_once_warm() {
    // The output buffer keeps its capacity; answering again does not grow it.
    let table = records::sample();
    let zone = table.zone(NetworkId(0)).unwrap();
    let mut r = Responder::default();
    let mut out = Vec::with_capacity(1500);
    let q = query("web", Rtype::A, Some(1232));
    r.respond(&table.settings, zone, &q, UDP, &mut out);
    let (ptr, cap) = (out.as_ptr(), out.capacity());
    for _ in 0..10 {
        r.respond(&table.settings, zone, &q, UDP, &mut out);
    }
    assert_eq!((out.as_ptr(), out.capacity()), (ptr, cap));
}

proptest! {
    #[test]
    fn any_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let table = records::sample();
        let mut r = Responder::default();
        let mut out = Vec::new();
        for net in [0u16, 2] {
            let zone = table.zone(NetworkId(net)).unwrap();
            let o = r.respond(&table.settings, zone, &b, UDP, &mut out);
            if let Outcome::Answered { .. } = o {
                prop_assert!(out.len() >= HEADER_LEN && out.len() <= 1472);
            }
        }
    }

    #[test]
    fn mutated_queries_never_panic(i in 0usize..40, v in any::<u8>(), edns in any::<bool>()) {
        let mut q = query("web.front", Rtype::A, edns.then_some(4096));
        let n = q.len();
        q[i % n] = v;
        let table = records::sample();
        let mut r = Responder::default();
        let mut out = Vec::new();
        let _ = r.respond(&table.settings, table.zone(NetworkId(0)).unwrap(), &q, UDP, &mut out);
    }
}

#[test]
fn empty_non_terminals_are_nodata_not_nxdomain() {
    // `api.v2` makes `v2` a parent with nothing of its own.
    let table = DnsTable::build(
        records::DnsSettings::default(),
        &[NetworkRecords {
            id: NetworkId(0),
            name: "Front".into(),
            forward: true,
            mtu: 1500,
            subnets: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 24)],
            endpoints: vec![EndpointRecord {
                name: "web1".into(),
                aliases: vec!["api.v2".into()],
                ipv4: Some(ip(2)),
                ipv6: None,
                srv_port: 0,
            }],
        }],
    );
    let mut r = Responder::default();
    let found = ask_in(
        &table,
        &mut r,
        0,
        &query("api.v2.front", Rtype::A, None),
        UDP,
    );
    assert_eq!(found.a(), [ip(2)]);
    // Names exist below each of these (RFC 8020: NXDOMAIN would deny them).
    for name in [
        "switchyard.internal",
        "Switchyard.Internal.",
        "front.switchyard.internal",
        "front",
        "FRONT",
        "v2",
        "v2.switchyard.internal",
        "v2.front",
        "v2.front.switchyard.internal",
        "tasks",
    ] {
        for qtype in [Rtype::A, Rtype::AAAA, Rtype::SOA] {
            let a = ask_in(&table, &mut r, 0, &query(name, qtype, None), UDP);
            assert!(
                matches!(
                    a.outcome,
                    Outcome::Answered {
                        rcode: Rcode::NOERROR,
                        truncated: false,
                        malformed: false,
                    }
                ),
                "{name} {qtype}: {:?}",
                a.outcome
            );
            let m = a.msg();
            assert!(m.header().aa(), "{name}");
            assert_eq!(m.header_counts().ancount(), 0, "{name}");
        }
    }
    // Nothing at or below these.
    for name in [
        "v3",
        "x.v2.switchyard.internal",
        "nosuch.front",
        "nosuch.switchyard.internal",
    ] {
        let a = ask_in(&table, &mut r, 0, &query(name, Rtype::A, None), UDP);
        assert_eq!(a.rcode(), Rcode::NXDOMAIN, "{name}");
    }
    // The search domain is an empty non-terminal on every network, the
    // network's own label is one only on that network.
    let mut r = Responder::default();
    let a = ask(
        &mut r,
        2,
        &query("switchyard.internal", Rtype::A, None),
        UDP,
    );
    assert_eq!(a.rcode(), Rcode::NOERROR);
    let a = ask(&mut r, 2, &query("back", Rtype::A, None), UDP);
    assert_eq!(a.rcode(), Rcode::NOERROR);
    let a = ask(&mut r, 2, &query("front", Rtype::A, None), UDP);
    assert_eq!(a.rcode(), Rcode::NXDOMAIN, "another network's label");
}

#[test]
fn ra_is_set_on_networks_that_forward_and_clear_on_internal_ones() {
    let mut r = Responder::default();
    for (net, forwards) in [(0, true), (2, false)] {
        let name = if forwards { "web1" } else { "db" };
        for q in [
            query(name, Rtype::A, None),
            query(name, Rtype::A, Some(1232)),
            query("nosuch.switchyard.internal", Rtype::A, None),
            query(name, Rtype::AAAA, None),
        ] {
            let a = ask(&mut r, net, &q, UDP);
            let h = a.msg().header();
            assert!(h.rd());
            assert_eq!(h.ra(), forwards, "network {net}: {}", h.rcode());
        }
        // Header-only answers too.
        let mut notify = query(name, Rtype::A, None);
        notify[2] |= 4 << 3;
        let a = ask(&mut r, net, &notify, UDP);
        assert_eq!(a.rcode(), Rcode::NOTIMP);
        assert_eq!(a.msg().header().ra(), forwards, "network {net}: NOTIMP");
    }
    let a = ask(&mut r, 2, &query("example.com", Rtype::A, None), UDP);
    assert_eq!(a.rcode(), Rcode::REFUSED);
    assert!(
        !a.msg().header().ra(),
        "an internal network offers no recursion"
    );
}

#[test]
fn longest_endpoint_name_is_one_whole_label_in_ptr_targets() {
    let longest = "a".repeat(crate::control::model::MAX_NAME_LEN);
    assert_eq!(longest.len(), 63, "a DNS label");
    assert!(crate::control::model::validate_name("endpoint", &longest).is_ok());
    assert!(crate::control::model::validate_name("endpoint", &"a".repeat(64)).is_err());
    let table = DnsTable::build(
        records::DnsSettings::default(),
        &[NetworkRecords {
            id: NetworkId(0),
            name: "front".into(),
            forward: true,
            mtu: 1500,
            subnets: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 24)],
            endpoints: vec![EndpointRecord {
                name: longest.clone(),
                aliases: vec![],
                ipv4: Some(ip(7)),
                ipv6: None,
                srv_port: 0,
            }],
        }],
    );
    let mut r = Responder::default();
    let q = query("7.0.0.10.in-addr.arpa", Rtype::PTR, None);
    let a = ask_in(&table, &mut r, 0, &q, UDP);
    let m = a.msg();
    let ptr: Vec<_> = m
        .answer()
        .unwrap()
        .limit_to::<Ptr<_>>()
        .map(|r| r.unwrap().data().ptrdname().to_string())
        .collect();
    assert_eq!(ptr, [format!("{longest}.switchyard.internal")]);
    let a = ask_in(&table, &mut r, 0, &query(&longest, Rtype::A, None), UDP);
    assert_eq!(a.a(), [ip(7)]);
}
