//! The page: three files built into the binary (no CDN; it works offline). They hold no
//! data, so anyone may load them; everything they show comes from the API, with the token.

use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/app.css");
const ICON: &str = include_str!("../assets/icon.svg");

/// Whether `path` is one of the page's files.
pub fn is_asset(path: &str) -> bool {
    matches!(
        path,
        "/" | "/index.html" | "/app.js" | "/app.css" | "/favicon.svg"
    )
}

/// Serves the page's files; anything else is 404.
pub async fn serve(uri: Uri) -> Response {
    let (body, kind) = match uri.path() {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/app.css" => (STYLE, "text/css; charset=utf-8"),
        "/favicon.svg" => (ICON, "image/svg+xml"),
        _ => {
            let body = serde_json::json!({"event": "error", "kind": "not-found", "message": "no such page"});
            return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
        }
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}
