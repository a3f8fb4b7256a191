//! Which of the selected sessions a policy ends in one run (`victims`, beside `max_per_run`),
//! in pt-kill's words: `all`, `oldest` (the single oldest), `all_but_oldest`, and
//! `idlest_first`. Pure: engines give each session's age, this orders and cuts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which selected sessions are victims, and in which order the run's limit takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Victims {
    /// Every selected session, oldest first when the limit cuts.
    #[default]
    All,
    /// Only the oldest selected session.
    Oldest,
    /// Every selected session but the oldest (a pool's longest-lived connection stays).
    AllButOldest,
    /// Every selected session, the longest idle first when the limit cuts.
    IdlestFirst,
}

impl Victims {
    /// The word the config and reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Victims::All => "all",
            Victims::Oldest => "oldest",
            Victims::AllButOldest => "all_but_oldest",
            Victims::IdlestFirst => "idlest_first",
        }
    }
}

/// The threshold that must hold on a target before a policy acts there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum When {
    /// Always.
    #[default]
    Always,
    /// When at least this many sessions are selected there.
    MatchingAtLeast(usize),
    /// When the selector's logins hold more than this many sessions there, whatever their
    /// state (every client session, for an `all_logins` policy).
    LoginSessionsAbove(usize),
    /// When the target's client sessions use more than this percentage of the connections
    /// clients can open (PostgreSQL: `max_connections` less the reserved slots; MySQL and
    /// MariaDB: `max_connections`).
    ConnectionsAbovePercentOfMax(u8),
}

impl When {
    /// Whether it asks for the target's connection count and limit.
    pub fn needs_limit(&self) -> bool {
        matches!(self, When::ConnectionsAbovePercentOfMax(_))
    }
}

/// How a policy's step picks its victims on one target: the rule, the threshold that must
/// hold there first, and the most it may end (at most [`MAX_SHARE_PERCENT`] of the target's
/// client sessions, whatever else allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pick {
    /// Which selected sessions, in which order.
    pub victims: Victims,
    /// What must hold on the target.
    pub when: When,
}

/// The most sessions one policy run may end on a target: a quarter of its client sessions,
/// rounded down.
pub const MAX_SHARE_PERCENT: usize = 25;

/// The most one run may end on a target with `clients` client sessions.
pub fn share_cap(clients: usize) -> usize {
    clients * MAX_SHARE_PERCENT / 100
}

/// What orders sessions: when each connected (`None` where the engine records no start,
/// MySQL and MariaDB, whose connection ids only rise, so `id` orders them instead) and since
/// when it has been idle (`None` while it runs a statement or when unreadable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age {
    /// When the session connected.
    pub started: Option<DateTime<Utc>>,
    /// The session's id on its server.
    pub id: i64,
    /// Since when it has been idle.
    pub idle_since: Option<DateTime<Utc>>,
}

/// The outcome of [`pick`]: the victims in the order they are ended, those the rule spares,
/// and those the limit leaves for a later run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked<T> {
    /// Ended this run.
    pub victims: Vec<T>,
    /// Spared by the rule itself (the oldest under `all_but_oldest`, all but one under
    /// `oldest`).
    pub spared: Vec<T>,
    /// Victims beyond the run's limit.
    pub over_limit: Vec<T>,
}

/// Orders `items` by the rule and keeps at most `limit` victims.
pub fn pick<T>(
    mut items: Vec<T>,
    victims: Victims,
    limit: usize,
    age: impl Fn(&T) -> Age,
) -> Picked<T> {
    // Oldest first: a known start before an unknown one, then the lower id (ids only rise).
    let by_age = |a: &T, b: &T| {
        let (a, b) = (age(a), age(b));
        (a.started.is_none(), a.started, a.id).cmp(&(b.started.is_none(), b.started, b.id))
    };
    items.sort_by(by_age);
    let mut spared = Vec::new();
    match victims {
        Victims::All => {}
        Victims::Oldest => {
            let rest = items.split_off(items.len().min(1));
            spared = rest;
        }
        Victims::AllButOldest => {
            if !items.is_empty() {
                spared.push(items.remove(0));
            }
        }
        Victims::IdlestFirst => {
            // Longest idle first; running or unreadable ones after, oldest first among equals.
            items.sort_by(|a, b| {
                let (x, y) = (age(a), age(b));
                (x.idle_since.is_none(), x.idle_since)
                    .cmp(&(y.idle_since.is_none(), y.idle_since))
                    .then_with(|| by_age(a, b))
            });
        }
    }
    let over_limit = items.split_off(items.len().min(limit));
    Picked {
        victims: items,
        spared,
        over_limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> Option<DateTime<Utc>> {
        Some(Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap())
    }

    // (id, started, idle_since)
    type S = (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

    fn ids(v: &[S]) -> Vec<i64> {
        v.iter().map(|s| s.0).collect()
    }

    fn run(items: &[S], victims: Victims, limit: usize) -> Picked<S> {
        pick(items.to_vec(), victims, limit, |s| Age {
            id: s.0,
            started: s.1,
            idle_since: s.2,
        })
    }

    #[test]
    fn each_rule_orders_and_the_limit_cuts() {
        let sessions: Vec<S> = vec![
            (4, at(40), at(100)),
            (1, at(10), None),
            (3, at(30), at(50)),
            (2, at(20), at(90)),
        ];
        let p = run(&sessions, Victims::All, 10);
        assert_eq!(ids(&p.victims), [1, 2, 3, 4]);
        assert!(p.spared.is_empty() && p.over_limit.is_empty());
        let p = run(&sessions, Victims::All, 2);
        assert_eq!(
            (ids(&p.victims), ids(&p.over_limit)),
            (vec![1, 2], vec![3, 4])
        );
        let p = run(&sessions, Victims::Oldest, 10);
        assert_eq!((ids(&p.victims), ids(&p.spared)), (vec![1], vec![2, 3, 4]));
        let p = run(&sessions, Victims::Oldest, 0);
        assert_eq!((ids(&p.victims), ids(&p.over_limit)), (vec![], vec![1]));
        let p = run(&sessions, Victims::AllButOldest, 2);
        assert_eq!(ids(&p.spared), [1]);
        assert_eq!((ids(&p.victims), ids(&p.over_limit)), (vec![2, 3], vec![4]));
        let p = run(&sessions, Victims::IdlestFirst, 3);
        assert_eq!(
            (ids(&p.victims), ids(&p.over_limit)),
            (vec![3, 2, 4], vec![1])
        );
        assert!(run(&[], Victims::AllButOldest, 3).victims.is_empty());
    }

    #[test]
    fn without_start_times_the_rising_ids_give_the_age() {
        let sessions: Vec<S> = vec![(9, None, None), (7, None, None), (8, at(5), None)];
        let p = run(&sessions, Victims::All, 10);
        // A known start first, then the unknown ones by id.
        assert_eq!(ids(&p.victims), [8, 7, 9]);
        let p = run(&[(9, None, None), (7, None, None)], Victims::Oldest, 1);
        assert_eq!(ids(&p.victims), [7]);
    }
}
