//! The router loop's answers to the control plane (health, a user's status, group
//! requests, history settings, profile changes to announce), taken from its control inbox
//! on each tick.

use router::{GroupAnswer, GroupRefusal, Input};

use super::RouterLoop;
use crate::shard::control_inbox::{ControlRequest, ShardHealth, UserStatus};
use crate::storage::history::SettingAnswer;

impl RouterLoop {
    /// Answers the control plane. Its questions wait at most one tick, and none of them
    /// costs a wake-up across threads.
    pub(super) fn answer_control(&mut self, now_ms: u64) {
        while let Some(request) = self.control.try_next() {
            match request {
                ControlRequest::Health { reply } => {
                    // The asker may have given up (timeout); nothing to do then.
                    let _ = reply.send(ShardHealth {
                        shard_id: self.shard.shard_id,
                        connections: self.shard.conns.borrow().len() as u64,
                    });
                }
                ControlRequest::Status { user, reply } => {
                    let presence = self.router.presence(&user);
                    let _ = reply.send(UserStatus {
                        online: presence.online,
                        last_seen_ms: presence.last_seen_ms,
                    });
                }
                ControlRequest::Group {
                    user,
                    request,
                    reply,
                } => {
                    if self.group_replies.len() >= self.group_replies_max {
                        let _ = reply.send(GroupAnswer::Refused(GroupRefusal::Busy));
                        continue;
                    }
                    self.next_token += 1;
                    let token = self.next_token;
                    self.group_replies.insert(token, reply);
                    let input = Input::Group {
                        token,
                        user,
                        request,
                    };
                    self.router.step(now_ms, input, &mut self.outputs);
                }
                ControlRequest::Setting {
                    user,
                    history_storage,
                    reply,
                } => {
                    if !self.history.takes_setting() {
                        let _ = reply.send(SettingAnswer::Busy);
                        continue;
                    }
                    self.history.ask_setting(user.clone(), reply);
                    let input = Input::Setting {
                        user,
                        history_storage,
                    };
                    self.router.step(now_ms, input, &mut self.outputs);
                }
                ControlRequest::ProfileChanged { profile } => {
                    let input = Input::ProfileChanged { profile };
                    self.router.step(now_ms, input, &mut self.outputs);
                }
            }
        }
    }
}
