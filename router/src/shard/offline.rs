//! Offline hints: a durable message whose recipient (or a member of whose group) has no open
//! connection is reported with `Output::Offline`, for the shell to wake one of their devices.
//! Made where the message is released to its recipients' connections (`gate.rs`,
//! `group_delivery.rs`), so a hint never precedes durability and a retry, which releases
//! nothing, makes none.

use std::sync::Arc;

use wire::{Target, UserId};

use super::RouterShard;
use super::delivery::Stored;
use super::io::{OfflineHint, Output};
use crate::config::OfflineHints;

impl RouterShard {
    /// The hint of `stored` shared by every user it goes to; `None` when hints are off.
    pub(super) fn offline_hint(&self, stored: &Stored) -> Option<Arc<OfflineHint>> {
        let with_content = match self.config.offline_hints {
            OfflineHints::Off => return None,
            OfflineHints::Ids => false,
            OfflineHints::WithContent => !stored.spilled,
        };
        let message = &stored.message;
        let group = match &message.to {
            Target::User(_) => None,
            Target::Group(group) => Some(*group),
        };
        Some(Arc::new(OfflineHint {
            message_id: message.id,
            from: message.from.clone(),
            group,
            timestamp_ms: message.timestamp_ms,
            content: with_content.then(|| message.content.clone()),
            media: if with_content {
                message.media.clone()
            } else {
                None
            },
        }))
    }
}

/// Reports `user`, who has no open connection, as a recipient of the message of `hint`;
/// never its sender, who may have written to themself and closed since.
pub(super) fn hint_offline(user: &UserId, hint: &Arc<OfflineHint>, outputs: &mut Vec<Output>) {
    if *user == hint.from {
        return;
    }
    outputs.push(Output::Offline {
        user: user.clone(),
        hint: Arc::clone(hint),
    });
}
