//! `sever check-config` (validates the config, loads every secret and prints the plan) and
//! `sever operator-token`.

use std::process::ExitCode;

use secrecy::SecretString;
use serde_json::{Value, json};

use super::CliError;
use crate::audit::CheckpointKey;
use crate::config::Config;
use crate::intake::webhook::Verifier;
use crate::operator::new_token;
use crate::store::Store;
use crate::terminate::Targets;

pub(super) async fn check_config(config: &Config) -> Result<ExitCode, CliError> {
    let secrets = config.webhook_secrets()?;
    Verifier::new(&secrets, config.webhooks.tolerance)?;
    config.store.url.load("store.url")?;
    CheckpointKey::load_all(&config.audit)?;
    for (id, target) in &config.targets {
        target.url.load(&format!("targets.{id}.url"))?;
        if let Some(lock_url) = &target.lock_url {
            lock_url.load(&format!("targets.{id}.lock_url"))?;
        }
    }
    config.check_own_logins()?;
    let channels = crate::notify::check_channels(config)
        .map_err(|e| CliError::Context(crate::context::ContextError::from(e)))?;
    let aws = &config.aws;
    for (i, key) in aws.eventbridge.api_keys.iter().enumerate() {
        key.load(&format!("aws.eventbridge.api_keys[{i}]"))?;
    }
    if let Some(keys) = &aws.static_credentials {
        keys.access_key_id
            .load("aws.static_credentials.access_key_id")?;
        keys.secret_access_key
            .load("aws.static_credentials.secret_access_key")?;
    }
    let redacted = |s: &crate::config::SecretRef| format!("<redacted, {}>", s.describe());
    let vault = match &config.vault {
        None => Value::Null,
        Some(v) => {
            let auth = match &v.auth {
                crate::config::VaultAuth::Token { token } => {
                    token.load("vault.auth.token")?;
                    json!({"method": "token", "token": redacted(token)})
                }
                crate::config::VaultAuth::Approle {
                    role_id,
                    secret_id,
                    mount,
                } => {
                    secret_id.load("vault.auth.secret_id")?;
                    json!({"method": "approle", "role_id": role_id, "secret_id": redacted(secret_id), "mount": mount})
                }
                crate::config::VaultAuth::Kubernetes {
                    role,
                    jwt_file,
                    mount,
                } => {
                    json!({"method": "kubernetes", "role": role, "jwt_file": jwt_file, "mount": mount})
                }
            };
            json!({
                "address": v.address,
                "namespace": v.namespace,
                "auth": auth,
                "tls": {"ca_file": v.tls.ca_file, "client_cert_file": v.tls.client_cert_file, "skip_verify": v.tls.skip_verify},
                "subscriber": {"enabled": v.subscriber.enabled, "event_types": v.subscriber.event_types, "namespaces": v.subscriber.namespaces},
                "watcher": v.watcher.as_ref().map(|w| humantime::format_duration(w.interval).to_string()),
            })
        }
    };
    let targets: serde_json::Map<String, Value> = config
        .targets
        .iter()
        .map(|(id, t)| {
            let detail = json!({
                "engine": t.engine,
                "url": t.url.describe(),
                "protected_logins": config.protected_on(id),
                "pool_size": t.pool_size,
                "connect_timeout": humantime::format_duration(t.connect_timeout).to_string(),
                "sweep": t.sweep.as_ref().map(|w| json!({"pattern": w.pattern, "interval": humantime::format_duration(w.interval).to_string()})),
                "locks": t.locks,
                "lock_url": t.lock_url.as_ref().map(|u| u.describe()),
            });
            (id.clone(), detail)
        })
        .collect();
    let credentials: serde_json::Map<String, Value> = config
        .credentials
        .iter()
        .map(|(id, c)| {
            let detail = json!({"description": c.description, "policy": c.policy, "logins": c.logins, "aws": c.aws, "vault": c.vault});
            (id.clone(), detail)
        })
        .collect();
    let grants = lock_grants(config).await;
    let plan = json!({
        "lock_grants": grants,
        "server": {
            "listen": config.server.listen,
            "operator_listen": config.server.operator_listen,
            "metrics_listen": config.server.metrics_listen,
            "request_timeout": humantime::format_duration(config.server.request_timeout).to_string(),
            "header_read_timeout": humantime::format_duration(config.server.header_read_timeout).to_string(),
            // null: sized at start to fit the open-file limit.
            "max_connections": config.server.max_connections,
            "operator_max_connections": config.server.operator_max_connections,
            "max_body_bytes": config.server.max_body_bytes,
        },
        "store": config.store.url.describe(),
        "audit": {
            "checkpoint_interval": humantime::format_duration(config.audit.checkpoint_interval).to_string(),
            "checkpoint_key": config.audit.checkpoint_key.as_ref().map(redacted),
            "checkpoint_previous_keys": config.audit.checkpoint_previous_keys.iter().map(redacted).collect::<Vec<_>>(),
            "checkpoint_file": config.audit.checkpoint_file,
            "unkeyed_checkpoints_through": config.audit.unkeyed_checkpoints_through.as_ref().map(|p| json!({"index": p.index, "mac": p.mac})),
        },
        "webhooks": {
            "secrets": config.webhooks.secrets.iter().map(redacted).collect::<Vec<_>>(),
            "tolerance": humantime::format_duration(config.webhooks.tolerance).to_string(),
            "replay_retention": humantime::format_duration(config.webhooks.replay_retention).to_string(),
        },
        "termination": {
            "timeout": humantime::format_duration(config.termination.timeout).to_string(),
            "verify_timeout": humantime::format_duration(config.termination.verify_timeout).to_string(),
        },
        "queue": {
            "concurrency": config.queue.concurrency,
            "per_target": config.queue.per_target_limit(),
            "lease": humantime::format_duration(config.queue.lease).to_string(),
            "retry_for": humantime::format_duration(config.queue.retry_for).to_string(),
            "max_backoff": humantime::format_duration(config.queue.max_backoff).to_string(),
            "poll_interval": humantime::format_duration(config.queue.poll_interval).to_string(),
            "keep_finished": humantime::format_duration(config.queue.keep_finished).to_string(),
        },
        "operators": config.operators.iter().map(|o| json!({"name": o.name, "token_sha256": "<redacted>"})).collect::<Vec<_>>(),
        "metrics": {
            "tokens_sha256": config.metrics.tokens_sha256.iter().map(|_| "<redacted>").collect::<Vec<_>>(),
            "sessions_interval": humantime::format_duration(config.metrics.sessions_interval).to_string(),
        },
        "targets": targets,
        "credentials": credentials,
        "aws": {
            "region": aws.region,
            "endpoint_url": aws.endpoint_url,
            "credentials": aws.static_credentials.as_ref().map_or_else(
                || json!("default AWS credential chain"),
                |k| json!({"access_key_id": redacted(&k.access_key_id), "secret_access_key": redacted(&k.secret_access_key)}),
            ),
            "eventbridge": {
                "api_keys": aws.eventbridge.api_keys.iter().map(redacted).collect::<Vec<_>>(),
                "header": aws.eventbridge.header,
            },
            "sns": {"topics": aws.sns.topics},
        },
        "vault": vault,
        "notify": {
            "channels": channels,
            "max_outbox": config.notify.max_outbox,
            "target_down_after": humantime::format_duration(config.notify.target_down_after).to_string(),
        },
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&plan).unwrap_or_default()
    );
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    let missing: Vec<String> = grants
        .iter()
        .filter_map(|(id, v)| {
            let text = v.as_str()?;
            text.starts_with("missing")
                .then(|| format!("targets.{id}: the lock login has {text}"))
        })
        .collect();
    if !missing.is_empty() {
        for m in &missing {
            eprintln!("error: {m}");
        }
        return Err(CliError::Usage(format!(
            "locks are on where the lock login lacks the grant they need: {}",
            missing.join("; ")
        )));
    }
    eprintln!("config OK: every secret loaded");
    Ok(ExitCode::SUCCESS)
}

/// For each target with `locks = true`, whether its lock login holds the grant locks need:
/// `ok`, `missing <grant>`, or `not checked: <why>` (unreachable, or an engine that cannot
/// be asked). The only part of `check-config` that connects, and only where locks are on.
async fn lock_grants(config: &Config) -> serde_json::Map<String, Value> {
    let mut grants = serde_json::Map::new();
    if !config.targets.values().any(|t| t.locks) {
        return grants;
    }
    // The engines want a store for what they remember; an in-memory one leaves nothing
    // behind and touches no real store.
    let store = match Store::connect(&SecretString::from("sqlite::memory:")).await {
        Ok(store) => store,
        Err(e) => {
            grants.insert("*".into(), json!(format!("not checked: {e}")));
            return grants;
        }
    };
    let targets = match Targets::from_config(config, &store) {
        Ok(targets) => targets,
        Err(e) => {
            grants.insert("*".into(), json!(format!("not checked: {e}")));
            return grants;
        }
    };
    let timeout = config.termination.timeout;
    let asked = targets
        .iter()
        .filter(|(id, _)| config.targets.get(*id).is_some_and(|t| t.locks))
        .map(|(id, engine)| async move {
            let answer = match tokio::time::timeout(timeout, engine.missing_lock_grant()).await {
                Ok(Ok(None)) => "ok".to_owned(),
                Ok(Ok(Some(grant))) => format!("missing {grant}"),
                Ok(Err(e)) => format!("not checked: {e}"),
                Err(_) => format!("not checked: no answer within {timeout:?}"),
            };
            (id.clone(), json!(answer))
        });
    grants.extend(futures_util::future::join_all(asked).await);
    grants
}

/// `sever operator-token`: prints a new token and the hash to configure.
pub(super) fn operator_token() -> ExitCode {
    let (token, hash) = new_token();
    println!("token (give to the operator; shown once): {token}");
    println!("token_sha256 (put in the config):         {hash}");
    ExitCode::SUCCESS
}

/// Prints the OpenAPI document, for generating a client without a running server.
pub(super) fn openapi() -> ExitCode {
    match serde_json::to_string_pretty(&crate::openapi()) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write the OpenAPI document: {e}");
            ExitCode::FAILURE
        }
    }
}
