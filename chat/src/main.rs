//! `cargo run --release -p shaddock-chat`: starts the distributed chat cluster and its web page.
//!
//! - no subcommand: the launcher ([`shaddock_chat::launcher`]): master + every server + the
//!   page; Ctrl-C / SIGTERM stops them all.
//! - `start`, `list`, `stop`, `kill`, `add`, `init` and the hidden server mode the master
//!   starts each server in: the Shaddock server command line ([`shaddock_server::run`]), with
//!   `--config` defaulting to this crate's `config/`.

use std::ffi::OsString;
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc, in every process of the cluster (see BENCHMARKS.md,
/// the in-process section: glibc's large and aligned allocations, such as tokio's task cells
/// and the boxed handler futures of every request, cost 600-1,700 instructions each).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The server CLI's subcommands.
const SERVER_COMMANDS: &[&str] = &["start", "list", "stop", "kill", "add", "init", "help"];
/// Options that take a value (as the next argument when not written `--opt=value`).
const VALUE_OPTIONS: &[&str] = &[
    "--config",
    "-e",
    "--env",
    "--master",
    "--server-id",
    "--master-id",
    "--server-def",
    "--page-port",
    "--page-host",
    "--start-timeout",
    "--log",
    "--pid-file",
    "--host-id",
    "--admin-port",
];

/// What the arguments ask for: the server CLI (and whether `--config` was given), or the
/// launcher.
fn classify(args: &[OsString]) -> (bool, bool) {
    let mut server = false;
    let mut has_config = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--config" || a.starts_with("--config=") {
            has_config = true;
        }
        if a == "--server-id" || a.starts_with("--server-id=") {
            server = true;
        }
        if VALUE_OPTIONS.contains(&a.as_ref()) {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            // The first positional argument is the subcommand.
            server |= SERVER_COMMANDS.contains(&a.as_ref());
            break;
        }
        i += 1;
    }
    (server, has_config)
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (server, has_config) = classify(&args);
    if !server {
        return shaddock_chat::launcher::main(args);
    }
    if !has_config {
        // The server CLI reads `--config` (default `config` in the working directory); point
        // it at this crate's config by running this binary again with the flag added.
        use std::os::unix::process::CommandExt;
        if let Ok(exe) = std::env::current_exe() {
            let err = std::process::Command::new(exe)
                .arg("--config")
                .arg(shaddock_chat::launcher::default_config_dir())
                .args(&args)
                .exec();
            eprintln!("shaddock-chat: cannot run itself again with --config: {err}");
            return ExitCode::FAILURE;
        }
    }
    shaddock_server::run(shaddock_chat::app())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(args: &[&str]) -> (bool, bool) {
        classify(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn launcher_unless_a_server_command() {
        assert_eq!(c(&[]), (false, false));
        assert_eq!(c(&["--config", "start", "-e", "production"]), (false, true));
        assert_eq!(c(&["--page-port", "0"]), (false, false));
        assert_eq!(c(&["list"]), (true, false));
        assert_eq!(
            c(&["-e", "production", "--config", "/x", "stop"]),
            (true, true)
        );
        assert_eq!(c(&["--config=/x", "start", "-D"]), (true, true));
        assert_eq!(
            c(&[
                "--server-id",
                "chat-server-1",
                "--master",
                "h:1",
                "--config",
                "/c"
            ]),
            (true, true)
        );
    }
}
