//! The floor for any userspace TAP switch, as a benchmark reference: one
//! thread that creates a TAP `eth0` in each of two network namespaces (the
//! same queues, virtio-net header and offloads as Switchyard's ports) and
//! copies every frame from one to the other — one `epoll_wait`, then `read`
//! until `EAGAIN` and a `write` per frame. No parsing, no MAC table, no
//! counters, no busy polling: what remains of a frame's cost is the wake-up
//! and the two TAP system calls that every userspace switch pays.
//! `tools/bench/run.sh` runs it as the `fwd` setup, so the table shows how
//! far Switchyard is from that floor and how far the floor is from the
//! kernel bridge.
//!
//! Usage (as root): `tap_forward /run/netns/A /run/netns/B`; stops on SIGTERM
//! or SIGINT (the default action), and the TAPs go with it.

use std::error::Error;
use std::fs::File;
use std::io::{self, Read, Write};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use switchyard::sys::netns::{enter, NsKind};
use switchyard::sys::tun::{open_tap, TapQueue};
use switchyard::wire::virtio_net::HEADER_LEN;

/// A 64 KiB TSO frame, its Ethernet header and the virtio-net header.
const FRAME_MAX: usize = 65_536 + 14 + HEADER_LEN;

/// Creates `eth0` in the namespace at `path` and comes back to `home`.
fn tap_in(path: &str, home: &File) -> Result<TapQueue, Box<dyn Error>> {
    let ns = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    enter(&ns, NsKind::Net).map_err(|e| format!("entering {path}: {e}"))?;
    let tap = open_tap("eth0", 1).map(|mut q| q.remove(0));
    enter(home, NsKind::Net)?;
    let tap = tap.map_err(|e| format!("TAP in {path}: {e}"))?;
    if !tap.offload {
        eprintln!("{path}: the kernel refused TAP offloads; frames are plain");
    }
    Ok(tap)
}

/// Copies frames from `from` to `to` until `from` is empty.
fn drain(from: &mut File, to: &mut File, buf: &mut [u8]) -> io::Result<()> {
    loop {
        let n = match from.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // A frame the far side refuses (its queue is full) is lost, as on a
        // wire; the sender's TCP recovers.
        let _ = to.write(&buf[..n]);
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [a, b] = args.as_slice() else {
        return Err("usage: tap_forward NETNS_PATH_A NETNS_PATH_B".into());
    };
    let home = File::open("/proc/self/ns/net")?;
    let mut ports = [tap_in(a, &home)?.file, tap_in(b, &home)?.file];
    let mut poll = Poll::new()?;
    for (i, port) in ports.iter().enumerate() {
        use std::os::fd::AsRawFd;
        poll.registry().register(
            &mut SourceFd(&port.as_raw_fd()),
            Token(i),
            Interest::READABLE,
        )?;
    }
    println!("forwarding between eth0 in {a} and eth0 in {b}");
    let mut events = Events::with_capacity(4);
    let mut buf = vec![0u8; FRAME_MAX];
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        for ev in events.iter() {
            let [pa, pb] = &mut ports;
            let (from, to) = if ev.token() == Token(0) {
                (pa, pb)
            } else {
                (pb, pa)
            };
            drain(from, to, &mut buf)?;
        }
    }
}
