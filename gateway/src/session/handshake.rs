//! The upgrade handshake without its I/O: the bytes a client sent so far go in, and out
//! comes "read more", the upgrade (route, encoding, the user its token names, and the
//! 101 answer to write), or the refusal with the HTTP answer to write before closing.
//! Reading the socket, the deadline and writing the answer are the connection task's.

use bytes::{Buf as _, BytesMut};
use wire::UserId;
use wire::handshake::{Encoding, HandshakeConfig, HandshakeError, Route};

use crate::auth::{AuthError, Authenticator};

/// What the bytes read so far amount to.
#[derive(Debug)]
pub enum Handshake {
    /// The request head is not complete yet: read more.
    Incomplete,
    /// The request is a valid upgrade: write `answer`, then speak WebSocket.
    Upgrade(Upgrade),
    /// The request is refused: write [`Refusal::answer`], then close.
    Refuse(Refusal),
}

/// An accepted upgrade.
#[derive(Debug)]
pub struct Upgrade {
    pub route: Route,
    pub encoding: Encoding,
    /// The user the token names on /ws; none on /echo.
    pub user: Option<UserId>,
    /// The `101 Switching Protocols` answer.
    pub answer: Vec<u8>,
}

/// Why an upgrade was refused.
#[derive(Debug)]
pub enum Refusal {
    /// The request is not an upgrade this server takes (bad HTTP, wrong path, too large).
    Request(HandshakeError),
    /// The upgrade to /ws carried no valid token: answered 401.
    Login(AuthError),
}

impl Refusal {
    /// The whole HTTP answer: status, headers and the reason as the body.
    pub fn answer(&self) -> Vec<u8> {
        match self {
            Refusal::Request(error) => error.response(),
            Refusal::Login(error) => {
                wire::handshake::error_response(error.status(), &error.to_string())
            }
        }
    }
}

/// Looks at the request head at the start of `buf`. Once the head is complete it is taken
/// off `buf`, so that what is left is the client's first WebSocket bytes.
pub fn answer(buf: &mut BytesMut, config: &HandshakeConfig, auth: &Authenticator) -> Handshake {
    let (mut request, consumed) = match wire::handshake::parse_request(buf, config) {
        Ok(None) => return Handshake::Incomplete,
        Ok(Some(parsed)) => parsed,
        Err(error) => return Handshake::Refuse(Refusal::Request(error)),
    };
    buf.advance(consumed);
    let user = match request.route() {
        Route::Echo => None,
        Route::Messages => match auth.verify(request.take_token().as_deref()) {
            Ok(user) => Some(user),
            Err(error) => return Handshake::Refuse(Refusal::Login(error)),
        },
    };
    Handshake::Upgrade(Upgrade {
        route: request.route(),
        encoding: request.encoding(),
        user,
        answer: wire::handshake::switching_protocols(&request),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(path: &str, extra: &str) -> BytesMut {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        BytesMut::from(head.as_bytes())
    }

    #[test]
    fn a_valid_token_upgrades_and_leaves_the_first_frames() {
        let auth = Authenticator::new(b"secret");
        let now_secs = std::time::UNIX_EPOCH.elapsed().unwrap().as_secs();
        let alice = UserId::parse("alice").unwrap();
        let token = auth.issue(&alice, now_secs, 60).unwrap();
        let config = HandshakeConfig::default();
        let mut buf = request("/ws", &format!("Authorization: Bearer {token}\r\n"));
        let whole = buf.clone();
        buf.truncate(10);
        assert!(matches!(
            answer(&mut buf, &config, &auth),
            Handshake::Incomplete
        ));
        let mut buf = whole;
        buf.extend_from_slice(b"\x81\x80");
        let Handshake::Upgrade(upgrade) = answer(&mut buf, &config, &auth) else {
            panic!("upgraded")
        };
        assert_eq!(upgrade.user, Some(alice));
        assert_eq!(
            (upgrade.route, upgrade.encoding),
            (Route::Messages, Encoding::Json)
        );
        assert!(upgrade.answer.starts_with(b"HTTP/1.1 101"));
        assert_eq!(&buf[..], b"\x81\x80", "the frames after the head stay");
    }

    #[test]
    fn refusals_carry_their_answer() {
        let auth = Authenticator::new(b"secret");
        let config = HandshakeConfig::default();
        let Handshake::Refuse(refusal) = answer(&mut request("/ws", ""), &config, &auth) else {
            panic!("refused")
        };
        assert!(matches!(refusal, Refusal::Login(AuthError::Missing)));
        assert!(refusal.answer().starts_with(b"HTTP/1.1 401"));
        let Handshake::Refuse(refusal) = answer(&mut request("/nope", ""), &config, &auth) else {
            panic!("refused")
        };
        assert!(refusal.answer().starts_with(b"HTTP/1.1 404"));
    }
}
