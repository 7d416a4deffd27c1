//! Authentication: the JWT signing secret (given, read from a file, or generated once by
//! `serve` and kept in `<data-dir>/jwt.secret`), issuing tokens for `switchboard token`, which
//! only ever reads the server's secret, and verifying the token of an upgrade request.
//!
//! Tokens are HS256 only: the algorithm is pinned, so a token that names another one (`none`,
//! RS256 with the secret taken as a public key, ...) is refused before its signature is looked
//! at. `exp` is required and honoured with [`EXP_LEEWAY_SECS`] of leeway for clock skew
//! between the issuer and the server; `sub` must be a valid user id.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use wire::UserId;

use crate::config::SecretSource;

/// Seconds a token is still accepted after its `exp`, for clocks that disagree slightly.
pub const EXP_LEEWAY_SECS: u64 = 5;

/// Random bytes of a generated secret; the file holds them as lowercase hex.
const SECRET_RANDOM_BYTES: usize = 32;

/// Why a token was refused. Every variant answers the upgrade with HTTP 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send Authorization: Bearer <jwt> or ?token=<jwt>")]
    Missing,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token algorithm is not HS256")]
    WrongAlgorithm,
    #[error("token has expired")]
    Expired,
    #[error("token lacks the claim {0}")]
    MissingClaim(String),
    #[error("token sub is not a valid user id")]
    BadSubject,
}

impl AuthError {
    /// The HTTP status of the refused upgrade.
    pub fn status(&self) -> u16 {
        401
    }
}

/// The claims we write and read. Fields a token may lack are options, so that a missing claim
/// is reported as such by the validation rather than as a malformed token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Signs and verifies tokens with one secret.
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys are secret and stay out of logs.
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(secret: &[u8]) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = EXP_LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `user` that expires `ttl_secs` after `now_secs`.
    pub fn issue(&self, user: &UserId, now_secs: u64, ttl_secs: u64) -> anyhow::Result<String> {
        let claims = Claims {
            sub: Some(user.as_str().to_owned()),
            exp: Some(now_secs.saturating_add(ttl_secs)),
            iat: Some(now_secs),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .context("cannot sign the token")
    }

    /// The user a token authenticates, checked against the wall clock.
    pub fn verify(&self, token: Option<&str>) -> Result<UserId, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.into_kind() {
                JwtErrorKind::InvalidSignature => AuthError::BadSignature,
                JwtErrorKind::InvalidAlgorithm | JwtErrorKind::InvalidAlgorithmName => {
                    AuthError::WrongAlgorithm
                }
                JwtErrorKind::ExpiredSignature => AuthError::Expired,
                JwtErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim),
                _ => AuthError::Malformed,
            })?;
        let sub = data
            .claims
            .sub
            .ok_or(AuthError::MissingClaim("sub".into()))?;
        UserId::parse(&sub).map_err(|_| AuthError::BadSubject)
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// `switchboard token` found no secret to sign with: it never makes one, since a token signed
/// with a secret the server does not have would only be answered 401. `main` exits 2 on it.
#[derive(Debug, thiserror::Error)]
#[error(
    "no secret: no {} and no --jwt-secret/--jwt-secret-file/SWITCHBOARD_JWT_SECRET; start the \
     server once (it generates one) or pass the server's secret",
    .0.display()
)]
pub struct NoSecret(pub PathBuf);

/// The server's secret: the given text, the content of the given file, or the content of
/// `<data-dir>/jwt.secret`, which is generated here when it does not exist yet.
pub fn load_or_create_secret(source: &SecretSource) -> anyhow::Result<Vec<u8>> {
    match source {
        SecretSource::DataDir(path) => read_or_create_secret_file(path),
        SecretSource::Given(_) | SecretSource::GivenFile(_) => read_secret(source),
    }
}

/// The secret, as [`load_or_create_secret`] finds it, but never made: a missing
/// `<data-dir>/jwt.secret` is [`NoSecret`], and nothing is written.
pub fn read_secret(source: &SecretSource) -> anyhow::Result<Vec<u8>> {
    match source {
        SecretSource::Given(text) if text.is_empty() => {
            anyhow::bail!("the JWT secret is empty")
        }
        SecretSource::Given(text) => Ok(text.as_bytes().to_vec()),
        SecretSource::GivenFile(path) => read_secret_file(path),
        SecretSource::DataDir(path) => match std::fs::symlink_metadata(path) {
            Err(error) if error.kind() == ErrorKind::NotFound => Err(NoSecret(path.clone()).into()),
            _ => read_secret_file(path),
        },
    }
}

fn read_or_create_secret_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let mut random = [0u8; SECRET_RANDOM_BYTES];
    getrandom::fill(&mut random).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    let hex: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    // O_EXCL with the mode at creation: the secret is never readable by others, not even for
    // an instant, and two servers starting at once cannot both write one.
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut file) => {
            file.write_all(format!("{hex}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new JWT secret");
            Ok(hex.into_bytes())
        }
        Err(error) if error.kind() == ErrorKind::AlreadyExists => read_secret_file(path),
        Err(error) => Err(error).with_context(|| {
            format!(
                "cannot create {} (is the data directory writable?)",
                path.display()
            )
        }),
    }
}

/// The secret a file holds, white space around it dropped (an editor's final newline).
fn read_secret_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read the JWT secret file {}", path.display()))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the JWT secret file is readable by others: chmod 600 it");
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the JWT secret file {}", path.display()))?;
    let secret = text.trim();
    anyhow::ensure!(
        !secret.is_empty(),
        "the JWT secret file {} is empty",
        path.display()
    );
    Ok(secret.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    #[test]
    fn round_trip() {
        let auth = Authenticator::new(b"secret");
        let token = auth.issue(&alice(), now_secs(), 60).unwrap();
        assert_eq!(auth.verify(Some(&token)), Ok(alice()));
        let header = token.split('.').next().unwrap();
        let header = URL_SAFE_NO_PAD.decode(header).unwrap();
        assert!(String::from_utf8(header).unwrap().contains("\"HS256\""));
    }

    #[test]
    fn refusals() {
        let auth = Authenticator::new(b"secret");
        assert_eq!(auth.verify(None), Err(AuthError::Missing));
        assert_eq!(auth.verify(Some("")), Err(AuthError::Malformed));
        assert_eq!(auth.verify(Some("a.b.c")), Err(AuthError::Malformed));

        let expired = auth.issue(&alice(), now_secs() - 3600, 60).unwrap();
        assert_eq!(auth.verify(Some(&expired)), Err(AuthError::Expired));

        let forged = Authenticator::new(b"other")
            .issue(&alice(), now_secs(), 60)
            .unwrap();
        assert_eq!(auth.verify(Some(&forged)), Err(AuthError::BadSignature));

        // A token whose payload was changed after signing.
        let token = auth.issue(&alice(), now_secs(), 60).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let claims = format!(r#"{{"sub":"mallory","exp":{}}}"#, now_secs() + 60);
        let tampered_claims = URL_SAFE_NO_PAD.encode(claims);
        parts[1] = &tampered_claims;
        assert_eq!(
            auth.verify(Some(&parts.join("."))),
            Err(AuthError::BadSignature)
        );
    }

    /// A token with these claims, signed by `alg` with `secret`, whatever the claims say.
    fn hand_made(alg: Algorithm, claims: &str, secret: &[u8]) -> String {
        let claims: serde_json::Value = serde_json::from_str(claims).unwrap();
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn claims_and_algorithm_are_checked() {
        let auth = Authenticator::new(b"secret");
        let exp = now_secs() + 60;
        let hs256 = Algorithm::HS256;
        let good = hand_made(hs256, &format!(r#"{{"sub":"bob","exp":{exp}}}"#), b"secret");
        assert_eq!(auth.verify(Some(&good)), Ok(UserId::parse("bob").unwrap()));

        let no_exp = hand_made(hs256, r#"{"sub":"bob"}"#, b"secret");
        assert_eq!(
            auth.verify(Some(&no_exp)),
            Err(AuthError::MissingClaim("exp".into()))
        );
        let no_sub = hand_made(hs256, &format!(r#"{{"exp":{exp}}}"#), b"secret");
        assert_eq!(
            auth.verify(Some(&no_sub)),
            Err(AuthError::MissingClaim("sub".into()))
        );
        let bad_sub = hand_made(hs256, &format!(r#"{{"sub":"g:1","exp":{exp}}}"#), b"secret");
        assert_eq!(auth.verify(Some(&bad_sub)), Err(AuthError::BadSubject));

        let claims = format!(r#"{{"sub":"bob","exp":{exp}}}"#);
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = hand_made(alg, &claims, b"secret");
            assert_eq!(
                auth.verify(Some(&token)),
                Err(AuthError::WrongAlgorithm),
                "{alg:?}"
            );
        }
        // `none` is not an algorithm jsonwebtoken knows: refused before any check of claims.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(&claims)
        );
        assert!(auth.verify(Some(&none)).is_err());
    }

    #[test]
    fn leeway_is_small() {
        let auth = Authenticator::new(b"secret");
        let now = now_secs();
        let just_expired = auth.issue(&alice(), now - 61, 60).unwrap();
        assert_eq!(auth.verify(Some(&just_expired)), Ok(alice()));
        let long_expired = auth.issue(&alice(), now - 60 - 30, 60).unwrap();
        assert_eq!(auth.verify(Some(&long_expired)), Err(AuthError::Expired));
    }

    #[test]
    fn secret_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("jwt.secret");
        let source = SecretSource::DataDir(path.clone());
        let first = load_or_create_secret(&source).unwrap();
        assert_eq!(first.len(), 2 * SECRET_RANDOM_BYTES);
        assert!(first.iter().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = load_or_create_secret(&source).unwrap();
        assert_eq!(first, second);

        let other_dir = tempfile::tempdir().unwrap();
        let other =
            load_or_create_secret(&SecretSource::DataDir(other_dir.path().join("jwt.secret")));
        assert_ne!(other.unwrap(), first, "each new secret is random");
    }

    #[test]
    fn given_secret_wins_and_must_not_be_empty() {
        assert_eq!(
            load_or_create_secret(&SecretSource::Given("s3cret".into())).unwrap(),
            b"s3cret"
        );
        assert!(load_or_create_secret(&SecretSource::Given(String::new())).is_err());
    }

    #[test]
    fn reading_never_creates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("jwt.secret");
        let error = read_secret(&SecretSource::DataDir(path.clone())).unwrap_err();
        assert!(error.downcast_ref::<NoSecret>().is_some(), "{error:#}");
        assert!(error.to_string().contains(&path.display().to_string()));
        assert!(!dir.path().join("data").exists(), "nothing is written");

        let made = load_or_create_secret(&SecretSource::DataDir(path.clone())).unwrap();
        assert_eq!(read_secret(&SecretSource::DataDir(path)).unwrap(), made);
    }

    #[test]
    fn a_given_file_is_read_trimmed_and_never_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let missing = load_or_create_secret(&SecretSource::GivenFile(path.clone()));
        let error = format!("{:#}", missing.unwrap_err());
        assert!(error.contains("cannot read the JWT secret file"), "{error}");
        assert!(!path.exists(), "a given file is never made");

        std::fs::write(&path, "  s3cret\n").unwrap();
        let source = SecretSource::GivenFile(path.clone());
        assert_eq!(load_or_create_secret(&source).unwrap(), b"s3cret");
        assert_eq!(read_secret(&source).unwrap(), b"s3cret");
        std::fs::write(&path, "\n").unwrap();
        let empty = read_secret(&source).unwrap_err().to_string();
        assert!(empty.contains("is empty"), "{empty}");
    }

    #[test]
    fn unwritable_data_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let source = SecretSource::DataDir(file.join("jwt.secret"));
        let error = load_or_create_secret(&source).unwrap_err().to_string();
        assert!(error.contains("cannot create data directory"), "{error}");
    }
}
