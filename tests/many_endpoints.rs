//! System test at scale: 30 namespaces attached to one network of a daemon
//! with 2 workers, and sampled pings between them must all be answered (the
//! reproduction of the "stall" of tools/bench/scale.sh, whose cause was the
//! host's ARP table, shared by every namespace, running full). The daemon
//! must report the kernel's ARP table overflows (`host-arp-table-full`), the
//! counter that tells that cause apart from a switch fault. Needs root;
//! outside CI a machine that cannot run it skips it, with CI=true that is a
//! failure. Namespaces and the daemon are removed on drop, even on failure.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::netns::{unique_octet, TestNetns};
use common::sysenv::{ok, Env};

const ENDPOINTS: usize = 30;
const TARGETS: usize = 5;
const IN_FLIGHT: usize = 4;

fn ping(ns: &TestNetns, ip: &str) -> bool {
    ns.exec(&["ping", "-n", "-q", "-c1", "-W2", ip])
        .status
        .success()
}

#[test]
fn thirty_endpoints_two_workers_every_sampled_ping_answers() {
    let Some(mut env) = Env::with_tools("many", None, &["ping"]) else {
        return;
    };
    env.start_daemon();
    let k = unique_octet();
    let subnet = format!("10.204.{k}.0/24");
    ok(
        &env.sy(&["network", "create", "many", "--subnet", &subnet]),
        "create network",
    );
    let ip = |i: usize| format!("10.204.{k}.{}", i + 10);
    let sandboxes: Vec<TestNetns> = (0..ENDPOINTS)
        .map(|i| TestNetns::new(&format!("m{i}")))
        .collect();
    for (i, ns) in sandboxes.iter().enumerate() {
        let path = ns.path();
        let path = path.to_str().expect("utf8");
        ok(
            &env.sy(&[
                "connect",
                "many",
                "--netns",
                path,
                "--name",
                &format!("e{i}"),
                "--ip",
                &ip(i),
            ]),
            "connect",
        );
    }
    // Each endpoint pings TARGETS others (a fixed spread, so every endpoint
    // is also pinged TARGETS times), IN_FLIGHT at a time.
    let pairs: Vec<(usize, usize)> = (0..ENDPOINTS)
        .flat_map(|s| (1..=TARGETS).map(move |d| (s, (s + d * 7) % ENDPOINTS)))
        .collect();
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..IN_FLIGHT {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(s, d)) = pairs.get(i) else { break };
                // One retry: the first ARP of a pair may be slow on a loaded
                // machine; a stall (ENOBUFS for seconds) fails both.
                if !ping(&sandboxes[s], &ip(d)) && !ping(&sandboxes[s], &ip(d)) {
                    failed.lock().expect("lock").push((s, d));
                }
            });
        }
    });
    let failed = failed.into_inner().expect("lock");
    let stats = env.sy(&["stats", "--json"]);
    ok(&stats, "stats");
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(
        failed.is_empty(),
        "{} of {} pings unanswered: {failed:?}; stats: {text}",
        failed.len(),
        pairs.len()
    );
    assert!(
        text.contains("\"host-arp-table-full\""),
        "stats report the host's ARP table overflows: {text}"
    );
}
