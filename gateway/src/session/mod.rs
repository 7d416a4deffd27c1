//! One connection's life as a client sees it: the upgrade handshake and its login, then
//! WebSocket frames decoded into messages in the connection's encoding, until either side
//! closes. It may use `net` (the socket) and `auth`; it never touches the router or another
//! shard except through what the shard hands it.

pub mod codec;
pub mod conn;
