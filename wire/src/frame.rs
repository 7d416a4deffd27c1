//! The RFC 6455 frame codec: zero-copy decoding of client frames with in-place unmasking, and encoders for server and client frames.
