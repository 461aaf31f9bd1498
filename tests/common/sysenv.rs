//! System-test environment: a daemon and clients of the real binary, run as
//! root or as the unprivileged user `sytest` (created by tools/test.sh), in a
//! private temp directory; everything is killed and removed on drop. Outside
//! CI, a machine that cannot run system tests skips them with a message;
//! with CI=true that is a failure.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Pid, User};

/// The unprivileged user system tests run as.
pub const USER: &str = "sytest";

/// The upstream resolver of the tests' daemons unless a test names its own:
/// the discard port on loopback, which refuses at once. A name that is no
/// sandbox's (one already removed, say) is then answered SERVFAIL instead
/// of being forwarded to the machine's real resolver.
pub const NO_UPSTREAM: [&str; 2] = ["--dns-upstream", "127.0.0.1:9"];

/// `extra` daemon arguments with [`NO_UPSTREAM`] first, unless they choose
/// upstreams themselves.
pub fn with_test_upstream<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let chooses = extra
        .iter()
        .any(|a| a.starts_with("--dns-upstream") || a.starts_with("--resolv-conf"));
    let mut args: Vec<&str> = if chooses {
        vec![]
    } else {
        NO_UPSTREAM.to_vec()
    };
    args.extend_from_slice(extra);
    args
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (or fails under CI) when the test cannot run here.
pub fn unavailable(why: &str) -> bool {
    if in_ci() {
        panic!("system test cannot run under CI: {why}");
    }
    eprintln!("skipping system test: {why}");
    true
}

pub struct Env {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub ids: Option<(u32, u32)>,
    pub daemon: Option<Child>,
    pub children: Vec<Child>,
}

impl Env {
    /// A fresh environment running everything as `user` (None: root).
    pub fn new(tag: &str, user: Option<&str>) -> Option<Env> {
        Self::with_tools(tag, user, &["ping", "iperf3"])
    }

    /// Like [`Env::new`], requiring `tools` to be installed.
    pub fn with_tools(tag: &str, user: Option<&str>, tools: &[&str]) -> Option<Env> {
        if !nix::unistd::geteuid().is_root() {
            unavailable("needs root (to create namespaces and switch to the test user)");
            return None;
        }
        for &tool in tools {
            if !Path::new("/usr/bin").join(tool).exists() && !Path::new("/bin").join(tool).exists()
            {
                unavailable(&format!("{tool} is not installed (run tools/test.sh)"));
                return None;
            }
        }
        let ids = match user {
            None => None,
            Some(name) => match User::from_name(name) {
                Ok(Some(u)) => Some((u.uid.as_raw(), u.gid.as_raw())),
                _ => {
                    unavailable(&format!("user {name} does not exist (run tools/test.sh)"));
                    return None;
                }
            },
        };
        if ids.is_some() {
            let mode = std::fs::metadata("/dev/net/tun").map(|m| m.permissions().mode() & 0o777);
            if !matches!(mode, Ok(m) if m & 0o006 == 0o006) {
                unavailable("/dev/net/tun is not 0666 (run tools/test.sh)");
                return None;
            }
        }
        let dir = std::env::temp_dir().join(format!("sy-sys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).expect("temp dir");
        // The unprivileged user must reach the binary and its own files;
        // the build tree may sit under a private home directory.
        let bin = dir.join("switchyard");
        std::fs::copy(env!("CARGO_BIN_EXE_switchyard"), &bin).expect("copy binary");
        for p in [&dir, &dir.join("run")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        if let Some((uid, gid)) = ids {
            nix::unistd::chown(&dir.join("run"), Some(uid.into()), Some(gid.into()))
                .expect("chown");
            std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
        }
        Some(Env {
            socket: dir.join("run/api.sock"),
            state: dir.join("run/state"),
            bin,
            dir,
            ids,
            daemon: None,
            children: Vec::new(),
        })
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--socket").arg(&self.socket).args(args);
        c.env("HOME", &self.dir)
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env_remove("SWITCHYARD_SOCKET")
            .current_dir(&self.dir)
            .process_group(0);
        if let Some((uid, gid)) = self.ids {
            c.uid(uid).gid(gid);
        }
        c
    }

    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[]);
    }

    /// Starts the daemon with extra arguments.
    pub fn start_daemon_with(&mut self, extra: &[&str]) {
        let state = self.state.to_str().expect("utf8").to_string();
        let mut child = self.cmd(&["daemon", "--workers", "2", "--state-dir", &state]);
        child.args(with_test_upstream(extra));
        child.stdout(Stdio::null());
        let child = spawn_retry(&mut child).expect("start daemon");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.sy(&["network", "ls"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not come up");
    }

    /// CPU time (user + system) the running daemon has used so far.
    pub fn daemon_cpu(&self) -> Duration {
        let pid = self.daemon.as_ref().expect("daemon running").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon stat");
        // Fields after the command name, which is in parentheses: utime and
        // stime are the 12th and 13th of them, in clock ticks.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .map_or(100, |v| v.max(1) as u64);
        Duration::from_millis((f[11] + f[12]) * 1000 / hz)
    }

    pub fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = killpg(Pid::from_raw(d.id() as i32), Signal::SIGTERM);
            let st = wait_timeout(&mut d, Duration::from_secs(10)).expect("daemon stops");
            assert!(st.success(), "daemon exit: {st:?}");
        }
    }

    /// Runs a client command to completion (at most 60 s).
    pub fn sy(&self, args: &[&str]) -> Output {
        output_within(self.cmd(args), Duration::from_secs(60))
    }

    /// The daemon's counters, as `stats --json` prints them.
    pub fn stats(&self) -> serde_json::Value {
        let out = self.sy(&["stats", "--json"]);
        ok(&out, "stats");
        serde_json::from_slice(&out.stdout).expect("stats json")
    }

    /// Starts a long-running client command (killed on drop).
    pub fn spawn(&mut self, args: &[&str]) -> usize {
        let mut c = self.cmd(args);
        c.stdout(Stdio::null());
        let child = spawn_retry(&mut c).expect("spawn client");
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn wait_child(&mut self, i: usize) -> std::process::ExitStatus {
        wait_timeout(&mut self.children[i], Duration::from_secs(60)).expect("child exits in time")
    }

    pub fn ps(&self) -> String {
        String::from_utf8_lossy(&self.sy(&["ps"]).stdout).into_owned()
    }

    pub fn wait_endpoints(&self, names: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let ps = self.ps();
            if names
                .iter()
                .all(|n| ps.lines().any(|l| l.split_whitespace().nth(1) == Some(n)))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("endpoints {names:?} did not appear:\n{}", self.ps());
    }
}

/// Spawns, retrying while the binary is "text file busy": another test
/// thread may fork while our copy of the binary is still open for writing,
/// and the child holds that descriptor until it execs.
pub fn spawn_retry(c: &mut Command) -> std::io::Result<Child> {
    for _ in 0..50 {
        match c.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => return r,
        }
    }
    c.spawn()
}

/// Runs `c` with piped output in its own process group, killing the group
/// after `limit`.
pub fn output_within(mut c: Command, limit: Duration) -> Output {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = spawn_retry(&mut c).unwrap_or_else(|e| panic!("spawn {c:?}: {e}"));
    let (out_pipe, err_pipe) = (child.stdout.take(), child.stderr.take());
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        if let Some(mut p) = out_pipe {
            let _ = p.read_to_end(&mut out);
        }
        if let Some(mut p) = err_pipe {
            let _ = p.read_to_end(&mut err);
        }
        (out, err)
    });
    let status = wait_timeout(&mut child, limit).unwrap_or_else(|| {
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        child.wait().expect("wait")
    });
    let (stdout, stderr) = reader.join().expect("reader");
    Output {
        status,
        stdout,
        stderr,
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in self.children.iter_mut().chain(self.daemon.iter_mut()) {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `done` every 50 ms until it holds (true) or `limit` has passed
/// (false).
pub fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// PIDs of the processes named `comm` (as in `/proc/PID/comm`) whose
/// command line holds `marker`: a sandbox's command, found without its
/// caller or sandbox helper, whose command lines name it too.
pub fn running(comm: &str, marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
            String::from_utf8_lossy(&read("comm")).trim() == comm && cmdline.contains(marker)
        })
        .collect()
}

/// Asserts that a command succeeded, showing its output otherwise.
pub fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
