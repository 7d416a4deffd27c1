//! Before the run, not measured: the chat the readers page through.
//!
//! Seeding: the reader user sets `history_storage` 90 (`PUT /v1/user/settings`, answered once
//! durable, so that it applies to everything sent after), then the reader and the peer, one
//! connection each, send each other `--history-seed` messages in turn (message k goes from
//! the reader when k is even, from the peer when odd) as fast as the acknowledgements allow:
//! each user keeps at most half of `--history-window` sent and not yet acknowledged. Each
//! side answers `message_delivered` for what it receives, as a client does, so that no inbox
//! is left behind; a send answered `rate_limited` or `overloaded` is sent again (same
//! `client_msg_id`) after the `retry_after_ms` it names. The chat's oldest and newest message
//! ids come from the acknowledgements. The index takes a message once it is durable, so the
//! seeding ends once the newest page shows the newest message.
//!
//! With `--history-seeded` nothing is sent: the reader reads the newest message back from
//! the newest page and finds the oldest with one-message pages ([`OldestSearch`]).

use std::cell::RefCell;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use super::pick::OldestSearch;
use crate::cli::{HistoryArgs, SeededRange, id_text};
use crate::conn::{
    Connector, DELIVERED_IDS_MAX, ServerMessage, Targets, TokenMinter, decode_server_message,
    encode_history, encode_message_delivered, encode_send_message,
};
use crate::http::{self, HttpTarget};
use crate::scenario::pairs::{Sink, Stream};
use crate::sys;

/// Longest wait for one HTTP answer or one page during the preparation.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait, once every seeded message is acknowledged and delivered, for the receipts
/// (the server keeps those of an offline sender for its next connection).
const RECEIPTS_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the seeding looks whether it is done.
const POLL: Duration = Duration::from_millis(5);

/// The wait before a refused send goes again when the server names none.
const RETRY_DEFAULT_MS: u64 = 10;

/// What the preparation found: the seeded range the readers draw from, and what to report.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub range: SeededRange,
    pub report: SeedReport,
}

/// How the chat was seeded, or found seeded; the `seed` of the report's `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedReport {
    /// The chat was seeded by an earlier run (`--history-seeded`): nothing was sent now.
    pub skipped: bool,
    /// Messages sent and acknowledged now; null when skipped.
    pub messages: Option<u64>,
    /// The chat already held messages before this seeding (an earlier run's).
    pub held_before: bool,
    /// From the first send to the last acknowledgement.
    pub seconds: f64,
    /// Messages acknowledged per second over that time.
    pub per_second: f64,
    /// Most messages in flight, both users together.
    pub window: usize,
    /// Characters of content of each seeded message.
    pub content_chars: usize,
    /// Bytes of content of the messages seeded now: what a stored message carries for its
    /// sender, beside its id, users and timestamp.
    pub payload_bytes: u64,
    /// Sends refused (`rate_limited`, `overloaded`) and sent again.
    pub retries: u64,
    /// Seeded messages whose receipt had not come when the seeding ended.
    pub receipts_missing: u64,
    /// From the last acknowledgement until the newest page showed the newest message.
    pub indexed_seconds: f64,
    /// Pages of one message asked to find the oldest message (`--history-seeded`, or a chat
    /// that held messages before).
    pub lookup_requests: u64,
    #[serde(with = "id_text")]
    pub oldest_id: u64,
    #[serde(with = "id_text")]
    pub newest_id: u64,
}

/// Seeds the chat of `args` (or finds it seeded), on a runtime of its own, before the
/// engine starts. `run` tags the seeded contents, `quiet` silences the progress lines.
pub fn prepare(
    args: &HistoryArgs,
    jwt_secret: &str,
    run: &str,
    quiet: bool,
) -> anyhow::Result<Prepared> {
    let common = &args.pairs.common;
    let connector = Connector {
        targets: Targets::resolve(&common.url, common.tls_ca.as_deref())?,
        minter: TokenMinter::new(jwt_secret.as_bytes(), common.token_ttl),
        source_ips: 1,
        timeout: common.connect_timeout,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the seeding's runtime")?;
    runtime.block_on(async {
        if args.history_seeded {
            find_seeded(args, &connector).await
        } else {
            seed(args, &connector, run, quiet).await
        }
    })
}

/// A connection of the preparation, split.
struct Link {
    sink: Sink,
    stream: Stream,
    /// The last `req_id` used on it.
    req_id: u64,
}

impl Link {
    async fn open(connector: &Connector, index: usize, user: &str) -> anyhow::Result<Link> {
        let ws = connector
            .open(index, user)
            .await
            .with_context(|| format!("cannot connect as {user}"))?;
        let (sink, stream) = ws.split();
        Ok(Link {
            sink,
            stream,
            req_id: 0,
        })
    }

    /// The ids of the page of the chat with `with` before `before` (the newest when
    /// `None`), and its `more`. What else comes meanwhile is confirmed if it is a message
    /// (left in the inbox by an earlier run), else ignored; an `overloaded` answer is asked
    /// again after the wait it names.
    async fn page(
        &mut self,
        with: &str,
        before: Option<u64>,
        limit: u32,
    ) -> anyhow::Result<(Vec<u64>, bool)> {
        loop {
            self.req_id += 1;
            let req_id = self.req_id;
            let exchange = async {
                self.sink
                    .send(Message::text(encode_history(req_id, with, before, limit)))
                    .await?;
                loop {
                    let text = match self.stream.next().await {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(frame))) => {
                            anyhow::bail!("closed by the server: {frame:?}")
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => return Err(error.into()),
                        None => anyhow::bail!("the connection ended"),
                    };
                    match decode_server_message(text.as_str()) {
                        Ok(ServerMessage::History {
                            req_id: answered,
                            message_ids,
                            more,
                        }) if answered == req_id => return Ok(Ok((message_ids, more))),
                        Ok(ServerMessage::Error {
                            req_id: Some(answered),
                            code,
                            message,
                            retry_after_ms,
                            ..
                        }) if answered == req_id => {
                            if code == "overloaded" {
                                return Ok(Err(retry_after_ms.unwrap_or(RETRY_DEFAULT_MS)));
                            }
                            anyhow::bail!("history answered error {code}: {message}")
                        }
                        Ok(
                            ServerMessage::IncomingMessage { message_id, .. }
                            | ServerMessage::GroupEvent { message_id, .. },
                        ) => {
                            self.sink
                                .send(Message::text(encode_message_delivered(&[message_id])))
                                .await?;
                        }
                        _ => {}
                    }
                }
            };
            match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
                Ok(Ok(Ok(page))) => return Ok(page),
                Ok(Ok(Err(wait_ms))) => {
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                }
                Ok(Err(error)) => return Err(error).context("a history request"),
                Err(_) => {
                    anyhow::bail!("a history request had no answer within {ANSWER_TIMEOUT:?}")
                }
            }
        }
    }

    /// The chat's oldest message, its newest being `newest`; and the pages it took.
    async fn find_oldest(&mut self, with: &str, newest: u64) -> anyhow::Result<(u64, u64)> {
        let mut search = OldestSearch::new(newest);
        let mut requests = 0;
        while let Some(probe) = search.probe() {
            requests += 1;
            let (ids, _) = self.page(with, Some(probe), 1).await?;
            search.answer(probe, ids.first().copied());
        }
        Ok((search.oldest(), requests))
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
    }
}

/// `--history-seeded`: the range of the chat as the server holds it.
async fn find_seeded(args: &HistoryArgs, connector: &Connector) -> anyhow::Result<Prepared> {
    let (user, peer) = (&args.history_user, &args.history_peer);
    let mut reader = Link::open(connector, 0, user).await?;
    let (newest_page, _) = reader.page(peer, None, 1).await?;
    let Some(&newest) = newest_page.first() else {
        anyhow::bail!(
            "--history-seeded, but {user} keeps no history with {peer}: seed it first (leave \
             --history-seeded out), against this server and data directory"
        );
    };
    let (oldest, lookups) = reader.find_oldest(peer, newest).await?;
    reader.close().await;
    Ok(Prepared {
        range: SeededRange { oldest, newest },
        report: SeedReport {
            skipped: true,
            messages: None,
            held_before: true,
            seconds: 0.0,
            per_second: 0.0,
            window: args.history_window,
            content_chars: args.history_content_chars,
            payload_bytes: 0,
            retries: 0,
            receipts_missing: 0,
            indexed_seconds: 0.0,
            lookup_requests: lookups + 1,
            oldest_id: oldest,
            newest_id: newest,
        },
    })
}

/// `PUT /v1/user/settings` `{"history_storage": 90}` as `user`.
async fn keep_history(args: &HistoryArgs, connector: &Connector) -> anyhow::Result<()> {
    let target = HttpTarget::resolve(&args.http_addr)?;
    let token = connector.minter.mint(&args.history_user)?;
    let answer = http::put_json(
        &target,
        "/v1/user/settings",
        &token,
        r#"{"history_storage":90}"#,
        ANSWER_TIMEOUT,
    )
    .await
    .context("cannot set the reader's history_storage")?;
    anyhow::ensure!(
        answer.status == 200,
        "PUT {}/v1/user/settings answered {}: {:.300}",
        target.url,
        answer.status,
        answer.text()
    );
    Ok(())
}

/// The content of seeded message `k` of the run tagged `tag`, padded to `chars`.
pub(super) fn seed_content(tag: &str, k: u64, chars: usize) -> String {
    let mut text = format!("seed {tag} {k}");
    if text.len() < chars {
        text.push(' ');
        while text.len() < chars {
            text.push('x');
        }
    }
    text
}

/// The messages one user of the seeding sends and gets.
#[derive(Debug)]
struct Side {
    /// 0 for the reader (messages 0, 2, 4, ...), 1 for the peer (1, 3, 5, ...).
    index: u64,
    /// Whom it sends to.
    to: String,
    /// Messages it sends.
    total: u64,
    /// Its first `client_msg_id` is `cmid_base + 1`.
    cmid_base: u64,
    /// Messages written at least once.
    written: u64,
    /// Which of its messages are acknowledged, by `client_msg_id - cmid_base - 1`.
    acknowledged: Vec<bool>,
    acknowledged_count: u64,
    in_flight: u64,
    /// Refused sends to write again, with when.
    retry: Vec<(u64, u64)>,
    retries: u64,
    /// Message ids it owes a `message_delivered` for.
    to_confirm: Vec<u64>,
    /// This seeding's messages it received (from the other side).
    delivered: u64,
    receipts: u64,
    oldest: u64,
    newest: u64,
    first_written_at: Option<u64>,
    last_acknowledged_at: u64,
    payload_bytes: u64,
    failed: Option<String>,
}

impl Side {
    fn new(index: u64, to: &str, messages: u64, cmid_base: u64) -> Side {
        // Message k goes from side k % 2.
        let total = messages / 2 + (messages % 2) * (1 - index);
        Side {
            index,
            to: to.to_owned(),
            total,
            cmid_base,
            written: 0,
            acknowledged: vec![false; usize::try_from(total).unwrap_or(usize::MAX)],
            acknowledged_count: 0,
            in_flight: 0,
            retry: Vec::new(),
            retries: 0,
            to_confirm: Vec::new(),
            delivered: 0,
            receipts: 0,
            oldest: u64::MAX,
            newest: 0,
            first_written_at: None,
            last_acknowledged_at: 0,
            payload_bytes: 0,
            failed: None,
        }
    }

    /// The place among its messages of `client_msg_id`, if it is one of them.
    fn slot(&self, client_msg_id: u64) -> Option<usize> {
        let n = client_msg_id.checked_sub(self.cmid_base + 1)?;
        (n < self.total).then_some(n as usize)
    }

    /// The run-wide number of its message `n` (from 0).
    fn k(&self, n: u64) -> u64 {
        n * 2 + self.index
    }

    fn sent_all(&self) -> bool {
        self.acknowledged_count == self.total
    }
}

/// What the two sides of a seeding share.
struct Seeding<'a> {
    tag: &'a str,
    window: u64,
    content_chars: usize,
}

/// Writes what a side has to write: sends again what is due for it, new sends while its
/// window allows, the confirmations it owes; then waits to be woken (or for the next retry).
async fn write_side(
    sink: &mut Sink,
    side: &RefCell<Side>,
    wake: &Notify,
    seeding: &Seeding<'_>,
) -> Result<(), String> {
    loop {
        let now = sys::now_nanos();
        let (frames, next_retry) = {
            let mut side = side.borrow_mut();
            let mut frames = Vec::new();
            let due: Vec<u64> = side
                .retry
                .iter()
                .filter(|&&(at, _)| at <= now)
                .map(|&(_, cmid)| cmid)
                .collect();
            side.retry.retain(|&(at, _)| at > now);
            for cmid in due {
                let n = cmid - side.cmid_base - 1;
                let text = seed_content(seeding.tag, side.k(n), seeding.content_chars);
                frames.push(encode_send_message(cmid, &side.to, &text));
            }
            while side.in_flight < seeding.window && side.written < side.total {
                let n = side.written;
                side.written += 1;
                side.in_flight += 1;
                side.first_written_at.get_or_insert(now);
                let text = seed_content(seeding.tag, side.k(n), seeding.content_chars);
                side.payload_bytes += text.len() as u64;
                frames.push(encode_send_message(side.cmid_base + 1 + n, &side.to, &text));
            }
            let owed = std::mem::take(&mut side.to_confirm);
            for batch in owed.chunks(DELIVERED_IDS_MAX) {
                frames.push(encode_message_delivered(batch));
            }
            (frames, side.retry.iter().map(|&(at, _)| at).min())
        };
        for frame in frames {
            sink.feed(Message::text(frame))
                .await
                .map_err(|error| format!("write failed: {error}"))?;
        }
        sink.flush()
            .await
            .map_err(|error| format!("write failed: {error}"))?;
        match next_retry {
            Some(at) => {
                tokio::select! {
                    () = wake.notified() => {}
                    () = sys::sleep_until_nanos(at) => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// Reads a side's connection until it ends: acknowledgements, messages from the other side
/// (each owed a confirmation), receipts, refusals.
async fn read_side(stream: &mut Stream, side: &RefCell<Side>, wake: &Notify, prefix: &str) {
    loop {
        let text = match stream.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                side.borrow_mut().failed = Some(format!("closed by the server: {frame:?}"));
                return;
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                side.borrow_mut().failed = Some(error.to_string());
                return;
            }
            None => {
                side.borrow_mut().failed = Some("the connection ended".to_owned());
                return;
            }
        };
        let now = sys::now_nanos();
        let mut side = side.borrow_mut();
        match decode_server_message(text.as_str()) {
            Ok(ServerMessage::MessageReceived {
                client_msg_id,
                message_id,
            }) => {
                if let Some(slot) = side.slot(client_msg_id)
                    && !side.acknowledged[slot]
                {
                    side.acknowledged[slot] = true;
                    side.acknowledged_count += 1;
                    side.in_flight -= 1;
                    side.oldest = side.oldest.min(message_id);
                    side.newest = side.newest.max(message_id);
                    side.last_acknowledged_at = now;
                    wake.notify_one();
                }
            }
            Ok(ServerMessage::IncomingMessage {
                message_id,
                content,
                ..
            }) => {
                side.to_confirm.push(message_id);
                if content.starts_with(prefix) {
                    side.delivered += 1;
                }
                wake.notify_one();
            }
            Ok(ServerMessage::GroupEvent { message_id, .. }) => {
                side.to_confirm.push(message_id);
                wake.notify_one();
            }
            Ok(ServerMessage::MessageDelivered { .. }) => side.receipts += 1,
            Ok(ServerMessage::Error {
                code,
                message,
                client_msg_id,
                retry_after_ms,
                ..
            }) => match client_msg_id.and_then(|cmid| side.slot(cmid).map(|_| cmid)) {
                Some(cmid) if code == "rate_limited" || code == "overloaded" => {
                    let wait_ms = retry_after_ms.unwrap_or(RETRY_DEFAULT_MS);
                    side.retry.push((now + wait_ms * 1_000_000, cmid));
                    side.retries += 1;
                    wake.notify_one();
                }
                _ => {
                    side.failed = Some(format!(
                        "the server refused a seeded message: {code}: {message} (a server \
                         started without --user-msgs-per-s 0 limits each user to a few \
                         messages a second)"
                    ));
                    return;
                }
            },
            _ => {}
        }
    }
}

/// Seeds the chat: the setting, the messages both ways, the wait for the index.
async fn seed(
    args: &HistoryArgs,
    connector: &Connector,
    run: &str,
    quiet: bool,
) -> anyhow::Result<Prepared> {
    let (user, peer) = (&args.history_user, &args.history_peer);
    keep_history(args, connector).await?;
    let mut reader = Link::open(connector, 0, user).await?;
    let mut other = Link::open(connector, 1, peer).await?;
    let held_before = !reader.page(peer, None, 1).await?.0.is_empty();
    if held_before && !quiet {
        println!(
            "[seed] {user} already keeps history with {peer} (an earlier seeding?): seeding \
             {} more; --history-seeded skips the seeding",
            args.history_seed
        );
    }

    // Client message ids unique to this seeding: a retry of an earlier run's id would be
    // answered with that run's message instead of storing a new one. Microseconds since
    // the epoch move by a million a second, more than a seeding sends in one.
    let cmid_base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64);
    let messages = args.history_seed;
    let sides = [
        RefCell::new(Side::new(0, peer, messages, cmid_base)),
        RefCell::new(Side::new(1, user, messages, cmid_base)),
    ];
    let wakes = [Notify::new(), Notify::new()];
    let tag = format!("{run}-{cmid_base}");
    let prefix = format!("seed {tag} ");
    let seeding = Seeding {
        tag: &tag,
        window: (args.history_window as u64).div_ceil(2).max(1),
        content_chars: args.history_content_chars,
    };
    for wake in &wakes {
        wake.notify_one();
    }
    let started = sys::now_nanos();
    {
        let (reader_link, other_link) = (&mut reader, &mut other);
        let work = async {
            let (reader_written, _, other_written, _) = tokio::join!(
                write_side(&mut reader_link.sink, &sides[0], &wakes[0], &seeding),
                read_side(&mut reader_link.stream, &sides[0], &wakes[0], &prefix),
                write_side(&mut other_link.sink, &sides[1], &wakes[1], &seeding),
                read_side(&mut other_link.stream, &sides[1], &wakes[1], &prefix),
            );
            // The writers end only on a failed write.
            for (side, written) in sides.iter().zip([reader_written, other_written]) {
                if let Err(error) = written {
                    side.borrow_mut().failed.get_or_insert(error);
                }
            }
        };
        let watch = watch_seeding(&sides, started, messages, quiet);
        tokio::select! {
            result = watch => result?,
            () = work => {}
        }
    }
    for (side, who) in sides.iter().zip([user, peer]) {
        if let Some(error) = side.borrow().failed.clone() {
            anyhow::bail!("seeding: {who}: {error}");
        }
    }
    let [reader_side, other_side] = sides.map(RefCell::into_inner);
    let first_written = [&reader_side, &other_side]
        .iter()
        .filter_map(|side| side.first_written_at)
        .min()
        .unwrap_or(started);
    let last_acknowledged = reader_side
        .last_acknowledged_at
        .max(other_side.last_acknowledged_at);
    let seconds = last_acknowledged.saturating_sub(first_written) as f64 / 1e9;
    let newest = reader_side.newest.max(other_side.newest);
    let mut oldest = reader_side.oldest.min(other_side.oldest);

    // The index takes messages once durable: wait until the newest page starts with the
    // newest seeded message.
    let index_deadline =
        sys::now_nanos() + u64::try_from(args.history_index_timeout.as_nanos()).unwrap_or(u64::MAX);
    loop {
        let (page, _) = reader.page(peer, None, 1).await?;
        if page.first() == Some(&newest) {
            break;
        }
        anyhow::ensure!(
            sys::now_nanos() < index_deadline,
            "seeding: the newest page of {user} with {peer} did not show the newest seeded \
             message {newest} within {:?} (--history-index-timeout); it starts at {:?}",
            args.history_index_timeout,
            page.first()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let indexed_seconds = sys::now_nanos().saturating_sub(last_acknowledged) as f64 / 1e9;
    let mut lookups = 0;
    if held_before {
        // The readers' pages may reach the earlier messages: the range starts at the oldest.
        (oldest, lookups) = reader.find_oldest(peer, newest).await?;
    }
    reader.close().await;
    other.close().await;
    let receipts =
        reader_side.receipts.min(reader_side.total) + other_side.receipts.min(other_side.total);
    Ok(Prepared {
        range: SeededRange { oldest, newest },
        report: SeedReport {
            skipped: false,
            messages: Some(messages),
            held_before,
            seconds,
            per_second: if seconds > 0.0 {
                messages as f64 / seconds
            } else {
                0.0
            },
            window: args.history_window,
            content_chars: args.history_content_chars,
            payload_bytes: reader_side.payload_bytes + other_side.payload_bytes,
            retries: reader_side.retries + other_side.retries,
            receipts_missing: messages.saturating_sub(receipts),
            indexed_seconds,
            lookup_requests: lookups,
            oldest_id: oldest,
            newest_id: newest,
        },
    })
}

/// Waits until every seeded message is acknowledged and delivered (then for the receipts,
/// a while), printing progress once a second; an error once a side failed.
async fn watch_seeding(
    sides: &[RefCell<Side>; 2],
    started: u64,
    messages: u64,
    quiet: bool,
) -> anyhow::Result<()> {
    let mut next_progress = started + 1_000_000_000;
    let mut previous = (started, 0u64);
    let mut receipts_deadline = None;
    loop {
        tokio::time::sleep(POLL).await;
        let now = sys::now_nanos();
        let [reader, other] = [sides[0].borrow(), sides[1].borrow()];
        if reader.failed.is_some() || other.failed.is_some() {
            return Ok(());
        }
        let acknowledged = reader.acknowledged_count + other.acknowledged_count;
        let stored = reader.sent_all()
            && other.sent_all()
            && reader.delivered >= other.total
            && other.delivered >= reader.total
            && reader.to_confirm.is_empty()
            && other.to_confirm.is_empty();
        if stored {
            let receipted = reader.receipts >= reader.total && other.receipts >= other.total;
            let deadline = *receipts_deadline.get_or_insert(
                now + u64::try_from(RECEIPTS_TIMEOUT.as_nanos()).unwrap_or(u64::MAX),
            );
            if receipted || now >= deadline {
                return Ok(());
            }
        }
        if now >= next_progress {
            if !quiet {
                let rate = (acknowledged - previous.1) as f64 * 1e9
                    / now.saturating_sub(previous.0).max(1) as f64;
                println!(
                    "[seed {:6.1}s] acknowledged {acknowledged}/{messages} ({rate:.0}/s)  \
                     delivered {}  retries {}",
                    now.saturating_sub(started) as f64 / 1e9,
                    reader.delivered + other.delivered,
                    reader.retries + other.retries
                );
            }
            previous = (now, acknowledged);
            next_progress = now + 1_000_000_000;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sides_split_the_messages_in_turn() {
        for messages in [0, 1, 2, 7, 1_000_000] {
            let reader = Side::new(0, "p", messages, 100);
            let other = Side::new(1, "r", messages, 100);
            assert_eq!(reader.total + other.total, messages);
            assert!(reader.total >= other.total && reader.total - other.total <= 1);
        }
        let reader = Side::new(0, "p", 7, 100);
        let other = Side::new(1, "r", 7, 100);
        // Reader: 0, 2, 4, 6; peer: 1, 3, 5.
        assert_eq!(
            (0..reader.total).map(|n| reader.k(n)).collect::<Vec<_>>(),
            [0, 2, 4, 6]
        );
        assert_eq!(
            (0..other.total).map(|n| other.k(n)).collect::<Vec<_>>(),
            [1, 3, 5]
        );
        assert_eq!(reader.slot(100), None);
        assert_eq!(reader.slot(101), Some(0));
        assert_eq!(reader.slot(104), Some(3));
        assert_eq!(reader.slot(105), None);
        assert_eq!(other.slot(103), Some(2));
        assert_eq!(other.slot(104), None);
    }

    #[test]
    fn seeded_contents_are_tagged_and_padded() {
        assert_eq!(seed_content("r-1", 5, 0), "seed r-1 5");
        let padded = seed_content("r-1", 5, 100);
        assert_eq!(padded.len(), 100);
        assert!(padded.starts_with("seed r-1 5 x"));
        // The prefix of another seeding is not this one's.
        assert!(!seed_content("r-10", 5, 0).starts_with("seed r-1 "));
    }

    #[test]
    fn seed_reports_write_ids_as_strings() {
        let report = SeedReport {
            skipped: false,
            messages: Some(2000),
            held_before: false,
            seconds: 0.5,
            per_second: 4000.0,
            window: 1000,
            content_chars: 100,
            payload_bytes: 200_000,
            retries: 0,
            receipts_missing: 0,
            indexed_seconds: 0.01,
            lookup_requests: 0,
            oldest_id: 7_213_509_893_634_048_001,
            newest_id: 7_213_509_893_634_048_999,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["oldest_id"], "7213509893634048001");
        assert_eq!(json["messages"], 2000);
        let back: SeedReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }
}
