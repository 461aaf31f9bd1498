//! Bad input to the gateway's NAT from inside a sandbox, as the unprivileged
//! user `sytest`: a storm of RST and FIN segments of no flow and
//! out-of-window segments aimed at a live connection (crafted with a raw
//! socket, which the sandbox's root may open in its own namespaces). The
//! counters rise, the live connection keeps working, and no flow is left
//! behind.

mod common;

use std::net::Ipv4Addr;

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
