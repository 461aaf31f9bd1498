//! The `switchyard` binary: internal helper entry points first, then the CLI.

use std::error::Error;
use std::process::ExitCode;

use clap::Parser;

fn internal_helper() -> Option<i32> {
    let args: Vec<String> = std::env::args().collect();
    switchyard::internal_entry(&args)
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    if let Some(code) = internal_helper() {
        return exit_code(code);
    }
    // Started by a container runtime as a CNI plugin.
    if let Some(code) = switchyard::cli::cni::entry(&std::env::args().collect::<Vec<_>>()) {
        return exit_code(code);
    }
    let cli = switchyard::cli::Cli::parse();
    match switchyard::cli::dispatch(cli) {
        Ok(code) => exit_code(code),
        Err(e) => {
            eprintln!("switchyard: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                if !e.to_string().contains(&s.to_string()) {
                    eprintln!("  caused by: {s}");
                }
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
