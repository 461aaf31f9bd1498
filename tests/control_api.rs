//! The control API end to end: every bad input gets a clear error while the
//! daemon keeps serving and its state stays unchanged; state survives a
//! restart; the binary reports startup and connection problems clearly.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard::control::api::{ErrorKind, Pong, Response};
use switchyard::control::client::{Client, ClientError};
use switchyard::control::model::{Endpoint, Network};
use switchyard::control::store::State;

use common::sysenv::wait_timeout;
use common::{make_daemon, TempDir, TestDaemon};

fn call(c: &mut Client, line: &str) -> Response {
    c.call_line(line.as_bytes()).expect("daemon answers")
}

fn err_kind(c: &mut Client, line: &str) -> (ErrorKind, String) {
    let r = call(c, line);
    assert!(!r.ok, "{line} succeeded: {r:?}");
    let e = r.error.expect("error body");
    (e.kind, e.message)
}

fn ok(c: &mut Client, line: &str) -> Value {
    let r = call(c, line);
    assert!(r.ok, "{line} failed: {:?}", r.error);
    r.result.unwrap_or(Value::Null)
}

fn state(t: &TestDaemon) -> State {
    t.daemon.lock().expect("lock").state().clone()
}

fn alive(c: &mut Client) {
    let p: Pong = c
        .call_raw(&switchyard::control::api::Request::Ping)
        .expect("ping")
        .into_result()
        .expect("pong");
    assert_eq!(p.pid, std::process::id());
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = TempDir::new("bad");
    let t = TestDaemon::start(&dir.path().join("state"), &dir.path().join("api.sock"));
    let mut c = t.client();
    ok(
        &mut c,
        r#"{"op":"network_create","name":"web","subnet":"10.1.0.0/24"}"#,
    );
    let before = state(&t);
    let saved = std::fs::read(dir.path().join("state/state.json")).expect("state file");

    let cases: &[(&str, ErrorKind, &str)] = &[
        ("{not json", ErrorKind::MalformedJson, "not valid JSON"),
        (
            r#"{"op":"explode"}"#,
            ErrorKind::UnknownOp,
            "unknown op \"explode\"",
        ),
        (r#"{"name":"x"}"#, ErrorKind::UnknownOp, "no \"op\""),
        (
            r#"{"op":"network_inspect","name":"nope"}"#,
            ErrorKind::NotFound,
            "network \"nope\" does not exist",
        ),
        (
            r#"{"op":"connect","network":"nope","target":{"pid":1}}"#,
            ErrorKind::NotFound,
            "switchyard network create nope",
        ),
        (
            r#"{"op":"network_create","name":"web","subnet":"10.2.0.0/24"}"#,
            ErrorKind::AlreadyExists,
            "switchyard network rm web",
        ),
        (
            r#"{"op":"network_create","name":"web2","subnet":"10.1.0.128/25"}"#,
            ErrorKind::Conflict,
            "overlaps network \"web\"",
        ),
        (
            r#"{"op":"network_create","name":"w3","subnet":"10.3.0.0/33"}"#,
            ErrorKind::BadRequest,
            "prefix length must be a number from 0 to 32",
        ),
        (
            r#"{"op":"network_create","name":"w3","subnet":"10.3.0.1/24"}"#,
            ErrorKind::BadRequest,
            "did you mean 10.3.0.0/24",
        ),
        (
            r#"{"op":"network_create","name":"-x"}"#,
            ErrorKind::BadRequest,
            "invalid network name",
        ),
        (
            r#"{"op":"network_create","name":"w4","mtu":100}"#,
            ErrorKind::BadRequest,
            "576 to 65520",
        ),
        (
            r#"{"op":"network_create","name":"w5","driver":"overlay"}"#,
            ErrorKind::BadRequest,
            "--advertise",
        ),
        (
            r#"{"op":"network_create","name":"w6","subnet":"10.6.0.0/24","gateway":"10.7.0.1"}"#,
            ErrorKind::BadRequest,
            "not a host address",
        ),
        (
            r#"{"op":"network_create","name":"w7","subnet":"127.0.0.0/24"}"#,
            ErrorKind::BadRequest,
            "overlaps 127.0.0.0/8, the loopback block",
        ),
        (
            r#"{"op":"network_create","name":"w7","subnet":"224.1.0.0/24"}"#,
            ErrorKind::BadRequest,
            "the multicast block",
        ),
        (
            r#"{"op":"network_create","name":"w7","subnet":"0.0.0.0/0"}"#,
            ErrorKind::BadRequest,
            "pick a private range",
        ),
        (
            r#"{"op":"network_create","name":"w7","ipv6_subnet":"fe80::/64"}"#,
            ErrorKind::BadRequest,
            "the link-local block",
        ),
        (
            r#"{"op":"network_create","name":"w7","ipv6_subnet":"ff00::/64"}"#,
            ErrorKind::BadRequest,
            "the multicast block",
        ),
        (
            r#"{"op":"network_create","name":"w7","ipv6_subnet":"::/64"}"#,
            ErrorKind::BadRequest,
            "the unspecified and loopback block",
        ),
        (
            r#"{"op":"connect","network":"web","target":{"netns":{"path":"/nonexistent"}}}"#,
            ErrorKind::NotFound,
            "/nonexistent does not exist",
        ),
        (
            r#"{"op":"disconnect","network":"web","endpoint":"ghost"}"#,
            ErrorKind::NotFound,
            "not found",
        ),
        (
            r#"{"op":"publish","endpoint":"ghost","spec":"80:80"}"#,
            ErrorKind::NotFound,
            "not found",
        ),
        (
            r#"{"op":"publish","endpoint":"ghost","spec":"80"}"#,
            ErrorKind::BadRequest,
            "HOSTPORT:PORT",
        ),
        (
            r#"{"op":"network_remove","name":"default"}"#,
            ErrorKind::InUse,
            "built in",
        ),
    ];
    for (line, kind, needle) in cases {
        let (k, msg) = err_kind(&mut c, line);
        assert_eq!(k, *kind, "{line}: {msg}");
        assert!(
            msg.contains(needle),
            "{line}: message {msg:?} lacks {needle:?}"
        );
    }
    let line = format!(
        r#"{{"op":"connect","network":"web","target":{{"pid":{}}},"ip":"10.9.0.5"}}"#,
        std::process::id()
    );
    let (k, msg) = err_kind(&mut c, &line);
    assert_eq!(k, ErrorKind::BadRequest, "{msg}");
    assert!(msg.contains("outside subnet 10.1.0.0/24"), "{msg}");
    alive(&mut c);
    assert_eq!(state(&t), before);
    assert_eq!(
        std::fs::read(dir.path().join("state/state.json")).expect("state"),
        saved
    );
}

#[test]
fn oversized_line_is_refused_and_connection_keeps_serving() {
    let dir = TempDir::new("big");
    let t = TestDaemon::start(&dir.path().join("state"), &dir.path().join("api.sock"));
    let mut c = t.client();
    let mut line = br#"{"op":"ping","pad":""#.to_vec();
    line.resize(line.len() + (1 << 20) + 10, b'x');
    line.extend_from_slice(b"\"}");
    let (kind, msg) = {
        let r = c.call_line(&line).expect("answer");
        let e = r.error.expect("error");
        (e.kind, e.message)
    };
    assert_eq!(kind, ErrorKind::TooLarge, "{msg}");
    alive(&mut c);
    // Several requests in one write, answered in order.
    let mut raw = UnixStream::connect(&t.socket).expect("connect");
    raw.write_all(b"{\"op\":\"ping\"}\n\n{\"op\":\"nope\"}\n{\"op\":\"network_list\"}\n")
        .expect("write");
    raw.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut raw, &mut out).expect("read");
    let kinds: Vec<bool> = out
        .lines()
        .map(|l| serde_json::from_str::<Response>(l).expect("response").ok)
        .collect();
    assert_eq!(kinds, vec![true, false, true]);
}

#[test]
fn connect_allocates_rolls_back_and_releases() {
    let dir = TempDir::new("conn");
    let t = TestDaemon::start(&dir.path().join("state"), &dir.path().join("api.sock"));
    let mut c = t.client();
    let ns = dir.path().join("ns-a");
    std::fs::write(&ns, b"").expect("ns file");
    let target = format!(r#"{{"netns":{{"path":"{}"}}}}"#, ns.display());
    ok(
        &mut c,
        r#"{"op":"network_create","name":"tiny","subnet":"10.5.0.0/30"}"#,
    );
    ok(
        &mut c,
        r#"{"op":"network_create","name":"second","subnet":"10.6.0.0/24","isolate":true}"#,
    );

    let ep: Endpoint = serde_json::from_value(ok(
        &mut c,
        &format!(r#"{{"op":"connect","network":"tiny","target":{target},"name":"a","publish":["8080:80"]}}"#),
    ))
    .expect("endpoint");
    assert_eq!(
        (
            ep.ipv4.to_string().as_str(),
            ep.ifname.as_str(),
            ep.default_route
        ),
        ("10.5.0.2", "eth0", true)
    );
    assert_eq!(
        t.daemon.lock().expect("lock").endpoint_ports(&ep.id).len(),
        1
    );

    // The /30 holds one endpoint: the next is refused and nothing changes.
    let ns_b = dir.path().join("ns-b");
    std::fs::write(&ns_b, b"").expect("ns file");
    let before = state(&t);
    let (k, msg) = err_kind(
        &mut c,
        &format!(
            r#"{{"op":"connect","network":"tiny","target":{{"netns":{{"path":"{}"}}}}}}"#,
            ns_b.display()
        ),
    );
    assert_eq!(k, ErrorKind::Exhausted, "{msg}");
    assert!(msg.contains("no free addresses"), "{msg}");
    // Same host port published twice.
    let (k, _) = err_kind(
        &mut c,
        &format!(
            r#"{{"op":"connect","network":"second","target":{{"netns":{{"path":"{}"}}}},"publish":["8080:80"]}}"#,
            ns_b.display()
        ),
    );
    assert_eq!(k, ErrorKind::Conflict);
    // Attach failure rolls back.
    t.attacher.fail.store(true, Ordering::Relaxed);
    let (k, msg) = err_kind(
        &mut c,
        &format!(
            r#"{{"op":"connect","network":"second","target":{{"netns":{{"path":"{}"}}}}}}"#,
            ns_b.display()
        ),
    );
    assert_eq!(k, ErrorKind::Attach, "{msg}");
    t.attacher.fail.store(false, Ordering::Relaxed);
    assert_eq!(state(&t), before);
    assert_eq!(
        t.daemon
            .lock()
            .expect("lock")
            .dataplane()
            .topology()
            .ports()
            .count(),
        1
    );

    // The same sandbox on a second network gets eth1 without default route.
    let ep2: Endpoint = serde_json::from_value(ok(
        &mut c,
        &format!(r#"{{"op":"connect","network":"second","target":{target},"name":"a"}}"#),
    ))
    .expect("endpoint");
    assert_eq!((ep2.ifname.as_str(), ep2.default_route), ("eth1", false));
    let (k, _) = err_kind(
        &mut c,
        &format!(r#"{{"op":"connect","network":"second","target":{target}}}"#),
    );
    assert_eq!(k, ErrorKind::AlreadyExists);
    let (k, msg) = err_kind(
        &mut c,
        r#"{"op":"publish","endpoint":"a","spec":"9090:90"}"#,
    );
    assert_eq!(k, ErrorKind::BadRequest, "{msg}");
    ok(
        &mut c,
        r#"{"op":"publish","endpoint":"second/a","spec":"9090:90"}"#,
    );
    ok(
        &mut c,
        r#"{"op":"unpublish","endpoint":"second/a","spec":"9090:90/tcp"}"#,
    );
    let (k, _) = err_kind(&mut c, r#"{"op":"network_remove","name":"tiny"}"#);
    assert_eq!(k, ErrorKind::InUse);

    let stats = ok(&mut c, r#"{"op":"stats"}"#);
    assert_eq!(stats["endpoints"].as_array().map(Vec::len), Some(2));
    assert!(stats["stats"]["drops"]
        .as_object()
        .is_some_and(|d| !d.is_empty()));

    ok(
        &mut c,
        r#"{"op":"disconnect","network":"tiny","endpoint":"a"}"#,
    );
    assert_eq!(
        t.daemon
            .lock()
            .expect("lock")
            .dataplane()
            .topology()
            .ports()
            .count(),
        1
    );
    // Released: the address is free again.
    let again: Endpoint = serde_json::from_value(ok(
        &mut c,
        &format!(
            r#"{{"op":"connect","network":"tiny","target":{{"netns":{{"path":"{}"}}}}}}"#,
            ns_b.display()
        ),
    ))
    .expect("endpoint");
    assert_eq!(again.ipv4.to_string(), "10.5.0.2");
    assert_eq!(again.name, "ep1");
    ok(
        &mut c,
        r#"{"op":"disconnect","network":"tiny","endpoint":"ep1"}"#,
    );
    ok(&mut c, r#"{"op":"network_remove","name":"tiny"}"#);
    let nets: Vec<Network> =
        serde_json::from_value(ok(&mut c, r#"{"op":"network_list"}"#)).expect("list");
    let names: Vec<&str> = nets.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, vec!["default", "second"]);
}

#[test]
fn unwritable_state_refuses_changes_and_keeps_memory() {
    let dir = TempDir::new("ro");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("file");
    let e = make_daemon(&file.join("sub"), Default::default())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("not writable"), "{e}");

    let state_dir = dir.path().join("state");
    let t = TestDaemon::start(&state_dir, &dir.path().join("api.sock"));
    let mut c = t.client();
    let before = state(&t);
    // Pull the directory away and put a file in its place.
    std::fs::remove_dir_all(&state_dir).expect("rm");
    std::fs::write(&state_dir, b"x").expect("file");
    let (k, msg) = err_kind(
        &mut c,
        r#"{"op":"network_create","name":"x","subnet":"10.8.0.0/24"}"#,
    );
    assert_eq!(k, ErrorKind::State, "{msg}");
    assert!(msg.contains("the change was not made"), "{msg}");
    assert_eq!(state(&t), before);
    assert_eq!(
        t.daemon
            .lock()
            .expect("lock")
            .dataplane()
            .topology()
            .networks()
            .count(),
        1
    );
    alive(&mut c);
}

#[test]
fn state_survives_restart_and_gone_sandboxes_are_dropped() {
    let dir = TempDir::new("restart");
    let state_dir = dir.path().join("state");
    let sock = dir.path().join("api.sock");
    let ns_keep = dir.path().join("ns-keep");
    let ns_gone = dir.path().join("ns-gone");
    std::fs::write(&ns_keep, b"").expect("ns");
    std::fs::write(&ns_gone, b"").expect("ns");
    {
        let t = TestDaemon::start(&state_dir, &sock);
        let mut c = t.client();
        ok(
            &mut c,
            r#"{"op":"network_create","name":"keep","subnet":"10.4.0.0/24","isolate":true}"#,
        );
        for (name, ns) in [("k", &ns_keep), ("g", &ns_gone)] {
            ok(
                &mut c,
                &format!(
                    r#"{{"op":"connect","network":"keep","target":{{"netns":{{"path":"{}"}}}},"name":"{name}","ifname":"net{name}","container_id":"c-{name}"}}"#,
                    ns.display()
                ),
            );
        }
        // The interface name is the sandbox's: a second endpoint asking for
        // it is refused, and Linux's rules hold.
        ok(
            &mut c,
            r#"{"op":"network_create","name":"other","subnet":"10.3.0.0/24"}"#,
        );
        let (k, msg) = err_kind(
            &mut c,
            &format!(
                r#"{{"op":"connect","network":"other","target":{{"netns":{{"path":"{}"}}}},"ifname":"netk"}}"#,
                ns_keep.display()
            ),
        );
        assert_eq!(k, ErrorKind::AlreadyExists, "{msg}");
        assert!(msg.contains("netk"), "{msg}");
        for bad in [
            r#""ifname":"a/b""#,
            r#""ifname":"sixteen-chars-xx""#,
            r#""container_id":"-x""#,
        ] {
            let (k, msg) = err_kind(
                &mut c,
                &format!(
                    r#"{{"op":"connect","network":"other","target":{{"netns":{{"path":"{}"}}}},{bad}}}"#,
                    ns_keep.display()
                ),
            );
            assert_eq!(k, ErrorKind::BadRequest, "{bad}: {msg}");
        }
        // A second daemon on the same socket is refused.
        let e = switchyard::control::server::Server::bind(&sock)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("another switchyard daemon"), "{e}");
        t.stop();
    }
    assert!(!sock.exists(), "socket removed on stop");
    std::fs::remove_file(&ns_gone).expect("rm ns");
    let t = TestDaemon::start(&state_dir, &sock);
    let s = state(&t);
    let net = s
        .networks
        .iter()
        .find(|n| n.name == "keep")
        .expect("network kept");
    assert!(net.isolate);
    let eps: Vec<&str> = s.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(eps, vec!["k"]);
    let log = t.attacher.log.lock().expect("log");
    assert_eq!(log.attached.len(), 1, "k re-attached");
    assert_eq!(
        log.attached[0].0.ifname, "netk",
        "under the name it was given"
    );
    drop(log);
    let k = &s.endpoints[0];
    assert_eq!(
        k.container_id.as_deref(),
        Some("c-k"),
        "the runtime's key survives"
    );
    assert_eq!(
        t.daemon.lock().expect("lock").endpoint_ports(&k.id).len(),
        1
    );
    // The gone endpoint's address is free again.
    let mut c = t.client();
    std::fs::write(&ns_gone, b"").expect("ns");
    let ep: Endpoint = serde_json::from_value(ok(
        &mut c,
        &format!(
            r#"{{"op":"connect","network":"keep","target":{{"netns":{{"path":"{}"}}}}}}"#,
            ns_gone.display()
        ),
    ))
    .expect("endpoint");
    assert_eq!(ep.ipv4.to_string(), "10.4.0.3");
}

#[test]
fn corrupt_state_is_moved_aside() {
    let dir = TempDir::new("corrupt");
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).expect("dir");
    std::fs::write(state_dir.join("state.json"), b"{ this is not json").expect("write");
    let t = TestDaemon::start(&state_dir, &dir.path().join("api.sock"));
    let names: Vec<String> = state(&t).networks.iter().map(|n| n.name.clone()).collect();
    assert_eq!(names, vec!["default"]);
    let aside: Vec<_> = std::fs::read_dir(&state_dir)
        .expect("ls")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read(aside[0].path()).expect("read"),
        b"{ this is not json"
    );
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// `switchyard ps` against the daemon on `sock`.
fn ps(sock: &std::path::Path) -> std::process::Output {
    bin()
        .arg("--socket")
        .arg(sock)
        .arg("ps")
        .output()
        .expect("run")
}

/// A spawned daemon, killed if the test fails before stopping it.
struct Spawned(std::process::Child);

/// `switchyard daemon` on `sock` and `state` with `extra` options, quiet.
fn spawn_daemon(sock: &std::path::Path, state: &std::path::Path, extra: &[&str]) -> Spawned {
    Spawned(
        bin()
            .arg("--socket")
            .arg(sock)
            .arg("daemon")
            .args(extra)
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon"),
    )
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_reports_problems_clearly() {
    let dir = TempDir::new("bin");
    let sock = dir.path().join("run/api.sock");
    // No daemon yet.
    let out = ps(&sock);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the switchyard daemon") && err.contains("switchyard daemon"),
        "{err}"
    );
    // Unwritable state dir.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("file");
    let out = bin()
        .args(["daemon", "--workers", "1", "--state-dir"])
        .arg(file.join("sub"))
        .arg("--socket")
        .arg(dir.path().join("other.sock"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not writable"), "{err}");
    // Overlay options need this host's underlay address.
    let out = bin()
        .args(["daemon", "--peer", "10.0.0.1"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--advertise"));
    let out = bin()
        .args(["daemon", "--advertise", "10.0.0.2", "--peer", "bad:peer"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad peer"));

    let mut daemon = Spawned(
        bin()
            .env("SWITCHYARD_SOCKET", &sock)
            .args(["daemon", "--workers", "1", "--state-dir"])
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon"),
    );
    wait_for_socket(&sock);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&sock).expect("sock").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // A second daemon on the same state directory (another socket) is
    // refused: it used to start, and each overwrote the other's changes.
    let mut second = Spawned(
        bin()
            .args(["daemon", "--workers", "1", "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("second.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn second daemon"),
    );
    assert!(
        wait_timeout(&mut second.0, Duration::from_secs(10)).is_some(),
        "a second daemon runs on the same state directory"
    );
    let mut err = String::new();
    if let Some(mut e) = second.0.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
    }
    assert!(
        err.contains("another switchyard daemon uses state directory"),
        "{err}"
    );
    let cli = |args: &[&str]| {
        bin()
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .output()
            .expect("cli")
    };
    let out = cli(&["network", "create", "web", "--subnet", "10.30.0.0/24"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["network", "ls"]);
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(
        ls.contains("web") && ls.contains("10.30.0.0/24") && ls.contains("default"),
        "{ls}"
    );
    let out = cli(&["connect", "web", "--netns", "/nonexistent"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent does not exist"));
    let ns = dir.path().join("ns");
    std::fs::write(&ns, b"").expect("ns");
    let out = cli(&["connect", "web", "--netns", ns.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a network namespace"), "{err}");
    let out = cli(&["network", "create", "web"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = cli(&["stats", "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["stats"]["drops"].is_object());
    // `run` returns the command's status and leaves no endpoint behind.
    if nix::unistd::geteuid().is_root() {
        let out = cli(&["run", "--", "sh", "-c", "exit 7"]);
        assert_eq!(
            out.status.code(),
            Some(7),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cli(&["run", "--network", "nope", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    let out = cli(&["ps"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let status = daemon.0.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists());
    let _ = ClientError::Timeout(sock);
}

#[test]
fn endpoints_of_vanished_sandboxes_are_reaped() {
    let dir = TempDir::new("reap");
    let t = TestDaemon::start(&dir.path().join("state"), &dir.path().join("api.sock"));
    let mut c = t.client();
    ok(
        &mut c,
        r#"{"op":"network_create","name":"r","subnet":"10.7.0.0/24"}"#,
    );
    let mut ids = Vec::new();
    for name in ["live", "dead"] {
        let ns = dir.path().join(name);
        std::fs::write(&ns, b"").expect("ns file");
        let target = format!(r#"{{"netns":{{"path":"{}"}}}}"#, ns.display());
        let ep: Endpoint = serde_json::from_value(ok(
            &mut c,
            &format!(r#"{{"op":"connect","network":"r","target":{target},"name":"{name}"}}"#),
        ))
        .expect("endpoint");
        ids.push(ep);
    }
    std::fs::remove_file(dir.path().join("dead")).expect("remove");
    let reaped = t.daemon.lock().expect("lock").reap_vanished();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].name, "dead");
    let st = state(&t);
    assert_eq!(st.endpoints.len(), 1);
    assert_eq!(st.endpoints[0].name, "live");
    // The address is free again.
    let ns = dir.path().join("again");
    std::fs::write(&ns, b"").expect("ns file");
    let target = format!(r#"{{"netns":{{"path":"{}"}}}}"#, ns.display());
    let ep: Endpoint = serde_json::from_value(ok(
        &mut c,
        &format!(
            r#"{{"op":"connect","network":"r","target":{target},"ip":"{}"}}"#,
            ids[1].ipv4
        ),
    ))
    .expect("endpoint");
    assert_eq!(ep.ipv4, ids[1].ipv4);
}

#[test]
fn a_finished_capture_leaves_a_newer_capture_on_a_reused_port_running() {
    let dir = TempDir::new("capreuse");
    let t = TestDaemon::start(&dir.path().join("state"), &dir.path().join("api.sock"));
    let mut c = t.client();
    ok(
        &mut c,
        r#"{"op":"network_create","name":"cap","subnet":"10.7.0.0/24"}"#,
    );
    let connect = |c: &mut Client, name: &str| -> Endpoint {
        let ns = dir.path().join(format!("ns-{name}"));
        std::fs::write(&ns, b"").expect("ns file");
        let line = format!(
            r#"{{"op":"connect","network":"cap","target":{{"netns":{{"path":"{}"}}}},"name":"{name}"}}"#,
            ns.display()
        );
        serde_json::from_value(ok(c, &line)).expect("endpoint")
    };
    let a = connect(&mut c, "a");
    let old = t
        .daemon
        .lock()
        .expect("lock")
        .start_capture("a")
        .expect("capture a");
    ok(
        &mut c,
        r#"{"op":"disconnect","network":"cap","endpoint":"a"}"#,
    );
    let b = connect(&mut c, "b");
    let (port_a, port_b) = {
        let d = t.daemon.lock().expect("lock");
        (
            d.endpoint_ports(&a.id).to_vec(),
            d.endpoint_ports(&b.id).to_vec(),
        )
    };
    assert!(port_a.is_empty(), "a's ports are gone");
    let new = t
        .daemon
        .lock()
        .expect("lock")
        .start_capture("b")
        .expect("capture b");
    // a's capture ends after b's began, on what may be the same port id.
    t.daemon.lock().expect("lock").stop_capture(&old);
    let handle = {
        let log = t.attacher.log.lock().expect("log");
        log.attached.last().expect("b attached").1.clone()
    };
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&b.mac.0);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.resize(60, 0);
    assert!(handle.inject(&frame));
    let got = new.source.recv_timeout(Duration::from_secs(5));
    assert!(got.is_ok(), "b's capture still runs (ports {port_b:?})");
    t.daemon.lock().expect("lock").stop_capture(&new);
}

#[test]
fn trace_explains_decisions_without_side_effects() {
    let dir = TempDir::new("trace");
    let t = TestDaemon::start(&dir.path().join("state"), &dir.path().join("api.sock"));
    let mut c = t.client();
    ok(
        &mut c,
        r#"{"op":"network_create","name":"t","subnet":"10.8.0.0/24","ipv6_subnet":"fd08::/64"}"#,
    );
    ok(
        &mut c,
        r#"{"op":"network_create","name":"u","subnet":"10.9.0.0/24"}"#,
    );
    for (net, name) in [("t", "a"), ("t", "b"), ("u", "c")] {
        let ns = dir.path().join(name);
        std::fs::write(&ns, b"").expect("ns file");
        let target = format!(r#"{{"netns":{{"path":"{}"}}}}"#, ns.display());
        ok(
            &mut c,
            &format!(r#"{{"op":"connect","network":"{net}","target":{target},"name":"{name}"}}"#),
        );
    }
    let trace = |c: &mut Client, spec: &str| -> Value {
        ok(
            c,
            &format!(r#"{{"op":"trace","network":"t","frame":"{spec}"}}"#),
        )
    };
    // Ping to the gateway: answered back out of a's port.
    let r = trace(&mut c, "in=a,icmp=10.8.0.1");
    let result = r["report"]["result"].as_str().expect("result");
    assert!(result.starts_with("output to"), "{r}");
    let stages: Vec<&str> = r["report"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["stage"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        stages,
        ["decap", "parse", "ingress", "learn", "dns", "nat", "gateway", "overlay", "forward"]
    );
    // A datagram to the gateway's port 53 is answered by the dns stage
    // (FORMERR here: the spec's payload is no DNS query).
    let r = trace(&mut c, "in=a,udp=10.8.0.1:53");
    assert_eq!(r["report"]["steps"][4]["stage"], "dns", "{r}");
    assert_eq!(
        r["report"]["steps"][4]["action"], r["report"]["result"],
        "{r}"
    );
    assert!(
        r["report"]["result"]
            .as_str()
            .unwrap_or("")
            .starts_with("output to"),
        "{r}"
    );
    // b's address has never been seen: flooded (to b only).
    let r = trace(&mut c, "in=a,udp=10.8.0.3:53");
    assert!(
        r["report"]["result"]
            .as_str()
            .unwrap_or("")
            .starts_with("flood to"),
        "{r}"
    );
    // IPv6 too, from the endpoint's IPv6 address; `in=` may name the
    // endpoint as NETWORK/NAME.
    let r = trace(&mut c, "in=t/a,icmp=fd08::1");
    assert!(
        r["frame"].as_str().unwrap_or("").contains("icmp=fd08::1"),
        "{r}"
    );
    let result = r["report"]["result"].as_str().expect("result");
    assert!(
        result.starts_with("output to"),
        "ICMPv6 echo to the gateway: {r}"
    );
    let r = trace(&mut c, "in=a,udp=[fd08::3]:53");
    let result = r["report"]["result"].as_str().expect("result");
    assert!(result.starts_with("flood to"), "{r}");
    let r = trace(&mut c, "in=a,tcp=[2001:db8::1]:443");
    assert_eq!(r["report"]["result"], "to the gateway stack", "{r}");
    let (k, msg) = err_kind(
        &mut c,
        r#"{"op":"trace","network":"u","frame":"in=c,icmp=fd08::1"}"#,
    );
    assert_eq!(k, ErrorKind::BadRequest);
    assert!(msg.contains("no IPv6 address"), "{msg}");
    let (k, msg) = err_kind(
        &mut c,
        r#"{"op":"trace","network":"t","frame":"in=u/c,icmp=10.9.0.1"}"#,
    );
    assert_eq!(k, ErrorKind::BadRequest);
    assert!(msg.contains("not an endpoint of network \"t\""), "{msg}");
    // A spoofed source is dropped by ingress port security.
    let r = trace(&mut c, "in=a,icmp=10.8.0.1,src=02:99:99:99:99:99");
    assert_eq!(r["report"]["result"], "drop: spoofed", "{r}");
    // Tracing did not count anything or learn anything.
    let stats: Value = ok(&mut c, r#"{"op":"stats"}"#);
    assert_eq!(stats["stats"]["drops"]["spoofed"], 0);
    assert_eq!(stats["stats"]["events"]["mac-learned"], 0);
    // Bad specs are clear errors.
    let (k, msg) = err_kind(
        &mut c,
        r#"{"op":"trace","network":"t","frame":"in=a,icmp=nope"}"#,
    );
    assert_eq!(k, ErrorKind::BadRequest);
    assert!(msg.contains("invalid frame spec"), "{msg}");
    let (k, _) = err_kind(
        &mut c,
        r#"{"op":"trace","network":"t","frame":"in=zz,icmp=10.8.0.1"}"#,
    );
    assert_eq!(k, ErrorKind::NotFound);
}

#[test]
fn too_many_clients_are_refused_and_served_again_later() {
    use std::io::{BufRead, BufReader};
    use switchyard::control::server::MAX_CLIENTS;
    let dir = TempDir::new("busy");
    let t = TestDaemon::start(&dir.path().join("state"), &dir.path().join("api.sock"));
    let mut idle = Vec::new();
    for _ in 0..MAX_CLIENTS {
        let mut c = t.client();
        ok(&mut c, r#"{"op":"ping"}"#);
        idle.push(c);
    }
    let extra = std::os::unix::net::UnixStream::connect(&t.socket).expect("connect");
    let mut line = String::new();
    BufReader::new(extra).read_line(&mut line).expect("reply");
    assert!(
        line.contains("exhausted") && line.contains("try again"),
        "{line}"
    );
    drop(idle.pop());
    // Until the server notices the freed slot, a new client may still be
    // refused (and its socket closed before it finishes writing).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        use std::io::Write;
        let served = std::os::unix::net::UnixStream::connect(&t.socket)
            .and_then(|mut s| {
                s.write_all(b"{\"op\":\"ping\"}\n")?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line)?;
                Ok(line.contains("\"ok\":true"))
            })
            .unwrap_or(false);
        if served {
            break;
        }
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `Cpus_allowed_list` of every `sy-worker-*` thread of process `pid`.
fn worker_cpus(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("sy-worker-") {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_string();
        out.push(cpus);
    }
    out
}

#[test]
fn cpu_affinity_pins_workers_and_bad_lists_are_refused() {
    let dir = TempDir::new("affinity");
    let sock = dir.path().join("api.sock");
    // The last CPU this test may use: both workers go there.
    let allowed = switchyard::sys::affinity::allowed_cpus().expect("cpus");
    let cpu = allowed.last().expect("a cpu").to_string();
    let mut daemon = spawn_daemon(
        &sock,
        &dir.path().join("state"),
        &["--workers", "2", "--cpu-affinity", &cpu],
    );
    // The API socket is bound before the data plane starts: wait for the
    // workers themselves (each is pinned right after it is spawned).
    let want = [cpu.clone(), cpu];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = worker_cpus(daemon.0.id());
    while seen != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        seen = worker_cpus(daemon.0.id());
    }
    assert_eq!(seen, want);
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();

    for (bad, says) in [
        ("4095", "not one this process may run on"),
        ("1-x", "bad --cpu-affinity"),
    ] {
        let out = bin()
            .args(["--socket"])
            .arg(dir.path().join("other.sock"))
            .args(["daemon", "--workers", "1", "--cpu-affinity", bad])
            .arg("--state-dir")
            .arg(dir.path().join("state2"))
            .output()
            .expect("run");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{bad}: {err}");
    }
}

fn wait_for_socket(sock: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "no daemon answers on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_stops_a_daemon_whose_socket_file_was_removed_or_taken() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = TempDir::new("sigterm");
    let sock = dir.path().join("api.sock");
    let spawn = |state: &str| spawn_daemon(&sock, &dir.path().join(state), &["--workers", "1"]);
    let mut first = spawn("state1");
    wait_for_socket(&sock);
    // A cleaned runtime directory: the path is gone, then a second daemon
    // binds it. Stopping the first used to connect to the path to wake its
    // accept, which reached the second daemon (or nothing), so the first
    // never exited.
    std::fs::remove_file(&sock).expect("remove socket file");
    let mut second = spawn("state2");
    wait_for_socket(&sock);
    kill(Pid::from_raw(first.0.id() as i32), Signal::SIGTERM).expect("signal");
    assert!(
        wait_timeout(&mut first.0, Duration::from_secs(10)).is_some(),
        "the first daemon ignored SIGTERM"
    );
    // ...and on its way out it left the second daemon's socket alone.
    let out = ps(&sock);
    assert!(
        out.status.success(),
        "the second daemon lost its socket: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    kill(Pid::from_raw(second.0.id() as i32), Signal::SIGTERM).expect("signal");
    assert!(wait_timeout(&mut second.0, Duration::from_secs(10)).is_some());
    assert!(
        !sock.exists(),
        "the second daemon left its socket file behind"
    );
}

/// A state directory in `dir` holding `n` endpoints no daemon can re-attach:
/// their "network namespaces" are regular files, which still exist (so the
/// sandbox does not count as gone) but which the real attacher cannot
/// enter.
fn unattachable_state(dir: &TempDir, n: usize) -> std::path::PathBuf {
    let state = dir.path().join("state");
    let t = TestDaemon::start(&state, &dir.path().join("setup.sock"));
    let mut c = t.client();
    ok(
        &mut c,
        r#"{"op":"network_create","name":"old","subnet":"10.8.0.0/24"}"#,
    );
    for i in 0..n {
        let ns = dir.path().join(format!("ns{i}"));
        std::fs::write(&ns, b"").expect("ns file");
        ok(
            &mut c,
            &format!(
                r#"{{"op":"connect","network":"old","target":{{"netns":{{"path":"{}"}}}}}}"#,
                ns.display()
            ),
        );
    }
    t.stop();
    state
}

/// The endpoints recorded in the state directory `state`.
fn recorded_endpoints(state: &std::path::Path) -> usize {
    let store = switchyard::control::store::Store::open(state).expect("open state");
    store.load().expect("load state").endpoints.len()
}

#[test]
fn restoring_unattachable_endpoints_delays_startup_once_not_each() {
    let dir = TempDir::new("restore-slow");
    let state = unattachable_state(&dir, 5);
    let sock = dir.path().join("api.sock");
    let started = Instant::now();
    let _daemon = spawn_daemon(&sock, &state, &["--workers", "1"]);
    wait_for_socket(&sock);
    let mut c = Client::connect_with_timeout(&sock, Duration::from_secs(60)).expect("connect");
    let eps: Vec<Endpoint> = c.call(&switchyard::control::api::Request::Ps).expect("ps");
    let waited = started.elapsed();
    // Each endpoint used to be retried for 3 s in turn: 15 s here.
    assert!(
        waited < Duration::from_secs(6),
        "the API answered after {waited:?}"
    );
    assert!(eps.is_empty(), "not released: {eps:?}");
}

#[test]
fn sigterm_during_restore_stops_the_daemon_at_once() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = TempDir::new("restore-term");
    let state = unattachable_state(&dir, 5);
    let sock = dir.path().join("api.sock");
    let mut daemon = spawn_daemon(&sock, &state, &["--workers", "1"]);
    // Bound: the daemon is starting (or restoring) now.
    wait_for_socket(&sock);
    let signalled = Instant::now();
    kill(Pid::from_raw(daemon.0.id() as i32), Signal::SIGTERM).expect("signal");
    let status = wait_timeout(&mut daemon.0, Duration::from_secs(30)).expect("exits");
    let took = signalled.elapsed();
    // It used to finish the whole restore first.
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    assert!(status.success(), "{status:?}");
    // What it had no time for is tried again at the next start, not
    // released.
    assert_eq!(recorded_endpoints(&state), 5);
}
