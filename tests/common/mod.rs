//! Test helpers: unique temp directories and in-process daemons (fake
//! attacher, static routes) that clean up in `Drop`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use switchyard::control::attach_fake::FakeAttacher;
use switchyard::control::client::Client;
use switchyard::control::daemon::{Daemon, DaemonConfig};
use switchyard::control::error::DaemonError;
use switchyard::control::ipam::StaticRoutes;
use switchyard::control::server::{Server, StopHandle};
use switchyard::dataplane::DataplaneConfig;

/// A fresh directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sy-it-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small data plane for tests.
pub fn small_dataplane() -> DataplaneConfig {
    DataplaneConfig {
        workers: 1,
        pool_frames: 512,
        ..DataplaneConfig::default()
    }
}

/// Builds a daemon on `state_dir` with the fake attacher.
pub fn make_daemon(state_dir: &Path, attacher: FakeAttacher) -> Result<Daemon, DaemonError> {
    Daemon::new(
        DaemonConfig {
            state_dir: state_dir.to_path_buf(),
            dataplane: small_dataplane(),
            routes: Box::new(StaticRoutes(vec!["10.89.0.0/24".parse().expect("cidr")])),
            dns: Default::default(),
            dns_upstream: switchyard::dns::forward::UpstreamSource::Static(vec![]),
            nat_limits: Default::default(),
            overlay: None,
            cluster: None,
            stopping: Default::default(),
        },
        Box::new(attacher),
    )
}

/// An in-process daemon serving on a socket; stopped on drop.
pub struct TestDaemon {
    pub socket: PathBuf,
    pub daemon: Arc<Mutex<Daemon>>,
    pub attacher: FakeAttacher,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl TestDaemon {
    pub fn start(state_dir: &Path, socket: &Path) -> TestDaemon {
        Self::start_with(state_dir, socket, FakeAttacher::new())
    }

    pub fn start_with(state_dir: &Path, socket: &Path, attacher: FakeAttacher) -> TestDaemon {
        let daemon = Arc::new(Mutex::new(
            make_daemon(state_dir, attacher.clone()).expect("daemon starts"),
        ));
        let server = Server::bind(socket).expect("bind");
        let stop = server.stop_handle();
        let d = daemon.clone();
        let thread = std::thread::spawn(move || server.serve(d));
        TestDaemon {
            socket: socket.to_path_buf(),
            daemon,
            attacher,
            stop,
            thread: Some(thread),
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect")
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub mod etcd;
pub mod hosts;
pub mod netns;
pub mod outside;
pub mod sysenv;
#[allow(unused_imports)]
pub use netns::*;
