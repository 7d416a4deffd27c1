//! One POST to the webhook over HTTP/1.1 (hyper's client), on a connection kept between
//! POSTs while the receiver keeps it open, within `push_request_timeout_ms` from connecting
//! to the end of the answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;

use crate::config::PushWebhook;

/// Bytes of an answer's body read before the connection is given up: a receiver has
/// nothing to say beyond its status.
const ANSWER_BYTES_MAX: usize = 64 << 10;

pub(super) type Connection = SendRequest<Full<Bytes>>;

/// What became of a POST.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// 2xx.
    Accepted,
    /// A 4xx other than 408 and 429: the same body would get the same answer.
    Refused(u16),
    /// Anything else: tried again after a wait.
    Failed(String),
}

/// POSTs `body`, on `connection` if it is still open, else on a new one; gives back the
/// connection when it may carry the next POST.
pub(super) async fn post(
    webhook: Arc<PushWebhook>,
    connection: Option<Connection>,
    body: Bytes,
    timeout: Duration,
) -> (Option<Connection>, Outcome) {
    match tokio::time::timeout(timeout, exchange(&webhook, connection, body)).await {
        Ok(Ok((connection, status))) => {
            let outcome = match status {
                200..=299 => Outcome::Accepted,
                408 | 429 => Outcome::Failed(format!("answered {status}")),
                400..=499 => Outcome::Refused(status),
                _ => Outcome::Failed(format!("answered {status}")),
            };
            (connection, outcome)
        }
        Ok(Err(error)) => (None, Outcome::Failed(error)),
        Err(_) => (
            None,
            Outcome::Failed(format!("no answer within {} ms", timeout.as_millis())),
        ),
    }
}

async fn exchange(
    webhook: &PushWebhook,
    connection: Option<Connection>,
    body: Bytes,
) -> Result<(Option<Connection>, u16), String> {
    if let Some(mut open) = connection
        && open.ready().await.is_ok()
    {
        // A receiver may close a kept connection just as the POST goes out: then once more
        // on a new one, rather than waiting out a backoff for nothing.
        if let Ok((kept, status)) = send(webhook, &mut open, body.clone()).await {
            return Ok((kept.then_some(open), status));
        }
    }
    let mut fresh = connect(webhook).await?;
    let (kept, status) = send(webhook, &mut fresh, body).await?;
    Ok((kept.then_some(fresh), status))
}

/// One request on `sender`: the status, and whether the connection may carry the next.
async fn send(
    webhook: &PushWebhook,
    sender: &mut Connection,
    body: Bytes,
) -> Result<(bool, u16), String> {
    let request = hyper::Request::post(webhook.path.as_str())
        .header(HOST, webhook.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|error| format!("cannot make the request: {error}"))?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|error| format!("POST failed: {error}"))?;
    let status = answer.status().as_u16();
    // The body is read to its end so that the connection can carry the next POST; one too
    // long, or cut off, costs the connection only.
    let read = Limited::new(answer.into_body(), ANSWER_BYTES_MAX)
        .collect()
        .await;
    Ok((read.is_ok(), status))
}

async fn connect(webhook: &PushWebhook) -> Result<Connection, String> {
    let stream = tokio::net::TcpStream::connect((webhook.host.as_str(), webhook.port))
        .await
        .map_err(|error| format!("cannot connect: {error}"))?;
    // A POST is one small write; Nagle would only hold it back.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP handshake failed: {error}"))?;
    // The connection's I/O runs as its own task; it ends when the sender is dropped or the
    // receiver closes.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
