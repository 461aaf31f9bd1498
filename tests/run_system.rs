//! System tests of `switchyard run` with real namespaces, TAP devices, `ping`
//! and `iperf3`, as root and as the unprivileged user `sytest` (created by
//! tools/test.sh): connectivity, isolation between networks, internal
//! networks, daemon restart with surviving sandboxes, and address release on
//! disconnect. Everything is torn down on drop, even when a test fails.
//! Outside CI, a machine that cannot run them skips them with a message; with
//! CI=true that is a failure.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Pid, User};

const USER: &str = "sytest";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (or fails under CI) when the test cannot run here.
fn unavailable(why: &str) -> bool {
    if in_ci() {
        panic!("system test cannot run under CI: {why}");
    }
    eprintln!("skipping system test: {why}");
    true
}

struct Env {
    dir: PathBuf,
    bin: PathBuf,
    socket: PathBuf,
    state: PathBuf,
    ids: Option<(u32, u32)>,
    daemon: Option<Child>,
    children: Vec<Child>,
}

impl Env {
    /// A fresh environment running everything as `user` (None: root).
    fn new(tag: &str, user: Option<&str>) -> Option<Env> {
        if !nix::unistd::geteuid().is_root() {
            unavailable("needs root (to create namespaces and switch to the test user)");
            return None;
        }
        for tool in ["ping", "iperf3"] {
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

    fn cmd(&self, args: &[&str]) -> Command {
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

    fn start_daemon(&mut self) {
        let state = self.state.to_str().expect("utf8").to_string();
        let mut child = self.cmd(&["daemon", "--workers", "2", "--state-dir", &state]);
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

    fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = killpg(Pid::from_raw(d.id() as i32), Signal::SIGTERM);
            let st = wait_timeout(&mut d, Duration::from_secs(10)).expect("daemon stops");
            assert!(st.success(), "daemon exit: {st:?}");
        }
    }

    /// Runs a client command to completion (at most 60 s).
    fn sy(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = spawn_retry(&mut c).expect("spawn client");
        let out_pipe = child.stdout.take();
        let err_pipe = child.stderr.take();
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut out = Vec::new();
            let mut err = Vec::new();
            if let Some(mut p) = out_pipe {
                let _ = p.read_to_end(&mut out);
            }
            if let Some(mut p) = err_pipe {
                let _ = p.read_to_end(&mut err);
            }
            (out, err)
        });
        let status = match wait_timeout(&mut child, Duration::from_secs(60)) {
            Some(s) => s,
            None => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                child.wait().expect("wait")
            }
        };
        let (stdout, stderr) = reader.join().expect("reader");
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Starts a long-running client command (killed on drop).
    fn spawn(&mut self, args: &[&str]) -> usize {
        let mut c = self.cmd(args);
        c.stdout(Stdio::null());
        let child = spawn_retry(&mut c).expect("spawn client");
        self.children.push(child);
        self.children.len() - 1
    }

    fn wait_child(&mut self, i: usize) -> std::process::ExitStatus {
        wait_timeout(&mut self.children[i], Duration::from_secs(60)).expect("child exits in time")
    }

    fn ps(&self) -> String {
        String::from_utf8_lossy(&self.sy(&["ps"]).stdout).into_owned()
    }

    fn wait_endpoints(&self, names: &[&str]) {
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
fn spawn_retry(c: &mut Command) -> std::io::Result<Child> {
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

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
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

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

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
