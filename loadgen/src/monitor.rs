//! What the person running the load generator sees while it runs, and what it reads of the
//! server: progress once a second (a line that rewrites itself on a terminal, plain lines
//! otherwise) and the server's resident memory before, once connected, and at the end.

use std::io::{IsTerminal as _, Write as _};

use serde::{Deserialize, Serialize};

use crate::engine::{ConnectSpan, Control, Phase};
use crate::metrics::CounterSnapshot;
use crate::sys;

/// The server's resident memory at the three moments of a run, in bytes.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct RssReadings {
    pub before: Option<u64>,
    pub connected: Option<u64>,
    pub after: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Terminal,
    Lines,
    Quiet,
}

#[derive(Debug)]
pub struct Monitor {
    mode: Mode,
    conns: usize,
    started: u64,
    previous: Option<(u64, CounterSnapshot)>,
    server_pid: Option<u32>,
    pub rss: RssReadings,
    pub rss_errors: Vec<String>,
}

impl Monitor {
    /// Reads the server's memory at once: this is the "before" of the run.
    pub fn new(conns: usize, server_pid: Option<u32>, quiet: bool) -> Monitor {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stdout().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Lines
        };
        let mut monitor = Monitor {
            mode,
            conns,
            started: sys::now_nanos(),
            previous: None,
            server_pid,
            rss: RssReadings::default(),
            rss_errors: Vec::new(),
        };
        monitor.rss.before = monitor.read_rss();
        monitor
    }

    fn read_rss(&mut self) -> Option<u64> {
        let pid = self.server_pid?;
        match sys::rss_bytes(pid) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                self.rss_errors
                    .push(format!("cannot read the memory of process {pid}: {error}"));
                None
            }
        }
    }

    pub fn progress(&mut self, phase: Phase, counters: CounterSnapshot) {
        let now = sys::now_nanos();
        let line = self.line(phase, counters, now);
        self.previous = Some((now, counters));
        let mut stdout = std::io::stdout().lock();
        // Progress is a courtesy: a closed stdout must not stop the run.
        let _ = match self.mode {
            Mode::Quiet => return,
            Mode::Terminal => write!(stdout, "\r\x1b[2K{line}"),
            Mode::Lines => writeln!(stdout, "{line}"),
        };
        let _ = stdout.flush();
    }

    fn line(&self, phase: Phase, counters: CounterSnapshot, now: u64) -> String {
        let elapsed = now.saturating_sub(self.started) as f64 / 1e9;
        let mut line = format!(
            "[{elapsed:6.1}s] {:<10} conns {}/{}",
            phase.label(),
            counters.conns_opened,
            self.conns
        );
        if counters.connect_errors > 0 || counters.conns_dropped > 0 {
            line += &format!(
                " ({} failed, {} dropped)",
                counters.connect_errors, counters.conns_dropped
            );
        }
        if counters.sent > 0 {
            let per_second = |value: fn(&CounterSnapshot) -> u64| match self.previous {
                Some((then, previous)) if now > then => {
                    (value(&counters).saturating_sub(value(&previous))) as f64 * 1e9
                        / (now - then) as f64
                }
                _ => 0.0,
            };
            line += &format!(
                "  sent {} ({:.0}/s)  acked {} ({:.0}/s)  delivered {} ({:.0}/s)  receipts {}",
                counters.sent,
                per_second(|c| c.sent),
                counters.acknowledged,
                per_second(|c| c.acknowledged),
                counters.delivered,
                per_second(|c| c.delivered),
                counters.receipts,
            );
        }
        if counters.history_sent > 0 {
            line += &format!(
                "  pages {}/{}",
                counters.history_answered, counters.history_sent
            );
            if counters.history_errors > 0 {
                line += &format!(" ({} errors)", counters.history_errors);
            }
        }
        let troubles = counters.lost
            + counters.duplicates
            + counters.server_errors
            + counters.unexpected_frames;
        if troubles > 0 {
            line += &format!(
                "  lost {} dup {} server-errors {} unexpected {}",
                counters.lost,
                counters.duplicates,
                counters.server_errors,
                counters.unexpected_frames
            );
        }
        line
    }

    pub fn on_ready(&mut self) {
        self.rss.connected = self.read_rss();
    }

    pub fn on_done(&mut self) {
        self.rss.after = self.read_rss();
    }

    /// Ends the progress display, so that what follows starts on a fresh line.
    pub fn finish(&mut self) {
        if self.mode == Mode::Terminal && self.previous.is_some() {
            println!();
        }
    }
}

/// How long after the last connection opened the load starts, so that every worker thread is
/// awake and waiting when the start instant comes.
const START_DELAY_NANOS: u64 = 20_000_000;

/// The [`Control`] of a single-process run: the monitor itself.
#[derive(Debug)]
pub struct SoloControl<'a> {
    pub monitor: &'a mut Monitor,
}

impl Control for SoloControl<'_> {
    fn progress(&mut self, phase: Phase, counters: CounterSnapshot) -> anyhow::Result<()> {
        self.monitor.progress(phase, counters);
        Ok(())
    }

    fn ready(&mut self, _connect: ConnectSpan, counters: CounterSnapshot) -> anyhow::Result<u64> {
        self.monitor.on_ready();
        self.monitor.progress(Phase::Connecting, counters);
        Ok(sys::now_nanos() + START_DELAY_NANOS)
    }

    fn done(&mut self, counters: CounterSnapshot) -> anyhow::Result<()> {
        self.monitor.on_done();
        self.monitor.progress(Phase::Closing, counters);
        Ok(())
    }
}
