//! `switchboard token USER`: a token signed with the server's secret, which it only reads.

use crate::auth::{self, Authenticator};
use crate::config::{self, TokenArgs};

/// Prints a token for the user, signed with the secret the server uses.
pub fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let user = wire::UserId::parse(&args.user)
        .map_err(|error| anyhow::anyhow!("bad user id {:?}: {error}", args.user))?;
    let (_data_dir, source) = config::resolve_token_secret(&args.secret)?;
    // Only read: a secret made here would not be the server's, and its tokens would be
    // refused. Nothing is written to the data directory.
    let secret = auth::read_secret(&source)?;
    let token = Authenticator::new(&secret).issue(&user, auth::now_secs(), args.ttl)?;
    println!("{token}");
    Ok(())
}
