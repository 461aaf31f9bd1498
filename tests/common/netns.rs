//! Named network namespaces that remove themselves, unique names, and the
//! root check, for the namespace system tests.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A short suffix unique to this process and call (pid, clock, counter).
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mix = (std::process::id() ^ nanos.rotate_left(7)).wrapping_mul(2_654_435_761) ^ n;
    format!("{:06x}", mix & 0xff_ffff)
}

/// A number in 1..=250 derived from a fresh suffix, for test subnets.
pub fn unique_octet() -> u8 {
    let s = unique_suffix();
    let v = u32::from_str_radix(&s, 16).unwrap_or(7);
    (v % 250) as u8 + 1
}

/// True when running as root. Otherwise prints a skip notice and returns
/// false, unless `CI=true`, where a skipped system test is a failure.
pub fn require_root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root (CI=true forbids skipping)");
    }
    eprintln!("skipped: this test needs root");
    false
}

/// Runs a command and returns its output; panics (with the output) when it
/// cannot be run.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"))
}

/// Runs `f` on a thread inside the network namespace at `path` (sockets it
/// makes stay there) and returns what it returns.
pub fn enter_netns<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&file),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )
        .expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A network namespace `sytap-<random>-<tag>`, deleted on drop.
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates the namespace with `ip netns add`.
    pub fn new(tag: &str) -> TestNetns {
        let name = format!("sytap-{}-{tag}", unique_suffix());
        let out = run("ip", &["netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestNetns { name }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file (`/run/netns/NAME`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
