//! HashiCorp Vault: `POST /v1/events/vault` (Vault's event notifications, forwarded and
//! signed with Standard Webhooks), the websocket [`subscriber`] (Enterprise) and the static-role
//! [`watcher`] (every edition). All three end in the same place: a rotation of a configured
//! credential, acted on once per `last_vault_rotation` (or kv version).

pub mod subscriber;
pub mod watcher;

use std::collections::BTreeMap;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::events::{WaitQuery, wait_flag};
use super::{Accepted, Arrival, Claim, Intake, accept, note};
use crate::audit::Kind;
use crate::http::error::{ApiError, parse_json};
use crate::http::reply::status_response;
use crate::http::{self, Actor, RequestMeta};
use crate::resolve::cutoff;
use crate::resolve::vault::{self, StaticRole, trimmed};
use crate::resolve::vault::{Owner, owner_of};

/// A Vault event's CloudEvents envelope as [`VaultEvent::parse`] reads it, for the OpenAPI
/// document only.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct VaultEnvelope {
    /// The event id, when `data.event.id` is absent.
    id: Option<String>,
    /// The event type, when `data.event_type` is absent.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// When Vault emitted it (RFC 3339).
    time: Option<String>,
    /// The event.
    data: VaultData,
}

/// A Vault event's `data`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct VaultData {
    /// `database/rotate`, `kv-v2/data-write`, …
    event_type: Option<String>,
    /// Its namespace.
    namespace: Option<String>,
    /// Where it happened.
    plugin_info: VaultPluginInfo,
    /// Its id and metadata.
    event: VaultEventBody,
}

/// A Vault event's `data.plugin_info`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct VaultPluginInfo {
    /// The mount.
    mount_path: String,
}

/// A Vault event's `data.event`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct VaultEventBody {
    /// The event id.
    id: Option<String>,
    /// Vault sends every value as a string.
    metadata: Option<BTreeMap<String, String>>,
}

/// A Vault event notification, read leniently from its CloudEvents envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultEvent {
    /// Event id.
    pub id: String,
    /// `database/rotate`, `kv-v2/data-write`, …
    pub event_type: String,
    /// Mount path without slashes at either end.
    pub mount_path: String,
    /// Namespace path without slashes at either end; `None` for the root namespace.
    pub namespace: Option<String>,
    /// `data.event.metadata`; Vault sends every value as a string.
    pub metadata: BTreeMap<String, String>,
    /// When Vault emitted it.
    pub time: Option<DateTime<Utc>>,
}

impl VaultEvent {
    /// Reads the envelope; `Err` says what is missing. Both spellings of the content-type key
    /// (`datacontenttype`, `datacontentype`) are accepted by not depending on either.
    pub fn parse(envelope: &Value) -> Result<Self, String> {
        let data = envelope
            .get("data")
            .filter(|d| d.is_object())
            .ok_or("no data object")?;
        let event_type = data
            .get("event_type")
            .or_else(|| envelope.get("type"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && *t != "*")
            .ok_or("no event_type")?
            .to_owned();
        let event = data
            .get("event")
            .filter(|e| e.is_object())
            .ok_or("no data.event object")?;
        let id = event
            .get("id")
            .or_else(|| envelope.get("id"))
            .and_then(Value::as_str)
            .ok_or("no event id")?
            .to_owned();
        let metadata = event
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mount_path = data
            .pointer("/plugin_info/mount_path")
            .and_then(Value::as_str)
            .and_then(trimmed)
            .ok_or("no data.plugin_info.mount_path")?;
        let namespace = data
            .get("namespace")
            .and_then(Value::as_str)
            .and_then(trimmed);
        let time = envelope
            .get("time")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        Ok(Self {
            id,
            event_type,
            mount_path,
            namespace,
            metadata,
            time,
        })
    }
}

/// `POST /v1/events/vault`: a forwarded, Standard Webhooks-signed Vault event.
#[utoipa::path(post, path = "/v1/events/vault", tag = "intake",
    request_body = VaultEnvelope,
    params(("wait" = Option<bool>, Query, description = "Answer with the finished report instead of `202`.")),
    responses(
        (status = 200, description = "Finished (`wait=true`): the report; or a duplicate delivery, or an event that needs nothing done.", body = crate::http::openapi::EventAnswer),
        (status = 202, description = "Accepted: the action and where to follow it (with `wait`, still running; or scheduled).", body = crate::http::openapi::AcceptedBody),
        (status = 401, description = "Standard Webhooks: `missing_header`, `timestamp_out_of_tolerance`, `invalid_signature`.", body = crate::http::openapi::ErrorBody),
        (status = 400, description = "`malformed_json`, `malformed_header` or `unreadable_body`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`replayed_delivery` or `version_not_current`.", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request`, `unknown_credential`, `unknown_target`, `protected_login` and the other refusals of what the event names.", body = crate::http::openapi::ErrorBody),
        (status = 502, description = "Secrets Manager, Vault or SNS could not be asked; nothing was executed.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable` (store, audit trail) or `sns_busy`.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn post_vault_event(
    State(intake): State<Intake>,
    meta: RequestMeta,
    query: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> (Extension<Actor>, Result<Response, ApiError>) {
    let answer = vault_event(&intake, &meta, query, &headers, body).await;
    (Extension(Actor::VaultEvent), answer)
}

async fn vault_event(
    intake: &Intake,
    meta: &RequestMeta,
    query: Result<Query<WaitQuery>, QueryRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = http::body(body, intake.max_body)?;
    let received_at = Utc::now();
    let delivery = intake
        .verifier
        .verify(headers, &body, received_at.timestamp())?;
    let wait = wait_flag(query)?;
    let envelope: Value = parse_json(&body)?;
    let event = VaultEvent::parse(&envelope)
        .map_err(|e| ApiError::Invalid(format!("not a Vault event: {e}")))?;
    let arrival = Arrival {
        actor: Actor::VaultEvent,
        received_at,
        claims: vec![Claim::reject(format!("webhook:{}", delivery.id))],
        detail: event_detail(&event, &meta.remote),
    };
    match handle_event(intake, arrival, "event", &event).await? {
        Handled::Accepted(accepted) => intake.respond(accepted, wait).await,
        Handled::Ignored(reason) => Ok(status_response("ignored", &reason)),
        Handled::Acknowledged(reason) => Ok(status_response("acknowledged", &reason)),
    }
}

/// What became of a Vault event.
pub enum Handled {
    /// A rotation was accepted (or recognised as already done).
    Accepted(Accepted),
    /// Not about a configured credential, or not a rotation; audited.
    Ignored(String),
    /// Needs no action but is worth a record (e.g. `database/rotate-fail`); audited.
    Acknowledged(String),
}

/// The detail of an event's records, `remote` being where it came from.
pub fn event_detail(event: &VaultEvent, remote: &str) -> Value {
    json!({
        "event_id": event.id, "event_type": event.event_type, "mount_path": event.mount_path,
        "namespace": event.namespace, "metadata": event.metadata, "remote_addr": remote,
    })
}

/// Handles an event from any Vault source, `arrival.detail` being its [`event_detail`].
/// Errors that refuse the event are the caller's to record.
pub async fn handle_event(
    intake: &Intake,
    arrival: Arrival,
    source: &str,
    event: &VaultEvent,
) -> Result<Handled, ApiError> {
    let Arrival {
        actor,
        received_at,
        claims,
        detail,
    } = arrival;
    let actor = &actor;
    let config = &intake.ctx.config;
    let ignored = detail.clone();
    let ignore = |reason: String| async move {
        note(&intake.ctx, actor, Kind::EventIgnored, &reason, ignored).await?;
        Ok(Handled::Ignored(reason))
    };
    match event.event_type.as_str() {
        "database/rotate" | "database/static-creds-create" => {
            let Some(role) = event.metadata.get("name") else {
                return Err(ApiError::Invalid(format!(
                    "{} event without metadata.name",
                    event.event_type
                )));
            };
            let Some((owner, ns)) =
                owner_of(config, &event.mount_path, role, event.namespace.as_deref())
            else {
                let path = vault::vault_path(event.namespace.as_deref(), &event.mount_path, role);
                return ignore(format!(
                    "static role {path} is not mapped to any credential or watched mount"
                ))
                .await;
            };
            let Some(client) = &intake.vault else {
                return Err(ApiError::Unavailable("Vault is not configured".into()));
            };
            let static_role = client
                .static_role(ns.as_deref(), owner.mount(), role)
                .await?;
            let arrival = Arrival {
                actor: actor.clone(),
                received_at,
                claims,
                detail,
            };
            static_role_rotated(
                intake,
                arrival,
                source,
                owner,
                role,
                ns.as_deref(),
                static_role,
            )
            .await
            .map(Handled::Accepted)
        }
        "kv-v2/data-write" => {
            let Some(data_path) = event
                .metadata
                .get("data_path")
                .or_else(|| event.metadata.get("path"))
            else {
                return Err(ApiError::Invalid(
                    "kv-v2/data-write event without metadata.data_path".into(),
                ));
            };
            let inner = data_path
                .trim_matches('/')
                .strip_prefix(&format!("{}/data/", event.mount_path))
                .unwrap_or(data_path)
                .trim_matches('/');
            let found =
                vault::kv_owner(config, &event.mount_path, inner, event.namespace.as_deref());
            let Some((credential, cv, ns)) = found else {
                return ignore(format!(
                    "kv secret {}/{inner} is not mapped to any credential",
                    event.mount_path
                ))
                .await;
            };
            let path = vault::vault_path(ns.as_deref(), &cv.mount, inner);
            // Vault's own metadata, not the event's word, says which version is current and
            // when it was written: that time is the exact cutoff. Without a Vault client the
            // event's time and version are all there is.
            let (cutoff, version) = match &intake.vault {
                Some(client) => {
                    let kv = client.kv_version(ns.as_deref(), &cv.mount, inner).await?;
                    (
                        cutoff::clamped(None, Some(kv.created_time), received_at),
                        kv.version.to_string(),
                    )
                }
                None => (
                    cutoff::clamped(event.time, None, received_at),
                    event
                        .metadata
                        .get("current_version")
                        .cloned()
                        .unwrap_or_else(|| event.id.clone()),
                ),
            };
            let plan = vault::plan(config, credential, None, cutoff, source, path.clone())?;
            let mut claims = claims;
            claims.push(Claim::acknowledge(format!("vault-kv:{path}:{version}")));
            let mut detail = detail;
            detail["credential"] = json!(credential);
            detail["cutoff"] = json!(cutoff);
            detail["kv_version"] = json!(version);
            accept(&intake.ctx, actor, claims, plan, detail)
                .await
                .map(Handled::Accepted)
        }
        "database/rotate-fail" => {
            let reason = "Vault reports a failed rotation: the old password is still valid, nothing is terminated".to_owned();
            tracing::warn!(event_id = %event.id, "{reason}");
            note(&intake.ctx, actor, Kind::EventAcknowledged, &reason, detail).await?;
            Ok(Handled::Acknowledged(reason))
        }
        other => ignore(format!("{other} is not a rotation sever acts on")).await,
    }
}

/// A static role whose `last_vault_rotation` is `static_role.last_vault_rotation`: the
/// sessions of its user that began before then end, once per rotation however it is reported.
pub async fn static_role_rotated(
    intake: &Intake,
    arrival: Arrival,
    source: &str,
    owner: Owner<'_>,
    role: &str,
    namespace: Option<&str>,
    static_role: StaticRole,
) -> Result<Accepted, ApiError> {
    let Arrival {
        actor,
        received_at,
        mut claims,
        mut detail,
    } = arrival;
    let path = vault::vault_path(namespace, owner.mount(), role);
    let rotated = static_role.last_vault_rotation;
    let cutoff = cutoff::clamped(None, Some(rotated), received_at);
    let config = &intake.ctx.config;
    let user = &static_role.username;
    if let Owner::Credential(id, _) = owner {
        detail["credential"] = json!(id);
    }
    let plan = vault::plan_for_owner(config, owner, user, cutoff, source, path.clone())?;
    detail["static_role"] = json!(static_role);
    detail["cutoff"] = json!(cutoff);
    claims.push(Claim::acknowledge(rotation_key(&path, rotated)));
    accept(&intake.ctx, &actor, claims, plan, detail).await
}

/// The idempotency key of one rotation of a static role: events, the subscriber and the
/// watcher all derive the same one.
pub fn rotation_key(path: &str, last_vault_rotation: DateTime<Utc>) -> String {
    format!(
        "vault-rotation:{path}:{}",
        last_vault_rotation.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vaults_envelope_is_read_leniently() {
        let envelope = json!({
            "id": "a3be9fb1", "source": "https://vaultproject.io/", "specversion": "1.0", "type": "*",
            "data": {
                "event": {"id": "a3be9fb1", "metadata": {"name": "orders", "modified": "true", "operation": "rotate", "path": "database/rotate-role/orders"}},
                "event_type": "database/rotate",
                "plugin_info": {"mount_class": "secret", "mount_accessor": "database_1", "mount_path": "database/", "plugin": "database"},
                "namespace": "admin/team/"
            },
            "datacontentype": "application/cloudevents",
            "time": "2023-09-12T15:19:49.394915-07:00"
        });
        let event = VaultEvent::parse(&envelope).unwrap();
        assert_eq!(event.event_type, "database/rotate");
        assert_eq!(event.mount_path, "database");
        assert_eq!(event.namespace.as_deref(), Some("admin/team"));
        assert_eq!(event.metadata["name"], "orders");
        assert_eq!(
            event.time.unwrap().to_rfc3339(),
            "2023-09-12T22:19:49.394915+00:00"
        );
    }

    #[test]
    fn malformed_envelopes_say_what_is_missing() {
        assert!(
            VaultEvent::parse(&json!({"hello": 1}))
                .unwrap_err()
                .contains("data")
        );
        let no_mount = json!({"data": {"event_type": "database/rotate", "event": {"id": "1", "metadata": {}}}});
        assert!(
            VaultEvent::parse(&no_mount)
                .unwrap_err()
                .contains("mount_path")
        );
    }
}
