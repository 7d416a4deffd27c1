//! The push receiver's address (`--push-webhook`): an `http://` URL, split once at start
//! into what a connection and a request need, so that a bad one stops the start with the
//! setting named rather than failing every POST later.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context as _, bail};

/// Where the push thread POSTs hints: `http://HOST[:PORT]/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushWebhook {
    /// The URL as given, for logs.
    pub url: String,
    /// The host to connect to, without the brackets of an IPv6 address.
    pub host: String,
    pub port: u16,
    /// The `Host` header: the URL's authority.
    pub authority: String,
    /// The request target: path and query, `/` when the URL has none.
    pub path: String,
}

impl FromStr for PushWebhook {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<PushWebhook> {
        let uri: hyper::Uri = text
            .parse()
            .with_context(|| format!("push_webhook {text:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => bail!(
                "push_webhook {text:?}: https is not supported; give an http:// URL (a relay on \
                 the same host or network can forward the hints over TLS)"
            ),
            _ => bail!("push_webhook {text:?}: the URL must start with http://"),
        }
        let authority = uri
            .authority()
            .with_context(|| format!("push_webhook {text:?} names no host"))?;
        if authority.as_str().contains('@') {
            bail!("push_webhook {text:?}: credentials in the URL are not supported");
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            bail!("push_webhook {text:?} names no host");
        }
        let path = uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        Ok(PushWebhook {
            url: text.to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path: if path.is_empty() { "/".into() } else { path },
        })
    }
}

impl fmt::Display for PushWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_url_is_split_and_others_are_refused_with_the_setting_named() {
        let hook: PushWebhook = "http://127.0.0.1:9000/hints?k=1".parse().unwrap();
        assert_eq!(
            (hook.host.as_str(), hook.port, hook.authority.as_str()),
            ("127.0.0.1", 9000, "127.0.0.1:9000")
        );
        assert_eq!(hook.path, "/hints?k=1");
        let hook: PushWebhook = "http://[::1]".parse().unwrap();
        assert_eq!(
            (hook.host.as_str(), hook.port, hook.path.as_str()),
            ("::1", 80, "/")
        );
        for (bad, says) in [
            ("https://push.example/x", "https is not supported"),
            ("ftp://push.example/x", "must start with http://"),
            ("push.example/x", "is not a URL"),
            ("//push.example/x", "must start with http://"),
            ("http://user:pw@push.example/", "credentials"),
            ("http://a b/", "is not a URL"),
        ] {
            let error = bad.parse::<PushWebhook>().unwrap_err().to_string();
            assert!(
                error.contains("push_webhook") && error.contains(says),
                "{bad}: {error}"
            );
        }
    }
}
