//! `switchyard up` with a real topology: sandboxes come up attached and can
//! reach each other by name, `ps` works against the running `up`, and SIGTERM
//! tears everything down (process exits 0, socket removed, sandboxes gone);
//! SIGKILL takes the sandboxes' commands with it.
//! Needs root (skipped otherwise; a failure under CI=true).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{require_root_or_skip, unique_octet, unique_suffix, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A running `switchyard up` on a topology; killed if the test fails first.
struct Up {
    child: Child,
    sock: PathBuf,
}

impl Up {
    /// Starts `up --workers 2` on `topology`, its socket and runtime files
    /// in `dir`.
    fn start(dir: &TempDir, topology: &str) -> Up {
        Up::start_with_output(dir, topology, Stdio::null(), Stdio::inherit())
    }

    /// [`Up::start`] with `up`'s standard output and error going to
    /// `stdout` and `stderr`.
    fn start_with_output(dir: &TempDir, topology: &str, stdout: Stdio, stderr: Stdio) -> Up {
        let file = dir.path().join("topo.toml");
        std::fs::write(&file, topology).expect("write topology");
        let sock = dir.path().join("api.sock");
        let child = Command::new(BIN)
            .arg("--socket")
            .arg(&sock)
            .args(["up", "--workers", "2"])
            .arg(&file)
            .env("XDG_RUNTIME_DIR", dir.path())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start up");
        Up { child, sock }
    }

    /// Waits until `done` holds, at most 30 s; panics if `up` exits first.
    fn wait_for(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            let exited = self.child.try_wait().ok().flatten();
            assert!(
                Instant::now() < deadline && exited.is_none(),
                "{what} ({exited:?})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and returns the exit status; panics unless `up` exits
    /// within 15 s.
    fn terminate(&mut self) -> ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal");
        self.exit_status("up did not stop on SIGTERM")
    }

    /// The exit status; panics with `what` unless `up` exits within 15 s.
    fn exit_status(&mut self, what: &str) -> ExitStatus {
        common::sysenv::wait_timeout(&mut self.child, Duration::from_secs(15)).expect(what)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PIDs of processes whose command line contains `pattern`.
fn pgrep(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills, on drop, the processes whose command line holds a marker: a
/// sandbox that outlives a failed test's `up`.
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in pgrep(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `up` running one sandbox, `name`, that sleeps for an hour, in a fresh
/// directory; dropped in field order, so `up` is killed first and then what
/// it left running.
struct Sleeper {
    up: Up,
    /// The sleep's command line (a duration no other process uses).
    sleep: KillOnDrop,
    dir: TempDir,
}

/// Starts a [`Sleeper`]; `shell`: a shell sleeps in two children instead.
fn sleeper(name: &str, shell: bool, stdout: Stdio) -> Sleeper {
    let dir = TempDir::new(&format!("up-{name}"));
    let n = u32::from_str_radix(&unique_suffix(), 16).unwrap_or(1);
    let sleep = format!("sleep 3600.{n}");
    let command = if shell {
        format!(r#"["sh", "-c", "{sleep} & {sleep}"]"#)
    } else {
        format!(r#"["sleep", "3600.{n}"]"#)
    };
    let topology = format!(
        r#"
[[sandbox]]
name = "{name}"
command = {command}
"#
    );
    Sleeper {
        up: Up::start_with_output(&dir, &topology, stdout, Stdio::inherit()),
        sleep: KillOnDrop(sleep),
        dir,
    }
}

/// A [`sleeper`] whose sandbox runs `n` sleeps, its output discarded;
/// `None` (the test is skipped) unless run as root.
fn sleeping_up(name: &str, shell: bool, n: usize) -> Option<Sleeper> {
    if !require_root_or_skip() {
        return None;
    }
    let mut s = sleeper(name, shell, Stdio::null());
    let what = format!("the sandbox never ran {n} sleep(s)");
    s.up.wait_for(&what, || sleeping(&s.sleep).len() == n);
    Some(s)
}

/// The PIDs of the processes running `sleep` for `sleep.0` (not a shell or
/// a helper whose command line names it too).
fn sleeping(sleep: &KillOnDrop) -> Vec<u32> {
    common::sysenv::running("sleep", &sleep.0)
}

#[test]
fn up_brings_a_topology_up_and_tears_it_down() {
    if !require_root_or_skip() {
        return;
    }
    let dir = TempDir::new("up");
    let k = unique_octet();
    let ok_file = dir.path().join("ok");
    let topo = format!(
        r#"
[[network]]
name = "front"
subnet = "10.204.{k}.0/24"

[[network]]
name = "back"
subnet = "10.205.{k}.0/24"
internal = true

[[sandbox]]
name = "server"
networks = ["front", "back"]
command = ["sleep", "60"]

[[sandbox]]
name = "client"
networks = ["front"]
command = ["sh", "-c", "ping -c 2 -W 2 server && touch {ok}; sleep 60"]
"#,
        ok = ok_file.display()
    );
    let mut up = Up::start(&dir, &topo);
    up.wait_for("client never reached server by name", || ok_file.exists());
    let ps = Command::new(BIN)
        .arg("--socket")
        .arg(&up.sock)
        .arg("ps")
        .output()
        .expect("ps");
    let text = String::from_utf8_lossy(&ps.stdout);
    assert_eq!(text.matches("server").count(), 2, "{text}");
    assert!(text.contains("client"), "{text}");
    let status = up.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!up.sock.exists(), "socket left behind");
    assert!(
        pgrep(&ok_file.display().to_string()).is_empty(),
        "sandbox processes left behind"
    );
}

/// The mask and ignored signals of process `pid` (`SigBlk`, `SigIgn`).
fn signal_state(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in the status of {pid}:\n{status}"))
    };
    (field("SigBlk:"), field("SigIgn:"))
}

#[test]
fn sandbox_commands_start_with_default_signal_handling() {
    if !require_root_or_skip() {
        return;
    }
    let mut s = sleeper("sig", false, Stdio::null());
    let mut pid = None;
    s.up.wait_for("the sandbox's command never started", || {
        pid = sleeping(&s.sleep).first().copied();
        pid.is_some()
    });
    let (blocked, ignored) = signal_state(pid.expect("pid"));
    // `up` blocks these for its signal waiter; the command inherited the
    // mask, so up's SIGTERM waited 3 s and ended in SIGKILL.
    let bit = |s: nix::sys::signal::Signal| 1u64 << (s as i32 - 1);
    use nix::sys::signal::Signal::{SIGINT, SIGPIPE, SIGTERM};
    assert_eq!(
        blocked & (bit(SIGINT) | bit(SIGTERM)),
        0,
        "blocked {blocked:x}"
    );
    // The Rust runtime ignores SIGPIPE; `yes | head` must still end `yes`.
    assert_eq!(ignored & bit(SIGPIPE), 0, "ignored {ignored:x}");
    assert!(s.up.terminate().success());
}

/// The files `up` and its sandboxes keep in the runtime directory `dir`.
fn runtime_leftovers(dir: &TempDir) -> Vec<String> {
    std::fs::read_dir(dir.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("switchyard-"))
        .collect()
}

#[test]
fn up_whose_report_cannot_be_written_tears_down_before_exiting() {
    if !require_root_or_skip() {
        return;
    }
    // Every write fails (ENOSPC), as into a closed pipe (EPIPE).
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    let mut s = sleeper("full", false, Stdio::from(full));
    let status = s.up.exit_status("up kept running without its report");
    assert!(!status.success(), "{status:?}");
    // It used to return at once, leaving the released sandbox running and
    // its state directory behind.
    assert!(pgrep(&s.sleep.0).is_empty(), "the sandbox outlived up");
    assert_eq!(runtime_leftovers(&s.dir), Vec::<String>::new());
}

#[test]
fn teardown_stops_what_the_sandboxes_commands_started() {
    let Some(mut s) = sleeping_up("parent", true, 2) else {
        return;
    };
    assert!(s.up.terminate().success());
    // Only the shell was signalled: both sleeps used to outlive `up`.
    assert_eq!(sleeping(&s.sleep), Vec::<u32>::new(), "left running");
}

#[test]
fn a_sandbox_that_exited_is_torn_down_without_errors() {
    if !require_root_or_skip() {
        return;
    }
    let dir = TempDir::new("up-exited");
    let (out, err) = (dir.path().join("up.out"), dir.path().join("up.err"));
    let topo = "[[sandbox]]\nname = \"quick\"\ncommand = [\"true\"]\n";
    let file = |p: &PathBuf| Stdio::from(std::fs::File::create(p).expect("create"));
    let mut up = Up::start_with_output(&dir, topo, file(&out), file(&err));
    let sock = up.sock.clone();
    // Once up reports, the endpoint is attached; then the daemon reaps it,
    // as the sandbox exited.
    let reaped = || {
        let reported = std::fs::read_to_string(&out).is_ok_and(|t| t.contains("switchyard is up"));
        let ps = Command::new(BIN)
            .arg("--socket")
            .arg(&sock)
            .arg("ps")
            .output()
            .expect("ps");
        reported && ps.status.success() && !String::from_utf8_lossy(&ps.stdout).contains("quick")
    };
    up.wait_for("the exited sandbox's endpoint was never reaped", reaped);
    assert!(up.terminate().success());
    // The teardown used to report the reaped endpoint as an error.
    let err = std::fs::read_to_string(&err).expect("read stderr");
    assert!(!err.contains("disconnect"), "{err}");
}

#[test]
fn sandbox_commands_die_with_a_killed_up() {
    let Some(mut s) = sleeping_up("sigkill", false, 1) else {
        return;
    };
    s.up.child.kill().expect("SIGKILL up");
    let _ = s.up.child.wait();
    // No teardown runs: the kernel kills the command (PR_SET_PDEATHSIG).
    // It used to sleep on, holding its network namespace.
    let gone = || sleeping(&s.sleep).is_empty();
    assert!(
        common::sysenv::within(Duration::from_secs(5), gone),
        "outlived up: {:?}",
        sleeping(&s.sleep)
    );
}

#[test]
fn a_failed_start_stops_what_earlier_sandboxes_started() {
    if !require_root_or_skip() {
        return;
    }
    let dir = TempDir::new("up-abort");
    let n = u32::from_str_radix(&unique_suffix(), 16).unwrap_or(1);
    let sleep = KillOnDrop(format!("sleep 3600.{n}"));
    let topology = format!(
        r#"
[[sandbox]]
name = "first"
command = ["sh", "-c", "{s} & {s}"]

[[sandbox]]
name = "second"
command = ["true"]
"#,
        s = sleep.0
    );
    let file = dir.path().join("topo.toml");
    std::fs::write(&file, topology).expect("write topology");
    // `up` writes the second sandbox's files under a directory named after
    // its PID, which the shell knows as $$ before it execs `up`: the
    // resolv.conf there is a FIFO, where `up` waits until this test opens
    // it, and hosts a directory, which it cannot write.
    let files = "$XDG_RUNTIME_DIR/switchyard-run-$$-1";
    let script =
        format!(r#"mkdir -p "{files}/hosts" && mkfifo "{files}/resolv.conf" && exec "$0" "$@""#);
    let sock = dir.path().join("api.sock");
    let child = Command::new("sh")
        .args(["-c", &script, BIN, "--socket"])
        .arg(&sock)
        .args(["up", "--workers", "2"])
        .arg(&file)
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("start up");
    let mut up = Up { child, sock };
    let fifo = dir
        .path()
        .join(format!("switchyard-run-{}-1/resolv.conf", up.child.id()));
    up.wait_for("the first sandbox's shell never started its sleeps", || {
        sleeping(&sleep).len() == 2
    });
    // Opened for reading and writing, so that neither side waits: `up`
    // writes into the pipe's buffer and goes on to fail.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    let status = up.exit_status("up did not give up on the second sandbox");
    assert!(!status.success(), "{status:?}");
    // Only the first sandbox's shell used to be killed: both sleeps
    // outlived up.
    let gone = || sleeping(&sleep).is_empty();
    assert!(
        common::sysenv::within(Duration::from_secs(5), gone),
        "left running: {:?}",
        sleeping(&sleep)
    );
}
