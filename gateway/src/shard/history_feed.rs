//! A shard's side of history: the message records its log made durable, handed to the
//! history thread in order; the hold on the log's segments until the thread has them for
//! good; and the pages its router asked for, until they come back.
//!
//! The router loop owns one [`HistoryFeed`]. Each setting record it appends, and each message
//! record while someone keeps history, is noted (`appended`); once a commit makes records
//! durable, those up to the durable lsn go to the thread as one [`Feed`] (`durable`), or
//! wait in the backlog while its queue is full. The
//! log must keep every record from the oldest one not yet held by the thread
//! (`hold_from`). A backlog at `history_backlog_records_max` is backpressure: the loop
//! takes no new input until the thread catches up (`full`). A checkpoint's copy of a
//! message the feed already took (an id not above the last one noted) is not noted again.

use std::collections::VecDeque;
use std::sync::mpsc;

use tokio::sync::oneshot;

use router::wal::{Lsn, Record, StoredMessage};
use router::{ConnId, ShardId};
use wire::{
    Correlation, ErrorCode, ErrorMessage, GroupId, HistoryRequest, MessageId, ServerMessage,
    Target, UserId,
};

use crate::storage::history::{
    Fed, FedSetting, Feed, History, Job, PageQuery, PageReply, SettingAnswer, ShardAnswer,
};

#[derive(Debug)]
pub struct HistoryFeed {
    shard: ShardId,
    history: History,
    answers: mpsc::Receiver<ShardAnswer>,
    /// An answer taken off the channel by `has_answer`, not yet by `next_answer`.
    answer: Option<ShardAnswer>,
    /// Durable or not, noted and not yet sent, in lsn order.
    backlog: VecDeque<Noted>,
    /// Who waits for each `Input::Setting` the loop stepped and whose record is not yet
    /// noted, in order: the router appends one record for each, in the same order.
    setting_replies: VecDeque<(UserId, oneshot::Sender<SettingAnswer>)>,
    setting_replies_max: usize,
    backlog_max: usize,
    /// Feeds sent and not yet held: (first lsn, through), in order.
    in_flight: VecDeque<(Lsn, Lsn)>,
    last_noted: Option<MessageId>,
    pages_in_flight: usize,
    pages_in_flight_max: usize,
}

impl HistoryFeed {
    pub fn new(
        shard: ShardId,
        history: History,
        answers: mpsc::Receiver<ShardAnswer>,
        backlog_max: usize,
        pages_in_flight_max: usize,
        setting_replies_max: usize,
    ) -> HistoryFeed {
        HistoryFeed {
            shard,
            history,
            answers,
            answer: None,
            backlog: VecDeque::new(),
            setting_replies: VecDeque::new(),
            setting_replies_max,
            backlog_max,
            in_flight: VecDeque::new(),
            last_noted: None,
            pages_in_flight: 0,
            pages_in_flight_max,
        }
    }

    /// The last record of this shard's log the thread holds for good.
    pub fn held(&self) -> Lsn {
        self.history.held(self.shard)
    }

    /// Whether recovery must hand this record to `appended`: a setting always, a message
    /// while someone keeps history (recovery keeps the rest of the log out of memory).
    pub fn wants(&self, record: &Record) -> bool {
        match record {
            Record::Setting { .. } => true,
            Record::Message(message) => self.wants_message(message),
            _ => false,
        }
    }

    /// Whether the index wants a message record: while someone keeps history, and always
    /// for one naming media, whose receivers it lets read the object.
    fn wants_message(&self, message: &StoredMessage) -> bool {
        message.media.is_some() || self.history.anyone_keeps()
    }

    /// After recovery: every message up to `id` is noted or held (so a checkpoint's later
    /// copy of one is not noted again).
    pub fn noted_through(&mut self, id: Option<MessageId>) {
        self.last_noted = self.last_noted.max(id);
    }

    /// A record appended to the log. `members` says who is in a group now (the router's
    /// `group_members`), asked only for a group message the index wants (someone keeps
    /// history, or it names media).
    pub fn appended(
        &mut self,
        lsn: Lsn,
        record: &Record,
        members: impl FnOnce(GroupId) -> Option<Vec<(UserId, bool)>>,
    ) {
        let message = match record {
            Record::Message(message) => message,
            Record::Setting {
                user,
                history_storage,
            } => {
                // Asked through `ask_setting` (none when recovery read it back).
                let reply = match self.setting_replies.front() {
                    Some((asker, _)) if asker == user => {
                        self.setting_replies.pop_front().map(|(_, reply)| reply)
                    }
                    _ => None,
                };
                self.backlog.push_back(Noted::Setting(FedSetting {
                    lsn,
                    user: user.clone(),
                    history_storage: *history_storage,
                    reply,
                }));
                return;
            }
            _ => return,
        };
        if self.last_noted >= Some(message.id) {
            return;
        }
        self.last_noted = Some(message.id);
        if !self.wants_message(message) {
            // Nobody keeps history and it names no media: the index would write nothing
            // for it, so it costs no copy, no feed and no hold on the log. (A user who
            // turns history on gets the messages the index takes after their setting,
            // which this one precedes.)
            return;
        }
        let members = match message.to {
            Target::Group(group) => members(group)
                .unwrap_or_default()
                .into_iter()
                .map(|(user, _)| user)
                .collect(),
            _ => Vec::new(),
        };
        self.backlog.push_back(Noted::Message(Fed {
            lsn,
            message: message.clone(),
            members,
        }));
    }

    /// Records up to `durable` are in the log for good: hands them to the thread, unless its
    /// queue is full (then they wait for the next commit or tick).
    pub fn durable(&mut self, durable: Lsn) {
        let ready = self.backlog.partition_point(|noted| noted.lsn() <= durable);
        if ready == 0 {
            return;
        }
        let first = self.backlog[0].lsn();
        let mut feed = Feed {
            shard: self.shard,
            through: durable,
            messages: Vec::new(),
            settings: Vec::new(),
        };
        for noted in self.backlog.drain(..ready) {
            match noted {
                Noted::Message(fed) => feed.messages.push(fed),
                Noted::Setting(setting) => feed.settings.push(setting),
            }
        }
        match self.history.try_send(Job::Feed(feed)) {
            Ok(()) => self.in_flight.push_back((first, durable)),
            Err(Job::Feed(feed)) => {
                // Back in front, in lsn order, for the next try.
                let mut back: Vec<Noted> = feed
                    .messages
                    .into_iter()
                    .map(Noted::Message)
                    .chain(feed.settings.into_iter().map(Noted::Setting))
                    .collect();
                back.sort_by_key(Noted::lsn);
                for noted in back.into_iter().rev() {
                    self.backlog.push_front(noted);
                }
            }
            Err(_) => unreachable!("the job given back is the one sent"),
        }
    }

    /// Whether another setting may wait for its record (`ask_setting`).
    pub fn takes_setting(&self) -> bool {
        self.setting_replies.len() < self.setting_replies_max
    }

    /// The loop steps the router with `Input::Setting` for `user` right after: `reply`
    /// is told once the index has taken the record the router appends for it.
    pub fn ask_setting(&mut self, user: UserId, reply: oneshot::Sender<SettingAnswer>) {
        debug_assert!(self.takes_setting());
        self.setting_replies.push_back((user, reply));
    }

    /// The oldest record the log must keep for the thread, if any.
    pub fn hold_from(&mut self) -> Option<Lsn> {
        let held = self.history.held(self.shard);
        while self
            .in_flight
            .front()
            .is_some_and(|&(_, through)| through <= held)
        {
            self.in_flight.pop_front();
        }
        self.in_flight
            .front()
            .map(|&(first, _)| first)
            .or_else(|| self.backlog.front().map(Noted::lsn))
    }

    /// At start: hands the records recovery found to the thread and waits, at most
    /// `timeout`, until it holds them, so that once the shard serves, every message it
    /// acknowledged before a crash is in the history it pages. Blocks the thread: only for
    /// before the shard's loop runs. False if the thread did not catch up in time (the
    /// records stay in the backlog, and the loop goes on feeding them).
    pub fn settle(&mut self, durable: Lsn, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            self.durable(durable);
            if self.backlog.is_empty() && self.hold_from().is_none() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Whether the backlog is at its bound: no new input until the thread takes some.
    pub fn full(&self) -> bool {
        self.backlog.len() >= self.backlog_max
    }

    /// Whether records wait for a queue that was full (the loop retries soon).
    pub fn waiting(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Asks the thread for a page for `conn`; the error to send at once if it cannot.
    pub fn ask(
        &mut self,
        conn: ConnId,
        user: UserId,
        request: HistoryRequest,
    ) -> Option<ServerMessage> {
        let correlation = Correlation::ReqId(request.req_id);
        if self.pages_in_flight >= self.pages_in_flight_max {
            return Some(overloaded(correlation));
        }
        let job = Job::Page {
            query: PageQuery {
                user,
                chat: request.with,
                before: request.before,
                limit: request.limit as usize,
            },
            reply: PageReply::Shard {
                shard: self.shard,
                conn,
                req_id: request.req_id,
            },
        };
        match self.history.try_send(job) {
            Ok(()) => {
                self.pages_in_flight += 1;
                None
            }
            Err(_) => Some(overloaded(correlation)),
        }
    }

    /// Whether the thread sent something back (the loop's last look before it sleeps).
    pub fn has_answer(&mut self) -> bool {
        if self.answer.is_none() {
            self.answer = self.answers.try_recv().ok();
        }
        self.answer.is_some()
    }

    /// The next page (or error) the thread sent back for a connection.
    pub fn next_answer(&mut self) -> Option<ShardAnswer> {
        let answer = self
            .answer
            .take()
            .or_else(|| self.answers.try_recv().ok())?;
        self.pages_in_flight -= 1;
        Some(answer)
    }
}

/// A record on its way to the thread.
#[derive(Debug)]
enum Noted {
    Message(Fed),
    Setting(FedSetting),
}

impl Noted {
    fn lsn(&self) -> Lsn {
        match self {
            Noted::Message(fed) => fed.lsn,
            Noted::Setting(setting) => setting.lsn,
        }
    }
}

fn overloaded(correlation: Correlation) -> ServerMessage {
    ServerMessage::Error(ErrorMessage {
        code: ErrorCode::Overloaded,
        message: "history is busy; retry".into(),
        correlation,
        retry_after_ms: Some(100),
    })
}
