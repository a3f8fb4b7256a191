//! Leases: claiming due steps (fairly across targets, or one action's, or those past their
//! deadline), renewing and releasing them, and each attempt's journal of the sessions it is
//! about to signal.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{
    Lease, LeasedAction, Pending, Queue, QueueError, at, fairness, from_json, later, parse_time,
    to_json,
};
use crate::action::Plan;
use crate::store::{Backend, StoredRoles, again_if_lost, keep_padded_prepared, padded};
use crate::terminate::{EngineError, Journal, Session, same_session};

const CLAIM_SQLITE: &str = "UPDATE action_steps \
     SET lease_owner = $1, lease_until = $2, attempts = attempts + 1 \
     WHERE (action_id, target) IN ( \
         SELECT action_id, target FROM action_steps \
         WHERE state = 'pending' AND next_attempt_at <= $3 \
           AND (lease_until IS NULL OR lease_until < $3) \
           AND (CAST($5 AS TEXT) IS NULL OR action_id = $5) \
         ORDER BY next_attempt_at LIMIT $4) \
     RETURNING action_id, target, attempts, journal";

/// As [`CLAIM_SQLITE`], skipping rows another replica is claiming at this moment.
const CLAIM_POSTGRES: &str = "UPDATE action_steps \
     SET lease_owner = $1, lease_until = $2, attempts = attempts + 1 \
     WHERE (action_id, target) IN ( \
         SELECT action_id, target FROM action_steps \
         WHERE state = 'pending' AND next_attempt_at <= $3 \
           AND (lease_until IS NULL OR lease_until < $3) \
           AND (CAST($5 AS TEXT) IS NULL OR action_id = $5) \
         ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
     RETURNING action_id, target, attempts, journal";

impl Queue {
    /// Claims up to `limit` due steps (only `action`'s, if given) for this process.
    pub async fn claim(
        &self,
        limit: usize,
        action: Option<Uuid>,
    ) -> Result<Vec<Lease>, QueueError> {
        let sql = match self.store.backend() {
            Backend::Sqlite => CLAIM_SQLITE,
            Backend::Postgres => CLAIM_POSTGRES,
        };
        let rows = again_if_lost(|| {
            sqlx::query(sql)
                .bind(&self.owner)
                .bind(at(later(self.config.lease)))
                .bind(at(Utc::now()))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(action.map(|a| a.to_string()))
                .fetch_all(self.store.pool())
        })
        .await?;
        self.leases(rows).await
    }

    /// Claims up to `limit` due steps of the targets in `allowances`, at most each target's
    /// allowance, taking turns across targets ([`fairness`]).
    pub async fn claim_fair(
        &self,
        limit: usize,
        allowances: &[(String, usize)],
    ) -> Result<Vec<Lease>, QueueError> {
        if limit == 0 || allowances.is_empty() {
            return Ok(Vec::new());
        }
        let now = at(Utc::now());
        // Padded with allowances for no target (NULL matches no step), so the text stays
        // one of a few and prepared.
        let shape = padded(allowances.len());
        let sql = fairness::claim_sql(self.store.backend(), shape);
        let rows = again_if_lost(|| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .persistent(keep_padded_prepared(shape))
                .bind(&self.owner)
                .bind(at(later(self.config.lease)));
            for (target, n) in allowances {
                query = query
                    .bind(Some(target.as_str()))
                    .bind(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            for _ in allowances.len()..shape {
                query = query.bind(None::<&str>).bind(0_i64);
            }
            query
                .bind(&now)
                .bind(&now)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(self.store.pool())
        })
        .await?;
        crate::telemetry::queue_claimed(rows.len());
        self.leases(rows).await
    }

    /// Says on `target`'s pending steps that do not say why they wait yet that it does not
    /// answer its probe (`error`), so their status shows it.
    pub async fn mark_unanswered(&self, target: &str, error: &str) -> Result<u64, QueueError> {
        let now = at(Utc::now());
        Ok(sqlx::query(
            "UPDATE action_steps SET last_error = $2, failure = 'unreachable' \
             WHERE target = $1 AND state = 'pending' AND last_error IS NULL \
               AND (lease_until IS NULL OR lease_until < $3)",
        )
        .bind(target)
        .bind(error)
        .bind(&now)
        .execute(self.store.pool())
        .await?
        .rows_affected())
    }

    /// Claims the unleased pending steps on `target` whose action's deadline has passed, so
    /// they can be given up without another attempt while the target does not answer.
    pub async fn claim_expired(&self, target: &str) -> Result<Vec<Lease>, QueueError> {
        let lock = match self.store.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE action_steps \
             SET lease_owner = $1, lease_until = $2, attempts = attempts + 1 \
             WHERE (action_id, target) IN ( \
                 SELECT action_id, target FROM action_steps \
                 WHERE target = $4 AND state = 'pending' \
                   AND (lease_until IS NULL OR lease_until < $3) \
                   AND action_id IN (SELECT action_id FROM actions WHERE deadline <= $3) \
                 {lock}) \
             RETURNING action_id, target, attempts, journal"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.owner)
            .bind(at(later(self.config.lease)))
            .bind(at(Utc::now()))
            .bind(target)
            .fetch_all(self.store.pool())
            .await?;
        self.leases(rows).await
    }

    /// The leases of claimed rows, each with its action's plan.
    async fn leases(&self, rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<Lease>, QueueError> {
        // The steps of one action share its row: read it once, not once per step (a
        // credential mapped to 16 targets would otherwise wait for 16 store round trips),
        // and not at all when this process accepted the action or read it before: the row
        // never changes once stored.
        let mut actions: HashMap<String, Arc<LeasedAction>> = HashMap::new();
        let mut leases = Vec::with_capacity(rows.len());
        for row in rows {
            let action_id: String = row.try_get("action_id")?;
            let target: String = row.try_get("target")?;
            let attempts: i64 = row.try_get("attempts")?;
            let journal: Option<String> = row.try_get("journal")?;
            let action = match actions
                .get(&action_id)
                .cloned()
                .or_else(|| self.kept_plan(&action_id))
            {
                Some(action) => Ok(action),
                None => self.leased_action(&action_id).await.map(|action| {
                    let action = Arc::new(action);
                    self.keep_plan(action_id.clone(), action.clone());
                    action
                }),
            };
            if let Ok(action) = &action {
                actions.insert(action_id.clone(), action.clone());
            }
            let lease = action.and_then(|action| {
                Ok(Lease {
                    action_id: action.plan.action_id,
                    target,
                    attempts,
                    journal: match journal {
                        Some(text) => from_json("journal", &text)?,
                        None => Vec::new(),
                    },
                    plan: action.plan.clone(),
                    work: action.work.clone(),
                    actor: action.actor.clone(),
                    deadline: action.deadline,
                    roles: None,
                })
            });
            match lease {
                Ok(lease) => leases.push(lease),
                Err(e) => {
                    // Unreadable work cannot be done; it stays visible and is never retried
                    // in a tight loop, because its lease holds it for a while.
                    tracing::error!(action_id, error = %e, "cannot read a queued step");
                }
            }
        }
        Ok(leases)
    }

    /// What every lease of `action_id` shares, from its stored row.
    async fn leased_action(&self, action_id: &str) -> Result<LeasedAction, QueueError> {
        // The plan says what its steps do; the row's `work` column, still written for earlier
        // versions, says the same.
        let row = again_if_lost(|| {
            sqlx::query("SELECT actor, plan, deadline FROM actions WHERE action_id = $1")
                .bind(action_id)
                .fetch_one(self.store.pool())
        })
        .await?;
        let plan: Plan = from_json("plan", &row.try_get::<String, _>("plan")?)?;
        let work = plan.work();
        Ok(LeasedAction {
            plan,
            work: work.ok_or_else(|| QueueError::Corrupt("a step without work".into()))?,
            actor: row.try_get("actor")?,
            deadline: parse_time(&row.try_get::<String, _>("deadline")?)?,
        })
    }

    /// From now on (`true`, while the worker runs) or no more, stores the due steps of the
    /// actions accepted here leased to this process, for [`Self::take_adopted`]: the
    /// accepting replica starts them without a claim round trip to the store. Each is still
    /// leased like a claimed one (renewed, handed back at shutdown, taken over by another
    /// replica if this one dies), and the worker starts it only within its target's share;
    /// what it cannot start now it hands back ([`Self::hand_back`]).
    pub fn adopt_accepted(&self, on: bool) {
        self.adopting.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Reads what the store keeps about the roles of `targets` (the PostgreSQL ones: their
    /// engine reads it before its statement) beside the commit that accepts a step there
    /// for adoption, on another connection: that round trip then overlaps the commit's
    /// instead of following it on the rotation's path.
    pub fn read_roles_ahead(&self, targets: impl IntoIterator<Item = String>) {
        if let Ok(mut ahead) = self.roles_ahead.lock() {
            *ahead = targets.into_iter().collect();
        }
    }

    /// Of `targets`, those whose roles are read ahead.
    pub(super) fn roles_ahead_of(&self, targets: impl IntoIterator<Item = String>) -> Vec<String> {
        let Ok(ahead) = self.roles_ahead.lock() else {
            return Vec::new();
        };
        let mut of: Vec<String> = targets.into_iter().filter(|t| ahead.contains(t)).collect();
        of.sort();
        of.dedup();
        of
    }

    /// Whether accepted steps are leased to this process as they are stored.
    pub(super) fn adopting(&self) -> bool {
        self.adopting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The steps accepted here and leased to this process since the last call.
    pub fn take_adopted(&self) -> Vec<Lease> {
        self.adopted
            .lock()
            .map(|mut adopted| std::mem::take(&mut *adopted))
            .unwrap_or_default()
    }

    /// Keeps `leases`, just stored leased to this process, for [`Self::take_adopted`].
    pub(super) fn adopt(&self, leases: impl IntoIterator<Item = Lease>) {
        if let Ok(mut adopted) = self.adopted.lock() {
            adopted.extend(leases);
        }
    }

    /// Gives back an adopted step the worker cannot start now, as if never claimed, so any
    /// replica's next claim takes it.
    pub async fn hand_back(&self, lease: &Lease) -> Result<(), QueueError> {
        sqlx::query(
            "UPDATE action_steps \
             SET lease_owner = NULL, lease_until = NULL, attempts = attempts - 1 \
             WHERE action_id = $1 AND target = $2 AND lease_owner = $3 \
               AND state = 'pending' AND attempts = $4",
        )
        .bind(lease.action_id.to_string())
        .bind(&lease.target)
        .bind(&self.owner)
        .bind(lease.attempts)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Extends every lease this process holds.
    pub async fn renew(&self) -> Result<(), QueueError> {
        sqlx::query(
            "UPDATE action_steps SET lease_until = $2 \
             WHERE lease_owner = $1 AND state = 'pending'",
        )
        .bind(&self.owner)
        .bind(at(later(self.config.lease)))
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Gives back every lease this process holds, so another replica (or this one after a
    /// restart) takes the work at once.
    pub async fn release_all(&self) -> Result<u64, QueueError> {
        Ok(sqlx::query(
            "UPDATE action_steps SET lease_owner = NULL, lease_until = NULL \
             WHERE lease_owner = $1 AND state = 'pending'",
        )
        .bind(&self.owner)
        .execute(self.store.pool())
        .await?
        .rows_affected())
    }

    /// Records the journal of a leased step; refused once the lease is no longer ours, so
    /// nothing is signalled by a process that lost its step.
    pub(super) async fn write_journal(
        &self,
        lease: &Lease,
        sessions: &[Session],
    ) -> Result<(), QueueError> {
        let journal = to_json(&sessions);
        // Twice if need be: the second run writes the same journal.
        let updated = again_if_lost(|| {
            sqlx::query(
                "UPDATE action_steps SET journal = $4 \
                 WHERE action_id = $1 AND target = $2 AND lease_owner = $3 \
                   AND state = 'pending' AND lease_until > $5 AND attempts = $6",
            )
            .bind(lease.action_id.to_string())
            .bind(&lease.target)
            .bind(&self.owner)
            .bind(&journal)
            .bind(at(Utc::now()))
            // The owner names the process, the attempt count this attempt: a process can
            // hold a step again (its lease lapsed while the store was down) while its
            // earlier attempt is still running, and that one must not signal or record
            // any more.
            .bind(lease.attempts)
            .execute(self.store.pool())
        })
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(QueueError::Corrupt(
                "the step's lease expired or was taken over".into(),
            ));
        }
        Ok(())
    }

    /// A journal for `lease`'s attempt, starting from what earlier attempts recorded.
    pub fn journal(self: &Arc<Self>, lease: &Lease) -> Arc<dyn Journal> {
        Arc::new(StepJournal {
            queue: self.clone(),
            lease: lease.clone(),
            recorded: Mutex::new(lease.journal.clone()),
        })
    }
}

/// Records an attempt's sessions in its step's row before they are signalled.
#[derive(Debug)]
struct StepJournal {
    queue: Arc<Queue>,
    lease: Lease,
    /// Everything recorded for the step so far (earlier attempts' sessions included).
    recorded: Mutex<Vec<Session>>,
}

#[async_trait]
impl Journal for StepJournal {
    async fn record(&self, sessions: &[Session]) -> Result<(), EngineError> {
        let mut recorded = self.recorded.lock().await;
        let mut all = recorded.clone();
        for s in sessions {
            if !all.iter().any(|r| same_session(r, s)) {
                all.push(s.clone());
            }
        }
        self.queue
            .write_journal(&self.lease, &all)
            .await
            .map_err(|e| EngineError::Journal(e.to_string()))?;
        *recorded = all;
        Ok(())
    }
}

/// The leases of `pending`'s steps stored leased to this process (those due at `decided`),
/// with their targets' `roles` read ahead, if read.
pub(super) fn adopted(
    pending: &Pending,
    roles: &HashMap<String, Arc<StoredRoles>>,
    decided: DateTime<Utc>,
) -> Vec<Lease> {
    let s = &pending.submission;
    let Some(work) = s.plan.work() else {
        return Vec::new();
    };
    if !s.due_at(decided) {
        return Vec::new();
    }
    s.plan
        .steps
        .iter()
        .map(|step| Lease {
            action_id: s.plan.action_id,
            target: step.target.clone(),
            attempts: 1,
            journal: Vec::new(),
            plan: s.plan.clone(),
            work: work.clone(),
            actor: s.actor.clone(),
            // As stored: to the microsecond.
            deadline: parse_time(&at(pending.deadline)).unwrap_or(pending.deadline),
            roles: roles.get(&step.target).cloned(),
        })
        .collect()
}
