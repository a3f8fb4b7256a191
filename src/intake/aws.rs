//! `POST /v1/events/aws`: AWS Secrets Manager rotations, reported by the rotation Lambda's
//! hook (Standard Webhooks), an EventBridge API destination (API key) or an SNS HTTPS
//! subscription (SNS signature). Each path is authenticated its own way, normalised to one
//! rotation report, resolved against Secrets Manager, and acted on once per secret version.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::eventbridge::{Interpretation, Reported, interpret};
use super::events::{WaitQuery, wait_flag};
use super::sns::{SnsMessage, SnsMessageType};
use super::{Arrival, Claim, Intake, accept};
use crate::action::AwsSource as Source;
use crate::audit::Kind;
use crate::http::error::{ApiError, parse_json};
use crate::http::{self, Actor, RequestMeta};
use crate::resolve::aws::{self, RotationError};

/// The rotation Lambda's own event, as the hook forwards it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct HookEvent {
    #[serde(rename = "SecretId")]
    secret_id: String,
    #[serde(rename = "ClientRequestToken")]
    token: String,
    #[serde(rename = "Step")]
    pub(super) step: String,
}

/// `POST /v1/events/aws`'s body, for the document: which one is read depends on how the
/// request authenticates (Standard Webhooks headers, SNS's message type, or the API key).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Describes the body; the handler reads each kind itself.
pub(super) enum AwsBody {
    /// From the Lambda hook (signed).
    Hook(HookEvent),
    /// An SNS delivery.
    Sns(super::sns::SnsMessage),
    /// An EventBridge event (API key).
    EventBridge(super::eventbridge::EventBridgeEvent),
}

/// The rotation steps the hook may report.
const STEPS: [&str; 4] = ["createSecret", "setSecret", "testSecret", "finishSecret"];

/// Reads the hook's body and checks its `Step`.
pub(super) fn parse_hook(body: &[u8]) -> Result<HookEvent, ApiError> {
    let hook: HookEvent = parse_json(body)?;
    if !STEPS.contains(&hook.step.as_str()) {
        return Err(ApiError::Invalid(format!("Step must be one of {STEPS:?}")));
    }
    Ok(hook)
}

/// Dispatches on how the request authenticates itself.
#[utoipa::path(post, path = "/v1/events/aws", tag = "intake",
    request_body = AwsBody,
    params(("wait" = Option<bool>, Query, description = "Answer with the finished report instead of `202`.")),
    responses(
        (status = 200, description = "Finished (`wait=true`): the report; or a duplicate delivery, or an event that needs nothing done.", body = crate::http::openapi::EventAnswer),
        (status = 202, description = "Accepted: the action and where to follow it (with `wait`, still running; or scheduled).", body = crate::http::openapi::AcceptedBody),
        (status = 401, description = "`missing_credentials`, `invalid_api_key`, a Standard Webhooks refusal, or an SNS one (`invalid_sns_signature`, `stale_sns_message`).", body = crate::http::openapi::ErrorBody),
        (status = 400, description = "`malformed_json`, `malformed_header` or `unreadable_body`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`replayed_delivery` or `version_not_current`.", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request`, `unknown_credential`, `unknown_target`, `protected_login` and the other refusals of what the event names.", body = crate::http::openapi::ErrorBody),
        (status = 502, description = "Secrets Manager, Vault or SNS could not be asked; nothing was executed.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable` (store, audit trail) or `sns_busy`.", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "`untrusted_topic`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn post_aws_event(
    State(intake): State<Intake>,
    meta: RequestMeta,
    query: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> (Extension<Actor>, Result<Response, ApiError>) {
    let actor = if headers.contains_key("webhook-signature") || headers.contains_key("webhook-id") {
        Actor::LambdaHook
    } else if headers.contains_key("x-amz-sns-message-type") {
        Actor::Sns
    } else {
        Actor::EventBridge
    };
    let answer = async {
        let body = http::body(body, intake.max_body)?;
        let received_at = Utc::now();
        match actor {
            Actor::LambdaHook => {
                lambda_hook(&intake, &meta, &headers, &body, query, received_at).await
            }
            Actor::Sns => sns(&intake, &meta, &body, query, received_at).await,
            _ => eventbridge(&intake, &meta, &headers, &body, query, received_at).await,
        }
    };
    let answer = answer.await;
    (Extension(actor), answer)
}

async fn lambda_hook(
    intake: &Intake,
    meta: &RequestMeta,
    headers: &HeaderMap,
    body: &[u8],
    query: Result<Query<WaitQuery>, QueryRejection>,
    received_at: DateTime<Utc>,
) -> Result<Response, ApiError> {
    let delivery = intake
        .verifier
        .verify(headers, body, received_at.timestamp())?;
    let wait = wait_flag(query)?;
    let hook = parse_hook(body)?;
    let detail = json!({
        "webhook_id": delivery.id, "secret_id": hook.secret_id, "version_id": hook.token,
        "step": hook.step, "remote_addr": meta.remote,
    });
    if hook.step != "finishSecret" {
        let claimed = intake
            .ctx
            .store
            .claim(&format!("webhook:{}", delivery.id), "-", received_at)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        if let crate::store::Claim::Duplicate { action_id } = claimed {
            return Err(ApiError::Replayed { action_id });
        }
        let reason = format!(
            "{} needs no action; sessions are terminated after finishSecret",
            hook.step
        );
        return intake
            .acknowledge(
                &Actor::LambdaHook,
                Kind::EventAcknowledged,
                "acknowledged",
                reason,
                detail,
            )
            .await;
    }
    let reported = Reported {
        secret_id: hook.secret_id,
        version_id: Some(hook.token),
        occurred_at: Some(received_at),
        detail_type: "finishSecret".into(),
    };
    let arrival = Arrival {
        actor: Actor::LambdaHook,
        received_at,
        claims: vec![Claim::reject(format!("webhook:{}", delivery.id))],
        detail,
    };
    rotation(intake, arrival, Source::LambdaHook, reported, wait).await
}

async fn eventbridge(
    intake: &Intake,
    meta: &RequestMeta,
    headers: &HeaderMap,
    body: &[u8],
    query: Result<Query<WaitQuery>, QueryRejection>,
    received_at: DateTime<Utc>,
) -> Result<Response, ApiError> {
    let key = headers
        .get(&intake.aws.api_key_header)
        .ok_or(ApiError::MissingCredentials)?;
    // Compared with every key, without stopping early.
    intake
        .aws
        .api_keys
        .find(key.as_bytes())
        .ok_or(ApiError::InvalidApiKey)?;
    let wait = wait_flag(query)?;
    let event = parse_json::<Value>(body)?;
    let arrival = Arrival {
        actor: Actor::EventBridge,
        received_at,
        claims: Vec::new(),
        detail: Value::Null,
    };
    reported_event(intake, meta, arrival, Source::EventBridge, &event, wait).await
}

async fn sns(
    intake: &Intake,
    meta: &RequestMeta,
    body: &[u8],
    query: Result<Query<WaitQuery>, QueryRejection>,
    received_at: DateTime<Utc>,
) -> Result<Response, ApiError> {
    let message: SnsMessage = super::sns::parse(body)?;
    // The claimed topic first, before anything is fetched: the certificate URL is the
    // sender's choice, so a message for a topic nobody configured must cost nothing. The
    // signature, checked next, covers `TopicArn`, so a forged topic is refused there.
    let topics = &intake.ctx.config.aws.sns.topics;
    if topics.is_empty() {
        return Err(ApiError::SnsNotConfigured);
    }
    if !topics.contains(&message.topic_arn) {
        return Err(ApiError::UntrustedTopic(shown_topic(&message.topic_arn)));
    }
    intake.aws.sns.verify(&message).await?;
    // The message-id claim that stops redeliveries lasts `replay_retention`; an older
    // message could be replayed after its claim is pruned, so it is refused instead.
    let retention = chrono::Duration::from_std(intake.ctx.config.webhooks.replay_retention)
        .unwrap_or(chrono::Duration::MAX);
    let sent = DateTime::parse_from_rfc3339(&message.timestamp).map(|t| t.with_timezone(&Utc));
    match sent {
        Ok(sent) if received_at - sent <= retention => {}
        _ => return Err(ApiError::StaleSnsMessage(message.timestamp.clone())),
    }
    let wait = wait_flag(query)?;
    let detail = json!({"topic_arn": message.topic_arn, "message_id": message.message_id, "remote_addr": meta.remote});
    match message.message_type {
        SnsMessageType::SubscriptionConfirmation => {
            intake.aws.sns.confirm(&message).await?;
            let reason = "subscription confirmed".to_owned();
            intake
                .acknowledge(
                    &Actor::Sns,
                    Kind::EventAcknowledged,
                    "confirmed",
                    reason,
                    detail,
                )
                .await
        }
        SnsMessageType::UnsubscribeConfirmation => {
            let reason =
                "the topic unsubscribed sever; no rotations will arrive this way".to_owned();
            tracing::warn!(topic = %message.topic_arn, "{reason}");
            intake
                .acknowledge(
                    &Actor::Sns,
                    Kind::EventAcknowledged,
                    "acknowledged",
                    reason,
                    detail,
                )
                .await
        }
        SnsMessageType::Notification => {
            let event: Value = parse_json(message.message.as_bytes())?;
            // SNS redelivers a message with the same id; that is the same event again.
            let arrival = Arrival {
                actor: Actor::Sns,
                received_at,
                claims: vec![Claim::acknowledge(format!("sns:{}", message.message_id))],
                detail: Value::Null,
            };
            reported_event(intake, meta, arrival, Source::Sns, &event, wait).await
        }
    }
}

/// An unverified `TopicArn` as it may appear in an error and the audit trail: as sent if
/// short and printable (like every configured ARN), otherwise a placeholder.
fn shown_topic(topic: &str) -> String {
    if topic.len() <= 256 && topic.bytes().all(|b| b.is_ascii_graphic()) {
        topic.to_owned()
    } else {
        "(too long or not printable)".to_owned()
    }
}

/// An EventBridge event (direct or from SNS): a rotation, or acknowledged and ignored.
async fn reported_event(
    intake: &Intake,
    meta: &RequestMeta,
    mut arrival: Arrival,
    source: Source,
    event: &Value,
    wait: bool,
) -> Result<Response, ApiError> {
    let event_id = event.get("id").cloned().unwrap_or(Value::Null);
    let detail_type = event.get("detail-type").cloned().unwrap_or(Value::Null);
    arrival.detail =
        json!({"event_id": event_id, "detail_type": detail_type, "remote_addr": meta.remote});
    match interpret(event).map_err(ApiError::Invalid)? {
        Interpretation::Ignored(reason) => {
            intake
                .acknowledge(
                    &arrival.actor,
                    Kind::EventIgnored,
                    "ignored",
                    reason,
                    arrival.detail,
                )
                .await
        }
        Interpretation::Rotation(reported) => {
            rotation(intake, arrival, source, reported, wait).await
        }
    }
}

/// Resolves a reported rotation against Secrets Manager and the config, then acts once.
async fn rotation(
    intake: &Intake,
    arrival: Arrival,
    source: Source,
    reported: Reported,
    wait: bool,
) -> Result<Response, ApiError> {
    let Arrival {
        actor,
        received_at,
        mut claims,
        mut detail,
    } = arrival;
    let actor = &actor;
    detail["secret_id"] = json!(reported.secret_id);
    detail["reported_version_id"] = json!(reported.version_id);
    let report = aws::Report {
        secret_id: &reported.secret_id,
        version_id: reported.version_id.as_deref(),
        occurred_at: reported.occurred_at,
        source,
        received_at,
    };
    let resolved = aws::resolve(
        &intake.ctx.config,
        &intake.ctx.targets,
        intake.aws.secrets_manager.as_ref(),
        &report,
    )
    .await;
    let planned = match resolved {
        Ok(aws::Resolved::Planned(planned)) => planned,
        Ok(aws::Resolved::NotMapped(reason)) => {
            return intake
                .acknowledge(actor, Kind::EventIgnored, "ignored", reason, detail)
                .await;
        }
        Err(RotationError::NoClient) => {
            return Err(ApiError::Unavailable("no Secrets Manager client".into()));
        }
        Err(RotationError::Aws(e)) => return Err(ApiError::Aws(e)),
        Err(RotationError::VersionNotCurrent(version)) => {
            return Err(ApiError::VersionNotCurrent(version));
        }
        Err(RotationError::Resolve(e)) => return Err(e.into()),
    };
    planned.describe(&mut detail);
    claims.push(Claim::acknowledge(planned.rotation_key()));
    let aws::Planned { plan, .. } = *planned;
    let accepted = accept(&intake.ctx, actor, claims, plan, detail).await?;
    intake.respond(accepted, wait).await
}
