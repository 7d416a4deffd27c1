//! The web page on the HTTP port: `GET /` and its assets (`/app.js`, `/client.js`,
//! `/media.js`, `/groups.js`, `/profiles.js`, `/panels.js`, `/style.css`), embedded in the binary, and `GET /web-config.json`, where the page learns
//! the WebSocket address.
//!
//! The assets are plain files beside this one (ES modules, no build step), taken into the
//! binary with `include_str!`, so `switchboard` alone serves the page: nothing to install,
//! copy or fetch from elsewhere. Every answer says `Cache-Control: no-cache`, so a browser
//! asks again (and gets the new page) after the binary is rebuilt. The page's
//! `Content-Security-Policy` lets it load only from this origin and open WebSockets, which
//! also keeps it free of CDNs and outside fonts.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const CLIENT_JS: &str = include_str!("client.js");
const STYLE_CSS: &str = include_str!("style.css");
const MEDIA_JS: &str = include_str!("media.js");
const GROUPS_JS: &str = include_str!("groups.js");
const PROFILES_JS: &str = include_str!("profiles.js");
const PANELS_JS: &str = include_str!("panels.js");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JSON: &str = "application/json";

/// Only this origin's files, and WebSockets to any host (the WebSocket port differs from
/// this one, and behind a proxy its host may too). Pictures may also be `blob:` URLs: a
/// download needs the Authorization header, so the page fetches the bytes and shows them
/// through one.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
     img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The page's routes, to merge into the API's router. `ws_addr` is the address the shards
/// listen on, as bound (a port 0 already resolved); `tls`: they serve `wss://`.
pub fn routes<S: Clone + Send + Sync + 'static>(
    ws_addr: SocketAddr,
    tls: bool,
    dev: bool,
) -> Router<S> {
    let config = web_config(ws_addr, tls, dev);
    Router::new()
        .route("/", get(|| async { asset(HTML, INDEX_HTML) }))
        .route("/app.js", get(|| async { asset(JAVASCRIPT, APP_JS) }))
        .route("/client.js", get(|| async { asset(JAVASCRIPT, CLIENT_JS) }))
        .route("/style.css", get(|| async { asset(CSS, STYLE_CSS) }))
        .route("/media.js", get(|| async { asset(JAVASCRIPT, MEDIA_JS) }))
        .route("/groups.js", get(|| async { asset(JAVASCRIPT, GROUPS_JS) }))
        .route(
            "/profiles.js",
            get(|| async { asset(JAVASCRIPT, PROFILES_JS) }),
        )
        .route("/panels.js", get(|| async { asset(JAVASCRIPT, PANELS_JS) }))
        .route(
            "/web-config.json",
            get(move || {
                let config = config.clone();
                async move { asset(JSON, config) }
            }),
        )
}

/// `{"ws_scheme": "ws"|"wss", "ws_host": .., "ws_port": .., "ws_path": "/ws", "dev": bool}`
/// (`dev`: the page offers to sign in by name, `--dev`). A server
/// listening on every address (`0.0.0.0`, `[::]`) names no host (`null`): the page then
/// uses the host it was loaded from, the one name of this machine that the browser is known
/// to reach. The scheme is the shards' own (`wss` with `--tls-cert`), not guessed from the
/// page's: the two ports serve TLS together or not at all.
fn web_config(ws_addr: SocketAddr, tls: bool, dev: bool) -> String {
    let host = match ws_addr {
        addr if addr.ip().is_unspecified() => None,
        SocketAddr::V4(addr) => Some(addr.ip().to_string()),
        // A URL writes an IPv6 host in brackets.
        SocketAddr::V6(addr) => Some(format!("[{}]", addr.ip())),
    };
    serde_json::json!({
        "ws_scheme": if tls { "wss" } else { "ws" },
        "ws_host": host,
        "ws_port": ws_addr.port(),
        "ws_path": crate::config::WS_PATH,
        "dev": dev,
    })
    .to_string()
}

fn asset(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    let mut response = (StatusCode::OK, body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_bound_host_or_none_for_every_address() {
        let config = |addr: &str| -> serde_json::Value {
            serde_json::from_str(&web_config(addr.parse().unwrap(), false, false)).unwrap()
        };
        let local = config("127.0.0.1:8080");
        assert_eq!(local["ws_scheme"], "ws");
        assert_eq!(local["ws_host"], "127.0.0.1");
        assert_eq!(local["ws_port"], 8080);
        assert_eq!(local["ws_path"], "/ws");
        assert_eq!(config("[::1]:9000")["ws_host"], "[::1]");
        assert!(config("0.0.0.0:8080")["ws_host"].is_null());
        assert!(config("[::]:8080")["ws_host"].is_null());
        let tls: serde_json::Value =
            serde_json::from_str(&web_config("127.0.0.1:8443".parse().unwrap(), true, true))
                .unwrap();
        assert_eq!(tls["ws_scheme"], "wss");
        assert_eq!((&local["dev"], &tls["dev"]), (&false.into(), &true.into()));
    }

    #[test]
    fn every_asset_opens_with_a_comment_saying_what_it_is_for() {
        assert!(INDEX_HTML.starts_with("<!doctype html>\n<!--"));
        let sources = [
            APP_JS,
            CLIENT_JS,
            MEDIA_JS,
            GROUPS_JS,
            PROFILES_JS,
            PANELS_JS,
            STYLE_CSS,
        ];
        for source in sources {
            assert!(source.starts_with("/*") || source.starts_with("//"));
            // The bound the Rust sources keep (tests/tests/layout.rs), for the same reason.
            assert!(source.lines().count() <= 850, "{}", &source[..80]);
        }
    }
}
