//! System tests of `switchyard connect --pid` against processes the daemon
//! cannot attach: one of another user, whose namespace a rootless daemon
//! may not open, and one that does not exist; each is reported as what it
//! is. Run as the unprivileged user `sytest` (created by tools/test.sh);
//! everything is torn down on drop, even when a test fails. Outside CI, a
//! machine that cannot run them skips them with a message; with CI=true that
//! is a failure.

mod common;

use common::sysenv::{Env, USER};

fn stderr_of(env: &Env, args: &[&str]) -> String {
    let out = env.sy(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn rootless_connect_tells_a_forbidden_process_from_a_missing_one() {
    let Some(mut env) = Env::with_tools("connect-user", Some(USER), &[]) else {
        return;
    };
    env.start_daemon();

    // This test runs as root: its namespaces are closed to `sytest`.
    let root_pid = std::process::id().to_string();
    let err = stderr_of(&env, &["connect", "default", "--pid", &root_pid]);
    assert!(
        err.contains(&format!("pid {root_pid} exists")),
        "no word that the process exists: {err}"
    );
    assert!(err.contains("Permission denied"), "no reason: {err}");
    assert!(!err.contains("not found"), "reported missing: {err}");

    // Above pid_max no process can exist.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number");
    let missing = (pid_max + 1).to_string();
    let err = stderr_of(&env, &["connect", "default", "--pid", &missing]);
    assert!(err.contains(&format!("pid {missing} not found")), "{err}");

    assert!(
        env.ps().lines().count() <= 1,
        "endpoints attached:\n{}",
        env.ps()
    );
}
