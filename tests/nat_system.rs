//! System tests of outbound NAT through the gateway with real clients
//! (`curl`, `nc`, python sockets) inside sandboxes started by `switchyard
//! run`, as the unprivileged user `sytest`: TCP and UDP to the host's
//! loopback on `--host-loopback` networks, TCP to "the internet" (a namespace
//! this test joins to the host by a veth pair), refusals propagating as
//! resets, internal networks dropping what leaves them, ten thousand idle
//! flows from one sandbox, the per-sandbox flow cap holding under a SYN
//! flood while other sandboxes keep working, published ports showing the
//! service its clients' real addresses (and refusing ports that are taken or
//! privileged, and freeing them on unpublish), and ICMP echo through ping
//! sockets where `net.ipv4.ping_group_range` allows them.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::outside::{closed_port, listen, Inet, LineServer, UdpEcho, BODY};
use common::sysenv::{ok, Env, USER};

fn event(v: &serde_json::Value, key: &str) -> u64 {
    v["stats"]["events"][key].as_u64().unwrap_or(0)
}

fn dropped(v: &serde_json::Value, key: &str) -> u64 {
    v["stats"]["drops"][key].as_u64().unwrap_or(0)
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value after `key=` on its own line of `out`, trimmed.
fn field(out: &str, key: &str) -> String {
    let prefix = format!("{key}=");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The address in a `peer=IP:PORT` line of `out`, without the port.
fn peer_ip(out: &str) -> String {
    let p = field(out, "peer");
    p.rsplit_once(':')
        .map(|(ip, _)| ip.to_string())
        .unwrap_or(p)
}

/// Raises this process's open-file limit (inherited by the daemon and the
/// sandboxes) to its hard limit, which must allow `n`; raising the hard limit
/// itself needs CAP_SYS_RESOURCE, which containers often drop.
fn raise_nofile(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard >= n,
        "open-file hard limit {hard} < {n}: raise it (ulimit -Hn) to run this test"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// Waits for a file another process writes (by rename, so it is whole).
fn wait_file(path: &Path, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(s) = std::fs::read_to_string(path) {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The value after `key=` among space-separated words.
fn word(s: &str, key: &str) -> u64 {
    let prefix = format!("{key}=");
    s.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A python client run inside a sandbox: opens N connections (at most
/// WINDOW connecting at once; with SETTLE > 0 it stops waiting for them
/// SETTLE seconds after the last connect), writes `ready connected= refused=
/// failed= pending=` to OUT, waits (at most 60 s) for the file GO, then sends
/// a line on every EVERY-th open connection (none when 0) and writes `done
/// replies=` to OUT.
const CLIENT: &str = r#"
import errno, os, select, socket, sys, time, resource
host, port, n, window, settle, every, out, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7], sys.argv[8]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def report(msg):
    with open(out + ".tmp", "w") as f:
        f.write(msg + "\n")
    os.rename(out + ".tmp", out)
ep = select.epoll()
pending = {}
conns = []
refused = failed = 0
started = 0
settle_at = None
deadline = time.time() + 60
while started < n or pending:
    while started < n and len(pending) < window:
        s = socket.socket()
        s.setblocking(False)
        err = s.connect_ex((host, port))
        started += 1
        if err in (0, errno.EINPROGRESS):
            pending[s.fileno()] = s
            ep.register(s.fileno(), select.EPOLLOUT)
        else:
            failed += 1
            s.close()
    now = time.time()
    if started >= n and settle > 0 and settle_at is None:
        settle_at = now + settle
    if now > deadline or (settle_at is not None and now > settle_at):
        break
    for fd, _ in ep.poll(0.5):
        s = pending.pop(fd)
        ep.unregister(fd)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            conns.append(s)
        elif err == errno.ECONNREFUSED:
            refused += 1
            s.close()
        else:
            failed += 1
            s.close()
report("ready connected=%d refused=%d failed=%d pending=%d" % (len(conns), refused, failed, len(pending)))
end = time.time() + 60
while not os.path.exists(go) and time.time() < end:
    time.sleep(0.1)
replies = 0
probes = conns[::every] if every else []
for s in probes:
    s.setblocking(True)
    s.settimeout(5)
    try:
        s.sendall(b"ping\n")
        got = b""
        while not got.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
        if got == b"HELLO\n":
            replies += 1
    except OSError as e:
        print("probe failed:", e, file=sys.stderr)
report("done replies=%d of=%d" % (replies, len(probes)))
"#;

/// How [`CLIENT`] connects.
struct Flood {
    n: usize,
    window: usize,
    settle_s: u32,
    probe_every: usize,
}

/// Runs [`CLIENT`] in a sandbox on `net`; returns the child's index and the
/// paths of its report and of the file that lets it go on.
fn start_client(
    env: &mut Env,
    net: &str,
    target: (&str, u16),
    how: Flood,
) -> (usize, std::path::PathBuf, std::path::PathBuf) {
    let script = env.dir.join("client.py");
    std::fs::write(&script, CLIENT.replace("HELLO", BODY)).expect("write client");
    let out = env.dir.join(format!("client-{net}.out"));
    let go = env.dir.join(format!("client-{net}.go"));
    let args: Vec<String> = vec![
        "run".into(),
        "--network".into(),
        net.into(),
        "--".into(),
        "python3".into(),
        script.display().to_string(),
        target.0.into(),
        target.1.to_string(),
        how.n.to_string(),
        how.window.to_string(),
        how.settle_s.to_string(),
        how.probe_every.to_string(),
        out.display().to_string(),
        go.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let i = env.spawn(&args);
    (i, out, go)
}

/// Shell function `refused URL`: connects to URL with curl three times and
/// prints `refused=RC MS`, curl's exit code and the fastest attempt.
const REFUSED: &str = r#"refused() {
    best=
    for i in 1 2 3; do
        start=$(date +%s%N); curl -sS --noproxy '*' -m 5 -g "$1"; rc=$?
        ms=$(( ($(date +%s%N) - start) / 1000000 ))
        if [ -z "$best" ] || [ "$ms" -lt "$best" ]; then best=$ms; fi
    done
    echo "refused=$rc $best"
}"#;

/// A [`REFUSED`] line: curl's "could not connect" (7), at once. The RST
/// used to wait for the gateway thread's longest sleep (500 ms).
fn assert_refused_quickly(line: &str, out: &str, err: &str) {
    let (rc, ms) = line.split_once(' ').expect("refused line");
    assert_eq!(rc, "7", "closed port refused:\n{out}{err}");
    assert!(
        ms.parse::<u64>().expect("ms") < 250,
        "refused at once:\n{out}"
    );
}

fn create_network(env: &Env, name: &str, subnet: &str, extra: &[&str]) {
    let mut args = vec!["network", "create", name, "--subnet", subnet];
    args.extend(extra);
    ok(&env.sy(&args), "network create");
}

/// A sandbox's UDP GSO send (`UDP_SEGMENT`): 10 datagrams of 100 bytes in
/// one `sendto` to ADDR PORT (the switch reads it as one USO frame where the
/// kernel has USO, and cuts it); prints how many distinct datagrams came
/// back from an echo server.
const GSO_BURST: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, 100)
s.settimeout(3)
s.sendto(b"".join(b"gso%02d" % i + b"." * 95 for i in range(10)), (sys.argv[1], int(sys.argv[2])))
got = set()
try:
    while len(got) < 10:
        d = s.recv(2048)
        if len(d) == 100 and d[5:] == b"." * 95:
            got.add(d[:5])
except socket.timeout:
    pass
print(len(got))
"#;

#[test]
fn outbound_tcp_udp_and_refusals() {
    let Some(mut env) = Env::with_tools("nat", Some(USER), &["curl", "nc", "python3"]) else {
        return;
    };
    let inet = Inet::create(0);
    let far = LineServer::start(inet.listen());
    let local = LineServer::start(listen(Ipv4Addr::LOCALHOST));
    let echo = UdpEcho::start();
    let closed = closed_port();
    env.start_daemon();
    create_network(&env, "lo", "10.231.0.0/24", &["--host-loopback"]);
    create_network(&env, "plain", "10.232.0.0/24", &[]);
    create_network(&env, "int", "10.233.0.0/24", &["--internal"]);

    let far_url = format!("http://{}:{}/", inet.addr(), far.port());
    let script = format!(
        r#"
        c() {{ curl -sS --noproxy '*' -m 5 "$@"; }}
        echo "tcp=$(c http://10.231.0.1:{lp}/)"
        echo "udp=$(echo hi | nc -u -w1 10.231.0.1 {up})"
        echo "gso=$(python3 -c "$GSO" 10.231.0.1 {up})"
        refused http://10.231.0.1:{closed}/
        echo "inet=$(c {far_url})"
        echo "dns=$(cat /etc/resolv.conf | grep -c 10.231.0.1)"
        "#,
        lp = local.port(),
        up = echo.port,
    );
    let script = format!("GSO='{GSO_BURST}'\n{REFUSED}\n{script}");
    let out = env.sy(&["run", "--network", "lo", "--", "sh", "-c", &script]);
    ok(&out, "client on lo");
    let o = text(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(field(&o, "tcp"), BODY, "host loopback over TCP:\n{o}{err}");
    assert_eq!(field(&o, "udp"), "hi", "host loopback over UDP:\n{o}{err}");
    assert_eq!(
        field(&o, "gso"),
        "10",
        "a UDP_SEGMENT burst leaves as its datagrams, each echoed:\n{o}{err}"
    );
    assert_refused_quickly(&field(&o, "refused"), &o, &err);
    assert_eq!(field(&o, "inet"), BODY, "far host over the veth:\n{o}{err}");

    // Without --host-loopback the gateway address is only the gateway.
    let script = format!(
        r#"start=$(date +%s%N); curl -sS --noproxy '*' -m 10 http://10.232.0.1:{lp}/; rc=$?
        echo "plain=$rc $(( ($(date +%s%N) - start) / 1000000 ))"
        echo "inet=$(curl -sS --noproxy '*' -m 5 {far_url})""#,
        lp = local.port(),
    );
    let out = env.sy(&["run", "--network", "plain", "--", "sh", "-c", &script]);
    ok(&out, "client on plain");
    let o = text(&out);
    let plain = field(&o, "plain");
    let (rc, ms) = plain.split_once(' ').expect("plain line");
    assert_eq!(rc, "7", "refused, not reached nor dropped:\n{o}");
    assert!(
        ms.parse::<u64>().expect("ms") < 2000,
        "failed quickly:\n{o}"
    );
    assert_eq!(field(&o, "inet"), BODY, "plain networks still go out:\n{o}");

    // An internal network has no way out.
    let before = dropped(&env.stats(), "internal-network");
    let script = format!("curl -sS --noproxy '*' -m 3 {far_url}; echo \"rc=$?\"");
    let out = env.sy(&["run", "--network", "int", "--", "sh", "-c", &script]);
    ok(&out, "client on int");
    let o = text(&out);
    assert_ne!(field(&o, "rc"), "0", "internal network went out:\n{o}");

    let v = env.stats();
    assert!(
        dropped(&v, "internal-network") > before,
        "internal-network drops: {v}"
    );
    assert!(event(&v, "nat-tcp-flows") >= 2, "{v}");
    assert!(event(&v, "nat-udp-flows") >= 1, "{v}");
    assert!(event(&v, "nat-refused") >= 1, "{v}");
    eprintln!("datagrams cut from USO reads: {}", event(&v, "uso-split"));
}

#[test]
fn outbound_ipv6_tcp_udp_and_refusals() {
    let Some(mut env) = Env::with_tools("nat6", Some(USER), &["curl", "nc"]) else {
        return;
    };
    let inet = Inet::create(3);
    let far = LineServer::start(inet.listen6());
    let local = LineServer::start(TcpListener::bind("[::1]:0").expect("bind [::1]"));
    let echo = UdpEcho::start_on("[::1]:0");
    let closed = TcpListener::bind("[::1]:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    env.start_daemon();
    let v6 = |subnet: &'static str| ["--ipv6-subnet", subnet];
    let mut lo6 = v6("fd00:238::/64").to_vec();
    lo6.push("--host-loopback");
    create_network(&env, "lo6", "10.238.0.0/24", &lo6);
    create_network(&env, "plain6", "10.239.0.0/24", &v6("fd00:239::/64"));
    let mut int6 = v6("fd00:23a::/64").to_vec();
    int6.push("--internal");
    create_network(&env, "int6", "10.23.58.0/24", &int6);

    let far_url = format!("http://[{}]:{}/", inet.addr6(), far.port());
    let script = format!(
        r#"
        c() {{ curl -sS --noproxy '*' -m 5 -g "$@"; }}
        echo "route=$(ip -6 route show default | cut -d' ' -f1-3)"
        echo "tcp=$(c 'http://[fd00:238::1]:{lp}/')"
        echo "udp=$(echo hi | nc -6 -u -w1 fd00:238::1 {up})"
        refused 'http://[fd00:238::1]:{closed}/'
        echo "inet=$(c '{far_url}')"
        "#,
        lp = local.port(),
        up = echo.port,
    );
    let script = format!("{REFUSED}\n{script}");
    let out = env.sy(&["run", "--network", "lo6", "--", "sh", "-c", &script]);
    ok(&out, "client on lo6");
    let o = text(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(field(&o, "route"), "default via fd00:238::1", "{o}{err}");
    assert_eq!(field(&o, "tcp"), BODY, "host [::1] over TCP:\n{o}{err}");
    assert_eq!(field(&o, "udp"), "hi", "host [::1] over UDP:\n{o}{err}");
    assert_refused_quickly(&field(&o, "refused"), &o, &err);
    assert_eq!(field(&o, "inet"), BODY, "far host over IPv6:\n{o}{err}");

    // Without --host-loopback the gateway address is only the gateway; the
    // far host is still reachable.
    let script = format!(
        r#"curl -sS --noproxy '*' -m 5 -g 'http://[fd00:239::1]:{lp}/'; echo "plain=$?"
        echo "inet=$(curl -sS --noproxy '*' -m 5 -g '{far_url}')""#,
        lp = local.port(),
    );
    let out = env.sy(&["run", "--network", "plain6", "--", "sh", "-c", &script]);
    ok(&out, "client on plain6");
    let o = text(&out);
    assert_eq!(field(&o, "plain"), "7", "refused:\n{o}");
    assert_eq!(field(&o, "inet"), BODY, "plain networks go out:\n{o}");

    // An internal network has no way out over IPv6 either.
    let before = dropped(&env.stats(), "internal-network");
    let script = format!("curl -sS --noproxy '*' -m 3 -g '{far_url}'; echo \"rc=$?\"");
    let out = env.sy(&["run", "--network", "int6", "--", "sh", "-c", &script]);
    ok(&out, "client on int6");
    assert_ne!(field(&text(&out), "rc"), "0", "internal network went out");

    let v = env.stats();
    assert!(dropped(&v, "internal-network") > before, "{v}");
    assert!(event(&v, "nat-tcp-flows") >= 3, "{v}");
    assert!(event(&v, "nat-udp-flows") >= 1, "{v}");
    assert!(event(&v, "nat-refused") >= 1, "{v}");
    // The stack's own neighbour discovery never reaches a sandbox.
    assert_eq!(event(&v, "gateway-stack-unroutable"), 0, "{v}");
}

#[test]
fn ten_thousand_idle_connections() {
    const N: usize = 10_000;
    let Some(mut env) = Env::with_tools("nat10k", Some(USER), &["python3"]) else {
        return;
    };
    let started = Instant::now();
    // Our server holds N connections, the daemon N host sockets, the
    // sandbox N sockets: all inherit this limit.
    raise_nofile(N as u64 + 1000);
    let server = LineServer::start(listen(Ipv4Addr::LOCALHOST));
    env.start_daemon();
    create_network(&env, "lo", "10.234.0.0/24", &["--host-loopback"]);
    let (child, out, go) = start_client(
        &mut env,
        "lo",
        ("10.234.0.1", server.port()),
        Flood {
            n: N,
            window: 512,
            settle_s: 0,
            probe_every: 1000,
        },
    );
    let ready = wait_file(&out, Duration::from_secs(60)).expect("client ready in 60 s");
    let connected = word(&ready, "connected");
    let v = env.stats();
    let rss = env
        .daemon
        .as_ref()
        .and_then(|d| std::fs::read_to_string(format!("/proc/{}/status", d.id())).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    eprintln!(
        "{N} connections after {:?}: {ready} server holds {}; daemon {rss}",
        started.elapsed(),
        server.open.load(Ordering::Relaxed)
    );
    assert_eq!(connected, N as u64, "{ready}");
    assert!(event(&v, "nat-active-flows") >= N as u64, "{v}");
    // The kernel completes handshakes before our server accepts them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.open.load(Ordering::Relaxed) < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = server.open.load(Ordering::Relaxed);
    assert!(held >= N, "the server holds {held}");

    std::fs::write(&go, "").expect("go");
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let s = std::fs::read_to_string(&out).unwrap_or_default();
        if s.starts_with("done") || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        word(&done, "replies"),
        10,
        "idle connections still work: {done}"
    );
    assert!(env.wait_child(child).success(), "client");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn syn_flood_is_capped() {
    const CAP: u64 = 200;
    let Some(mut env) = Env::with_tools("natflood", Some(USER), &["curl", "python3"]) else {
        return;
    };
    // Never accepts: once its backlog is full, host connects hang and their
    // flows sit waiting for the connect, as under a SYN flood.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let web = LineServer::start(listen(Ipv4Addr::LOCALHOST));
    env.start_daemon_with(&["--nat-max-flows-per-sandbox", &CAP.to_string()]);
    create_network(&env, "lo", "10.235.0.0/24", &["--host-loopback"]);
    let (child, out, go) = start_client(
        &mut env,
        "lo",
        ("10.235.0.1", silent_port),
        Flood {
            n: 1000,
            window: 1000,
            settle_s: 3,
            probe_every: 0,
        },
    );
    let ready = wait_file(&out, Duration::from_secs(60)).expect("flood reported");
    let v = env.stats();
    eprintln!("flood: {ready}");
    assert!(event(&v, "nat-flow-cap") > 0, "{v}");
    assert!(event(&v, "nat-active-flows") <= CAP, "{v}");
    assert!(word(&ready, "refused") > 0, "capped SYNs refused: {ready}");
    assert!(
        event(&v, "nat-flow-cap") >= word(&ready, "refused"),
        "every refusal is a cap hit: {ready} {v}"
    );
    assert!(
        word(&ready, "connected") + word(&ready, "pending") <= CAP,
        "{ready}"
    );

    // Another sandbox on the same network is not starved.
    let url = format!("http://10.235.0.1:{}/", web.port());
    let out2 = env.sy(&[
        "run",
        "--network",
        "lo",
        "--",
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "-m",
        "5",
        &url,
    ]);
    ok(&out2, "curl beside the flood");
    assert_eq!(text(&out2), BODY);
    let v = env.stats();
    assert!(event(&v, "nat-active-flows") <= CAP + 1, "{v}");
    // The two sandboxes hold consecutive data-plane ports, so each has a
    // gateway-stack thread of its own (the daemon runs 2): the flood's
    // flows sit on one, the curl's on the other.
    assert_eq!(event(&v, "gateway-threads"), 2, "{v}");
    let per_thread = [
        event(&v, "nat-flows-thread-0"),
        event(&v, "nat-flows-thread-1"),
    ];
    assert!(per_thread.iter().all(|&n| n > 0), "{per_thread:?} {v}");
    assert!(per_thread.contains(&1), "{per_thread:?} {v}");
    std::fs::write(&go, "").expect("go");
    assert!(env.wait_child(child).success(), "flood client");
    drop(silent);
}

/// N host ports free for TCP and UDP on every address, from
/// 20000 + pid % 10000 on, 1000 further for each call (below the ephemeral
/// range, so no client takes them meanwhile).
fn free_ports<const N: usize>() -> [u16; N] {
    let free = |p: u16| {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, p)).is_ok()
            && UdpSocket::bind((Ipv4Addr::UNSPECIFIED, p)).is_ok()
    };
    // Tests of one process run at once: each call starts elsewhere.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed) % 10;
    let mut p = 20_000 + ((std::process::id() + u32::from(call) * 1000) % 10_000) as u16;
    let mut found = [0; N];
    let mut n = 0;
    while n < N {
        if free(p) {
            found[n] = p;
            n += 1;
        }
        p = if p >= 29_999 { 20_000 } else { p + 1 };
    }
    found
}

/// Connects to `to` and reads until the server closes (at most 3 s each).
fn read_reply(to: impl Into<SocketAddr>) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Sends `n` short requests to echo service `to` on one connection, each
/// after the previous answer (at most 2 s each); returns how many came back
/// whole and how long that took.
fn echo_exchanges(to: impl Into<SocketAddr>, n: usize) -> std::io::Result<(usize, Duration)> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_nodelay(true)?;
    let start = Instant::now();
    for i in 0..n {
        let req = format!("request {i}\n");
        s.write_all(req.as_bytes())?;
        let mut got = vec![0u8; req.len()];
        s.read_exact(&mut got)?;
        if got != req.as_bytes() {
            return Ok((i, start.elapsed()));
        }
    }
    Ok((n, start.elapsed()))
}

/// A connection to echo service `to` that has answered one request.
fn echo_conn(to: impl Into<SocketAddr>) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"hello\n")?;
    let mut got = [0u8; 6];
    s.read_exact(&mut got)?;
    Ok(s)
}

/// Whether the connection ends (end of stream or an error) within 5 s;
/// the service must not have sent anything more.
fn ends(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// Sends a datagram to `to` until one comes back (5 tries, 1 s each).
fn udp_ask(to: impl Into<SocketAddr>) -> std::io::Result<String> {
    let to = to.into();
    let any: SocketAddr = if to.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let u = UdpSocket::bind(any)?;
    u.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 512];
    for _ in 0..5 {
        u.send_to(b"hi\n", to)?;
        match u.recv_from(&mut buf) {
            Ok((n, _)) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Err(ErrorKind::TimedOut.into())
}

/// The service of a published sandbox: TCP 8080 answers every connection
/// with the client address it sees and closes; UDP 9000 answers every
/// datagram with the client's IP; TCP 8082 echoes what it reads, as a
/// request/response protocol answers.
const PEER_SERVER: &str = r#"
import socket, threading
def listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    return s
def tcp():
    s = listener(8080)
    while True:
        c, a = s.accept()
        try:
            c.sendall(("peer=%s:%d\n" % a).encode())
        except OSError:
            pass
        c.close()
threading.Thread(target=tcp, daemon=True).start()
def echo_conn(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
def echo():
    s = listener(8082)
    while True:
        c, a = s.accept()
        threading.Thread(target=echo_conn, args=(c,), daemon=True).start()
threading.Thread(target=echo, daemon=True).start()
def dual(kind, port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    return s
def tcp6():
    s = dual(socket.SOCK_STREAM, 8081)
    s.listen(64)
    while True:
        c, a = s.accept()
        try:
            c.sendall(("peer=%s:%d\n" % (a[0], a[1])).encode())
        except OSError:
            pass
        c.close()
def udp(u):
    while True:
        data, a = u.recvfrom(2048)
        u.sendto(("peer=%s\n" % a[0]).encode(), a)
threading.Thread(target=tcp6, daemon=True).start()
threading.Thread(target=udp, args=(dual(socket.SOCK_DGRAM, 9001),), daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 9000))
udp(u)
"#;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn published_ports_keep_the_client_address() {
    let Some(mut env) = Env::with_tools("natpub", Some(USER), &["python3"]) else {
        return;
    };
    let started = Instant::now();
    let inet = Inet::create(1);
    let [hp, up, hp6, up6, ep] = free_ports::<5>();
    env.start_daemon();
    create_network(
        &env,
        "pub",
        "10.236.0.0/24",
        &["--ipv6-subnet", "fd00:236::/64"],
    );
    let script = env.dir.join("peer_server.py");
    std::fs::write(&script, PEER_SERVER).expect("write server");
    let (tcp_spec, udp_spec) = (format!("{hp}:8080"), format!("{up}:9000/udp"));
    let (tcp6_spec, udp6_spec) = (format!("[::]:{hp6}:8081"), format!("[::]:{up6}:9001/udp"));
    let echo_spec = format!("{ep}:8082");
    let script = script.display().to_string();
    env.spawn(&[
        "run",
        "--network",
        "pub",
        "--name",
        "srv",
        "-p",
        &tcp_spec,
        "-p",
        &udp_spec,
        "-p",
        &tcp6_spec,
        "-p",
        &udp6_spec,
        "-p",
        &echo_spec,
        "--",
        "python3",
        &script,
    ]);
    env.spawn(&[
        "run",
        "--network",
        "pub",
        "--name",
        "other",
        "--",
        "sleep",
        "600",
    ]);
    env.wait_endpoints(&["srv", "other"]);

    // Clients in the far namespace reach the host side of the veth.
    let published = SocketAddrV4::new(inet.host_ip(), hp);
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        let r = inet.enter(move || read_reply(published));
        match r {
            Ok(s) if s.starts_with("peer=") => break s,
            _ if Instant::now() > deadline => panic!("service never answered: {r:?}\n{}", env.ps()),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    eprintln!("up after {:?}: {}", started.elapsed(), reply.trim());
    for _ in 0..3 {
        let reply = inet
            .enter(move || read_reply(published))
            .expect("tcp client");
        let peer: SocketAddrV4 = field(&reply, "peer").parse().expect("peer=IP:PORT");
        assert_eq!(
            *peer.ip(),
            inet.addr(),
            "the service sees the client's own address: {reply}"
        );
        assert_ne!(peer.port(), 0, "{reply}");
    }
    let to = SocketAddrV4::new(inet.host_ip(), up);
    let reply = inet.enter(move || udp_ask(to)).expect("udp client");
    assert_eq!(
        field(&reply, "peer"),
        inet.addr().to_string(),
        "UDP too: {reply}"
    );

    // A listener on [::]: IPv6 clients reach the sandbox's IPv6 address
    // from their own, IPv4 clients (mapped into IPv6 by the listener) its
    // IPv4 address from theirs.
    let published6 = SocketAddr::from((inet.host_ip6(), hp6));
    let reply = inet
        .enter(move || read_reply(published6))
        .expect("tcp client over IPv6");
    assert_eq!(peer_ip(&reply), inet.addr6().to_string(), "{reply}");
    let mapped = SocketAddr::from((inet.host_ip(), hp6));
    let reply = inet
        .enter(move || read_reply(mapped))
        .expect("tcp client over IPv4 to [::]");
    assert_eq!(
        peer_ip(&reply),
        format!("::ffff:{}", inet.addr()),
        "{reply}"
    );
    let to6 = SocketAddr::from((inet.host_ip6(), up6));
    let reply = inet
        .enter(move || udp_ask(to6))
        .expect("udp client over IPv6");
    assert_eq!(field(&reply, "peer"), inet.addr6().to_string(), "{reply}");

    // A client on the host's loopback is spliced into the sandbox.
    let spliced = event(&env.stats(), "published-spliced");
    let reply = read_reply(SocketAddrV4::new(Ipv4Addr::LOCALHOST, hp)).expect("loopback client");
    assert!(reply.starts_with("peer="), "loopback client: {reply:?}");
    // Request and response through the splice: every small request must be
    // passed on at once. (Held back as if more were coming, each one waited
    // for TCP's 200 ms cork timer, both ways: ~8 s for these 20.)
    let (echoed, took) = echo_exchanges(SocketAddrV4::new(Ipv4Addr::LOCALHOST, ep), 20)
        .expect("echo client over the loopback");
    assert_eq!(echoed, 20, "requests answered through the splice");
    assert!(
        took < Duration::from_secs(2),
        "20 requests through the splice took {took:?}"
    );
    let v = env.stats();
    assert!(event(&v, "published-spliced") > spliced + 1, "{v}");
    // So is an IPv4 loopback client of the dual-stack listener, which sees
    // it as ::ffff:127.0.0.1 (it used to take the stack instead).
    let spliced = event(&v, "published-spliced");
    let reply = read_reply(SocketAddrV4::new(Ipv4Addr::LOCALHOST, hp6)).expect("loopback to [::]");
    assert!(
        reply.starts_with("peer="),
        "loopback client of [::]: {reply:?}"
    );
    let v = env.stats();
    assert_eq!(event(&v, "published-spliced"), spliced + 1, "{v}");
    assert!(event(&v, "published-tcp-connections") >= 6, "{v}");
    assert!(event(&v, "published-udp-sessions") >= 2, "{v}");

    // Ports another endpoint or another process holds, or privileged ones.
    let out = env.sy(&["publish", "other", &tcp_spec]);
    assert!(!out.status.success(), "published twice: {}", text(&out));
    assert!(
        stderr(&out).contains("already published by endpoint \"pub/srv\""),
        "{}",
        stderr(&out)
    );
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let p = taken.local_addr().expect("addr").port();
    let out = env.sy(&["publish", "srv", &format!("127.0.0.1:{p}:8080")]);
    assert!(!out.status.success(), "published a bound port");
    assert!(stderr(&out).contains("already in use"), "{}", stderr(&out));
    drop(taken);
    let unprivileged: u32 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    if unprivileged > 80 {
        let out = env.sy(&["publish", "srv", "80:8080"]);
        assert!(!out.status.success(), "published port 80 as {USER}");
        assert!(stderr(&out).contains("permission"), "{}", stderr(&out));
    } else {
        eprintln!("ip_unprivileged_port_start is {unprivileged}: port 80 is not privileged here");
    }
    let ps = env.ps();
    assert!(
        !ps.contains("127.0.0.1:") && !ps.contains(":80:"),
        "failed publications are not recorded:\n{ps}"
    );
    // The publication still works after the refusals.
    let reply = inet
        .enter(move || read_reply(published))
        .expect("tcp client");
    assert!(reply.starts_with("peer="), "{reply:?}");

    // Unpublished: the port is free at once and no longer leads in.
    ok(&env.sy(&["unpublish", "srv", &tcp_spec]), "unpublish");
    let mine = TcpListener::bind((Ipv4Addr::UNSPECIFIED, hp)).expect("port freed by unpublish");
    let r = inet.enter(move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&published.into(), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Ok(String::new())
            }
            Err(e) => Err(e),
        }
    });
    assert_eq!(r.expect("connect to our listener"), "", "sandbox answered");
    mine.set_nonblocking(true).expect("nonblocking");
    let (_, peer) = mine.accept().expect("the connection came to our listener");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(inet.addr()));
    drop(mine);
    let r = inet.enter(move || read_reply(published));
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        "nothing listens after unpublish: {r:?}"
    );
    let ps = env.ps();
    assert!(!ps.contains(&format!(":{hp}->")), "{ps}");

    // Leaving the network ends the sandbox's connections: spliced ones
    // (a loopback client) as well as those through the stack.
    let mut spliced = echo_conn(SocketAddrV4::new(Ipv4Addr::LOCALHOST, ep)).expect("loopback");
    let echo = SocketAddrV4::new(inet.host_ip(), ep);
    let mut stacked = inet.enter(move || echo_conn(echo)).expect("client netns");
    ok(&env.sy(&["disconnect", "pub", "srv"]), "disconnect");
    assert!(
        ends(&mut spliced),
        "the spliced connection outlived disconnect"
    );
    assert!(
        ends(&mut stacked),
        "the stack's connection outlived disconnect"
    );
    eprintln!("published ports test took {:?}", started.elapsed());
}

/// The line of `switchyard ps` for endpoint `name`.
fn ps_line(ps: &str, name: &str) -> String {
    ps.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or("")
        .to_string()
}

/// A spec without a host address used to bind 0.0.0.0 alone: IPv6 clients
/// were refused, and a port another process held on IPv6 went unnoticed.
/// Now it listens on IPv4 and IPv6 as Docker's `-p` does; `unpublish`
/// takes the host port alone.
#[test]
fn published_ports_without_a_host_address_listen_on_both_families() {
    let Some(mut env) = Env::with_tools("natdual", Some(USER), &["python3"]) else {
        return;
    };
    let inet = Inet::create(4);
    let [tp, up, tp4, taken6, amb] = free_ports::<5>();
    env.start_daemon();
    create_network(
        &env,
        "dual",
        "10.235.0.0/24",
        &["--ipv6-subnet", "fd00:235::/64"],
    );
    create_network(&env, "only4", "10.234.0.0/24", &[]);
    let script = env.dir.join("peer_server.py");
    std::fs::write(&script, PEER_SERVER).expect("write server");
    let script = script.display().to_string();
    let (tcp_spec, udp_spec) = (format!("{tp}:8081"), format!("{up}:9001/udp"));
    env.spawn(&[
        "run",
        "--network",
        "dual",
        "--name",
        "srv",
        "-p",
        &tcp_spec,
        "-p",
        &udp_spec,
        "--",
        "python3",
        &script,
    ]);
    let v4_spec = format!("{tp4}:8080");
    env.spawn(&[
        "run",
        "--network",
        "only4",
        "--name",
        "srv4",
        "-p",
        &v4_spec,
        "--",
        "python3",
        &script,
    ]);
    env.wait_endpoints(&["srv", "srv4"]);

    // An IPv6 client reaches the sandbox's IPv6 address from its own.
    let to6 = SocketAddr::from((inet.host_ip6(), tp));
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        let r = inet.enter(move || read_reply(to6));
        match r {
            Ok(s) if s.starts_with("peer=") => break s,
            _ if Instant::now() > deadline => {
                panic!("no answer over IPv6 to {tcp_spec}: {r:?}\n{}", env.ps())
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!(peer_ip(&reply), inet.addr6().to_string(), "{reply}");
    let u6 = SocketAddr::from((inet.host_ip6(), up));
    let reply = inet.enter(move || udp_ask(u6)).expect("udp over IPv6");
    assert_eq!(field(&reply, "peer"), inet.addr6().to_string(), "{reply}");
    // An IPv4 client as before: its own address, loopback spliced.
    let to4 = SocketAddr::from((inet.host_ip(), tp));
    let reply = inet.enter(move || read_reply(to4)).expect("tcp over IPv4");
    assert_eq!(
        peer_ip(&reply),
        format!("::ffff:{}", inet.addr()),
        "{reply}"
    );
    let to4 = SocketAddr::from((inet.host_ip(), up));
    let reply = inet.enter(move || udp_ask(to4)).expect("udp over IPv4");
    assert_eq!(field(&reply, "peer"), format!("::ffff:{}", inet.addr()));
    let spliced = event(&env.stats(), "published-spliced");
    let reply = read_reply(SocketAddrV4::new(Ipv4Addr::LOCALHOST, tp)).expect("loopback");
    assert!(
        reply.starts_with("peer="),
        "IPv4 loopback client: {reply:?}"
    );
    assert_eq!(event(&env.stats(), "published-spliced"), spliced + 1);
    // The host's own [::1], where it has one, is spliced as well.
    if std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)).is_ok() {
        let reply = read_reply((std::net::Ipv6Addr::LOCALHOST, tp)).expect("[::1] client");
        assert!(reply.starts_with("peer="), "[::1] client: {reply:?}");
        assert_eq!(event(&env.stats(), "published-spliced"), spliced + 2);
    } else {
        eprintln!("no ::1 on this host's loopback: the [::1] client is not tried");
    }
    // A sandbox without IPv6 sees an IPv6 client as the gateway.
    let to6 = SocketAddr::from((inet.host_ip6(), tp4));
    let reply = inet
        .enter(move || read_reply(to6))
        .expect("IPv6 client of an IPv4-only sandbox");
    let peer: SocketAddrV4 = field(&reply, "peer").parse().expect("peer=IP:PORT");
    assert_eq!(*peer.ip(), Ipv4Addr::new(10, 234, 0, 1), "{reply}");
    assert!((32768..=60999).contains(&peer.port()), "{reply}");
    // `ps` says where it listens.
    let line = ps_line(&env.ps(), "srv");
    for bound in [
        format!("0.0.0.0:{tp}->8081/tcp"),
        format!("[::]:{tp}->8081/tcp"),
        format!("[::]:{up}->9001/udp"),
    ] {
        assert!(line.contains(&bound), "{bound} in ps:\n{line}");
    }

    // A port another process holds on IPv6 alone is taken too.
    let holder = std::net::TcpListener::bind((inet.host_ip6(), taken6)).expect("bind IPv6");
    let out = env.sy(&["publish", "srv", &format!("{taken6}:8081")]);
    assert!(!out.status.success(), "published a port held on IPv6");
    assert!(stderr(&out).contains("already in use"), "{}", stderr(&out));
    drop(holder);

    // `unpublish` by host port: unmatched and ambiguous specs say what is
    // published; a match frees the port on both families at once.
    for ip in ["127.0.0.1", "127.0.0.2"] {
        ok(
            &env.sy(&["publish", "srv", &format!("{ip}:{amb}:8081")]),
            "publish",
        );
    }
    let out = env.sy(&["unpublish", "srv", &amb.to_string()]);
    assert!(!out.status.success(), "ambiguous unpublish");
    assert!(
        stderr(&out).contains(&format!(
            "127.0.0.1:{amb}:8081/tcp, 127.0.0.2:{amb}:8081/tcp"
        )),
        "{}",
        stderr(&out)
    );
    let out = env.sy(&["unpublish", "srv", &format!("{tp}/udp")]);
    assert!(!out.status.success(), "unpublished what is not published");
    assert!(
        stderr(&out).contains(&format!("it publishes: {tcp_spec}/tcp, {udp_spec}")),
        "{}",
        stderr(&out)
    );
    ok(
        &env.sy(&["unpublish", "srv", &format!("127.0.0.2:{amb}")]),
        "unpublish",
    );
    ok(&env.sy(&["unpublish", "srv", &tp.to_string()]), "unpublish");
    ok(
        &env.sy(&["unpublish", "srv", &format!("0.0.0.0:{up}->9001/udp")]),
        "unpublish",
    );
    let mine6 = TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, tp))
        .expect("unpublish freed the port on IPv6");
    drop(mine6);
    let mine4 = TcpListener::bind((Ipv4Addr::UNSPECIFIED, tp)).expect("and on IPv4");
    drop(mine4);
    UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, up)).expect("UDP port freed");
    let line = ps_line(&env.ps(), "srv");
    assert!(
        !line.contains(&format!(":{tp}->")) && !line.contains(&format!(":{up}->")),
        "{line}"
    );
    assert!(
        line.contains(&format!("127.0.0.1:{amb}->8081/tcp")),
        "{line}"
    );
}

/// Sets `net.ipv4.ping_group_range`, restoring what it was on drop.
struct PingGroupRange {
    saved: String,
}

const PING_GROUP_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

impl PingGroupRange {
    fn save() -> PingGroupRange {
        let saved = std::fs::read_to_string(PING_GROUP_RANGE).expect("read ping_group_range");
        PingGroupRange {
            saved: saved.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }

    fn set(&self, v: &str) {
        std::fs::write(PING_GROUP_RANGE, v).expect("write ping_group_range");
    }
}

impl Drop for PingGroupRange {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(PING_GROUP_RANGE, &self.saved) {
            eprintln!(
                "could not restore ping_group_range to {:?}: {e}",
                self.saved
            );
        }
    }
}

#[test]
fn icmp_echo_through_ping_sockets() {
    let Some(mut env) = Env::with_tools("naticmp", Some(USER), &["ping"]) else {
        return;
    };
    let inet = Inet::create(2);
    let range = PingGroupRange::save();
    env.start_daemon();
    create_network(
        &env,
        "icmp",
        "10.237.0.0/24",
        &["--ipv6-subnet", "fd00:237::/64"],
    );
    let far = inet.addr().to_string();
    // `ping` from a new sandbox on "icmp" (with `ip` as its address).
    let ping = |count: &str, ip: &str| {
        env.sy(&[
            "run",
            "--network",
            "icmp",
            "--ip",
            ip,
            "--",
            "ping",
            "-e",
            "4242",
            "-c",
            count,
            "-W",
            "2",
            &far,
        ])
    };

    range.set("0 2147483647");
    let out = ping("3", "10.237.0.10");
    ok(&out, "ping with ping sockets allowed");
    eprintln!("allowed: {}", text(&out).lines().last().unwrap_or(""));
    // ICMPv6 echo: to the gateway (answered by the switch) and out.
    let script = format!(
        "ping -6 -c 2 -W 2 fd00:237::1 >/dev/null && ping -6 -c 3 -W 2 {}",
        inet.addr6()
    );
    let out = env.sy(&["run", "--network", "icmp", "--", "sh", "-c", &script]);
    ok(&out, "ping -6 with ping sockets allowed");
    eprintln!("allowed (v6): {}", text(&out).lines().last().unwrap_or(""));
    let v = env.stats();
    assert!(event(&v, "nat-icmp-flows") >= 2, "{v}");
    let denied = event(&v, "nat-icmp-denied");

    // The same address and echo id again, from a new sandbox: the first
    // sandbox's flows left with it, so nothing carries these echoes.
    range.set("1 0");
    let out = ping("2", "10.237.0.10");
    assert!(
        !out.status.success(),
        "ping went out with ping sockets denied:\n{}",
        text(&out)
    );
    let v = env.stats();
    eprintln!(
        "denied: {:?}; nat-icmp-denied {denied} -> {}",
        text(&out).lines().find(|l| l.contains("packet loss")),
        event(&v, "nat-icmp-denied")
    );
    assert!(event(&v, "nat-icmp-denied") > denied, "{v}");
    drop(range);
}
