//! Neighbour announcements for the gateway stack: smoltcp learns neighbours
//! only from ARP and NDP, so before a new client's first segment the stack
//! feeds it a synthetic ARP request (IPv4) or neighbour solicitation (IPv6)
//! from that client (the MAC and address of the punted frame); smoltcp's
//! reply to it is dropped. smoltcp's own requests are dropped too (the
//! pipeline answers for the gateway, and a sandbox's answer would not come
//! back here), so when its cache has lost a client (evicted by others) its
//! request for it makes the stack announce the client again at once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::stack::Runner;
use crate::pipeline::frame::Frame;
use crate::ports::PortId;
use crate::stats::bump;
use crate::tables::topology::NetworkId;
use crate::wire::arp::{ArpRepr, Operation};
use crate::wire::MacAddr;

/// A client's neighbour entry is refreshed this often (smoltcp keeps them
/// for a minute).
const NEIGHBOUR_REFRESH_MS: i64 = 20_000;

impl Runner {
    /// Records that `mac`/`ip` sits on `port`, and tells smoltcp (whose
    /// neighbour cache learns only from ARP and NDP) with a synthetic ARP
    /// request or neighbour solicitation from it when the entry is new or
    /// getting old.
    pub(super) fn announce_neighbour(
        &mut self,
        id: NetworkId,
        mac: MacAddr,
        ip: IpAddr,
        port: PortId,
        now: i64,
    ) {
        let Some(net) = self.net(id) else { return };
        net.clients.insert(mac, port);
        let stale = net
            .neighbours
            .get(&ip)
            .is_none_or(|&(m, t)| m != mac || now - t > NEIGHBOUR_REFRESH_MS);
        if stale {
            self.feed_announcement(id, mac, ip, now);
        }
    }

    /// Announces again the clients smoltcp asked for: its cache lost them
    /// (each new client evicts the oldest entry once the cache is full), and
    /// without this a flow to one would stall until its next refresh. True
    /// if any was announced: the caller polls again soon, so that flows
    /// waiting for it go on.
    pub(super) fn heal_neighbours(&mut self) -> bool {
        if self.neighbour_misses.is_empty() {
            return false;
        }
        let now = self.now().total_millis();
        let mut misses = std::mem::take(&mut self.neighbour_misses);
        misses.sort_unstable();
        misses.dedup();
        bump(&self.counters.neighbour_misses, misses.len() as u64);
        let mut healed = false;
        for &(id, ip) in &misses {
            let Some(net) = self.nets.get(&id) else {
                continue;
            };
            // Only clients still attached: smoltcp may also ask for an
            // address no sandbox announced (answering a spoofed source).
            let Some(&(mac, _)) = net.neighbours.get(&ip) else {
                continue;
            };
            if net.clients.contains_key(&mac) {
                self.feed_announcement(id, mac, ip, now);
                healed = true;
            }
        }
        misses.clear();
        self.neighbour_misses = misses;
        healed
    }

    /// Feeds both of the network's interfaces a synthetic ARP request or
    /// neighbour solicitation from `mac`/`ip`.
    fn feed_announcement(&mut self, id: NetworkId, mac: MacAddr, ip: IpAddr, now: i64) {
        let Some(gw) = self.nets.get(&id).map(|n| n.gw.clone()) else {
            return;
        };
        for large in [false, true] {
            let Some(mut a) = self.injector.alloc() else {
                return;
            };
            let Some(net) = self.nets.get_mut(&id) else {
                return self.injector.free(a);
            };
            let filled = match ip {
                IpAddr::V4(ip) => gw
                    .ipv4
                    .is_some_and(|gw4| fill_arp_request(&mut a, mac, ip, gw4)),
                IpAddr::V6(ip) => gw
                    .ipv6
                    .is_some_and(|gw6| fill_solicitation(&mut a, (mac, ip), (gw.mac, gw6))),
            };
            if !filled {
                return self.injector.free(a);
            }
            if large {
                net.large_rx.push_back(a);
            } else {
                net.rx.push_back(a);
            }
            net.neighbours.insert(ip, (mac, now));
        }
    }
}

/// Makes `f` a neighbour solicitation from the client (MAC, address) for
/// the gateway (MAC, address), sent to the gateway directly.
fn fill_solicitation(
    f: &mut Frame,
    client: (MacAddr, Ipv6Addr),
    gateway: (MacAddr, Ipv6Addr),
) -> bool {
    use crate::wire::icmpv6::Icmpv6Repr;
    use crate::wire::udp_frame::{emit_ipv6_hops, IP6_HEADERS_LEN};
    use crate::wire::IpProtocol;
    let ns = Icmpv6Repr::NeighborSolicit {
        target_addr: gateway.1,
        lladdr: Some(client.0),
    };
    let len = ns.buffer_len();
    let space = f.receive_space();
    let Some(body) = space.get_mut(IP6_HEADERS_LEN..IP6_HEADERS_LEN + len) else {
        return false;
    };
    if ns.emit(body, &client.1, &gateway.1).is_err() {
        return false;
    }
    let macs = (client.0, gateway.0);
    let ips = (client.1, gateway.1);
    match emit_ipv6_hops(space, macs, ips, IpProtocol::Icmpv6, len, 255) {
        Ok(n) => {
            f.set_len(n);
            true
        }
        Err(_) => false,
    }
}

/// Makes `f` an ARP request from the client (`mac`, `ip`) for the gateway.
fn fill_arp_request(f: &mut Frame, mac: MacAddr, ip: Ipv4Addr, gateway: Ipv4Addr) -> bool {
    let space = f.receive_space();
    if space.len() < 42 {
        return false;
    }
    space[0..6].copy_from_slice(&MacAddr::BROADCAST.0);
    space[6..12].copy_from_slice(&mac.0);
    space[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let repr = ArpRepr {
        operation: Operation::Request,
        source_mac: mac,
        source_ip: ip,
        target_mac: MacAddr([0; 6]),
        target_ip: gateway,
    };
    if repr.emit(&mut space[14..]).is_err() {
        return false;
    }
    f.set_len(42);
    true
}
