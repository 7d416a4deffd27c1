//! The `switchboard` binary: parses the command line, then runs the server (`serve`, the
//! default), prints a token (`token`), checks and repairs the logs (`wal`) or prints and
//! checks the configuration (`config`); each command lives in `cli/`.

mod auth;
mod cli;
mod cluster;
mod config;
mod control;
mod metrics;
mod net;
mod push;
mod session;
mod shard;
mod storage;

use std::process::ExitCode;

use std::io::IsTerminal as _;

use clap::Parser as _;
use mimalloc::MiMalloc;

use crate::config::{Cli, Command, LogFormat};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    // `serve` starts its logs once it knows their format, which its config file may set.
    if !matches!(cli.command, None | Some(Command::Serve(_))) {
        init_logging(LogFormat::Text);
    }
    let outcome = match cli.command {
        Some(Command::Token(args)) => cli::token::token(&args),
        Some(Command::Serve(args)) => cli::serve::serve(&args, init_logging),
        Some(Command::Wal(config::WalCommand::Check(args))) => cli::wal_tool::check(&args.data_dir),
        Some(Command::Wal(config::WalCommand::Repair(args))) => {
            cli::wal_tool::repair(&args.dir.data_dir, args.truncate)
        }
        // Its own exit statuses: `config check` tells an unreadable file from an invalid one.
        Some(Command::Config(command)) => return cli::config_tool::run(&command),
        None => cli::serve::serve(&cli.serve, init_logging),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the chain of causes joined, so that scripts can grep it.
            eprintln!("switchboard: error: {error:#}");
            if error.downcast_ref::<auth::NoSecret>().is_some() {
                // As for a usage error: nothing ran, the command needs something more.
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Keeps the heap in 4 KiB pages. The allocator asks for transparent huge pages on its
/// arenas, and a 2 MiB page is resident as soon as one byte of it is touched: with many
/// small per-connection records spread over the heap, that doubled the resident memory of
/// 19,000 idle connections (1.4 KB each instead of 0.85 KB, see tuning.md).
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers; it only sets a flag of this process.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result != 0 {
        // Old kernels lack it; the server works the same, with more resident memory.
        tracing::debug!("PR_SET_THP_DISABLE is not supported");
    }
}

/// Logs go to stderr, so that stdout carries only what scripts read (the listening line,
/// a token). `RUST_LOG` filters them; the default is `info`. `json` writes one object a
/// line with the event's fields at its top level (`timestamp`, `level`, `message`, then
/// the fields), which log collectors take without a parsing rule.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
