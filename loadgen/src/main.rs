//! The load generator: many authenticated WebSocket connections, open-loop scenarios, latency
//! histograms and reports. See the README beside this crate for its use.
//!
//! Exit status: 0 for a clean run, 1 when the run failed (a message lost, a connection that
//! could not be opened or was dropped, a message never acknowledged, refused or reordered, a
//! group not formed, a history request refused, unanswered or answered wrong), 2 when it
//! could not run at all: bad flags, no secret, not one connection opened (an unreachable
//! URL, a secret the server refuses), (`fanout`) not one group formed (a server without
//! groups), or (`history`) a chat that could not be seeded or found seeded.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _};
use mimalloc::MiMalloc;

mod cli;
mod conn;
mod engine;
mod fleet;
mod http;
mod metrics;
mod monitor;
mod plot;
mod report;
mod scenario;
mod secret;
mod server_counters;
mod svg;
mod sys;

use cli::{Cli, Command, ScenarioArgs};
use engine::Plan;
use monitor::{Monitor, SoloControl};
use report::Report;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let result = match cli.command {
        Command::Idle(args) => run(ScenarioArgs::Idle(args)),
        Command::Pairs(args) => run(ScenarioArgs::Pairs(args)),
        Command::Storm(args) => run(ScenarioArgs::Storm(args)),
        Command::Churn(args) => run(ScenarioArgs::Churn(args)),
        Command::Echo(args) => run(ScenarioArgs::Echo(args)),
        Command::History(args) => run(ScenarioArgs::History(args)),
        Command::Fanout(mut args) => {
            // Its groups decide how many connections it opens; a --conns on the command line
            // must agree with them.
            let conns_given = matches
                .subcommand_matches("fanout")
                .and_then(|fanout| fanout.value_source("conns"))
                == Some(ValueSource::CommandLine);
            args.settle_conns(conns_given)
                .and_then(|()| run(ScenarioArgs::Fanout(args)))
        }
        Command::Plot(args) => {
            plot::plot_file(&args.results, &args.svg, &args.title).map(|()| ExitCode::SUCCESS)
        }
        Command::Worker => fleet::worker_main().map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("switchboard-loadgen: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// A run name unique enough to keep two runs' users apart on one server.
fn default_run_name() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    format!(
        "{:06x}{:04x}",
        seconds & 0xff_ffff,
        std::process::id() & 0xffff
    )
}

/// Longest run name: the user id `lg-<run>-<n>` must stay within 64 bytes.
const RUN_NAME_BYTES_MAX: usize = 32;

fn check_run_name(run: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !run.is_empty()
            && run.len() <= RUN_NAME_BYTES_MAX
            && run
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"_.@-".contains(&byte)),
        "--run is 1 to {RUN_NAME_BYTES_MAX} characters of A-Z a-z 0-9 _ . @ -"
    );
    Ok(())
}

fn run(mut args: ScenarioArgs) -> anyhow::Result<ExitCode> {
    let common = args.common_mut();
    let jwt_secret = secret::resolve(&common.secret, std::env::var_os(secret::SECRET_ENV))?;
    anyhow::ensure!(common.procs >= 1, "--procs is at least 1");
    let run = common.run.clone().unwrap_or_else(default_run_name);
    check_run_name(&run)?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = common.threads.unwrap_or(cores).max(1);
    // Fail early on a URL that cannot work, before any process starts.
    conn::Targets::resolve(&common.url, common.tls_ca.as_deref())?;
    let quiet = common.quiet;
    // `history` seeds its chat (or finds it seeded) before any process starts: the workers
    // get the seeded range with their orders.
    let seeded = match &mut args {
        ScenarioArgs::History(history) => {
            scenario::history::check_args(history)?;
            let prepared = scenario::history::prepare(history, &jwt_secret, &run, quiet)?;
            history.seeded = Some(prepared.range);
            Some(prepared.report)
        }
        _ => None,
    };

    let plan = Plan {
        args,
        jwt_secret,
        run,
        threads,
        procs: 0,
    };
    let plan = Plan {
        procs: plan.args.common().procs,
        ..plan
    };
    let scenario = scenario::build(&plan.args)?;
    let common = plan.args.common();
    let mut monitor = Monitor::new(scenario.conns(), common.server_pid, common.quiet);
    let counters_before = common.server_metrics.as_deref().map(server_counters::read);
    let outcome = if plan.procs == 1 {
        engine::run_process(
            &plan,
            Arc::clone(&scenario),
            0,
            &mut SoloControl {
                monitor: &mut monitor,
            },
        )?
    } else {
        fleet::run_fleet(&plan, Arc::clone(&scenario), &mut monitor)?
    };
    monitor.finish();

    let rss = common
        .server_pid
        .map(|pid| (pid, monitor.rss, monitor.rss_errors.clone()));
    let mut report = Report::build(&plan, scenario.as_ref(), &outcome, rss);
    if let Some(history) = &mut report.history {
        history.seed = seeded;
    }
    if let (Some(address), Some(before)) = (&common.server_metrics, counters_before) {
        let after = server_counters::read(address);
        let acknowledged = report.counters.acknowledged;
        report.server_counters = Some(server_counters::ServerCounters::between(
            address,
            before,
            after,
            acknowledged,
        ));
    }
    print!("{}", report.markdown(&plan));
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &common.svg {
        let title = format!(
            "switchboard-loadgen {} ({} connections)",
            scenario.name(),
            scenario.conns()
        );
        let plot = svg::percentiles(
            &title,
            &report::plotted(scenario.as_ref(), &outcome.metrics),
        );
        std::fs::write(path, plot).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        for failure in &report.failures {
            eprintln!("switchboard-loadgen: FAILED: {failure}");
        }
        if report.connect.conns > 0 && report.connect.opened == 0 {
            // Not one connection: nothing was measured, so the run did not happen, as with
            // bad flags (exit 2), rather than failed under load (exit 1). The causes are all
            // of the setup: nothing listening at --url, a secret the server does not take, a
            // path that is no WebSocket. The report and summary above still say what came
            // back, for a script that reads them either way.
            let why = report
                .error_samples
                .first()
                .map_or("no error was recorded", String::as_str);
            eprintln!(
                "switchboard-loadgen: could not open any connection to {}: {why}",
                common.url
            );
            return Ok(ExitCode::from(2));
        }
        if report.counters.setup_errors > 0 && report.counters.sent == 0 {
            // Connections opened, but not one unit could be set up (fanout, the one scenario
            // with a setup: no group could be formed, as against a server without groups), so
            // nothing was sent: nothing measured, as above.
            let why = report
                .error_samples
                .first()
                .map_or("no error was recorded", String::as_str);
            eprintln!("switchboard-loadgen: could not form any group: {why}");
            return Ok(ExitCode::from(2));
        }
        Ok(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names() {
        assert!(check_run_name(&default_run_name()).is_ok());
        assert!(check_run_name("bench-1").is_ok());
        assert!(check_run_name("").is_err());
        assert!(check_run_name("a b").is_err());
        assert!(check_run_name("g:1").is_err());
        assert!(check_run_name(&"x".repeat(RUN_NAME_BYTES_MAX + 1)).is_err());
    }
}
