//! The JSON body of one POST: `{"hints":[...]}`, each hint as docs/protocol.md, "Push
//! hints", writes it (message ids as decimal strings, as on the WebSocket).

use bytes::Bytes;
use serde::Serialize;

use super::Hint;

#[derive(Serialize)]
struct Body<'a> {
    hints: Vec<HintJson<'a>>,
}

#[derive(Serialize)]
struct HintJson<'a> {
    user: &'a str,
    message_id: String,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
    timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    media: Option<MediaJson<'a>>,
}

#[derive(Serialize)]
struct MediaJson<'a> {
    hash: &'a str,
    mime: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

pub(super) fn encode(batch: &[Hint]) -> Bytes {
    let hints = batch
        .iter()
        .map(|Hint { user, hint }| HintJson {
            user: user.as_str(),
            message_id: hint.message_id.to_string(),
            from: hint.from.as_str(),
            group_id: hint.group.map(|group| group.to_string()),
            timestamp: hint.timestamp_ms,
            content: hint.content.as_deref(),
            media: hint.media.as_ref().map(|media| MediaJson {
                hash: &media.hash,
                mime: &media.mime,
                size: media.size,
                name: media.name.as_deref(),
            }),
        })
        .collect();
    let body = serde_json::to_vec(&Body { hints }).expect("plain structs serialize");
    Bytes::from(body)
}
