//! Who may use a request (DESIGN §11).
//!
//! - On the unix socket, the peer's credentials were checked when it connected
//!   ([`crate::listen`]): every request on it is this user's.
//! - On TCP, a random token, kept owner-only in the state dir (`web-token`), printed once in
//!   the URL `http://HOST:PORT/#token=TOKEN` (a fragment: never sent to a server, never in a
//!   log). The page trades it for an HttpOnly SameSite=Strict cookie; tools send it as the
//!   password of HTTP Basic (any user name). The cookie holds not the token but a secret of
//!   this process's life (named with the port, so two web patrons' cookies do not collide):
//!   browsers send a 127.0.0.1 cookie to every port there, so another local server the
//!   browser visits receives it, and may use it until this process ends. Nothing trades it
//!   for the lasting token (a playlist carries the token only for a client that sent it).
//!   On a machine shared with users you do not trust, use the unix socket (the default).
//! - `Host` must name this server on every request: a page of another site whose name was
//!   pointed at 127.0.0.1 (DNS rebinding) is refused before anything else.
//! - `Origin`, when a browser sends one, must be this server's on anything that changes
//!   state; no answer allows another origin to read it (no CORS headers, ever).
//! - Refusals are 401 or 403 with the reason, at once.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The start of the page's cookie's name (the port follows).
pub const COOKIE: &str = "tp_session_";

/// The token file's name in the state dir.
pub const TOKEN_FILE: &str = "web-token";

/// Who may use this server, and the names it answers to.
pub struct Access {
    /// `None` on the unix socket (the peer's uid was checked at connect).
    token: Option<String>,
    /// What the page's cookie holds: random, for this process's life.
    session: String,
    /// The cookie's name: [`COOKIE`] and the port.
    cookie_name: String,
    /// `Host` values that name this server (`127.0.0.1:8080`, `localhost:8080`).
    hosts: Vec<String>,
}

impl Access {
    /// The unix socket's: no token, any `Host` (no browser reaches a unix socket).
    pub fn unix() -> Access {
        Access {
            token: None,
            session: String::new(),
            cookie_name: String::new(),
            hosts: Vec::new(),
        }
    }

    /// A TCP listener's on `port`, at `hosts`, with `token`.
    pub fn tcp(token: String, port: u16, hosts: Vec<String>) -> Access {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Access {
            token: Some(token),
            session: hex::encode(secret),
            cookie_name: format!("{COOKIE}{port}"),
            hosts,
        }
    }

    /// Whether `presented` is the token (in constant time: the comparison says nothing of
    /// how much of it was right).
    pub fn is_token(&self, presented: &str) -> bool {
        match &self.token {
            None => true,
            Some(token) => same(token, presented),
        }
    }

    /// The token, on TCP.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The cookie the page gets for the token.
    pub fn cookie(&self) -> Option<String> {
        self.token.as_ref().map(|_| {
            format!(
                "{}={}; HttpOnly; SameSite=Strict; Path=/",
                self.cookie_name, self.session
            )
        })
    }

    /// Why a request may not go on, if it may not.
    fn refusal(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Refusal> {
        // On the unix socket the peer was checked when it connected.
        self.token.as_ref()?;
        // One Host, naming this server (RFC 9112: two are a bad request).
        if headers.get_all(header::HOST).iter().count() > 1 {
            return Some(Refusal::forbidden("a request with two Host headers".into()));
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Some(Refusal::forbidden(format!(
                "Host {host:?} is not this server's name (a page of another site reaching it through DNS rebinding?); use {}",
                self.hosts.first().map_or("its address", String::as_str)
            )));
        }
        let changes = !matches!(*method, Method::GET | Method::HEAD);
        if changes {
            if let Some(origin) = headers.get(header::ORIGIN) {
                let origin = origin.to_str().unwrap_or("");
                let ours = self
                    .hosts
                    .iter()
                    .any(|h| origin.eq_ignore_ascii_case(&format!("http://{h}")));
                if !ours {
                    return Some(Refusal::forbidden(format!(
                        "a change asked by a page of {origin:?}, not of this server"
                    )));
                }
            }
            let site = headers.get("sec-fetch-site").and_then(|h| h.to_str().ok());
            if matches!(site, Some("cross-site" | "same-site")) {
                return Some(Refusal::forbidden(
                    "a change asked by a page of another site".into(),
                ));
            }
        }
        if is_public(method, path) || self.presented_token(headers) {
            return None;
        }
        Some(Refusal::unauthorized())
    }

    /// A request whose target names another server (`GET http://evil.test/...`, the
    /// absolute form, whose authority wins over Host).
    fn foreign_target(&self, uri: &axum::http::Uri) -> Option<Refusal> {
        self.token.as_ref()?;
        let authority = uri.authority()?.as_str();
        (!self.hosts.iter().any(|h| h.eq_ignore_ascii_case(authority))).then(|| {
            Refusal::forbidden(format!("the request names {authority:?}, not this server"))
        })
    }

    /// Whether the request carries the token: the page's cookie, or HTTP Basic's password.
    fn presented_token(&self, headers: &HeaderMap) -> bool {
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(|h| h.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name == self.cookie_name && same(&self.session, value));
        cookie
            || headers
                .get(header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(basic_credentials)
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|pair| pair.split_once(':').map(|(_, p)| self.is_token(p)))
                .unwrap_or(false)
    }
}

/// Whether two secrets are equal, in constant time for equal lengths.
fn same(secret: &str, presented: &str) -> bool {
    let (a, b) = (secret.as_bytes(), presented.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What anyone may load: the page itself (it holds no data) and the door to log in.
fn is_public(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET | Method::HEAD => crate::assets::is_asset(path),
        Method::POST => path == "/api/login",
        _ => false,
    }
}

/// A refused request.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn forbidden(message: String) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            message,
        }
    }

    fn unauthorized() -> Refusal {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            message: "open the URL `patron-client web` printed (with its #token=...), or send the token as HTTP Basic's password".into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "unauthorized",
            _ => "forbidden",
        };
        let body = serde_json::json!({"event": "error", "kind": kind, "message": self.message});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"torrent-patron\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

/// The middleware every request goes through: refused, or let on, and the answer marked
/// as this server's only (not framed, not sniffed, no referrer).
pub async fn guard(State(web): State<crate::Shared>, request: Request, next: Next) -> Response {
    let refused = web
        .access
        .refusal(request.method(), request.uri().path(), request.headers())
        .or_else(|| web.access.foreign_target(request.uri()));
    let mut response = match refused {
        Some(refusal) => refusal.into_response(),
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; media-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The largest body of the one request anyone may send (`/api/login`'s token).
const LOGIN_BODY_BYTES: usize = 1024;

/// The middleware after [`guard`]: a request's body is read whole within [`BODY_TIMEOUT`]
/// and its route's bound, or refused (408, 413): a client that dribbles a body, or sends
/// a large one to the one public route, holds nothing for long.
pub async fn bounded_body(request: Request, next: Next) -> Response {
    let most = match request.uri().path() {
        "/api/login" => LOGIN_BODY_BYTES,
        _ => crate::MAX_BODY_BYTES,
    };
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, most)).await;
    let refused = |status: StatusCode, message: String| {
        let body = serde_json::json!({"event": "error", "kind": "bad-request", "message": message});
        (status, axum::Json(body)).into_response()
    };
    match read {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request's body is larger than this route takes ({most} bytes)"),
        ),
        Err(_) => refused(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request's body did not arrive within {BODY_TIMEOUT:?}"),
        ),
    }
}

/// The credentials of an HTTP Basic `Authorization` value (the scheme's name is
/// case-insensitive, RFC 9110 §11.1).
pub fn basic_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("basic").then_some(credentials)
}

/// The token of the state dir `state`: read from `web-token`, or made (32 random bytes,
/// hex) and written owner-only. A token file others may read is refused, not used.
pub fn load_or_make_token(state: &Path) -> anyhow::Result<String> {
    let path = state.join(TOKEN_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode();
            if !meta.is_file() || mode & 0o077 != 0 || meta.uid() != nix::unistd::getuid().as_raw()
            {
                anyhow::bail!(
                    "{} must be a file of yours that only you may read (mode 600); remove it and a new token is made",
                    path.display()
                );
            }
            let token = std::fs::read_to_string(&path)?.trim().to_owned();
            if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!(
                    "{} holds no token; remove it and a new one is made",
                    path.display()
                );
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => make_token(&path),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn make_token(path: &PathBuf) -> anyhow::Result<String> {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::tcp(
            "ab".repeat(32),
            9,
            vec!["127.0.0.1:9".into(), "localhost:9".into()],
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn two_hosts_or_a_foreign_absolute_target_are_refused() {
        let access = access();
        let two = headers(&[("host", "127.0.0.1:9"), ("host", "evil.test:9")]);
        assert!(access.refusal(&Method::GET, "/", &two).is_some());
        let target: axum::http::Uri = "http://evil.test:9/api/torrents".parse().expect("uri");
        assert!(access.foreign_target(&target).is_some());
        let ours: axum::http::Uri = "http://127.0.0.1:9/api/torrents".parse().expect("uri");
        assert!(access.foreign_target(&ours).is_none());
    }

    #[test]
    fn another_host_is_refused_even_with_the_token() {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("u:{}", "ab".repeat(32)))
        );
        let refused = access().refusal(
            &Method::GET,
            "/api/torrents",
            &headers(&[("host", "evil.example:9"), ("authorization", &basic)]),
        );
        assert!(refused.is_some_and(|r| r.status == StatusCode::FORBIDDEN));
        let allowed = access().refusal(
            &Method::GET,
            "/api/torrents",
            &headers(&[("host", "localhost:9"), ("authorization", &basic)]),
        );
        assert!(allowed.is_none());
    }

    #[test]
    fn a_change_from_another_origin_is_refused_with_the_cookie() {
        let access = access();
        let cookie = access.cookie().expect("cookie");
        let cookie = cookie.split(';').next().expect("pair").to_owned();
        let refused = access.refusal(
            &Method::POST,
            "/api/torrents",
            &headers(&[
                ("host", "127.0.0.1:9"),
                ("cookie", &cookie),
                ("origin", "http://evil.example"),
            ]),
        );
        assert!(refused.is_some_and(|r| r.status == StatusCode::FORBIDDEN));
        let ours = access.refusal(
            &Method::POST,
            "/api/torrents",
            &headers(&[
                ("host", "127.0.0.1:9"),
                ("cookie", &cookie),
                ("origin", "http://127.0.0.1:9"),
            ]),
        );
        assert!(ours.is_none());
    }

    #[test]
    fn a_wrong_token_is_unauthorized_and_the_page_is_public() {
        // The token itself is no cookie: only the session's secret is.
        let wrong = format!("{COOKIE}9={}", "ab".repeat(32));
        let refused = access().refusal(
            &Method::GET,
            "/api/torrents",
            &headers(&[("host", "127.0.0.1:9"), ("cookie", &wrong)]),
        );
        assert!(refused.is_some_and(|r| r.status == StatusCode::UNAUTHORIZED));
        let page = access().refusal(&Method::GET, "/", &headers(&[("host", "127.0.0.1:9")]));
        assert!(page.is_none());
    }

    #[test]
    fn a_token_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = load_or_make_token(dir.path()).expect("made");
        assert_eq!(load_or_make_token(dir.path()).expect("read"), token);
        let path = dir.path().join(TOKEN_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(load_or_make_token(dir.path()).is_err());
    }
}
