//! What a notification says, as the outbox keeps it: a [`Digest`] of one notice or of
//! several folded together (counts summed, names collected up to a bound), holding only
//! what the channel may be sent. Channels render it at each attempt, escaping every string
//! for their format; the strings here are raw (logins, application names and reasons can
//! come from a database or a caller, so they are only bounded in length).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Event, Notice, Severity};
use crate::config::Include;

/// Names kept per list; past it, only how many more there were.
pub const LIST_MAX: usize = 10;
/// Characters kept of one name.
const NAME_MAX: usize = 128;
/// Characters kept of one reason.
const REASON_MAX: usize = 300;

/// A list of distinct names, at most [`LIST_MAX`], and how many more were left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounded<T> {
    /// The first distinct items, in the order they came.
    pub items: Vec<T>,
    /// Items left out (counting repeats of left-out items: an upper bound).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl<T: PartialEq + Clone> Bounded<T> {
    /// Adds `item` unless it is there already; counts it as left out when full.
    pub fn add(&mut self, item: T) {
        if self.items.contains(&item) {
            return;
        }
        if self.items.len() < LIST_MAX {
            self.items.push(item);
        } else {
            self.more += 1;
        }
    }

    /// Adds everything `other` holds.
    pub fn extend(&mut self, other: &Bounded<T>) {
        for item in &other.items {
            self.add(item.clone());
        }
        self.more += other.more;
    }

    /// Whether it holds nothing, left-out items included.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.more == 0
    }
}

/// How a PagerDuty channel sends a notification, decided when it is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PagerdutySend {
    /// Open (or add to) the incident of the dedup key.
    Trigger,
    /// Resolve the dedup key's incident, if this channel triggered it.
    Resolve,
    /// Resolve as above, then send a change event (a rotation that completed).
    ResolveAndChange,
    /// A change event: something changed, nobody needs paging.
    Change,
}

/// What one outbox notification says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Digest {
    /// The event.
    pub event: Event,
    /// Notices folded into it (1 unless coalesced).
    pub notices: u64,
    /// The most serious of them.
    pub severity: Severity,
    /// When the first happened.
    pub first_at: DateTime<Utc>,
    /// When the last happened.
    pub last_at: DateTime<Utc>,
    /// Announcements: the earliest moment an announced action acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_at: Option<DateTime<Utc>>,
    /// The actions.
    #[serde(default)]
    pub action_ids: Bounded<Uuid>,
    /// Their credentials.
    #[serde(default)]
    pub credentials: Bounded<String>,
    /// Their policies.
    #[serde(default)]
    pub policies: Bounded<String>,
    /// Their targets.
    #[serde(default)]
    pub targets: Bounded<String>,
    /// Their logins.
    #[serde(default)]
    pub logins: Bounded<String>,
    /// Why (a caller's reason, an error).
    #[serde(default)]
    pub reasons: Bounded<String>,
    /// Counts, summed (`sessions`, `terminated`, `remaining`, …).
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    /// Application names, only for a channel that opted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_names: Option<Bounded<String>>,
    /// Client addresses, only for a channel that opted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addrs: Option<Bounded<String>>,
    /// PagerDuty channels: what to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty: Option<PagerdutySend>,
}

/// `text` cut to `max` characters (an ellipsis marks the cut).
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn names<'a>(items: impl IntoIterator<Item = &'a String>) -> Bounded<String> {
    let mut list = Bounded::default();
    for item in items {
        list.add(cut(item, NAME_MAX));
    }
    list
}

impl Digest {
    /// The digest of one notice for a channel that opted in to `include`.
    pub fn of(
        notice: &Notice,
        event: Event,
        include: &std::collections::BTreeSet<Include>,
    ) -> Self {
        let at = notice.at.unwrap_or_else(Utc::now);
        let mut action_ids = Bounded::default();
        if let Some(id) = notice.action_id {
            action_ids.add(id);
        }
        let opt =
            |wanted: Include, list: &Vec<String>| include.contains(&wanted).then(|| names(list));
        Self {
            event,
            notices: 1,
            severity: notice.severity.unwrap_or(event.default_severity()),
            first_at: at,
            last_at: at,
            act_at: notice.act_at,
            action_ids,
            credentials: names(&notice.credential),
            policies: names(&notice.policy),
            targets: names(&notice.targets),
            logins: names(&notice.logins),
            reasons: notice.reason.iter().map(|r| cut(r, REASON_MAX)).fold(
                Bounded::default(),
                |mut list, r| {
                    list.add(r);
                    list
                },
            ),
            counts: notice.counts.clone(),
            application_names: opt(Include::ApplicationNames, &notice.application_names),
            client_addrs: opt(Include::ClientAddrs, &notice.client_addrs),
            pagerduty: None,
        }
    }

    /// Folds `later` (a digest of the same event for the same channel) into this one.
    pub fn fold(&mut self, later: &Digest) {
        self.notices += later.notices;
        self.severity = self.severity.max(later.severity);
        self.first_at = self.first_at.min(later.first_at);
        self.last_at = self.last_at.max(later.last_at);
        self.act_at = match (self.act_at, later.act_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.action_ids.extend(&later.action_ids);
        self.credentials.extend(&later.credentials);
        self.policies.extend(&later.policies);
        self.targets.extend(&later.targets);
        self.logins.extend(&later.logins);
        self.reasons.extend(&later.reasons);
        for (key, n) in &later.counts {
            let sum = self.counts.entry(key.clone()).or_default();
            *sum = sum.saturating_add(*n);
        }
        for (mine, theirs) in [
            (&mut self.application_names, &later.application_names),
            (&mut self.client_addrs, &later.client_addrs),
        ] {
            if let (Some(mine), Some(theirs)) = (mine.as_mut(), theirs) {
                mine.extend(theirs);
            }
        }
        if later.pagerduty == Some(PagerdutySend::ResolveAndChange) {
            self.pagerduty = later.pagerduty;
        }
    }

    /// The one action it is about, when there is exactly one.
    pub fn action_id(&self) -> Option<Uuid> {
        match (&self.action_ids.items[..], self.action_ids.more) {
            ([id], 0) => Some(*id),
            _ => None,
        }
    }

    /// The data a webhook carries and PagerDuty's `custom_details`: every field, as JSON
    /// (whose escaping is the receiver's parser's).
    pub fn data(&self, id: Uuid) -> serde_json::Value {
        let mut data = serde_json::json!({
            "notification_id": id,
            "notices": self.notices,
            "severity": self.severity,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "action_ids": self.action_ids.items,
            "credentials": self.credentials.items,
            "policies": self.policies.items,
            "targets": self.targets.items,
            "logins": self.logins.items,
            "reasons": self.reasons.items,
            "counts": self.counts,
        });
        let mut omitted = serde_json::Map::new();
        for (key, more) in [
            ("action_ids", self.action_ids.more),
            ("credentials", self.credentials.more),
            ("policies", self.policies.more),
            ("targets", self.targets.more),
            ("logins", self.logins.more),
            ("reasons", self.reasons.more),
        ] {
            if more > 0 {
                omitted.insert(key.into(), more.into());
            }
        }
        if let Some(at) = self.act_at {
            data["act_at"] = serde_json::json!(at);
        }
        for (key, list) in [
            ("application_names", &self.application_names),
            ("client_addrs", &self.client_addrs),
        ] {
            if let Some(list) = list {
                data[key] = serde_json::json!(list.items);
                if list.more > 0 {
                    omitted.insert(key.into(), list.more.into());
                }
            }
        }
        if !omitted.is_empty() {
            data["omitted"] = serde_json::Value::Object(omitted);
        }
        data
    }

    /// What happened, in a few words (no string from outside in it).
    pub fn title(&self) -> String {
        let title = title(self.event);
        if self.notices > 1 {
            format!("{title} ×{}", self.notices)
        } else {
            title.to_owned()
        }
    }

    /// The message's lines as (label, values), each value raw, for a channel to escape;
    /// empty fields left out.
    pub fn fields(&self) -> Vec<(&'static str, Vec<String>)> {
        let list = |b: &Bounded<String>| {
            let mut values = b.items.clone();
            if b.more > 0 {
                values.push(format!("+{} more", b.more));
            }
            values
        };
        let mut fields = Vec::new();
        for (label, names) in [
            ("Targets", &self.targets),
            ("Logins", &self.logins),
            ("Credentials", &self.credentials),
            ("Policies", &self.policies),
        ] {
            if !names.is_empty() {
                fields.push((label, list(names)));
            }
        }
        if !self.counts.is_empty() {
            let counts = self
                .counts
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            fields.push(("Counts", counts));
        }
        if !self.reasons.is_empty() {
            fields.push(("Reason", list(&self.reasons)));
        }
        if let Some(at) = self.act_at {
            fields.push(("Acts at", vec![at.to_rfc3339()]));
        }
        let when = if self.notices > 1 {
            format!(
                "{} to {}",
                self.first_at.to_rfc3339(),
                self.last_at.to_rfc3339()
            )
        } else {
            self.first_at.to_rfc3339()
        };
        fields.push(("When", vec![when]));
        for (label, names) in [
            ("Applications", &self.application_names),
            ("Clients", &self.client_addrs),
        ] {
            if let Some(names) = names.as_ref().filter(|n| !n.is_empty()) {
                fields.push((label, list(names)));
            }
        }
        if !self.action_ids.is_empty() {
            let ids = Bounded {
                items: self.action_ids.items.iter().map(Uuid::to_string).collect(),
                more: self.action_ids.more,
            };
            fields.push(("Actions", list(&ids)));
        }
        fields
    }
}

/// The event in a few words.
pub fn title(event: Event) -> &'static str {
    match event {
        Event::ActionStarted => "Action started",
        Event::ActionCompleted => "Action completed",
        Event::ActionIncomplete => "Action incomplete",
        Event::ActionGivenUp => "Target given up",
        Event::SessionsRemaining => "Sessions still connected",
        Event::AnnouncementMade => "Termination announced",
        Event::AnnouncementCancelled => "Announced termination cancelled",
        Event::PolicyFired => "Policy fired",
        Event::LockStarted => "Login locked",
        Event::LockEnded => "Login lock ended",
        Event::LockRestoreFailed => "Login restore failed",
        Event::DrainStarted => "Database drain started",
        Event::DrainEnded => "Database drain ended",
        Event::AuditChainBroken => "Audit trail tampered with",
        Event::TargetDown => "Target down",
    }
}

/// `text` without control characters (each becomes a space), bidirectional controls
/// included, so a name cannot start a line or reorder what follows it.
pub fn plain(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}');
            if c.is_control() || bidi { ' ' } else { c }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(login: &str, sessions: u64) -> Notice {
        Notice {
            event: Some(Event::ActionCompleted),
            action_id: Some(Uuid::now_v7()),
            targets: vec!["main".into()],
            logins: vec![login.into()],
            counts: [("sessions".to_owned(), sessions)].into(),
            application_names: vec!["psql".into()],
            ..Default::default()
        }
    }

    #[test]
    fn folding_sums_counts_and_bounds_the_lists() {
        let none = Default::default();
        let mut digest = Digest::of(&notice("app0", 2), Event::ActionCompleted, &none);
        assert!(digest.application_names.is_none(), "not opted in");
        for i in 1..25 {
            digest.fold(&Digest::of(
                &notice(&format!("app{i}"), 3),
                Event::ActionCompleted,
                &none,
            ));
        }
        assert_eq!(digest.notices, 25);
        assert_eq!(digest.counts["sessions"], 2 + 24 * 3);
        assert_eq!(digest.targets.items, vec!["main".to_owned()]);
        assert_eq!(digest.logins.items.len(), LIST_MAX);
        assert_eq!(digest.logins.more, 15);
        assert_eq!(digest.action_ids.more, 15);
        assert_eq!(digest.action_id(), None);
        assert_eq!(digest.title(), "Action completed ×25");
        let data = digest.data(Uuid::nil());
        assert_eq!(data["omitted"]["logins"], 15, "{data}");
        assert_eq!(data["notices"], 25);
    }

    #[test]
    fn opted_in_strings_are_kept_and_long_ones_cut() {
        let include = [Include::ApplicationNames].into();
        let mut n = notice(&"x".repeat(500), 1);
        n.client_addrs = vec!["10.0.0.1".into()];
        let digest = Digest::of(&n, Event::ActionCompleted, &include);
        assert_eq!(
            digest.application_names.unwrap().items,
            vec!["psql".to_owned()]
        );
        assert!(digest.client_addrs.is_none());
        assert_eq!(digest.logins.items[0].chars().count(), NAME_MAX);
        assert_eq!(plain("a\nb\u{202E}c"), "a b c");
    }
}
