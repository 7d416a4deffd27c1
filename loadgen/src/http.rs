//! A small HTTP/1.1 client for the server's JSON API, which `fanout` uses to create its
//! groups (`POST /v1/groups`) before the load starts, and `history` to set its reader's
//! `history_storage` (`PUT /v1/user/settings`) before it seeds the chat.
//!
//! One request per TCP connection with `Connection: close`, the answer read to the end of the
//! stream (bounded) and parsed with `httparse`; a body with `Content-Length` or in chunks.
//! It is not on any measured path: a handful of requests per run, so a pooled client crate
//! would buy nothing but dependencies.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;

/// Largest answer read, head and body: an API answer is a small JSON object.
pub const ANSWER_BYTES_MAX: usize = 64 * 1024;

/// Most header lines an answer may have.
const HEADERS_MAX: usize = 64;

/// Where the server's HTTP API listens: the URL as given, the address it resolves to, and the
/// `Host` header that names it.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// `http://HOST:PORT`, for messages.
    pub url: String,
    pub addr: SocketAddr,
    pub host: String,
}

impl HttpTarget {
    /// `HOST:PORT` or `http://HOST:PORT` (a path after it is ignored: the routes are
    /// absolute).
    pub fn resolve(text: &str) -> anyhow::Result<HttpTarget> {
        let url = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{text:?} is neither HOST:PORT nor an http:// URL"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "{url}: only http:// URLs are supported"
        );
        let authority = uri.authority().context("the URL names no host")?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host}"))?
            .min_by_key(|addr| !addr.is_ipv4())
            .with_context(|| format!("{host} has no address"))?;
        Ok(HttpTarget {
            url: format!("http://{authority}"),
            addr,
            host: authority.as_str().to_owned(),
        })
    }
}

/// An answer: its status and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After`, when the answer had one in seconds.
    pub retry_after: Option<Duration>,
}

impl Answer {
    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `POST path` with a JSON body and a bearer token; the answer whatever its status. Gives up
/// after `timeout`.
pub async fn post_json(
    target: &HttpTarget,
    path: &str,
    bearer: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    request_json(target, "POST", path, bearer, body, timeout).await
}

/// `PUT path` with a JSON body and a bearer token; the answer whatever its status. Gives up
/// after `timeout`.
pub async fn put_json(
    target: &HttpTarget,
    path: &str,
    bearer: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    request_json(target, "PUT", path, bearer, body, timeout).await
}

/// `method path` with a JSON body and a bearer token.
async fn request_json(
    target: &HttpTarget,
    method: &str,
    path: &str,
    bearer: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        target.host,
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("cannot connect to {}", target.addr))?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        // One byte more than allowed, to tell a full answer from a cut one.
        let limit = u64::try_from(ANSWER_BYTES_MAX + 1).unwrap_or(u64::MAX);
        (&mut stream).take(limit).read_to_end(&mut raw).await?;
        anyhow::ensure!(
            raw.len() <= ANSWER_BYTES_MAX,
            "the answer is longer than {ANSWER_BYTES_MAX} bytes"
        );
        parse_answer(&raw)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
        .with_context(|| format!("{method} {}{path}", target.url))
}

/// Parses a whole answer, as read up to the end of the stream.
pub fn parse_answer(raw: &[u8]) -> anyhow::Result<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw).context("not an HTTP answer")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => anyhow::bail!("the answer ended inside its head"),
    };
    let status = response.code.context("an answer without a status")?;
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| String::from_utf8_lossy(header.value).trim().to_owned())
    };
    let rest = &raw[head_len..];
    let chunked = header("transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .with_context(|| format!("Content-Length {length:?}"))?;
        anyhow::ensure!(
            rest.len() >= length,
            "the answer ended after {} of its {length} body bytes",
            rest.len()
        );
        rest[..length].to_vec()
    } else {
        // Neither: the body runs to the end of the stream.
        rest.to_vec()
    };
    let retry_after = header("retry-after")
        .and_then(|value| value.parse::<u64>().ok())
        .map(Duration::from_secs);
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}

/// The body of a chunked answer.
fn dechunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|pair| pair == b"\r\n")
            .context("a chunk size without its line end")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).context("a chunk size")?;
        // Chunk extensions (after `;`) say nothing the body needs.
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        anyhow::ensure!(rest.len() >= size + 2, "the answer ended inside a chunk");
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: Result<(u16, &str), ()>) {
        let parsed = parse_answer(raw.as_bytes())
            .map(|answer| (answer.status, answer.text()))
            .map_err(|_| ());
        assert_eq!(
            parsed,
            expected.map(|(status, body)| (status, body.to_owned())),
            "{raw:?}"
        );
    }

    #[test]
    fn answers() {
        check(
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{\"group_id\":\"g:123\"}",
            Ok((201, r#"{"group_id":"g:123"}"#)),
        );
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"gro\r\ne;x=1\r\nup_id\":\"g:12\"}\r\n0\r\n\r\n",
            Ok((200, r#"{"group_id":"g:12"}"#)),
        );
        check(
            "HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nno such route",
            Ok((404, "no such route")),
        );
        check(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            Err(()),
        );
        check("HTTP/1.1 200 OK\r\ncontent-len", Err(()));
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc",
            Err(()),
        );
        check("SSH-2.0-OpenSSH\r\n\r\n", Err(()));
    }

    #[test]
    fn targets() {
        let target = HttpTarget::resolve("http://127.0.0.1:8081").unwrap();
        assert_eq!(target.addr, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(target.host, "127.0.0.1:8081");
        assert_eq!(target.url, "http://127.0.0.1:8081");
        let bare = HttpTarget::resolve("127.0.0.1:9").unwrap();
        assert_eq!(bare.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(bare.url, "http://127.0.0.1:9");
        assert!(HttpTarget::resolve("https://127.0.0.1:8081").is_err());
        assert!(HttpTarget::resolve("ws://127.0.0.1:8081").is_err());
        assert!(HttpTarget::resolve("not a url").is_err());
    }
}
