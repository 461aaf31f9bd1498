//! A throwaway single-member etcd on loopback for cluster tests: random high
//! ports (retried on collision), data in a temp dir, killed and removed on
//! drop. `stop`/`restart` keep the data dir and ports to test an outage.
//! Missing etcd skips the test, except under CI=true where it fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::sysenv::unavailable;
use super::TempDir;

/// How long etcd may take to answer its health check.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) etcd.
pub struct Etcd {
    child: Option<Child>,
    dir: TempDir,
    bin: PathBuf,
    client_port: u16,
    peer_port: u16,
}

fn find_etcd() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// Two free-looking loopback ports in 20000..60000, picked at random.
fn pick_ports(attempt: u32) -> Option<(u16, u16)> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().rotate_left(16)
        ^ attempt.wrapping_mul(0x9e37_79b9);
    let a = 20000 + (seed % 40000) as u16;
    let b = 20000 + ((seed / 40000).wrapping_add(7919) % 40000) as u16;
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    (a != b && free(a) && free(b)).then_some((a, b))
}

/// The arguments that run etcd as the one member `name` of its own
/// cluster, serving clients on `client` and peers on `peer` (URLs), with its
/// data in `data`.
pub fn single_member_args(name: &str, data: &Path, client: &str, peer: &str) -> Vec<String> {
    let data = data.to_str().expect("utf8 data dir");
    [
        ("--name", name),
        ("--data-dir", data),
        ("--listen-client-urls", client),
        ("--advertise-client-urls", client),
        ("--listen-peer-urls", peer),
        ("--initial-advertise-peer-urls", peer),
        ("--initial-cluster", &format!("{name}={peer}")),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect()
}

/// True when etcd at `addr` answers `/health` with `"health":"true"`
/// (from the calling thread's network namespace).
pub fn healthy_at(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Etcd {
    /// Starts etcd, or returns `None` (after a skip message) when it is not
    /// installed outside CI.
    pub fn start(tag: &str) -> Option<Etcd> {
        let Some(bin) = find_etcd() else {
            unavailable("etcd is not installed (apt-get install etcd-server)");
            return None;
        };
        let mut etcd = Etcd {
            child: None,
            dir: TempDir::new(&format!("etcd-{tag}")),
            bin,
            client_port: 0,
            peer_port: 0,
        };
        for attempt in 0..20 {
            let Some((client_port, peer_port)) = pick_ports(attempt) else {
                continue;
            };
            (etcd.client_port, etcd.peer_port) = (client_port, peer_port);
            match etcd.launch() {
                Ok(()) => return Some(etcd),
                Err(why) => {
                    eprintln!("etcd on {client_port}/{peer_port} did not start ({why}); retrying");
                    etcd.stop();
                    let _ = std::fs::remove_dir_all(etcd.data_dir());
                }
            }
        }
        panic!("could not start etcd on any random loopback port pair");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn launch(&mut self) -> Result<(), String> {
        let (p, q) = (self.client_port, self.peer_port);
        let client = format!("http://127.0.0.1:{p}");
        let peer = format!("http://127.0.0.1:{q}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .args(single_member_args(
                "default",
                &self.data_dir(),
                &client,
                &peer,
            ))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "etcd exited with {status}; see {}",
                        self.log().display()
                    ));
                }
            }
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("etcd not healthy within {READY_TIMEOUT:?}"))
    }

    /// Whether `/health` says so.
    fn healthy(&self) -> bool {
        healthy_at(SocketAddr::from(([127, 0, 0, 1], self.client_port)))
    }

    /// `etcd://127.0.0.1:PORT`, for `ClusterConfig::new`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// etcd's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The temp dir holding data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills etcd (SIGKILL: an outage, not a clean stop) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(why) = self.launch() {
            panic!("etcd did not come back: {why}");
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
