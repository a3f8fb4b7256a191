//! `[notify]` and `[[notify.channels]]`: where sever's outbound notifications go (Slack,
//! PagerDuty, signed webhooks), which events each channel takes, and the bounds on their
//! volume. The event names and severities live here (the config validates against them);
//! `crate::notify` re-exports them. Uses only `config`'s own types.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, SecretRef, UrlSource, check_id, invalid};

/// PagerDuty's Events API, the default base of a `pagerduty` channel's `url`.
pub const PAGERDUTY_API: &str = "https://events.pagerduty.com";

/// What happened, as a notification's `type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Event {
    /// An action was accepted and will run.
    #[serde(rename = "action.started")]
    ActionStarted,
    /// An action finished with every target clean.
    #[serde(rename = "action.completed")]
    ActionCompleted,
    /// An action finished with a target failed or sessions left.
    #[serde(rename = "action.incomplete")]
    ActionIncomplete,
    /// A step (one target of an action) is no longer retried.
    #[serde(rename = "action.given_up")]
    ActionGivenUp,
    /// A finished step left sessions connected that it signalled.
    #[serde(rename = "sessions.remaining")]
    SessionsRemaining,
    /// A termination was announced ahead of time.
    #[serde(rename = "announcement.made")]
    AnnouncementMade,
    /// An announced termination was cancelled.
    #[serde(rename = "announcement.cancelled")]
    AnnouncementCancelled,
    /// An enforcing policy ended sessions.
    #[serde(rename = "policy.fired")]
    PolicyFired,
    /// A login lock took effect on a target.
    #[serde(rename = "lock.started")]
    LockStarted,
    /// A login lock ended on a target (the gate restored, or left as found).
    #[serde(rename = "lock.ended")]
    LockEnded,
    /// Restoring a login after its lock failed; it is retried until it succeeds.
    #[serde(rename = "lock.restore_failed")]
    LockRestoreFailed,
    /// A database drain took effect on a target.
    #[serde(rename = "drain.started")]
    DrainStarted,
    /// A database drain ended on a target.
    #[serde(rename = "drain.ended")]
    DrainEnded,
    /// The checkpoint writer found the audit trail tampered with.
    #[serde(rename = "audit.chain_broken")]
    AuditChainBroken,
    /// A target has not answered for `notify.target_down_after`.
    #[serde(rename = "target.down")]
    TargetDown,
}

impl Event {
    /// Every event, in the order the README lists them.
    pub const ALL: [Event; 15] = [
        Event::ActionStarted,
        Event::ActionCompleted,
        Event::ActionIncomplete,
        Event::ActionGivenUp,
        Event::SessionsRemaining,
        Event::AnnouncementMade,
        Event::AnnouncementCancelled,
        Event::PolicyFired,
        Event::LockStarted,
        Event::LockEnded,
        Event::LockRestoreFailed,
        Event::DrainStarted,
        Event::DrainEnded,
        Event::AuditChainBroken,
        Event::TargetDown,
    ];

    /// The event's name: the webhook's `type`, the config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::ActionStarted => "action.started",
            Event::ActionCompleted => "action.completed",
            Event::ActionIncomplete => "action.incomplete",
            Event::ActionGivenUp => "action.given_up",
            Event::SessionsRemaining => "sessions.remaining",
            Event::AnnouncementMade => "announcement.made",
            Event::AnnouncementCancelled => "announcement.cancelled",
            Event::PolicyFired => "policy.fired",
            Event::LockStarted => "lock.started",
            Event::LockEnded => "lock.ended",
            Event::LockRestoreFailed => "lock.restore_failed",
            Event::DrainStarted => "drain.started",
            Event::DrainEnded => "drain.ended",
            Event::AuditChainBroken => "audit.chain_broken",
            Event::TargetDown => "target.down",
        }
    }

    /// The event called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// How serious it is unless the notice says otherwise: failures that need a person
    /// are critical, what may pass by itself a warning, the rest information.
    pub fn default_severity(self) -> Severity {
        match self {
            Event::ActionGivenUp
            | Event::LockRestoreFailed
            | Event::AuditChainBroken
            | Event::TargetDown => Severity::Critical,
            Event::ActionIncomplete | Event::SessionsRemaining | Event::AnnouncementMade => {
                Severity::Warning
            }
            _ => Severity::Info,
        }
    }
}

/// How serious a notification is; ordered, so a filter can take "warning and above".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For the record.
    #[default]
    Info,
    /// Something may need a look.
    Warning,
    /// Someone has to act.
    Critical,
}

impl Severity {
    /// The word the config and messages use.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Where a channel's messages go and in which format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A Slack incoming webhook: Block Kit with a text fallback.
    Slack,
    /// PagerDuty Events API v2: incidents per action, change events for the rest.
    Pagerduty,
    /// A Standard Webhooks receiver: signed `{type, timestamp, data}`.
    Webhook,
}

impl ChannelKind {
    /// The word the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Slack => "slack",
            ChannelKind::Pagerduty => "pagerduty",
            ChannelKind::Webhook => "webhook",
        }
    }
}

/// What a channel may be sent beyond the minimum (target, login, counts, reason, times):
/// strings an attacker may choose, so only where a channel opts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Include {
    /// Client application names of the sessions.
    ApplicationNames,
    /// Client addresses of the sessions.
    ClientAddrs,
}

/// Which notices a channel takes besides its event list; each list given must match (a
/// notice without that field, such as `drain.started` for a credential filter, does not).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelFilter {
    /// Only notices about one of these credentials.
    pub credentials: Vec<String>,
    /// Only notices naming one of these targets.
    pub targets: Vec<String>,
    /// Only notices from one of these policies.
    pub policies: Vec<String>,
    /// Only notices at least this serious.
    pub min_severity: Option<Severity>,
}

/// One `[[notify.channels]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Unique name (in metrics, logs and audit records).
    pub name: String,
    /// Slack, PagerDuty or a Standard Webhooks receiver.
    pub kind: ChannelKind,
    /// The endpoint: Slack's secret webhook URL (`{env}`/`{file}` only), PagerDuty's API base
    /// (default [`PAGERDUTY_API`]), the webhook receiver's URL.
    pub url: Option<UrlSource>,
    /// PagerDuty: the integration's routing key.
    pub routing_key: Option<SecretRef>,
    /// Webhook: the `whsec_` secret deliveries are signed with.
    pub secret: Option<SecretRef>,
    /// Which events it takes.
    pub events: Vec<Event>,
    /// Allow a plain `http://` endpoint (a receiver on the same host, tests).
    #[serde(default)]
    pub allow_http: bool,
    /// Most messages a minute, across replicas.
    pub rate_per_minute: Option<u32>,
    /// One message per event kind per this interval, carrying how many it stands for
    /// (`0s`: every notice is its own message).
    #[serde(default, with = "humantime_serde::option")]
    pub coalesce: Option<Duration>,
    /// Opt-in content beyond the minimum.
    #[serde(default)]
    pub include: BTreeSet<Include>,
    /// Which notices it takes, beyond `events`.
    #[serde(default)]
    pub filter: ChannelFilter,
    /// How long one delivery may take, connection included (default `notify.timeout`).
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
}

impl ChannelConfig {
    /// Most messages a minute: as configured, else about Slack's limit of one a second
    /// (with room for other senders), PagerDuty's 120 events a minute halved, or 600.
    pub fn rate_per_minute(&self) -> u32 {
        self.rate_per_minute.unwrap_or(match self.kind {
            ChannelKind::Slack => 30,
            ChannelKind::Pagerduty => 60,
            ChannelKind::Webhook => 600,
        })
    }

    /// The coalescing interval: as configured, else a minute.
    pub fn coalesce(&self) -> Duration {
        self.coalesce.unwrap_or(Duration::from_secs(60))
    }

    /// Whether `event` is one this channel takes.
    pub fn wants(&self, event: Event) -> bool {
        self.events.contains(&event)
    }
}

/// `[notify]`: the channels and the delivery knobs shared by all of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Where notifications go.
    pub channels: Vec<ChannelConfig>,
    /// Undelivered notifications kept per channel; past it, new ones are dropped (counted
    /// and audited), so a channel that is down cannot fill the store's disk.
    pub max_outbox: u64,
    /// First wait before a failed delivery is tried again (doubling, with jitter).
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    /// Longest wait between two attempts.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// How long a notification is retried before it is given up.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// How long one delivery may take, connection included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long opening the connection may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often the outbox is checked for what another replica queued.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a target must fail its checks before `target.down` is sent.
    #[serde(with = "humantime_serde")]
    pub target_down_after: Duration,
    /// How long delivered and given-up notifications stay in the outbox.
    #[serde(with = "humantime_serde")]
    pub keep_delivered: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            channels: Vec::new(),
            max_outbox: 1000,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            target_down_after: Duration::from_secs(300),
            keep_delivered: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl NotifyConfig {
    /// Whether any channel takes `event`.
    pub fn wants(&self, event: Event) -> bool {
        self.channels.iter().any(|c| c.wants(event))
    }

    /// Checks the knobs and every channel: unique names, events, kind-specific fields,
    /// `https` unless allowed otherwise.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_outbox == 0 {
            return Err(invalid("notify.max_outbox".into(), "must be positive"));
        }
        for (key, value) in [
            ("retry_min", self.retry_min),
            ("retry_max", self.retry_max),
            ("give_up_after", self.give_up_after),
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("poll_interval", self.poll_interval),
            ("target_down_after", self.target_down_after),
        ] {
            if value.is_zero() {
                return Err(invalid(format!("notify.{key}"), "must be positive"));
            }
        }
        if self.retry_max < self.retry_min {
            return Err(invalid(
                "notify.retry_max".into(),
                "must be at least notify.retry_min",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, channel) in self.channels.iter().enumerate() {
            let path = |key: &str| format!("notify.channels[{i}].{key}");
            check_id(&channel.name).map_err(|why| invalid(path("name"), why))?;
            if !names.insert(channel.name.as_str()) {
                return Err(invalid(path("name"), "another channel has this name"));
            }
            channel.validate(&path)?;
        }
        Ok(())
    }
}

impl ChannelConfig {
    fn validate(&self, path: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        if self.events.is_empty() {
            return Err(invalid(path("events"), "name at least one event"));
        }
        if self.rate_per_minute == Some(0) {
            return Err(invalid(path("rate_per_minute"), "must be positive"));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid(path("timeout"), "must be positive"));
        }
        let refuse = |key: &str, field: bool| {
            if field {
                Err(invalid(
                    path(key),
                    &format!("is not used by a {} channel", self.kind.as_str()),
                ))
            } else {
                Ok(())
            }
        };
        match self.kind {
            ChannelKind::Slack => {
                refuse("routing_key", self.routing_key.is_some())?;
                refuse("secret", self.secret.is_some())?;
                match &self.url {
                    Some(UrlSource::Secret(_)) => {}
                    Some(UrlSource::Inline(_)) => {
                        return Err(invalid(
                            path("url"),
                            "a Slack webhook URL is the credential: give it as \
                             { env = \"…\" } or { file = \"…\" }",
                        ));
                    }
                    None => return Err(invalid(path("url"), "required for a slack channel")),
                }
            }
            ChannelKind::Pagerduty => {
                refuse("secret", self.secret.is_some())?;
                if self.routing_key.is_none() {
                    return Err(invalid(
                        path("routing_key"),
                        "required for a pagerduty channel",
                    ));
                }
            }
            ChannelKind::Webhook => {
                refuse("routing_key", self.routing_key.is_some())?;
                if self.secret.is_none() {
                    return Err(invalid(
                        path("secret"),
                        "required for a webhook channel (a whsec_ signing secret)",
                    ));
                }
                if self.url.is_none() {
                    return Err(invalid(path("url"), "required for a webhook channel"));
                }
            }
        }
        if let Some(UrlSource::Inline(url)) = &self.url {
            check_endpoint(url, self.allow_http).map_err(|why| invalid(path("url"), why))?;
        }
        Ok(())
    }
}

/// Checks an endpoint URL: absolute, `https` (or `http` where allowed), no credentials in
/// it. Also called on URLs loaded from secrets, once loaded.
pub fn check_endpoint(url: &str, allow_http: bool) -> Result<(), &'static str> {
    let parsed = url::Url::parse(url).map_err(|_| "is not an absolute URL")?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err("must be https (set allow_http = true for a plain-http receiver)"),
        _ => return Err("must be an https URL"),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
