//! The NAT flow table: our own 5-tuple index over the gateway's flows (IPv4
//! and IPv6), so a packet finds its flow (and its one smoltcp socket) in O(1)
//! however many flows exist, instead of smoltcp scanning every socket. Also
//! the caps on flows per sandbox and in total, and the timer queue that wakes
//! flows (one armed deadline per slot, so the queue stays as large as the
//! table however often flows are driven).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::pipeline::frame::Frame;
use crate::pipeline::ndp::ECHO_REQUEST as ICMPV6_ECHO_REQUEST;
use crate::tables::topology::NetworkId;
use crate::wire::ip::IpView;
pub use crate::wire::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// ICMP type of an echo request.
const ICMP_ECHO_REQUEST: u8 = 8;

/// A flow as the sandbox sees it: from `local` (its own address and port) to
/// `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The sandbox's network.
    pub network: NetworkId,
    /// IP protocol.
    pub proto: u8,
    /// The sandbox side.
    pub local: SocketAddr,
    /// The far side, as the sandbox addresses it (same family).
    pub remote: SocketAddr,
}

/// What the stack needs to know of a punted IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Its flow key (source = sandbox side).
    pub key: FlowKey,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// Offset of the L4 header in the frame.
    pub l4: usize,
    /// End of the IP packet in the frame.
    pub end: usize,
}

/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

impl PacketInfo {
    /// Reads the addresses, ports and flags of an IPv4 or IPv6 frame (IPv6
    /// only with TCP, UDP or ICMPv6 right after the fixed header). IPv4
    /// fragments are not flow packets: a first fragment holds only part of
    /// the datagram and later ones have no transport header, so the stack
    /// does not carry them (there is no reassembly).
    pub fn parse(f: &Frame) -> Option<PacketInfo> {
        let b = f.data();
        let ip = IpView::parse(b, f.meta.l3_offset as usize)?;
        if !ip.header_ok || ip.fragment || ip.l4 > ip.end {
            return None;
        }
        let IpView {
            src,
            dst,
            proto,
            l4,
            end,
            ..
        } = ip;
        let (sport, dport, tcp_flags) = match proto {
            PROTO_TCP => {
                let t = b.get(l4..l4 + 14)?;
                (
                    u16::from_be_bytes([t[0], t[1]]),
                    u16::from_be_bytes([t[2], t[3]]),
                    t[13],
                )
            }
            PROTO_UDP => {
                let u = b.get(l4..l4 + 8)?;
                (
                    u16::from_be_bytes([u[0], u[1]]),
                    u16::from_be_bytes([u[2], u[3]]),
                    0,
                )
            }
            // ICMP echo: the identifier plays the port.
            PROTO_ICMP if src.is_ipv4() => {
                let i = b.get(l4..l4 + 8)?;
                let id = u16::from_be_bytes([i[4], i[5]]);
                (id, id, 0)
            }
            PROTO_ICMPV6 if src.is_ipv6() => {
                let i = b.get(l4..l4 + 8)?;
                let id = u16::from_be_bytes([i[4], i[5]]);
                (id, id, 0)
            }
            _ => return None,
        };
        Some(PacketInfo {
            key: FlowKey {
                network: f.meta.network,
                proto,
                local: SocketAddr::new(src, sport),
                remote: SocketAddr::new(dst, dport),
            },
            tcp_flags,
            l4,
            end,
        })
    }

    /// True for an ICMP (or ICMPv6) echo request.
    pub fn is_echo_request(&self, f: &Frame) -> bool {
        let ty = f.data().get(self.l4).copied();
        match self.key.proto {
            PROTO_ICMP => ty == Some(ICMP_ECHO_REQUEST),
            PROTO_ICMPV6 => ty == Some(ICMPV6_ECHO_REQUEST),
            _ => false,
        }
    }
}

/// Limits on flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    /// Most flows in all.
    pub total: usize,
    /// Most flows of one sandbox address.
    pub per_sandbox: usize,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            total: 65_536,
            per_sandbox: 16_384,
        }
    }
}

/// Flows in slots, found by key; `T` is the flow's state.
pub struct FlowTable<T> {
    slots: Vec<Option<(FlowKey, T)>>,
    free: Vec<usize>,
    index: HashMap<FlowKey, usize>,
    per_sandbox: HashMap<(NetworkId, IpAddr), usize>,
    limits: FlowLimits,
    /// Flows in this table and every table sharing the total cap.
    total: Arc<AtomicUsize>,
    timers: BinaryHeap<Reverse<(i64, usize)>>,
    /// Per slot, the deadline its entry in `timers` is for (`i64::MAX`: none).
    /// Flows ask for a wake-up each time they are driven; only an earlier
    /// one adds an entry, and entries that are no longer a slot's armed
    /// deadline are skipped when they come up.
    armed: Vec<i64>,
}

/// Why a flow could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapHit {
    /// The table is full.
    Total,
    /// The sandbox has its maximum.
    Sandbox,
    /// A live flow has the key already (replacing it would orphan its slot).
    Taken,
}

impl<T> FlowTable<T> {
    /// An empty table.
    pub fn new(limits: FlowLimits) -> FlowTable<T> {
        FlowTable::sharing(limits, Arc::new(AtomicUsize::new(0)))
    }

    /// An empty table whose flows count, with those of the other tables
    /// given the same `total`, against `limits.total` (one table per stack
    /// thread). The per-sandbox cap is this table's alone.
    pub fn sharing(limits: FlowLimits, total: Arc<AtomicUsize>) -> FlowTable<T> {
        FlowTable {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            per_sandbox: HashMap::new(),
            limits,
            total,
            timers: BinaryHeap::new(),
            armed: Vec::new(),
        }
    }

    /// Flows in the table.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when there are no flows.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The slot of a flow.
    pub fn find(&self, key: &FlowKey) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Whether [`FlowTable::insert`] would take a flow for `key` now: checked
    /// before a flow's host socket is opened, so a sandbox at its cap makes
    /// no connection attempts (the total, shared between threads, is
    /// checked again by the insert).
    pub fn admits(&self, key: &FlowKey) -> Result<(), CapHit> {
        if self.index.contains_key(key) {
            return Err(CapHit::Taken);
        }
        let owner = (key.network, key.local.ip());
        if self.per_sandbox.get(&owner).copied().unwrap_or(0) >= self.limits.per_sandbox {
            return Err(CapHit::Sandbox);
        }
        if self.total.load(Ordering::Acquire) >= self.limits.total {
            return Err(CapHit::Total);
        }
        Ok(())
    }

    /// Adds a flow unless a cap forbids it or the key has a flow already;
    /// returns its slot.
    pub fn insert(&mut self, key: FlowKey, flow: T) -> Result<usize, CapHit> {
        if self.index.contains_key(&key) {
            return Err(CapHit::Taken);
        }
        let owner = (key.network, key.local.ip());
        let n = self.per_sandbox.get(&owner).copied().unwrap_or(0);
        if n >= self.limits.per_sandbox {
            return Err(CapHit::Sandbox);
        }
        let cap = self.limits.total;
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < cap).then_some(t + 1)
            })
            .map_err(|_| CapHit::Total)?;
        self.per_sandbox.insert(owner, n + 1);
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some((key, flow));
                i
            }
            None => {
                self.slots.push(Some((key, flow)));
                self.slots.len() - 1
            }
        };
        self.index.insert(key, slot);
        Ok(slot)
    }

    /// The flow in a slot.
    pub fn get_mut(&mut self, slot: usize) -> Option<(&FlowKey, &mut T)> {
        self.slots
            .get_mut(slot)
            .and_then(|s| s.as_mut())
            .map(|(k, t)| (&*k, t))
    }

    /// Removes the flow in a slot.
    pub fn remove(&mut self, slot: usize) -> Option<(FlowKey, T)> {
        let (key, flow) = self.slots.get_mut(slot)?.take()?;
        self.index.remove(&key);
        self.total.fetch_sub(1, Ordering::AcqRel);
        let owner = (key.network, key.local.ip());
        if let Some(n) = self.per_sandbox.get_mut(&owner) {
            *n -= 1;
            if *n == 0 {
                self.per_sandbox.remove(&owner);
            }
        }
        if let Some(t) = self.armed.get_mut(slot) {
            *t = i64::MAX;
        }
        self.free.push(slot);
        Some((key, flow))
    }

    /// Slots of every flow.
    pub fn slots(&self) -> Vec<usize> {
        self.index.values().copied().collect()
    }

    /// Asks for slot to be looked at at `at` (ms), unless it is armed for
    /// an earlier time already: driven then, the flow asks again for its
    /// deadline of that moment.
    pub fn wake_at(&mut self, slot: usize, at: i64) {
        if self.armed.len() <= slot {
            self.armed.resize(slot + 1, i64::MAX);
        }
        if at < self.armed[slot] {
            self.armed[slot] = at;
            self.timers.push(Reverse((at, slot)));
        }
    }

    /// The earliest requested wake-up (perhaps a superseded one, which only
    /// costs an early look).
    pub fn next_wake(&self) -> Option<i64> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Slots whose wake-up time has come, each disarmed (a slot may be
    /// reported after its flow was removed; callers check).
    pub fn due(&mut self, now: i64, out: &mut Vec<usize>) {
        while let Some(Reverse((t, slot))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            match self.armed.get_mut(slot) {
                Some(armed) if *armed == t => {
                    *armed = i64::MAX;
                    out.push(slot);
                }
                // Superseded by an earlier deadline, or its flow is gone.
                _ => {}
            }
        }
    }

    /// Entries in the timer queue.
    #[cfg(test)]
    fn timers_queued(&self) -> usize {
        self.timers.len()
    }
}

impl<T> Drop for FlowTable<T> {
    /// Gives the flows' share of the total cap back to the other tables.
    fn drop(&mut self) {
        self.total.fetch_sub(self.index.len(), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn key(last: u8, port: u16) -> FlowKey {
        FlowKey {
            network: NetworkId(0),
            proto: PROTO_TCP,
            local: SocketAddr::from((Ipv4Addr::new(10, 0, 0, last), port)),
            remote: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 80)),
        }
    }

    #[test]
    fn caps_per_sandbox_and_total() {
        let mut t = FlowTable::new(FlowLimits {
            total: 3,
            per_sandbox: 2,
        });
        let a = t.insert(key(2, 1), ()).unwrap();
        t.insert(key(2, 2), ()).unwrap();
        assert_eq!(t.insert(key(2, 3), ()), Err(CapHit::Sandbox));
        t.insert(key(3, 1), ()).unwrap();
        assert_eq!(t.insert(key(4, 1), ()), Err(CapHit::Total));
        assert_eq!(t.find(&key(2, 1)), Some(a));
        t.remove(a);
        assert_eq!(t.find(&key(2, 1)), None);
        assert_eq!(
            t.insert(key(2, 3), ()),
            Ok(a),
            "slot reused, sandbox count freed"
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn parses_ipv6_tcp_and_echo() {
        let (me, far) = ([0xfd; 16], [0x20; 16]);
        let b = || etherparse::PacketBuilder::ethernet2([2; 6], [4; 6]).ipv6(me, far, 64);
        let mut tcp = Vec::new();
        b().tcp(40000, 443, 9, 1000)
            .syn()
            .write(&mut tcp, &[])
            .unwrap();
        let info = PacketInfo::parse(&crate::pipeline::frame::Frame::parsed(
            &tcp,
            crate::ports::PortId(1),
        ))
        .unwrap();
        assert_eq!(info.key.local, SocketAddr::from((me, 40000)));
        assert_eq!(info.key.remote, SocketAddr::from((far, 443)));
        assert_eq!(
            (info.key.proto, info.tcp_flags, info.l4),
            (PROTO_TCP, TCP_SYN, 54)
        );
        let mut echo = Vec::new();
        b().icmpv6_echo_request(77, 1)
            .write(&mut echo, b"x")
            .unwrap();
        let f = crate::pipeline::frame::Frame::parsed(&echo, crate::ports::PortId(1));
        let info = PacketInfo::parse(&f).unwrap();
        assert_eq!((info.key.proto, info.key.local.port()), (PROTO_ICMPV6, 77));
        assert!(info.is_echo_request(&f));
        // Extension headers before the transport are not carried.
        let mut hop = echo.clone();
        hop[20] = 0;
        let f = crate::pipeline::frame::Frame::parsed(&hop, crate::ports::PortId(1));
        assert_eq!(PacketInfo::parse(&f), None);
    }

    /// Two tables sharing a total cap of 3 flows (2 per sandbox), and the
    /// shared count.
    fn sharing_pair() -> (FlowTable<()>, FlowTable<()>, Arc<AtomicUsize>) {
        let limits = FlowLimits {
            total: 3,
            per_sandbox: 2,
        };
        let total = Arc::new(AtomicUsize::new(0));
        let a = FlowTable::sharing(limits, total.clone());
        let b = FlowTable::sharing(limits, total.clone());
        (a, b, total)
    }

    #[test]
    fn tables_sharing_the_total_cap_count_together() {
        let (mut a, mut b, total) = sharing_pair();
        a.insert(key(2, 1), ()).unwrap();
        a.insert(key(2, 2), ()).unwrap();
        let s = b.insert(key(3, 1), ()).unwrap();
        assert_eq!(b.insert(key(4, 1), ()), Err(CapHit::Total));
        assert_eq!(a.insert(key(5, 1), ()), Err(CapHit::Total));
        b.remove(s);
        assert_eq!(total.load(Ordering::Relaxed), 2);
        b.insert(key(4, 1), ()).unwrap();
        // A table that goes away gives its share back.
        drop(a);
        assert_eq!(total.load(Ordering::Relaxed), 1);
        b.insert(key(6, 1), ()).unwrap();
        b.insert(key(7, 1), ()).unwrap();
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn admits_says_what_insert_would_do() {
        let (mut a, mut b, _) = sharing_pair();
        assert_eq!(a.admits(&key(2, 1)), Ok(()));
        a.insert(key(2, 1), ()).unwrap();
        assert_eq!(a.admits(&key(2, 1)), Err(CapHit::Taken));
        a.insert(key(2, 2), ()).unwrap();
        assert_eq!(a.admits(&key(2, 3)), Err(CapHit::Sandbox));
        assert_eq!(b.admits(&key(3, 1)), Ok(()));
        b.insert(key(3, 1), ()).unwrap();
        assert_eq!(b.admits(&key(4, 1)), Err(CapHit::Total), "the shared total");
        assert_eq!(a.admits(&key(5, 1)), Err(CapHit::Total));
    }

    #[test]
    fn timers_come_due_in_order() {
        let mut t: FlowTable<()> = FlowTable::new(FlowLimits::default());
        t.wake_at(1, 30);
        t.wake_at(2, 10);
        t.wake_at(3, 20);
        assert_eq!(t.next_wake(), Some(10));
        let mut due = Vec::new();
        t.due(20, &mut due);
        assert_eq!(due, [2, 3]);
        assert_eq!(t.next_wake(), Some(30));
    }

    /// A second insert of a live key used to replace its index entry and
    /// orphan the first slot: `len`, `slots` (and so `forget`) lost it, and
    /// removing the orphan later deleted the live flow's index entry.
    #[test]
    fn a_live_key_is_refused_and_the_table_stays_whole() {
        let mut t = FlowTable::new(FlowLimits::default());
        let first = t.insert(key(2, 51820), "nat").unwrap();
        assert_eq!(t.insert(key(2, 51820), "published"), Err(CapHit::Taken));
        assert_eq!((t.len(), t.slots()), (1, vec![first]));
        assert_eq!(t.total.load(Ordering::Relaxed), 1, "refusal counts nothing");
        assert_eq!(t.per_sandbox.values().sum::<usize>(), 1);
        t.remove(first);
        assert_eq!(t.insert(key(2, 51820), "again"), Ok(first), "free again");
        assert_eq!(t.total.load(Ordering::Relaxed), 1);
    }

    /// IPv4 fragments used to be parsed as whole datagrams: a first
    /// fragment was relayed truncated, later ones opened flows on "ports"
    /// read from payload bytes.
    #[test]
    fn ipv4_fragments_are_not_flow_packets() {
        let mut b = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 2], [192, 0, 2, 1], 64)
            .udp(40000, 53)
            .write(&mut b, &[0xAB; 64])
            .unwrap();
        let parse = |b: &[u8]| {
            PacketInfo::parse(&crate::pipeline::frame::Frame::parsed(
                b,
                crate::ports::PortId(1),
            ))
        };
        assert!(parse(&b).is_some(), "a whole datagram is one");
        // Offset 185 (1480 bytes): a later fragment.
        b[14 + 6] = 0x00;
        b[14 + 7] = 185;
        assert_eq!(parse(&b), None, "later fragment");
        // More fragments, offset 0: a first fragment.
        b[14 + 6] = 0x20;
        b[14 + 7] = 0;
        assert_eq!(parse(&b), None, "first fragment");
        // Don't fragment alone is a whole datagram.
        b[14 + 6] = 0x40;
        assert!(parse(&b).is_some());
    }

    /// A UDP flow with a steady stream of replies is driven on every loop
    /// pass and asks each time to be woken at its (moving) expiry; the queue
    /// used to get one entry per pass, ~120,000 per flow at 1,000 passes/s.
    #[test]
    fn timer_queue_holds_one_deadline_per_flow_however_often_it_is_driven() {
        let mut t: FlowTable<()> = FlowTable::new(FlowLimits::default());
        let slot = t.insert(key(2, 1), ()).unwrap();
        t.wake_at(slot, 30_000);
        let mut woken = 0;
        for ms in 0..240_000i64 {
            let mut slots = vec![slot];
            t.due(ms, &mut slots);
            woken += slots.len() - 1;
            slots.dedup();
            for _ in slots {
                // Last reply now: expires 120 s later.
                t.wake_at(slot, ms + 120_000);
            }
            assert!(t.timers_queued() <= 2, "at {ms} ms: {}", t.timers_queued());
        }
        // Woken by the first deadline, re-armed once, and again 120 s on.
        assert_eq!(woken, 2);
    }

    #[test]
    fn an_earlier_deadline_supersedes_and_a_removed_flow_is_not_woken() {
        let mut t: FlowTable<()> = FlowTable::new(FlowLimits::default());
        let a = t.insert(key(2, 1), ()).unwrap();
        let b = t.insert(key(2, 2), ()).unwrap();
        t.wake_at(a, 100);
        t.wake_at(a, 50);
        t.wake_at(a, 80);
        t.wake_at(b, 60);
        assert_eq!(t.next_wake(), Some(50));
        let mut due = Vec::new();
        t.due(99, &mut due);
        assert_eq!(due, [a, b], "a once, at its earliest deadline");
        t.due(100, &mut due);
        assert_eq!(due, [a, b], "the superseded entry at 100 is skipped");
        t.wake_at(b, 200);
        t.remove(b);
        due.clear();
        t.due(300, &mut due);
        assert!(due.is_empty(), "{due:?}");
        assert_eq!(t.next_wake(), None);
    }
}
