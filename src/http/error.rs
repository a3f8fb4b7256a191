//! One JSON error shape for every failure: `{"error": {"code": "…", "message": "…"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::resolve::ResolveError;
use crate::resolve::aws::AwsError;
use crate::resolve::vault::VaultError;

/// Seconds an SNS message refused with `sns_busy` is asked to wait (`Retry-After`).
const SNS_RETRY_AFTER: &str = "5";

/// Why a Standard Webhooks delivery was refused (`intake::webhook`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// A required header is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header is present but malformed.
    #[error("malformed {0} header")]
    MalformedHeader(&'static str),
    /// The timestamp is too far from now.
    #[error("webhook-timestamp is outside the {0}s tolerance")]
    Timestamp(u64),
    /// No signature matched any configured secret.
    #[error("no valid signature")]
    Signature,
}

/// Why an SNS message was refused or could not be processed (`intake::sns`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnsError {
    /// The body is not a well-formed SNS message (never echoes the body).
    #[error("malformed SNS message: {0}")]
    Malformed(String),
    /// `SignatureVersion` is neither "1" nor "2".
    #[error("unsupported SNS SignatureVersion {0:?}")]
    UnsupportedSignatureVersion(String),
    /// A certificate or subscribe URL does not point at an SNS host.
    #[error("untrusted SNS URL: {0}")]
    UntrustedUrl(String),
    /// The signing certificate is unusable.
    #[error("SNS signing certificate: {0}")]
    Certificate(String),
    /// The signature does not match the message.
    #[error("SNS signature does not verify")]
    BadSignature,
    /// An HTTPS GET failed.
    #[error("SNS fetch failed: {0}")]
    Fetch(String),
    /// Every certificate-fetch slot stayed taken; the message may be sent again later.
    #[error("too many SNS certificate fetches at once; retry later")]
    Busy,
}

/// Everything an HTTP request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The Standard Webhooks check failed.
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    /// This `webhook-id` was processed before.
    #[error("webhook-id already processed (action {action_id})")]
    Replayed {
        /// The action the first delivery started.
        action_id: String,
    },
    /// The body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The body or query is JSON of the wrong shape or with bad values.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The request names something sever does not know, or may not touch.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The body is over the limit.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body could not be read.
    #[error("cannot read the request body: {0}")]
    Body(String),
    /// No operator token was sent.
    #[error("missing bearer token")]
    MissingToken,
    /// The operator token matches no operator.
    #[error("invalid operator token")]
    InvalidToken,
    /// An AWS request carried no credentials of any kind sever accepts.
    #[error(
        "missing credentials: sign with Standard Webhooks, send the EventBridge API key, or deliver through SNS"
    )]
    MissingCredentials,
    /// The EventBridge API key matches no configured key.
    #[error("invalid API key")]
    InvalidApiKey,
    /// An SNS message failed verification or confirmation.
    #[error(transparent)]
    Sns(#[from] SnsError),
    /// An SNS message older than the replay window (or with an unreadable timestamp).
    #[error("SNS message timestamp {0:?} is older than webhooks.replay_retention or unreadable")]
    StaleSnsMessage(String),
    /// An SNS message arrived, but `aws.sns.topics` is empty, so every one is refused.
    #[error("no SNS topic is configured (aws.sns.topics is empty); SNS messages are refused")]
    SnsNotConfigured,
    /// An SNS message from a topic that is not configured.
    #[error("SNS topic {0} is not configured in aws.sns.topics")]
    UntrustedTopic(String),
    /// Secrets Manager could not be asked, or answered unusably; nothing was executed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// Vault could not be asked, or answered unusably; nothing was executed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The Lambda hook reported a version that is not `AWSCURRENT` (called before finishSecret moved it).
    #[error("version {0} is not AWSCURRENT yet: call the hook after finishSecret moved the label")]
    VersionNotCurrent(String),
    /// No action has this id.
    #[error("no action {0}")]
    UnknownAction(String),
    /// No active lock has this id (it never existed, or it has ended).
    #[error("no active lock {0}")]
    UnknownLock(String),
    /// No active drain has this id (it never existed, or it has ended).
    #[error("no active drain {0}")]
    UnknownDrain(String),
    /// No audit verification has this id.
    #[error("no audit verification {0}")]
    UnknownVerification(String),
    /// The action cannot be called off: it has acted (or is acting), or has finished.
    #[error("action cannot be cancelled: {0}")]
    NotCancellable(String),
    /// No policy (or sweep) has this name.
    #[error("no policy is named {0:?}")]
    UnknownPolicy(String),
    /// A revocation's selection grew since the dry run whose count it carries: a conflict
    /// with the state it was approved against, so nothing was ended.
    #[error(
        "the selection grew since its dry run: expect_count is {expected}, {found} session(s) \
         are selected now; nothing was ended (run the dry run again)"
    )]
    SelectionGrew {
        /// The count the request carried.
        expected: usize,
        /// The count now.
        found: usize,
    },
    /// The state store or audit trail is unavailable; nothing was executed.
    #[error("service unavailable: {0}")]
    Unavailable(String),
}

/// On an error response that refuses a request: what the refusal middleware records (see
/// [`super::refusal`]). Errors of sever's own (store, audit trail) and unknown action ids
/// are answered without one, as they always were.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// The error's message.
    pub message: String,
}

impl ApiError {
    /// Whether answering with this error refuses the request, so that it is recorded
    /// (audited and logged): everything but sever's own unavailability and unknown ids.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            ApiError::Unavailable(_)
                | ApiError::UnknownAction(_)
                | ApiError::UnknownVerification(_)
        )
    }

    /// What the refusal middleware records about this error.
    pub fn refusal(&self) -> Refusal {
        let (status, code) = self.status_and_code();
        Refusal {
            status,
            code,
            message: self.to_string(),
        }
    }

    /// HTTP status and stable machine-readable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::Webhook(WebhookError::MissingHeader(_)) => {
                (S::UNAUTHORIZED, "missing_header")
            }
            ApiError::Webhook(WebhookError::MalformedHeader(_)) => {
                (S::BAD_REQUEST, "malformed_header")
            }
            ApiError::Webhook(WebhookError::Timestamp(_)) => {
                (S::UNAUTHORIZED, "timestamp_out_of_tolerance")
            }
            ApiError::Webhook(WebhookError::Signature) => (S::UNAUTHORIZED, "invalid_signature"),
            ApiError::Replayed { .. } => (S::CONFLICT, "replayed_delivery"),
            ApiError::MalformedJson(_) => (S::BAD_REQUEST, "malformed_json"),
            ApiError::Invalid(_) => (S::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::Resolve(ResolveError::UnknownCredential(_)) => {
                (S::UNPROCESSABLE_ENTITY, "unknown_credential")
            }
            ApiError::Resolve(ResolveError::UnknownTarget(_)) => {
                (S::UNPROCESSABLE_ENTITY, "unknown_target")
            }
            ApiError::Resolve(ResolveError::ProtectedLogin { .. }) => {
                (S::UNPROCESSABLE_ENTITY, "protected_login")
            }
            ApiError::Resolve(ResolveError::Invalid(_) | ResolveError::Name(_)) => {
                (S::UNPROCESSABLE_ENTITY, "invalid_request")
            }
            ApiError::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::Body(_) => (S::BAD_REQUEST, "unreadable_body"),
            ApiError::UnknownAction(_) => (S::NOT_FOUND, "unknown_action"),
            ApiError::UnknownPolicy(_) => (S::NOT_FOUND, "unknown_policy"),
            ApiError::NotCancellable(_) => (S::CONFLICT, "not_cancellable"),
            ApiError::UnknownLock(_) => (S::NOT_FOUND, "unknown_lock"),
            ApiError::UnknownDrain(_) => (S::NOT_FOUND, "unknown_drain"),
            ApiError::UnknownVerification(_) => (S::NOT_FOUND, "unknown_verification"),
            ApiError::SelectionGrew { .. } => (S::CONFLICT, "selection_grew"),
            ApiError::MissingToken => (S::UNAUTHORIZED, "missing_token"),
            ApiError::InvalidToken => (S::UNAUTHORIZED, "invalid_token"),
            ApiError::MissingCredentials => (S::UNAUTHORIZED, "missing_credentials"),
            ApiError::InvalidApiKey => (S::UNAUTHORIZED, "invalid_api_key"),
            ApiError::Sns(SnsError::Malformed(_)) => (S::BAD_REQUEST, "malformed_sns_message"),
            ApiError::Sns(SnsError::Fetch(_)) => (S::BAD_GATEWAY, "sns_unavailable"),
            ApiError::Sns(SnsError::Busy) => (S::SERVICE_UNAVAILABLE, "sns_busy"),
            ApiError::Sns(_) => (S::UNAUTHORIZED, "invalid_sns_signature"),
            ApiError::StaleSnsMessage(_) => (S::UNAUTHORIZED, "stale_sns_message"),
            ApiError::UntrustedTopic(_) | ApiError::SnsNotConfigured => {
                (S::FORBIDDEN, "untrusted_topic")
            }
            ApiError::Aws(AwsError::NotFound(_)) => (S::UNPROCESSABLE_ENTITY, "secret_not_found"),
            ApiError::Aws(AwsError::BadValue(_)) => (S::UNPROCESSABLE_ENTITY, "unusable_secret"),
            ApiError::Aws(AwsError::Unavailable(_)) => {
                (S::BAD_GATEWAY, "secrets_manager_unavailable")
            }
            ApiError::VersionNotCurrent(_) => (S::CONFLICT, "version_not_current"),
            ApiError::Vault(VaultError::NotFound(_)) => {
                (S::UNPROCESSABLE_ENTITY, "vault_role_not_found")
            }
            ApiError::Vault(VaultError::Malformed(_)) => {
                (S::BAD_GATEWAY, "vault_response_unusable")
            }
            ApiError::Vault(_) => (S::BAD_GATEWAY, "vault_unavailable"),
            ApiError::Unavailable(_) => (S::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

/// Builds the JSON error body.
pub fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut response = error_body(status, code, &self.to_string());
        if self.is_refusal() {
            response.extensions_mut().insert(self.refusal());
        }
        if matches!(self, ApiError::Sns(SnsError::Busy)) {
            // SNS retries a 5xx delivery on its own schedule; other senders may honour this.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(SNS_RETRY_AFTER),
            );
        }
        if status == StatusCode::UNAUTHORIZED
            && matches!(self, ApiError::MissingToken | ApiError::InvalidToken)
        {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Parses a JSON body: syntax errors are 400, shape and value errors (a field of the wrong
/// type included) 422.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    use serde_json::error::Category;
    let e = match serde_json::from_slice(body) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    if e.classify() == Category::Data {
        return Err(ApiError::Invalid(e.to_string()));
    }
    // serde_json reports a wrong type where it wanted an enum (`"kind": 1`) as a syntax
    // error. Whether the body is JSON at all decides; read as a tree, the same mismatch
    // says what was expected.
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(tree) => Err(ApiError::Invalid(match T::deserialize(&tree) {
            Err(shape) => shape.to_string(),
            Ok(_) => e.to_string(),
        })),
        Err(_) => Err(ApiError::MalformedJson(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{RevocationRequest, RotationEvent};

    fn code<T: serde::de::DeserializeOwned>(body: &str) -> &'static str {
        match parse_json::<T>(body.as_bytes()) {
            Ok(_) => "ok",
            Err(e) => e.status_and_code().1,
        }
    }

    #[test]
    fn a_wrong_type_is_invalid_and_broken_json_malformed() {
        for body in [
            r#"{"credential": "c", "kind": 1}"#,
            r#"{"credential": "c", "kind": ["rotated"]}"#,
            r#"{"credential": "c", "kind": {"rotated": 1}}"#,
            r#"{"credential": "c", "kind": null}"#,
            r#"{"credential": 5, "kind": "rotated"}"#,
            r#"{"credential": "c", "kind": "rotated", "rotated_at": 1}"#,
            r#"{"credential": "c", "kind": "rotated", "kind": "revoked"}"#,
            r#"[1, 2]"#,
        ] {
            assert_eq!(code::<RotationEvent>(body), "invalid_request", "{body}");
        }
        let e = parse_json::<RotationEvent>(br#"{"credential": "c", "kind": 1}"#).unwrap_err();
        assert!(e.to_string().contains("integer"), "{e}");
        for body in [
            r#"{"login": 5, "targets": "all", "reason": "r"}"#,
            r#"{"login": {"a": 1}, "targets": "all", "reason": "r"}"#,
            r#"{"login": "a", "logins": ["b"], "targets": "all", "reason": "r"}"#,
            r#"{"login": "a", "targets": "all", "reason": "r", "mode": "kill"}"#,
            r#"{"login": "a", "targets": "all", "reason": "r", "exclude_login": "b"}"#,
            r#"{"login": "a", "targets": 5, "reason": "r"}"#,
            r#"{"login": "a", "targets": "all", "reason": "r", "dry_run": "yes"}"#,
        ] {
            assert_eq!(code::<RevocationRequest>(body), "invalid_request", "{body}");
        }
        for body in [r#"{"credential": "#, "", "{\"kind\": 1", "nul"] {
            assert_eq!(code::<RotationEvent>(body), "malformed_json", "{body}");
        }
    }
}
