//! Stage `dns`: UDP queries to a network's gateway (its IPv4 or IPv6
//! address) on port 53. Local names
//! are answered right here, in the worker, by rewriting the query frame into
//! the answer (no syscall, no allocation); other names go to the forwarder
//! (REFUSED on internal networks). TCP segments to port 53 go to the gateway
//! stack, which serves DNS over TCP. Everything else passes untouched.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::stage::{Stage, StageContext};
use crate::dns::answer::{Outcome, Responder, Transport};
use crate::dns::{DnsService, ReplyRoute, DNS_PORT};
use crate::stats::{bump, WorkerCounters};
use crate::tables::topology::GatewayInfo;
use crate::wire::ethernet::EtherType;
use crate::wire::ip::IpView;
use crate::wire::udp_frame::{self, UdpFrameAddrs};
use crate::wire::virtio_net::VirtioNetHdr;
use crate::wire::{MacAddr, PROTO_TCP, PROTO_UDP};

/// IPv4 (20) + UDP (8): what an answer's payload must leave room for.
const IP_UDP_LEN: u16 = 28;
/// IPv6 (40) + UDP (8), the same over IPv6.
const IP6_UDP_LEN: u16 = 48;

/// The DNS stage of one worker.
pub struct Dns {
    service: Arc<DnsService>,
    responder: Responder,
    out: Vec<u8>,
}

impl Dns {
    /// A stage answering from `service`.
    pub fn new(service: Arc<DnsService>) -> Dns {
        Dns {
            service,
            responder: Responder::default(),
            out: Vec::with_capacity(u16::MAX as usize),
        }
    }
}

/// A UDP datagram to the gateway's port 53, located in the frame.
struct Query {
    client: SocketAddr,
    /// The gateway address it was sent to (same family as `client`).
    gateway: IpAddr,
    /// Payload range in the frame.
    start: usize,
    end: usize,
}

/// What a frame to the gateway's DNS is.
enum Located {
    /// A UDP query.
    Udp(Query),
    /// A TCP segment to port 53.
    Tcp,
}

/// Finds a DNS query to `gw` (its IPv4 or IPv6 address) in the frame; `Err`
/// for one that must be dropped, `Ok(None)` for any other frame.
fn locate(gw: &GatewayInfo, f: &Frame) -> Result<Option<Located>, DropReason> {
    if f.meta.dst != gw.mac {
        return Ok(None);
    }
    let b = f.data();
    let Some(ip) = IpView::parse(b, f.meta.l3_offset as usize) else {
        return Ok(None);
    };
    let to_gateway = match (f.meta.ethertype, ip.dst) {
        (EtherType::Ipv4, IpAddr::V4(dst)) => gw.ipv4 == Some(dst),
        (EtherType::Ipv6, IpAddr::V6(dst)) => gw.ipv6 == Some(dst),
        _ => false,
    };
    if !to_gateway {
        return Ok(None);
    }
    // Queries carry no IPv6 extension headers: the next header is UDP or TCP.
    let (proto, l4) = (ip.proto, ip.l4);
    if proto == PROTO_TCP {
        let port = b.get(l4 + 2..l4 + 4);
        return Ok((port == Some(&DNS_PORT.to_be_bytes()[..])).then_some(Located::Tcp));
    }
    if proto != PROTO_UDP {
        return Ok(None);
    }
    let Some(u) = b.get(l4..l4 + 8) else {
        return Err(DropReason::DnsMalformed);
    };
    if u16::from_be_bytes([u[2], u[3]]) != DNS_PORT {
        return Ok(None);
    }
    let udp_len = usize::from(u16::from_be_bytes([u[4], u[5]]));
    if !ip.header_ok || ip.fragment || udp_len < 8 || l4 + udp_len > ip.end {
        return Err(DropReason::DnsMalformed);
    }
    Ok(Some(Located::Udp(Query {
        client: SocketAddr::new(ip.src, u16::from_be_bytes([u[0], u[1]])),
        gateway: ip.dst,
        start: l4 + 8,
        end: l4 + udp_len,
    })))
}

/// Counts the outcome of a local answer.
fn count(c: &WorkerCounters, rcode: domain::base::iana::Rcode, truncated: bool, malformed: bool) {
    use domain::base::iana::Rcode;
    bump(&c.dns_answered, 1);
    if truncated {
        bump(&c.dns_truncated, 1);
    }
    if malformed {
        bump(&c.dns_formerr, 1);
    } else if rcode == Rcode::NXDOMAIN {
        bump(&c.dns_nxdomain, 1);
    } else if rcode == Rcode::REFUSED {
        bump(&c.dns_refused, 1);
    }
}

impl Dns {
    fn handle(&mut self, cx: &StageContext<'_>, gw: &GatewayInfo, f: &mut Frame) -> Option<Action> {
        let q = match locate(gw, f) {
            Ok(Some(Located::Udp(q))) => q,
            Ok(Some(Located::Tcp)) => return Some(Action::Punt),
            Ok(None) => return None,
            Err(reason) => return Some(Action::Drop(reason)),
        };
        bump(&cx.counters.dns_queries, 1);
        let table = self.service.table.load();
        let Some(zone) = table.zone(f.meta.network) else {
            return Some(Action::Drop(DropReason::GatewayUnhandled));
        };
        let headers = if q.gateway.is_ipv4() {
            IP_UDP_LEN
        } else {
            IP6_UDP_LEN
        };
        let path_max = zone.mtu.saturating_sub(headers);
        let gw_addr = SocketAddr::new(q.gateway, DNS_PORT);
        let query = &f.data()[q.start..q.end];
        let outcome = self.responder.respond(
            &table.settings,
            zone,
            query,
            Transport::Udp { path_max },
            &mut self.out,
        );
        match outcome {
            Outcome::Answered {
                rcode,
                truncated,
                malformed,
            } => {
                count(cx.counters, rcode, truncated, malformed);
                let addrs = UdpFrameAddrs {
                    src_mac: gw.mac,
                    dst_mac: f.meta.src,
                    src: gw_addr,
                    dst: q.client,
                };
                Some(write_answer(f, &addrs, &self.out))
            }
            // A trace shows the decision without asking the upstream.
            Outcome::Forward { .. } if cx.dry_run => Some(Action::Consumed),
            Outcome::Forward { max_len } => {
                let route =
                    ReplyRoute::udp(f.meta.in_port, (gw.mac, gw_addr), (f.meta.src, q.client));
                let accepted = self
                    .service
                    .forwarder
                    .get()
                    .is_some_and(|fw| fw.submit(query, route, max_len));
                if accepted {
                    bump(&cx.counters.dns_forwarded, 1);
                    Some(Action::Consumed)
                } else {
                    Some(Action::Drop(DropReason::DnsForwardFull))
                }
            }
            Outcome::Dropped => Some(Action::Drop(DropReason::DnsMalformed)),
        }
    }
}

/// Replaces the frame's content with `payload` from the gateway to the client.
fn write_answer(f: &mut Frame, addrs: &UdpFrameAddrs, payload: &[u8]) -> Action {
    match udp_frame::write(f.receive_space(), addrs, payload) {
        Ok(len) => {
            f.set_len(len);
            f.vnet = VirtioNetHdr::NONE;
            Action::Output(f.meta.in_port)
        }
        Err(_) => Action::Drop(DropReason::TooBig),
    }
}

impl Stage for Dns {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn process(&mut self, cx: &mut StageContext<'_>, frames: &mut [Frame]) {
        for f in frames.iter_mut() {
            if f.meta.action.is_final() || f.meta.dst == MacAddr::BROADCAST {
                continue;
            }
            let Some(gw) = cx
                .topo
                .network(f.meta.network)
                .and_then(|n| n.gateway.as_ref())
            else {
                continue;
            };
            if let Some(action) = self.handle(cx, gw, f) {
                f.meta.action = action;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use domain::base::iana::Rtype;

    use super::*;
    use crate::dns::answer::tests::{a_records, aaaa_records, query};
    use crate::pipeline::nat::tests::{topology, GW6, GW_MAC, ME6, SANDBOX};
    use crate::ports::PortId;
    use crate::tables::topology::NetworkId;

    const ME4: [u8; 4] = [10, 0, 0, 2];
    const GW4: [u8; 4] = [10, 0, 0, 1];

    /// Network 0's zone: `web1`, dual-stack.
    fn service() -> Arc<DnsService> {
        use crate::dns::records::{DnsSettings, DnsTable, EndpointRecord, NetworkRecords};
        let net = NetworkRecords {
            id: NetworkId(0),
            name: "front".into(),
            forward: true,
            mtu: 1500,
            subnets: vec![
                (IpAddr::V4(Ipv4Addr::from(GW4)), 24),
                (IpAddr::V6(Ipv6Addr::from(GW6)), 64),
            ],
            endpoints: vec![EndpointRecord {
                name: "web1".into(),
                aliases: vec![],
                ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
                ipv6: Some("fd00::5".parse().unwrap()),
                srv_port: 0,
            }],
        };
        let s = DnsService::new(DnsSettings::default());
        s.table
            .store(Arc::new(DnsTable::build(DnsSettings::default(), &[net])));
        s
    }

    /// Runs the stage over one frame from the sandbox's port 3.
    fn run(bytes: &[u8]) -> Frame {
        let mut frames = [Frame::parsed(bytes, PortId(3))];
        crate::pipeline::stage::run_alone(&mut Dns::new(service()), &topology(false), &mut frames);
        let [f] = frames;
        f
    }

    fn v4() -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
        etherparse::PacketBuilder::ethernet2(SANDBOX.0, GW_MAC.0).ipv4(ME4, GW4, 64)
    }

    fn v6() -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
        etherparse::PacketBuilder::ethernet2(SANDBOX.0, GW_MAC.0).ipv6(ME6, GW6, 64)
    }

    /// The answer in `f`, checked to be a UDP datagram from `gw`:53 to
    /// `me`:40000 with a correct checksum.
    fn answer(f: &Frame, gw: IpAddr, me: IpAddr) -> Vec<u8> {
        assert_eq!(f.meta.action, Action::Output(PortId(3)));
        let p = etherparse::SlicedPacket::from_ethernet(f.data()).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = &p.transport else {
            panic!("not udp")
        };
        assert_eq!((u.source_port(), u.destination_port()), (53, 40000));
        let sum = match (&p.net, gw, me) {
            (Some(etherparse::NetSlice::Ipv4(ip)), IpAddr::V4(g), IpAddr::V4(m)) => {
                let h = ip.header();
                assert_eq!((h.source_addr(), h.destination_addr()), (g, m));
                u.to_header()
                    .calc_checksum_ipv4_raw(g.octets(), m.octets(), u.payload())
                    .unwrap()
            }
            (Some(etherparse::NetSlice::Ipv6(ip)), IpAddr::V6(g), IpAddr::V6(m)) => {
                let h = ip.header();
                assert_eq!((h.source_addr(), h.destination_addr()), (g, m));
                u.to_header()
                    .calc_checksum_ipv6_raw(g.octets(), m.octets(), u.payload())
                    .unwrap()
            }
            _ => panic!("wrong family"),
        };
        assert_eq!(u.checksum(), sum);
        u.payload().to_vec()
    }

    #[test]
    fn queries_to_either_gateway_address_are_answered_in_their_family() {
        let (gw6, me6) = (IpAddr::from(GW6), IpAddr::from(ME6));
        let mut b = Vec::new();
        v6().udp(40000, 53)
            .write(&mut b, &query("web1", Rtype::AAAA, None))
            .unwrap();
        let f = run(&b);
        let a = answer(&f, gw6, me6);
        assert_eq!(&a[..2], &0x1234u16.to_be_bytes()[..], "the query's id");
        assert_eq!(aaaa_records(&a), ["fd00::5".parse::<Ipv6Addr>().unwrap()]);

        // An A query over IPv6, and the same over IPv4.
        for (bytes, gw, me) in [
            (v6(), gw6, me6),
            (v4(), IpAddr::from(GW4), IpAddr::from(ME4)),
        ]
        .map(|(step, gw, me)| {
            let mut b = Vec::new();
            step.udp(40000, 53)
                .write(&mut b, &query("WEB1", Rtype::A, None))
                .unwrap();
            (b, gw, me)
        }) {
            let a = answer(&run(&bytes), gw, me);
            assert_eq!(a_records(&a), [Ipv4Addr::new(10, 0, 0, 5)]);
        }
    }

    /// Counts what it is handed.
    struct Recording(std::sync::atomic::AtomicUsize);

    impl crate::dns::QueryForwarder for Recording {
        fn submit(&self, _query: &[u8], _reply: ReplyRoute, _max_len: u16) -> bool {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            true
        }
    }

    #[test]
    fn other_names_are_forwarded_except_in_a_trace() {
        let service = service();
        let fw = Arc::new(Recording(Default::default()));
        assert!(service.forwarder.set(fw.clone()).is_ok());
        let mut b = Vec::new();
        v4().udp(40000, 53)
            .write(&mut b, &query("example.org", Rtype::A, None))
            .unwrap();
        let mut stage = Dns::new(service);
        let topo = topology(false);
        for dry_run in [false, true] {
            let mut frames = [Frame::parsed(&b, PortId(3))];
            let mut mac = crate::tables::mac::MacTable::new(Default::default(), 16);
            let counters = crate::stats::WorkerCounters::default();
            let mut cx = StageContext {
                now: 0,
                topo: &topo,
                mac: &mut mac,
                learned: &mut Vec::new(),
                counters: &counters,
                dry_run,
            };
            stage.process(&mut cx, &mut frames);
            assert_eq!(frames[0].meta.action, Action::Consumed);
        }
        assert_eq!(
            fw.0.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the trace sent nothing"
        );
    }

    #[test]
    fn tcp_to_port_53_goes_to_the_stack_and_other_traffic_passes() {
        let mut tcp = Vec::new();
        v6().tcp(40000, 53, 1, 1000).write(&mut tcp, &[]).unwrap();
        assert_eq!(run(&tcp).meta.action, Action::Punt);
        let mut other = Vec::new();
        v6().udp(40000, 5353).write(&mut other, b"x").unwrap();
        assert_eq!(run(&other).meta.action, Action::Continue);
        // To another IPv6 address: not ours.
        let mut far = Vec::new();
        let elsewhere = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        etherparse::PacketBuilder::ethernet2(SANDBOX.0, GW_MAC.0)
            .ipv6(ME6, elsewhere, 64)
            .udp(40000, 53)
            .write(&mut far, &query("web1", Rtype::A, None))
            .unwrap();
        assert_eq!(run(&far).meta.action, Action::Continue);
    }

    #[test]
    fn a_datagram_longer_than_its_ipv6_packet_is_dropped() {
        let mut b = Vec::new();
        v6().udp(40000, 53)
            .write(&mut b, &query("web1", Rtype::A, None))
            .unwrap();
        // IPv6 payload length two bytes short of the UDP length.
        let len = u16::from_be_bytes([b[18], b[19]]) - 2;
        b[18..20].copy_from_slice(&len.to_be_bytes());
        assert_eq!(run(&b).meta.action, Action::Drop(DropReason::DnsMalformed));
    }
}
