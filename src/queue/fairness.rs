//! Keeps one target from taking the workers: which targets this process may claim steps
//! for, and how many at once.
//!
//! Each target has a health, as this process last saw it:
//! - unknown (at start): probed at once; its steps wait for the answer;
//! - answering: up to `per_target` of its steps run at once;
//! - recovering (answered a probe after failing): one step at a time until one succeeds;
//! - failing (an attempt or a probe found it unreachable): parked, no step is claimed,
//!   until a probe answers.
//!
//! So a target that stops answering holds at most `per_target` worker slots, for at most one
//! termination timeout, and after that none: its steps wait without slots while probes,
//! which run outside the worker slots with their own timeout, watch for it to come back.
//! Steps of every other target are claimed as soon as they are due: the claim only looks at
//! targets that may run more, and takes the first due step of each before the second of any.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::Backend;
use crate::terminate::classify::ErrorClass;

/// What this process last saw of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Unknown,
    Answering,
    Recovering,
    Failing,
}

#[derive(Debug)]
struct TargetState {
    health: Health,
    in_flight: usize,
    probing: bool,
}

/// Per-target health and in-flight steps of this process.
#[derive(Debug)]
pub struct Fairness {
    per_target: usize,
    targets: Mutex<HashMap<String, TargetState>>,
}

impl Fairness {
    /// Every target in `targets` starts unknown; an answering one runs up to `per_target`
    /// steps at once.
    pub fn new<'a>(targets: impl IntoIterator<Item = &'a String>, per_target: usize) -> Self {
        let targets = targets
            .into_iter()
            .map(|t| {
                let state = TargetState {
                    health: Health::Unknown,
                    in_flight: 0,
                    probing: false,
                };
                (t.clone(), state)
            })
            .collect();
        Self {
            per_target: per_target.max(1),
            targets: Mutex::new(targets),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TargetState>> {
        // A panic while holding this lock leaves counts that are still usable.
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many more steps each target may start now; targets that may start none are left out.
    pub fn allowances(&self) -> Vec<(String, usize)> {
        self.lock()
            .iter()
            .filter_map(|(target, s)| {
                let more = self.cap(s).saturating_sub(s.in_flight);
                (more > 0).then(|| (target.clone(), more))
            })
            .collect()
    }

    /// Whether a target that may take steps has as many running as it may: its due steps
    /// wait for one of them to end.
    pub fn any_at_cap(&self) -> bool {
        self.lock()
            .values()
            .any(|s| self.cap(s) > 0 && s.in_flight >= self.cap(s))
    }

    /// How many steps a target in state `s` may run at once.
    fn cap(&self, s: &TargetState) -> usize {
        match s.health {
            Health::Answering => self.per_target,
            Health::Recovering => 1,
            Health::Unknown | Health::Failing => 0,
        }
    }

    /// The targets that may start a step and have none running: one step each. The worker
    /// starts these outside its shared slots, so a target is never kept waiting by steps of
    /// others that hang (stalled just as they started) until their timeouts.
    pub fn idle_allowances(&self) -> Vec<(String, usize)> {
        self.lock()
            .iter()
            .filter(|(_, s)| {
                s.in_flight == 0 && s.health != Health::Unknown && s.health != Health::Failing
            })
            .map(|(target, _)| (target.clone(), 1))
            .collect()
    }

    /// A step on `target` started.
    pub fn started(&self, target: &str) {
        if let Some(s) = self.lock().get_mut(target) {
            s.in_flight += 1;
        }
    }

    /// A step on `target` ended: successfully (`None`) or with a failure of `class`.
    pub fn ended(&self, target: &str, failure: Option<ErrorClass>) {
        if let Some(s) = self.lock().get_mut(target) {
            s.in_flight = s.in_flight.saturating_sub(1);
            match failure {
                Some(ErrorClass::Unreachable) => s.health = Health::Failing,
                // Configuration errors say nothing about the target.
                Some(ErrorClass::Fatal) => {}
                // It answered, even if to refuse.
                None | Some(ErrorClass::Transient | ErrorClass::Deterministic) => {
                    if s.health != Health::Failing {
                        s.health = Health::Answering;
                    }
                }
            }
        }
    }

    /// Which of `candidates` (targets with steps waiting, and whether any waits for a retry)
    /// to probe now: those not known to answer, and answering ones with retries waiting.
    /// Marks them as being probed; at most one probe per target runs at a time.
    pub fn to_probe(&self, candidates: &[(String, bool)]) -> Vec<String> {
        let mut targets = self.lock();
        candidates
            .iter()
            .filter_map(|(target, retrying)| {
                let s = targets.get_mut(target)?;
                let wanted = s.health != Health::Answering || *retrying;
                (wanted && !s.probing).then(|| {
                    s.probing = true;
                    target.clone()
                })
            })
            .collect()
    }

    /// Marks every target as being probed and returns them (the probe at start).
    pub fn probe_all(&self) -> Vec<String> {
        let mut targets = self.lock();
        targets
            .iter_mut()
            .filter(|(_, s)| !s.probing)
            .map(|(target, s)| {
                s.probing = true;
                target.clone()
            })
            .collect()
    }

    /// A probe of `target` finished; `answered` says whether the target answered it.
    /// `true` if its steps may now be claimed where they could not before.
    pub fn probed(&self, target: &str, answered: bool) -> bool {
        let mut targets = self.lock();
        let Some(s) = targets.get_mut(target) else {
            return false;
        };
        s.probing = false;
        let before = s.health;
        s.health = match (before, answered) {
            (Health::Unknown, true) => Health::Answering,
            (Health::Failing, true) => Health::Recovering,
            (health, true) => health,
            (_, false) => Health::Failing,
        };
        matches!(before, Health::Unknown | Health::Failing) && answered
    }
}

/// The claim of up to a limit of due steps, for the `targets` allowances given as a `VALUES`
/// list, at most each target's allowance, the first due step of every target before the
/// second of any (so steps queued ahead for one target never hide another's from the limit).
/// Placeholders in order: owner, lease end, (target, allowance) per target, now, now, limit.
pub(super) fn claim_sql(backend: Backend, targets: usize) -> String {
    let mut n = 0;
    let mut p = || match backend {
        Backend::Sqlite => "?".to_string(),
        Backend::Postgres => {
            n += 1;
            format!("${n}")
        }
    };
    let (owner, lease) = (p(), p());
    let values = (0..targets)
        .map(|_| format!("(CAST({} AS TEXT), CAST({} AS BIGINT))", p(), p()))
        .collect::<Vec<_>>()
        .join(", ");
    let (now, now2, limit) = (p(), p(), p());
    let due = format!(
        "s.state = 'pending' AND s.next_attempt_at <= {now} \
         AND (s.lease_until IS NULL OR s.lease_until < {now2})"
    );
    let chosen = match backend {
        // One writer at a time: rank every due step of the allowed targets.
        Backend::Sqlite => format!(
            "SELECT action_id, target FROM ( \
               SELECT s.action_id, s.target, s.next_attempt_at, a.column2 AS allowed, \
                 ROW_NUMBER() OVER (PARTITION BY s.target \
                   ORDER BY s.next_attempt_at, s.action_id) AS turn \
               FROM action_steps s JOIN (VALUES {values}) AS a ON s.target = a.column1 \
               WHERE {due}) AS ranked \
             WHERE turn <= allowed ORDER BY turn, next_attempt_at LIMIT {limit}"
        ),
        // Per target, lock only as many rows as it may take, skipping those another
        // replica is claiming (a window function cannot share a level with FOR UPDATE).
        Backend::Postgres => format!(
            "SELECT action_id, target FROM ( \
               SELECT c.action_id, c.target, c.next_attempt_at, \
                 ROW_NUMBER() OVER (PARTITION BY c.target \
                   ORDER BY c.next_attempt_at, c.action_id) AS turn \
               FROM (VALUES {values}) AS a CROSS JOIN LATERAL ( \
                 SELECT s.action_id, s.target, s.next_attempt_at FROM action_steps s \
                 WHERE s.target = a.column1 AND {due} \
                 ORDER BY s.next_attempt_at LIMIT a.column2 FOR UPDATE SKIP LOCKED) AS c \
             ) AS ranked ORDER BY turn, next_attempt_at LIMIT {limit}"
        ),
    };
    format!(
        "UPDATE action_steps SET lease_owner = {owner}, lease_until = {lease}, \
         attempts = attempts + 1 WHERE (action_id, target) IN ({chosen}) \
         RETURNING action_id, target, attempts, journal"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fairness() -> Fairness {
        let targets = ["a".to_string(), "b".to_string()];
        Fairness::new(&targets, 2)
    }

    fn allowed(f: &Fairness) -> Vec<(String, usize)> {
        let mut a = f.allowances();
        a.sort();
        a
    }

    #[test]
    fn unknown_and_failing_targets_are_parked_and_a_recovering_one_runs_one_step() {
        let f = fairness();
        assert!(allowed(&f).is_empty(), "nothing before the first probe");
        assert_eq!(f.probe_all().len(), 2);
        assert!(f.probed("a", true));
        assert!(!f.probed("b", false));
        assert_eq!(allowed(&f), [("a".to_string(), 2)]);
        f.started("a");
        f.started("a");
        assert!(allowed(&f).is_empty(), "a is at its cap");
        f.ended("a", Some(ErrorClass::Unreachable));
        f.ended("a", Some(ErrorClass::Unreachable));
        assert!(allowed(&f).is_empty(), "a is parked");
        assert_eq!(
            f.to_probe(&[("a".into(), false), ("b".into(), false)]),
            ["a", "b"]
        );
        assert!(
            f.to_probe(&[("a".into(), true)]).is_empty(),
            "one probe at a time"
        );
        assert!(f.probed("a", true));
        assert_eq!(
            allowed(&f),
            [("a".to_string(), 1)],
            "recovering: one at a time"
        );
        f.started("a");
        f.ended("a", Some(ErrorClass::Deterministic));
        assert_eq!(allowed(&f), [("a".to_string(), 2)], "it answered");
    }

    #[test]
    fn only_answering_targets_with_nothing_running_get_a_step_of_their_own() {
        let f = fairness();
        assert!(
            f.idle_allowances().is_empty(),
            "nothing before the first probe"
        );
        f.probe_all();
        f.probed("a", true);
        f.probed("b", true);
        let mut idle = f.idle_allowances();
        idle.sort();
        assert_eq!(idle, [("a".to_string(), 1), ("b".to_string(), 1)]);
        f.started("a");
        assert_eq!(f.idle_allowances(), [("b".to_string(), 1)]);
        f.ended("b", None);
        f.started("b");
        f.ended("b", Some(ErrorClass::Unreachable));
        assert!(f.idle_allowances().is_empty(), "a runs one, b is parked");
    }
}
