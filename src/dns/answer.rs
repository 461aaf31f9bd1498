//! The DNS responder: parses one query and writes the answer from a zone, or
//! says the query must be forwarded upstream. Pure: no I/O, no clock, and no
//! allocation once the caller's output buffer has grown to its working size,
//! so data-plane workers call it per packet and fuzzing calls it per input.
//!
//! Which names are ours: names under the search domain, names below the
//! asking network, `NAME.NETWORK` and `tasks.NAME.NETWORK` of another
//! network of the table (NXDOMAIN, as that network's sandboxes are not
//! visible here; deeper names below it are the world's), single-label names, `tasks.LABEL`, and reverse names of the
//! network's subnet. As in aardvark-dns, names in a zone the switch serves
//! never go upstream: that would show the container topology to the host's
//! resolver and leave the sandbox waiting for an answer only the switch can
//! give. Those get an authoritative answer: NXDOMAIN when nothing exists at
//! or below the name, NODATA (NOERROR, no records) for an empty non-terminal
//! such as the search domain itself or `NETWORK`, since NXDOMAIN would tell
//! caches that the names below are gone too (RFC 8020). Anything else is
//! forwarded, or REFUSED on internal networks. RA is set on every answer of a
//! network that forwards, as on the forwarder's answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use domain::base::iana::{Class, Opcode, OptRcode, Rcode, Rtype};
use domain::base::{Message, MessageBuilder, Name, StaticCompressor};
use domain::rdata::{Aaaa, Ptr, Srv, A};

use super::records::{DnsSettings, NameRecord, Zone};

/// Size of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// Largest UDP answer without EDNS0 (RFC 1035).
pub const CLASSIC_UDP_LEN: u16 = 512;
/// The UDP payload size we advertise in EDNS0 answers.
pub const EDNS_PAYLOAD: u16 = 1232;
/// Room an OPT record takes in the additional section.
const OPT_LEN: usize = 11;

/// How the query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: answers are limited in size and truncated with TC.
    Udp {
        /// The largest UDP payload that fits the network's MTU.
        path_max: u16,
    },
    /// TCP: answers up to 65535 bytes.
    Tcp,
}

/// What the responder did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The answer is in the output buffer.
    Answered {
        /// Its response code.
        rcode: Rcode,
        /// It did not fit and was sent with TC set and no records.
        truncated: bool,
        /// The query could not be parsed (FORMERR/NOTIMP/BADVERS).
        malformed: bool,
    },
    /// Not a local name: forward it; the client accepts answers of at most
    /// `max_len` bytes.
    Forward {
        /// Largest answer for this client.
        max_len: u16,
    },
    /// Not worth an answer (too short for a header, or itself a response).
    Dropped,
}

/// The responder of one worker: holds the round-robin position.
#[derive(Debug, Default)]
pub struct Responder {
    rotation: usize,
}

/// A query name, lowercased, as dotted text without the root.
struct LowerName {
    buf: [u8; 256],
    len: usize,
    /// A label held a dot or the name overflowed: never a local name.
    odd: bool,
}

impl LowerName {
    fn from_labels<'a>(labels: impl Iterator<Item = &'a [u8]>) -> LowerName {
        let mut n = LowerName {
            buf: [0; 256],
            len: 0,
            odd: false,
        };
        for label in labels.filter(|l| !l.is_empty()) {
            let need = label.len() + usize::from(n.len > 0);
            if n.len + need > n.buf.len() || label.contains(&b'.') {
                n.odd = true;
                break;
            }
            if n.len > 0 {
                n.buf[n.len] = b'.';
                n.len += 1;
            }
            for &b in label {
                n.buf[n.len] = b.to_ascii_lowercase();
                n.len += 1;
            }
        }
        n
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// `name` without `.suffix` (or `Some(b"")` when equal), if it ends so.
fn strip_suffix<'a>(name: &'a [u8], suffix: &[u8]) -> Option<&'a [u8]> {
    if suffix.is_empty() {
        return None;
    }
    if name == suffix {
        return Some(&[]);
    }
    let cut = name.len().checked_sub(suffix.len() + 1)?;
    (name[cut] == b'.' && &name[cut + 1..] == suffix).then_some(&name[..cut])
}

/// The address a reverse name stands for.
fn reverse_addr(name: &[u8]) -> Option<IpAddr> {
    if let Some(rest) = strip_suffix(name, b"in-addr.arpa") {
        let mut octets = [0u8; 4];
        let mut n = 0;
        for part in rest.rsplit(|b| *b == b'.') {
            let v: u8 = std::str::from_utf8(part).ok()?.parse().ok()?;
            *octets.get_mut(n)? = v;
            n += 1;
        }
        return (n == 4).then(|| IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let rest = strip_suffix(name, b"ip6.arpa")?;
    let mut v: u128 = 0;
    let mut n = 0;
    for part in rest.rsplit(|b| *b == b'.') {
        let [d] = part else { return None };
        v = (v << 4) | (*d as char).to_digit(16)? as u128;
        n += 1;
    }
    (n == 32).then(|| IpAddr::V6(Ipv6Addr::from(v)))
}

/// Writes a header-only reply (no question) with `rcode` for `query` (at
/// least 4 bytes): for queries whose question cannot be trusted, or that
/// cannot be served. `recursion` sets RA (the network forwards).
pub fn header_reply(query: &[u8], rcode: Rcode, recursion: bool, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&query[..4]);
    out[2] = (query[2] & 0x79) | 0x80; // QR, keep opcode and RD
    out[3] = (rcode.to_int() & 0x0f) | if recursion { 0x80 } else { 0 };
    out.extend_from_slice(&[0; 8]);
}

/// What a local name answers with.
enum Local<'z> {
    /// Addresses of one name; `rotate` for round robin.
    Found(&'z NameRecord, bool),
    /// Reverse record: wire-format target.
    Ptr(&'z [u8]),
    /// An empty non-terminal: names exist below it, none at it (NODATA).
    Empty,
    /// Authoritative, but no such name.
    NxDomain,
}

impl Responder {
    /// Answers `query` (a DNS message) for the network whose zone is `zone`,
    /// writing the answer into `out` (cleared first).
    pub fn respond(
        &mut self,
        settings: &DnsSettings,
        zone: &Zone,
        query: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Outcome {
        if query.len() < HEADER_LEN || query[2] & 0x80 != 0 {
            return Outcome::Dropped;
        }
        let answered = |rcode, malformed| Outcome::Answered {
            rcode,
            truncated: false,
            malformed,
        };
        let Ok(msg) = Message::from_octets(query) else {
            return Outcome::Dropped;
        };
        if msg.header().opcode() != Opcode::QUERY {
            header_reply(query, Rcode::NOTIMP, zone.forward, out);
            return answered(Rcode::NOTIMP, true);
        }
        let question = match msg.sole_question() {
            Ok(q) if q.qclass() == Class::IN || q.qclass() == Class::ANY => q,
            _ => {
                header_reply(query, Rcode::FORMERR, zone.forward, out);
                return answered(Rcode::FORMERR, true);
            }
        };
        let opt = msg.opt();
        let max_len = match (transport, &opt) {
            (Transport::Tcp, _) => u16::MAX,
            (Transport::Udp { path_max }, Some(o)) => o
                .udp_payload_size()
                .clamp(CLASSIC_UDP_LEN, path_max.max(CLASSIC_UDP_LEN)),
            (Transport::Udp { .. }, None) => CLASSIC_UDP_LEN,
        };
        if opt.as_ref().is_some_and(|o| o.version() != 0) {
            return self.build(
                &msg,
                Build::BadVersion,
                settings,
                zone.forward,
                max_len,
                out,
            );
        }
        let qname = question.qname();
        let name = LowerName::from_labels(qname.iter().map(|l| l.as_slice()));
        let qtype = question.qtype();
        let local = if name.odd {
            None
        } else {
            find(settings, zone, name.as_bytes(), qtype)
        };
        match local {
            Some(local) => {
                let b = Build::Local {
                    local,
                    qtype,
                    edns: opt.is_some(),
                };
                self.build(&msg, b, settings, zone.forward, max_len, out)
            }
            None if zone.forward => Outcome::Forward { max_len },
            None => {
                let b = Build::Refused {
                    edns: opt.is_some(),
                };
                self.build(&msg, b, settings, zone.forward, max_len, out)
            }
        }
    }

    fn build(
        &mut self,
        msg: &Message<&[u8]>,
        what: Build<'_>,
        settings: &DnsSettings,
        recursion: bool,
        max_len: u16,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let limit = max_len as usize;
        let (rcode, edns) = match &what {
            Build::Local {
                local: Local::NxDomain,
                edns,
                ..
            } => (Rcode::NXDOMAIN, *edns),
            Build::Local { edns, .. } => (Rcode::NOERROR, *edns),
            Build::Refused { edns } => (Rcode::REFUSED, *edns),
            Build::BadVersion => (Rcode::NOERROR, true),
        };
        let reserve = if edns { OPT_LEN } else { 0 };
        let mut b = MessageBuilder::from_target(StaticCompressor::new(&mut *out))
            .unwrap_or_else(|never| match never {});
        b.set_push_limit(limit.saturating_sub(reserve));
        let Ok(mut ans) = b.start_answer(msg, rcode) else {
            // Even the question does not fit: a bare header with TC.
            header_reply(msg.as_slice(), rcode, recursion, out);
            out[2] |= 0x02;
            return Outcome::Answered {
                rcode,
                truncated: true,
                malformed: false,
            };
        };
        // Recursion is available where names that are not ours are forwarded.
        ans.header_mut().set_ra(recursion);
        let mut truncated = false;
        if let Build::Local { local, qtype, .. } = &what {
            let qtype = *qtype;
            ans.header_mut().set_aa(true);
            let ttl = settings.ttl;
            if let Ok(question) = msg.sole_question() {
                let qname = question.qname();
                let ok = match local {
                    Local::Found(rec, rotate) => {
                        let start = if *rotate { self.rotation } else { 0 };
                        self.rotation = self.rotation.wrapping_add(1);
                        push_records(&mut ans, qname, ttl, rec, qtype, start)
                    }
                    Local::Ptr(target) => {
                        if matches!(qtype, Rtype::PTR | Rtype::ANY) {
                            match Name::from_slice(target) {
                                Ok(t) => ans.push((qname, Class::IN, ttl, Ptr::new(t))).is_ok(),
                                Err(_) => true,
                            }
                        } else {
                            true
                        }
                    }
                    Local::NxDomain | Local::Empty => true,
                };
                if !ok {
                    truncated = true;
                    ans.rewind();
                    ans.header_mut().set_tc(true);
                }
            }
        }
        let mut add = ans.additional();
        if edns {
            add.set_push_limit(limit);
            let _ = add.opt(|o| {
                o.set_udp_payload_size(EDNS_PAYLOAD);
                if matches!(what, Build::BadVersion) {
                    o.set_rcode(OptRcode::BADVERS);
                }
                Ok(())
            });
        }
        let _ = add.finish();
        Outcome::Answered {
            rcode,
            truncated,
            malformed: matches!(what, Build::BadVersion),
        }
    }
}

/// What [`Responder::build`] writes.
enum Build<'z> {
    Local {
        local: Local<'z>,
        qtype: Rtype,
        edns: bool,
    },
    Refused {
        edns: bool,
    },
    BadVersion,
}

/// Pushes the records of `rec` that answer `qtype`, starting the address
/// lists at `start` (round robin). False if they did not fit.
fn push_records<T: domain::base::wire::Composer>(
    ans: &mut domain::base::message_builder::AnswerBuilder<T>,
    qname: &impl domain::base::ToName,
    ttl: u32,
    rec: &NameRecord,
    qtype: Rtype,
    start: usize,
) -> bool {
    let want = |t: Rtype| qtype == t || qtype == Rtype::ANY;
    if want(Rtype::A) {
        let n = rec.v4.len();
        for i in 0..n {
            let a = rec.v4[(start + i) % n];
            if ans.push((qname, Class::IN, ttl, A::new(a))).is_err() {
                return false;
            }
        }
    }
    if want(Rtype::AAAA) {
        let n = rec.v6.len();
        for i in 0..n {
            let a = rec.v6[(start + i) % n];
            if ans.push((qname, Class::IN, ttl, Aaaa::new(a))).is_err() {
                return false;
            }
        }
    }
    if want(Rtype::SRV) {
        let n = rec.targets.len();
        for i in 0..n {
            let (target, port) = &rec.targets[(start + i) % n];
            let Ok(t) = Name::from_slice(target) else {
                continue;
            };
            if ans
                .push((qname, Class::IN, ttl, Srv::new(0, 10, *port, t)))
                .is_err()
            {
                return false;
            }
        }
    }
    true
}

/// Looks `name` up in the zone; `None` if it is not ours.
fn find<'z>(
    settings: &DnsSettings,
    zone: &'z Zone,
    name: &[u8],
    qtype: Rtype,
) -> Option<Local<'z>> {
    if qtype == Rtype::PTR || reverse_addr(name).is_some() {
        if let Some(addr) = reverse_addr(name) {
            if let Some(target) = zone.ptr.get(&addr) {
                return Some(Local::Ptr(target));
            }
            return zone.owns(addr).then_some(Local::NxDomain);
        }
    }
    let (rest, authoritative) = match strip_suffix(name, settings.domain.as_bytes()) {
        Some(rest) => (rest, true),
        None => (name, !name.contains(&b'.')),
    };
    // `NAME.NETWORK` (also under the search domain).
    let candidates = [Some(rest), strip_suffix(rest, &zone.network)];
    for cand in candidates.into_iter().flatten() {
        if let Some(rec) = zone.lookup(cand) {
            return Some(Local::Found(rec, true));
        }
        if let Some(rec) = strip_prefix(cand, b"tasks").and_then(|n| zone.lookup(n)) {
            return Some(Local::Found(rec, false));
        }
    }
    // Below the asking network; the names the scheme makes below another
    // network of this daemon (`NAME.OTHER`, `tasks.NAME.OTHER`, whose
    // sandboxes this one must not see), but not deeper ones (`pkg.go.dev`
    // beside a network called `dev` is the world's); or `tasks.` of a single
    // label, which is ours as the label alone is.
    let below_network = rest.rsplit(|b| *b == b'.').next().is_some_and(|last| {
        let labels = rest.iter().filter(|b| **b == b'.').count() + 1;
        let scheme = labels == 2 || (labels == 3 && strip_prefix(rest, b"tasks").is_some());
        labels > 1 && (last == &*zone.network || (zone.is_network(last) && scheme))
    });
    let tasks_of_label = strip_prefix(rest, b"tasks").is_some_and(|n| !n.contains(&b'.'));
    if !(authoritative || below_network || tasks_of_label) {
        return None;
    }
    let empty_non_terminal = candidates.into_iter().flatten().any(|cand| {
        // The search domain or `NETWORK` itself, a parent of a dotted name,
        // or `tasks` above `tasks.NAME`.
        cand.is_empty() || zone.is_parent(cand) || (cand == b"tasks" && !zone.names.is_empty())
    });
    Some(if empty_non_terminal {
        Local::Empty
    } else {
        Local::NxDomain
    })
}

/// `name` without `prefix.`, if it starts so.
fn strip_prefix<'a>(name: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let rest = name.strip_prefix(prefix)?;
    rest.strip_prefix(b".").filter(|r| !r.is_empty())
}

#[cfg(test)]
pub(crate) mod tests;
