//! The engine of one process: worker threads, each with its own single-threaded runtime, open
//! their share of the connections, wait for a common start instant, drive their units, and
//! keep the connections open until told to let go.
//!
//! The process's coordinator (the calling thread) watches the workers and talks to whoever
//! runs the whole show through [`Control`]: the terminal in a single-process run, the parent
//! process in a `--procs` run.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cli::ScenarioArgs;
use crate::conn::{self, Connector, Targets, TokenMinter};
use crate::metrics::{CounterSnapshot, Counters, Metrics};
use crate::scenario::{Clock, Conn, Keep, Scenario, SetupContext, Unit, UnitContext};
use crate::sys;

/// How often progress is reported.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Open files a process keeps for itself beside its connections.
const OPEN_FILES_SPARE: u64 = 64;

/// Everything a process needs to take part in a run; a parent hands it to its workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub args: ScenarioArgs,
    pub jwt_secret: String,
    /// The run's name, in every user id.
    pub run: String,
    /// Worker threads over all processes (at least one per process).
    pub threads: usize,
    pub procs: usize,
}

impl Plan {
    /// Worker threads of process `proc_index`.
    pub fn threads_of_process(&self, proc_index: usize) -> usize {
        let threads = self.threads.max(self.procs);
        threads / self.procs + usize::from(proc_index < threads % self.procs)
    }

    /// Worker threads over all processes.
    pub fn workers_total(&self) -> usize {
        self.threads.max(self.procs)
    }

    /// The units of each worker thread of process `proc_index`: unit `u` goes to the global
    /// worker `u % workers_total`, so every worker gets a fair share and a unit never spans two.
    pub fn units_of_process(&self, proc_index: usize, units_total: usize) -> Vec<Vec<usize>> {
        let workers_total = self.workers_total();
        let first_worker: usize = (0..proc_index).map(|p| self.threads_of_process(p)).sum();
        (0..self.threads_of_process(proc_index))
            .map(|thread| {
                let worker = first_worker + thread;
                (worker..units_total).step_by(workers_total).collect()
            })
            .collect()
    }
}

/// When a process's connections were being opened, in monotonic nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectSpan {
    pub started: u64,
    pub finished: u64,
}

impl ConnectSpan {
    pub fn union(self, other: ConnectSpan) -> ConnectSpan {
        ConnectSpan {
            started: self.started.min(other.started),
            finished: self.finished.max(other.finished),
        }
    }

    pub fn seconds(&self) -> f64 {
        self.finished.saturating_sub(self.started) as f64 / 1e9
    }
}

/// Where a run is, for the progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Connecting,
    Warmup,
    Measuring,
    Draining,
    Closing,
}

impl Phase {
    pub fn at(clock: &Clock, now: u64) -> Phase {
        if now < clock.measure_from {
            Phase::Warmup
        } else if now < clock.measure_until {
            Phase::Measuring
        } else {
            Phase::Draining
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Warmup => "warmup",
            Phase::Measuring => "measuring",
            Phase::Draining => "draining",
            Phase::Closing => "closing",
        }
    }
}

/// Whoever runs the whole show, as a process's coordinator sees it.
pub trait Control {
    fn progress(&mut self, phase: Phase, counters: CounterSnapshot) -> anyhow::Result<()>;
    /// Every connection of this process is open (or failed); returns the start instant.
    fn ready(&mut self, connect: ConnectSpan, counters: CounterSnapshot) -> anyhow::Result<u64>;
    /// Every unit of this process is done; returns once the connections may be closed.
    fn done(&mut self, counters: CounterSnapshot) -> anyhow::Result<()>;
}

/// What one process (or, merged, a whole run) measured.
#[derive(Debug)]
pub struct Outcome {
    pub counters: CounterSnapshot,
    pub metrics: Metrics,
    pub connect: ConnectSpan,
}

enum WorkerEvent {
    Ready,
    Done,
    Exited,
}

/// Tells the coordinator that a worker thread ended, however it ended.
struct ExitNotice(mpsc::Sender<WorkerEvent>);

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.0.send(WorkerEvent::Exited);
    }
}

struct Worker {
    scenario: Arc<dyn Scenario>,
    connector: Arc<Connector>,
    run: Arc<str>,
    units: Vec<usize>,
    counters: Arc<Counters>,
    events: mpsc::Sender<WorkerEvent>,
    go: watch::Receiver<Option<u64>>,
    release: watch::Receiver<bool>,
    connect_concurrency: usize,
}

/// Runs this process's part of the run.
pub fn run_process(
    plan: &Plan,
    scenario: Arc<dyn Scenario>,
    proc_index: usize,
    control: &mut dyn Control,
) -> anyhow::Result<Outcome> {
    let common = plan.args.common();
    let unit_conns = scenario.unit_conns();
    anyhow::ensure!(
        unit_conns > 0 && scenario.conns().is_multiple_of(unit_conns),
        "{} connections do not split into units of {unit_conns}",
        scenario.conns()
    );
    let units_total = scenario.conns() / unit_conns;
    let units = plan.units_of_process(proc_index, units_total);
    let conns_here: usize = units.iter().map(|units| units.len() * unit_conns).sum();
    let open_files_max = sys::raise_open_files_limit().context("cannot raise RLIMIT_NOFILE")?;
    anyhow::ensure!(
        conns_here as u64 + OPEN_FILES_SPARE <= open_files_max,
        "this process would hold {conns_here} connections but may open only {open_files_max} files: use --procs"
    );

    let connector = Arc::new(Connector {
        targets: Targets::resolve(&common.url, common.tls_ca.as_deref())?,
        minter: TokenMinter::new(plan.jwt_secret.as_bytes(), common.token_ttl),
        source_ips: common.source_ips,
        timeout: common.connect_timeout,
    });
    let run: Arc<str> = plan.run.as_str().into();
    let counters = Arc::new(Counters::default());
    let (events_tx, events) = mpsc::channel();
    let (go_tx, go) = watch::channel(None);
    let (release_tx, release) = watch::channel(false);

    let mut threads = Vec::with_capacity(units.len());
    for (thread_index, units) in units.into_iter().enumerate() {
        let worker = Worker {
            scenario: Arc::clone(&scenario),
            connector: Arc::clone(&connector),
            run: Arc::clone(&run),
            units,
            counters: Arc::clone(&counters),
            events: events_tx.clone(),
            go: go.clone(),
            release: release.clone(),
            connect_concurrency: common.connect_concurrency.max(1),
        };
        let thread = std::thread::Builder::new()
            .name(format!("loadgen-{proc_index}-{thread_index}"))
            .spawn(move || worker.run())
            .context("cannot start a worker thread")?;
        threads.push(thread);
    }
    drop(events_tx);
    let workers = threads.len();

    let connect_started = sys::now_nanos();
    wait_for_workers(
        &events,
        workers,
        &counters,
        control,
        |_| Phase::Connecting,
        WorkerEvent::Ready,
    )?;
    let connect = ConnectSpan {
        started: connect_started,
        finished: sys::now_nanos(),
    };
    let start = control.ready(connect, counters.snapshot())?;
    go_tx.send_replace(Some(start));
    let clock = Clock::new(start, scenario.timeline());
    wait_for_workers(
        &events,
        workers,
        &counters,
        control,
        |now| Phase::at(&clock, now),
        WorkerEvent::Done,
    )?;
    control.done(counters.snapshot())?;
    release_tx.send_replace(true);

    let mut metrics = Metrics::default();
    for thread in threads {
        let worker_metrics = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
        metrics.merge(worker_metrics)?;
    }
    Ok(Outcome {
        counters: counters.snapshot(),
        metrics,
        connect,
    })
}

/// Waits until every worker has sent `wanted`, reporting progress meanwhile.
fn wait_for_workers(
    events: &mpsc::Receiver<WorkerEvent>,
    workers: usize,
    counters: &Counters,
    control: &mut dyn Control,
    phase: impl Fn(u64) -> Phase,
    wanted: WorkerEvent,
) -> anyhow::Result<()> {
    let interval = u64::try_from(PROGRESS_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
    let mut next_progress = sys::now_nanos() + interval;
    let mut arrived = 0;
    while arrived < workers {
        let wait = Duration::from_nanos(next_progress.saturating_sub(sys::now_nanos()));
        match events.recv_timeout(wait) {
            Ok(event) => match (event, &wanted) {
                (WorkerEvent::Ready, WorkerEvent::Ready)
                | (WorkerEvent::Done, WorkerEvent::Done) => {
                    arrived += 1;
                }
                (WorkerEvent::Exited, _) => {
                    anyhow::bail!("a worker thread stopped early (see the messages above)")
                }
                _ => anyhow::bail!("worker events arrived out of order"),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = sys::now_nanos();
                control.progress(phase(now), counters.snapshot())?;
                next_progress = now + interval;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("every worker thread is gone")
            }
        }
    }
    Ok(())
}

impl Worker {
    fn run(self) -> anyhow::Result<Metrics> {
        let _exit_notice = ExitNotice(self.events.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build a worker runtime")?;
        let local = tokio::task::LocalSet::new();
        let result = runtime.block_on(local.run_until(self.drive()));
        if let Err(error) = &result {
            eprintln!("switchboard-loadgen: worker: {error:#}");
        }
        result
    }

    async fn drive(mut self) -> anyhow::Result<Metrics> {
        let metrics = Rc::new(std::cell::RefCell::new(Metrics::default()));
        {
            let mut metrics = metrics.borrow_mut();
            metrics.declare_latency("connect");
            for (name, _) in self.scenario.latencies() {
                metrics.declare_latency(name);
            }
            for name in self.scenario.series() {
                metrics.declare_series(name);
            }
            for name in self.scenario.latency_series() {
                metrics.declare_latency_series(name);
            }
        }
        let units = self.open_units(&metrics).await;
        let units = self.set_up(units, &metrics).await;
        self.events
            .send(WorkerEvent::Ready)
            .context("the coordinator is gone")?;

        let start = (*self
            .go
            .wait_for(Option::is_some)
            .await
            .context("the run was called off")?)
        .unwrap_or_default();
        let context = UnitContext {
            clock: Clock::new(start, self.scenario.timeline()),
            metrics: Rc::clone(&metrics),
            counters: Arc::clone(&self.counters),
            connector: Arc::clone(&self.connector),
        };
        let tasks: Vec<_> = units
            .into_iter()
            .map(|unit| tokio::task::spawn_local(self.scenario.drive(unit, context.clone())))
            .collect();
        drop(context);
        let mut keep: Keep = Vec::new();
        for task in tasks {
            keep.extend(task.await.context("a unit panicked")?);
        }
        self.events
            .send(WorkerEvent::Done)
            .context("the coordinator is gone")?;
        // The connections stay open until every worker everywhere is done.
        let _ = self.release.wait_for(|released| *released).await;
        drop(keep);
        Ok(metrics.take())
    }

    /// Opens the connections of this worker's units, a few at a time; a unit any of whose
    /// connections failed is left out (its other connections are closed).
    async fn open_units(&self, metrics: &Rc<std::cell::RefCell<Metrics>>) -> Vec<Unit> {
        let unit_conns = self.scenario.unit_conns();
        let indexes: Vec<usize> = self
            .units
            .iter()
            .flat_map(|unit| unit * unit_conns..(unit + 1) * unit_conns)
            .collect();
        let opened: Vec<Option<Conn>> = futures_util::stream::iter(indexes)
            .map(|index| self.open(index, metrics))
            .buffer_unordered(self.connect_concurrency)
            .collect()
            .await;
        let mut by_index: HashMap<usize, Conn> = opened
            .into_iter()
            .flatten()
            .map(|conn| (conn.index, conn))
            .collect();
        self.units
            .iter()
            .filter_map(|&unit| {
                let conns: Vec<Conn> = (unit * unit_conns..(unit + 1) * unit_conns)
                    .filter_map(|index| by_index.remove(&index))
                    .collect();
                (conns.len() == unit_conns).then_some(Unit {
                    index: unit,
                    conns,
                    group_id: None,
                })
            })
            .collect()
    }

    /// Sets up the opened units, a few at a time ([`Scenario::setup`]); a unit whose setup
    /// failed is left out (its connections are closed).
    async fn set_up(
        &self,
        units: Vec<Unit>,
        metrics: &Rc<std::cell::RefCell<Metrics>>,
    ) -> Vec<Unit> {
        let context = SetupContext {
            metrics: Rc::clone(metrics),
            counters: Arc::clone(&self.counters),
            connector: Arc::clone(&self.connector),
        };
        let set_up: Vec<Result<Unit, String>> = futures_util::stream::iter(units)
            .map(|unit| self.scenario.setup(unit, context.clone()))
            .buffer_unordered(self.connect_concurrency)
            .collect()
            .await;
        set_up
            .into_iter()
            .filter_map(|result| match result {
                Ok(unit) => Some(unit),
                Err(error) => {
                    Counters::add(&self.counters.setup_errors, 1);
                    metrics.borrow_mut().error_sample(error);
                    None
                }
            })
            .collect()
    }

    async fn open(&self, index: usize, metrics: &Rc<std::cell::RefCell<Metrics>>) -> Option<Conn> {
        let user = conn::user_id(&self.run, index);
        let started = sys::now_nanos();
        match self.connector.open(index, &user).await {
            Ok(ws) => {
                Counters::add(&self.counters.conns_opened, 1);
                metrics
                    .borrow_mut()
                    .record_latency("connect", sys::now_nanos().saturating_sub(started));
                Some(Conn { index, user, ws })
            }
            Err(error) => {
                Counters::add(&self.counters.connect_errors, 1);
                metrics
                    .borrow_mut()
                    .error_sample(format!("{user}: {error:#}"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{CommonArgs, Encoding, IdleArgs};

    fn plan(threads: usize, procs: usize) -> Plan {
        Plan {
            args: ScenarioArgs::Idle(IdleArgs {
                common: CommonArgs {
                    url: String::new(),
                    tls_ca: None,
                    secret: Default::default(),
                    token_ttl: Duration::from_secs(60),
                    conns: 10,
                    run: None,
                    encoding: Encoding::Json,
                    threads: None,
                    procs,
                    source_ips: 1,
                    connect_concurrency: 1,
                    connect_timeout: Duration::from_secs(1),
                    server_pid: None,
                    server_metrics: None,
                    json: None,
                    svg: None,
                    quiet: false,
                },
                hold: Duration::ZERO,
            }),
            jwt_secret: String::new(),
            run: "r".into(),
            threads,
            procs,
        }
    }

    #[test]
    fn every_unit_goes_to_exactly_one_worker() {
        for (threads, procs, units) in [(1, 1, 5), (2, 1, 7), (3, 2, 10), (1, 3, 4), (4, 4, 2)] {
            let plan = plan(threads, procs);
            let mut seen: Vec<usize> = (0..procs)
                .flat_map(|proc_index| plan.units_of_process(proc_index, units))
                .flatten()
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..units).collect::<Vec<_>>(), "{threads} {procs}");
            let workers: usize = (0..procs).map(|p| plan.threads_of_process(p)).sum();
            assert_eq!(workers, threads.max(procs));
        }
    }

    #[test]
    fn shares_are_fair() {
        let plan = plan(3, 2);
        assert_eq!(plan.threads_of_process(0), 2);
        assert_eq!(plan.threads_of_process(1), 1);
        assert_eq!(plan.units_of_process(0, 7), vec![vec![0, 3, 6], vec![1, 4]]);
        assert_eq!(plan.units_of_process(1, 7), vec![vec![2, 5]]);
    }

    #[test]
    fn connect_spans_join() {
        let a = ConnectSpan {
            started: 10,
            finished: 20,
        };
        let b = ConnectSpan {
            started: 5,
            finished: 15,
        };
        assert_eq!(
            a.union(b),
            ConnectSpan {
                started: 5,
                finished: 20
            }
        );
        assert_eq!(a.seconds(), 10e-9);
    }
}
