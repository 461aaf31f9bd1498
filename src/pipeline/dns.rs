//! Stage `dns`: UDP queries to a network's gateway on port 53. Local names
//! are answered right here, in the worker, by rewriting the query frame into
//! the answer (no syscall, no allocation); other names go to the forwarder
//! (REFUSED on internal networks). TCP segments to port 53 go to the gateway
//! stack, which serves DNS over TCP. Everything else passes untouched.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use super::drop::DropReason;
use super::frame::{Action, Frame};
use super::stage::{Stage, StageContext};
use crate::dns::answer::{Outcome, Responder, Transport};
use crate::dns::{DnsService, ReplyRoute, DNS_PORT};
use crate::stats::{bump, WorkerCounters};
use crate::tables::topology::GatewayInfo;
use crate::wire::ethernet::EtherType;
use crate::wire::udp_frame::{self, UdpFrameAddrs};
use crate::wire::virtio_net::VirtioNetHdr;
use crate::wire::MacAddr;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// IPv4 (20) + UDP (8): what the answer's payload must leave room for.
const IP_UDP_LEN: u16 = 28;

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
    client: SocketAddrV4,
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

/// Finds a DNS query to `gw` in the frame; `Err` for one that must be
/// dropped, `Ok(None)` for any other frame.
fn locate(gw: &GatewayInfo, f: &Frame) -> Result<Option<Located>, DropReason> {
    let Some(gw4) = gw.ipv4 else { return Ok(None) };
    if f.meta.dst != gw.mac || f.meta.ethertype != EtherType::Ipv4 {
        return Ok(None);
    }
    let b = f.data();
    let l3 = f.meta.l3_offset as usize;
    let Some(ip) = b.get(l3..l3 + 20) else {
        return Ok(None);
    };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip[16..20] != gw4.octets() {
        return Ok(None);
    }
    if ip[9] == PROTO_TCP {
        let port = b.get(l3 + ihl + 2..l3 + ihl + 4);
        return Ok((port == Some(&DNS_PORT.to_be_bytes()[..])).then_some(Located::Tcp));
    }
    if ip[9] != PROTO_UDP {
        return Ok(None);
    }
    let udp = l3 + ihl;
    let Some(u) = b.get(udp..udp + 8) else {
        return Err(DropReason::DnsMalformed);
    };
    if u16::from_be_bytes([u[2], u[3]]) != DNS_PORT {
        return Ok(None);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let udp_len = usize::from(u16::from_be_bytes([u[4], u[5]]));
    if ihl < 20 || frag & 0x3fff != 0 || udp_len < 8 || udp + udp_len > (l3 + total).min(b.len()) {
        return Err(DropReason::DnsMalformed);
    }
    Ok(Some(Located::Udp(Query {
        client: SocketAddrV4::new(
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            u16::from_be_bytes([u[0], u[1]]),
        ),
        start: udp + 8,
        end: udp + udp_len,
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
        let path_max = zone.mtu.saturating_sub(IP_UDP_LEN);
        let gw_addr = SocketAddrV4::new(gw.ipv4?, DNS_PORT);
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
                    src: gw_addr.into(),
                    dst: q.client.into(),
                };
                Some(write_answer(f, &addrs, &self.out))
            }
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
