//! Forming a `fanout` group once its connections are open and before the load starts, in one
//! of two ways (`--group-mode`):
//!
//! - `server`: the group's sender creates it with `POST /v1/groups` on the server's HTTP API
//!   (its own token, the other members in `members`; the creator is a member and admin by
//!   the protocol), and the answer's `group_id` names it. Every other member then waits for
//!   the `group_event` the server sends on creation. The creator's own connection is not
//!   waited on (its copy of the event, if any, is acknowledged during the run).
//! - `join`: for the comparison relays, which have no HTTP API. The group id is made up here
//!   from the sender's user id, and every member, the sender too, sends
//!   `{"type":"join","group_id":..}` on its WebSocket and waits for the relay's answer, a
//!   `group_event` for that group: a relay has subscribed the connection before it answers,
//!   so nothing sent from the start on can miss a member.
//!
//! Either way every `group_event` is acknowledged with `message_delivered`, as a client
//! does, and counted in `group_events`, never as a delivery; a group is formed once every
//! member waited on has its event. All of it is bounded by `--group-setup-timeout`.

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::Fanout;
use crate::cli::GroupMode;
use crate::conn::{
    ServerMessage, WsStream, decode_server_message, encode_join, encode_message_delivered,
};
use crate::http;
use crate::metrics::Counters;
use crate::scenario::{SetupContext, Unit};

/// Forms the group of `unit` (its first connection is the sender) and names it in the unit.
pub(super) async fn form(
    fanout: &Fanout,
    mut unit: Unit,
    context: SetupContext,
) -> Result<Unit, String> {
    let creator = unit
        .conns
        .first()
        .map(|conn| conn.user.clone())
        .ok_or("a group without connections")?;
    let timeout = fanout.setup_timeout;
    let forming = async {
        let (group_id, wait_from) = match fanout.mode {
            GroupMode::Server => {
                let members: Vec<&str> = unit.conns[1..]
                    .iter()
                    .map(|conn| conn.user.as_str())
                    .collect();
                (create(fanout, &creator, &members, &context).await?, 1)
            }
            GroupMode::Join => (join_group_id(&creator), 0),
        };
        let join = fanout.mode == GroupMode::Join;
        let waits = unit.conns[wait_from..]
            .iter_mut()
            .map(|conn| hear_group_event(&mut conn.ws, &conn.user, &group_id, join, &context));
        let heard = futures_util::future::join_all(waits).await;
        match heard.into_iter().find_map(Result::err) {
            Some(error) => Err(error),
            None => Ok(group_id),
        }
    };
    match tokio::time::timeout(timeout, forming).await {
        Ok(Ok(group_id)) => {
            unit.group_id = Some(group_id);
            Ok(unit)
        }
        Ok(Err(error)) => Err(format!("the group of {creator}: {error}")),
        Err(_) => Err(format!(
            "the group of {creator}: not formed within {timeout:?} (--group-setup-timeout): \
             a member had no group_event for it by then"
        )),
    }
}

/// The group id `join` uses for the group whose sender is `creator`: `g:` and the FNV-1a hash
/// of the user id, which holds the run's name and the unit's index, so that two runs against
/// one relay do not share groups.
pub(super) fn join_group_id(creator: &str) -> String {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = creator.bytes().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    });
    format!("g:{hash}")
}

#[derive(Deserialize)]
struct Created {
    group_id: String,
}

/// Whether `text` is a group id as the protocol writes one: `g:` and digits.
pub(super) fn is_group_id(text: &str) -> bool {
    text.strip_prefix("g:")
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// `POST /v1/groups` as `creator`, with `members` (the creator left out: it is a member by
/// the protocol); the id of the new group.
async fn create(
    fanout: &Fanout,
    creator: &str,
    members: &[&str],
    context: &SetupContext,
) -> Result<String, String> {
    let target = fanout
        .http
        .as_ref()
        .ok_or("no HTTP address for --group-mode server")?;
    let token = context
        .connector
        .minter
        .mint(creator)
        .map_err(|error| format!("{error:#}"))?;
    let body = serde_json::json!({"name": format!("{creator} fanout"), "members": members});
    let deadline = tokio::time::Instant::now() + fanout.setup_timeout;
    let answer = loop {
        let answer = http::post_json(
            target,
            "/v1/groups",
            &token,
            &body.to_string(),
            fanout.setup_timeout,
        )
        .await
        .map_err(|error| format!("{error:#}"))?;
        // A server that did not take the request now (503 with Retry-After: its control
        // queue is full while every group forms at once) is asked again when it says, as a
        // client would, until the setup's time is up.
        match answer.retry_after {
            Some(wait) if answer.status == 503 && tokio::time::Instant::now() + wait < deadline => {
                tokio::time::sleep(wait).await;
            }
            _ => break answer,
        }
    };
    if !matches!(answer.status, 200 | 201) {
        return Err(format!(
            "POST {}/v1/groups answered {}: {:.300}",
            target.url,
            answer.status,
            answer.text()
        ));
    }
    let created: Created = serde_json::from_slice(&answer.body).map_err(|error| {
        format!(
            "POST /v1/groups answered {:.300}, not {{\"group_id\": ..}}: {error}",
            answer.text()
        )
    })?;
    if !is_group_id(&created.group_id) {
        return Err(format!(
            "POST /v1/groups answered group id {:?}, not g:<digits>",
            created.group_id
        ));
    }
    Ok(created.group_id)
}

/// Reads `ws` until a `group_event` for `group_id` came (after sending `join` first when
/// `join`), acknowledging every `group_event` on the way.
async fn hear_group_event(
    ws: &mut WsStream,
    user: &str,
    group_id: &str,
    join: bool,
    context: &SetupContext,
) -> Result<(), String> {
    let write_failed = |error| format!("{user}: write failed: {error}");
    if join {
        ws.send(Message::text(encode_join(group_id)))
            .await
            .map_err(write_failed)?;
    }
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("{user}: closed by the server: {frame:?}"));
            }
            Some(Ok(Message::Binary(_))) => {
                Counters::add(&context.counters.unexpected_frames, 1);
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(format!("{user}: {error}")),
            None => return Err(format!("{user}: connection ended")),
        };
        match decode_server_message(text.as_str()) {
            Ok(ServerMessage::GroupEvent {
                group_id: event_group,
                message_id,
            }) => {
                ws.send(Message::text(encode_message_delivered(&[message_id])))
                    .await
                    .map_err(write_failed)?;
                Counters::add(&context.counters.group_events, 1);
                if event_group == group_id {
                    return Ok(());
                }
            }
            Ok(ServerMessage::Error { code, message, .. }) => {
                Counters::add(&context.counters.server_errors, 1);
                let hint = if join {
                    " (a server of --group-mode join speaks {\"type\":\"join\"}, as the relays of bench/peers do)"
                } else {
                    ""
                };
                return Err(format!(
                    "{user}: the server answered {code}: {message}{hint}"
                ));
            }
            Ok(_) => {
                Counters::add(&context.counters.unexpected_frames, 1);
                context
                    .metrics
                    .borrow_mut()
                    .error_sample(format!("{user} got before its group formed: {text:.200}"));
            }
            Err(error) => {
                Counters::add(&context.counters.unexpected_frames, 1);
                context.metrics.borrow_mut().error_sample(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::cli::{CommonArgs, Encoding, FanoutArgs};
    use crate::conn::{Connector, Target, TokenMinter};
    use crate::http::HttpTarget;
    use crate::metrics::Metrics;

    /// Reads one request (head and `Content-Length` body) from `stream`, as text.
    async fn read_request(stream: &mut tokio::net::TcpStream) -> String {
        let mut raw = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request ended early: {raw:?}");
            raw.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|line| line.strip_prefix("Content-Length: "))
                    .map_or(0, |length| length.trim().parse().unwrap());
                if raw.len() >= head_end + 4 + length {
                    return text;
                }
            }
        }
    }

    /// A server-mode `fanout` whose HTTP API is `http`, and a setup context whose tokens are
    /// signed with `s3cret`.
    fn server_mode(http: &str) -> (Fanout, SetupContext) {
        let args = FanoutArgs {
            common: CommonArgs {
                url: String::new(),
                tls_ca: None,
                secret: Default::default(),
                token_ttl: Duration::from_secs(60),
                conns: 3,
                run: None,
                encoding: Encoding::Json,
                threads: None,
                procs: 1,
                source_ips: 1,
                connect_concurrency: 1,
                connect_timeout: Duration::from_secs(1),
                server_pid: None,
                server_metrics: None,
                json: None,
                svg: None,
                quiet: false,
            },
            groups: 1,
            group_size: 3,
            group_mode: GroupMode::Server,
            http_addr: http.to_owned(),
            group_setup_timeout: Duration::from_secs(5),
            rate: 1.0,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            drain: Duration::ZERO,
            content_chars: 0,
        };
        let context = SetupContext {
            metrics: Rc::new(RefCell::new(Metrics::default())),
            counters: Arc::default(),
            connector: Arc::new(Connector {
                targets: Target::resolve("ws://127.0.0.1:9/ws", None).unwrap().into(),
                minter: TokenMinter::new(b"s3cret", Duration::from_secs(60)),
                source_ips: 1,
                timeout: Duration::from_secs(1),
            }),
        };
        (Fanout::new(&args).unwrap(), context)
    }

    /// The server mode's request, against a stand-in for the HTTP API that answers `answer`.
    async fn create_against(answer: &str) -> (Result<String, String>, String) {
        let (created, mut requests) = create_against_each(&[answer]).await;
        (created, requests.pop().unwrap())
    }

    /// The server mode's requests, against a stand-in for the HTTP API that answers the
    /// first with `answers[0]`, the next with `answers[1]`, and so on.
    async fn create_against_each(answers: &[&str]) -> (Result<String, String>, Vec<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = async {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                requests.push(read_request(&mut stream).await);
                stream.write_all(answer.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            }
            requests
        };
        let (fanout, context) = server_mode(&addr.to_string());
        assert_eq!(
            fanout.http.as_ref().map(|http: &HttpTarget| http.addr),
            Some(addr)
        );
        let (created, request) = tokio::join!(
            create(&fanout, "lg-r-0", &["lg-r-1", "lg-r-2"], &context),
            api
        );
        (created, request)
    }

    #[tokio::test]
    async fn the_server_mode_creates_its_group_over_http() {
        let body = r#"{"group_id":"g:12345"}"#;
        let answer = format!(
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (created, request) = create_against(&answer).await;
        assert_eq!(created, Ok("g:12345".to_owned()));
        let (head, json) = request.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/groups HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Content-Type: application/json"), "{head}");
        // The creator's own token: the server makes it the group's admin.
        let token = head
            .lines()
            .find_map(|line| line.strip_prefix("Authorization: Bearer "))
            .unwrap_or_else(|| panic!("no bearer token in {head}"));
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["sub"], "lg-r-0");
        // The other members, the creator left out (it is a member by the protocol).
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(json["members"], serde_json::json!(["lg-r-1", "lg-r-2"]));
        assert!(json["name"].is_string());
    }

    #[tokio::test]
    async fn a_503_with_retry_after_is_asked_again_and_one_without_is_not() {
        let busy =
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 2\r\n\r\n{}";
        let body = r#"{"group_id":"g:7"}"#;
        let created = format!(
            "HTTP/1.1 201 Created\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (answer, requests) = create_against_each(&[busy, busy, &created]).await;
        assert_eq!(answer, Ok("g:7".to_owned()));
        assert_eq!(requests.len(), 3);
        assert!(requests.iter().all(|request| request == &requests[0]));
        let (answer, _) =
            create_against("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}").await;
        assert!(answer.unwrap_err().contains("answered 503"));
    }

    #[tokio::test]
    async fn a_refusal_or_a_strange_answer_names_what_came_back() {
        let (created, _) = create_against(
            "HTTP/1.1 404 Not Found\r\ncontent-length: 20\r\n\r\n{\"code\":\"not_found\"}",
        )
        .await;
        let error = created.unwrap_err();
        assert!(error.contains("answered 404"), "{error}");
        assert!(error.contains("not_found"), "{error}");
        let (created, _) =
            create_against("HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n{\"group_id\":\"7\"}")
                .await;
        let error = created.unwrap_err();
        assert!(error.contains("not g:<digits>"), "{error}");
        let (created, _) = create_against("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
        assert!(created.unwrap_err().contains("group_id"));
    }

    #[test]
    fn group_ids() {
        assert!(is_group_id("g:0"));
        assert!(is_group_id("g:18446744073709551615"));
        assert!(!is_group_id("g:"));
        assert!(!is_group_id("g:12a"));
        assert!(!is_group_id("12"));
        assert!(!is_group_id("lg-r-1"));
        let a = join_group_id("lg-run1-0");
        assert!(is_group_id(&a), "{a}");
        assert_eq!(a, join_group_id("lg-run1-0"));
        assert_ne!(a, join_group_id("lg-run1-10"));
        assert_ne!(a, join_group_id("lg-run2-0"));
    }
}
