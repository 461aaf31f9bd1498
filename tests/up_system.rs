//! `switchyard up` with a real topology: sandboxes come up attached and can
//! reach each other by name, `ps` works against the running `up`, and SIGTERM
//! tears everything down (process exits 0, socket removed, sandboxes gone).
//! Sandbox commands start with the signal handling a shell would give them.
//! Needs root (skipped otherwise; a failure under CI=true).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{require_root_or_skip, unique_octet, TempDir};

/// A running `switchyard up` of a topology written into `dir`.
struct Up {
    child: Child,
    sock: PathBuf,
    /// Where `up` writes stderr (a file: sandboxes inherit it and may
    /// outlive `up`, so a pipe would not end with it).
    log: PathBuf,
}

impl Up {
    fn start(dir: &Path, topo: &str) -> Up {
        let file = dir.join("topo.toml");
        std::fs::write(&file, topo).expect("write topology");
        let sock = dir.join("api.sock");
        let log = dir.join("up.log");
        let stderr = std::fs::File::create(&log).expect("create log");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--socket")
            .arg(&sock)
            .args(["up", "--workers", "2"])
            .arg(&file)
            .env("XDG_RUNTIME_DIR", dir)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start up");
        Up { child, sock, log }
    }

    /// Waits until `done` holds; panics (stopping `up`) after 30 s or if
    /// `up` exits meanwhile.
    fn wait_for(&mut self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{what}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ps(&self) -> String {
        let ps = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--socket")
            .arg(&self.sock)
            .arg("ps")
            .output()
            .expect("ps");
        String::from_utf8_lossy(&ps.stdout).into_owned()
    }

    /// Sends SIGTERM and waits (at most 15 s) for the exit; returns the
    /// status and what `up` wrote to stderr.
    fn stop(mut self) -> (ExitStatus, String) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("up did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (
            status,
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }
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
    let mut up = Up::start(dir.path(), &topo);
    up.wait_for("client never reached server by name", || ok_file.exists());
    let text = up.ps();
    assert_eq!(text.matches("server").count(), 2, "{text}");
    assert!(text.contains("client"), "{text}");
    let sock = up.sock.clone();
    let (status, _) = up.stop();
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket left behind");
    let leftovers = Command::new("pgrep")
        .args(["-f", &ok_file.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(leftovers.stdout.is_empty(), "sandbox processes left behind");
}

/// The hexadecimal signal set `field` (`SigBlk`, `SigIgn`) of a
/// /proc/PID/status text.
fn signal_set(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line.trim(), 16).expect("hex signal set")
}

/// `up` blocks SIGINT and SIGTERM for itself, and the sandbox helper is a
/// Rust program, whose runtime ignores SIGPIPE: neither may reach CMD, or it
/// cannot be stopped by SIGTERM (teardown then waits and kills) and writers
/// to a closed pipe see EPIPE instead of dying.
#[test]
fn up_sandboxes_start_with_default_signal_handling() {
    if !require_root_or_skip() {
        return;
    }
    let dir = TempDir::new("up-signals");
    let k = unique_octet();
    let status_file = dir.path().join("status");
    let topo = format!(
        r#"
[[network]]
name = "sig"
subnet = "10.206.{k}.0/24"

[[sandbox]]
name = "probe"
networks = ["sig"]
command = ["sh", "-c", "grep '^Sig' /proc/self/status > {f}.tmp && mv {f}.tmp {f}; exec sleep 60"]
"#,
        f = status_file.display()
    );
    let mut up = Up::start(dir.path(), &topo);
    up.wait_for("the sandbox never wrote its status", || {
        status_file.exists()
    });
    let (status, _) = up.stop();
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&status_file).expect("read status");
    let bit = |sig: nix::sys::signal::Signal| 1u64 << (sig as i32 - 1);
    use nix::sys::signal::Signal::{SIGINT, SIGPIPE, SIGTERM};
    let blocked = signal_set(&text, "SigBlk");
    assert_eq!(
        blocked & (bit(SIGINT) | bit(SIGTERM)),
        0,
        "blocked in CMD: {text}"
    );
    let ignored = signal_set(&text, "SigIgn");
    assert_eq!(ignored & bit(SIGPIPE), 0, "SIGPIPE ignored in CMD: {text}");
}
