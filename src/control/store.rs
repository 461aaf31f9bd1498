//! Persistence of the control plane's state (networks, endpoints with their
//! leases and publications) as one JSON document in the state directory.
//! Writes are atomic (temp file, fsync, rename, fsync of the directory); a
//! corrupt document is moved aside, never silently overwritten. One daemon
//! at a time owns a directory (an exclusive lock on its `lock` file), so two
//! daemons never overwrite each other's changes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

use serde::{Deserialize, Serialize};

use super::model::{Endpoint, Network};

/// File name of the state document.
pub const STATE_FILE: &str = "state.json";
/// Version of the document format written.
pub const STATE_VERSION: u32 = 1;
/// File whose lock says which daemon owns the directory.
pub const LOCK_FILE: &str = "lock";
/// How long opening waits for a daemon that is exiting to let go.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Everything the daemon persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// Networks, in creation order.
    pub networks: Vec<Network>,
    /// Endpoints, in creation order; their addresses are the IPAM leases.
    pub endpoints: Vec<Endpoint>,
    /// Counter mixed into endpoint ids so they are never reused.
    pub next_seq: u64,
}

impl State {
    /// An empty state of the current version.
    pub fn empty() -> State {
        State {
            version: STATE_VERSION,
            ..State::default()
        }
    }
}

/// State persistence failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory cannot be created or written.
    #[error("state directory {dir} is not writable: {source}; fix its permissions or choose another with `switchyard daemon --state-dir DIR`")]
    Unwritable {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The state document cannot be read.
    #[error("cannot read state file {path}: {source}; fix its permissions or choose another --state-dir")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The state document is not valid; it was moved aside.
    #[error("state file {path} is corrupt ({reason}); moved it to {moved_to} and started with empty state; inspect or delete that file")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where it was moved.
        moved_to: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// Another daemon owns the directory.
    #[error("another switchyard daemon uses state directory {dir}; stop it first or choose another with `switchyard daemon --state-dir DIR`")]
    InUse {
        /// The directory.
        dir: PathBuf,
    },
    /// The corrupt document could not be moved aside.
    #[error("state file {path} is corrupt ({reason}) and could not be moved aside: {source}; move or delete it by hand")]
    CorruptStuck {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
        /// Why the rename failed.
        #[source]
        source: io::Error,
    },
    /// Writing the state document failed; the change was not made.
    #[error("cannot save state to {path}: {source}; the change was not made (is the disk full or the state directory read-only?)")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The state document in a directory, owned while this (or a clone) lives.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    _lock: Arc<Flock<File>>,
}

impl Store {
    /// Opens (creating with mode 0700 if needed) the state directory, checks
    /// it is writable and takes it over: a directory another daemon owns is
    /// refused (after waiting briefly, in case that daemon is exiting).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let unwritable = |source| StoreError::Unwritable {
            dir: dir.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(unwritable)?;
        let probe = dir.join(".write-probe");
        File::create(&probe).map_err(unwritable)?;
        fs::remove_file(&probe).map_err(unwritable)?;
        let lock = lock_dir(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: Arc::new(lock),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the state document.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Loads the document: a missing file is empty state; a corrupt one is
    /// renamed to `state.json.corrupt-<unix seconds>` and reported as
    /// [`StoreError::Corrupt`] (the caller logs it and starts empty).
    pub fn load(&self) -> Result<State, StoreError> {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::empty()),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let reason = match serde_json::from_slice::<State>(&text) {
            Ok(s) if s.version == STATE_VERSION => return Ok(s),
            Ok(s) => format!("unknown format version {}", s.version),
            Err(e) => e.to_string(),
        };
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let moved_to = self.dir.join(format!("{STATE_FILE}.corrupt-{stamp}"));
        match fs::rename(&path, &moved_to) {
            Ok(()) => Err(StoreError::Corrupt {
                path,
                moved_to,
                reason,
            }),
            Err(source) => Err(StoreError::CorruptStuck {
                path,
                reason,
                source,
            }),
        }
    }

    /// Replaces the document atomically: after a crash at any point the file
    /// holds either the old or the new state, whole.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let path = self.path();
        self.write_atomic(state)
            .map_err(|source| StoreError::Write { path, source })
    }

    fn write_atomic(&self, state: &State) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        let tmp = self
            .dir
            .join(format!(".{STATE_FILE}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, self.path())?;
            File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Locks `dir`'s lock file, waiting up to [`LOCK_WAIT`] for its owner.
fn lock_dir(dir: &Path) -> Result<Flock<File>, StoreError> {
    let unwritable = |source| StoreError::Unwritable {
        dir: dir.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
        .map_err(unwritable)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(StoreError::InUse {
                    dir: dir.to_path_buf(),
                })
            }
            Err((_, e)) => return Err(unwritable(e.into())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::model::Driver;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "sy-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> State {
        let mut s = State::empty();
        s.networks.push(Network {
            name: "n".into(),
            driver: Driver::Bridge,
            subnet4: "10.89.0.0/24".parse().unwrap(),
            gateway4: "10.89.0.1".parse().unwrap(),
            subnet6: None,
            gateway6: None,
            internal: false,
            isolate: true,
            mtu: 1500,
            mac_cap: None,
            vni: None,
            host_loopback: false,
        });
        s.next_seq = 3;
        s
    }

    #[test]
    fn missing_file_is_empty_and_round_trips() {
        let d = TempDir::new("store");
        let st = Store::open(&d.0.join("state")).unwrap();
        assert_eq!(st.load().unwrap(), State::empty());
        st.save(&sample()).unwrap();
        assert_eq!(st.load().unwrap(), sample());
        let leftovers: Vec<_> = fs::read_dir(st.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let mut leftovers: Vec<_> = leftovers.iter().filter_map(|n| n.to_str()).collect();
        leftovers.sort_unstable();
        assert_eq!(leftovers, [LOCK_FILE, STATE_FILE]);
    }

    #[test]
    fn a_directory_has_one_owner_at_a_time() {
        let d = TempDir::new("store");
        let first = Store::open(&d.0).unwrap();
        // A second daemon on the same directory used to start and overwrite
        // the first one's changes with its own (reproduced with two
        // `switchyard daemon --state-dir` on one directory).
        let e = Store::open(&d.0).unwrap_err();
        assert!(matches!(e, StoreError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("another switchyard daemon"), "{e}");
        drop(first.clone());
        assert!(Store::open(&d.0).is_err(), "a clone keeps the directory");
        drop(first);
        Store::open(&d.0).expect("free once the owner is gone");
    }

    #[test]
    fn corrupt_file_is_moved_aside_not_overwritten() {
        let d = TempDir::new("store");
        let st = Store::open(&d.0).unwrap();
        fs::write(st.path(), b"{\"version\":1,\"networks\":[").unwrap();
        let Err(StoreError::Corrupt { moved_to, .. }) = st.load() else {
            panic!("expected corrupt")
        };
        assert_eq!(
            fs::read(&moved_to).unwrap(),
            b"{\"version\":1,\"networks\":["
        );
        assert!(!st.path().exists());
        assert_eq!(st.load().unwrap(), State::empty());
    }

    #[test]
    fn future_version_is_treated_as_corrupt() {
        let d = TempDir::new("store");
        let st = Store::open(&d.0).unwrap();
        fs::write(
            st.path(),
            br#"{"version":99,"networks":[],"endpoints":[],"next_seq":0}"#,
        )
        .unwrap();
        let e = st.load().unwrap_err();
        assert!(e.to_string().contains("unknown format version 99"), "{e}");
    }

    #[test]
    fn unwritable_dir_is_clear_at_open() {
        let d = TempDir::new("store");
        let file = d.0.join("file");
        fs::write(&file, b"x").unwrap();
        let e = Store::open(&file.join("sub")).unwrap_err();
        assert!(e.to_string().contains("not writable"), "{e}");
        assert!(e.to_string().contains("--state-dir"), "{e}");
    }

    #[test]
    fn failed_save_keeps_old_document() {
        let d = TempDir::new("store");
        let st = Store::open(&d.0.join("s")).unwrap();
        st.save(&sample()).unwrap();
        let bad = Store {
            dir: d.0.join("s").join("gone"),
            _lock: st._lock.clone(),
        };
        assert!(matches!(
            bad.save(&State::empty()),
            Err(StoreError::Write { .. })
        ));
        assert_eq!(st.load().unwrap(), sample());
    }
}
