//! `switchyard up`: arguments only; the implementation is merged separately.

use std::path::PathBuf;

use clap::Args;

use super::CliError;

/// Arguments of `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Topology file (TOML).
    #[arg(value_name = "FILE.toml")]
    pub file: PathBuf,
}

/// Runs `up`; returns the exit status.
pub fn up(args: UpArgs) -> Result<i32, CliError> {
    let _ = args;
    Err(CliError::NotWired("up"))
}
