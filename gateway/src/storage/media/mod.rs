//! Media: the bytes of uploaded files in a content-addressed blob store (`blobs.rs`, the
//! local disk by default, behind the [`BlobStore`] trait so that an object store can take
//! its place), and who may read which (`index.rs`, keyspaces of the history index's
//! database, written by the history writer thread alone).
//!
//! A file is named by the SHA-256 of its bytes ([`MediaHash`]): the same bytes uploaded twice
//! are stored once. Who may read an object: its uploaders, and every user a message
//! referencing it was sent to (both sides of a 1:1 chat, a group's members when it was
//! sent), which the index learns from the log's message records as history does; and
//! everyone once it is someone's avatar. An object no message has referenced for
//! `media_retention_ms` is deleted, bytes and index both.

pub mod blobs;
pub mod index;

pub use blobs::{BlobRead, BlobStore, BlobWriter, LocalBlobs};
pub use index::{MediaObject, MediaReader, Upload};

/// The SHA-256 of an object's bytes: its name everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaHash(pub [u8; 32]);

impl MediaHash {
    /// Exactly 64 lowercase hex digits (what `POST /v1/media` answers and `send_message`
    /// carries); anything else is no hash, so that no text from outside becomes a path.
    pub fn parse(text: &str) -> Option<MediaHash> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut hash = [0; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            hash[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Some(MediaHash(hash))
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

impl std::fmt::Display for MediaHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for MediaHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MediaHash({self})")
    }
}

/// Whether `mime` is one of `allowed`: each entry is a type (`image/png`), a type's family
/// (`image/*`) or `*/*`. Parameters (`; charset=...`) and case do not count.
pub fn mime_allowed(mime: &str, allowed: &[String]) -> bool {
    let essence = mime.split(';').next().unwrap_or("").trim();
    let Some((family, _)) = essence.split_once('/') else {
        return false;
    };
    allowed.iter().any(|pattern| {
        pattern == "*/*"
            || pattern.eq_ignore_ascii_case(essence)
            || pattern
                .strip_suffix("/*")
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(family))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_64_lowercase_hex_digits_and_nothing_else() {
        let text = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let hash = MediaHash::parse(text).expect("a hash");
        assert_eq!(hash.to_string(), text);
        for bad in [
            "",
            &text[1..],
            &format!("{text}0"),
            &text.to_uppercase(),
            "../../../../etc/passwd/../../../../../../../../../../../../../../..",
            &format!("{}g", &text[1..]),
        ] {
            assert_eq!(MediaHash::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn mime_types_match_exactly_or_by_family() {
        let allowed = vec!["image/*".to_owned(), "application/pdf".to_owned()];
        assert!(mime_allowed("image/png", &allowed));
        assert!(mime_allowed("IMAGE/JPEG", &allowed));
        assert!(mime_allowed("application/pdf; x=1", &allowed));
        assert!(!mime_allowed("application/zip", &allowed));
        assert!(!mime_allowed("image", &allowed));
        assert!(!mime_allowed("", &allowed));
        assert!(mime_allowed("text/plain", &["*/*".to_owned()]));
    }
}
