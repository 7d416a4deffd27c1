//! Sockets and the event loop's readiness, and nothing above them: binding the listeners,
//! waiting until a descriptor is readable or writable, the non-blocking calls that then
//! read and write it, and the pool of read buffers. It knows no WebSocket, no user and no
//! shard; `session` and `shard` build on it.

pub mod buffers;
pub mod io;
pub mod listen;
pub mod readiness;
