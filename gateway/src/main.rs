//! The `switchboard` binary: parses the command line, then runs the server (`serve`, the
//! default) or prints a token (`token`).

#[expect(
    dead_code,
    reason = "verification is used by the shards, which come next"
)]
mod auth;
#[expect(
    dead_code,
    reason = "some limits are used by the shards, which come next"
)]
mod config;

use std::process::ExitCode;

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::Parser as _;
use mimalloc::MiMalloc;

use crate::auth::Authenticator;
use crate::config::{Cli, Command, Config, ServeArgs, TokenArgs};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let outcome = match cli.command {
        Some(Command::Token(args)) => token(&args),
        Some(Command::Serve(args)) => serve(&args),
        None => serve(&cli.serve),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the chain of causes joined, so that scripts can grep it.
            eprintln!("switchboard: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, so that stdout carries only what scripts read (the listening line,
/// a token). `RUST_LOG` filters them; the default is `info`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let user = wire::UserId::parse(&args.user)
        .map_err(|error| anyhow::anyhow!("bad user id {:?}: {error}", args.user))?;
    let (_data_dir, source) = config::resolve_token_secret(&args.secret)?;
    let secret = auth::load_secret(&source)?;
    let token = Authenticator::new(&secret).issue(&user, auth::now_secs(), args.ttl)?;
    println!("{token}");
    Ok(())
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let _secret = auth::load_secret(&config.secret)?;
    anyhow::bail!("the server is not built yet")
}
