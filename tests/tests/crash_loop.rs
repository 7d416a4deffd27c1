//! A crash loop through the real binary: several senders burst messages to recipients who
//! are connected and reading, or offline, while the server is killed with SIGKILL at a
//! random point of each burst and restarted at once on the same ports and data directory.
//! After every restart each recipient gets every message that was acknowledged to its
//! sender in any round so far: once after dropping duplicates by `message_id`, with no two
//! ids for one sent message, and in send order per sender. Each durability that promises to
//! survive a killed process (`fsync`, `batch`; docs/protocol.md, "Guarantees") gets its own
//! data directory and its own kills. The test ends with a markdown table of kills,
//! messages acknowledged, lost, duplicates and restart times (shown with `--nocapture`).
//!
//! The same test is the bench's long run: `SWITCHBOARD_CRASH_KILLS` sets the kills per
//! durability (20 by default, so 40 in all), `SWITCHBOARD_CRASH_DURABILITIES` the
//! comma-separated durabilities (`fsync,batch` by default), `SWITCHBOARD_CRASH_SEED` the seed
//! of the choices (which recipients are online, who gets each message, after how many answers
//! the kill comes; printed at the start, so a failing run can be replayed), and
//! `SWITCHBOARD_BIN` the binary (bench/README.md has the command).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_tests::{Client, Options, Server, WAIT, connect, free_addrs, send_message};
use tungstenite::Message;

/// Senders in every round.
const SENDERS: usize = 3;
/// Recipients; each round some are connected and reading during the burst, the rest offline.
const RECIPIENTS: usize = 4;
/// Messages each sender sends in a round's burst.
const PER_SENDER: usize = 100;
/// Kills per durability unless `SWITCHBOARD_CRASH_KILLS` says otherwise. A round takes tens
/// of milliseconds with the debug build on two cores, so 40 kills in all stay within seconds.
const KILLS_DEFAULT: usize = 20;

/// SplitMix64: a seeded generator that needs no crate and replays exactly from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} does not parse")),
        Err(_) => default,
    }
}

fn sender(index: usize) -> String {
    format!("sender{index}")
}

fn recipient(index: usize) -> String {
    format!("rcpt{index}")
}

/// The content of a message carries its sender's sequence number toward that recipient, so
/// the recipient can check the order without the acknowledgements.
fn content(seq: u64, from: usize, round: usize) -> String {
    format!("{seq} from {} in round {round}", sender(from))
}

fn seq_of(content: &str) -> Option<u64> {
    content.split_once(' ')?.0.parse().ok()
}

fn id_of(message: &Value) -> u64 {
    message["message_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no message_id in {message}"))
}

/// A message the server acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Sent {
    from: usize,
    to: usize,
    seq: u64,
}

/// What a sender thread reads: an acknowledgement, or a refusal (an `error` answer).
enum Answer {
    Ack {
        from: usize,
        client_msg_id: u64,
        message_id: u64,
    },
    Refused,
}

#[derive(Debug, Default)]
struct Tally {
    acked: u64,
    refused: u64,
    lost: u64,
    /// Two message ids for one sent message: client-side dedup cannot catch these.
    duplicates_after_dedup: u64,
    /// Deliveries of a message id the recipient already had (redelivery after a crash).
    duplicates_before_dedup: u64,
    restarts: Vec<Duration>,
    failures: Vec<String>,
}

/// What one recipient has been delivered, across every round of one data directory.
#[derive(Debug, Default)]
struct Inbox {
    seen: HashSet<u64>,
    /// Per sender, the sequence number of the newest first delivery.
    last_seq: HashMap<String, u64>,
    /// (sender, sequence number) -> the message id it was first delivered with.
    ids: HashMap<(String, u64), u64>,
}

impl Inbox {
    /// Takes one server message in the order it arrived; returns the id of an
    /// `incoming_message` seen for the first time.
    fn absorb(
        &mut self,
        to: usize,
        message: &Value,
        acked: &HashMap<u64, Sent>,
        tally: &mut Tally,
    ) -> Option<u64> {
        if message["type"] != "incoming_message" {
            return None;
        }
        let id = id_of(message);
        if !self.seen.insert(id) {
            tally.duplicates_before_dedup += 1;
            return None;
        }
        let from = message["from"].as_str().unwrap_or_default().to_owned();
        let text = message["content"].as_str().unwrap_or_default();
        let Some(seq) = seq_of(text).filter(|_| text.contains(&format!(" from {from} "))) else {
            tally
                .failures
                .push(format!("{}: content {text:?} from {from:?}", recipient(to)));
            return Some(id);
        };
        if message["to"] != recipient(to).as_str() {
            tally.failures.push(format!(
                "{}: got a message for {}",
                recipient(to),
                message["to"]
            ));
        }
        if let Some(sent) = acked.get(&id)
            && (sender(sent.from) != from || sent.to != to || sent.seq != seq)
        {
            tally.failures.push(format!(
                "{}: id {id} is {message}, acknowledged as {sent:?}",
                recipient(to)
            ));
        }
        if let Some(first) = self.ids.insert((from.clone(), seq), id) {
            tally.duplicates_after_dedup += 1;
            tally.failures.push(format!(
                "{}: {from}'s message {seq} came as {first} and again as {id}",
                recipient(to)
            ));
        }
        let last = self.last_seq.entry(from.clone()).or_insert(0);
        if seq <= *last {
            tally.failures.push(format!(
                "{}: {from}'s message {seq} came after its message {last}",
                recipient(to)
            ));
        }
        *last = (*last).max(seq);
        Some(id)
    }
}

fn delivered(id: u64) -> Message {
    Message::text(json!({"type": "message_delivered", "message_ids": [id.to_string()]}).to_string())
}

fn is_timeout(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(error)
        if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

/// A connected recipient during the burst: reads (answering `message_delivered`, as a
/// device that stored the message) until the killed server's connection ends.
fn read_until_closed(mut client: Client) -> Vec<Value> {
    let deadline = Instant::now() + WAIT * 3;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        match client.read() {
            Ok(Message::Text(text)) => {
                let message: Value = serde_json::from_str(&text).expect("the server sends JSON");
                if message["type"] == "incoming_message" {
                    // The server may be gone already; the read below says so.
                    let _ = client.send(delivered(id_of(&message)));
                }
                got.push(message);
            }
            Ok(_) => {}
            // A quiet moment before the kill, not the end.
            Err(error) if is_timeout(&error) => {}
            Err(_) => break,
        }
    }
    got
}

/// A sender during the burst: sends everything without waiting, then reads answers until
/// the killed server's connection ends, passing each one on as it arrives.
fn send_and_read(
    mut client: Client,
    from: usize,
    sends: Vec<Value>,
    answers: mpsc::Sender<Answer>,
) {
    for message in &sends {
        if client.send(Message::text(message.to_string())).is_err() {
            break;
        }
    }
    let deadline = Instant::now() + WAIT * 3;
    while Instant::now() < deadline {
        match client.read() {
            Ok(Message::Text(text)) => {
                let answer: Value = serde_json::from_str(&text).expect("the server sends JSON");
                let answer = match answer["type"].as_str() {
                    Some("message_received") => Answer::Ack {
                        from,
                        client_msg_id: answer["client_msg_id"].as_u64().expect("client_msg_id"),
                        message_id: id_of(&answer),
                    },
                    Some("error") => Answer::Refused,
                    // Receipts of earlier deliveries.
                    _ => continue,
                };
                if answers.send(answer).is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(error) if is_timeout(&error) => {}
            Err(_) => break,
        }
    }
}

/// The state of one data directory's crash loop.
struct Run {
    rng: Rng,
    tally: Tally,
    inboxes: Vec<Inbox>,
    acked: HashMap<u64, Sent>,
    /// (sender, client_msg_id) -> what that send was.
    plans: HashMap<(usize, u64), Sent>,
    /// Per (sender, recipient): the next sequence number.
    next_seq: HashMap<(usize, usize), u64>,
    /// Per sender: the next client_msg_id, unique over the whole run.
    next_client_msg_id: Vec<u64>,
}

impl Run {
    fn record(&mut self, answer: Answer) {
        match answer {
            Answer::Refused => self.tally.refused += 1,
            Answer::Ack {
                from,
                client_msg_id,
                message_id,
            } => {
                let sent = self.plans[&(from, client_msg_id)];
                match self.acked.insert(message_id, sent) {
                    None => self.tally.acked += 1,
                    Some(before) if before == sent => {}
                    Some(before) => self.tally.failures.push(format!(
                        "id {message_id} acknowledged for {sent:?} and for {before:?}"
                    )),
                }
            }
        }
    }

    /// Connects recipient `to` and reads until every message acknowledged for it so far has
    /// been delivered, or nothing comes within the read timeout; what is still missing then
    /// is lost. Returns the connection for the burst.
    fn check_inbox(&mut self, server: &Server, to: usize) -> Client {
        let mut client = connect(server, &recipient(to));
        let inbox = &self.inboxes[to];
        let mut missing: HashSet<u64> = self
            .acked
            .iter()
            .filter(|(id, sent)| sent.to == to && !inbox.seen.contains(id))
            .map(|(id, _)| *id)
            .collect();
        while !missing.is_empty() {
            let message = match client.read() {
                Ok(Message::Text(text)) => {
                    serde_json::from_str::<Value>(&text).expect("the server sends JSON")
                }
                Ok(_) => continue,
                Err(error) if is_timeout(&error) => break,
                Err(error) => panic!("{} reading its inbox: {error}", recipient(to)),
            };
            if message["type"] == "incoming_message" {
                // A redelivered message is answered too: the device has it, and an
                // unanswered one would come again on every connection.
                client
                    .send(delivered(id_of(&message)))
                    .expect("message_delivered sent");
            }
            let inbox = &mut self.inboxes[to];
            if let Some(id) = inbox.absorb(to, &message, &self.acked, &mut self.tally) {
                missing.remove(&id);
            }
        }
        if !missing.is_empty() {
            self.tally.lost += missing.len() as u64;
            let mut ids: Vec<_> = missing.iter().map(|id| (id, self.acked[id])).collect();
            ids.sort_unstable();
            self.tally.failures.push(format!(
                "{}: {} acknowledged messages never came: {ids:?}",
                recipient(to),
                missing.len()
            ));
        }
        client
    }

    /// The plan of one sender's burst: each message to a recipient drawn at random.
    fn plan(&mut self, from: usize, round: usize) -> Vec<Value> {
        (0..PER_SENDER)
            .map(|_| {
                let to = self.rng.below(RECIPIENTS);
                let seq = self.next_seq.entry((from, to)).or_insert(0);
                *seq += 1;
                let seq = *seq;
                let client_msg_id = self.next_client_msg_id[from];
                self.next_client_msg_id[from] += 1;
                self.plans
                    .insert((from, client_msg_id), Sent { from, to, seq });
                send_message(client_msg_id, &recipient(to), &content(seq, from, round))
            })
            .collect()
    }

    /// Acknowledged ids must increase with the send order of each sender-recipient pair.
    fn check_ack_order(&mut self) {
        let mut pairs: BTreeMap<(usize, usize), BTreeMap<u64, u64>> = BTreeMap::new();
        for (id, sent) in &self.acked {
            pairs
                .entry((sent.from, sent.to))
                .or_default()
                .insert(sent.seq, *id);
        }
        for ((from, to), ids) in pairs {
            let ids: Vec<(&u64, &u64)> = ids.iter().collect();
            for pair in ids.windows(2) {
                let ((seq_a, id_a), (seq_b, id_b)) = (pair[0], pair[1]);
                if id_a >= id_b {
                    self.tally.failures.push(format!(
                        "{} to {}: message {seq_a} got id {id_a}, later message {seq_b} got {id_b}",
                        sender(from),
                        recipient(to)
                    ));
                }
            }
        }
    }
}

/// `kills` SIGKILL-and-restart rounds on one fresh data directory with `durability`.
fn crash_loop(durability: &str, kills: usize, seed: u64) -> Tally {
    let data = tempfile::tempdir().unwrap();
    let (ws, http) = free_addrs();
    let options = || {
        Options::default()
            .data_dir(data.path())
            .listen(ws, http)
            .arg("--durability")
            .arg(durability)
    };
    // Each durability draws from its own stream, so a run of one durability replays the
    // same choices as that part of a run of several.
    let stream = durability.bytes().fold(0u64, |hash, byte| {
        hash.wrapping_mul(31).wrapping_add(byte.into())
    });
    let mut run = Run {
        rng: Rng(seed ^ stream),
        tally: Tally::default(),
        inboxes: (0..RECIPIENTS).map(|_| Inbox::default()).collect(),
        acked: HashMap::new(),
        plans: HashMap::new(),
        next_seq: HashMap::new(),
        next_client_msg_id: vec![1; SENDERS],
    };
    let mut server = Server::start_with(options());
    for round in 0..=kills {
        // Some recipients online during the burst, at least one, never all of them.
        let online = 1 + run.rng.below(RECIPIENTS - 1);
        let mut order: Vec<usize> = (0..RECIPIENTS).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, run.rng.below(i + 1));
        }
        let mut readers: Vec<(usize, JoinHandle<Vec<Value>>)> = Vec::new();
        for to in 0..RECIPIENTS {
            let client = run.check_inbox(&server, to);
            if order[..online].contains(&to) && round < kills {
                readers.push((to, thread::spawn(move || read_until_closed(client))));
            }
        }
        if round == kills || !run.tally.failures.is_empty() {
            break;
        }
        let (answers, received) = mpsc::channel();
        let senders: Vec<JoinHandle<()>> = (0..SENDERS)
            .map(|from| {
                let client = connect(&server, &sender(from));
                let sends = run.plan(from, round);
                let answers = answers.clone();
                thread::spawn(move || send_and_read(client, from, sends, answers))
            })
            .collect();
        drop(answers);
        let kill_after = run.rng.below(SENDERS * PER_SENDER);
        for _ in 0..kill_after {
            match received.recv_timeout(WAIT) {
                Ok(answer) => run.record(answer),
                Err(error) => {
                    run.tally.failures.push(format!(
                        "round {round}: no answer within {WAIT:?} ({error}), {kill_after} awaited"
                    ));
                    break;
                }
            }
        }
        server.signal(libc::SIGKILL);
        assert!(!server.wait_exit().success());
        // At once, on the same ports and data directory: the restart time is from the spawn
        // to the listening line, which comes once every shard has recovered and accepts.
        let spawned = Instant::now();
        server = Server::start_with(options());
        run.tally.restarts.push(spawned.elapsed());
        for handle in senders {
            handle.join().expect("a sender thread");
        }
        for answer in received.try_iter() {
            run.record(answer);
        }
        for (to, handle) in readers {
            for message in handle.join().expect("a recipient thread") {
                let inbox = &mut run.inboxes[to];
                inbox.absorb(to, &message, &run.acked, &mut run.tally);
            }
        }
    }
    run.check_ack_order();
    run.tally
}

fn millis(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}

#[test]
fn sigkill_at_random_points_of_bursts_loses_and_duplicates_nothing_acknowledged() {
    let seed = env_or(
        "SWITCHBOARD_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    let kills = env_or("SWITCHBOARD_CRASH_KILLS", KILLS_DEFAULT);
    let durabilities = env_or("SWITCHBOARD_CRASH_DURABILITIES", "fsync,batch".to_owned());
    println!("crash loop: seed {seed} (SWITCHBOARD_CRASH_SEED={seed} replays its choices)");
    let started = Instant::now();
    let tallies: Vec<(&str, Tally)> = durabilities
        .split(',')
        .map(|durability| (durability, crash_loop(durability, kills, seed)))
        .collect();
    println!(
        "\n| durability | kills | messages acked | refused | lost | duplicates after dedup | \
         duplicates before dedup | restart p50 | restart max |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (durability, tally) in &tallies {
        let mut restarts = tally.restarts.clone();
        restarts.sort_unstable();
        let p50 = restarts
            .get(restarts.len() / 2)
            .copied()
            .unwrap_or_default();
        let max = restarts.last().copied().unwrap_or_default();
        println!(
            "| {durability} | {} | {} | {} | {} | {} | {} | {} | {} |",
            restarts.len(),
            tally.acked,
            tally.refused,
            tally.lost,
            tally.duplicates_after_dedup,
            tally.duplicates_before_dedup,
            millis(p50),
            millis(max),
        );
    }
    println!(
        "\n{SENDERS} senders x {PER_SENDER} messages a round to {RECIPIENTS} recipients, seed \
         {seed}, {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    for (durability, tally) in &tallies {
        assert!(
            tally.failures.is_empty(),
            "durability {durability}, seed {seed}: {:#?}",
            tally.failures
        );
        assert_eq!(tally.lost, 0);
        assert_eq!(tally.duplicates_after_dedup, 0);
        assert_eq!(tally.restarts.len(), kills, "durability {durability}");
        assert!(
            tally.acked > 0,
            "durability {durability}: nothing acknowledged"
        );
    }
}
