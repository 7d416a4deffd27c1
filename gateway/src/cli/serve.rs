//! `switchboard serve`: the start of the process in the order that keeps a failed start
//! harmless (the data directory's lock, every listener bound, the layout checked, only then
//! the secret and the shards), then the wait for SIGTERM or SIGINT and the shutdown; SIGHUP
//! meanwhile reloads the TLS certificate.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::auth::{self, Authenticator};
use crate::config::{self, Config, LogFormat, ServeArgs};
use crate::metrics::ShardMetrics;
use crate::shard::cluster_link::ClusterLink;
use crate::shard::control_inbox::ControlInbox;
use crate::shard::push_hints::PushHints;
use crate::{cli, cluster, control, net, push, shard, storage};

/// Runs the server until a shutdown signal; `init_logging` is called once the
/// configuration says the logs' format.
pub fn serve(args: &ServeArgs, init_logging: impl FnOnce(LogFormat)) -> anyhow::Result<()> {
    let config = Arc::new(Config::resolve(args)?);
    init_logging(config.log_format);
    let n_shards = shard_count(&config)?;
    // Before anything else: a missing or bad certificate fails the start having touched
    // nothing.
    let tls = cli::tls::Tls::load(&config)?;
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
    let history_config = storage::history::HistoryConfig {
        cache_bytes: config.limits.history_cache_bytes,
        keepers_max: config.limits.history_keepers_max,
        queue_jobs_max: config.limits.history_queue_jobs_max,
        expire_rows_max: config.limits.history_expire_rows_max,
        sync: config.durability != config::Durability::None,
        media_retention_ms: config.limits.media_retention_ms,
        media_expire_objects_max: config.limits.media_expire_objects_max,
    };
    let media_dir = &config.media_dir;
    let blobs: Arc<dyn storage::media::BlobStore> = Arc::new(
        storage::media::LocalBlobs::open(media_dir)
            .with_context(|| format!("cannot open {}", media_dir.display()))?,
    );
    let history_dir = config.data_dir.join(storage::history::DIR);
    let (history, history_worker, history_answers) =
        storage::history::open(&history_dir, n_shards, history_config, Arc::clone(&blobs))
            .with_context(|| format!("cannot open {}", history_dir.display()))?;
    // In a cluster the bridge hands the push thread hints too, on a ring of its own.
    let bridge_ring = usize::from(config.cluster.is_some());
    let mut push = push::start(&config, listeners.len() + bridge_ring)?;
    let bridge_push = match &mut push {
        Some(parts) if bridge_ring == 1 => parts
            .rings
            .pop()
            .map(|ring| (ring, Arc::clone(&parts.stats))),
        _ => None,
    };
    let cluster = cluster::start(&config, listeners.len(), ws_addr, http_addr, bridge_push)?;
    let shard_control = start_control_plane(
        &config,
        &auth,
        http_listener,
        ws_addr,
        listeners.len(),
        PlaneParts {
            history: &history,
            blobs: &blobs,
            push: push.as_ref().map(|parts| Arc::clone(&parts.stats)),
            tls: tls.as_ref(),
            cluster: cluster.as_ref().map(|parts| parts.view.clone()),
        },
    )?;
    let push_hints = match push {
        Some(parts) => parts
            .rings
            .into_iter()
            .map(|ring| PushHints::new(ring, Arc::clone(&parts.stats)))
            .collect(),
        None => (0..listeners.len()).map(|_| PushHints::off()).collect(),
    };
    let cluster_links = cluster.map(|parts| {
        let links = parts.shards.into_iter().map(ClusterLink::new).collect();
        (links, parts.wakers)
    });
    let history_parts = shard::HistoryParts {
        history,
        worker: history_worker,
        answers: history_answers,
    };
    let (mut shards, driver) = shard::start(
        &config,
        &auth,
        listeners,
        shard_control,
        shard::Services {
            history: history_parts,
            push: push_hints,
            tls: tls.as_ref().map(|tls| Arc::clone(&tls.websocket)),
            cluster: cluster_links,
        },
        driver,
    )?;
    if config.dev {
        tracing::warn!(
            "DEV MODE (--dev): anyone who reaches the HTTP port can sign in as any user by \
             name (POST /v1/dev/token). INSECURE: never use it in production"
        );
    }
    if config.echo {
        tracing::info!("echo route on at ws://{ws_addr}{}", config::ECHO_PATH);
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "switchboard listening on {}://{ws_addr}{} ({} {http_addr}), {} shards, durability {}, driver {}",
            if tls.is_some() { "wss" } else { "ws" },
            config::WS_PATH,
            if tls.is_some() { "https" } else { "http" },
            shards.len(),
            config.durability.as_str(),
            driver.as_str(),
        )?;
        stdout.flush()?;
    }

    let signal = loop {
        match signals.wait()? {
            // The drill: each shard applies it on its next tick, and logs the change.
            "SIGUSR1" => {
                let level = shard::load::raise_drill();
                tracing::warn!(
                    level = level.as_str(),
                    "SIGUSR1: load-shedding drill raised"
                );
            }
            "SIGUSR2" => {
                shard::load::clear_drill();
                tracing::warn!("SIGUSR2: load-shedding drill ended");
            }
            "SIGHUP" => cli::tls::reload(tls.as_ref()),
            shutdown => break shutdown,
        }
    };
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

/// The number of shards, checked against what a `ConnId` can name.
fn shard_count(config: &Config) -> anyhow::Result<u16> {
    u16::try_from(config.shards)
        .ok()
        .filter(|n| *n <= router::ids::SHARDS_MAX)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--shards {} is more than {}",
                config.shards,
                router::ids::SHARDS_MAX
            )
        })
}

/// What the control plane reads beside the shards.
struct PlaneParts<'a> {
    /// The history thread's queue: settings, pages, uploads' index, profiles.
    history: &'a storage::history::History,
    /// Where media bytes are.
    blobs: &'a Arc<dyn storage::media::BlobStore>,
    /// The push thread's counters, when it runs.
    push: Option<Arc<push::PushStats>>,
    /// The certificate, with `--tls-cert`.
    tls: Option<&'a cli::tls::Tls>,
    /// With `--cluster`: the nodes and the bridge's counters.
    cluster: Option<cluster::ClusterView>,
}

/// Starts the HTTP thread, which serves the web page that connects to `ws_addr`. Per shard it makes the inbox through which the HTTP thread asks
/// the shard things, and the shard's counters; returns the shards' ends of them.
fn start_control_plane(
    config: &Config,
    auth: &Arc<Authenticator>,
    http_listener: std::net::TcpListener,
    ws_addr: std::net::SocketAddr,
    n_shards: usize,
    parts: PlaneParts<'_>,
) -> anyhow::Result<Vec<(ControlInbox, Arc<ShardMetrics>)>> {
    let PlaneParts {
        history,
        blobs,
        push,
        tls,
        cluster,
    } = parts;
    let mut plane = control::http::ControlPlane {
        push,
        cluster,
        history: history.clone(),
        history_limit_max: config.limits.history_limit_max,
        shards: Vec::with_capacity(n_shards),
        control_timeout_ms: config.limits.control_timeout_ms,
        auth: Arc::clone(auth),
        http_body_bytes_max: config.limits.http_body_bytes_max,
        ws_addr,
        dev: config.dev,
        media: control::media::MediaRoutes {
            blobs: Arc::clone(blobs),
            history: history.clone(),
            mime_allowed: config.media_mime_allowed.clone(),
            bytes_max: config.limits.media_bytes_max,
            upload_bytes_per_s: config.limits.media_upload_bytes_per_s,
            read_chunk_bytes: config.limits.media_read_chunk_bytes,
            uploads: tokio::sync::Semaphore::new(config.limits.media_uploads_max),
            metrics: Arc::default(),
        },
        handshake_timeout_ms: config.limits.handshake_timeout_ms,
        tls: tls.map(|tls| (Arc::clone(&tls.http), Arc::clone(&tls.metrics))),
    };
    let mut shard_control = Vec::with_capacity(n_shards);
    for _ in 0..n_shards {
        let (sender, inbox) = shard::control_inbox::channel(config.limits.control_requests_max);
        let shard_metrics = Arc::new(ShardMetrics::default());
        plane.shards.push((sender, Arc::clone(&shard_metrics)));
        shard_control.push((inbox, shard_metrics));
    }
    control::http::start(http_listener, plane)?;
    Ok(shard_control)
}

/// Checks that the data directory (made with its lock) is writable, so that a server that
/// could never store a message does not start.
fn check_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    let probe = data_dir.join(".write-test");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("data directory {} is not writable", data_dir.display()))
}
