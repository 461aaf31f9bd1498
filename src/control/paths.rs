//! Default locations of the API socket and the state directory, for root and
//! for rootless users.

use std::path::PathBuf;

/// Environment variable that overrides the socket path.
pub const SOCKET_ENV: &str = "SWITCHYARD_SOCKET";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// `/run/switchyard/api.sock` as root; `$XDG_RUNTIME_DIR/switchyard/api.sock`
/// otherwise (or `/tmp/switchyard-UID/api.sock` when that is unset).
pub fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/switchyard/api.sock");
    }
    env_dir("XDG_RUNTIME_DIR")
        .map(|d| d.join("switchyard"))
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("switchyard-{}", nix::unistd::geteuid()))
        })
        .join("api.sock")
}

/// Where per-run files go: `$XDG_RUNTIME_DIR` when it exists, else the
/// system temp directory.
pub fn runtime_dir() -> PathBuf {
    env_dir("XDG_RUNTIME_DIR")
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// `/var/lib/switchyard` as root; `$XDG_STATE_HOME/switchyard` or
/// `~/.local/state/switchyard` otherwise.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/switchyard");
    }
    env_dir("XDG_STATE_HOME")
        .or_else(|| env_dir("HOME").map(|h| h.join(".local/state")))
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("switchyard-{}-state", nix::unistd::geteuid()))
        })
        .join("switchyard")
}
