//! `--procs P`: the parent re-executes itself as P worker processes (one process may hold only
//! its open-file limit of sockets), hands each its orders as one JSON line on stdin, and reads
//! JSON lines back on their stdout: progress, "ready", "done", and at the end the counters and
//! the histograms (HdrHistogram V2, base64). It starts every process at one instant of the
//! system-wide monotonic clock, and lets them close their connections only once all are done.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::engine::{self, ConnectSpan, Control, Outcome, Phase, Plan};
use crate::metrics::{CounterSnapshot, Metrics, WireMetrics};
use crate::monitor::Monitor;
use crate::scenario::{self, Clock, Scenario};
use crate::sys;

/// How long after the last process is ready the load starts: time for the "go" line to reach
/// every process and for their threads to wake.
const START_DELAY_NANOS: u64 = 100_000_000;

/// Longest line a worker process may write: its final report, histograms included.
const WORKER_LINE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The first line a worker process reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Orders {
    pub plan: Plan,
    pub proc_index: usize,
}

/// Lines from a worker process to its parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum WorkerLine {
    Progress {
        phase: Phase,
        counters: CounterSnapshot,
    },
    Ready {
        connect: ConnectSpan,
        counters: CounterSnapshot,
    },
    Done {
        counters: CounterSnapshot,
    },
    Result {
        counters: CounterSnapshot,
        connect: ConnectSpan,
        metrics: WireMetrics,
    },
}

/// Lines from the parent to a worker process, after the orders.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
enum ParentLine {
    Go { start: u64 },
    Release,
}

/// The worker process's side: reads its orders, runs, reports.
pub fn worker_main() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("cannot read the orders")?;
    let orders: Orders = serde_json::from_str(&line).context("unreadable orders")?;
    let scenario = scenario::build(&orders.plan.args)?;
    let mut control = WorkerControl { input };
    let outcome = engine::run_process(&orders.plan, scenario, orders.proc_index, &mut control)?;
    write_line(&WorkerLine::Result {
        counters: outcome.counters,
        connect: outcome.connect,
        metrics: outcome.metrics.to_wire()?,
    })
}

fn write_line(line: &WorkerLine) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, line)?;
    stdout.write_all(b"\n")?;
    stdout.flush().context("the parent is gone")
}

struct WorkerControl<'a> {
    input: std::io::StdinLock<'a>,
}

impl WorkerControl<'_> {
    fn read_command(&mut self) -> anyhow::Result<ParentLine> {
        let mut line = String::new();
        let read = self.input.read_line(&mut line)?;
        anyhow::ensure!(read > 0, "the parent is gone");
        serde_json::from_str(&line).context("unreadable command from the parent")
    }
}

impl Control for WorkerControl<'_> {
    fn progress(&mut self, phase: Phase, counters: CounterSnapshot) -> anyhow::Result<()> {
        write_line(&WorkerLine::Progress { phase, counters })
    }

    fn ready(&mut self, connect: ConnectSpan, counters: CounterSnapshot) -> anyhow::Result<u64> {
        write_line(&WorkerLine::Ready { connect, counters })?;
        match self.read_command()? {
            ParentLine::Go { start } => Ok(start),
            ParentLine::Release => anyhow::bail!("released before the start"),
        }
    }

    fn done(&mut self, counters: CounterSnapshot) -> anyhow::Result<()> {
        write_line(&WorkerLine::Done { counters })?;
        match self.read_command()? {
            ParentLine::Release => Ok(()),
            ParentLine::Go { .. } => anyhow::bail!("a second start"),
        }
    }
}

/// The worker processes, killed if the parent gives up on them.
struct Children {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
}

impl Children {
    fn send(&mut self, line: &ParentLine) -> anyhow::Result<()> {
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        for (index, stdin) in self.stdins.iter_mut().enumerate() {
            stdin
                .write_all(text.as_bytes())
                .and_then(|()| stdin.flush())
                .with_context(|| format!("worker process {index} is gone"))?;
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// The parent's side: runs `plan` over its worker processes.
pub fn run_fleet(
    plan: &Plan,
    scenario: Arc<dyn Scenario>,
    monitor: &mut Monitor,
) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut children = Children {
        children: Vec::new(),
        stdins: Vec::new(),
    };
    let (lines_tx, lines) = mpsc::channel::<(usize, anyhow::Result<WorkerLine>)>();
    for proc_index in 0..plan.procs {
        let mut child = Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let orders = Orders {
            plan: plan.clone(),
            proc_index,
        };
        serde_json::to_writer(&mut stdin, &orders)?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        let lines_tx = lines_tx.clone();
        std::thread::Builder::new()
            .name(format!("loadgen-reader-{proc_index}"))
            .spawn(move || read_worker_lines(proc_index, stdout, &lines_tx))?;
        children.children.push(child);
        children.stdins.push(stdin);
    }
    drop(lines_tx);

    let procs = plan.procs;
    let mut latest = vec![CounterSnapshot::default(); procs];
    let total = |latest: &[CounterSnapshot]| {
        latest
            .iter()
            .fold(CounterSnapshot::default(), |mut sum, counters| {
                sum += *counters;
                sum
            })
    };
    let mut connect: Option<ConnectSpan> = None;
    let mut ready = 0;
    let mut clock: Option<Clock> = None;
    let mut done = 0;
    let mut results = 0;
    let mut outcome_metrics = Metrics::default();
    let mut outcome_counters = CounterSnapshot::default();
    let interval = u64::try_from(engine::PROGRESS_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
    let mut next_progress = sys::now_nanos() + interval;
    while results < procs {
        let wait = Duration::from_nanos(next_progress.saturating_sub(sys::now_nanos()));
        let (proc_index, line) = match lines.recv_timeout(wait) {
            Ok(received) => received,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = sys::now_nanos();
                let phase = clock.map_or(Phase::Connecting, |clock| Phase::at(&clock, now));
                monitor.progress(phase, total(&latest));
                next_progress = now + interval;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("every worker process is gone")
            }
        };
        let line = line.with_context(|| format!("worker process {proc_index}"))?;
        match line {
            WorkerLine::Progress { counters, .. } => latest[proc_index] = counters,
            WorkerLine::Ready {
                connect: span,
                counters,
            } => {
                latest[proc_index] = counters;
                connect = Some(connect.map_or(span, |known| known.union(span)));
                ready += 1;
                if ready == procs {
                    monitor.on_ready();
                    monitor.progress(Phase::Connecting, total(&latest));
                    let start = sys::now_nanos() + START_DELAY_NANOS;
                    clock = Some(Clock::new(start, scenario.timeline()));
                    children.send(&ParentLine::Go { start })?;
                }
            }
            WorkerLine::Done { counters } => {
                latest[proc_index] = counters;
                done += 1;
                if done == procs {
                    monitor.on_done();
                    monitor.progress(Phase::Closing, total(&latest));
                    children.send(&ParentLine::Release)?;
                }
            }
            WorkerLine::Result {
                counters,
                connect: span,
                metrics,
            } => {
                latest[proc_index] = counters;
                outcome_counters += counters;
                connect = Some(connect.map_or(span, |known| known.union(span)));
                outcome_metrics.merge(Metrics::from_wire(metrics)?)?;
                results += 1;
            }
        }
    }
    for (index, child) in children.children.iter_mut().enumerate() {
        let status = child.wait()?;
        anyhow::ensure!(
            status.success(),
            "worker process {index} exited with {status}"
        );
    }
    Ok(Outcome {
        counters: outcome_counters,
        metrics: outcome_metrics,
        connect: connect.context("no worker process reported its connections")?,
    })
}

fn read_worker_lines(
    proc_index: usize,
    stdout: std::process::ChildStdout,
    lines: &mpsc::Sender<(usize, anyhow::Result<WorkerLine>)>,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader
            .by_ref()
            .take(WORKER_LINE_BYTES_MAX as u64)
            .read_line(&mut line);
        let parsed = match read {
            Ok(0) => Err(anyhow::anyhow!("ended before reporting its result")),
            Ok(_) => serde_json::from_str::<WorkerLine>(&line)
                .with_context(|| format!("unreadable line {:?}", truncate(&line, 80))),
            Err(error) => Err(error.into()),
        };
        let last = parsed.is_err() || matches!(parsed, Ok(WorkerLine::Result { .. }));
        if lines.send((proc_index, parsed)).is_err() || last {
            return;
        }
    }
}

fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}
