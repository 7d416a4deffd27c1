//! The JSON encoding of the message model, as `docs/protocol.md` writes it.
