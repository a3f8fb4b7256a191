//! Outbound notifications: Slack, PagerDuty and signed Standard Webhooks, through a durable
//! outbox in the store.
//!
//! Emitting is queueing: [`Notifier::notify`] (or [`Notifier::enqueue_in`], inside a store
//! transaction that writes the audit records the notice goes with) puts one row per channel
//! that wants the event into the outbox, folded into a waiting row of its kind when there is
//! one, or dropped (counted, audited) when the channel's outbox is full. It never waits for a
//! delivery. The delivery worker ([`Notifier::run`], one task per channel, outside the
//! queue's slots) claims due rows with a lease, so across replicas each is sent by one at a
//! time, at most `rate_per_minute` a minute per channel, and records each outcome with its
//! audit records (`deliver`). Rendering is per channel (`slack`, `pagerduty`, `webhook`),
//! escaping every string that can come from a database or a caller.
//!
//! Below `queue` (which emits from its transactions) and `context`; may call `audit`,
//! `config`, `store`, `signing` and `telemetry`.

mod content;
mod deliver;
mod outbox;
mod pagerduty;
mod slack;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use uuid::Uuid;

use crate::audit::Audit;
use crate::config::{
    ChannelConfig, ChannelKind, Config, ConfigError, NotifyConfig, PAGERDUTY_API, UrlSource,
    check_endpoint,
};
use crate::store::Store;

pub use crate::config::{NotifyEvent as Event, Severity};
pub use content::{Digest, PagerdutySend};

/// Failures of the notifier: at start-up (a channel's secret or URL), or of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A secret could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A channel's loaded endpoint or secret is unusable (never the value).
    #[error("invalid config at {path}: {reason}")]
    Invalid {
        /// Dotted path of the key.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The outbox could not be written or read.
    #[error("notification outbox: {0}")]
    Store(#[from] sqlx::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the notification HTTP client: {0}")]
    Client(String),
}

/// Something that happened, to tell the channels that want it. Only what is set is sent;
/// application names and client addresses only to channels that opt in.
#[derive(Debug, Clone, Default)]
pub struct Notice {
    /// What happened (required in practice; an `Option` only for `Default`).
    pub event: Option<Event>,
    /// The action it is about.
    pub action_id: Option<Uuid>,
    /// Its credential.
    pub credential: Option<String>,
    /// Its policy.
    pub policy: Option<String>,
    /// Its targets.
    pub targets: Vec<String>,
    /// Its logins.
    pub logins: Vec<String>,
    /// Counts, e.g. `{"sessions": 3}`.
    pub counts: BTreeMap<String, u64>,
    /// Why.
    pub reason: Option<String>,
    /// When it happened (default: now).
    pub at: Option<DateTime<Utc>>,
    /// Announcements: when the action will act.
    pub act_at: Option<DateTime<Utc>>,
    /// How serious (default: the event's, [`Event::default_severity`]).
    pub severity: Option<Severity>,
    /// Application names of the sessions (opt-in per channel).
    pub application_names: Vec<String>,
    /// Client addresses of the sessions (opt-in per channel).
    pub client_addrs: Vec<String>,
}

impl Notice {
    /// A notice of `event`, happening now, with nothing else set.
    pub fn new(event: Event) -> Self {
        Self {
            event: Some(event),
            ..Default::default()
        }
    }
}

/// Where a channel sends, with its secrets loaded.
enum Endpoint {
    Slack {
        url: SecretString,
    },
    Pagerduty {
        base: String,
        routing_key: SecretString,
    },
    Webhook {
        url: SecretString,
        key: SecretSlice<u8>,
    },
}

/// One configured channel, ready to send.
pub(crate) struct Channel {
    config: ChannelConfig,
    endpoint: Endpoint,
    client: reqwest::Client,
    /// Woken when something was queued for it in this process.
    wake: tokio::sync::Notify,
    /// Until when it asked to be left alone (`429` with `Retry-After`).
    paused_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.config.name)
            .field("kind", &self.config.kind)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// The secret values in its endpoint, to scrub from anything recorded or logged.
    fn secrets(&self) -> Vec<&str> {
        match &self.endpoint {
            Endpoint::Slack { url } => vec![url.expose_secret()],
            Endpoint::Pagerduty { routing_key, .. } => vec![routing_key.expose_secret()],
            Endpoint::Webhook { url, .. } => vec![url.expose_secret()],
        }
    }

    /// Whether it takes `notice` (of `event`): the event is one of its, and its filter passes.
    fn accepts(&self, notice: &Notice, event: Event) -> bool {
        let c = &self.config;
        let f = &c.filter;
        let severity = notice.severity.unwrap_or(event.default_severity());
        let one_of = |allowed: &[String], value: Option<&String>| {
            allowed.is_empty() || value.is_some_and(|v| allowed.contains(v))
        };
        c.wants(event)
            && f.min_severity.is_none_or(|min| severity >= min)
            && one_of(&f.credentials, notice.credential.as_ref())
            && one_of(&f.policies, notice.policy.as_ref())
            && (f.targets.is_empty() || notice.targets.iter().any(|t| f.targets.contains(t)))
    }
}

/// Queues notices into the outbox and delivers them; built once from the config.
pub struct Notifier {
    store: Store,
    audit: Audit,
    config: NotifyConfig,
    channels: Vec<Arc<Channel>>,
    /// This process's lease owner name for outbox rows.
    owner: String,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Loads every channel's secrets and checks them: endpoints `https` unless allowed,
    /// PagerDuty's base defaulted, a webhook secret a valid `whsec_` that is none of the
    /// intake's (`webhooks.secrets`): one key would then both sign what sever sends and
    /// authenticate what it receives.
    pub fn new(config: &Config, store: Store) -> Result<Self, NotifyError> {
        Ok(Self {
            audit: Audit::new(store.clone()),
            store,
            config: config.notify.clone(),
            channels: load_channels(config)?,
            owner: owner_name(),
        })
    }

    /// The same notifier, recording its outcomes on `audit` (the process's trail, whose
    /// handle keeps the chain's head).
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    /// Whether any channel takes `event`: emitters may skip building a notice otherwise.
    pub fn wants(&self, event: Event) -> bool {
        self.config.wants(event)
    }

    /// The `[notify]` settings.
    pub fn config(&self) -> &NotifyConfig {
        &self.config
    }

    /// Queues `notice` for every channel that wants it; the outbox ids (one per channel,
    /// none for a channel whose outbox is full). Never blocks on delivery.
    pub async fn notify(&self, notice: &Notice) -> Result<Vec<Uuid>, NotifyError> {
        if !self.wanted(notice) {
            return Ok(Vec::new());
        }
        let mut tx = self.store.begin_write().await?;
        let ids = self.enqueue(&mut tx, notice).await?;
        tx.commit().await?;
        self.wake();
        Ok(ids)
    }

    /// Queues `notice` inside the caller's transaction on `conn` (so it is stored if and
    /// only if what it tells of is), in a savepoint: should the outbox fail, the caller's
    /// work still commits, and the notice is logged as lost. Call [`Notifier::wake`] once
    /// committed.
    pub async fn enqueue_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        notice: &Notice,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        if !self.wanted(notice) {
            return Ok(Vec::new());
        }
        let mut savepoint = sqlx::Connection::begin(&mut *conn).await?;
        match self.enqueue(&mut savepoint, notice).await {
            Ok(ids) => {
                savepoint.commit().await?;
                Ok(ids)
            }
            Err(e) => {
                savepoint.rollback().await?;
                let event = notice.event.map_or("", Event::as_str);
                tracing::error!(event, error = %e, "a notification could not be queued");
                Ok(Vec::new())
            }
        }
    }

    /// Whether any channel takes `notice`, i.e. whether queueing it writes anything.
    pub fn wanted(&self, notice: &Notice) -> bool {
        notice
            .event
            .is_some_and(|e| self.channels.iter().any(|c| c.accepts(notice, e)))
    }

    async fn enqueue(
        &self,
        conn: &mut sqlx::AnyConnection,
        notice: &Notice,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        let Some(event) = notice.event else {
            return Ok(Vec::new());
        };
        outbox::lock(conn, self.store.backend()).await?;
        let now = Utc::now();
        let mut ids = Vec::new();
        for channel in self.channels.iter().filter(|c| c.accepts(notice, event)) {
            let config = &channel.config;
            let mut digest = Digest::of(notice, event, &config.include);
            let (coalesce_key, subject) = match config.kind {
                ChannelKind::Pagerduty => {
                    match pagerduty::decide(conn, &config.name, notice, event).await? {
                        None => continue,
                        Some((send, key)) => {
                            digest.pagerduty = Some(send);
                            pagerduty::coalesce_key(event, send, key)
                        }
                    }
                }
                _ => (event.as_str().to_owned(), None),
            };
            let row = outbox::NewRow {
                channel: &config.name,
                coalesce_key,
                subject,
                digest,
            };
            let bounds = outbox::Bounds {
                coalesce: config.coalesce(),
                max_outbox: self.config.max_outbox,
            };
            if let outbox::Queued::Row(id) = outbox::put(conn, row, bounds, now).await? {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Wakes every channel's worker in this process (after a commit that queued).
    pub fn wake(&self) {
        for channel in &self.channels {
            channel.wake.notify_one();
        }
    }

    /// Whether every one of these outbox notifications has been delivered (or turned out to
    /// have nothing to send).
    pub async fn delivered(&self, ids: &[Uuid]) -> Result<bool, NotifyError> {
        Ok(outbox::finished(&self.store, ids).await? == ids.len())
    }

    /// Delivers until `stop`: one task per channel, and the upkeep (dropped counts audited,
    /// old rows pruned, the outbox's depth measured).
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for channel in &self.channels {
            tasks.spawn(deliver::channel_loop(
                self.clone(),
                channel.clone(),
                stop.clone(),
            ));
        }
        if !self.channels.is_empty() {
            tasks.spawn(deliver::upkeep(self.clone(), stop.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}

impl Channel {
    /// Loads channel `i`'s secrets and builds its client.
    fn load(
        i: usize,
        c: &ChannelConfig,
        notify: &NotifyConfig,
        intake_keys: &[Vec<u8>],
    ) -> Result<Self, NotifyError> {
        let path = |key: &str| format!("notify.channels[{i}].{key}");
        let invalid = |key: &str, reason: &str| NotifyError::Invalid {
            path: path(key),
            reason: reason.to_owned(),
        };
        let url = match &c.url {
            Some(UrlSource::Secret(secret)) => Some(secret.load(&path("url"))?),
            Some(UrlSource::Inline(url)) => Some(SecretString::from(url.clone())),
            None => None,
        };
        if let Some(url) = &url {
            check_endpoint(url.expose_secret(), c.allow_http).map_err(|why| invalid("url", why))?;
        }
        let missing = |key: &str| invalid(key, "required");
        let endpoint = match c.kind {
            ChannelKind::Slack => Endpoint::Slack {
                url: url.ok_or_else(|| missing("url"))?,
            },
            ChannelKind::Pagerduty => Endpoint::Pagerduty {
                base: url.map_or_else(
                    || PAGERDUTY_API.to_owned(),
                    |u| u.expose_secret().trim_end_matches('/').to_owned(),
                ),
                routing_key: c
                    .routing_key
                    .as_ref()
                    .ok_or_else(|| missing("routing_key"))?
                    .load(&path("routing_key"))?,
            },
            ChannelKind::Webhook => {
                let secret = c
                    .secret
                    .as_ref()
                    .ok_or_else(|| missing("secret"))?
                    .load(&path("secret"))?;
                let key = crate::signing::decode_key(secret.expose_secret())
                    .map_err(|e| invalid("secret", e.reason()))?;
                if intake_keys.contains(&key) {
                    return Err(invalid(
                        "secret",
                        "is also one of webhooks.secrets: use a signing secret of its own for \
                         outbound notifications, so no receiver of them can sign events sever \
                         accepts",
                    ));
                }
                Endpoint::Webhook {
                    url: url.ok_or_else(|| missing("url"))?,
                    key: SecretSlice::from(key),
                }
            }
        };
        let client = reqwest::Client::builder()
            // A redirect could send the message, and the Slack URL's path, elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(notify.connect_timeout)
            .timeout(c.timeout.unwrap_or(notify.timeout))
            .user_agent(concat!("sever/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(e.without_url().to_string()))?;
        Ok(Self {
            config: c.clone(),
            endpoint,
            client,
            wake: tokio::sync::Notify::new(),
            paused_until: std::sync::Mutex::new(None),
        })
    }
}

/// Loads and checks every channel of `config` (see [`Notifier::new`]).
fn load_channels(config: &Config) -> Result<Vec<Arc<Channel>>, NotifyError> {
    let notify = &config.notify;
    let intake_keys: Vec<Vec<u8>> = if notify
        .channels
        .iter()
        .any(|c| c.kind == ChannelKind::Webhook)
    {
        config
            .webhook_secrets()?
            .iter()
            .filter_map(|s| crate::signing::decode_key(s.expose_secret()).ok())
            .collect()
    } else {
        Vec::new()
    };
    notify
        .channels
        .iter()
        .enumerate()
        .map(|(i, c)| Channel::load(i, c, notify, &intake_keys).map(Arc::new))
        .collect()
}

/// Loads and checks every channel as the server would (for `sever check-config`), and
/// describes them with each secret shown only by where it comes from.
pub fn check_channels(config: &Config) -> Result<serde_json::Value, NotifyError> {
    load_channels(config)?;
    let redacted = |s: &crate::config::SecretRef| format!("<redacted, {}>", s.describe());
    let channels: Vec<serde_json::Value> = config
        .notify
        .channels
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "kind": c.kind,
                "url": c.url.as_ref().map_or_else(
                    || (c.kind == ChannelKind::Pagerduty).then(|| PAGERDUTY_API.to_owned()),
                    |u| Some(u.describe()),
                ),
                "routing_key": c.routing_key.as_ref().map(redacted),
                "secret": c.secret.as_ref().map(redacted),
                "events": c.events,
                "rate_per_minute": c.rate_per_minute(),
                "coalesce": humantime::format_duration(c.coalesce()).to_string(),
                "include": c.include,
                "allow_http": c.allow_http,
            })
        })
        .collect();
    Ok(serde_json::Value::Array(channels))
}

/// A lease owner name for this process's deliveries: the replica's name, the pid and a
/// random part, so no two processes share one.
fn owner_name() -> String {
    let replica = std::env::var("SEVER_REPLICA_ID")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "sever".into());
    let random = Uuid::new_v4().simple().to_string();
    format!("notify:{replica}:{}:{}", std::process::id(), &random[..8])
}

#[cfg(test)]
mod tests;
