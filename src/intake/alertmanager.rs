//! `POST /v1/alerts/alertmanager`: Alertmanager's webhook (version 4) runs the policy a
//! route maps its alert to, once per firing alert. Its own bearer token; re-deliveries
//! (the same `groupKey`, `fingerprint` and `startsAt`) run nothing; resolved alerts are
//! recorded and do nothing; alerts no route takes are acknowledged and recorded as ignored,
//! so Alertmanager does not retry them for ever.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::Intake;
use crate::audit::{Entry, Kind};
use crate::config::AlertRoute;
use crate::context::Context;
use crate::http::error::{ApiError, parse_json};
use crate::http::keys::HashedKeys;
use crate::http::{self, Actor};
use crate::operator::bearer_token;
use crate::policy::{self, Outcome, Trigger};

/// The most alerts one notification may carry.
const MAX_ALERTS: usize = 1000;

/// Alertmanager's webhook body, version 4 (fields sever does not use are ignored, as
/// Alertmanager adds some over time).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Must be `"4"`.
    pub version: String,
    /// The alert group's key.
    pub group_key: String,
    /// `firing` or `resolved`, for the group.
    pub status: String,
    /// The alerts.
    pub alerts: Vec<Alert>,
}

/// One alert of a notification.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Alertmanager's id of its label set.
    pub fingerprint: String,
    /// When it began firing.
    pub starts_at: String,
}

/// What became of one alert.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertOutcome {
    /// The alert's fingerprint.
    pub fingerprint: String,
    /// Whether its policy ran.
    pub status: AlertStatus,
    /// The policy its route names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// What the policy's evaluation came to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The action the policy created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_id: Option<String>,
    /// Why it was ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether an alert's policy ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// Its policy was evaluated.
    Ran,
    /// This firing was already handled (Alertmanager's repeat or another replica's).
    Duplicate,
    /// The alert resolved: nothing to do.
    Resolved,
    /// No route matched, or the route could not be applied (see `reason`).
    Ignored,
}

/// The answer: one outcome per alert.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Answer {
    /// Per alert, in the notification's order.
    pub alerts: Vec<AlertOutcome>,
}

/// Receives one notification.
#[utoipa::path(post, path = "/v1/alerts/alertmanager", tag = "intake",
    security(("alertmanager_token" = [])),
    request_body = Notification,
    responses(
        (status = 200, description = "One outcome per alert.", body = Answer),
        (status = 400, description = "`malformed_json` or `unreadable_body`.", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request`, or a refusal of the policy a route names.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn post_alertmanager(
    State(intake): State<Intake>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> (Extension<Actor>, Result<Json<Answer>, ApiError>) {
    let ctx = &intake.ctx;
    if let Err(e) = authenticate(&intake.alertmanager_keys, &headers) {
        return (Extension(Actor::Anonymous), Err(e));
    }
    let answer = async {
        let body = http::body(body, intake.max_body)?;
        let notification: Notification = parse_json(&body)?;
        check(&notification)?;
        let mut alerts = Vec::new();
        for alert in &notification.alerts {
            alerts.push(handle(ctx, &notification.group_key, alert).await?);
        }
        Ok(Json(Answer { alerts }))
    };
    (Extension(Actor::Alertmanager), answer.await)
}

fn authenticate(keys: &HashedKeys<()>, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or(ApiError::MissingToken)?;
    keys.find(token.as_bytes())
        .map(|_| ())
        .ok_or(ApiError::InvalidToken)
}

/// Refuses a body that is not a version-4 notification sever can act on, before anything
/// is run.
fn check(n: &Notification) -> Result<(), ApiError> {
    let invalid = |why: String| Err(ApiError::Invalid(why));
    if n.version != "4" {
        return invalid(format!(
            "version {:?}: only Alertmanager's webhook version 4 is understood",
            n.version
        ));
    }
    if !matches!(n.status.as_str(), "firing" | "resolved") {
        return invalid(format!("status {:?} is not firing or resolved", n.status));
    }
    if n.alerts.len() > MAX_ALERTS {
        return invalid(format!("more than {MAX_ALERTS} alerts in one notification"));
    }
    for a in &n.alerts {
        if !matches!(a.status.as_str(), "firing" | "resolved") {
            return invalid(format!(
                "alert status {:?} is not firing or resolved",
                a.status
            ));
        }
        if a.fingerprint.is_empty() || a.starts_at.is_empty() {
            return invalid("an alert without fingerprint or startsAt".into());
        }
    }
    Ok(())
}

async fn handle(ctx: &Context, group_key: &str, alert: &Alert) -> Result<AlertOutcome, ApiError> {
    let alertname = alert.labels.get("alertname").cloned().unwrap_or_default();
    let mut out = AlertOutcome {
        fingerprint: alert.fingerprint.clone(),
        status: AlertStatus::Ignored,
        policy: None,
        outcome: None,
        action_id: None,
        reason: None,
    };
    let record = |kind, detail: serde_json::Value| async move {
        let mut d = json!({
            "source": "alertmanager", "alertname": alertname, "fingerprint": alert.fingerprint,
            "starts_at": alert.starts_at, "status": alert.status,
        });
        if let (Some(map), serde_json::Value::Object(more)) = (d.as_object_mut(), detail) {
            map.extend(more);
        }
        let outcome = match kind {
            Kind::EventAccepted => "accepted",
            Kind::EventDuplicate => "duplicate",
            // Resolved alerts too: they need no action.
            _ => "ignored",
        };
        crate::telemetry::event_received("alertmanager", outcome);
        ctx.audit
            .append(Entry::new(kind, Actor::Alertmanager.to_string(), None, d))
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))
    };
    if alert.status == "resolved" {
        out.status = AlertStatus::Resolved;
        record(Kind::EventAcknowledged, json!({})).await?;
        return Ok(out);
    }
    let Some(route) = ctx
        .config
        .alertmanager
        .routes
        .iter()
        .find(|r| r.matches(&alert.labels))
    else {
        out.reason = Some("no route matches its labels".into());
        record(Kind::EventIgnored, json!({"reason": out.reason})).await?;
        return Ok(out);
    };
    out.policy = Some(route.policy.clone());
    let found = policy::find(&ctx.config, &route.policy)
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let only_target = match target(route, alert, &found.targets(&ctx.config)) {
        Ok(target) => target,
        Err(why) => {
            out.reason = Some(why);
            record(
                Kind::EventIgnored,
                json!({"policy": route.policy, "reason": out.reason}),
            )
            .await?;
            return Ok(out);
        }
    };
    let key = firing_key(group_key, &alert.fingerprint, &alert.starts_at);
    let first = ctx
        .store
        .claim_alert(&key, Utc::now())
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if !first {
        out.status = AlertStatus::Duplicate;
        record(Kind::EventDuplicate, json!({"policy": route.policy})).await?;
        return Ok(out);
    }
    let trigger = Trigger {
        kind: "alert",
        alert: Some(format!("{}/{}", out_name(alert), alert.fingerprint)),
        only_target,
        execute: true,
    };
    let evaluation = match policy::evaluate(ctx, found, &trigger).await {
        Ok(e) => e,
        Err(e) => {
            // Not run: forget the firing, so Alertmanager's retry runs it.
            let _ = ctx.store.release_alert(&key).await;
            return Err(ApiError::Unavailable(format!(
                "policy {:?} could not run: {e}",
                route.policy
            )));
        }
    };
    out.status = AlertStatus::Ran;
    out.outcome = Some(evaluation.outcome);
    out.action_id = evaluation
        .action
        .as_ref()
        .map(|a| a.action_id)
        .or(evaluation.running_action)
        .map(|id| id.to_string());
    record(
        Kind::EventAccepted,
        json!({"policy": route.policy, "outcome": out.outcome, "action_id": out.action_id,
               "target": trigger.only_target}),
    )
    .await?;
    Ok(out)
}

fn out_name(alert: &Alert) -> &str {
    alert.labels.get("alertname").map_or("", String::as_str)
}

/// The target an alert names through the route's `target_label`: one of the policy's
/// targets, or why the alert is ignored. `None` without a `target_label`: all of them.
fn target(route: &AlertRoute, alert: &Alert, covered: &[String]) -> Result<Option<String>, String> {
    let Some(label) = &route.target_label else {
        return Ok(None);
    };
    match alert.labels.get(label) {
        None => Err(format!("it has no label {label:?}, which names the target")),
        Some(t) if covered.contains(t) => Ok(Some(t.clone())),
        Some(t) => Err(format!(
            "its label {label:?} names {t:?}, which is not one of policy {:?}'s targets",
            route.policy
        )),
    }
}

/// What makes a firing alert one: its group, its label set, and when it began. Hashed, so
/// the stored key is bounded whatever Alertmanager sends.
fn firing_key(group_key: &str, fingerprint: &str, starts_at: &str) -> String {
    let mut h = Sha256::new();
    for part in [group_key, fingerprint, starts_at] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The accepted tokens' hashes, from validated config.
pub fn keys(hashes: &[String]) -> HashedKeys<()> {
    let entries = hashes
        .iter()
        .filter_map(|h| {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(h.to_ascii_lowercase(), &mut hash).ok()?;
            Some(((), hash))
        })
        .collect();
    HashedKeys::new(entries)
}
