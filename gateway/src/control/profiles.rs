//! The profile routes: `GET /v1/users/{user_id}/profile` (any authenticated user) and
//! `PUT /v1/users/{me}/profile` (only its owner). A profile lives in the history index's
//! database, written by its writer thread (which also counts the avatar in the media index,
//! so that an avatar is readable by everyone and kept while a profile names it); once the
//! change is durable, the user's owner shard tells their presence subscribers and their own
//! devices with a `profile_changed`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::oneshot;
use wire::{ErrorCode, PROFILE_ABOUT_CHARS_MAX, PROFILE_NAME_CHARS_MAX, Profile, UserId};

use crate::control::reply::failure;
use crate::metrics::ShardMetrics;
use crate::shard::control_inbox::{ControlRequest, ControlSender};
use crate::storage::history::{History, Job, ProfileAnswer, ProfileUpdate};
use crate::storage::media::MediaHash;

/// What the routes need.
#[derive(Debug, Clone, Copy)]
pub struct ProfileRoutes<'a> {
    pub history: &'a History,
    pub shards: &'a [(ControlSender, Arc<ShardMetrics>)],
    pub timeout: Duration,
}

/// The body of a `PUT`: each field given replaces the stored one; `"avatar": null` removes
/// the avatar. Any other field is refused, so that a misspelt one is not silently lost.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    display_name: Option<String>,
    about: Option<String>,
    #[serde(default, deserialize_with = "present")]
    avatar: Option<Option<String>>,
}

/// `Some(None)` for a `null`, so that "absent" and "null" differ.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

fn body(profile: &Profile) -> Response {
    axum::Json(serde_json::json!({
        "user": profile.user.as_str(),
        "display_name": profile.display_name,
        "about": profile.about,
        "avatar": profile.avatar,
    }))
    .into_response()
}

fn parse_user(text: &str) -> Result<UserId, Box<Response>> {
    UserId::parse(text)
        .map_err(|error| Box::new(failure(ErrorCode::BadRequest, &error.to_string())))
}

impl ProfileRoutes<'_> {
    /// `{"user","display_name","about","avatar"}` of any user; empty fields and a `null`
    /// avatar for one who never set them.
    pub fn get(self, user: &str) -> Response {
        let user = match parse_user(user) {
            Ok(user) => user,
            Err(response) => return *response,
        };
        match self.history.profiles().get(&user) {
            Ok(profile) => body(&profile),
            Err(error) => {
                tracing::error!(%error, "cannot read a profile");
                failure(ErrorCode::Internal, "the profile cannot be read")
            }
        }
    }

    /// Changes the caller's own profile.
    pub async fn put(self, caller: UserId, user: &str, bytes: &[u8]) -> Response {
        let user = match parse_user(user) {
            Ok(user) => user,
            Err(response) => return *response,
        };
        if user != caller {
            return failure(ErrorCode::Forbidden, "only its owner changes a profile");
        }
        let update = match update(user, bytes) {
            Ok(update) => update,
            Err(message) => return failure(ErrorCode::BadRequest, &message),
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let (reply, answer) = oneshot::channel();
        let job = Job::Profile {
            update,
            now_ms,
            reply,
        };
        if self.history.try_send(job).is_err() {
            return failure(ErrorCode::Overloaded, "the profile store is busy");
        }
        let profile = match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(Ok(ProfileAnswer::Stored(profile)))) => profile,
            Ok(Ok(Ok(ProfileAnswer::AvatarNotUploaded))) => {
                return failure(
                    ErrorCode::BadRequest,
                    "avatar must be the hash of a picture you uploaded (POST /v1/media)",
                );
            }
            Ok(Ok(Err(error))) => {
                tracing::error!(%error, "cannot write a profile");
                return failure(ErrorCode::Internal, "the profile cannot be written");
            }
            _ => {
                return failure(
                    ErrorCode::Overloaded,
                    "the profile store did not answer in time",
                );
            }
        };
        // Durable: now tell whoever watches. A full inbox loses the announcement only (the
        // profile is stored; a client reads it when it next asks), so it is not waited for.
        let owner = usize::from(router::owner_shard(&profile.user, self.shards.len() as u16));
        let announce = ControlRequest::ProfileChanged {
            profile: profile.clone(),
        };
        if let Err(error) = self.shards[owner].0.send(announce) {
            tracing::warn!(%error, shard = owner, "a profile change was not announced");
        }
        body(&profile)
    }
}

/// The change a body asks for, within the profile's bounds.
fn update(user: UserId, bytes: &[u8]) -> Result<ProfileUpdate, String> {
    let body: Body = serde_json::from_slice(bytes).map_err(|error| format!("bad body: {error}"))?;
    if let Some(name) = &body.display_name
        && name.chars().count() > PROFILE_NAME_CHARS_MAX
    {
        return Err(format!(
            "display_name is at most {PROFILE_NAME_CHARS_MAX} characters"
        ));
    }
    if let Some(about) = &body.about
        && about.chars().count() > PROFILE_ABOUT_CHARS_MAX
    {
        return Err(format!(
            "about is at most {PROFILE_ABOUT_CHARS_MAX} characters"
        ));
    }
    let avatar = match body.avatar {
        None => None,
        Some(None) => Some(None),
        Some(Some(text)) => Some(Some(MediaHash::parse(&text).ok_or_else(|| {
            "avatar is a media hash: 64 lowercase hex characters".to_owned()
        })?)),
    };
    Ok(ProfileUpdate {
        user,
        display_name: body.display_name,
        about: body.about,
        avatar,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_changes_only_what_it_names() {
        let alice = UserId::parse("alice").unwrap();
        let hash = "ab".repeat(32);
        let update = |text: &str| update(alice.clone(), text.as_bytes());
        let all = update(&format!(
            r#"{{"display_name":"Alice","about":"hi","avatar":"{hash}"}}"#
        ))
        .unwrap();
        assert_eq!(all.display_name.as_deref(), Some("Alice"));
        assert_eq!(all.avatar, Some(MediaHash::parse(&hash)));
        let some = update(r#"{"about":"x"}"#).unwrap();
        assert_eq!((some.display_name, some.avatar), (None, None));
        assert_eq!(update(r#"{"avatar":null}"#).unwrap().avatar, Some(None));
        for bad in [
            r#"{"display_name":1}"#,
            r#"{"nickname":"x"}"#,
            r#"{"avatar":"../x"}"#,
            "[]",
            "",
        ] {
            assert!(update(bad).is_err(), "{bad}");
        }
        let long = "é".repeat(PROFILE_NAME_CHARS_MAX + 1);
        assert!(update(&format!(r#"{{"display_name":"{long}"}}"#)).is_err());
        let fits = "é".repeat(PROFILE_NAME_CHARS_MAX);
        assert!(update(&format!(r#"{{"display_name":"{fits}"}}"#)).is_ok());
        let long = "x".repeat(PROFILE_ABOUT_CHARS_MAX + 1);
        assert!(update(&format!(r#"{{"about":"{long}"}}"#)).is_err());
    }
}
