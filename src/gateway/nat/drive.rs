//! Driving NAT flows: readiness of their host sockets, the flows that have
//! new packets, readiness or a due timer, each TCP flow's smoltcp socket
//! against its host socket, and the replies relayed to UDP and ICMP flows.

use std::net::Ipv4Addr;

use mio::Events;

use crate::gateway::device::{PuntDevice, TxTally};
use crate::gateway::icmp_nat::IcmpFlow;
use crate::gateway::publish::LISTENER_BASE;
use crate::gateway::stack::{NetStack, Runner};
use crate::gateway::tcp_nat::{Phase, TcpFlow};
use crate::gateway::udp_nat::UdpFlow;
use crate::pipeline::frame::Frame;
use crate::pipeline::inject::Injector;
use crate::stats::bump;
use smoltcp::time::Instant;

use super::{Flow, CONNECT_TIMEOUT_MS, TCP_IDLE_MS};

impl Runner {
    /// Notes readiness of host sockets.
    pub(in crate::gateway) fn host_events(&mut self, events: &Events) {
        for ev in events.iter() {
            if let Some(id) = ev.token().0.checked_sub(LISTENER_BASE) {
                self.ready_listeners.push(id as u64);
                continue;
            }
            let Some(slot) = ev.token().0.checked_sub(1) else {
                continue;
            };
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
            match self.flows.get_mut(slot) {
                Some((_, Flow::Tcp(t))) => t.host_event(readable, writable),
                Some((_, Flow::Udp(_) | Flow::UdpIn(_) | Flow::Icmp(_))) => {}
                None => continue,
            }
            self.dirty.push(slot);
        }
    }

    /// Runs every flow that has something to do: new packets, host
    /// readiness, or a timer.
    pub(in crate::gateway) fn drive_flows(&mut self) {
        let now = self.now();
        let ms = now.total_millis();
        let mut slots = std::mem::take(&mut self.dirty);
        self.flows.due(ms, &mut slots);
        slots.sort_unstable();
        slots.dedup();
        let mut tally = TxTally::default();
        // Flows driven again next round: TCP segments that waited for a
        // neighbour smoltcp lost (once it is announced, see
        // `heal_neighbours`), and UDP and echo flows that read their
        // round's share of replies with more perhaps waiting.
        let mut waiting = Vec::new();
        for slot in slots {
            let Some((key, flow)) = self.flows.get_mut(slot) else {
                continue;
            };
            let key = *key;
            let finished = match flow {
                Flow::Udp(u) => {
                    if relay_udp_replies(u, &mut self.injector, &mut self.udp_buf, ms) {
                        waiting.push(slot);
                    }
                    let expires = u.expires();
                    if ms >= expires {
                        true
                    } else {
                        self.flows.wake_at(slot, expires);
                        false
                    }
                }
                Flow::Icmp(c) => {
                    if relay_echo_replies(c, &mut self.injector, &mut self.udp_buf, ms) {
                        waiting.push(slot);
                    }
                    let expires = c.last_active + crate::gateway::icmp_nat::IDLE_MS;
                    if ms >= expires {
                        true
                    } else {
                        self.flows.wake_at(slot, expires);
                        false
                    }
                }
                Flow::UdpIn(s) => {
                    let expires = s.last_active + crate::gateway::udp_nat::STREAM_IDLE_MS;
                    if ms >= expires {
                        self.udp_peers.remove(&(s.listener, s.peer));
                        true
                    } else {
                        self.flows.wake_at(slot, expires);
                        false
                    }
                }
                // Its network's stack is gone (the network was removed):
                // nothing can carry the flow any more, so it ends rather
                // than keep its host socket.
                Flow::Tcp(_) if !self.nets.contains_key(&key.network) => true,
                Flow::Tcp(t) => {
                    let Some(net) = self.nets.get_mut(&key.network) else {
                        continue;
                    };
                    let mut io = FlowIo {
                        net,
                        injector: &mut self.injector,
                        done: &mut self.done,
                        tally: &mut tally,
                        refused: &self.counters.nat_refused,
                    };
                    let next = drive_tcp(t, &mut io, now);
                    if !tally.solicited.is_empty() {
                        let lost = tally.solicited.drain(..).map(|ip| (key.network, ip));
                        self.neighbour_misses.extend(lost);
                        waiting.push(slot);
                    }
                    match next {
                        Some(next) => {
                            self.flows.wake_at(slot, next);
                            false
                        }
                        None => true,
                    }
                }
            };
            if finished {
                if let Some((_, Flow::Tcp(mut t))) = self.flows.remove(slot) {
                    let _ = self.poll.registry().deregister(&mut t.host);
                    self.done.extend(t.rx.drain(..));
                }
            }
        }
        for f in self.done.drain(..) {
            self.injector.free(f);
        }
        self.dirty.extend(waiting);
        bump(&self.counters.unroutable, tally.unroutable);
        self.counters.nat_active.store(
            self.flows.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// What driving a TCP flow touches besides the flow.
struct FlowIo<'a> {
    net: &'a mut NetStack,
    injector: &'a mut Injector,
    done: &'a mut Vec<Frame>,
    tally: &'a mut TxTally,
    refused: &'a std::sync::atomic::AtomicU64,
}

impl FlowIo<'_> {
    /// Polls the flow's socket set with its queued frames.
    fn poll(&mut self, t: &mut TcpFlow, now: Instant) {
        let mut dev = PuntDevice::new(
            &mut t.rx,
            self.done,
            self.injector,
            &self.net.clients,
            self.tally,
            self.net.mtu,
            t.large,
        );
        let iface = if t.large {
            &mut self.net.large
        } else {
            &mut self.net.iface
        };
        iface.poll(now, &mut dev, &mut t.sockets);
    }
}

/// Finishes the connect, moves frames and data, and closes what is done;
/// returns when to look again, or `None` when the flow is finished.
fn drive_tcp(t: &mut TcpFlow, io: &mut FlowIo<'_>, now: Instant) -> Option<i64> {
    let ms = now.total_millis();
    match t.check_connect() {
        Some(Err(e)) => {
            bump(io.refused, 1);
            if TcpFlow::unreachable(&e) {
                for f in t.rx.drain(..) {
                    send_unreachable(io, &f);
                    io.done.push(f);
                }
            } else {
                io.net.reject_rx.extend(t.rx.drain(..));
            }
            return None;
        }
        None if t.phase == Phase::Connecting => {
            if ms - t.last_active > CONNECT_TIMEOUT_MS {
                for f in t.rx.drain(..) {
                    send_unreachable(io, &f);
                    io.done.push(f);
                }
                return None;
            }
            return Some(t.last_active + CONNECT_TIMEOUT_MS + 1);
        }
        _ => {}
    }
    if t.phase == Phase::Done {
        return None;
    }
    // Poll, move data, and poll again to send what moved; more rounds
    // while data keeps moving (bounded).
    for _ in 0..4 {
        io.poll(t, now);
        if !t.pump(ms) {
            break;
        }
    }
    io.poll(t, now);
    t.pump(ms);
    let unanswered = t.handshake_until.is_some_and(|until| ms >= until);
    if unanswered || ms - t.last_active > TCP_IDLE_MS {
        t.abort();
        io.poll(t, now);
        return None;
    }
    if t.phase == Phase::Done {
        return None;
    }
    let iface = if t.large {
        &mut io.net.large
    } else {
        &mut io.net.iface
    };
    let next = iface
        .poll_at(now, &t.sockets)
        .map_or(ms + 1000, |at| at.total_millis())
        .min(t.last_active + TCP_IDLE_MS)
        .min(t.handshake_until.unwrap_or(i64::MAX))
        .max(ms + 1);
    Some(next)
}

/// ICMP destination unreachable (host unreachable; for IPv6, ICMPv6
/// address unreachable) from the gateway for the packet in `f`, carrying its
/// IP header and first 8 bytes of payload.
fn send_unreachable(io: &mut FlowIo<'_>, f: &Frame) {
    use crate::wire::udp_frame::{emit_ipv4, emit_ipv6, IP6_HEADERS_LEN, IP_HEADERS_LEN};
    use crate::wire::{icmpv4, icmpv6, IpProtocol};
    let l3 = f.meta.l3_offset as usize;
    let Some(ip) = f.data().get(l3..) else { return };
    let v6 = ip.first().is_some_and(|v| v >> 4 == 6);
    let header = if v6 {
        40
    } else {
        ip.first().map_or(0, |v| usize::from(v & 0x0f) * 4)
    };
    let Some(quote) = ip.get(..(header + 8).min(ip.len())) else {
        return;
    };
    let macs = (io.net.gw.mac, f.meta.src);
    let gw = (io.net.gw.ipv4, io.net.gw.ipv6);
    io.injector.send(f.meta.in_port, |out| {
        let space = out.receive_space();
        let l4 = if v6 { IP6_HEADERS_LEN } else { IP_HEADERS_LEN };
        let len = 8 + quote.len();
        let Some(icmp) = space.get_mut(l4..l4 + len) else {
            return false;
        };
        icmp[8..].copy_from_slice(quote);
        let written = if v6 {
            let (Some(gw6), Some(sandbox)) = (gw.1, crate::wire::ipv6::addr_at(quote, 8)) else {
                return false;
            };
            icmp[..8].copy_from_slice(&[1, 3, 0, 0, 0, 0, 0, 0]);
            let Ok(mut p) = icmpv6::Packet::new_checked(&mut icmp[..]) else {
                return false;
            };
            p.fill_checksum(&gw6, &sandbox);
            emit_ipv6(space, macs, (gw6, sandbox), IpProtocol::Icmpv6, len)
        } else {
            let (Some(gw4), Some(s)) = (gw.0, quote.get(12..16)) else {
                return false;
            };
            let sandbox = Ipv4Addr::new(s[0], s[1], s[2], s[3]);
            icmp[..8].copy_from_slice(&[3, 1, 0, 0, 0, 0, 0, 0]);
            let Ok(mut p) = icmpv4::Packet::new_checked(&mut icmp[..]) else {
                return false;
            };
            p.fill_checksum();
            emit_ipv4(space, macs, (gw4, sandbox), IpProtocol::Icmp, len)
        };
        match written {
            Ok(n) => {
                out.set_len(n);
                true
            }
            Err(_) => false,
        }
    });
}

/// Reads every waiting echo reply of an ICMP flow and sends it on.
/// Reads waiting echo replies (at most 64) and sends them to the sandbox;
/// true if there may be more (the socket's readiness is edge-triggered, so
/// the flow must be driven again rather than wait for the next reply).
fn relay_echo_replies(c: &mut IcmpFlow, injector: &mut Injector, buf: &mut [u8], now: i64) -> bool {
    for _ in 0..64 {
        let n = match c.host.recv(buf) {
            Ok(n) => n,
            Err(_) => return false,
        };
        c.last_active = now;
        let icmp = &buf[..n];
        injector.send(c.port, |f| match c.reply_frame(icmp, f.receive_space()) {
            Some(len) => {
                f.set_len(len);
                true
            }
            None => false,
        });
    }
    true
}

/// Most replies of one UDP flow relayed per round, so one busy flow cannot
/// hold up the others. Small in unit tests, where a burst beyond it must
/// still fit a default socket buffer (about 256 small datagrams).
pub(super) const UDP_REPLIES_PER_ROUND: usize = if cfg!(test) { 32 } else { 256 };

/// Reads waiting replies of a UDP flow (at most [`UDP_REPLIES_PER_ROUND`])
/// and sends them to the sandbox; true if there may be more, as for echo
/// replies.
fn relay_udp_replies(
    u: &mut UdpFlow,
    injector: &mut crate::pipeline::inject::Injector,
    buf: &mut [u8],
    now: i64,
) -> bool {
    for _ in 0..UDP_REPLIES_PER_ROUND {
        let n = match u.host.recv(buf) {
            Ok(n) => n,
            Err(_) => return false,
        };
        u.stream = true;
        u.last_active = now;
        injector.send_udp(u.port, &u.reply, &buf[..n]);
    }
    true
}
