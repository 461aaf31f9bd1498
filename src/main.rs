//! The `switchyard` binary. Hidden helper verbs come first: the daemon
//! re-executes this binary to enter namespaces (see `switchyard::ns`).

use switchyard::ns::{attach, sandbox, ATTACH_VERB, SANDBOX_VERB};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match args.get(1).map(String::as_str) {
        Some(v) if v == ATTACH_VERB => attach::attach_helper_main(),
        Some(v) if v == SANDBOX_VERB => sandbox::sandbox_helper_main(&args[2..]),
        _ => {
            eprintln!("switchyard: the command-line interface is not built yet");
            2
        }
    };
    std::process::exit(code);
}
