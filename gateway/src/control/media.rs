//! The media routes: `POST /v1/media` streams an upload into the blob store, hashing it as
//! it comes, and `GET /v1/media/{hash}` streams an object back, a `Range` of it if asked.
//!
//! An upload holds one body chunk at a time (hyper's, under 1 MiB): each chunk is hashed
//! and written in tokio's blocking pool before the next is read, so the HTTP thread never
//! waits on the disk and a slow disk slows only its upload. A declared `Content-Length`
//! over `media_bytes_max` is answered 413 before any of the body is read (and before a
//! `100 Continue`); a body that grows past it is cut there. Once the bytes are durable
//! under their hash, the history writer thread indexes the object and its uploader's grant
//! (`storage::media::index`), and only then is the upload answered. A download reads
//! `media_read_chunk_bytes` at a time, in the blocking pool too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Semaphore, oneshot};
use wire::{ErrorCode, UserId};

use crate::control::reply::failure;
use crate::storage::history::{History, Job};
use crate::storage::media::{BlobRead, BlobStore, BlobWriter, MediaHash, Upload, mime_allowed};

/// What the media routes count, for `/metrics`.
#[derive(Debug, Default)]
pub struct MediaMetrics {
    pub uploads: AtomicU64,
    /// Uploads whose bytes were stored already (the same bytes, uploaded before).
    pub uploads_deduplicated: AtomicU64,
    pub upload_bytes: AtomicU64,
    pub downloads: AtomicU64,
    pub download_bytes: AtomicU64,
    /// Uploads refused: too large, a type not allowed, too many at once.
    pub uploads_refused: AtomicU64,
}

/// What the routes need.
#[derive(Debug)]
pub struct MediaRoutes {
    pub blobs: Arc<dyn BlobStore>,
    pub history: History,
    pub mime_allowed: Vec<String>,
    pub bytes_max: u64,
    /// Bytes per second one upload is read at, at most; 0: no cap.
    pub upload_bytes_per_s: u64,
    pub read_chunk_bytes: usize,
    /// One permit per upload in progress (`media_uploads_max`).
    pub uploads: Semaphore,
    pub metrics: Arc<MediaMetrics>,
}

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Runs `work` in the blocking pool; a task that panicked is an internal error.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

impl MediaRoutes {
    /// `POST /v1/media` by `user`.
    pub async fn upload(&self, user: UserId, headers: &HeaderMap, body: Body) -> Response {
        let refused = |response: Response| {
            count(&self.metrics.uploads_refused, 1);
            response
        };
        let Some(mime) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|mime| !mime.is_empty() && mime.len() <= 255)
        else {
            return refused(failure(
                ErrorCode::BadRequest,
                "an upload needs its Content-Type",
            ));
        };
        if !mime_allowed(mime, &self.mime_allowed) {
            let refusal = failure(
                ErrorCode::BadRequest,
                &format!("uploads of type {mime} are not allowed here"),
            );
            return refused((StatusCode::UNSUPPORTED_MEDIA_TYPE, refusal).into_response());
        }
        let too_large = || {
            failure(
                ErrorCode::TooLarge,
                &format!("an upload is at most {} bytes", self.bytes_max),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.bytes_max) {
            return refused(too_large());
        }
        let Ok(_permit) = self.uploads.try_acquire() else {
            return refused(failure(
                ErrorCode::Overloaded,
                "too many uploads in progress: try again shortly",
            ));
        };
        let blobs = Arc::clone(&self.blobs);
        let writer = match blocking(move || blobs.begin()).await {
            Some(Ok(writer)) => writer,
            Some(Err(error)) => return internal("cannot store an upload", &error),
            None => return internal("cannot store an upload", &"the writer stopped"),
        };
        let mut writer: Box<dyn BlobWriter> = writer;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut stream = body.into_data_stream();
        let started = tokio::time::Instant::now();
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = match chunk {
                Ok(chunk) => chunk,
                // The client went away or broke the body: nothing is stored (the writer,
                // dropped, deletes its temporary file).
                Err(error) => {
                    return failure(
                        ErrorCode::BadRequest,
                        &format!("the upload's body could not be read: {error}"),
                    );
                }
            };
            size += chunk.len() as u64;
            if size > self.bytes_max {
                return refused(too_large());
            }
            let written = blocking(move || {
                hasher.update(&chunk);
                let written = writer.write(&chunk);
                (writer, hasher, written)
            })
            .await;
            // The cap: the next chunk is read no sooner than the bytes so far allow.
            if self.upload_bytes_per_s > 0 {
                let due = std::time::Duration::from_secs_f64(
                    size as f64 / self.upload_bytes_per_s as f64,
                );
                tokio::time::sleep_until(started + due).await;
            }
            match written {
                Some((back, hashed, Ok(()))) => (writer, hasher) = (back, hashed),
                Some((_, _, Err(error))) => return internal("cannot store an upload", &error),
                None => return internal("cannot store an upload", &"the writer stopped"),
            }
        }
        let hash = MediaHash(hasher.finalize().into());
        let new = match blocking(move || writer.commit(&hash)).await {
            Some(Ok(new)) => new,
            Some(Err(error)) => return internal("cannot store an upload", &error),
            None => return internal("cannot store an upload", &"the writer stopped"),
        };
        // The bytes are durable under their name; now the index, through the writer
        // thread's queue. Waiting for room (in the blocking pool) rather than refusing:
        // bytes stored and not indexed would be kept by nothing.
        let (reply, answer) = oneshot::channel();
        let job = Job::Upload {
            upload: Upload {
                hash,
                size,
                mime: mime.to_owned(),
                user,
                now_ms: now_ms(),
            },
            reply,
        };
        let history = self.history.clone();
        if blocking(move || history.send_waiting(job).is_ok()).await != Some(true) {
            return internal("cannot index an upload", &"the history thread stopped");
        }
        let object = match answer.await {
            Ok(Ok(object)) => object,
            Ok(Err(error)) => return internal("cannot index an upload", &error),
            Err(_) => return internal("cannot index an upload", &"the history thread stopped"),
        };
        count(&self.metrics.uploads, 1);
        count(&self.metrics.upload_bytes, size);
        if !new {
            count(&self.metrics.uploads_deduplicated, 1);
        }
        axum::Json(serde_json::json!({
            "hash": hash.to_string(),
            "size": object.size,
            "mime": object.mime,
        }))
        .into_response()
    }

    /// `GET /v1/media/{hash}` by `user`.
    pub async fn download(&self, user: &UserId, hash: &str, headers: &HeaderMap) -> Response {
        let Some(hash) = MediaHash::parse(hash) else {
            return failure(
                ErrorCode::BadRequest,
                "a media hash is 64 lowercase hex digits",
            );
        };
        let no_such = || failure(ErrorCode::NotFound, "no such media");
        let object = match self.history.media().readable(user, &hash) {
            Ok(Some(object)) => object,
            Ok(None) => return no_such(),
            Err(error) => return internal("cannot read the media index", &error),
        };
        let etag = format!("\"{hash}\"");
        let matches = |name| {
            headers
                .get(name)
                .and_then(|value: &HeaderValue| value.to_str().ok())
                .is_some_and(|value| {
                    value.trim() == "*" || value.split(',').any(|tag| tag.trim() == etag)
                })
        };
        let mut response = Response::builder()
            .header(header::ETAG, &etag)
            .header(header::ACCEPT_RANGES, "bytes")
            // The bytes of a hash never change.
            .header(
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            )
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox",
            );
        if matches(header::IF_NONE_MATCH) {
            return response
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::NOT_MODIFIED.into_response());
        }
        let blobs = Arc::clone(&self.blobs);
        let reader = match blocking(move || blobs.open(&hash)).await {
            Some(Ok(reader)) => reader,
            // Deleted by the expiry sweep since the index was read.
            Some(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => return no_such(),
            Some(Err(error)) => return internal("cannot read media", &error),
            None => return internal("cannot read media", &"the reader stopped"),
        };
        let len = reader.len();
        // A `Range` counts unless `If-Range` names another version.
        let range = match headers.get(header::IF_RANGE) {
            Some(_) if !matches(header::IF_RANGE) => None,
            _ => headers
                .get(header::RANGE)
                .and_then(|value| value.to_str().ok()),
        };
        let (status, start, end) = match range.map(|range| byte_range(range, len)) {
            None | Some(RangeAsk::Whole) => (StatusCode::OK, 0, len),
            Some(RangeAsk::Part { start, end }) => {
                response = response.header(
                    header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{len}", end - 1),
                );
                (StatusCode::PARTIAL_CONTENT, start, end)
            }
            Some(RangeAsk::Unsatisfiable) => {
                let refusal = failure(
                    ErrorCode::BadRequest,
                    &format!("the range is outside the object's {len} bytes"),
                );
                let range = [(header::CONTENT_RANGE, format!("bytes */{len}"))];
                return (StatusCode::RANGE_NOT_SATISFIABLE, range, refusal).into_response();
            }
        };
        count(&self.metrics.downloads, 1);
        let body = Body::from_stream(chunks(
            reader,
            start,
            end,
            self.read_chunk_bytes,
            Arc::clone(&self.metrics),
        ));
        response
            .status(status)
            .header(header::CONTENT_TYPE, &object.mime)
            .header(header::CONTENT_LENGTH, end - start)
            .body(body)
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// The bytes `start..end` of `reader`, `chunk_bytes` at a time, each read in the blocking
/// pool. An error ends the body early, which the client sees as a short download.
fn chunks(
    reader: Box<dyn BlobRead>,
    start: u64,
    end: u64,
    chunk_bytes: usize,
    metrics: Arc<MediaMetrics>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
    futures_util::stream::unfold((reader, start), move |(mut reader, offset)| {
        let metrics = Arc::clone(&metrics);
        async move {
            if offset >= end {
                return None;
            }
            let want =
                usize::try_from(end - offset).map_or(chunk_bytes, |left| left.min(chunk_bytes));
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; want];
                let read = reader.read_at(offset, &mut buf);
                (reader, buf, read)
            })
            .await;
            match read {
                Ok((reader, mut buf, Ok(n))) if n > 0 => {
                    buf.truncate(n);
                    count(&metrics.download_bytes, n as u64);
                    Some((Ok(Bytes::from(buf)), (reader, offset + n as u64)))
                }
                Ok((reader, _, Ok(_))) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the object is shorter than it was",
                    )),
                    (reader, end),
                )),
                Ok((reader, _, Err(error))) => Some((Err(error), (reader, end))),
                Err(_) => None,
            }
        }
    })
}

/// What a `Range` header asks of an object of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// Not a single byte range this server serves in part (several ranges, another unit,
    /// a malformed header): the whole object, as RFC 9110 allows.
    Whole,
    /// Bytes `start..end`.
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

fn byte_range(header: &str, len: u64) -> RangeAsk {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |text: &str| text.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(n) if len > 0 => RangeAsk::Part {
                start: len.saturating_sub(n),
                end: len,
            },
            Some(_) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Whole,
        },
        // `bytes=A-`: from A to the end.
        (false, true) => match parse(first) {
            Some(start) if start < len => RangeAsk::Part { start, end: len },
            Some(_) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Whole,
        },
        // `bytes=A-B`, B inclusive and cut at the end.
        (false, false) => match (parse(first), parse(last)) {
            (Some(start), Some(last)) if start <= last => {
                if start >= len {
                    RangeAsk::Unsatisfiable
                } else {
                    RangeAsk::Part {
                        start,
                        end: last.saturating_add(1).min(len),
                    }
                }
            }
            _ => RangeAsk::Whole,
        },
        (true, true) => RangeAsk::Whole,
    }
}

fn internal(what: &str, error: &dyn std::fmt::Display) -> Response {
    tracing::error!(%error, "{what}");
    failure(ErrorCode::Internal, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let part = |start, end| RangeAsk::Part { start, end };
        assert_eq!(byte_range("bytes=0-99", 1000), part(0, 100));
        assert_eq!(byte_range("bytes=900-", 1000), part(900, 1000));
        assert_eq!(byte_range("bytes=-100", 1000), part(900, 1000));
        assert_eq!(byte_range("bytes=-5000", 1000), part(0, 1000));
        assert_eq!(byte_range("bytes=990-5000", 1000), part(990, 1000));
        assert_eq!(byte_range("bytes=1000-", 1000), RangeAsk::Unsatisfiable);
        assert_eq!(byte_range("bytes=1000-1001", 1000), RangeAsk::Unsatisfiable);
        assert_eq!(byte_range("bytes=-0", 1000), RangeAsk::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-1,5-6", 1000), RangeAsk::Whole);
        assert_eq!(byte_range("items=0-1", 1000), RangeAsk::Whole);
        assert_eq!(byte_range("bytes=5-1", 1000), RangeAsk::Whole);
        assert_eq!(byte_range("bytes=x-1", 1000), RangeAsk::Whole);
        assert_eq!(byte_range("bytes=-", 1000), RangeAsk::Whole);
    }
}
