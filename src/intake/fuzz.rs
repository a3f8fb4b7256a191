//! Ways in for the fuzz targets (`fuzz/`) and the seed corpus test (`tests/fuzz_corpus.rs`):
//! each hands untrusted bytes to one intake parser as its handler does, with fixed secrets,
//! a fixed clock and a fixed config, so that committed seeds keep verifying.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::Value;

use super::eventbridge::{Interpretation, interpret};
use super::sns::{self, SnsMessage, SnsMessageType};
use super::vault::VaultEvent;
use super::webhook::{Verified, Verifier};
use crate::action::Plan;
use crate::config::{Config, OperatorConfig};
use crate::http::error::{ApiError, SnsError, WebhookError, parse_json};
use crate::operator::auth::{Operators, bearer_token, token_hash};
use crate::resolve::{self, RotationEvent};

/// The Standard Webhooks secret the webhook seeds are signed with (the specification's example).
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// "Now" for every check, in unix seconds: the seeds' `webhook-timestamp`.
pub const NOW: i64 = 1_614_265_330;
/// The token of operator `alice`.
pub const OPERATOR_TOKEN: &str = "sev_fuzz_operator_token_0123456789abcdef0123456789abcdef";
/// The config generic events are planned against: credential `orders` on target `main`.
pub const CONFIG: &str = r#"
    [targets.main]
    engine = "postgres"
    url = "postgres://sever@127.0.0.1/postgres"
    [credentials.orders]
    logins = [{ target = "main", login = "orders_app" }]
"#;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).expect("a fixed, valid timestamp")
}

/// Splits a request head (`name: value` lines), a blank line, and the body; lines that are
/// not valid headers are skipped.
pub fn split_request(data: &[u8]) -> (HeaderMap, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = HeaderName::from_bytes(&line[..colon]);
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.append(name, value);
        }
    }
    (headers, body)
}

/// Standard Webhooks verification of a raw request (see [`split_request`]) at [`NOW`].
pub fn webhook(data: &[u8]) -> Result<Verified, WebhookError> {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        Verifier::new(
            &[SecretString::from(WEBHOOK_SECRET)],
            Duration::from_secs(300),
        )
        .expect("the specification's example secret is valid")
    });
    let (headers, body) = split_request(data);
    verifier.verify(&headers, body, NOW)
}

/// A generic rotation event (`POST /v1/events` body), parsed and planned against [`CONFIG`].
pub fn generic_event(body: &[u8]) -> Result<Plan, ApiError> {
    static CONFIGURED: OnceLock<Config> = OnceLock::new();
    let config = CONFIGURED.get_or_init(|| Config::parse(CONFIG).expect("the fixed config"));
    let event: RotationEvent = parse_json(body)?;
    Ok(resolve::event(
        config,
        &event,
        now(),
        config.webhooks.tolerance,
    )?)
}

/// The rotation Lambda hook's body (`POST /v1/events/aws`); returns its step.
pub fn aws_hook(body: &[u8]) -> Result<String, ApiError> {
    Ok(super::aws::parse_hook(body)?.step)
}

/// An EventBridge event: the secret it reports rotated, or `None` when it is ignored.
pub fn eventbridge(body: &[u8]) -> Result<Option<String>, ApiError> {
    let event: Value = parse_json(body)?;
    match interpret(&event).map_err(ApiError::Invalid)? {
        Interpretation::Rotation(reported) => Ok(Some(reported.secret_id)),
        Interpretation::Ignored(_) => Ok(None),
    }
}

/// An SNS HTTPS message, with its signature checked against `cert_pem`; a notification's
/// message is then read as an EventBridge event, as the handler does.
pub fn sns(body: &[u8], cert_pem: &[u8]) -> Result<SnsMessage, SnsError> {
    let message = sns::parse(body)?;
    sns::verify_with_certificate(&message, cert_pem)?;
    if message.message_type == SnsMessageType::Notification {
        // Only that it returns matters here: the outcome is the EventBridge target's concern.
        let _ = eventbridge(message.message.as_bytes());
    }
    Ok(message)
}

/// A Vault event notification's CloudEvents envelope (`POST /v1/events/vault` body).
pub fn vault_event(body: &[u8]) -> Result<VaultEvent, ApiError> {
    let envelope: Value = parse_json(body)?;
    VaultEvent::parse(&envelope).map_err(|e| ApiError::Invalid(format!("not a Vault event: {e}")))
}

/// An `Authorization` header value: the operator it authenticates (only `alice`, whose token
/// is [`OPERATOR_TOKEN`]).
pub fn operator(header: &[u8]) -> Result<String, ApiError> {
    static OPERATORS: OnceLock<Operators> = OnceLock::new();
    let operators = OPERATORS.get_or_init(|| {
        Operators::new(&[OperatorConfig {
            name: "alice".into(),
            token_sha256: token_hash(OPERATOR_TOKEN),
        }])
    });
    let value = HeaderValue::from_bytes(header).map_err(|_| ApiError::MissingToken)?;
    let token = value
        .to_str()
        .ok()
        .and_then(bearer_token)
        .ok_or(ApiError::MissingToken)?;
    operators
        .authenticate(token)
        .map(str::to_owned)
        .ok_or(ApiError::InvalidToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_splits_into_headers_and_body() {
        let (headers, body) =
            split_request(b"webhook-id: msg_1\nbad header\nx:  y \n\n{\"a\":\n\n1}");
        assert_eq!(headers["webhook-id"], "msg_1");
        assert_eq!(headers["x"], "y");
        assert_eq!(headers.len(), 2);
        assert_eq!(body, b"{\"a\":\n\n1}");
        assert!(split_request(b"no body").1.is_empty());
    }

    #[test]
    fn the_fixed_config_plans_an_event_and_the_operator_authenticates() {
        let plan = generic_event(br#"{"credential": "orders", "kind": "revoked"}"#).unwrap();
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(
            operator(format!("Bearer {OPERATOR_TOKEN}").as_bytes()).unwrap(),
            "alice"
        );
    }
}
