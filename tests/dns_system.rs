//! System test of the gateway's embedded DNS with real clients (`dig`,
//! `getent`, `nc`) inside sandboxes started by `switchyard run`, as the
//! unprivileged user `sytest`: names, aliases, service round robin,
//! `tasks.`, PTR, scoping between networks, forwarding to an upstream (a fake
//! one this test runs on a loopback address), TCP fallback for a large
//! answer, local or forwarded (the upstream truncates it over UDP and serves
//! it over TCP), internal networks refusing to forward, and malformed queries
//! counted while good ones keep being answered; and the same service at a
//! dual-stack network's IPv6 gateway (UDP, TCP, PTR, forwarding); and a TCP
//! query answered after the gateway had no TCP client for longer than the
//! idle limit; and names in the switch's own scheme that resolve to nothing
//! (another network's, `tasks.` of no service) answered at the gateway,
//! never asked of the upstream.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sysenv::{ok, Env, USER};
use domain::base::iana::{Class, Rcode, Rtype};
use domain::base::{Message, MessageBuilder, Name};
use domain::rdata::A;

/// The name the fake upstream answers with one address.
const EXTERNAL: &str = "external.example.";
const EXTERNAL_ADDR: [u8; 4] = [192, 0, 2, 77];
/// The name it answers with `BIG_COUNT` addresses (about 1.6 kB, more than
/// a UDP answer to EDNS0's 1232 bytes).
const BIG_EXTERNAL: &str = "big.external.example.";
const BIG_COUNT: u8 = 100;

/// A DNS server on 127.0.0.1 answering `EXTERNAL` and `BIG_EXTERNAL`;
/// NXDOMAIN for the rest. Over UDP it truncates answers larger than the
/// query allows (TC, no records), as real servers do; over TCP, on the same
/// port, it answers in full. It records every name it is asked.
struct FakeUpstream {
    port: u16,
    queries: Arc<AtomicU64>,
    tcp_queries: Arc<AtomicU64>,
    /// The names asked, over UDP or TCP, lowercase, without trailing dot.
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl FakeUpstream {
    fn start() -> FakeUpstream {
        let (sock, listener) = (0..20)
            .find_map(|_| {
                let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
                let listener = TcpListener::bind(sock.local_addr().ok()?).ok()?;
                Some((sock, listener))
            })
            .expect("bind fake upstream");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = sock.local_addr().expect("addr").port();
        let queries = Arc::new(AtomicU64::new(0));
        let tcp_queries = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (q, st, names) = (queries.clone(), stop.clone(), asked.clone());
        let udp = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                record(&names, &buf[..n]);
                if let Some(answer) = answer(&buf[..n], true) {
                    let _ = sock.send_to(&answer, from);
                }
            }
        });
        let (q, st, names) = (tcp_queries.clone(), stop.clone(), asked.clone());
        let tcp = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                while let Some(query) = read_message(&mut conn) {
                    q.fetch_add(1, Ordering::Relaxed);
                    record(&names, &query);
                    let Some(answer) = answer(&query, false) else {
                        break;
                    };
                    let mut out = (answer.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&answer);
                    if conn.write_all(&out).is_err() {
                        break;
                    }
                }
            }
        });
        FakeUpstream {
            port,
            queries,
            tcp_queries,
            asked,
            stop,
            threads: vec![udp, tcp],
        }
    }

    /// The names asked so far.
    fn asked(&self) -> Vec<String> {
        self.asked.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Notes the question name of `query` (unparsable ones as `?`).
fn record(names: &Mutex<Vec<String>>, query: &[u8]) {
    let name = Message::from_octets(query)
        .ok()
        .and_then(|m| m.sole_question().ok())
        .map_or("?".to_string(), |q| {
            q.qname()
                .to_string()
                .trim_end_matches('.')
                .to_ascii_lowercase()
        });
    if let Ok(mut v) = names.lock() {
        v.push(name);
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One length-prefixed DNS message from a TCP connection.
fn read_message(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).ok()?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut msg).ok()?;
    Some(msg)
}

/// The answer to `query`; over `udp`, truncated when larger than 512 bytes
/// or the query's EDNS0 payload size.
fn answer(query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let msg = Message::from_octets(query).ok()?;
    let q = msg.sole_question().ok()?;
    let qname = q.qname().to_string();
    let is = |name: &str| qname.eq_ignore_ascii_case(name.trim_end_matches('.'));
    let addrs: Vec<[u8; 4]> = if is(EXTERNAL) {
        vec![EXTERNAL_ADDR]
    } else if is(BIG_EXTERNAL) {
        (0..BIG_COUNT).map(|i| [192, 0, 2, i]).collect()
    } else {
        Vec::new()
    };
    let rcode = if addrs.is_empty() {
        Rcode::NXDOMAIN
    } else {
        Rcode::NOERROR
    };
    let mut ans = MessageBuilder::new_vec().start_answer(&msg, rcode).ok()?;
    ans.header_mut().set_ra(true);
    if q.qtype() == Rtype::A {
        let name = Name::<Vec<u8>>::from_str(&qname).ok()?;
        for a in addrs {
            ans.push((&name, Class::IN, 60, A::new(a.into()))).ok()?;
        }
    }
    let full = ans.finish();
    let limit = msg
        .opt()
        .map_or(512, |o| usize::from(o.udp_payload_size()).max(512));
    if !udp || full.len() <= limit {
        return Some(full);
    }
    let mut tc = MessageBuilder::new_vec().start_answer(&msg, rcode).ok()?;
    tc.header_mut().set_ra(true);
    tc.header_mut().set_tc(true);
    Some(tc.finish())
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value printed after `key=` on its own line.
fn field<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    out.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect()
}

/// The first value of `key` in `out`, trimmed ("" when missing).
fn first(out: &str, key: &str) -> String {
    field(out, key)
        .first()
        .copied()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Runs `script` with `sh -c` in a new sandbox named `client` on `network`;
/// returns its output.
fn client(env: &Env, network: &str, script: &str) -> String {
    let out = env.sy(&[
        "run",
        "--network",
        network,
        "--name",
        "client",
        "--",
        "sh",
        "-c",
        script,
    ]);
    ok(&out, &format!("client on {network}"));
    text(&out)
}

#[test]
fn gateway_dns_end_to_end() {
    let Some(mut env) = Env::with_tools("dns", Some(USER), &["dig", "getent", "nc"]) else {
        return;
    };
    let upstream = FakeUpstream::start();
    let up = format!("127.0.0.1:{}", upstream.port);
    env.start_daemon_with(&["--dns-upstream", &up]);
    for (name, subnet, extra) in [
        ("n1", "10.211.0.0/24", None),
        ("n2", "10.212.0.0/24", None),
        ("n3", "10.213.0.0/24", Some("--internal")),
    ] {
        let mut args = vec!["network", "create", name, "--subnet", subnet];
        args.extend(extra);
        ok(&env.sy(&args), "network create");
    }
    let sleeper = |env: &mut Env, net: &str, name: &str, alias: Option<&str>, ip: &str| {
        let mut args = vec!["run", "--network", net, "--name", name, "--ip", ip];
        if let Some(a) = alias {
            args.extend(["--alias", a]);
        }
        args.extend(["--", "sleep", "120"]);
        env.spawn(&args);
    };
    sleeper(&mut env, "n1", "web1", Some("web"), "10.211.0.11");
    sleeper(&mut env, "n1", "web2", Some("web"), "10.211.0.12");
    sleeper(&mut env, "n2", "other", None, "10.212.0.11");
    sleeper(&mut env, "n3", "inner", None, "10.213.0.11");
    // A service too large for a 512-byte UDP answer.
    let mut bulk = Vec::new();
    for i in 0..32 {
        let name = format!("bulk{i}");
        let ip = format!("10.211.0.{}", 100 + i);
        sleeper(&mut env, "n1", &name, Some("big"), &ip);
        bulk.push(name);
    }
    let mut all: Vec<&str> = vec!["web1", "web2", "other", "inner"];
    all.extend(bulk.iter().map(String::as_str));
    env.wait_endpoints(&all);

    let script = r#"
        q() { echo "$1=$(dig +short +time=2 +tries=2 $2 | tr '\n' ' ')"; }
        q web1 web1
        q web1fqdn web1.switchyard.internal
        q web1net WEB1.n1
        echo "getent=$(getent hosts web2 | tr -s ' ' | tr '\n' ' ')"
        for i in 1 2 3 4; do q web web; done
        q tasks tasks.web
        q ptr "-x 10.211.0.11"
        echo "other=$(dig +time=2 other | grep -o 'status: [A-Z]*')"
        echo "aaaa=$(dig +time=2 web1 AAAA | grep -o 'status: [A-Z]*')"
        q external external.example
        echo "nx=$(dig +time=2 nosuch.example | grep -o 'status: [A-Z]*')"
        echo "bigudp=$(dig +noedns +ignore +time=2 big | grep -c 'flags:.* tc')"
        echo "bigtcp=$(dig +noedns +time=2 big +short | wc -l)"
        echo "tcp=$(dig +tcp +short +time=2 web1)"
        echo "bigext=$(dig +short +time=2 big.external.example | wc -l)"
        echo "bigexttcp=$(dig +tcp +noedns +short +time=2 big.external.example | wc -l)"
        printf 'garbage' | nc -u -w1 10.211.0.1 53 >/dev/null 2>&1
        head -c 300 /dev/urandom | nc -u -w1 10.211.0.1 53 >/dev/null 2>&1
        q after web1
    "#;
    let o = client(&env, "n1", script);
    let first = |k: &str| first(&o, k);
    assert_eq!(first("web1"), "10.211.0.11", "{o}");
    assert_eq!(first("web1fqdn"), "10.211.0.11", "{o}");
    assert_eq!(first("web1net"), "10.211.0.11", "{o}");
    assert!(first("getent").starts_with("10.211.0.12 web2"), "{o}");
    let rotations: std::collections::BTreeSet<&str> = field(&o, "web")
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(rotations.len(), 2, "service answers rotate:\n{o}");
    let tasks_line = first("tasks");
    let mut tasks: Vec<&str> = tasks_line.split_whitespace().collect();
    tasks.sort();
    assert_eq!(tasks, ["10.211.0.11", "10.211.0.12"], "{o}");
    assert_eq!(first("ptr"), "web1.switchyard.internal.", "{o}");
    assert_eq!(
        first("other"),
        "status: NXDOMAIN",
        "other network's name:\n{o}"
    );
    assert_eq!(first("aaaa"), "status: NOERROR", "{o}");
    assert_eq!(first("external"), "192.0.2.77", "forwarded upstream:\n{o}");
    assert_eq!(first("nx"), "status: NXDOMAIN", "upstream's NXDOMAIN:\n{o}");
    assert_eq!(
        first("bigudp"),
        "1",
        "large answer truncated over UDP:\n{o}"
    );
    assert_eq!(first("bigtcp"), "32", "and complete over TCP:\n{o}");
    assert_eq!(first("tcp"), "10.211.0.11", "{o}");
    // dig gets TC over UDP and retries over TCP; the gateway fetches the
    // whole answer from the upstream over TCP.
    let big = BIG_COUNT.to_string();
    assert_eq!(first("bigext"), big, "forwarded, truncated, then TCP:\n{o}");
    assert_eq!(first("bigexttcp"), big, "forwarded over TCP:\n{o}");
    assert!(upstream.tcp_queries.load(Ordering::Relaxed) >= 2, "{o}");
    assert_eq!(first("after"), "10.211.0.11", "still answering:\n{o}");
    let forwarded_before = upstream.queries.load(Ordering::Relaxed);
    assert!(forwarded_before >= 2, "upstream saw {forwarded_before}");

    // An internal network answers its own names and never forwards.
    let script = r#"
        echo "inner=$(dig +short +time=2 inner)"
        echo "ext=$(dig +time=2 +tries=1 external.example | grep -o 'status: [A-Z]*')"
    "#;
    let out = env.sy(&["run", "--network", "n3", "--", "sh", "-c", script]);
    ok(&out, "client on n3");
    let o = text(&out);
    assert_eq!(field(&o, "inner"), ["10.213.0.11"], "{o}");
    assert_eq!(field(&o, "ext"), ["status: REFUSED"], "{o}");
    assert_eq!(
        upstream.queries.load(Ordering::Relaxed),
        forwarded_before,
        "internal network forwarded"
    );

    let v = env.stats();
    let ev = |k: &str| v["stats"]["events"][k].as_u64().unwrap_or(0);
    let drop = |k: &str| v["stats"]["drops"][k].as_u64().unwrap_or(0);
    assert!(ev("dns-answered") >= 10, "{v}");
    assert!(ev("dns-forwarded") >= 2, "{v}");
    assert!(ev("dns-refused") >= 1, "{v}");
    assert!(ev("dns-tcp-queries") >= 2, "{v}");
    assert!(ev("dns-upstream-tcp-retries") >= 2, "{v}");
    assert_eq!(ev("dns-upstream-tcp-failed"), 0, "{v}");
    assert!(
        drop("dns-malformed") + ev("dns-formerr") >= 2,
        "malformed queries counted: {v}"
    );
}

#[test]
fn gateway_dns_over_ipv6() {
    let Some(mut env) = Env::with_tools("dns6", Some(USER), &["dig", "getent"]) else {
        return;
    };
    let upstream = FakeUpstream::start();
    let up = format!("127.0.0.1:{}", upstream.port);
    env.start_daemon_with(&["--dns-upstream", &up]);
    let create = [
        "network",
        "create",
        "d6",
        "--subnet",
        "10.214.0.0/24",
        "--ipv6-subnet",
        "fd00:214::/64",
    ];
    ok(&env.sy(&create), "network create");
    env.spawn(&[
        "run",
        "--network",
        "d6",
        "--name",
        "web1",
        "--alias",
        "web",
        "--",
        "sleep",
        "120",
    ]);
    env.wait_endpoints(&["web1"]);

    // The client finds the IPv6 gateway in its resolv.conf and asks it
    // directly; its own names are in /etc/hosts under both addresses.
    let script = r#"
        gw6=$(sed -n 's/^nameserver \(.*:.*\)$/\1/p' /etc/resolv.conf)
        echo "servers=$(grep -c '^nameserver' /etc/resolv.conf)"
        echo "gw6=$gw6"
        q() { echo "$1=$(dig +short +time=2 +tries=2 @$gw6 $2 | tr '\n' ' ')"; }
        q aaaa "web1 AAAA"
        q a "WEB A"
        echo "tcp=$(dig +tcp +short +time=2 @$gw6 web1 AAAA)"
        q ptr "-x $(dig +short +time=2 @$gw6 web1 AAAA)"
        q external external.example
        echo "nx=$(dig +time=2 @$gw6 nosuch.example | grep -o 'status: [A-Z]*')"
        echo "hosts=$(grep -c 'client' /etc/hosts)"
        echo "getent=$(getent ahostsv6 web1 | head -1 | cut -d' ' -f1)"
    "#;
    let o = client(&env, "d6", script);
    let first = |k: &str| first(&o, k);
    assert_eq!(first("servers"), "2", "IPv4 and IPv6 gateway:\n{o}");
    assert_eq!(first("gw6"), "fd00:214::1", "{o}");
    let aaaa = first("aaaa");
    assert!(aaaa.starts_with("fd00:214::"), "AAAA over IPv6:\n{o}");
    assert_eq!(first("tcp"), aaaa, "the same over TCP:\n{o}");
    assert!(first("a").starts_with("10.214.0."), "A over IPv6:\n{o}");
    assert_eq!(first("ptr"), "web1.switchyard.internal.", "ip6.arpa:\n{o}");
    assert_eq!(first("external"), "192.0.2.77", "forwarded:\n{o}");
    assert_eq!(first("nx"), "status: NXDOMAIN", "{o}");
    assert_eq!(first("hosts"), "2", "own name under both addresses:\n{o}");
    assert_eq!(first("getent"), aaaa, "{o}");
    assert!(upstream.queries.load(Ordering::Relaxed) >= 2);

    let v = env.stats();
    let ev = |k: &str| v["stats"]["events"][k].as_u64().unwrap_or(0);
    assert!(ev("dns-tcp-queries") >= 1, "{v}");
    assert!(ev("dns-forwarded") >= 2, "{v}");
    let drops = v["stats"]["drops"]["gateway-unhandled"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(drops, 0, "nothing for the gateway went unanswered: {v}");
}

/// The gateway keeps a few sockets listening for DNS over TCP; one that
/// had listened for longer than the idle limit (10 s) used to close its
/// first connection as idle at once, so the first TCP query after a quiet
/// spell went unanswered (dig: "timed out").
#[test]
fn dns_over_tcp_after_a_quiet_spell() {
    let Some(mut env) = Env::with_tools("dns-quiet", Some(USER), &["dig"]) else {
        return;
    };
    env.start_daemon();
    let create = ["network", "create", "q1", "--subnet", "10.215.0.0/24"];
    ok(&env.sy(&create), "network create");
    // The first query sets up the gateway's listening sockets; the second
    // comes once they have listened for longer than the idle limit.
    let script = r#"
        echo "first=$(dig +tcp +short +time=2 +tries=1 client)"
        sleep 11
        echo "quiet=$(dig +tcp +short +time=2 +tries=1 client)"
    "#;
    let o = client(&env, "q1", script);
    let ip = first(&o, "first");
    assert!(ip.starts_with("10.215.0."), "answered over TCP:\n{o}");
    assert_eq!(first(&o, "quiet"), ip, "answered after 11 s quiet:\n{o}");
}

/// Names in the switch's own scheme that resolve to nothing here are
/// answered by the gateway, NXDOMAIN with AA, and never reach the upstream:
/// a sandbox of another network (`web.s2`, which exists there), an unknown
/// name below another network or the asking one, `tasks.` of no service,
/// unknown names under the search domain; over UDP and TCP. AAAA of an
/// IPv4-only sandbox stays NODATA, and ordinary names are still forwarded.
#[test]
fn switch_names_never_reach_the_upstream() {
    let Some(mut env) = Env::with_tools("dns-own", Some(USER), &["dig"]) else {
        return;
    };
    let upstream = FakeUpstream::start();
    let up = format!("127.0.0.1:{}", upstream.port);
    env.start_daemon_with(&["--dns-upstream", &up]);
    for (name, subnet) in [("s1", "10.216.0.0/24"), ("s2", "10.217.0.0/24")] {
        let create = ["network", "create", name, "--subnet", subnet];
        ok(&env.sy(&create), "network create");
    }
    env.spawn(&[
        "run",
        "--network",
        "s2",
        "--name",
        "web",
        "--",
        "sleep",
        "120",
    ]);
    env.wait_endpoints(&["web"]);

    let ours = [
        "web.s2",
        "nosuch.s2",
        "tasks.web.s2",
        "nosuch.s1",
        "tasks.nosuch",
        "TASKS.web",
        "tasks.nosuch.s1",
        "nosuch.switchyard.internal",
        "web.s2.switchyard.internal",
    ];
    let script = format!(
        r#"
        st() {{ dig +time=2 +tries=1 "$@" | grep -o 'status: [A-Z]*\|flags: [a-z ]*' | tr '\n' ' '; }}
        for n in {names}; do echo "$n=$(st $n)"; done
        echo "tcp=$(st +tcp web.s2)"
        echo "aaaa=$(st client AAAA)"
        echo "aaaa-net=$(st client.s1 AAAA)"
        echo "external=$(dig +short +time=2 +tries=1 external.example)"
        echo "nx=$(st nosuch.example)"
        "#,
        names = ours.join(" ")
    );
    let o = client(&env, "s1", &script);
    let asked = upstream.asked();
    assert!(
        asked.iter().any(|n| n == "external.example"),
        "{asked:?}\n{o}"
    );
    assert!(
        asked.iter().any(|n| n == "nosuch.example"),
        "{asked:?}\n{o}"
    );
    let leaked: Vec<&String> = asked
        .iter()
        .filter(|n| {
            n.starts_with("tasks.")
                || [".s1", ".s2", "switchyard.internal"]
                    .iter()
                    .any(|s| n.ends_with(s))
                || ["client", "web"].contains(&n.as_str())
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "switch names sent upstream: {leaked:?}\n{o}"
    );

    for name in ours.iter().chain(&["tcp"]) {
        let got = first(&o, name);
        assert!(got.starts_with("status: NXDOMAIN"), "{name}:\n{o}");
        assert!(got.contains(" aa"), "{name} answered by the switch:\n{o}");
    }
    for key in ["aaaa", "aaaa-net"] {
        let got = first(&o, key);
        assert!(got.starts_with("status: NOERROR"), "{key} NODATA:\n{o}");
        assert!(got.contains(" aa"), "{key}:\n{o}");
    }
    assert_eq!(first(&o, "external"), "192.0.2.77", "forwarded:\n{o}");
    assert!(first(&o, "nx").starts_with("status: NXDOMAIN"), "{o}");
    assert!(
        !first(&o, "nx").contains(" aa"),
        "upstream's NXDOMAIN:\n{o}"
    );

    let v = env.stats();
    let ev = |k: &str| v["stats"]["events"][k].as_u64().unwrap_or(0);
    let udp_ours = ours.len() as u64;
    assert!(
        ev("dns-nxdomain") >= udp_ours,
        "counted as local NXDOMAIN: {v}"
    );
    assert!(ev("dns-forwarded") >= 2, "{v}");
    // The one asked over TCP, counted by the gateway stack.
    assert!(
        ev("dns-tcp-answered") >= 1 && ev("dns-tcp-nxdomain") >= 1,
        "TCP local NXDOMAIN counted: {v}"
    );
}
