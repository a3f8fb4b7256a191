//! `POST /v1/events/aws`: AWS Secrets Manager rotations, reported by the rotation Lambda's
//! hook (Standard Webhooks), an EventBridge API destination (API key) or an SNS HTTPS
//! subscription (SNS signature). Each path is authenticated its own way, normalised to one
//! rotation report, resolved against Secrets Manager, and acted on once per secret version.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{ApiError, parse_json};
use super::eventbridge::{Interpretation, Reported, interpret};
use super::events::{WaitQuery, wait_flag};
use super::sns::{SnsMessage, SnsMessageType};
use super::{AppState, Claim, RequestMeta};
use crate::audit::Kind;
use crate::resolve::aws::{self, RotationError, Source};

const HOOK: &str = "aws:lambda-hook";
const EVENTBRIDGE: &str = "aws:eventbridge";
const SNS: &str = "aws:sns";

/// The rotation Lambda's own event, as the hook forwards it.
#[derive(Debug, Deserialize)]
pub(super) struct HookEvent {
    #[serde(rename = "SecretId")]
    secret_id: String,
    #[serde(rename = "ClientRequestToken")]
    token: String,
    #[serde(rename = "Step")]
    pub(super) step: String,
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
pub async fn post_aws_event(
    State(state): State<AppState>,
    meta: RequestMeta,
    query: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let actor = if headers.contains_key("webhook-signature") || headers.contains_key("webhook-id") {
        HOOK
    } else if headers.contains_key("x-amz-sns-message-type") {
        SNS
    } else {
        EVENTBRIDGE
    };
    let body = state.body(&meta, actor, body).await?;
    let received_at = Utc::now();
    match actor {
        HOOK => lambda_hook(&state, &meta, &headers, &body, query, received_at).await,
        SNS => sns(&state, &meta, &body, query, received_at).await,
        _ => eventbridge(&state, &meta, &headers, &body, query, received_at).await,
    }
}

async fn lambda_hook(
    state: &AppState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    body: &[u8],
    query: Result<Query<WaitQuery>, QueryRejection>,
    received_at: DateTime<Utc>,
) -> Result<Response, ApiError> {
    let checked = state
        .verifier
        .verify(headers, body, received_at.timestamp())
        .map_err(ApiError::from)
        .and_then(|delivery| Ok((delivery, wait_flag(query)?, parse_hook(body)?)));
    let (delivery, wait, hook) = match checked {
        Ok(ok) => ok,
        Err(e) => return Err(state.reject(meta, HOOK, e).await),
    };
    let detail = json!({
        "webhook_id": delivery.id, "secret_id": hook.secret_id, "version_id": hook.token,
        "step": hook.step, "remote_addr": meta.remote,
    });
    if hook.step != "finishSecret" {
        let claimed = state
            .ctx
            .store
            .claim(&format!("webhook:{}", delivery.id), "-", received_at)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        if let crate::store::Claim::Duplicate { action_id } = claimed {
            return Err(state
                .reject(meta, HOOK, ApiError::Replayed { action_id })
                .await);
        }
        let reason = format!(
            "{} needs no action; sessions are terminated after finishSecret",
            hook.step
        );
        return state
            .acknowledge(
                HOOK,
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
    let claims = vec![Claim::reject(format!("webhook:{}", delivery.id))];
    rotation(
        state,
        meta,
        HOOK,
        Source::LambdaHook,
        reported,
        received_at,
        wait,
        claims,
        detail,
    )
    .await
}

async fn eventbridge(
    state: &AppState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    body: &[u8],
    query: Result<Query<WaitQuery>, QueryRejection>,
    received_at: DateTime<Utc>,
) -> Result<Response, ApiError> {
    let authenticated = match headers.get(&state.aws.api_key_header) {
        None => Err(ApiError::MissingCredentials),
        Some(key) => {
            let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            // Compare with every key, without stopping early.
            let ok = state
                .aws
                .api_keys
                .iter()
                .fold(false, |found, k| found | bool::from(presented.ct_eq(k)));
            if ok {
                Ok(())
            } else {
                Err(ApiError::InvalidApiKey)
            }
        }
    };
    let checked = authenticated.and_then(|()| Ok((wait_flag(query)?, parse_json::<Value>(body)?)));
    let (wait, event) = match checked {
        Ok(ok) => ok,
        Err(e) => return Err(state.reject(meta, EVENTBRIDGE, e).await),
    };
    reported_event(
        state,
        meta,
        EVENTBRIDGE,
        Source::EventBridge,
        &event,
        received_at,
        wait,
        Vec::new(),
    )
    .await
}

async fn sns(
    state: &AppState,
    meta: &RequestMeta,
    body: &[u8],
    query: Result<Query<WaitQuery>, QueryRejection>,
    received_at: DateTime<Utc>,
) -> Result<Response, ApiError> {
    let message: SnsMessage = match super::sns::parse(body) {
        Ok(message) => message,
        Err(e) => return Err(state.reject(meta, SNS, ApiError::Sns(e)).await),
    };
    // The claimed topic first, before anything is fetched: the certificate URL is the
    // sender's choice, so a message for a topic nobody configured must cost nothing. The
    // signature, checked next, covers `TopicArn`, so a forged topic is refused there.
    let topics = &state.ctx.config.aws.sns.topics;
    if topics.is_empty() {
        return Err(state.reject(meta, SNS, ApiError::SnsNotConfigured).await);
    }
    if !topics.contains(&message.topic_arn) {
        let e = ApiError::UntrustedTopic(shown_topic(&message.topic_arn));
        return Err(state.reject(meta, SNS, e).await);
    }
    if let Err(e) = state.aws.sns.verify(&message).await {
        return Err(state.reject(meta, SNS, ApiError::Sns(e)).await);
    }
    // The message-id claim that stops redeliveries lasts `replay_retention`; an older
    // message could be replayed after its claim is pruned, so it is refused instead.
    let retention = chrono::Duration::from_std(state.ctx.config.webhooks.replay_retention)
        .unwrap_or(chrono::Duration::MAX);
    let sent = DateTime::parse_from_rfc3339(&message.timestamp).map(|t| t.with_timezone(&Utc));
    match sent {
        Ok(sent) if received_at - sent <= retention => {}
        _ => {
            let e = ApiError::StaleSnsMessage(message.timestamp.clone());
            return Err(state.reject(meta, SNS, e).await);
        }
    }
    let wait = match wait_flag(query) {
        Ok(wait) => wait,
        Err(e) => return Err(state.reject(meta, SNS, e).await),
    };
    let detail = json!({"topic_arn": message.topic_arn, "message_id": message.message_id, "remote_addr": meta.remote});
    match message.message_type {
        SnsMessageType::SubscriptionConfirmation => {
            if let Err(e) = state.aws.sns.confirm(&message).await {
                return Err(state.reject(meta, SNS, ApiError::Sns(e)).await);
            }
            let reason = "subscription confirmed".to_owned();
            state
                .acknowledge(SNS, Kind::EventAcknowledged, "confirmed", reason, detail)
                .await
        }
        SnsMessageType::UnsubscribeConfirmation => {
            let reason =
                "the topic unsubscribed sever; no rotations will arrive this way".to_owned();
            tracing::warn!(topic = %message.topic_arn, "{reason}");
            state
                .acknowledge(SNS, Kind::EventAcknowledged, "acknowledged", reason, detail)
                .await
        }
        SnsMessageType::Notification => {
            let event: Value = match parse_json(message.message.as_bytes()) {
                Ok(event) => event,
                Err(e) => return Err(state.reject(meta, SNS, e).await),
            };
            // SNS redelivers a message with the same id; that is the same event again.
            let claims = vec![Claim::acknowledge(format!("sns:{}", message.message_id))];
            reported_event(
                state,
                meta,
                SNS,
                Source::Sns,
                &event,
                received_at,
                wait,
                claims,
            )
            .await
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
#[allow(clippy::too_many_arguments)]
async fn reported_event(
    state: &AppState,
    meta: &RequestMeta,
    actor: &str,
    source: Source,
    event: &Value,
    received_at: DateTime<Utc>,
    wait: bool,
    claims: Vec<Claim>,
) -> Result<Response, ApiError> {
    let event_id = event.get("id").cloned().unwrap_or(Value::Null);
    let detail_type = event.get("detail-type").cloned().unwrap_or(Value::Null);
    let detail =
        json!({"event_id": event_id, "detail_type": detail_type, "remote_addr": meta.remote});
    match interpret(event) {
        Err(why) => Err(state.reject(meta, actor, ApiError::Invalid(why)).await),
        Ok(Interpretation::Ignored(reason)) => {
            state
                .acknowledge(actor, Kind::EventIgnored, "ignored", reason, detail)
                .await
        }
        Ok(Interpretation::Rotation(reported)) => {
            rotation(
                state,
                meta,
                actor,
                source,
                reported,
                received_at,
                wait,
                claims,
                detail,
            )
            .await
        }
    }
}

/// Resolves a reported rotation against Secrets Manager and the config, then acts once.
#[allow(clippy::too_many_arguments)]
async fn rotation(
    state: &AppState,
    meta: &RequestMeta,
    actor: &str,
    source: Source,
    reported: Reported,
    received_at: DateTime<Utc>,
    wait: bool,
    mut claims: Vec<Claim>,
    mut detail: Value,
) -> Result<Response, ApiError> {
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
        &state.ctx.config,
        &state.ctx.targets,
        state.aws.secrets_manager.as_ref(),
        &report,
    )
    .await;
    let planned = match resolved {
        Ok(aws::Resolved::Planned(planned)) => planned,
        Ok(aws::Resolved::NotMapped(reason)) => {
            return state
                .acknowledge(actor, Kind::EventIgnored, "ignored", reason, detail)
                .await;
        }
        Err(RotationError::NoClient) => {
            return Err(ApiError::Unavailable("no Secrets Manager client".into()));
        }
        Err(RotationError::Aws(e)) => {
            return Err(state.reject(meta, actor, ApiError::Aws(e)).await);
        }
        Err(RotationError::VersionNotCurrent(version)) => {
            let e = ApiError::VersionNotCurrent(version);
            return Err(state.reject(meta, actor, e).await);
        }
        Err(RotationError::Resolve(e)) => return Err(state.reject(meta, actor, e.into()).await),
    };
    planned.describe(&mut detail);
    claims.push(Claim::acknowledge(planned.rotation_key()));
    let aws::Planned { plan, .. } = *planned;
    state.accept(meta, actor, claims, plan, detail, wait).await
}
