//! System tests of TAP ports and namespace attach: endpoints in two network
//! namespaces ping each other through the switch and carry iperf3 unsplit;
//! UDP datagrams coalesced per flow (one flow, and four interleaved) arrive
//! intact and in order; multi-queue attach; sandboxes. (`run_system.rs` covers sandboxes of an
//! unprivileged user.) Need root (skipped otherwise, failed under CI).

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::{require_root_or_skip, unique_octet, TestNetns};
use switchyard::clock::SystemClock;
use switchyard::dataplane::{Dataplane, DataplaneConfig, NetworkSpec, PortSpec};
use switchyard::ns::attach::{attach, attach_detailed, detach, AttachError};
use switchyard::ns::sandbox::{BindFiles, Sandbox};
use switchyard::ns::{namespace_id, AttachRequest, SandboxTarget};
use switchyard::ports::tap::TapPort;
use switchyard::ports::Port;
use switchyard::tables::topology::PortSecurity;
use switchyard::wire::MacAddr;

const HELPER: &str = env!("CARGO_BIN_EXE_switchyard");

fn request(target: SandboxTarget, subnet: u8, host: u8) -> AttachRequest {
    AttachRequest {
        target,
        ifname: "eth0".into(),
        mac: MacAddr([0x02, 0x5a, 0, subnet, 0, host]),
        ipv4: Some((Ipv4Addr::new(10, 123, subnet, host), 24)),
        ipv6: None,
        mtu: 1500,
        gateway4: None,
        gateway6: None,
        default_route: false,
        queues: 1,
    }
}

fn dataplane_with(ports: Vec<TapPort>) -> Dataplane {
    dataplane_configured(ports, true)
}

/// A one-worker data plane over `ports`, coalescing UDP or not.
fn dataplane_configured(ports: Vec<TapPort>, udp_gro: bool) -> Dataplane {
    let mut config = DataplaneConfig {
        workers: 1,
        ..DataplaneConfig::default()
    };
    config.worker.udp_gro = udp_gro;
    let mut dp = Dataplane::start(config, Arc::new(SystemClock::new())).expect("start data plane");
    let net = dp
        .add_network(NetworkSpec {
            name: "test".into(),
            gateway: None,
            isolate: false,
            internal: false,
            mac_cap: None,
            subnet4: None,
            subnet6: None,
            host_loopback: false,
        })
        .expect("add network");
    for p in ports {
        assert!(p.caps().offload, "TAP {} refused offloads", p.name());
        let spec = PortSpec {
            network: net,
            security: PortSecurity::default(),
            worker: None,
        };
        dp.add_port(spec, Box::new(p)).expect("add port");
    }
    dp
}

/// Attaches `a` as host 2 and `b` as host 3 of subnet 10.123.`x`.0/24 (and,
/// with `ipv6`, of fd5a:`x`::/64), checks each TAP got its name and
/// offloads, and wraps them as ports.
fn attach_pair(a: &TestNetns, b: &TestNetns, x: u8, ipv6: bool) -> Vec<TapPort> {
    let mut ports = Vec::new();
    for (ns, host) in [(a, 2), (b, 3)] {
        let target = SandboxTarget::Netns {
            path: ns.path(),
            userns: None,
        };
        let mut req = request(target, x, host);
        if ipv6 {
            req.ipv6 = Some((format!("fd5a:{x}::{host}").parse().expect("v6"), 64));
        }
        let att = attach_detailed(Path::new(HELPER), &req).expect("attach");
        assert_eq!(att.ifname, "eth0");
        assert!(att.offload);
        ports.extend(att.into_ports(1500).expect("wrap fds"));
    }
    ports
}

fn ping(ns: &TestNetns, to: &str) -> std::process::Output {
    ns.exec(&["ping", "-c", "3", "-W", "1", to])
}

#[test]
fn endpoints_in_two_namespaces_ping_through_the_switch() {
    if !require_root_or_skip() {
        return;
    }
    let (a, b) = (TestNetns::new("a"), TestNetns::new("b"));
    let x = unique_octet();
    let ports = attach_pair(&a, &b, x, false);
    let show = a.exec(&["ip", "-o", "addr", "show", "dev", "eth0"]);
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains(&format!("10.123.{x}.2/24")), "{show}");
    let lo = a.exec(&["ip", "-o", "link", "show", "lo"]);
    assert!(String::from_utf8_lossy(&lo.stdout).contains("UP"));

    let mut dp = dataplane_with(ports);
    let out = ping(&a, &format!("10.123.{x}.3"));
    assert!(
        out.status.success(),
        "ping failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = dp.stats();
    dp.shutdown();
    eprintln!("{stats:?}");
}

#[test]
fn tcp_crosses_the_switch_unsegmented() {
    if !require_root_or_skip() {
        return;
    }
    let (a, b) = (TestNetns::new("a"), TestNetns::new("b"));
    let x = unique_octet();
    let ports = attach_pair(&a, &b, x, false);
    let _dp = dataplane_with(ports);
    let server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            b.name(),
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5301",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    let mut server = scopeguard(server);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let start = Instant::now();
    let out = a.exec(&[
        "iperf3",
        "-c",
        &format!("10.123.{x}.3"),
        "-p",
        "5301",
        "-t",
        "3",
        "-J",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "iperf3 failed: {text}");
    let bps = text
        .split("\"sum_received\"")
        .nth(1)
        .and_then(|s| s.split("\"bits_per_second\":").nth(1))
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    eprintln!(
        "iperf3 through the switch: {:.2} Gbit/s ({:?})",
        bps / 1e9,
        start.elapsed()
    );
    assert!(bps > 0.0);
    let _ = server.0.wait();
}

/// Kills a child process when dropped.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}

/// Starts Python `script` with `args` in `ns` and waits for it to print
/// "ready"; returns the process (killed when dropped) and the rest of its
/// output.
fn start_receiver(
    ns: &TestNetns,
    script: &str,
    args: &[&str],
) -> (Guard, std::io::BufReader<std::process::ChildStdout>) {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "python3", "-c", script])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("receiver");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let guard = scopeguard(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("receiver starts");
    assert_eq!(line.trim(), "ready");
    (guard, out)
}

/// Runs Python sender `script` with `args` in `ns`, then returns the
/// receiver's next line (its report).
fn send_then_report(
    ns: &TestNetns,
    script: &str,
    args: &[&str],
    receiver: &mut std::io::BufReader<std::process::ChildStdout>,
) -> String {
    let mut cmd = vec!["python3", "-c", script];
    cmd.extend(args);
    let sent = ns.exec(&cmd);
    assert!(
        sent.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let mut line = String::new();
    std::io::BufRead::read_line(receiver, &mut line).expect("receiver reports");
    line.trim().to_string()
}

#[test]
fn multi_queue_attach_and_detach() {
    if !require_root_or_skip() {
        return;
    }
    let c = TestNetns::new("c");
    let target = SandboxTarget::Netns {
        path: c.path(),
        userns: None,
    };
    let mut req = request(target.clone(), unique_octet(), 2);
    req.queues = 3;
    req.mtu = 9000;
    req.ipv6 = Some(("fd00:5a::2".parse().expect("ipv6"), 64));
    req.gateway4 = Some(Ipv4Addr::new(10, 123, 0, 1));
    req.ipv4 = Some((Ipv4Addr::new(10, 123, 0, 2), 24));
    req.gateway6 = Some("fd00:5a::1".parse().expect("ipv6"));
    req.default_route = true;
    let fds = attach(Path::new(HELPER), &req).expect("attach 3 queues");
    assert_eq!(fds.len(), 3);
    let link = c.exec(&["ip", "-d", "link", "show", "eth0"]);
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("mtu 9000") && link.contains("multi_queue"),
        "{link}"
    );
    assert!(link.contains("02:5a:00:"), "{link}");
    let r4 = c.exec(&["ip", "route", "show", "default"]);
    assert!(String::from_utf8_lossy(&r4.stdout).contains("via 10.123.0.1 dev eth0"));
    let r6 = c.exec(&["ip", "-6", "route", "show", "default"]);
    assert!(String::from_utf8_lossy(&r6.stdout).contains("via fd00:5a::1 dev eth0"));
    // Attaching the same name again fails with a message about the TAP.
    let again = attach(Path::new(HELPER), &req).expect_err("name in use");
    assert!(
        matches!(
            again,
            AttachError::CreateTap { .. } | AttachError::Configure { .. }
        ),
        "{again}"
    );
    // detach deletes a live link; closing the fds alone would too.
    detach(Path::new(HELPER), &target, "eth0").expect("detach");
    let gone = c.exec(&["ip", "link", "show", "eth0"]);
    assert!(!gone.status.success());
    detach(Path::new(HELPER), &target, "eth0").expect("detach of a missing link is fine");
    drop(fds);
    assert_eq!(
        namespace_id(&target).expect("netns id"),
        namespace_id(&target).expect("netns id")
    );
}

#[test]
fn missing_namespaces_are_reported_as_such() {
    if !require_root_or_skip() {
        return;
    }
    let gone = SandboxTarget::Pid(u32::MAX - 1);
    let e = attach(Path::new(HELPER), &request(gone, 1, 2)).expect_err("no such pid");
    assert!(matches!(e, AttachError::NamespaceGone { .. }), "{e}");
    let gone = SandboxTarget::Netns {
        path: "/run/netns/sytap-does-not-exist".into(),
        userns: None,
    };
    let e = attach(Path::new(HELPER), &request(gone, 1, 2)).expect_err("no such netns");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

/// `TapPort::create` and the netlink client used directly from a thread that
/// entered a test namespace (`setns` of a network namespace is per thread).
#[test]
fn tap_created_in_place_is_configured_by_netlink() {
    if !require_root_or_skip() {
        return;
    }
    use switchyard::sys::netlink::{LinkChange, Netlink};
    use switchyard::sys::netns::{enter, NsKind};
    let d = TestNetns::new("d");
    let path = d.path();
    let ports = std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("open netns");
        enter(&ns, NsKind::Net).expect("enter netns");
        let ports = TapPort::create("sy%d", 2, 1400).expect("create TAP");
        let name = ports[0].name().to_string();
        let mut nl = Netlink::open().expect("netlink");
        let change = LinkChange {
            up: Some(true),
            mtu: Some(1400),
            mac: Some(MacAddr([2, 0x5a, 1, 2, 3, 4])),
        };
        nl.set_link(&name, &change).expect("set link");
        let down = LinkChange {
            up: Some(false),
            ..LinkChange::default()
        };
        nl.set_link(&name, &down).expect("set down");
        let e = nl.set_up("sytap-none").expect_err("missing link");
        assert!(e.to_string().contains("no interface named"), "{e}");
        ports
    })
    .join()
    .expect("thread");
    assert_eq!(ports.len(), 2);
    assert!(ports[0].name().starts_with("sy"), "{}", ports[0].name());
    assert_eq!(ports[0].name(), ports[1].name());
    let link = d.exec(&["ip", "-o", "link", "show", ports[0].name()]);
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("mtu 1400") && link.contains("02:5a:01:02:03:04"),
        "{link}"
    );
    assert!(link.contains("state DOWN"), "{link}");
    let name = ports[0].name().to_string();
    drop(ports);
    let gone = d.exec(&["ip", "link", "show", &name]);
    assert!(
        !gone.status.success(),
        "closing every queue removes the TAP"
    );
}

#[test]
fn sandbox_reports_a_command_it_cannot_run() {
    if !require_root_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sytap-{}", common::unique_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let files = BindFiles {
        resolv_conf: dir.join("resolv.conf"),
        hosts: dir.join("hosts"),
    };
    std::fs::write(&files.resolv_conf, "").expect("write");
    std::fs::write(&files.hosts, "").expect("write");
    let cmd = vec!["/nonexistent/sytap-cmd".to_string()];
    let mut sb = Sandbox::spawn_with(Path::new(HELPER), &cmd, &files).expect("spawn");
    let own = namespace_id(&SandboxTarget::Pid(std::process::id())).expect("own");
    let theirs = namespace_id(&SandboxTarget::Pid(sb.pid())).expect("sandbox netns");
    assert_ne!(own, theirs, "the sandbox has its own network namespace");
    sb.release().expect("release");
    assert_eq!(sb.wait().expect("wait"), 127);
    // An unreleased sandbox never runs its command: dropping the handle
    // closes its release pipe and it exits.
    let marker = dir.join("ran");
    let cmd = vec!["touch".to_string(), marker.to_string_lossy().into_owned()];
    let sb = Sandbox::spawn_with(Path::new(HELPER), &cmd, &files).expect("spawn");
    drop(sb);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!marker.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sender in A: 25 UDP GSO sends of 40 datagrams each (39 of 300 bytes,
/// one of 120), which reach the switch as one USO frame each and cross it
/// whole (or, on a kernel without USO, are cut into consecutive datagrams
/// before the TAP).
/// Payload: a 4-byte sequence number, then bytes derived from it.
const UDP_SEND: &str = r#"
import socket, struct, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(17, 103, 300)  # SOL_UDP, UDP_SEGMENT
def dgram(seq):
    n = 120 if seq % 40 == 39 else 300
    return struct.pack("!I", seq) + bytes((seq * 7 + j) & 0xff for j in range(n - 4))
for k in range(25):
    s.sendto(b"".join(dgram(k * 40 + i) for i in range(40)), (sys.argv[1], 5400))
    time.sleep(0.005)
"#;

/// The receiver in B: counts datagrams, wrong ones and ones out of order.
const UDP_RECV: &str = r#"
import socket, struct, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], 5400))
s.settimeout(3)
print("ready", flush=True)
got = bad = disorder = 0
last = -1
try:
    while got < 1000:
        d = s.recv(4096)
        seq = struct.unpack("!I", d[:4])[0]
        n = 120 if seq % 40 == 39 else 300
        if len(d) != n or d[4:] != bytes((seq * 7 + j) & 0xff for j in range(n - 4)):
            bad += 1
        if seq <= last:
            disorder += 1
        last = seq
        got += 1
except socket.timeout:
    pass
print(got, bad, disorder)
"#;

#[test]
fn udp_gso_bursts_arrive_intact_whole_or_cut() {
    if !require_root_or_skip() {
        return;
    }
    // USO frames to a TAP that takes them (the default), then with
    // `--no-udp-gro` (every datagram its own frame, so the switch cuts the
    // bursts): the same datagrams arrive either way, in order.
    for udp_gro in [true, false] {
        let (a, b) = (TestNetns::new("a"), TestNetns::new("b"));
        let x = unique_octet();
        let ports = attach_pair(&a, &b, x, true);
        let uso = ports.iter().all(|p| p.caps().uso);
        let dp = dataplane_configured(ports, udp_gro);
        for dst in [format!("10.123.{x}.3"), format!("fd5a:{x}::3")] {
            let (_recv, mut out) = start_receiver(&b, UDP_RECV, &[&dst]);
            assert_eq!(
                send_then_report(&a, UDP_SEND, &[&dst], &mut out),
                "1000 0 0",
                "to {dst} (UDP GRO {udp_gro}): datagrams received, wrong, out of order"
            );
        }
        let events = dp.stats().events;
        let merged = events.get("gro-merged").copied().unwrap_or(0);
        let split = events.get("uso-split").copied().unwrap_or(0);
        eprintln!(
            "USO: {uso}; UDP GRO: {udp_gro}; datagrams cut from USO reads: {split}, \
             merged into another: {merged}"
        );
        // With USO on both TAPs each 40-datagram send crosses whole, and B's
        // kernel cuts it; with coalescing off the switch cuts it before
        // B's TAP. Without USO, A's kernel cuts it before the switch.
        let want = if uso && !udp_gro { 2000 } else { 0 };
        assert_eq!(split, want, "datagrams cut by the switch");
        if uso && udp_gro {
            assert_eq!(merged, 0, "the bursts crossed whole, nothing to merge");
        }
        if !udp_gro {
            assert_eq!(merged, 0, "coalesced although turned off");
        }
    }
}

/// The sender in A: 4 bursts, each one `sendmmsg` on a raw socket of 200
/// UDP datagrams of 4 flows taking turns (ports 6000+f -> 5500+f), so
/// datagrams of different flows interleave in the switch's batches, as
/// replies to a resolver's sockets do. Every fifth datagram of a flow is
/// shorter (it ends a run). Payload: flow, sequence, bytes derived from them.
const INTERLEAVED_SEND: &str = r#"
import ctypes, socket, struct, sys, time
src, dst = socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2])
FLOWS, PER, BURSTS = 4, 50, 4
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
def body(flow, seq):
    n = 60 if seq % 5 == 4 else 200
    return struct.pack("!HH", flow, seq) + bytes((flow * 31 + seq * 7 + j) & 0xFF for j in range(n - 4))
def packet(flow, seq):
    payload = body(flow, seq)
    ulen = 8 + len(payload)
    udp = struct.pack("!HHHH", 6000 + flow, 5500 + flow, ulen, 0) + payload
    c = csum(src + dst + struct.pack("!BBH", 0, 17, ulen) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0x4000, 64, 17, 0, src, dst)
    return ip + udp
class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class Hdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(Iov)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class Msg(ctypes.Structure):
    _fields_ = [("hdr", Hdr), ("len", ctypes.c_uint)]
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
addr = ctypes.create_string_buffer(struct.pack("=HH4s8x", socket.AF_INET, 0, dst))
for burst in range(BURSTS):
    pkts = [packet(f, burst * PER + q) for q in range(PER) for f in range(FLOWS)]
    bufs = [ctypes.create_string_buffer(p, len(p)) for p in pkts]
    iovs = (Iov * len(pkts))(*[Iov(ctypes.addressof(b), len(p)) for b, p in zip(bufs, pkts)])
    msgs = (Msg * len(pkts))()
    for i in range(len(pkts)):
        h = msgs[i].hdr
        h.name, h.namelen = ctypes.addressof(addr), 16
        h.iov, h.iovlen = ctypes.pointer(iovs[i]), 1
    done = 0
    while done < len(pkts):
        n = libc.sendmmsg(s.fileno(), ctypes.byref(msgs, done * ctypes.sizeof(Msg)), len(pkts) - done, 0)
        if n <= 0:
            sys.exit("sendmmsg: errno %d" % ctypes.get_errno())
        done += n
    time.sleep(0.05)
"#;

/// The receiver in B: one socket per flow; counts datagrams, wrong ones and
/// ones out of their flow's order.
const INTERLEAVED_RECV: &str = r#"
import select, socket, struct, sys
FLOWS, TOTAL = 4, 200
socks = []
for f in range(FLOWS):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((sys.argv[1], 5500 + f))
    s.setblocking(False)
    socks.append(s)
print("ready", flush=True)
got, bad, disorder, last = [0] * FLOWS, 0, 0, [-1] * FLOWS
while sum(got) < FLOWS * TOTAL:
    ready, _, _ = select.select(socks, [], [], 3)
    if not ready:
        break
    for s in ready:
        f = socks.index(s)
        d = s.recv(4096)
        flow, seq = struct.unpack("!HH", d[:4])
        n = 60 if seq % 5 == 4 else 200
        want = bytes((flow * 31 + seq * 7 + j) & 0xFF for j in range(n - 4))
        if flow != f or len(d) != n or d[4:] != want:
            bad += 1
        if seq <= last[f]:
            disorder += 1
        last[f] = seq
        got[f] += 1
print(sum(got), bad, disorder)
"#;

#[test]
fn interleaved_udp_flows_are_coalesced_each_in_order() {
    if !require_root_or_skip() {
        return;
    }
    let (a, b) = (TestNetns::new("a"), TestNetns::new("b"));
    let x = unique_octet();
    let ports = attach_pair(&a, &b, x, false);
    let uso = ports.iter().all(|p| p.caps().uso);
    let dp = dataplane_configured(ports, true);
    let (src, dst) = (format!("10.123.{x}.2"), format!("10.123.{x}.3"));
    // Resolve B's MAC first, so no datagram waits in A's neighbour queue.
    let out = ping(&a, &dst);
    assert!(out.status.success(), "ping: {out:?}");
    let (_recv, mut out) = start_receiver(&b, INTERLEAVED_RECV, &[&dst]);
    let before = dp.stats().events.get("gro-merged").copied().unwrap_or(0);
    assert_eq!(
        send_then_report(&a, INTERLEAVED_SEND, &[&src, &dst], &mut out),
        "800 0 0",
        "datagrams received, wrong, out of their flow's order"
    );
    let merged = dp.stats().events.get("gro-merged").copied().unwrap_or(0) - before;
    eprintln!("USO: {uso}; datagrams merged into another of their flow: {merged}");
    if uso {
        assert!(merged > 0, "no run of interleaved flows was coalesced");
    }
}
