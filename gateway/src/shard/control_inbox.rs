//! Requests from the control plane (the HTTP thread) to the shards, and their answers.
//!
//! Each shard has one bounded [`ControlInbox`]; the HTTP thread holds the matching
//! [`ControlSender`]s. A shard drains its inbox every 100 ms, so an answer takes at most
//! that long (the router loop answers on its tick). The control plane is never on the
//! message path: a full inbox answers the HTTP request 503 rather than waiting.

use std::sync::mpsc;

use tokio::sync::oneshot;

/// What a shard says when asked whether it is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHealth {
    pub shard_id: u16,
    pub connections: u64,
}

/// A user's presence, as their owner shard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserStatus {
    pub online: bool,
    pub last_seen_ms: Option<u64>,
}

#[derive(Debug)]
pub enum ControlRequest {
    /// Answer at once: the answer proves that the shard's loop turns.
    Health { reply: oneshot::Sender<ShardHealth> },
    /// The presence of a user this shard owns.
    Status {
        user: wire::UserId,
        reply: oneshot::Sender<UserStatus>,
    },
    /// A group request on behalf of `user`, for the router half: answered once the log is
    /// durable up to what the answer says.
    Group {
        user: wire::UserId,
        request: router::GroupRequest,
        reply: oneshot::Sender<router::GroupAnswer>,
    },
    /// A user (owned by this shard) chose `history_storage`: logged, then answered once the
    /// history index has taken it.
    Setting {
        user: wire::UserId,
        history_storage: u8,
        reply: oneshot::Sender<crate::storage::history::SettingAnswer>,
    },
    /// A user (owned by this shard) changed their profile, which is durable already: tell
    /// their presence subscribers and their devices. Nothing to answer.
    ProfileChanged { profile: wire::Profile },
}

/// The HTTP thread's end of one shard's control inbox.
#[derive(Debug, Clone)]
pub struct ControlSender {
    requests: mpsc::SyncSender<ControlRequest>,
}

/// Why a request did not reach its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("the shard's control inbox is full")]
    Full,
    #[error("the shard has stopped")]
    Stopped,
}

impl ControlSender {
    pub fn send(&self, request: ControlRequest) -> Result<(), ControlError> {
        self.requests
            .try_send(request)
            .map_err(|error| match error {
                mpsc::TrySendError::Full(_) => ControlError::Full,
                mpsc::TrySendError::Disconnected(_) => ControlError::Stopped,
            })
    }
}

/// The shard's end.
#[derive(Debug)]
pub struct ControlInbox {
    requests: mpsc::Receiver<ControlRequest>,
}

impl ControlInbox {
    /// The next waiting request, if any; never blocks.
    pub fn try_next(&self) -> Option<ControlRequest> {
        self.requests.try_recv().ok()
    }
}

/// One shard's inbox, holding at most `control_requests_max` requests.
pub fn channel(control_requests_max: usize) -> (ControlSender, ControlInbox) {
    let (requests, inbox) = mpsc::sync_channel(control_requests_max);
    (ControlSender { requests }, ControlInbox { requests: inbox })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_inbox_refuses_and_a_dropped_one_says_stopped() {
        let (sender, inbox) = channel(1);
        let (reply, mut answer) = oneshot::channel();
        sender.send(ControlRequest::Health { reply }).unwrap();
        let (reply, _) = oneshot::channel();
        assert_eq!(
            sender.send(ControlRequest::Health { reply }),
            Err(ControlError::Full)
        );
        match inbox.try_next() {
            Some(ControlRequest::Health { reply }) => reply
                .send(ShardHealth {
                    shard_id: 0,
                    connections: 2,
                })
                .unwrap(),
            other => panic!("expected a health request, got {other:?}"),
        }
        assert_eq!(answer.try_recv().unwrap().connections, 2);
        assert!(inbox.try_next().is_none());
        drop(inbox);
        let (reply, _) = oneshot::channel();
        assert_eq!(
            sender.send(ControlRequest::Health { reply }),
            Err(ControlError::Stopped)
        );
    }
}
