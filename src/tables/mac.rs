//! MAC learning table: learn, age, cap, look up, per network.
//!
//! Scheme: every worker owns a private table and is its only reader and
//! writer, so lookups never lock and never share a cache line. When a worker
//! learns something new (a new address, a move, or the first refresh in a
//! new quarter of the aging time) it tells the other workers with a [`LearnMsg`]
//! through lock-free queues (see `pipeline::learn`); they apply it with
//! [`MacTable::learn_remote`]. Tables converge within one batch.
//!
//! Fairness: each network has a hard cap. When a new address arrives at the
//! cap, the oldest entry of the port holding the most entries in that network
//! is evicted (as Open vSwitch does), so a port flooding random sources evicts
//! mostly its own entries and cannot flush its neighbours'.

use std::collections::VecDeque;

use hashbrown::{HashMap, HashTable};

use crate::clock::Millis;
use crate::ports::PortId;
use crate::tables::topology::NetworkId;
use crate::wire::MacAddr;

/// Default aging time (300 s, as Linux bridges and OVS).
pub const DEFAULT_AGING_MS: Millis = 300_000;
/// Default cap on learned addresses per network.
pub const DEFAULT_CAP: usize = 8192;

/// A learned location, as sent between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnMsg {
    /// Network the address was seen on.
    pub network: NetworkId,
    /// The address.
    pub mac: MacAddr,
    /// Where it was seen.
    pub port: PortId,
    /// When it was seen.
    pub seen: Millis,
}

/// What [`MacTable::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Known at this port already; `announce` asks to tell the other workers
    /// (the first refresh in a new quarter of the aging time).
    Refreshed {
        /// Whether peers should hear about it.
        announce: bool,
    },
    /// A new entry.
    New,
    /// A new entry that displaced another one because the network was full.
    NewEvicted,
    /// The address moved from another port.
    Moved,
    /// Not learned: the network is at its cap and nothing could be evicted.
    CapHit,
}

impl Learned {
    /// Whether the other workers should be told.
    pub fn announce(self) -> bool {
        match self {
            Learned::Refreshed { announce } => announce,
            Learned::New | Learned::NewEvicted | Learned::Moved => true,
            Learned::CapHit => false,
        }
    }
}

/// 16 bytes: four to a cache line and never split across two, so more of a
/// large table stays in cache. Times are the low 32 bits of the millisecond
/// clock; ages are computed with wrapping arithmetic, exact while an entry is
/// younger than 49 days (aging removes it long before).
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u64,
    port: PortId,
    seen: u32,
}

#[inline]
fn t32(ms: Millis) -> u32 {
    ms as u32
}

#[inline]
fn age(now: Millis, then: u32) -> Millis {
    t32(now).wrapping_sub(then) as Millis
}

#[derive(Debug, Default, Clone)]
struct PortEntries {
    count: usize,
    /// Keys in learning order; may hold stale keys (moved or aged away),
    /// skipped on eviction and compacted when it grows past twice `count`.
    order: VecDeque<u64>,
}

#[derive(Debug, Default, Clone)]
struct NetworkEntries {
    count: usize,
    ports: HashMap<PortId, PortEntries>,
}

/// Aging and cap settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacConfig {
    /// Entries not refreshed for this long are forgotten.
    pub aging_ms: Millis,
    /// Cap for networks that do not set their own.
    pub default_cap: usize,
}

impl Default for MacConfig {
    fn default() -> Self {
        MacConfig {
            aging_ms: DEFAULT_AGING_MS,
            default_cap: DEFAULT_CAP,
        }
    }
}

/// One worker's MAC table. Cloned only by `switchyard trace`, which must not
/// change the real one.
#[derive(Clone)]
pub struct MacTable {
    config: MacConfig,
    entries: HashTable<Entry>,
    networks: HashMap<NetworkId, NetworkEntries>,
}

#[inline]
fn key(network: NetworkId, mac: MacAddr) -> u64 {
    ((network.0 as u64) << 48) | mac.to_u64()
}

#[inline]
fn hash(key: u64) -> u64 {
    // Folded multiply: mixes all 64 key bits into both the low bits (bucket
    // index) and the high bits (hashbrown's control byte).
    let r = (key as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    (r as u64) ^ ((r >> 64) as u64)
}

fn network_of(key: u64) -> NetworkId {
    NetworkId((key >> 48) as u16)
}

impl MacTable {
    /// An empty table with room for `capacity` entries before it grows.
    pub fn new(config: MacConfig, capacity: usize) -> MacTable {
        MacTable {
            config,
            entries: HashTable::with_capacity(capacity),
            networks: HashMap::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> MacConfig {
        self.config
    }

    /// A quarter of the aging time in ms (at least 1): the period in which
    /// a refresh is announced at most once.
    #[inline]
    fn quarter(&self) -> u32 {
        (self.config.aging_ms / 4).clamp(1, u32::MAX as Millis) as u32
    }

    /// Where `mac` was last seen on `network`, unless that has aged out.
    #[inline]
    pub fn lookup(&self, network: NetworkId, mac: MacAddr, now: Millis) -> Option<PortId> {
        let k = key(network, mac);
        self.entries
            .find(hash(k), |e| e.key == k)
            .filter(|e| age(now, e.seen) <= self.config.aging_ms)
            .map(|e| e.port)
    }

    /// Records that `mac` sent from `port` on `network` at `now`. `cap` gives
    /// the network's cap; it is only asked for when a new entry is inserted.
    #[inline]
    pub fn learn(
        &mut self,
        network: NetworkId,
        mac: MacAddr,
        port: PortId,
        now: Millis,
        cap: impl FnOnce() -> usize,
    ) -> Learned {
        let k = key(network, mac);
        let h = hash(k);
        let quarter = self.quarter();
        if let Some(e) = self.entries.find_mut(h, |e| e.key == k) {
            if e.port == port {
                // Peers hear of a busy address once per quarter of the aging
                // time, so their copies never age out while it is alive.
                let announce = t32(now) / quarter != e.seen / quarter;
                e.seen = t32(now);
                return Learned::Refreshed { announce };
            }
            let old = e.port;
            e.port = port;
            e.seen = t32(now);
            self.moved(k, old, port);
            return Learned::Moved;
        }
        self.insert_new(k, port, now, cap())
    }

    /// Applies what another worker learned. Never asks to announce.
    pub fn learn_remote(&mut self, msg: LearnMsg, cap: usize) -> Learned {
        let k = key(msg.network, msg.mac);
        let h = hash(k);
        if let Some(e) = self.entries.find_mut(h, |e| e.key == k) {
            // Older than what we know (wrapping: "msg.seen before e.seen").
            if (t32(msg.seen).wrapping_sub(e.seen) as i32) < 0 {
                return Learned::Refreshed { announce: false };
            }
            let old = e.port;
            e.seen = t32(msg.seen);
            if old == msg.port {
                return Learned::Refreshed { announce: false };
            }
            e.port = msg.port;
            self.moved(k, old, msg.port);
            return Learned::Moved;
        }
        self.insert_new(k, msg.port, msg.seen, cap)
    }

    #[cold]
    fn insert_new(&mut self, k: u64, port: PortId, seen: Millis, cap: usize) -> Learned {
        let network = network_of(k);
        let count = self.networks.get(&network).map_or(0, |n| n.count);
        let mut evicted = false;
        if count >= cap {
            if !self.evict_one(network) {
                return Learned::CapHit;
            }
            evicted = true;
        }
        self.entries.insert_unique(
            hash(k),
            Entry {
                key: k,
                port,
                seen: t32(seen),
            },
            |e| hash(e.key),
        );
        let net = self.networks.entry(network).or_default();
        net.count += 1;
        let pe = net.ports.entry(port).or_default();
        pe.count += 1;
        pe.order.push_back(k);
        if evicted {
            Learned::NewEvicted
        } else {
            Learned::New
        }
    }

    #[cold]
    fn moved(&mut self, k: u64, old: PortId, new: PortId) {
        let net = self.networks.entry(network_of(k)).or_default();
        if let Some(pe) = net.ports.get_mut(&old) {
            pe.count = pe.count.saturating_sub(1);
        }
        let pe = net.ports.entry(new).or_default();
        pe.count += 1;
        pe.order.push_back(k);
        Self::compact(&self.entries, new, pe);
    }

    /// Drops stale keys from a port's order list when it has grown past twice
    /// its live count, so the list stays bounded.
    fn compact(entries: &HashTable<Entry>, port: PortId, pe: &mut PortEntries) {
        if pe.order.len() > 2 * pe.count + 16 {
            let mut seen_keys = hashbrown::HashSet::with_capacity(pe.count);
            pe.order.retain(|k| {
                entries
                    .find(hash(*k), |e| e.key == *k)
                    .is_some_and(|e| e.port == port)
                    && seen_keys.insert(*k)
            });
        }
    }

    /// Evicts the oldest entry of the port with the most entries in `network`.
    fn evict_one(&mut self, network: NetworkId) -> bool {
        let Some(net) = self.networks.get_mut(&network) else {
            return false;
        };
        let Some((&port, _)) = net.ports.iter().max_by_key(|(_, pe)| pe.count) else {
            return false;
        };
        let Some(pe) = net.ports.get_mut(&port) else {
            return false;
        };
        while let Some(k) = pe.order.pop_front() {
            let live = matches!(
                self.entries.find_entry(hash(k), |e| e.key == k),
                Ok(ref occ) if occ.get().port == port
            );
            if live {
                if let Ok(occ) = self.entries.find_entry(hash(k), |e| e.key == k) {
                    occ.remove();
                }
                pe.count = pe.count.saturating_sub(1);
                net.count = net.count.saturating_sub(1);
                return true;
            }
        }
        false
    }

    /// Forgets entries not refreshed within the aging time; returns how many.
    pub fn age(&mut self, now: Millis) -> usize {
        let aging = self.config.aging_ms;
        self.remove_where(|e| age(now, e.seen) > aging)
    }

    /// Forgets every entry pointing at `port` (port removed).
    pub fn flush_port(&mut self, port: PortId) -> usize {
        self.remove_where(|e| e.port == port)
    }

    /// Forgets every entry of `network` (network removed).
    pub fn flush_network(&mut self, network: NetworkId) -> usize {
        let n = self.remove_where(|e| network_of(e.key) == network);
        self.networks.remove(&network);
        n
    }

    fn remove_where(&mut self, mut pred: impl FnMut(&Entry) -> bool) -> usize {
        let networks = &mut self.networks;
        let mut removed = 0;
        self.entries.retain(|e| {
            if !pred(e) {
                return true;
            }
            if let Some(net) = networks.get_mut(&network_of(e.key)) {
                net.count = net.count.saturating_sub(1);
                if let Some(pe) = net.ports.get_mut(&e.port) {
                    pe.count = pe.count.saturating_sub(1);
                }
            }
            removed += 1;
            false
        });
        if removed > 0 {
            let entries = &self.entries;
            for net in self.networks.values_mut() {
                net.ports.retain(|_, pe| pe.count > 0);
                for (port, pe) in net.ports.iter_mut() {
                    Self::compact(entries, *port, pe);
                }
            }
        }
        removed
    }

    /// Number of entries (including any not yet aged out).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries on one network.
    pub fn network_len(&self, network: NetworkId) -> usize {
        self.networks.get(&network).map_or(0, |n| n.count)
    }

    /// Entries of one port on one network.
    pub fn port_len(&self, network: NetworkId, port: PortId) -> usize {
        self.networks
            .get(&network)
            .and_then(|n| n.ports.get(&port))
            .map_or(0, |p| p.count)
    }

    /// Every live entry as (network, mac, port, age in ms), for inspection.
    pub fn dump(&self, now: Millis) -> Vec<(NetworkId, MacAddr, PortId, Millis)> {
        self.entries
            .iter()
            .filter(|e| age(now, e.seen) <= self.config.aging_ms)
            .map(|e| {
                let mac = MacAddr::from_bytes(&e.key.to_be_bytes()[2..]);
                (network_of(e.key), mac, e.port, age(now, e.seen))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};

    const N: NetworkId = NetworkId(1);

    fn mac(i: u32) -> MacAddr {
        MacAddr::local_from_u32(0, i)
    }

    fn table(cap: usize) -> MacTable {
        MacTable::new(
            MacConfig {
                aging_ms: 300_000,
                default_cap: cap,
            },
            16,
        )
    }

    #[test]
    fn learns_and_looks_up_per_network() {
        let mut t = table(8);
        assert_eq!(t.learn(N, mac(1), PortId(3), 0, || 8), Learned::New);
        assert_eq!(t.lookup(N, mac(1), 0), Some(PortId(3)));
        assert_eq!(t.lookup(NetworkId(2), mac(1), 0), None);
        assert_eq!(
            t.learn(N, mac(1), PortId(3), 10, || 8),
            Learned::Refreshed { announce: false }
        );
    }

    #[test]
    fn ages_with_the_fake_clock() {
        let clock = FakeClock::new();
        let mut t = table(8);
        t.learn(N, mac(1), PortId(1), clock.now(), || 8);
        clock.advance(299_000);
        t.learn(N, mac(2), PortId(1), clock.now(), || 8);
        assert_eq!(t.lookup(N, mac(1), clock.now()), Some(PortId(1)));
        clock.advance(2_000);
        // Expired entries miss at once, before the sweep removes them.
        assert_eq!(t.lookup(N, mac(1), clock.now()), None);
        assert_eq!(t.age(clock.now()), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.network_len(N), 1);
        assert_eq!(t.lookup(N, mac(2), clock.now()), Some(PortId(1)));
    }

    #[test]
    fn refresh_is_announced_once_per_quarter_of_aging() {
        let mut t = table(8);
        t.learn(N, mac(1), PortId(1), 0, || 8);
        assert!(!t.learn(N, mac(1), PortId(1), 74_999, || 8).announce());
        assert!(t.learn(N, mac(1), PortId(1), 75_000, || 8).announce());
        assert!(!t.learn(N, mac(1), PortId(1), 149_999, || 8).announce());
        // A quiet address is announced again when it comes back.
        assert!(t.learn(N, mac(1), PortId(1), 290_000, || 8).announce());
        // Refreshes a peer reported count as announced.
        let msg = LearnMsg {
            network: N,
            mac: mac(1),
            port: PortId(1),
            seen: 300_001,
        };
        t.learn_remote(msg, 8);
        assert!(!t.learn(N, mac(1), PortId(1), 300_002, || 8).announce());
    }

    #[test]
    fn moves_update_port_counts() {
        let mut t = table(8);
        t.learn(N, mac(1), PortId(1), 0, || 8);
        assert_eq!(t.learn(N, mac(1), PortId(2), 1, || 8), Learned::Moved);
        assert_eq!(t.lookup(N, mac(1), 1), Some(PortId(2)));
        assert_eq!(t.port_len(N, PortId(1)), 0);
        assert_eq!(t.port_len(N, PortId(2)), 1);
        assert_eq!(t.network_len(N), 1);
    }

    #[test]
    fn cap_evicts_from_the_biggest_port_only() {
        let mut t = table(10);
        // Two quiet neighbours with two addresses each.
        for i in 0..2 {
            t.learn(N, mac(i), PortId(1), 0, || 10);
            t.learn(N, mac(100 + i), PortId(2), 0, || 10);
        }
        // A port floods 1000 random sources.
        let mut evictions = 0;
        for i in 0..1000 {
            if t.learn(N, mac(10_000 + i), PortId(3), 1, || 10) == Learned::NewEvicted {
                evictions += 1;
            }
        }
        assert_eq!(t.network_len(N), 10);
        assert_eq!(evictions, 994);
        for i in 0..2 {
            assert_eq!(t.lookup(N, mac(i), 1), Some(PortId(1)));
            assert_eq!(t.lookup(N, mac(100 + i), 1), Some(PortId(2)));
        }
        assert_eq!(t.port_len(N, PortId(3)), 6);
        // The newest flooded addresses are the ones kept.
        assert_eq!(t.lookup(N, mac(10_999), 1), Some(PortId(3)));
        assert_eq!(t.lookup(N, mac(10_000), 1), None);
    }

    #[test]
    fn cap_is_per_network() {
        let mut t = table(2);
        t.learn(N, mac(1), PortId(1), 0, || 2);
        t.learn(N, mac(2), PortId(1), 0, || 2);
        assert_eq!(
            t.learn(NetworkId(2), mac(3), PortId(5), 0, || 2),
            Learned::New
        );
        assert_eq!(t.network_len(N), 2);
    }

    #[test]
    fn order_lists_stay_bounded_under_moves() {
        let mut t = table(100);
        for round in 0..1000u64 {
            let port = PortId((round % 2) as u32);
            t.learn(N, mac(7), port, round, || 100);
        }
        for pe in t.networks[&N].ports.values() {
            assert!(pe.order.len() <= 2 * pe.count + 17);
        }
    }

    #[test]
    fn remote_learning_keeps_newest() {
        let mut t = table(8);
        t.learn(N, mac(1), PortId(1), 100, || 8);
        let stale = LearnMsg {
            network: N,
            mac: mac(1),
            port: PortId(2),
            seen: 50,
        };
        assert_eq!(
            t.learn_remote(stale, 8),
            Learned::Refreshed { announce: false }
        );
        assert_eq!(t.lookup(N, mac(1), 100), Some(PortId(1)));
        let fresh = LearnMsg { seen: 200, ..stale };
        assert_eq!(t.learn_remote(fresh, 8), Learned::Moved);
        assert_eq!(t.lookup(N, mac(1), 200), Some(PortId(2)));
    }

    #[test]
    fn entry_is_small_and_ages_across_u32_wrap() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        let mut t = table(8);
        let start = u32::MAX as Millis - 1_000;
        t.learn(N, mac(1), PortId(1), start, || 8);
        assert_eq!(t.lookup(N, mac(1), start + 200_000), Some(PortId(1)));
        assert_eq!(t.age(start + 200_000), 0);
        assert_eq!(t.age(start + 300_001), 1);
    }

    #[test]
    fn flush_port_and_network() {
        let mut t = table(8);
        t.learn(N, mac(1), PortId(1), 0, || 8);
        t.learn(N, mac(2), PortId(2), 0, || 8);
        t.learn(NetworkId(2), mac(3), PortId(3), 0, || 8);
        assert_eq!(t.flush_port(PortId(1)), 1);
        assert_eq!(t.flush_network(N), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.dump(0), vec![(NetworkId(2), mac(3), PortId(3), 0)]);
    }
}
