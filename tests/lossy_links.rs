//! System test over lossy links: a rootless daemon runs with
//! `--fault-inject`, so every port loses, duplicates and reorders a share of
//! its frames, as a bad link would. What sits behind the switch must still
//! deliver intact: 4 MiB downloaded through the outbound NAT from "the
//! internet" (a namespace behind a veth), 4 MiB uploaded to a sandbox
//! through a published port by a client there (so the gateway's stack
//! carries it, not the loopback splice), and names answered by the
//! gateway's DNS to a client that retries. Needs root to set up; with
//! CI=true a machine that cannot run it fails it.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::outside::Inet;
use common::sysenv::{ok, Env, USER};

/// Lost, duplicated and reordered: 3 % each, on every port, both ways.
const FAULTS: &str = "drop=3%,duplicate=3%,reorder=3%,seed=11";
const SIZE: usize = 4 << 20;

fn payload() -> Vec<u8> {
    (0..SIZE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn wait_for(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Serves `body` once over HTTP/1.0 on a listener in "the internet".
fn serve_once(inet: &Inet, body: Vec<u8>) -> u16 {
    let listener = inet.listen();
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let Ok((mut c, _)) = listener.accept() else {
            return;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && c.read(&mut byte).is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        let _ = write!(
            c,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = c.write_all(&body);
    });
    port
}

/// A sandbox server: takes one connection on PORT, writes what it receives
/// to FILE, answers `ok` after the client's end; MARK appears once it
/// listens. It lingers on close until its answer and FIN are acknowledged
/// (a lost FIN is retransmitted, not abandoned with the sandbox: when the
/// sandbox goes, the switch resets what is left of its connections).
const RECEIVER: &str = r#"
import socket, struct, sys
port, out, mark = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(1)
open(mark, "w").close()
s.settimeout(120)
c, _ = s.accept()
c.settimeout(120)
with open(out, "wb") as f:
    while True:
        d = c.recv(65536)
        if not d:
            break
        f.write(d)
c.sendall(b"ok")
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 30))
c.close()
"#;

#[test]
fn nat_publishing_and_dns_deliver_intact_through_loss() {
    let Some(mut env) = Env::with_tools("lossy", Some(USER), &["curl", "python3", "dig"]) else {
        return;
    };
    let inet = Inet::create(0);
    let body = payload();
    let down_port = serve_once(&inet, body.clone());
    env.start_daemon_with(&["--fault-inject", FAULTS]);
    ok(
        &env.sy(&["network", "create", "lossy", "--subnet", "10.236.0.0/24"]),
        "network create",
    );

    // Download through the outbound NAT, and names from the gateway's DNS
    // (dig retries a lost query after a second).
    let down = env.dir.join("down.bin");
    let script = format!(
        r#"curl -sS --noproxy '*' -m 120 -o {file} http://{host}:{port}/ && echo "curl=ok"
        n=0; for i in $(seq 20); do
          dig +short +tries=5 +timeout=1 @10.236.0.1 client.lossy | grep -qx 10.236.0.50 && n=$((n+1))
        done; echo "dns=$n""#,
        file = down.display(),
        host = inet.addr(),
        port = down_port,
    );
    let out = env.sy(&[
        "run",
        "--network",
        "lossy",
        "--name",
        "client",
        "--ip",
        "10.236.0.50",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    ok(&out, "download");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("curl=ok"), "download: {said}");
    assert!(said.contains("dns=20"), "every name answered: {said}");
    let got = std::fs::read(&down).expect("downloaded file");
    assert!(got == body, "download corrupted: {} bytes", got.len());

    // Upload through a published port, from a client in "the internet".
    let (up, mark) = (env.dir.join("up.bin"), env.dir.join("listening"));
    let host = inet.host_ip();
    let port = std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let publish = format!("{host}:{port}:9000");
    let server = env.spawn(&[
        "run",
        "--network",
        "lossy",
        "-p",
        &publish,
        "--",
        "python3",
        "-c",
        RECEIVER,
        "9000",
        up.to_str().expect("utf8"),
        mark.to_str().expect("utf8"),
    ]);
    assert!(
        wait_for(&mark, Duration::from_secs(30)),
        "receiver listening"
    );
    let sent = body.clone();
    let answer = inet.enter(move || -> std::io::Result<Vec<u8>> {
        let mut c = TcpStream::connect((host, port))?;
        c.set_read_timeout(Some(Duration::from_secs(120)))?;
        c.write_all(&sent)?;
        c.shutdown(Shutdown::Write)?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer)?;
        Ok(answer)
    });
    let answer = answer.unwrap_or_else(|e| {
        let stats = env.sy(&["stats", "--json"]);
        let len = std::fs::metadata(&up).map(|m| m.len()).unwrap_or(0);
        panic!(
            "upload: {e}; receiver wrote {len} bytes; stats {}",
            String::from_utf8_lossy(&stats.stdout)
        )
    });
    assert_eq!(answer.as_slice(), b"ok", "receiver's answer");
    assert!(env.wait_child(server).success(), "receiver exits");
    let got = std::fs::read(&up).expect("uploaded file");
    assert!(got == body, "upload corrupted: {} bytes", got.len());

    // The faults did happen, each kind of them.
    let v = env.stats();
    for fault in ["fault-dropped", "fault-duplicated", "fault-reordered"] {
        let n = v["stats"]["events"][fault].as_u64().unwrap_or(0);
        assert!(n > 0, "no {fault} in {v}");
    }
}
