//! Sockets and the event loop's readiness, and nothing above them: binding the listeners,
//! waiting until a descriptor is readable or writable, the non-blocking calls that then
//! read and write it, the pool of read buffers, and TLS between a socket and its bytes
//! (`transport.rs`, `tls.rs`, with the certificate in `certs.rs`). It knows no WebSocket, no user and no
//! shard; `session` and `shard` build on it.

pub mod buffers;
pub mod certs;
pub mod io;
pub mod listen;
pub mod readiness;
pub mod tls;
pub mod transport;
