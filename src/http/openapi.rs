//! The OpenAPI 3.1 document (`GET /openapi.json`): each area registers its routes through
//! utoipa-axum's `OpenApiRouter`, so a route cannot be served without being documented;
//! [`document`] merges the areas' parts and adds what they share: the error body, whose
//! `code` is an enum of [`ERROR_CODES`], and the bearer-token security scheme.

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, RefOr, Schema};

/// Every `code` an error body can carry: those of `ApiError::status_and_code` and those
/// `json_errors` gives the framework's own refusals (404, 405, timeouts). The schema's enum
/// is built from this list, and a test holds it equal to the codes those two produce.
pub const ERROR_CODES: &[&str] = &[
    "missing_header",
    "malformed_header",
    "timestamp_out_of_tolerance",
    "invalid_signature",
    "replayed_delivery",
    "malformed_json",
    "invalid_request",
    "unknown_credential",
    "unknown_target",
    "protected_login",
    "body_too_large",
    "unreadable_body",
    "unknown_action",
    "unknown_policy",
    "not_cancellable",
    "unknown_lock",
    "unknown_drain",
    "unknown_verification",
    "selection_grew",
    "missing_token",
    "invalid_token",
    "missing_credentials",
    "invalid_api_key",
    "malformed_sns_message",
    "sns_unavailable",
    "sns_busy",
    "invalid_sns_signature",
    "stale_sns_message",
    "untrusted_topic",
    "secret_not_found",
    "unusable_secret",
    "secrets_manager_unavailable",
    "version_not_current",
    "vault_role_not_found",
    "vault_response_unusable",
    "vault_unavailable",
    "unavailable",
    // From `json_errors` only.
    "not_found",
    "method_not_allowed",
    "timeout",
    "bad_request",
    "internal",
];

/// The one error shape: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// An error's stable code and its human-readable message.
#[derive(Debug, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    #[schema(schema_with = error_code)]
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// The `code` enum, from [`ERROR_CODES`].
fn error_code() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ERROR_CODES.iter().copied()))
}

/// `202`: an action stored and where to follow it (`http::reply::running` and
/// `http::reply::scheduled` write it).
#[derive(Debug, utoipa::ToSchema)]
pub struct AcceptedBody {
    /// The action.
    pub action_id: uuid::Uuid,
    /// `accepted` (just stored), `running` (`wait` ran out) or `scheduled` (waits for its time).
    #[schema(inline)]
    pub status: AcceptedStatus,
    /// Where to follow it: `/v1/actions/{id}`.
    pub poll: String,
    /// When a scheduled action acts.
    pub act_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When a scheduled action is announced.
    pub announce_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The window a scheduled action waits for.
    pub window: Option<String>,
    /// Where to call a scheduled action off: `/v1/actions/{id}/cancel`.
    pub cancel: Option<String>,
}

/// What an accepted action is doing.
#[derive(Debug, utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum AcceptedStatus {
    /// Stored; its steps run.
    Accepted,
    /// Still running when the request stopped waiting.
    Running,
    /// Waiting for its time.
    Scheduled,
}

/// `200`: an event that needed nothing done (`http::reply::status_response`), or a
/// delivery seen before (`duplicate`, with the first delivery's action).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AcknowledgedBody {
    /// `duplicate`, or what was decided (`ignored`, …).
    pub status: String,
    /// Why nothing was done.
    pub reason: Option<String>,
    /// For a duplicate: the first delivery's action.
    pub action_id: Option<uuid::Uuid>,
}

/// An event's `200`: the finished report, or an acknowledgement.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EventAnswer {
    /// `wait=true` and it finished.
    Finished(Box<crate::action::ActionReport>),
    /// A duplicate, or nothing to do.
    Acknowledged(AcknowledgedBody),
}

/// The document of the areas' `parts`, with the shared title, version and security schemes.
pub fn document(parts: impl IntoIterator<Item = OpenApi>) -> OpenApi {
    let mut doc = OpenApi::new(
        InfoBuilder::new()
            .title("sever")
            .version(env!("CARGO_PKG_VERSION"))
            .description(Some(env!("CARGO_PKG_DESCRIPTION")))
            .build(),
        utoipa::openapi::Paths::new(),
    );
    for part in parts {
        doc.merge(part);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    for (name, what) in [
        ("operator_token", "An operator's token (`[[operators]]`)."),
        ("metrics_token", "A token of `metrics.tokens_sha256`."),
        (
            "alertmanager_token",
            "A token of `alertmanager.tokens_sha256`.",
        ),
    ] {
        let mut scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        scheme.description = Some(what.to_owned());
        components.add_security_scheme(name, SecurityScheme::Http(scheme));
    }
    components.schemas.insert(
        "Error".to_owned(),
        <ErrorBody as utoipa::PartialSchema>::schema(),
    );
    components.schemas.insert(
        "ErrorDetail".to_owned(),
        <ErrorDetail as utoipa::PartialSchema>::schema(),
    );
    open_flattened_parts(doc)
}

/// `doc` with each `allOf` part that refers to a closed schema (`additionalProperties:
/// false`, from `deny_unknown_fields`) inlined without that closure: a `#[serde(flatten)]`
/// of such a type (the selector in a revocation) would otherwise forbid the fields of the
/// other parts, and no body could match. The closed schema stays closed where it stands
/// alone.
fn open_flattened_parts(doc: OpenApi) -> OpenApi {
    let Ok(mut json) = serde_json::to_value(&doc) else {
        return doc;
    };
    let schemas = json["components"]["schemas"].clone();
    let Some(map) = json["components"]["schemas"].as_object_mut() else {
        return doc;
    };
    for schema in map.values_mut() {
        let Some(parts) = schema.get_mut("allOf").and_then(|p| p.as_array_mut()) else {
            continue;
        };
        for part in parts {
            let target = part
                .get("$ref")
                .and_then(|r| r.as_str())
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .and_then(|name| schemas.get(name));
            if let Some(target) = target
                && target["additionalProperties"] == serde_json::Value::Bool(false)
            {
                let mut open = target.clone();
                if let Some(fields) = open.as_object_mut() {
                    fields.remove("additionalProperties");
                }
                *part = open;
            }
        }
    }
    serde_json::from_value(json).unwrap_or(doc)
}

/// `GET /openapi.json`: `doc` as JSON, asking for no token (it holds no secret).
pub fn router(doc: &OpenApi) -> Router {
    let body = serde_json::to_value(doc).unwrap_or_default();
    Router::new().route("/openapi.json", get(move || async move { Json(body) }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The quoted codes that follow a status (`S::…, "code")`) in `text`.
    fn codes_in(text: &str, marker: &str) -> BTreeSet<String> {
        text.split(marker)
            .skip(1)
            .filter_map(|rest| {
                let rest = rest.split_once('"')?.1;
                let (code, tail) = rest.split_once('"')?;
                (tail.starts_with(')') && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                    .then(|| code.to_owned())
            })
            .collect()
    }

    #[test]
    fn the_code_enum_holds_every_code_the_server_answers_with() {
        // Read from the source, so a code added to `status_and_code` without being listed
        // fails here rather than slipping out of the document.
        let error_rs = include_str!("error.rs");
        let body = error_rs
            .split("pub fn status_and_code")
            .nth(1)
            .and_then(|rest| rest.split("\n    }\n").next())
            .expect("status_and_code in error.rs");
        let mut produced = codes_in(body, "S::");
        assert!(produced.len() > 30, "too few codes read: {produced:?}");
        let mod_rs = include_str!("mod.rs");
        let framework = mod_rs
            .split("let code = match status")
            .nth(1)
            .and_then(|rest| rest.split("};").next())
            .expect("json_errors' codes in mod.rs");
        for code in framework.split('"').skip(1).step_by(2) {
            produced.insert(code.to_owned());
        }
        let listed: BTreeSet<String> = ERROR_CODES.iter().map(|c| (*c).to_owned()).collect();
        assert_eq!(listed.len(), ERROR_CODES.len(), "a code is listed twice");
        assert_eq!(produced, listed);
        // And a sample through the real function.
        use super::super::error::ApiError;
        for e in [ApiError::MissingToken, ApiError::UnknownLock("x".into())] {
            assert!(ERROR_CODES.contains(&e.status_and_code().1));
        }
    }

    #[test]
    fn the_error_schema_is_an_enum_of_codes() {
        let doc = document([]);
        let json = serde_json::to_value(&doc).unwrap();
        let code = &json["components"]["schemas"]["ErrorDetail"]["properties"]["code"];
        let listed: Vec<&str> = code["enum"]
            .as_array()
            .expect("code is an enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(listed, ERROR_CODES);
        assert_eq!(json["openapi"], "3.1.0");
    }
}
