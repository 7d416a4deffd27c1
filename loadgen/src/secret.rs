//! Finding the server's JWT secret the way the server does, so that a load generator started
//! beside a server with its defaults needs no secret on its command line.
//!
//! The order: `--jwt-secret`, then `--jwt-secret-file`, then `SWITCHBOARD_JWT_SECRET`, then
//! `<data-dir>/jwt.secret` (default `./data`, the server's default data directory, where it
//! writes a random secret on its first start). A source that is named but unusable (an
//! unreadable or empty file, an empty flag) is an error rather than a reason to try the next:
//! falling through would mint tokens with some other secret and fail every upgrade later, far
//! from the cause. Only the data directory's file may be absent, and when it is, the error
//! lists everything that was tried.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{Context as _, bail};

use crate::cli::SecretArgs;

/// The environment variable the server reads its secret from.
pub const SECRET_ENV: &str = "SWITCHBOARD_JWT_SECRET";

/// The secret file's name in the server's data directory.
pub const SECRET_FILE_NAME: &str = "jwt.secret";

/// The secret from `args` or `env` (the value of [`SECRET_ENV`], if set).
pub fn resolve(args: &SecretArgs, env: Option<OsString>) -> anyhow::Result<String> {
    if let Some(secret) = &args.jwt_secret {
        if secret.is_empty() {
            bail!("--jwt-secret is empty");
        }
        return Ok(secret.clone());
    }
    if let Some(path) = &args.jwt_secret_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --jwt-secret-file {}", path.display()))?;
        return nonempty(&text, path);
    }
    // An empty variable counts as unset, as clap treats it for the server.
    if let Some(value) = env.filter(|value| !value.is_empty()) {
        return value
            .into_string()
            .map_err(|_| anyhow::anyhow!("{SECRET_ENV} is not valid UTF-8"));
    }
    let path = args.data_dir.join(SECRET_FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => nonempty(&text, &path),
        Err(error) if error.kind() == ErrorKind::NotFound => bail!(
            "no JWT secret: no --jwt-secret, no --jwt-secret-file, {SECRET_ENV} is not set, \
             and {} does not exist (the server writes it in its --data-dir on its first \
             start: give the server's --data-dir here)",
            path.display()
        ),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The secret in a file's `text`: the server ignores the whitespace around it (the newline it
/// writes after it), so this does too.
fn nonempty(text: &str, path: &Path) -> anyhow::Result<String> {
    let secret = text.trim();
    if secret.is_empty() {
        bail!("{} holds no secret (it is empty)", path.display());
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn args(flag: Option<&str>, file: Option<PathBuf>, data_dir: &Path) -> SecretArgs {
        SecretArgs {
            jwt_secret: flag.map(str::to_owned),
            jwt_secret_file: file,
            data_dir: data_dir.to_owned(),
        }
    }

    #[test]
    fn each_source_beats_the_ones_after_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SECRET_FILE_NAME), "from-data-dir\n").unwrap();
        let file = dir.path().join("given.secret");
        std::fs::write(&file, "  from-file\n").unwrap();
        let env = || Some(OsString::from("from-env"));

        let all = args(Some("from-flag"), Some(file.clone()), dir.path());
        assert_eq!(resolve(&all, env()).unwrap(), "from-flag");
        let no_flag = args(None, Some(file), dir.path());
        assert_eq!(resolve(&no_flag, env()).unwrap(), "from-file");
        let env_and_dir = args(None, None, dir.path());
        assert_eq!(resolve(&env_and_dir, env()).unwrap(), "from-env");
        assert_eq!(resolve(&env_and_dir, None).unwrap(), "from-data-dir");
        // An empty variable is no variable.
        assert_eq!(
            resolve(&env_and_dir, Some(OsString::new())).unwrap(),
            "from-data-dir"
        );
    }

    #[test]
    fn nothing_found_names_every_source_tried() {
        let dir = tempfile::tempdir().unwrap();
        let error = resolve(&args(None, None, dir.path()), None)
            .unwrap_err()
            .to_string();
        for tried in [
            "--jwt-secret",
            "--jwt-secret-file",
            SECRET_ENV,
            &dir.path().join(SECRET_FILE_NAME).display().to_string(),
        ] {
            assert!(error.contains(tried), "{tried} not in {error:?}");
        }
    }

    #[test]
    fn a_named_source_that_is_unusable_is_an_error_not_a_fall_through() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SECRET_FILE_NAME), "from-data-dir\n").unwrap();
        let env = || Some(OsString::from("from-env"));
        assert!(resolve(&args(Some(""), None, dir.path()), env()).is_err());
        let missing = dir.path().join("missing.secret");
        let error = resolve(&args(None, Some(missing.clone()), dir.path()), env()).unwrap_err();
        assert!(
            format!("{error:#}").contains(&missing.display().to_string()),
            "{error:#}"
        );
        let blank = dir.path().join("blank.secret");
        std::fs::write(&blank, " \n").unwrap();
        assert!(resolve(&args(None, Some(blank), dir.path()), env()).is_err());
        let empty_dir = tempfile::tempdir().unwrap();
        std::fs::write(empty_dir.path().join(SECRET_FILE_NAME), "").unwrap();
        assert!(resolve(&args(None, None, empty_dir.path()), None).is_err());
    }
}
