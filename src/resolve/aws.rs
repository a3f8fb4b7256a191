//! AWS Secrets Manager: which credential a secret is, who its current and previous users
//! are, and the plan that follows from a rotation ([`resolve`], which the intake's HTTP
//! paths call). Uses `config`, `terminate` (the targets' endpoints) and the resolve rules.
//!
//! The secret's password is never deserialised into sever's types: [`SecretLogin`] has no
//! field for it, so it cannot reach a log, an error or the audit trail.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{Credentials, Region};
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Origin, Plan, ResolveError, cutoff, steps_for};
use crate::action::{AwsSource as Source, PreviousUser};
use crate::config::{AwsConfig, Config, ConfigError, Engine, PreviousUserPolicy};
use crate::terminate::Targets;

/// The stage label of the version in use.
pub const CURRENT: &str = "AWSCURRENT";
/// The stage label of the version before it.
pub const PREVIOUS: &str = "AWSPREVIOUS";

/// Secrets Manager could not answer, or answered with something unusable.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AwsError {
    /// Network, throttling, permissions, timeouts.
    #[error("Secrets Manager unavailable: {0}")]
    Unavailable(String),
    /// No such secret (or version) in this account and region.
    #[error("secret not found: {0}")]
    NotFound(String),
    /// The secret's value is not the JSON sever needs.
    #[error("secret {0} does not hold JSON with a username")]
    BadValue(String),
}

/// What `DescribeSecret` says about a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretFacts {
    /// Full ARN.
    pub arn: String,
    /// Name.
    pub name: String,
    /// When Secrets Manager last rotated it.
    pub last_rotated: Option<DateTime<Utc>>,
    /// Version id currently labelled `AWSCURRENT`.
    pub current_version: Option<String>,
}

/// The parts of an RDS-style secret sever uses; the password is deliberately absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretLogin {
    /// Database login.
    pub username: String,
    /// `postgres`, `aurora-postgresql`, `mysql`, …
    #[serde(default)]
    pub engine: Option<String>,
    /// Database host.
    #[serde(default)]
    pub host: Option<String>,
    /// Database port (RDS secrets hold it as a number or a string).
    #[serde(default, deserialize_with = "port")]
    pub port: Option<u16>,
    /// Database name.
    #[serde(default)]
    pub dbname: Option<String>,
    /// Set for the alternating-users strategy: the secret whose user clones this one.
    #[serde(default)]
    pub masterarn: Option<String>,
}

fn port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    })
}

/// The name part of a Secrets Manager ARN (`…:secret:NAME-AbCdEf` → `NAME`), if it is one.
pub fn arn_name(id: &str) -> Option<&str> {
    // arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME-SUFFIX
    let mut parts = id.strip_prefix("arn:")?.splitn(6, ':');
    let (_partition, service) = (parts.next()?, parts.next()?);
    let kind = parts.nth(2)?;
    if service != "secretsmanager" || kind != "secret" {
        return None;
    }
    let with_suffix = parts.next()?;
    // Secrets Manager appends a hyphen and six random characters to the name.
    match with_suffix.rsplit_once('-') {
        Some((name, suffix))
            if suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            Some(name)
        }
        _ => Some(with_suffix),
    }
}

/// Whether a configured secret (ARN or name) may be the one an event names, judged without
/// calling AWS. A final check against `DescribeSecret` follows.
pub fn may_match(configured: &str, event_id: &str) -> bool {
    configured == event_id
        || arn_name(event_id).is_some_and(|n| n == configured)
        || arn_name(configured).is_some_and(|n| n == event_id || Some(n) == arn_name(event_id))
}

/// Whether a configured secret is exactly the described one: its ARN or its name.
pub fn matches(configured: &str, facts: &SecretFacts) -> bool {
    configured == facts.arn || configured == facts.name
}

/// A Secrets Manager client built from sever's config.
#[derive(Debug, Clone)]
pub struct SecretsManager {
    client: Client,
}

fn from_smithy(t: &aws_sdk_secretsmanager::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

fn sdk_error<E, R>(id: &str, e: aws_sdk_secretsmanager::error::SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if e.as_service_error().and_then(|s| s.code()) == Some("ResourceNotFoundException") {
        return AwsError::NotFound(id.to_owned());
    }
    AwsError::Unavailable(DisplayErrorContext(&e).to_string())
}

impl SecretsManager {
    /// Region, endpoint and credentials from config; the SDK's default chains fill the rest.
    pub async fn from_config(aws: &AwsConfig) -> Result<Self, ConfigError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            // A rotation waits on these calls: fail fast and let the sender retry.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_attempt_timeout(Duration::from_secs(4))
                    .operation_timeout(Duration::from_secs(10))
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(3));
        if let Some(region) = &aws.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &aws.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(keys) = &aws.static_credentials {
            let id = keys
                .access_key_id
                .load("aws.static_credentials.access_key_id")?;
            let secret = keys
                .secret_access_key
                .load("aws.static_credentials.secret_access_key")?;
            loader = loader.credentials_provider(Credentials::new(
                id.expose_secret(),
                secret.expose_secret(),
                None,
                None,
                "sever-config",
            ));
        }
        Ok(Self {
            client: Client::new(&loader.load().await),
        })
    }

    /// `DescribeSecret`.
    pub async fn describe(&self, id: &str) -> Result<SecretFacts, AwsError> {
        let out = self
            .client
            .describe_secret()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| sdk_error(id, e))?;
        let current_version = out.version_ids_to_stages().and_then(|versions| {
            versions
                .iter()
                .find(|(_, stages)| stages.iter().any(|s| s == CURRENT))
                .map(|(v, _)| v.clone())
        });
        Ok(SecretFacts {
            arn: out.arn().unwrap_or(id).to_owned(),
            name: out.name().unwrap_or(id).to_owned(),
            last_rotated: out.last_rotated_date().and_then(from_smithy),
            current_version,
        })
    }

    /// The login in the version labelled `stage`; `None` when no version has that label.
    pub async fn login(&self, id: &str, stage: &str) -> Result<Option<SecretLogin>, AwsError> {
        let out = match self
            .client
            .get_secret_value()
            .secret_id(id)
            .version_stage(stage)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                return match sdk_error(id, e) {
                    // A secret that never rotated has no AWSPREVIOUS.
                    AwsError::NotFound(_) if stage != CURRENT => Ok(None),
                    other => Err(other),
                };
            }
        };
        let text = out
            .secret_string()
            .ok_or_else(|| AwsError::BadValue(id.to_owned()))?;
        serde_json::from_str(text)
            .map(Some)
            .map_err(|_| AwsError::BadValue(id.to_owned()))
    }
}

/// A rotation as Secrets Manager describes it, ready to plan.
#[derive(Debug, Clone)]
pub struct Rotation<'a> {
    /// Configured credential id.
    pub credential: &'a str,
    /// The described secret.
    pub facts: &'a SecretFacts,
    /// The version that became current.
    pub version: &'a str,
    /// The `AWSCURRENT` login.
    pub current: &'a SecretLogin,
    /// The `AWSPREVIOUS` login, if any.
    pub previous: Option<&'a SecretLogin>,
    /// Sessions that began before this may hold the old secret.
    pub cutoff: DateTime<Utc>,
    /// Where the report came from.
    pub source: Source,
}

/// Resolves a rotation to a plan: the current user's sessions before the cutoff, and the
/// previous user's too when the credential says so.
pub fn plan(
    config: &Config,
    targets: &Targets,
    rotation: &Rotation<'_>,
) -> Result<Plan, ResolveError> {
    let credential = config
        .credentials
        .get(rotation.credential)
        .ok_or_else(|| ResolveError::UnknownCredential(rotation.credential.to_owned()))?;
    let aws = credential.aws.as_ref().ok_or_else(|| {
        ResolveError::Invalid(format!(
            "credential {:?} is not an AWS secret",
            rotation.credential
        ))
    })?;
    let previous = rotation
        .previous
        .filter(|p| p.username != rotation.current.username)
        .map(|p| (p, aws.previous_user));
    let mut logins = vec![rotation.current];
    if let Some((p, PreviousUserPolicy::Terminate)) = previous {
        logins.push(p);
    }
    let mut mappings: Vec<(String, String)> = Vec::new();
    for login in logins {
        for target in login_targets(config, targets, rotation.credential, login)? {
            mappings.push((target, login.username.clone()));
        }
    }
    let scope = cutoff::scope(credential.policy, rotation.cutoff);
    Ok(Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Aws {
            credential: rotation.credential.to_owned(),
            secret_arn: rotation.facts.arn.clone(),
            version_id: rotation.version.to_owned(),
            source: rotation.source,
            policy: credential.policy,
            current_user: rotation.current.username.clone(),
            previous_user: previous.map(|(p, decision)| PreviousUser {
                login: p.username.clone(),
                decision,
            }),
        },
        scope,
        dry_run: false,
        reason: None,
        cutoff_defaulted: false,
        ending: credential.ending(),
        selection: None,
        schedule: super::schedule::schedule(config, &credential.schedule(), chrono::Utc::now())?,
        steps: steps_for(config, mappings)?,
    })
}

/// The targets on which `login` is this credential's login: the configured mappings, or,
/// when there are none, the configured `aws.target` or the one target whose engine, host and
/// port match the secret.
fn login_targets(
    config: &Config,
    targets: &Targets,
    credential_id: &str,
    login: &SecretLogin,
) -> Result<Vec<String>, ResolveError> {
    let credential = &config.credentials[credential_id];
    let chosen: Vec<String> = if credential.logins.is_empty() {
        let target = match credential.aws.as_ref().and_then(|a| a.target.clone()) {
            Some(target) => target,
            None => matching_target(targets, login)?,
        };
        vec![target]
    } else {
        let mapped: Vec<String> = credential
            .logins
            .iter()
            .filter(|m| m.login == login.username)
            .map(|m| m.target.clone())
            .collect();
        if mapped.is_empty() {
            return Err(ResolveError::Invalid(format!(
                "the secret's username {:?} is not mapped to credential {credential_id:?}",
                login.username
            )));
        }
        mapped
    };
    for target in &chosen {
        if config.protected_on(target).contains(&login.username) {
            return Err(ResolveError::ProtectedLogin {
                login: login.username.clone(),
                target: target.clone(),
            });
        }
    }
    Ok(chosen)
}

fn matching_target(targets: &Targets, login: &SecretLogin) -> Result<String, ResolveError> {
    let engine = match login.engine.as_deref() {
        Some("postgres" | "postgresql" | "aurora-postgresql") => Engine::Postgres,
        other => {
            return Err(ResolveError::Invalid(format!(
                "the secret's engine {other:?} matches no supported target engine; set credentials.<id>.aws.target"
            )));
        }
    };
    let (Some(host), port) = (login.host.as_deref(), login.port.unwrap_or(5432)) else {
        return Err(ResolveError::Invalid(
            "the secret names no host; set credentials.<id>.aws.target".into(),
        ));
    };
    let found: Vec<&String> = targets
        .iter_endpoints()
        .filter(|(_, e)| e.engine == engine && e.host.eq_ignore_ascii_case(host) && e.port == port)
        .map(|(id, _)| id)
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ResolveError::Invalid(format!(
            "no configured target is {engine:?} at {host}:{port}; set credentials.<id>.aws.target"
        ))),
        _ => Err(ResolveError::Invalid(format!(
            "several targets are at {host}:{port}; set credentials.<id>.aws.target"
        ))),
    }
}

/// A rotation as an intake path reports it, before Secrets Manager is asked.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// Secret ARN or name, as the report carries it.
    pub secret_id: &'a str,
    /// The version that became current, when the report names it.
    pub version_id: Option<&'a str>,
    /// When the label moved, per the report.
    pub occurred_at: Option<DateTime<Utc>>,
    /// Which intake path reported it.
    pub source: Source,
    /// When sever received (verified) the report.
    pub received_at: DateTime<Utc>,
}

/// What a reported rotation resolved to.
#[derive(Debug)]
pub enum Resolved {
    /// No configured credential maps the secret (the reason says which): acknowledged and
    /// ignored.
    NotMapped(String),
    /// A plan, with what the audit record says about how it was decided.
    Planned(Box<Planned>),
}

/// A rotation resolved against Secrets Manager and the config.
#[derive(Debug)]
pub struct Planned {
    /// What to do.
    pub plan: Plan,
    /// The configured credential the secret is.
    pub credential: String,
    /// The described secret.
    pub facts: SecretFacts,
    /// The version that became current.
    pub version: String,
    /// Sessions that began before this may hold the old secret.
    pub cutoff: DateTime<Utc>,
}

impl Planned {
    /// Adds the credential, the secret, the version and the cutoff to an audit `detail`.
    pub fn describe(&self, detail: &mut serde_json::Value) {
        detail["credential"] = serde_json::json!(self.credential);
        detail["secret"] = serde_json::json!(self.facts);
        detail["version_id"] = serde_json::json!(self.version);
        detail["cutoff"] = serde_json::json!(self.cutoff);
    }

    /// The idempotency key of this rotation: the hook and EventBridge (and SNS) report the
    /// same rotation, and it is acted on once.
    pub fn rotation_key(&self) -> String {
        format!("aws-rotation:{}:{}", self.facts.arn, self.version)
    }
}

/// Why a reported rotation cannot be acted on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// No Secrets Manager client is configured.
    #[error("no Secrets Manager client")]
    NoClient,
    /// Secrets Manager could not answer, or answered unusably.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The Lambda hook reported a version that is not `AWSCURRENT` (yet).
    #[error("version {0} is not AWSCURRENT")]
    VersionNotCurrent(String),
    /// The config does not allow the plan.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// Resolves a reported rotation: which configured credential the secret is, which version
/// became current, its current and previous users, the cutoff, and the plan.
pub async fn resolve(
    config: &Config,
    targets: &Targets,
    secrets: Option<&SecretsManager>,
    reported: &Report<'_>,
) -> Result<Resolved, RotationError> {
    let candidates: Vec<(&str, &str)> = mapped_secrets(config)
        .into_iter()
        .filter(|(_, secret)| may_match(secret, reported.secret_id))
        .collect();
    let not_mapped = || {
        format!(
            "secret {:?} is not mapped to any credential",
            reported.secret_id
        )
    };
    if candidates.is_empty() {
        return Ok(Resolved::NotMapped(not_mapped()));
    }
    let Some(secrets) = secrets else {
        return Err(RotationError::NoClient);
    };
    let facts = secrets.describe(reported.secret_id).await?;
    let Some((credential, _)) = candidates.iter().find(|(_, s)| matches(s, &facts)) else {
        return Ok(Resolved::NotMapped(not_mapped()));
    };
    let Some(version) = reported
        .version_id
        .map(str::to_owned)
        .or_else(|| facts.current_version.clone())
    else {
        return Err(AwsError::BadValue(format!("{} (no AWSCURRENT version)", facts.arn)).into());
    };
    if reported.source == Source::LambdaHook
        && facts.current_version.as_deref() != Some(version.as_str())
    {
        // The hook must be called after finishSecret moved AWSCURRENT; acting earlier would
        // cut off sessions that still legitimately use the current secret.
        return Err(RotationError::VersionNotCurrent(version));
    }
    let current = secrets.login(&facts.arn, CURRENT).await?;
    let previous = secrets.login(&facts.arn, PREVIOUS).await?;
    let current = current.ok_or_else(|| AwsError::NotFound(format!("{} AWSCURRENT", facts.arn)))?;
    // `LastRotatedDate` can mark the start of a rotation, before the password actually
    // changed; the label move (the event's time, or else the moment the report arrived) is
    // never earlier than the change.
    let moved_at = reported.occurred_at.unwrap_or(reported.received_at);
    let cutoff = cutoff::clamped(Some(moved_at), facts.last_rotated, reported.received_at);
    let rotation = Rotation {
        credential,
        facts: &facts,
        version: &version,
        current: &current,
        previous: previous.as_ref(),
        cutoff,
        source: reported.source,
    };
    let plan = plan(config, targets, &rotation)?;
    Ok(Resolved::Planned(Box::new(Planned {
        plan,
        credential: (*credential).to_owned(),
        facts,
        version,
        cutoff,
    })))
}

/// Mapped secrets per credential id, for intake's cheap pre-check.
pub fn mapped_secrets(config: &Config) -> BTreeMap<&str, &str> {
    config
        .credentials
        .iter()
        .filter_map(|(id, c)| c.aws.as_ref().map(|a| (id.as_str(), a.secret.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/orders-AbC123";

    #[test]
    fn arn_names_and_matching() {
        assert_eq!(arn_name(ARN), Some("prod/orders"));
        assert_eq!(arn_name("prod/orders"), None);
        assert!(may_match("prod/orders", ARN));
        assert!(may_match(ARN, "prod/orders"));
        assert!(may_match(ARN, ARN));
        assert!(!may_match("prod/other", ARN));
        assert!(!may_match("prod/orders-2", ARN));
        let facts = SecretFacts {
            arn: ARN.into(),
            name: "prod/orders".into(),
            last_rotated: None,
            current_version: None,
        };
        assert!(matches("prod/orders", &facts) && matches(ARN, &facts));
        assert!(!matches("prod/order", &facts));
    }

    #[test]
    fn the_password_is_never_read_into_a_secret_login() {
        let login: SecretLogin = serde_json::from_str(
            r#"{"engine":"postgres","host":"db","port":"5433","username":"app","password":"hunter2","dbname":"x"}"#,
        )
        .unwrap();
        assert_eq!(login.port, Some(5433));
        assert!(!format!("{login:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&login).unwrap().contains("hunter2"));
    }
}
