//! End-to-end tests of the built `switchboard` binary, driven through real sockets by an independent client (tungstenite). They arrive with the messaging core.
