//! DNS messages as the forwarder sees them: checks client queries, recognises
//! the upstream reply that belongs to a query, and builds every answer the
//! forwarder sends. No I/O; no input makes it panic.

use domain::base::iana::{Opcode, Rcode};
use domain::base::name::ParsedName;
use domain::base::{Header, HeaderCounts, Message};

/// Length of the DNS header.
pub const HEADER_LEN: usize = 12;
/// UDP payload size advertised in the OPT record of answers the forwarder
/// makes itself (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Length of a question's type and class fields.
const TYPE_CLASS_LEN: usize = 4;
/// Largest UDP answer to a query without EDNS0, and the least an EDNS0
/// payload size means (RFC 6891 6.2.5).
const CLASSIC_UDP_LEN: u16 = 512;

/// What makes two queries the same question for merging: the lowercase
/// name, type, class, and the header and EDNS bits that change what an
/// upstream answers (RD, CD, DO).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueryKey {
    /// Question name in uncompressed wire form, ASCII lowercase.
    name: Box<[u8]>,
    qtype: u16,
    qclass: u16,
    rd: bool,
    cd: bool,
    dnssec_ok: bool,
}

/// A client query that may be forwarded.
#[derive(Debug, Clone)]
pub struct ClientQuery {
    /// The client's transaction ID.
    pub id: u16,
    /// The question, for merging and for checking replies.
    pub key: QueryKey,
    /// The question section as the client wrote it (name case kept).
    pub question: Box<[u8]>,
    /// `Some(DO bit)` if the query carried an EDNS0 OPT record.
    pub edns_do: Option<bool>,
    /// The largest UDP answer the query asks for: 512, or its EDNS0 payload
    /// size if larger. An upstream truncates its UDP answer to this query
    /// at this size.
    pub udp_size: u16,
}

/// Why a client query is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Fewer bytes than a DNS header: nothing to answer to.
    #[error("shorter than a DNS header")]
    TooShort,
    /// The QR bit is set.
    #[error("a response, not a query")]
    Response,
    /// Only standard queries are forwarded.
    #[error("opcode {0} is not QUERY")]
    Opcode(u8),
    /// Exactly one question is required.
    #[error("{0} questions instead of one")]
    QuestionCount(u16),
    /// The question does not parse.
    #[error("the question does not parse")]
    Question,
    /// The question name uses a compression pointer, which cannot be valid
    /// in the first name of a message.
    #[error("the question name is compressed")]
    CompressedName,
}

impl QueryError {
    /// The rcode to answer with, or `None` to drop the query silently.
    pub fn rcode(self) -> Option<Rcode> {
        match self {
            QueryError::TooShort => None,
            QueryError::Opcode(_) => Some(Rcode::NOTIMP),
            _ => Some(Rcode::FORMERR),
        }
    }
}

/// Lowercase uncompressed wire form of a parsed name.
fn lowercase_wire(name: &ParsedName<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(usize::from(name_len(name)));
    for label in name.iter() {
        let bytes = label.as_slice();
        // Labels are at most 63 bytes long: domain rejects longer ones.
        out.push(bytes.len() as u8);
        out.extend(bytes.iter().map(u8::to_ascii_lowercase));
    }
    out
}

fn name_len(name: &ParsedName<&[u8]>) -> u16 {
    name.iter().map(|l| l.as_slice().len() as u16 + 1).sum()
}

/// Checks a client query and extracts what the forwarder needs.
pub fn parse_query(bytes: &[u8]) -> Result<ClientQuery, QueryError> {
    let msg = Message::from_slice(bytes).map_err(|_| QueryError::TooShort)?;
    let header = msg.header();
    if header.qr() {
        return Err(QueryError::Response);
    }
    if header.opcode() != Opcode::QUERY {
        return Err(QueryError::Opcode(header.opcode().to_int()));
    }
    let qdcount = msg.header_counts().qdcount();
    if qdcount != 1 {
        return Err(QueryError::QuestionCount(qdcount));
    }
    let question = msg.sole_question().map_err(|_| QueryError::Question)?;
    let name = lowercase_wire(question.qname());
    let raw_end = HEADER_LEN + name.len() + TYPE_CLASS_LEN;
    let raw = bytes
        .get(HEADER_LEN..raw_end)
        .ok_or(QueryError::CompressedName)?;
    if question.qname().is_compressed() || !raw[..name.len()].eq_ignore_ascii_case(&name) {
        return Err(QueryError::CompressedName);
    }
    let opt = msg.opt();
    let edns_do = opt.as_ref().map(|opt| opt.dnssec_ok());
    let udp_size = opt
        .map_or(CLASSIC_UDP_LEN, |opt| opt.udp_payload_size())
        .max(CLASSIC_UDP_LEN);
    Ok(ClientQuery {
        id: header.id(),
        key: QueryKey {
            name: name.into_boxed_slice(),
            qtype: question.qtype().to_int(),
            qclass: question.qclass().to_int(),
            rd: header.rd(),
            cd: header.cd(),
            dnssec_ok: edns_do.unwrap_or(false),
        },
        question: raw.into(),
        edns_do,
        udp_size,
    })
}

/// An answer the forwarder makes itself (SERVFAIL, FORMERR, NOTIMP): the
/// query's ID, opcode, RD and CD, the given `question` bytes (empty for none)
/// and, if `edns_do` is `Some`, an OPT record echoing the DO bit. `None` if
/// `query` is shorter than a header.
pub fn error_answer(
    query: &[u8],
    rcode: Rcode,
    question: &[u8],
    edns_do: Option<bool>,
) -> Option<Vec<u8>> {
    let query_header = *Header::for_message_slice(query.get(..HEADER_LEN)?);
    let mut out = Vec::with_capacity(HEADER_LEN + question.len() + 11);
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(question);
    let header = Header::for_message_slice_mut(&mut out);
    header.set_id(query_header.id());
    header.set_qr(true);
    header.set_opcode(query_header.opcode());
    header.set_rd(query_header.rd());
    header.set_cd(query_header.cd());
    header.set_ra(true);
    header.set_rcode(rcode);
    let mut counts = HeaderCounts::new();
    counts.set_qdcount(u16::from(!question.is_empty()));
    if let Some(dnssec_ok) = edns_do {
        counts.set_arcount(1);
        let [size_hi, size_lo] = EDNS_PAYLOAD.to_be_bytes();
        let flags_hi = if dnssec_ok { 0x80 } else { 0 };
        // Root owner, type OPT (41), class = payload size, TTL = extended
        // rcode 0, version 0, flags; no options.
        out.extend_from_slice(&[0, 0, 41, size_hi, size_lo, 0, 0, flags_hi, 0, 0, 0]);
    }
    HeaderCounts::for_message_slice_mut(&mut out).set(counts);
    Some(out)
}

/// An upstream reply that answers the query it was checked against.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    bytes: &'a [u8],
    header: [u8; HEADER_LEN],
}

impl<'a> Reply<'a> {
    /// `Some` if `bytes` is a response with transaction ID `id` to the
    /// question `key` (name compared case-insensitively); `None` means the
    /// datagram must be discarded.
    pub fn check(bytes: &'a [u8], id: u16, key: &QueryKey) -> Option<Reply<'a>> {
        let header: [u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        let msg = Message::from_slice(bytes).ok()?;
        if !msg.header().qr() || msg.header().id() != id {
            return None;
        }
        let question = msg.sole_question().ok()?;
        let same = question.qtype().to_int() == key.qtype
            && question.qclass().to_int() == key.qclass
            && *lowercase_wire(question.qname()) == *key.name;
        same.then_some(Reply { bytes, header })
    }

    /// The reply's rcode.
    pub fn rcode(&self) -> Rcode {
        Header::for_message_slice(&self.header).rcode()
    }

    /// True if the upstream truncated the reply (TC): the whole answer only
    /// comes over TCP.
    pub fn truncated(&self) -> bool {
        Header::for_message_slice(&self.header).tc()
    }

    /// True if another upstream should be asked instead (SERVFAIL, REFUSED).
    pub fn should_fail_over(&self) -> bool {
        matches!(self.rcode(), Rcode::SERVFAIL | Rcode::REFUSED)
    }

    /// The answer for one client: the reply with the client's `id` and its
    /// `question` bytes (restoring its name case), or, if longer than
    /// `max_len`, the header with TC set and only the question.
    pub fn answer_for(&self, id: u16, question: &[u8], max_len: u16) -> Vec<u8> {
        let mut out;
        if self.bytes.len() > usize::from(max_len) {
            out = Vec::with_capacity(HEADER_LEN + question.len());
            out.extend_from_slice(&self.header);
            out.extend_from_slice(question);
            Header::for_message_slice_mut(&mut out).set_tc(true);
            let mut counts = HeaderCounts::new();
            counts.set_qdcount(1);
            HeaderCounts::for_message_slice_mut(&mut out).set(counts);
        } else {
            out = self.bytes.to_vec();
            if let Some(q) = out.get_mut(HEADER_LEN..HEADER_LEN + question.len()) {
                if q.eq_ignore_ascii_case(question) {
                    q.copy_from_slice(question);
                }
            }
        }
        Header::for_message_slice_mut(&mut out).set_id(id);
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use domain::base::{MessageBuilder, Name, Rtype};
    use proptest::prelude::*;
    use std::str::FromStr;

    /// A query for `name` (type A), optionally with an OPT record.
    pub(crate) fn query(id: u16, name: &str, edns_do: Option<bool>) -> Vec<u8> {
        let mut b = MessageBuilder::new_vec();
        b.header_mut().set_id(id);
        b.header_mut().set_rd(true);
        let mut q = b.question();
        let name = Name::<Vec<u8>>::from_str(name).expect("test name");
        q.push((&name, Rtype::A)).expect("push question");
        match edns_do {
            None => q.finish(),
            Some(dnssec_ok) => {
                let mut add = q.additional();
                add.opt(|o| {
                    o.set_udp_payload_size(1232);
                    o.set_dnssec_ok(dnssec_ok);
                    Ok(())
                })
                .expect("push opt");
                add.finish()
            }
        }
    }

    #[test]
    fn parses_a_query_and_keys_it_case_insensitively() {
        let a = parse_query(&query(7, "Example.COM.", None)).expect("valid");
        let b = parse_query(&query(8, "example.com.", None)).expect("valid");
        assert_eq!(a.id, 7);
        assert_eq!(a.key, b.key);
        assert_eq!(&a.question[..13], b"\x07Example\x03COM\x00");
        assert_eq!(a.edns_do, None);
        assert_eq!(a.udp_size, 512, "no EDNS0: 512");
        let c = parse_query(&query(9, "example.com.", Some(true))).expect("valid");
        assert_eq!(c.edns_do, Some(true));
        assert_eq!(c.udp_size, 1232, "the EDNS0 payload size");
        assert_ne!(c.key, b.key, "DO bit is part of the key");
    }

    #[test]
    fn rejects_malformed_queries() {
        assert_eq!(parse_query(&[0; 11]).err(), Some(QueryError::TooShort));
        let mut q = query(1, "a.example.", None);
        q[2] |= 0x80;
        assert_eq!(parse_query(&q).err(), Some(QueryError::Response));
        let mut q = query(1, "a.example.", None);
        q[2] |= 2 << 3; // opcode STATUS
        assert_eq!(parse_query(&q).err(), Some(QueryError::Opcode(2)));
        assert_eq!(QueryError::Opcode(2).rcode(), Some(Rcode::NOTIMP));
        let mut q = query(1, "a.example.", None);
        q[5] = 2;
        assert_eq!(parse_query(&q).err(), Some(QueryError::QuestionCount(2)));
        let q = query(1, "a.example.", None);
        assert_eq!(parse_query(&q[..15]).err(), Some(QueryError::Question));
        // Name is a pointer into the header.
        let mut q = q[..HEADER_LEN].to_vec();
        q.extend_from_slice(&[0xc0, 0x00, 0, 1, 0, 1]);
        assert!(parse_query(&q).is_err());
    }

    #[test]
    fn error_answer_echoes_id_question_and_edns() {
        let q = query(0xbeef, "a.example.", Some(true));
        let parsed = parse_query(&q).expect("valid");
        let ans =
            error_answer(&q, Rcode::SERVFAIL, &parsed.question, parsed.edns_do).expect("answer");
        let msg = Message::from_slice(&ans[..]).expect("parses");
        assert_eq!(msg.header().id(), 0xbeef);
        assert!(msg.header().qr() && msg.header().rd());
        assert_eq!(msg.header().rcode(), Rcode::SERVFAIL);
        assert_eq!(msg.header_counts().qdcount(), 1);
        assert!(msg.opt().expect("opt").dnssec_ok());
        let bare = error_answer(&q[..HEADER_LEN], Rcode::FORMERR, &[], None).expect("answer");
        assert_eq!(bare.len(), HEADER_LEN);
        assert_eq!(error_answer(&q[..5], Rcode::FORMERR, &[], None), None);
    }

    #[test]
    fn reply_check_and_truncation() {
        let q = query(1, "WWW.example.", None);
        let parsed = parse_query(&q).expect("valid");
        let msg = Message::from_slice(&q[..]).expect("query");
        let reply = MessageBuilder::new_vec()
            .start_answer(msg, Rcode::NOERROR)
            .expect("answer")
            .finish();
        assert!(Reply::check(&reply, 2, &parsed.key).is_none(), "wrong id");
        assert!(Reply::check(&q, 1, &parsed.key).is_none(), "not a response");
        let other = parse_query(&query(1, "xyz.example.", None)).expect("valid");
        assert!(Reply::check(&reply, 1, &other.key).is_none(), "wrong name");
        let ok = Reply::check(&reply, 1, &parsed.key).expect("matches");
        assert!(!ok.should_fail_over());
        assert!(!ok.truncated());
        let full = ok.answer_for(99, &parsed.question, 512);
        assert_eq!(u16::from_be_bytes([full[0], full[1]]), 99);
        assert_eq!(full[2..], reply[2..]);
        let tc = ok.answer_for(5, &parsed.question, 10);
        let m = Message::from_slice(&tc[..]).expect("tc parses");
        assert!(m.header().tc());
        assert_eq!(m.header().id(), 5);
        assert_eq!(tc.len(), HEADER_LEN + parsed.question.len());
        assert!(Reply::check(&tc, 5, &parsed.key)
            .expect("matches")
            .truncated());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(q) = parse_query(&bytes) {
                let _ = error_answer(&bytes, Rcode::SERVFAIL, &q.question, q.edns_do);
                if let Some(r) = Reply::check(&bytes, q.id, &q.key) {
                    let _ = r.answer_for(1, &q.question, 20);
                }
            }
            let _ = error_answer(&bytes, Rcode::FORMERR, &[], None);
        }

        #[test]
        fn mutated_queries_never_panic(at in 0usize..64, xor in 1u8..=255, cut in 0usize..64) {
            let mut q = query(3, "mutated.example.", Some(false));
            let i = at % q.len();
            q[i] ^= xor;
            q.truncate(q.len().saturating_sub(cut % 8));
            if let Ok(parsed) = parse_query(&q) {
                let _ = error_answer(&q, Rcode::SERVFAIL, &parsed.question, parsed.edns_do);
            }
            let key = parse_query(&query(3, "mutated.example.", None)).expect("valid").key;
            if let Some(r) = Reply::check(&q, 3, &key) {
                let _ = r.answer_for(3, &q[HEADER_LEN..], 30);
            }
        }
    }
}
