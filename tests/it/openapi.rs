//! `GET /openapi.json`: every route the routers register is in the document, every
//! documented operation is served, and the document is valid OpenAPI 3.1 by
//! `openapi-spec-validator` (PyPI; scripts/ensure-openapi-tools.sh installs it).

use std::collections::BTreeSet;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::sever::{TOKEN, TestServer, Workspace};

/// `(METHOD, path)` of every operation in `doc`.
fn operations(doc: &utoipa::openapi::OpenApi) -> BTreeSet<(String, String)> {
    let json = serde_json::to_value(doc).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in json["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn every_registered_route_is_in_the_document() {
    // What each area's router registered (utoipa-axum records each route it adds).
    let registered: BTreeSet<(String, String)> = [
        sever::http::health::routes().into_openapi(),
        sever::intake::routes().into_openapi(),
        sever::operator::routes().into_openapi(),
        sever::http::exporter::openapi(),
    ]
    .iter()
    .flat_map(operations)
    .collect();
    assert!(
        registered.len() >= 20,
        "too few routes read: {registered:?}"
    );
    let documented = operations(&sever::openapi());
    for route in &registered {
        assert!(documented.contains(route), "{route:?} is not documented");
    }
    assert_eq!(registered, documented);
    for route in [
        ("GET", "/v1/actions/{id}"),
        ("POST", "/v1/events"),
        ("GET", "/metrics"),
    ] {
        assert!(registered.contains(&(route.0.to_owned(), route.1.to_owned())));
    }
}

/// Routes are added only through `OpenApiRouter::routes`, which documents them: a plain
/// axum `.route(` (which would serve an undocumented route) appears only where the document
/// itself is served.
#[test]
fn no_route_bypasses_the_document() {
    let mut offenders = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("http/openapi.rs")
                // The console's static files: pages and scripts, not API operations.
                && !path.ends_with("console/mod.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                for needle in [".route(", ".route_service(", ".nest(", "Router::new()"] {
                    // `OpenApiRouter::new()` is the documenting router; http::app merges
                    // the areas' routers into an empty one.
                    let plain = text
                        .match_indices(needle)
                        .any(|(at, _)| !text[..at].ends_with("OpenApi"));
                    let merge_base = needle == "Router::new()" && path.ends_with("http/mod.rs");
                    if plain && !merge_base {
                        offenders.push(format!("{}: {needle}", path.display()));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes outside OpenApiRouter: {offenders:?}"
    );
}

/// Every documented operation is served on the listener it belongs to: none answers the
/// framework's `404 not_found` or `405`.
#[tokio::test]
async fn every_documented_operation_is_served_and_the_document_validates() {
    let ws = Workspace::new();
    let path = ws.write_config(&ws.base_config());
    let server = TestServer::start_split(&path).await;
    let client = &server.client;

    let doc: Value = client
        .get(server.operator_url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let served = serde_json::to_value(sever::openapi()).unwrap();
    assert_eq!(doc, served, "the served document is the built one");

    for (method, route) in operations(&sever::openapi()) {
        let concrete = route
            .replace("{id}", "0190b4b4-0000-7000-8000-000000000000")
            .replace("{name}", "nope");
        let operator = !route.starts_with("/v1/events") && !route.starts_with("/v1/alerts");
        let url = if operator {
            server.operator_url(&concrete)
        } else {
            server.url(&concrete)
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = client
            .request(method.clone(), &url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {route}");
        assert!(
            !(status == StatusCode::NOT_FOUND && body["error"]["code"] == "not_found"),
            "{method} {route} is not served: {body}"
        );
    }

    let file = ws.path("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs (scripts/ensure-openapi-tools.sh installs the validator)");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

/// A client generated from the served document by `openapi-python-client` (PyPI) lists the
/// actions and the policies of a live server with the operator token, and reads each
/// answer into its generated model.
#[tokio::test]
async fn a_generated_python_client_calls_two_routes() {
    let ws = Workspace::new();
    let path = ws.write_config(&ws.base_config());
    let server = TestServer::start_split(&path).await;
    let doc = server
        .client
        .get(server.operator_url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let spec = ws.path("openapi.json");
    std::fs::write(&spec, &doc).unwrap();
    let out_dir = ws.path("client");
    let generated = Command::new("openapi-python-client")
        .args(["generate", "--meta", "none", "--path"])
        .arg(&spec)
        .arg("--output-path")
        .arg(out_dir.join("sever_client"))
        .output()
        .expect("openapi-python-client runs (scripts/ensure-openapi-tools.sh installs it)");
    assert!(
        generated.status.success(),
        "generation failed: {}{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    // The client's models, not dicts: the parsed answers are the generated classes.
    let script = r#"
import sys
sys.path.insert(0, sys.argv[1])
from sever_client import AuthenticatedClient
from sever_client.api.operator import get_policies, list_actions
from sever_client.models import ActionPage, PolicyList
client = AuthenticatedClient(base_url=sys.argv[2], token=sys.argv[3], raise_on_unexpected_status=True)
page = list_actions.sync_detailed(client=client, limit=5)
assert page.status_code == 200, page
assert isinstance(page.parsed, ActionPage), page.parsed
assert page.parsed.actions == [], page.parsed
policies = get_policies.sync_detailed(client=client)
assert policies.status_code == 200, policies
assert isinstance(policies.parsed, PolicyList), policies.parsed
refused = list_actions.sync_detailed(client=AuthenticatedClient(base_url=sys.argv[2], token="wrong"))
assert refused.status_code == 401, refused
print("ok", len(policies.parsed.policies))
"#;
    // Asynchronously: the server answers on this test's runtime while the client runs.
    let ran = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&out_dir)
        .arg(server.operator_url(""))
        .arg(TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success() && stdout.starts_with("ok"),
        "the generated client failed: {stdout}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    server.stop().await;
}
