//! Who caused an audit record: one type for the actor strings that every door writes.

use std::fmt;

/// Who sent a request or caused an action; its [`fmt::Display`] is the audit record's `actor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A Standard Webhooks-signed `POST /v1/events`.
    Webhook,
    /// A forwarded, signed Vault event (`POST /v1/events/vault`).
    VaultEvent,
    /// The Vault event subscriber.
    VaultSubscriber,
    /// The Vault static-role watcher.
    VaultWatcher,
    /// The AWS rotation Lambda's hook.
    LambdaHook,
    /// An EventBridge API destination.
    EventBridge,
    /// An SNS HTTPS subscription.
    Sns,
    /// Alertmanager's webhook (`POST /v1/alerts/alertmanager`).
    Alertmanager,
    /// An authenticated operator, by configured name.
    Operator(String),
    /// The command line, by the user at the keyboard.
    Cli(String),
    /// A request that did not (or could not) say who it is.
    Anonymous,
}

impl Actor {
    /// The user at the keyboard (`SUDO_USER`, `USER` or `LOGNAME`), for the command line.
    pub fn cli() -> Self {
        let user = ["SUDO_USER", "USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "unknown".into());
        Actor::Cli(user)
    }

    /// The intake an event came through, as the audit trail names it (`webhook`,
    /// `aws:sns`, `vault:watcher`, …), for metrics; `None` for people and the anonymous.
    pub fn event_source(&self) -> Option<&'static str> {
        Some(match self {
            Actor::Webhook => "webhook",
            Actor::VaultEvent => "vault:event",
            Actor::VaultSubscriber => "vault:subscriber",
            Actor::VaultWatcher => "vault:watcher",
            Actor::LambdaHook => "aws:lambda-hook",
            Actor::EventBridge => "aws:eventbridge",
            Actor::Sns => "aws:sns",
            Actor::Alertmanager => "alertmanager",
            Actor::Operator(_) | Actor::Cli(_) | Actor::Anonymous => return None,
        })
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Anonymous => f.write_str("anonymous"),
            Actor::Operator(name) => write!(f, "operator:{name}"),
            Actor::Cli(user) => write!(f, "cli:{user}"),
            source => f.write_str(source.event_source().unwrap_or_default()),
        }
    }
}

impl From<&Actor> for String {
    fn from(actor: &Actor) -> Self {
        actor.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_read_as_they_always_have_in_the_audit_trail() {
        assert_eq!(Actor::Webhook.to_string(), "webhook");
        assert_eq!(Actor::LambdaHook.to_string(), "aws:lambda-hook");
        assert_eq!(
            Actor::Operator("alice".into()).to_string(),
            "operator:alice"
        );
        assert_eq!(Actor::Cli("root".into()).to_string(), "cli:root");
        assert_eq!(String::from(&Actor::Anonymous), "anonymous");
        assert_eq!(Actor::Sns.event_source(), Some("aws:sns"));
        assert_eq!(Actor::Operator("alice".into()).event_source(), None);
    }
}
