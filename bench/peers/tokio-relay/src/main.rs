//! The `tokio-relay` binary: serves the relay of this crate on one address until SIGINT or
//! SIGTERM, and prints `listening on ws://ADDR/ws` once bound.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_relay::RelayConfig;

#[derive(Debug, Parser)]
#[command(
    name = "tokio-relay",
    about = "A no-durability relay of the Switchboard messaging subset (tokio + tokio-tungstenite), for comparison runs"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the listening line names it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// HS256 secret of the tokens.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Runtime worker threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.jwt_secret.is_empty(), "the JWT secret is empty");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        runtime.worker_threads(args.threads);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on ws://{addr}/ws")?;
        stdout.flush()?;
        drop(stdout);
        let mut terminate = signal(SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        };
        tokio_relay::serve(
            listener,
            RelayConfig::new(args.jwt_secret.into_bytes()),
            shutdown,
        )
        .await
    })
}
