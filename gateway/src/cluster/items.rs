//! The items one node sends another in a stream entry, and their bytes: one item a line, its
//! fields split by tabs (user ids hold neither), its message in the JSON of
//! docs/protocol.md, which never holds a raw newline.
//!
//! - `d\t<user>[,<user>...]\t<server message>`: for the connections of these users on the
//!   receiving node (a message the router shares, such as a group's, goes once for all its
//!   users there; ids hold no comma).
//! - `f\t<node>\t<ms>\t<user>\t<client message>`: a client message of `user`, who is
//!   connected to node `node`, for the receiving node, which owns what it names; `ms` is when
//!   node `node` sent it (Unix ms, by its clock).

use wire::{ClientMessage, ServerMessage, UserId};

/// One item, read from an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Deliver {
        users: Vec<UserId>,
        message: ServerMessage,
    },
    Forward {
        node: u8,
        sent_ms: u64,
        user: UserId,
        message: ClientMessage,
    },
}

/// Appends a `d` item for `users` to `out`.
pub fn put_deliver(out: &mut Vec<u8>, users: &[UserId], message: &ServerMessage) {
    out.extend_from_slice(b"d\t");
    for (index, user) in users.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(user.as_str().as_bytes());
    }
    out.push(b'\t');
    wire::json::encode_server(message, out);
    out.push(b'\n');
}

/// Appends an `f` item to `out`.
pub fn put_forward(
    out: &mut Vec<u8>,
    node: u8,
    sent_ms: u64,
    user: &UserId,
    message: &ClientMessage,
) {
    out.extend_from_slice(b"f\t");
    out.extend_from_slice(node.to_string().as_bytes());
    out.push(b'\t');
    out.extend_from_slice(sent_ms.to_string().as_bytes());
    out.push(b'\t');
    out.extend_from_slice(user.as_str().as_bytes());
    out.push(b'\t');
    wire::json::encode_client(message, out);
    out.push(b'\n');
}

/// The items of an entry, each read on its own: a line that is not an item is `Err`, and
/// the others still count.
pub fn read(entry: &[u8], limits: &wire::Limits) -> Vec<Result<Item, String>> {
    entry
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| read_line(line, limits))
        .collect()
}

fn read_line(line: &[u8], limits: &wire::Limits) -> Result<Item, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_owned())?;
    let user = |text: &str| UserId::parse(text).map_err(|error| error.to_string());
    match text.split_once('\t') {
        Some(("d", rest)) => {
            let (to, json) = rest.split_once('\t').ok_or("a d item has 3 fields")?;
            let users = to.split(',').map(user).collect::<Result<Vec<_>, _>>()?;
            let message = wire::json::decode_server(json.as_bytes(), limits)
                .map_err(|error| error.to_string())?;
            Ok(Item::Deliver { users, message })
        }
        Some(("f", rest)) => {
            let mut fields = rest.splitn(4, '\t');
            let (Some(node), Some(sent_ms), Some(from), Some(json)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err("an f item has 5 fields".to_owned());
            };
            let sent_ms = sent_ms.parse::<u64>().map_err(|_| "no time".to_owned())?;
            let node = node
                .parse::<u8>()
                .ok()
                .filter(|node| *node < router::NODES_MAX)
                .ok_or("no such node")?;
            let message = wire::json::decode_client(json.as_bytes(), limits)
                .map_err(|error| error.to_string())?;
            Ok(Item::Forward {
                node,
                sent_ms,
                user: user(from)?,
                message,
            })
        }
        _ => Err("not an item".to_owned()),
    }
}
