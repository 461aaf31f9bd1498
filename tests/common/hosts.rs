//! Multi-host fixture for overlay system tests: N "host" network namespaces
//! joined by a veth underlay (a Linux bridge in an "underlay" namespace),
//! a Switchyard daemon per host run as root inside the host's namespace,
//! sandbox namespaces, an etcd server on the underlay, and kernel VXLAN
//! devices. Every name carries the pid and a counter; every process,
//! namespace and file is killed or removed on drop, also when a test fails.
//!
//! Underlay addresses (only inside these namespaces): host i is
//! 10.200.0.(i+1)/24 on its `ul0`, the underlay namespace is
//! [`UNDERLAY_IP`] on its bridge `br0`.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

pub use super::sysenv::output_within;
use super::sysenv::{ok, spawn_retry, unavailable, wait_timeout, with_test_upstream};

/// The underlay namespace's address, where etcd listens.
pub const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 254);
/// etcd's client port on [`UNDERLAY_IP`].
pub const ETCD_PORT: u16 = 2379;
/// The VXLAN port (IANA; Switchyard's and Linux's default here).
pub const VXLAN_PORT: u16 = 4789;
/// How long a client command may take.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);
/// How long a daemon may take to answer its first request.
const DAEMON_START: Duration = Duration::from_secs(15);

/// Tools every overlay test needs besides `ip`.
const TOOLS: &[&str] = &["bridge", "ping", "iperf3", "dig", "getent", "etcd"];

/// An endpoint as `connect` reports it.
#[derive(Debug, Clone)]
pub struct Attached {
    pub sandbox: String,
    pub network: String,
    pub name: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub mac: String,
}

/// A daemon inside a host namespace.
struct HostDaemon {
    child: Child,
}

/// The etcd server on the underlay.
struct Etcd {
    child: Option<Child>,
    data: PathBuf,
}

/// N host namespaces on one underlay, with their daemons, sandboxes,
/// background processes and an optional etcd server.
pub struct Hosts {
    /// Prefix of every name made here (`syo<pid>-<k>`).
    tag: String,
    dir: PathBuf,
    underlay: String,
    hosts: Vec<String>,
    daemons: Vec<Option<HostDaemon>>,
    /// Each host's last daemon arguments, for restarts.
    last_args: Vec<Vec<String>>,
    sandboxes: Vec<String>,
    children: Vec<Child>,
    etcd: Option<Etcd>,
}

impl Hosts {
    /// Creates `n` (1..=9) hosts on an underlay. `None` when this machine
    /// cannot run it (not root, a tool missing): the test returns at once;
    /// under `CI=true` that is a panic instead.
    pub fn new(n: usize, extra_tools: &[&str]) -> Option<Hosts> {
        assert!((1..=9).contains(&n), "1 to 9 hosts");
        if !nix::unistd::geteuid().is_root() {
            unavailable("needs root (host and sandbox namespaces, daemons as root)");
            return None;
        }
        for tool in TOOLS.iter().chain(extra_tools) {
            if !["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(tool).exists())
            {
                unavailable(&format!(
                    "{tool} is not installed (tools/test.sh installs it)"
                ));
                return None;
            }
        }
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "syo{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut h = Hosts {
            underlay: format!("{tag}-ul"),
            hosts: (0..n).map(|i| format!("{tag}-h{i}")).collect(),
            daemons: (0..n).map(|_| None).collect(),
            last_args: vec![Vec::new(); n],
            sandboxes: Vec::new(),
            children: Vec::new(),
            etcd: None,
            tag,
            dir,
        };
        // Namespaces are recorded before they exist, so a failure half way
        // still removes what was made.
        h.make_underlay();
        Some(h)
    }

    fn make_underlay(&mut self) {
        let ul = self.underlay.clone();
        ip(&["netns", "add", &ul]);
        ip(&["-n", &ul, "link", "set", "lo", "up"]);
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &ul,
            "addr",
            "add",
            &format!("{UNDERLAY_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &ul, "link", "set", "br0", "up"]);
        for i in 0..self.hosts.len() {
            let host = self.hosts[i].clone();
            let port = format!("p{i}");
            ip(&["netns", "add", &host]);
            ip(&["-n", &host, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns",
                &host,
            ]);
            ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("{}/24", self.ip(i));
            ip(&["-n", &host, "addr", "add", &addr, "dev", "ul0"]);
            ip(&["-n", &host, "link", "set", "ul0", "up"]);
        }
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Host `i`'s namespace name.
    pub fn host(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// Host `i`'s underlay address (its VTEP).
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 0, i as u8 + 1)
    }

    /// The underlay namespace's name.
    pub fn underlay(&self) -> &str {
        &self.underlay
    }

    /// This fixture's temp directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Host `i`'s API socket.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}.sock"))
    }

    /// Host `i`'s state directory (kept across restarts).
    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}-state"))
    }

    fn daemon_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}-daemon.log"))
    }

    /// Host `i`'s daemon log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.daemon_log(i)).unwrap_or_default()
    }

    /// Starts a daemon in host `i`'s namespace: `--advertise` its underlay
    /// address, its own socket and state dir, 2 workers, then `extra`
    /// (`--peer`, `--cluster-store`, ...). Waits until it answers; panics
    /// with its log when it exits or does not answer.
    pub fn start_daemon(&mut self, i: usize, extra: &[&str]) {
        assert!(self.daemons[i].is_none(), "host {i} already runs a daemon");
        let mut args: Vec<String> = [
            "daemon",
            "--workers",
            "2",
            "--socket",
            path_str(&self.socket(i)),
            "--state-dir",
            path_str(&self.state_dir(i)),
            "--advertise",
            &self.ip(i).to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(with_test_upstream(extra).iter().map(|s| s.to_string()));
        self.spawn_daemon(i, args);
    }

    fn spawn_daemon(&mut self, i: usize, args: Vec<String>) {
        let _ = std::fs::remove_file(self.socket(i));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log(i))
            .expect("daemon log");
        let mut c = self.in_ns_cmd(&self.hosts[i], &[]);
        c.arg(env!("CARGO_BIN_EXE_switchyard"))
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let child = spawn_retry(&mut c).expect("spawn daemon");
        self.daemons[i] = Some(HostDaemon { child });
        self.last_args[i] = args;
        let deadline = Instant::now() + DAEMON_START;
        while Instant::now() < deadline {
            let exited = self.daemons[i]
                .as_mut()
                .and_then(|d| d.child.try_wait().ok().flatten());
            if let Some(st) = exited {
                self.daemons[i] = None;
                panic!(
                    "daemon on host {i} exited ({st}) at start:\n{}",
                    self.log(i)
                );
            }
            if self.socket(i).exists() && self.sy(i, &["network", "ls"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon on host {i} did not answer:\n{}", self.log(i));
    }

    /// Kills host `i`'s daemon with SIGKILL (a crash: nothing is cleaned up).
    pub fn kill_daemon(&mut self, i: usize) {
        if let Some(mut d) = self.daemons[i].take() {
            let _ = killpg(Pid::from_raw(d.child.id() as i32), Signal::SIGKILL);
            let _ = d.child.wait();
        }
    }

    /// Stops host `i`'s daemon with SIGTERM; panics unless it exits cleanly
    /// within 10 s.
    pub fn stop_daemon(&mut self, i: usize) {
        if let Some(mut d) = self.daemons[i].take() {
            let _ = killpg(Pid::from_raw(d.child.id() as i32), Signal::SIGTERM);
            let st = wait_timeout(&mut d.child, Duration::from_secs(10));
            assert!(
                matches!(st, Some(s) if s.success()),
                "daemon on host {i} did not stop cleanly ({st:?}):\n{}",
                self.log(i)
            );
        }
    }

    /// Starts host `i`'s daemon again with the arguments of its last start
    /// (after [`Hosts::kill_daemon`] or [`Hosts::stop_daemon`]).
    pub fn restart_daemon(&mut self, i: usize) {
        assert!(!self.last_args[i].is_empty(), "host {i} never ran a daemon");
        self.spawn_daemon(i, self.last_args[i].clone());
    }

    /// True while host `i`'s daemon process runs.
    pub fn daemon_alive(&mut self, i: usize) -> bool {
        self.daemons[i]
            .as_mut()
            .is_some_and(|d| matches!(d.child.try_wait(), Ok(None)))
    }

    /// Runs a client command against host `i`'s daemon (at most 60 s).
    pub fn sy(&self, i: usize, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        c.arg("--socket").arg(self.socket(i)).args(args);
        c.env_remove("SWITCHYARD_SOCKET");
        output_within(c, CLIENT_LIMIT)
    }

    /// Like [`Hosts::sy`], panicking with the output unless it succeeds;
    /// returns stdout.
    pub fn sy_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.sy(i, args);
        ok(&out, &format!("host {i}: switchyard {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a sandbox namespace (loopback up) and returns its name.
    pub fn sandbox(&mut self, label: &str) -> String {
        let name = format!("{}-s{}-{label}", self.tag, self.sandboxes.len());
        self.sandboxes.push(name.clone());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Attaches `sandbox` to `network` on host `i` as `name`.
    pub fn connect(&self, i: usize, network: &str, sandbox: &str, name: &str) -> Attached {
        let args = connect_args(network, sandbox, name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.sy_ok(i, &args);
        parse_connected(&out).unwrap_or_else(|| panic!("cannot parse connect output: {out}"))
    }

    /// Makes `getent` and `dig` without `@` inside `sandbox` ask `server`
    /// (`ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf).
    pub fn set_resolver(&self, sandbox: &str, server: Ipv4Addr) {
        let d = Path::new("/etc/netns").join(sandbox);
        std::fs::create_dir_all(&d).expect("/etc/netns dir");
        std::fs::write(
            d.join("resolv.conf"),
            format!("nameserver {server}\noptions timeout:1 attempts:2\n"),
        )
        .expect("resolv.conf");
    }

    /// A command run inside namespace `ns` (`ip netns exec NS ARGS`), in its
    /// own process group.
    pub fn in_ns_cmd(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args).process_group(0);
        c
    }

    /// Runs `args` inside namespace `ns`, killed after `limit`.
    pub fn exec(&self, ns: &str, args: &[&str], limit: Duration) -> Output {
        output_within(self.in_ns_cmd(ns, args), limit)
    }

    /// Runs a shell script inside namespace `ns`, killed after `limit`.
    pub fn sh(&self, ns: &str, script: &str, limit: Duration) -> Output {
        self.exec(ns, &["sh", "-c", script], limit)
    }

    /// Starts `args` in namespace `ns` in the background, output to
    /// `DIR/<label>.out`; killed on drop. Returns its index.
    pub fn spawn_in(&mut self, ns: &str, label: &str, args: &[&str]) -> usize {
        let out = std::fs::File::create(self.dir.join(format!("{label}.out"))).expect("out");
        let mut c = self.in_ns_cmd(ns, args);
        c.stdin(Stdio::null())
            .stdout(out.try_clone().expect("fd"))
            .stderr(out);
        self.children
            .push(spawn_retry(&mut c).expect("spawn background"));
        self.children.len() - 1
    }

    /// Waits (at most `limit`) for background process `k` to exit; returns
    /// its status and its output file.
    pub fn wait_spawned(&mut self, k: usize, label: &str, limit: Duration) -> (bool, String) {
        let st = wait_timeout(&mut self.children[k], limit);
        let text =
            std::fs::read_to_string(self.dir.join(format!("{label}.out"))).unwrap_or_default();
        (matches!(st, Some(s) if s.success()), text)
    }

    /// Kills background process `k`.
    pub fn kill_spawned(&mut self, k: usize) {
        let c = &mut self.children[k];
        let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
        let _ = c.wait();
    }

    /// Starts etcd (3.4) in the underlay namespace on
    /// [`UNDERLAY_IP`]:[`ETCD_PORT`] with a data dir in the temp dir, and
    /// waits until it is healthy. Returns the `--cluster-store` URL.
    pub fn start_etcd(&mut self) -> String {
        let data = self.dir.join("etcd-data");
        self.spawn_etcd(data);
        self.cluster_store()
    }

    /// The `--cluster-store` URL of [`Hosts::start_etcd`]'s server.
    pub fn cluster_store(&self) -> String {
        format!("etcd://{UNDERLAY_IP}:{ETCD_PORT}")
    }

    fn spawn_etcd(&mut self, data: PathBuf) {
        let client = format!("http://{UNDERLAY_IP}:{ETCD_PORT}");
        let peer = "http://127.0.0.1:2380";
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log");
        let mut c = self.in_ns_cmd(&self.underlay, &["etcd"]);
        c.args(super::etcd::single_member_args(
            "sy-test", &data, &client, peer,
        ))
        .args(["--logger", "zap", "--log-outputs", "stderr"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("fd"))
        .stderr(log);
        let mut child = spawn_retry(&mut c).expect("spawn etcd");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("etcd exited ({st}):\n{}", self.etcd_log());
            }
            if self.etcd_healthy() {
                break;
            }
            if Instant::now() > deadline {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                panic!("etcd not healthy in 20 s:\n{}", self.etcd_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.etcd = Some(Etcd {
            child: Some(child),
            data,
        });
    }

    /// etcd's log so far.
    pub fn etcd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// True when etcd answers `/health` with `"health":"true"` from inside
    /// the underlay namespace.
    pub fn etcd_healthy(&self) -> bool {
        let to = SocketAddr::from((UNDERLAY_IP, ETCD_PORT));
        self.enter(&self.underlay, move || super::etcd::healthy_at(to))
    }

    /// Kills etcd with SIGKILL, keeping its data dir.
    pub fn kill_etcd(&mut self) {
        if let Some(c) = self.etcd.as_mut().and_then(|e| e.child.as_mut()) {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
        if let Some(e) = self.etcd.as_mut() {
            e.child = None;
        }
    }

    /// Starts etcd again on the same data dir (after [`Hosts::kill_etcd`]).
    pub fn restart_etcd(&mut self) {
        let data = self
            .etcd
            .take()
            .map(|e| e.data)
            .expect("etcd was started before");
        self.spawn_etcd(data);
    }

    /// Runs `f` on a thread inside namespace `ns` and returns its result.
    pub fn enter<T: Send + 'static>(&self, ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        super::netns::enter_netns(format!("/run/netns/{ns}"), f)
    }

    /// Adds a kernel VXLAN device `dev` in namespace `ns`: VNI `vni`, local
    /// address `local`, UDP [`VXLAN_PORT`], no learning, MTU `mtu`, with an
    /// all-zeros FDB entry (flooding: broadcast and unknown unicast) to
    /// each of `remotes`. Not brought up.
    pub fn kernel_vxlan(
        &self,
        ns: &str,
        dev: &str,
        vni: u32,
        local: Ipv4Addr,
        remotes: &[Ipv4Addr],
        mtu: u32,
    ) {
        let (vni, local, port, mtu) = (
            vni.to_string(),
            local.to_string(),
            VXLAN_PORT.to_string(),
            mtu.to_string(),
        );
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            dev,
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            &local,
            "dstport",
            &port,
            "nolearning",
        ]);
        ip(&["-n", ns, "link", "set", dev, "mtu", &mtu]);
        for r in remotes {
            let r = r.to_string();
            run_ok(
                "bridge",
                &[
                    "-n",
                    ns,
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    dev,
                    "dst",
                    &r,
                ],
            );
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let daemons = self.daemons.iter_mut().flatten().map(|d| &mut d.child);
        let etcd = self.etcd.iter_mut().filter_map(|e| e.child.as_mut());
        for c in self.children.iter_mut().chain(daemons).chain(etcd) {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
        for ns in self
            .sandboxes
            .iter()
            .chain(&self.hosts)
            .chain(std::iter::once(&self.underlay))
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `connect` arguments attaching namespace `sandbox` by path.
pub fn connect_args(network: &str, sandbox: &str, name: &str) -> [String; 6] {
    [
        "connect".into(),
        network.into(),
        "--netns".into(),
        format!("/run/netns/{sandbox}"),
        "--name".into(),
        name.into(),
    ]
}

/// Parses `connected SANDBOX to NET as NAME (IFNAME, IP, MAC)`.
pub fn parse_connected(out: &str) -> Option<Attached> {
    let line = out.lines().find(|l| l.starts_with("connected "))?;
    let (head, tail) = line.split_once(" (")?;
    let w: Vec<&str> = head.split_whitespace().collect();
    // The sandbox prints as `netns PATH` or `pid N`.
    let [_, _, sandbox, "to", network, "as", name] = w.as_slice() else {
        return None;
    };
    let mut f = tail.trim_end_matches(')').split(", ");
    let sandbox = sandbox.rsplit('/').next().unwrap_or(sandbox);
    Some(Attached {
        sandbox: sandbox.to_string(),
        network: network.to_string(),
        name: name.to_string(),
        ifname: f.next()?.to_string(),
        ip: f.next()?.parse().ok()?,
        mac: f.next()?.to_string(),
    })
}

fn run_ok(program: &str, args: &[&str]) {
    let mut c = Command::new(program);
    c.args(args);
    ok(
        &output_within(c, Duration::from_secs(20)),
        &format!("{program} {args:?}"),
    );
}

fn ip(args: &[&str]) {
    run_ok("ip", args);
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `(transmitted, received)` from ping's summary line.
pub fn ping_counts(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    Some((nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
}
