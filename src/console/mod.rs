//! The operator console (`GET /console`): a small browser front end to the operator API,
//! shipped inside the binary. It is static: an HTML shell, one stylesheet and a few ES
//! modules, compiled in with `include_bytes!`, so nothing is fetched or built at run time and
//! every byte served is in this directory. The scripts call the same JSON API as every other
//! client with the operator's bearer token; the pages themselves hold no data and need no
//! token, so no cookie or server-side session exists to steal or forge.
//!
//! Every response carries the console's Content-Security-Policy ([`CSP`]), which allows only
//! this origin's scripts, styles, images and API, no inline script or style, no framing.
//!
//! These are files, not API operations, so they are served by a plain axum router and left
//! out of the OpenAPI document. May call nothing else in the crate.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The console's Content-Security-Policy, exactly: this origin's scripts, styles, images and
/// API only; no inline code; no framing; no `<base>`; forms post only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                       base-uri 'none'; form-action 'self'";

/// One file of the console: its name under `/console/assets/`, type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// An [`Asset`] from a file of `assets/`, compiled in.
macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("assets/", $name)),
        }
    };
}

/// Every file the console serves besides its page.
const ASSETS: &[Asset] = &[
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("sessions.js", JS),
    asset!("actions.js", JS),
    asset!("audit.js", JS),
    asset!("locks.js", JS),
    asset!("policies.js", JS),
];

const PAGE: &[u8] = include_bytes!("assets/index.html");

/// The console's routes: its page at `/console/` and its files under `/console/assets/`.
pub fn router() -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(page))
        .route("/console/assets/{name}", get(asset))
}

async fn page() -> Response {
    respond("text/html; charset=utf-8", PAGE)
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => respond(a.content_type, a.body),
        None => {
            let mut response = (StatusCode::NOT_FOUND, "no such file").into_response();
            harden(&mut response);
            response
        }
    }
}

fn respond(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    harden(&mut response);
    response
}

/// The headers every console response carries: the CSP, no framing, no type sniffing, no
/// referrer, and no caching (a new release's files replace the old at once).
fn harden(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts never parse text as HTML: every value from a database (an
    /// `application_name` is attacker-controlled) reaches the page as a text node.
    #[test]
    fn no_script_turns_text_into_html() {
        let sinks = [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setAttribute(\"on",
            "createContextualFragment",
            "DOMParser",
        ];
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            let text = std::str::from_utf8(asset.body).unwrap();
            for sink in sinks {
                assert!(!text.contains(sink), "{} uses {sink}", asset.name);
            }
        }
    }

    /// The page loads only files this module serves, and has no inline script or style
    /// (the CSP would block them).
    #[test]
    fn the_page_references_only_served_files() {
        let page = std::str::from_utf8(PAGE).unwrap();
        assert!(!page.contains("style="), "inline style in the page");
        assert!(!page.contains("<style"), "inline stylesheet in the page");
        for (at, _) in page.match_indices("<script") {
            let tag = &page[at..at + page[at..].find('>').unwrap()];
            assert!(
                tag.contains("src=\"/console/assets/"),
                "inline script: {tag}"
            );
        }
        for (at, _) in page.match_indices("/console/assets/") {
            let rest = &page[at + "/console/assets/".len()..];
            let name = &rest[..rest.find('"').unwrap()];
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "{name} is not served"
            );
        }
        // Each module imports only served files.
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            let text = std::str::from_utf8(asset.body).unwrap();
            for (at, _) in text.match_indices("from \"./") {
                let rest = &text[at + "from \"./".len()..];
                let name = &rest[..rest.find('"').unwrap()];
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} imports {name}, which is not served",
                    asset.name
                );
            }
        }
    }
}
