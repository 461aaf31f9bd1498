//! `switchyard up` with a real topology: sandboxes come up attached and can
//! reach each other by name, `ps` works against the running `up`, and SIGTERM
//! tears everything down (process exits 0, socket removed, sandboxes gone).
//! Needs root (skipped otherwise; a failure under CI=true).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_root_or_skip, unique_octet, TempDir};

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
    let file = dir.path().join("topo.toml");
    std::fs::write(&file, topo).expect("write topology");
    let sock = dir.path().join("api.sock");
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let mut up = Command::new(bin)
        .arg("--socket")
        .arg(&sock)
        .args(["up", "--workers", "2"])
        .arg(&file)
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("start up");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok_file.exists() {
        if Instant::now() > deadline || up.try_wait().ok().flatten().is_some() {
            let _ = up.kill();
            let _ = up.wait();
            panic!("client never reached server by name");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ps = Command::new(bin)
        .arg("--socket")
        .arg(&sock)
        .arg("ps")
        .output()
        .expect("ps");
    let text = String::from_utf8_lossy(&ps.stdout);
    assert_eq!(text.matches("server").count(), 2, "{text}");
    assert!(text.contains("client"), "{text}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Ok(Some(st)) = up.try_wait() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = up.kill();
            panic!("up did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket left behind");
    let leftovers = Command::new("pgrep")
        .args(["-f", &ok_file.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(leftovers.stdout.is_empty(), "sandbox processes left behind");
}
