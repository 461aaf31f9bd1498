//! Bad input to the gateway's NAT from inside a sandbox, as the unprivileged
//! user `sytest`: a storm of RST and FIN segments of no flow and
//! out-of-window segments aimed at a live connection (crafted with a raw
//! socket, which the sandbox's root may open in its own namespaces). The
//! counters rise, the live connection keeps working, and no flow is left
//! behind. Packets addressed to the host's loopback and unspecified
//! addresses themselves (written straight to the sandbox's interface, which
//! its own kernel would never route out) reach no host service.

mod common;

use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};

use common::outside::{listen, LineServer, BODY};
use common::sysenv::{ok, Env, USER};

/// Opens a connection to the gateway's port, checks it, then sends `N`
/// crafted segments: RSTs and FINs of no flow from random ports, and data
/// with random sequence and acknowledgement numbers on the live connection's
/// own 5-tuple (RSTs there are left out: one that falls in the window by
/// chance would rightly reset it); finally checks the live connection still
/// works.
const STORM: &str = r#"
import random, socket, struct, sys
gw, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def seg(src, sport, dst, dport, seq, ack, flags, data=b""):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + data
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    c = csum(pseudo + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.randrange(65536), 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + tcp
live = socket.create_connection((gw, port), timeout=5)
live.sendall(b"first\n")
assert live.recv(100).startswith(b"HELLO"), "live connection answers"
me, myport = live.getsockname()
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(n):
    kind = i % 3
    if kind == 0:
        p = seg(me, random.randrange(1024, 65535), gw, port, random.randrange(1 << 32), 0, 0x04)
    elif kind == 1:
        p = seg(me, random.randrange(1024, 65535), gw, port, random.randrange(1 << 32), random.randrange(1 << 32), 0x11)
    else:
        p = seg(me, myport, gw, port, random.randrange(1 << 32), random.randrange(1 << 32), 0x18, b"junk")
    raw.sendto(p, (gw, 0))
live.sendall(b"again\n")
got = live.recv(100)
print("live=" + ("ok" if got.startswith(b"HELLO") else repr(got)))
"#;

#[test]
fn rst_fin_and_out_of_window_storms() {
    let Some(mut env) = Env::with_tools("natbad", Some(USER), &["python3"]) else {
        return;
    };
    let server = LineServer::start(listen(Ipv4Addr::LOCALHOST));
    env.start_daemon();
    ok(
        &env.sy(&[
            "network",
            "create",
            "storm",
            "--subnet",
            "10.246.0.0/24",
            "--host-loopback",
        ]),
        "network create",
    );
    let script = env.dir.join("storm.py");
    std::fs::write(&script, STORM.replace("HELLO", BODY)).expect("write script");
    let port = server.port().to_string();
    let script = script.display().to_string();
    let out = env.sy(&[
        "run",
        "--network",
        "storm",
        "--",
        "python3",
        &script,
        "10.246.0.1",
        &port,
        "4000",
    ]);
    ok(&out, "storm");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("live=ok"),
        "live connection survived:\n{text}"
    );
    let v = env.stats();
    let ev = |k: &str| v["stats"]["events"][k].as_u64().unwrap_or(0);
    assert!(
        ev("nat-rejected") >= 2600,
        "segments of no flow counted: {v}"
    );
    assert_eq!(
        ev("nat-tcp-flows"),
        1,
        "only the live connection opened a flow: {v}"
    );
    assert!(ev("nat-active-flows") <= 1, "{v}");
}

/// Sends, from inside a sandbox on its `eth0` through an `AF_PACKET`
/// socket, UDP to 127.0.0.1, 0.0.0.0, [::1] and [::ffff:127.0.0.1] and a
/// TCP SYN to 127.0.0.1 and [::ffff:127.0.0.1], all to the gateway's MAC;
/// prints `sent=N`.
const LOOPBACK_LEAK: &str = r#"
import socket, struct, sys, time
gw4, gw6, uport, tport, u6port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
# Resolve the gateway's MAC (the probe itself is rejected: no --host-loopback).
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect((gw4, 9)); me4 = u.getsockname()[0]; u.send(b"probe")
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u6.connect((gw6, 9)); me6 = u6.getsockname()[0]
gwmac = None
for _ in range(50):
    for line in open("/proc/net/arp").read().splitlines()[1:]:
        f = line.split()
        if f[0] == gw4 and f[3] != "00:00:00:00:00:00":
            gwmac = bytes.fromhex(f[3].replace(":", ""))
    if gwmac: break
    time.sleep(0.1)
# The interface's own MAC (/sys may be the host's).
r = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
r.bind(("eth0", 0))
mymac = r.getsockname()[4]
def l4(proto, sport, dport, pseudo):
    if proto == 17:
        body = b"leak"
        h = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
    else:
        h = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    c = csum(pseudo(len(h)) + h)
    off = 6 if proto == 17 else 16
    return h[:off] + struct.pack("!H", c or 0xffff) + h[off + 2:]
def v4(dst, proto, dport):
    src, dst = socket.inet_aton(me4), socket.inet_aton(dst)
    seg = l4(proto, 40000, dport, lambda n: src + dst + struct.pack("!BBH", 0, proto, n))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 1, 0x4000, 64, proto, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return gwmac + mymac + b"\x08\x00" + ip + seg
def v6(dst, proto, dport):
    src, dst = socket.inet_pton(socket.AF_INET6, me6), socket.inet_pton(socket.AF_INET6, dst)
    seg = l4(proto, 40000, dport, lambda n: src + dst + struct.pack("!I3xB", n, proto))
    ip = struct.pack("!IHBB", 6 << 28, len(seg), proto, 64) + src + dst
    return gwmac + mymac + b"\x86\xdd" + ip + seg
frames = [v4("127.0.0.1", 17, uport), v4("127.0.0.1", 6, tport), v4("0.0.0.0", 17, uport),
          v6("::1", 17, u6port), v6("::ffff:127.0.0.1", 17, uport), v6("::ffff:127.0.0.1", 6, tport)]
for _ in range(3):
    for f in frames:
        r.send(f)
    time.sleep(0.3)
print("sent=%d" % (3 * len(frames)))
"#;

#[test]
fn packets_to_the_hosts_loopback_reach_no_host_service() {
    let Some(mut env) = Env::with_tools("natlo", Some(USER), &["python3"]) else {
        return;
    };
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let udp6 = UdpSocket::bind("[::1]:0").expect("bind udp6");
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    for s in [&udp, &udp6] {
        s.set_nonblocking(true).expect("nonblocking");
    }
    tcp.set_nonblocking(true).expect("nonblocking");
    env.start_daemon();
    ok(
        &env.sy(&[
            "network",
            "create",
            "leak",
            "--subnet",
            "10.247.0.0/24",
            "--ipv6-subnet",
            "fd00:247::/64",
        ]),
        "network create",
    );
    let script = env.dir.join("leak.py");
    std::fs::write(&script, LOOPBACK_LEAK).expect("write script");
    let port = |a: std::io::Result<std::net::SocketAddr>| a.expect("addr").port().to_string();
    let args = [
        port(udp.local_addr()),
        port(tcp.local_addr()),
        port(udp6.local_addr()),
    ];
    let script = script.display().to_string();
    let out = env.sy(&[
        "run",
        "--network",
        "leak",
        "--",
        "python3",
        &script,
        "10.247.0.1",
        "fd00:247::1",
        &args[0],
        &args[1],
        &args[2],
    ]);
    ok(&out, "leak");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sent=18"), "frames sent:\n{text}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut b = [0u8; 64];
    for s in [&udp, &udp6] {
        let got = s.recv_from(&mut b);
        assert!(
            matches!(&got, Err(e) if e.kind() == ErrorKind::WouldBlock),
            "a datagram reached the host's loopback: {got:?}"
        );
    }
    let got = tcp.accept();
    assert!(
        matches!(&got, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "a connection reached the host's loopback: {got:?}"
    );
    let v = env.stats();
    let ev = |k: &str| v["stats"]["events"][k].as_u64().unwrap_or(0);
    // At least the loopback ones (the pipeline may drop 0.0.0.0 first).
    assert!(ev("nat-rejected") >= 15, "each counted: {v}");
    assert_eq!(ev("nat-udp-flows") + ev("nat-tcp-flows"), 0, "{v}");
}
