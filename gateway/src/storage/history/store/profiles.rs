//! Profiles in the index's database: `profiles` keyspace, `[user]` ->
//! `[display_name len u16 LE][display_name][about len u16 LE][about][avatar hash, or nothing]`.
//! Written by the history writer thread alone (so that an avatar's count in the media index
//! moves with the profile that names it, in one batch), read by the HTTP thread.

use fjall::{Keyspace, PersistMode};
use wire::{Profile, UserId};

use super::{Store, StoreError};
use crate::storage::media::MediaHash;
use crate::storage::media::index::Pending;

/// A change to `user`'s profile: each field given replaces the stored one; `avatar:
/// Some(None)` removes the avatar. The caller has checked the fields' bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileUpdate {
    pub user: UserId,
    pub display_name: Option<String>,
    pub about: Option<String>,
    pub avatar: Option<Option<MediaHash>>,
}

/// What a change came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileAnswer {
    /// Durable: the profile as it is now.
    Stored(Profile),
    /// The avatar named is not an object the user uploaded: nothing changed.
    AvatarNotUploaded,
}

/// Reads profiles from another thread.
#[derive(Clone)]
pub struct ProfileReader {
    profiles: Keyspace,
}

impl std::fmt::Debug for ProfileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileReader").finish_non_exhaustive()
    }
}

impl ProfileReader {
    /// `user`'s profile: empty fields and no avatar until they set one.
    pub fn get(&self, user: &UserId) -> Result<Profile, StoreError> {
        read(&self.profiles, user)
    }
}

fn empty(user: &UserId) -> Profile {
    Profile {
        user: user.clone(),
        display_name: String::new(),
        about: String::new(),
        avatar: None,
    }
}

fn read(profiles: &Keyspace, user: &UserId) -> Result<Profile, StoreError> {
    match profiles.get(user.as_str())? {
        None => Ok(empty(user)),
        Some(value) => decode(user, &value)
            .ok_or_else(|| StoreError(format!("the profile of {user} is damaged"))),
    }
}

fn encode(profile: &Profile) -> Vec<u8> {
    let mut value = Vec::new();
    for text in [&profile.display_name, &profile.about] {
        // Bounded to 64 and 140 characters (at most 560 bytes) by the caller.
        value.extend_from_slice(&(text.len() as u16).to_le_bytes());
        value.extend_from_slice(text.as_bytes());
    }
    if let Some(hash) = profile.avatar.as_deref().and_then(MediaHash::parse) {
        value.extend_from_slice(&hash.0);
    }
    value
}

fn decode(user: &UserId, mut value: &[u8]) -> Option<Profile> {
    let mut text = || {
        let len = usize::from(u16::from_le_bytes(value.get(..2)?.try_into().ok()?));
        let text = std::str::from_utf8(value.get(2..2 + len)?).ok()?.to_owned();
        value = &value[2 + len..];
        Some(text)
    };
    let display_name = text()?;
    let about = text()?;
    let avatar = match value.len() {
        0 => None,
        32 => Some(MediaHash(value.try_into().ok()?).to_string()),
        _ => return None,
    };
    Some(Profile {
        user: user.clone(),
        display_name,
        about,
        avatar,
    })
}

impl Store {
    pub fn profile_reader(&self) -> ProfileReader {
        ProfileReader {
            profiles: self.profiles.clone(),
        }
    }

    /// Applies `update`, durably before it returns (the answer to the user promises it): the
    /// profile, and the avatars' counts in the media index (an avatar is readable by
    /// everyone and kept while a profile names it).
    pub fn put_profile(
        &self,
        update: &ProfileUpdate,
        now_ms: u64,
    ) -> Result<ProfileAnswer, StoreError> {
        let user = &update.user;
        let old = read(&self.profiles, user)?;
        if let Some(Some(hash)) = &update.avatar
            && !self.media.uploaded_by(user, hash)?
        {
            return Ok(ProfileAnswer::AvatarNotUploaded);
        }
        let new = Profile {
            user: user.clone(),
            display_name: update
                .display_name
                .clone()
                .unwrap_or_else(|| old.display_name.clone()),
            about: update.about.clone().unwrap_or_else(|| old.about.clone()),
            avatar: match &update.avatar {
                Some(avatar) => avatar.map(|hash| hash.to_string()),
                None => old.avatar.clone(),
            },
        };
        let mut batch = self.db.batch();
        if new.avatar != old.avatar {
            let mut pending = Pending::new();
            if let Some(hash) = old.avatar.as_deref().and_then(MediaHash::parse) {
                self.media
                    .avatar(&mut batch, &mut pending, &hash, false, now_ms)?;
            }
            if let Some(hash) = new.avatar.as_deref().and_then(MediaHash::parse) {
                self.media
                    .avatar(&mut batch, &mut pending, &hash, true, now_ms)?;
            }
        }
        batch.insert(&self.profiles, user.as_str(), encode(&new));
        batch.commit()?;
        self.db.persist(PersistMode::SyncData)?;
        Ok(ProfileAnswer::Stored(new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_reads_back_as_written() {
        let user = UserId::parse("alice").unwrap();
        for profile in [
            empty(&user),
            Profile {
                user: user.clone(),
                display_name: "Alice ✈".to_owned(),
                about: "é".repeat(140),
                avatar: Some("ab".repeat(32)),
            },
        ] {
            assert_eq!(decode(&user, &encode(&profile)), Some(profile));
        }
        assert_eq!(decode(&user, &[5, 0, b'a']), None);
    }
}
