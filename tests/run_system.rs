//! System tests of `switchyard run` with real namespaces, TAP devices, `ping`
//! and `iperf3`, as root and as the unprivileged user `sytest` (created by
//! tools/test.sh): connectivity, isolation between networks, internal
//! networks, daemon restart with surviving sandboxes, address release on
//! disconnect, signals passed on to the command, a killed `run` taking CMD
//! with it, and a `run` outliving its daemon leaving the endpoint another
//! sandbox now has under its name. Everything is torn down on drop, even when a test fails.
//! Outside CI, a machine that cannot run them skips them with a message; with
//! CI=true that is a failure.

mod common;

use std::time::Duration;

use common::sysenv::{ok, running, spawn_retry, wait_timeout, within, Env, USER};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn scenario(tag: &str, user: Option<&str>, k: u8) {
    let Some(mut env) = Env::new(tag, user) else {
        return;
    };
    env.start_daemon();
    let n1 = format!("10.201.{k}.0/24");
    let n2 = format!("10.202.{k}.0/24");
    let n3 = format!("10.203.{k}.0/24");
    ok(
        &env.sy(&["network", "create", "n1", "--subnet", &n1]),
        "create n1",
    );
    ok(
        &env.sy(&["network", "create", "n2", "--subnet", &n2]),
        "create n2",
    );
    ok(
        &env.sy(&["network", "create", "n3", "--subnet", &n3, "--internal"]),
        "create n3",
    );
    let b_ip = format!("10.201.{k}.10");

    // Two sandboxes on n1: ping and 3 s of iperf3 through the switch.
    let b = env.spawn(&[
        "run",
        "--network",
        "n1",
        "--name",
        "b",
        "--ip",
        &b_ip,
        "--",
        "iperf3",
        "-s",
        "-1",
    ]);
    env.wait_endpoints(&["b"]);
    let out = env.sy(&[
        "run",
        "--network",
        "n1",
        "--name",
        "a",
        "--",
        "sh",
        "-c",
        "ping -c 3 -W 2 b && iperf3 -c b -t 3 -f m",
    ]);
    ok(&out, "ping and iperf3 from a to b");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 received"), "{text}");
    assert!(text.contains("receiver"), "{text}");
    assert!(env.wait_child(b).success(), "iperf3 server");

    // Disconnect freed a's address: the lowest free one is handed out again.
    assert!(!env.ps().contains(" a "), "a still listed:\n{}", env.ps());
    let a_ip = format!("10.201.{k}.2");
    ok(
        &env.sy(&["run", "--network", "n1", "--ip", &a_ip, "--", "true"]),
        "reuse of a's address",
    );

    // Another network cannot reach n1.
    let keep = env.spawn(&[
        "run",
        "--network",
        "n1",
        "--name",
        "target",
        "--ip",
        &b_ip,
        "--",
        "sleep",
        "30",
    ]);
    env.wait_endpoints(&["target"]);
    let out = env.sy(&[
        "run",
        "--network",
        "n2",
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "1",
        &b_ip,
    ]);
    assert!(
        !out.status.success(),
        "n2 reached n1: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Internal network: endpoints and the gateway answer, nothing beyond.
    env.spawn(&[
        "run",
        "--network",
        "n3",
        "--name",
        "i1",
        "--",
        "sleep",
        "30",
    ]);
    env.wait_endpoints(&["i1"]);
    let gw3 = format!("10.203.{k}.1");
    let script = format!("ping -c 2 -W 2 i1 && ping -c 1 -W 2 {gw3} && ! ping -c 1 -W 1 {b_ip}");
    ok(
        &env.sy(&["run", "--network", "n3", "--", "sh", "-c", &script]),
        "internal network",
    );

    // Reconfiguration never stops traffic: a ping stream between two
    // endpoints loses nothing while others attach, detach, and a network
    // comes and goes.
    let out_file = env.dir.join("ping-during-reconfig");
    let pinger = format!("ping -c 40 -i 0.1 -W 1 target > {}", out_file.display());
    let p = env.spawn(&[
        "run",
        "--network",
        "n1",
        "--name",
        "pinger",
        "--",
        "sh",
        "-c",
        &pinger,
    ]);
    env.wait_endpoints(&["pinger"]);
    for i in 0..3 {
        ok(
            &env.sy(&["run", "--network", "n1", "--", "true"]),
            "attach and detach",
        );
        let name = format!("tmp{i}");
        ok(&env.sy(&["network", "create", &name]), "create");
        ok(&env.sy(&["network", "rm", &name]), "remove");
    }
    assert!(env.wait_child(p).success(), "pinger");
    let text = std::fs::read_to_string(&out_file).expect("ping output");
    assert!(text.contains(" 0% packet loss"), "{text}");

    // Restart: sandboxes survive and are re-attached.
    env.spawn(&[
        "run",
        "--network",
        "n1",
        "--name",
        "r1",
        "--",
        "sleep",
        "60",
    ]);
    // r2 resolves r1 through the gateway's DNS once r1 is attached.
    env.wait_endpoints(&["r1"]);
    let go = env.dir.join("go");
    let r2_log = env.dir.join("r2.log");
    let wait_go = format!(
        "i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
         (ip addr; ip route; ip neigh; ping -c 5 -W 2 r1) > {log} 2>&1",
        go = go.display(),
        log = r2_log.display()
    );
    let r2 = env.spawn(&[
        "run",
        "--network",
        "n1",
        "--name",
        "r2",
        "--",
        "sh",
        "-c",
        &wait_go,
    ]);
    env.wait_endpoints(&["r1", "r2"]);
    env.stop_daemon();
    env.start_daemon();
    env.wait_endpoints(&["r1", "r2", "target"]);
    std::fs::write(&go, b"").expect("go");
    let st = env.wait_child(r2);
    if !st.success() {
        let log = std::fs::read_to_string(&r2_log).unwrap_or_default();
        let stats = String::from_utf8_lossy(&env.sy(&["stats"]).stdout).into_owned();
        panic!(
            "ping after daemon restart failed:\n{log}\n{}\n{stats}",
            env.ps()
        );
    }
    let _ = keep;
}

#[test]
fn run_as_root() {
    scenario("root", None, (std::process::id() % 100) as u8);
}

#[test]
fn run_as_unprivileged_user() {
    scenario("user", Some(USER), (std::process::id() % 100 + 100) as u8);
}

/// `run` and its CMD killed together (SIGKILL to the group: any other
/// signal `run` passes on and then tears down itself): `run` gets no
/// teardown, yet nothing of the sandbox stays behind in the runtime
/// directory.
fn killed_with_its_command(tag: &str, user: Option<&str>) {
    let Some(mut env) = Env::with_tools(tag, user, &[]) else {
        return;
    };
    env.start_daemon();
    let marker = env.dir.join("started");
    let script = format!("touch {}; exec sleep 60", marker.display());
    let i = env.spawn(&["run", "--", "sh", "-c", &script]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let group = nix::unistd::Pid::from_raw(env.children[i].id() as i32);
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).expect("signal");
    env.wait_child(i);
    let left: Vec<String> = std::fs::read_dir(env.dir.join("run"))
        .expect("runtime dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("switchyard-run-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn killed_run_leaves_nothing_as_root() {
    killed_with_its_command("killed-root", None);
}

#[test]
fn killed_run_leaves_nothing_as_unprivileged_user() {
    killed_with_its_command("killed-user", Some(USER));
}

/// SIGTERM sent to `run` alone, not its process group, reaches CMD, which
/// handles it; `run` then detaches CMD and exits with CMD's status.
fn signal_passed_on(tag: &str, user: Option<&str>) {
    let Some(mut env) = Env::with_tools(tag, user, &[]) else {
        return;
    };
    env.start_daemon();
    let marker = env.dir.join("started");
    let script = format!(
        "trap 'echo got-term; exit 7' TERM; touch {}; while :; do sleep 0.1; done",
        marker.display()
    );
    let out = env.dir.join("out");
    let mut run = env.cmd(&["run", "--name", "trapper", "--", "sh", "-c", &script]);
    run.stdout(std::fs::File::create(&out).expect("output file"));
    env.children.push(spawn_retry(&mut run).expect("start run"));
    let run = env.children.last_mut().expect("run");
    assert!(
        within(Duration::from_secs(15), || marker.exists()),
        "the command never started"
    );
    let pid = Pid::from_raw(run.id() as i32);
    kill(pid, Signal::SIGTERM).expect("signal run");
    let status = wait_timeout(run, Duration::from_secs(5)).expect("run exits after SIGTERM");
    let printed = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(status.code(), Some(7), "run: {status:?}, output: {printed}");
    assert!(printed.contains("got-term"), "output: {printed}");
    let ps = env.ps();
    assert!(
        !ps.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("trapper")),
        "endpoint left attached:\n{ps}"
    );
}

#[test]
fn signal_to_run_reaches_its_command_as_root() {
    signal_passed_on("sig-root", None);
}

#[test]
fn signal_to_run_reaches_its_command_as_unprivileged_user() {
    signal_passed_on("sig-user", Some(USER));
}

/// `run` killed alone with SIGKILL (no teardown, CMD not signalled): CMD
/// dies with it, and the daemon's reaper releases the endpoint.
fn sigkilled_alone(tag: &str, user: Option<&str>) {
    let Some(mut env) = Env::with_tools(tag, user, &[]) else {
        return;
    };
    env.start_daemon();
    // A duration no other process sleeps for: finds CMD in /proc.
    let n = u32::from_str_radix(&common::unique_suffix(), 16).unwrap_or(1);
    let sleep = format!("3600.{n}");
    let i = env.spawn(&["run", "--name", "orphan", "--", "sleep", &sleep]);
    env.wait_endpoints(&["orphan"]);
    assert_eq!(running("sleep", &sleep).len(), 1, "CMD is not running");
    env.children[i].kill().expect("SIGKILL run");
    env.wait_child(i);
    // It used to sleep on in its namespace, and its endpoint stayed listed
    // for as long.
    let gone = || running("sleep", &sleep).is_empty();
    assert!(within(Duration::from_secs(5), gone), "CMD outlived run");
    // The reaper looks every 2 s.
    let released = || !env.ps().contains("orphan");
    assert!(
        within(Duration::from_secs(10), released),
        "not released:\n{}",
        env.ps()
    );
}

#[test]
fn sigkilled_run_takes_its_command_as_root() {
    sigkilled_alone("sigkill-root", None);
}

#[test]
fn sigkilled_run_takes_its_command_as_unprivileged_user() {
    sigkilled_alone("sigkill-user", Some(USER));
}

/// Waits until `file` exists (15 s at most).
fn wait_file(file: &std::path::Path, what: &str) {
    assert!(
        within(Duration::from_secs(15), || file.exists()),
        "{what} never started"
    );
}

/// A `run` whose daemon restarted on a fresh state while its command ran
/// detaches, when the command exits, only the endpoint it attached: not the
/// endpoint a newer sandbox has under the same name (the new daemon counts
/// from the same sequence number again). It reports that it left that one
/// alone and exits with the command's status.
fn outlived_daemon(tag: &str, user: Option<&str>) {
    let Some(mut env) = Env::with_tools(tag, user, &[]) else {
        return;
    };
    env.start_daemon();
    let wait_then = |started: &std::path::Path, go: &std::path::Path, code: u8| {
        format!(
            "touch {started}; i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; exit {code}",
            started = started.display(),
            go = go.display()
        )
    };
    let (old_started, old_go) = (env.dir.join("old-started"), env.dir.join("old-go"));
    let old_log = env.dir.join("old.log");
    let script = wait_then(&old_started, &old_go, 3);
    let mut old = env.cmd(&["run", "--name", "web", "--", "sh", "-c", &script]);
    old.stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&old_log).expect("log file"));
    env.children
        .push(spawn_retry(&mut old).expect("start the old run"));
    let old = env.children.len() - 1;
    wait_file(&old_started, "the old run's command");
    env.wait_endpoints(&["web"]);

    // The daemon restarts and its state is gone.
    env.stop_daemon();
    std::fs::remove_dir_all(&env.state).expect("remove the state");
    env.start_daemon();
    let (new_started, new_go) = (env.dir.join("new-started"), env.dir.join("new-go"));
    let script = wait_then(&new_started, &new_go, 0);
    let new = env.spawn(&["run", "--name", "web", "--", "sh", "-c", &script]);
    wait_file(&new_started, "the new run's command");
    env.wait_endpoints(&["web"]);

    std::fs::write(&old_go, b"").expect("go");
    let status = env.wait_child(old);
    let log = std::fs::read_to_string(&old_log).unwrap_or_default();
    assert_eq!(status.code(), Some(3), "old run: {status:?}, stderr: {log}");
    let ps = env.ps();
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("web")),
        "the old run detached the new sandbox's endpoint:\n{ps}\nold run's stderr: {log}"
    );
    assert!(log.contains("left alone"), "old run's stderr: {log}");

    // The new run still detaches its own.
    std::fs::write(&new_go, b"").expect("go");
    assert!(env.wait_child(new).success(), "new run");
    let ps = env.ps();
    assert!(
        !ps.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("web")),
        "the new run left its endpoint attached:\n{ps}"
    );
}

#[test]
fn run_outliving_its_daemon_leaves_a_newer_namesake_as_root() {
    outlived_daemon("outlived-root", None);
}

#[test]
fn run_outliving_its_daemon_leaves_a_newer_namesake_as_unprivileged_user() {
    outlived_daemon("outlived-user", Some(USER));
}
