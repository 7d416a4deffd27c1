//! The HTTP/1.1 WebSocket upgrade handshake (RFC 6455 section 4): request parsing, checks, subprotocol and token choice, and the answer.
