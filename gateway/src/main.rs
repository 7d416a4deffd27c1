//! The `switchboard` binary: parses the command line, then runs the server (`serve`, the
//! default), prints a token (`token`) or checks and repairs the logs (`wal`).

mod auth;
mod cli;
mod config;
mod control;
mod metrics;
mod net;
mod session;
mod shard;
mod storage;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::Parser as _;
use mimalloc::MiMalloc;

use crate::auth::Authenticator;
use crate::config::{Cli, Command, Config, LogFormat, ServeArgs, TokenArgs};

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
        Some(Command::Token(args)) => token(&args),
        Some(Command::Serve(args)) => serve(&args),
        Some(Command::Wal(config::WalCommand::Check(args))) => cli::wal_tool::check(&args.data_dir),
        Some(Command::Wal(config::WalCommand::Repair(args))) => {
            cli::wal_tool::repair(&args.dir.data_dir, args.truncate)
        }
        // Its own exit statuses: `config check` tells an unreadable file from an invalid one.
        Some(Command::Config(command)) => return cli::config_tool::run(&command),
        None => serve(&cli.serve),
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

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let user = wire::UserId::parse(&args.user)
        .map_err(|error| anyhow::anyhow!("bad user id {:?}: {error}", args.user))?;
    let (_data_dir, source) = config::resolve_token_secret(&args.secret)?;
    // Only read: a secret made here would not be the server's, and its tokens would be
    // refused. Nothing is written to the data directory.
    let secret = auth::read_secret(&source)?;
    let token = Authenticator::new(&secret).issue(&user, auth::now_secs(), args.ttl)?;
    println!("{token}");
    Ok(())
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = Arc::new(Config::resolve(args)?);
    init_logging(config.log_format);
    let n_shards = u16::try_from(config.shards)
        .ok()
        .filter(|n| *n <= router::ids::SHARDS_MAX)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--shards {} is more than {}",
                config.shards,
                router::ids::SHARDS_MAX
            )
        })?;
    // The lock comes before anything else touches the data directory, and lives as long as
    // the server: a second server on the same directory stops here, having written nothing.
    let _data_dir_lock = storage::lock::lock_data_dir(&config.data_dir)?;
    let (driver, why) = shard::choose_driver()?;

    // Every socket is bound before anything starts, so a port in use fails the start; and
    // before the data directory is written to, so that such a failed start leaves nothing
    // behind but the lock file. Only the lock's holder gets here, so retrying an address
    // still held by a killed predecessor cannot make two owners of one directory.
    let retry_ms = config.limits.bind_retry_ms;
    let listeners = net::listen::bind_shared(config.listen, config.shards, retry_ms)?;
    let ws_addr = listeners[0].local_addr()?;
    let http_listener = net::listen::bind_one(config.http_listen, retry_ms)?;
    let http_addr = http_listener.local_addr()?;

    check_data_dir(&config.data_dir)?;
    storage::layout::check_layout(&config.data_dir, n_shards)?;
    // After the binds and the layout check, so that a start that fails has made no secret.
    let secret = auth::load_or_create_secret(&config.secret)?;
    let auth = Arc::new(Authenticator::new(&secret));
    tracing::info!(driver = driver.as_str(), why, "event loop driver");
    if config.durability == config::Durability::None {
        tracing::warn!(
            "durability none: acknowledged messages are NOT on disk; for benchmarks only"
        );
    }

    // Before any thread starts, so that every thread inherits the mask and the signals wait
    // for the main thread's sigwait.
    let signals = cli::signals::block_shutdown_signals()?;
    // Per shard: the inbox through which the HTTP thread asks it things, and its counters.
    let mut plane = control::http::ControlPlane {
        shards: Vec::with_capacity(listeners.len()),
        control_timeout_ms: config.limits.control_timeout_ms,
        auth: Arc::clone(&auth),
        http_body_bytes_max: config.limits.http_body_bytes_max,
    };
    let mut shard_control = Vec::with_capacity(listeners.len());
    for _ in 0..listeners.len() {
        let (sender, inbox) = shard::control_inbox::channel(config.limits.control_requests_max);
        let shard_metrics = Arc::new(metrics::ShardMetrics::default());
        plane.shards.push((sender, Arc::clone(&shard_metrics)));
        shard_control.push((inbox, shard_metrics));
    }
    control::http::start(http_listener, plane)?;
    let (mut shards, driver) = shard::start(&config, &auth, listeners, shard_control, driver)?;
    if config.echo {
        tracing::info!("echo route on at ws://{ws_addr}{}", config::ECHO_PATH);
    }
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "switchboard listening on ws://{ws_addr}{} (http {http_addr}), {} shards, durability {}, driver {}",
            config::WS_PATH,
            shards.len(),
            config.durability.as_str(),
            driver.as_str(),
        )?;
        stdout.flush()?;
    }

    let signal = signals.wait()?;
    tracing::info!(signal, "shutting down: closing connections with 1001");
    for shard in &mut shards {
        shard.shut_down();
    }
    for shard in shards {
        if shard.thread.join().is_err() {
            anyhow::bail!("a shard panicked during shutdown");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Checks that the data directory (made with its lock) is writable, so that a server that
/// could never store a message does not start.
fn check_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    let probe = data_dir.join(".write-test");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("data directory {} is not writable", data_dir.display()))
}
