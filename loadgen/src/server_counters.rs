//! `--server-metrics`: the server's own counters of where its time goes, read from its
//! `/metrics` before and after the run, so that the report can say how many socket calls,
//! loop turns and sleeps the server spent per acknowledged message.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::http;

/// The counter families read, summed over the server's shards.
pub const FAMILIES: [&str; 4] = [
    "switchboard_socket_recvs_total",
    "switchboard_socket_sends_total",
    "switchboard_router_turns_total",
    "switchboard_router_sleeps_total",
];

/// What the counters moved by over the run, and that per acknowledged message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerCounters {
    pub address: String,
    /// After minus before, by family.
    pub during_run: BTreeMap<String, f64>,
    /// The same divided by the messages acknowledged (empty when none was).
    pub per_acknowledged: BTreeMap<String, f64>,
    pub errors: Vec<String>,
}

/// The families' sums in the OpenMetrics text `body`.
pub fn sums(body: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in body.lines() {
        let Some(family) = FAMILIES.iter().find(|family| {
            line.starts_with(&format!("{family}{{")) || line.starts_with(&format!("{family} "))
        }) else {
            continue;
        };
        if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sums.entry((*family).to_owned()).or_insert(0.0) += value;
        }
    }
    sums
}

/// `GET /metrics` from `address` (`HOST:PORT`), the families summed.
pub fn read(address: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let target = http::HttpTarget::resolve(address)?;
    let mut stream = TcpStream::connect_timeout(&target.addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {}", target.url))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.host
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let answer = http::parse_answer(&raw)?;
    anyhow::ensure!(
        answer.status == 200,
        "GET {}/metrics answered {}",
        target.url,
        answer.status
    );
    Ok(sums(&answer.text()))
}

impl ServerCounters {
    /// The counters between `before` and `after` (either an error, said in `errors`).
    pub fn between(
        address: &str,
        before: anyhow::Result<BTreeMap<String, f64>>,
        after: anyhow::Result<BTreeMap<String, f64>>,
        acknowledged: u64,
    ) -> ServerCounters {
        let mut counters = ServerCounters {
            address: address.to_owned(),
            ..ServerCounters::default()
        };
        match (before, after) {
            (Ok(before), Ok(after)) => {
                for (family, value) in after {
                    let moved = value - before.get(&family).copied().unwrap_or(0.0);
                    if acknowledged > 0 {
                        counters
                            .per_acknowledged
                            .insert(family.clone(), moved / acknowledged as f64);
                    }
                    counters.during_run.insert(family, moved);
                }
            }
            (before, after) => {
                for error in [before.err(), after.err()].into_iter().flatten() {
                    counters.errors.push(format!("{error:#}"));
                }
            }
        }
        counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_families_over_the_shards_and_divides_by_what_was_acknowledged() {
        let before = "# TYPE switchboard_socket_sends counter\n\
                      switchboard_socket_sends_total{shard=\"0\"} 10\n\
                      switchboard_socket_sends_total{shard=\"1\"} 5\n\
                      switchboard_messages_in_total{shard=\"0\"} 99\n";
        let after = "switchboard_socket_sends_total{shard=\"0\"} 40\n\
                     switchboard_socket_sends_total{shard=\"1\"} 15\n\
                     switchboard_router_sleeps_total{shard=\"0\"} 8\n";
        assert_eq!(
            sums(before),
            BTreeMap::from([("switchboard_socket_sends_total".to_owned(), 15.0)])
        );
        let counters = ServerCounters::between("h:1", Ok(sums(before)), Ok(sums(after)), 10);
        assert_eq!(counters.during_run["switchboard_socket_sends_total"], 40.0);
        assert_eq!(
            counters.per_acknowledged["switchboard_socket_sends_total"],
            4.0
        );
        assert_eq!(
            counters.per_acknowledged["switchboard_router_sleeps_total"],
            0.8
        );
        let failed =
            ServerCounters::between("h:1", Err(anyhow::anyhow!("refused")), Ok(sums(after)), 10);
        assert!(failed.during_run.is_empty());
        assert_eq!(failed.errors, vec!["refused".to_owned()]);
    }
}
