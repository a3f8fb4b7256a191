//! The durable work queue every action runs from.
//!
//! An action is accepted only once its plan and one row per step (the action on one target)
//! are stored, in the same transaction as its idempotency claims and its first audit records.
//! Workers ([`worker`]) then claim due steps with expiring leases (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, so several replicas share one queue), run them, and record each step's outcome
//! together with its audit records. A step whose target fails is retried with backoff until
//! the action's deadline; a process that dies holding a lease loses it when it expires, and
//! the sessions an interrupted attempt was about to signal are in the step's journal, so they
//! are still audited exactly once.

pub mod fairness;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use sqlx::Row;
use tokio::sync::{Mutex, Notify, broadcast, oneshot};
use uuid::Uuid;

use crate::audit::{Audit, AuditError, Decision, Entry, Kind, Transaction};
use crate::config::QueueConfig;
use crate::pipeline::{self, ActionReport, Status, TargetReport, Work};
use crate::resolve::Plan;
use crate::store::{Backend, Store, rows_per_statement, timestamp, values_list};
use crate::terminate::classify::{DETERMINISTIC_ATTEMPTS, ErrorClass};
use crate::terminate::{EngineError, Journal, Session, same_session};

/// Failures of the work queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The store or the audit trail refused a write; nothing was accepted or changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A stored plan, step or report could not be read back.
    #[error("stored work is unreadable: {0}")]
    Corrupt(String),
    /// The commit of a group of submissions failed; nothing in the group was accepted.
    #[error(transparent)]
    Group(Arc<AuditError>),
}

impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        QueueError::Audit(AuditError::from(e))
    }
}

/// An action to store and carry out.
#[derive(Debug, Clone)]
pub struct Submission {
    /// What to do.
    pub plan: Plan,
    /// What each step does on its target; `None` when the plan terminates nothing.
    pub work: Option<Work>,
    /// Who asked (on every audit record).
    pub actor: String,
    /// Idempotency keys taken in the same transaction; the first already taken aborts it.
    pub claims: Vec<String>,
    /// Records written before `action.planned` (e.g. `event.accepted`).
    pub before: Vec<Entry>,
    /// How long failing targets are retried, if not `[queue] retry_for`.
    pub retry_for: Option<Duration>,
}

/// What became of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Stored; it will be carried out.
    Accepted(Uuid),
    /// `claims[index]` was taken before, by this action; nothing was stored.
    Duplicate {
        /// Which claim.
        index: usize,
        /// The action that took it.
        action_id: String,
    },
}

/// A step this process holds the lease of.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The action.
    pub action_id: Uuid,
    /// The step's target.
    pub target: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// Sessions earlier, interrupted attempts recorded before signalling.
    pub journal: Vec<Session>,
    /// The action's plan.
    pub plan: Plan,
    /// What the step does.
    pub work: Work,
    /// Who asked for the action.
    pub actor: String,
    /// When retrying stops.
    pub deadline: DateTime<Utc>,
}

/// The parts of a [`Lease`] that come from its action's row.
struct LeasedAction {
    plan: Plan,
    work: Work,
    actor: String,
    deadline: DateTime<Utc>,
}

/// One step's state, as `GET /v1/actions/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepStatus {
    /// Target id.
    pub target: String,
    /// `pending` or `done`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The last attempt's error, if it failed.
    pub last_error: Option<String>,
    /// How that error is retried: `unreachable` and `transient` until the deadline (and at
    /// once when the target answers a probe), `deterministic` for at most 3 attempts.
    pub failure: Option<String>,
    /// When a pending step is due.
    pub next_attempt_at: Option<String>,
    /// The process holding it, while one does.
    pub leased_by: Option<String>,
}

/// An action's state and, once finished, its report.
#[derive(Debug, Clone, Serialize)]
pub struct ActionStatus {
    /// The action.
    pub action_id: String,
    /// `running`, `completed` or `incomplete`.
    pub status: String,
    /// Who asked.
    pub actor: String,
    /// When it was accepted.
    pub created_at: String,
    /// Failing targets are retried until then.
    pub retry_until: String,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Per target.
    pub steps: Vec<StepStatus>,
    /// The finished report.
    pub report: Option<ActionReport>,
}

/// The queue, shared by the server's workers, its handlers and the CLI.
#[derive(Debug)]
pub struct Queue {
    store: Store,
    owner: String,
    config: QueueConfig,
    /// Wakes the local worker: new work, a freed slot, a target back.
    wake: Notify,
    /// Announces actions this process finished, to local waiters.
    finished: broadcast::Sender<Uuid>,
    /// Submissions waiting for the next group commit.
    pending: std::sync::Mutex<Vec<Pending>>,
    /// Held by the submitter that commits the waiting group.
    committing: Mutex<()>,
}

/// A submission waiting for a group commit, with where its outcome goes.
#[derive(Debug)]
struct Pending {
    submission: Submission,
    deadline: DateTime<Utc>,
    reply: oneshot::Sender<Result<Submitted, QueueError>>,
}

/// Takes a cancelled submitter's submission out of the waiting list, if no group took it yet.
struct Withdraw<'a> {
    queue: &'a Queue,
    action_id: Uuid,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.queue.pending.lock() {
            pending.retain(|p| p.submission.plan.action_id != self.action_id);
        }
    }
}

/// The most submissions one commit carries; bounds how long one transaction holds the lock.
const GROUP_MAX: usize = 256;

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

fn at(d: DateTime<Utc>) -> String {
    timestamp(d)
}

fn later(d: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, QueueError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| QueueError::Corrupt(format!("timestamp {text:?}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, QueueError> {
    serde_json::from_str(text).map_err(|e| QueueError::Corrupt(format!("{what}: {e}")))
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plans, reports and sessions always serialise")
}

impl Queue {
    /// The queue in `store`, worked by this process as `owner`.
    pub fn new(store: Store, owner: String, config: QueueConfig) -> Self {
        let (finished, _) = broadcast::channel(1024);
        Self {
            store,
            owner,
            config,
            wake: Notify::new(),
            finished,
            pending: std::sync::Mutex::new(Vec::new()),
            committing: Mutex::new(()),
        }
    }

    /// A lease owner name for this process: the replica's name (`SEVER_REPLICA_ID`, else
    /// `HOSTNAME`), the pid and a random part, so no two processes ever share one.
    pub fn owner_name(role: &str) -> String {
        let replica = std::env::var("SEVER_REPLICA_ID")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "sever".into());
        let random = Uuid::new_v4().simple().to_string();
        format!("{role}:{replica}:{}:{}", std::process::id(), &random[..8])
    }

    /// This process's lease owner name.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The queue's settings.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Stores `submission` with its claims and records, atomically; wakes the local worker.
    ///
    /// Submissions arriving together share one commit (group commit): each submitter queues
    /// its own, then takes the turn to commit; whoever gets the turn first commits everything
    /// waiting, so under load one fsync carries many events, and alone it is one transaction
    /// as before. Each submission is still all-or-nothing on its own.
    pub async fn submit(
        &self,
        audit: &Audit,
        submission: &Submission,
    ) -> Result<Submitted, QueueError> {
        let deadline = later(submission.retry_for.unwrap_or(self.config.retry_for));
        let mut answer = self.enqueue(submission, deadline);
        // A submitter that gives up (its request timed out, its client left) while its
        // submission still waits takes it back, so a `503` never hides an acceptance.
        let withdraw = Withdraw {
            queue: self,
            action_id: submission.plan.action_id,
        };
        let turn = self.committing.lock().await;
        let submitted = loop {
            match answer.try_recv() {
                Ok(result) => break result?,
                Err(oneshot::error::TryRecvError::Empty) => self.commit_pending(audit).await,
                // The submitter that took it into its group was cancelled mid-commit, so
                // whether it was stored is unknown. Running it again is safe: a rerun that
                // finds its own claims reports it accepted.
                Err(oneshot::error::TryRecvError::Closed) => {
                    answer = self.enqueue(submission, deadline);
                }
            }
        };
        // Answered, so no longer waiting: dropping the guard finds nothing to take back.
        drop(withdraw);
        drop(turn);
        if let Submitted::Accepted(action_id) = submitted {
            if submission.work.is_none() {
                let _ = self.finished.send(action_id);
            } else {
                self.wake.notify_one();
            }
        }
        Ok(submitted)
    }

    fn enqueue(
        &self,
        submission: &Submission,
        deadline: DateTime<Utc>,
    ) -> oneshot::Receiver<Result<Submitted, QueueError>> {
        let (reply, answer) = oneshot::channel();
        self.pending
            .lock()
            .expect("the pending list is only pushed to and drained")
            .push(Pending {
                submission: submission.clone(),
                deadline,
                reply,
            });
        answer
    }

    /// Commits the oldest waiting submissions (up to [`GROUP_MAX`]) together and answers
    /// each of them.
    async fn commit_pending(&self, audit: &Audit) {
        let group: Vec<Pending> = {
            let mut pending = self
                .pending
                .lock()
                .expect("the pending list is only pushed to and drained");
            let n = pending.len().min(GROUP_MAX);
            pending.drain(..n).collect()
        };
        match audit
            .transact(&SubmitTx {
                group: &group,
                backend: self.store.backend(),
            })
            .await
        {
            Ok(outputs) => {
                for (pending, output) in group.into_iter().zip(outputs) {
                    let _ = pending.reply.send(Ok(output));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for pending in group {
                    let _ = pending.reply.send(Err(QueueError::Group(e.clone())));
                }
            }
        }
    }

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
        let rows = sqlx::query(sql)
            .bind(&self.owner)
            .bind(at(later(self.config.lease)))
            .bind(at(Utc::now()))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(action.map(|a| a.to_string()))
            .fetch_all(self.store.pool())
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
        let sql = fairness::claim_sql(self.store.backend(), allowances.len());
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(&self.owner)
            .bind(at(later(self.config.lease)));
        for (target, n) in allowances {
            query = query
                .bind(target)
                .bind(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        let rows = query
            .bind(&now)
            .bind(&now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.store.pool())
            .await?;
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
        // credential mapped to 16 targets would otherwise wait for 16 store round trips).
        let mut actions: HashMap<String, Arc<LeasedAction>> = HashMap::new();
        let mut leases = Vec::with_capacity(rows.len());
        for row in rows {
            let action_id: String = row.try_get("action_id")?;
            let target: String = row.try_get("target")?;
            let attempts: i64 = row.try_get("attempts")?;
            let journal: Option<String> = row.try_get("journal")?;
            let action = match actions.get(&action_id) {
                Some(action) => Ok(action.clone()),
                None => self.leased_action(&action_id).await.map(|action| {
                    let action = Arc::new(action);
                    actions.insert(action_id.clone(), action.clone());
                    action
                }),
            };
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
        let row =
            sqlx::query("SELECT actor, plan, work, deadline FROM actions WHERE action_id = $1")
                .bind(action_id)
                .fetch_one(self.store.pool())
                .await?;
        let work: Option<Work> = from_json("work", &row.try_get::<String, _>("work")?)?;
        Ok(LeasedAction {
            plan: from_json("plan", &row.try_get::<String, _>("plan")?)?,
            work: work.ok_or_else(|| QueueError::Corrupt("a step without work".into()))?,
            actor: row.try_get("actor")?,
            deadline: parse_time(&row.try_get::<String, _>("deadline")?)?,
        })
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
    async fn write_journal(&self, lease: &Lease, sessions: &[Session]) -> Result<(), QueueError> {
        let updated = sqlx::query(
            "UPDATE action_steps SET journal = $4 \
             WHERE action_id = $1 AND target = $2 AND lease_owner = $3 \
               AND state = 'pending' AND lease_until > $5 AND attempts = $6",
        )
        .bind(lease.action_id.to_string())
        .bind(&lease.target)
        .bind(&self.owner)
        .bind(to_json(&sessions))
        .bind(at(Utc::now()))
        // The owner names the process, the attempt count this attempt: a process can hold
        // a step again (its lease lapsed while the store was down) while its earlier
        // attempt is still running, and that one must not signal or record any more.
        .bind(lease.attempts)
        .execute(self.store.pool())
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

    /// Records a finished step with its audit records; the last step of an action also
    /// completes the action. `false` if the lease was lost (another process has the step).
    pub async fn finish(
        &self,
        audit: &Audit,
        lease: &Lease,
        report: &TargetReport,
    ) -> Result<bool, QueueError> {
        let done = audit
            .transact(&FinishTx {
                owner: &self.owner,
                lease,
                report,
            })
            .await?;
        if let Some(Some(_)) = done {
            let _ = self.finished.send(lease.action_id);
        }
        Ok(done.is_some())
    }

    /// Schedules another attempt of a failed step after a backoff (the last one at the
    /// action's deadline), or gives up and finishes the step as failed: once the deadline
    /// has passed, or, for a failure that will recur ([`ErrorClass::Deterministic`]), after
    /// [`DETERMINISTIC_ATTEMPTS`] attempts.
    pub async fn retry(
        &self,
        audit: &Audit,
        lease: &Lease,
        report: TargetReport,
        class: ErrorClass,
    ) -> Result<bool, QueueError> {
        let error = report.error.clone().unwrap_or_default();
        let now = Utc::now();
        let given_up =
            if class == ErrorClass::Deterministic && lease.attempts >= DETERMINISTIC_ATTEMPTS {
                Some(format!(
                    "{error} (gave up after {} attempts: the target refuses this, and retrying \
                 does not change that)",
                    lease.attempts
                ))
            } else if class == ErrorClass::Fatal || now >= lease.deadline {
                Some(format!(
                    "{error} (gave up after {} attempts; retried until {})",
                    lease.attempts,
                    at(lease.deadline)
                ))
            } else {
                None
            };
        if let Some(given_up) = given_up {
            let mut report = report;
            report.error = Some(given_up);
            return self.finish(audit, lease, &report).await;
        }
        // The last attempt is made at the deadline, not skipped because a backoff overshoots it.
        let backoff = chrono::Duration::from_std(backoff(lease.attempts, self.config.max_backoff))
            .unwrap_or_default();
        let next = (now + backoff).min(lease.deadline);
        audit
            .transact(&RetryTx {
                owner: &self.owner,
                lease,
                error: &error,
                class,
                next,
            })
            .await
            .map_err(Into::into)
    }

    /// Targets with pending steps, each with whether any of them waits for a retry a probe
    /// may bring forward (one whose last failure will recur does not).
    pub async fn waiting_targets(&self) -> Result<Vec<(String, bool)>, QueueError> {
        let rows = sqlx::query(
            "SELECT target, MAX(CASE WHEN attempts > 0 AND next_attempt_at > $1 \
               AND (failure IS NULL OR failure <> 'deterministic') THEN 1 ELSE 0 END) AS retrying \
             FROM action_steps WHERE state = 'pending' GROUP BY target",
        )
        .bind(at(Utc::now()))
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("target")?, r.try_get::<i32, _>("retrying")? > 0)))
            .collect()
    }

    /// Makes the steps waiting on `target` due now (the target answered again), except those
    /// whose last failure will recur: they keep their backoff.
    pub async fn target_back(&self, target: &str) -> Result<u64, QueueError> {
        let now = at(Utc::now());
        let n = sqlx::query(
            "UPDATE action_steps SET next_attempt_at = $2 \
             WHERE target = $1 AND state = 'pending' AND next_attempt_at > $2 \
               AND (failure IS NULL OR failure <> 'deterministic')",
        )
        .bind(target)
        .bind(&now)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(n)
    }

    /// Drops actions that finished before `before`, with their steps; returns how many.
    pub async fn prune_finished(&self, before: DateTime<Utc>) -> Result<u64, QueueError> {
        let before = at(before);
        let mut tx = self.store.pool().begin().await?;
        sqlx::query(
            "DELETE FROM action_steps WHERE action_id IN \
             (SELECT action_id FROM actions WHERE finished_at < $1)",
        )
        .bind(&before)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query("DELETE FROM actions WHERE finished_at < $1")
            .bind(&before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Wakes the local worker.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until the local worker is woken.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// The finished report of `action_id`, if it has finished.
    pub async fn report(&self, action_id: Uuid) -> Result<Option<ActionReport>, QueueError> {
        let row = sqlx::query("SELECT report FROM actions WHERE action_id = $1")
            .bind(action_id.to_string())
            .fetch_optional(self.store.pool())
            .await?;
        match row.and_then(|r| r.try_get::<Option<String>, _>("report").ok().flatten()) {
            Some(text) => Ok(Some(from_json("report", &text)?)),
            None => Ok(None),
        }
    }

    /// Waits up to `budget` for `action_id` to finish (here or on another replica).
    pub async fn wait(
        &self,
        action_id: Uuid,
        budget: Duration,
    ) -> Result<Option<ActionReport>, QueueError> {
        let mut finished = self.finished.subscribe();
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            if let Some(report) = self.report(action_id).await? {
                return Ok(Some(report));
            }
            // Another replica's completion is only seen by polling.
            let poll = tokio::time::sleep(self.config.poll_interval);
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return self.report(action_id).await,
                () = poll => {}
                done = finished.recv() => match done {
                    Ok(id) if id != action_id => continue,
                    _ => {}
                },
            }
        }
    }

    /// An action's state, or `None` if there is no such action.
    pub async fn status(&self, action_id: Uuid) -> Result<Option<ActionStatus>, QueueError> {
        let id = action_id.to_string();
        let Some(row) = sqlx::query(
            "SELECT actor, created_at, deadline, status, finished_at, report \
             FROM actions WHERE action_id = $1",
        )
        .bind(&id)
        .fetch_optional(self.store.pool())
        .await?
        else {
            return Ok(None);
        };
        let steps = sqlx::query(
            "SELECT target, state, attempts, last_error, failure, next_attempt_at, lease_owner, \
               lease_until \
             FROM action_steps WHERE action_id = $1 ORDER BY position",
        )
        .bind(&id)
        .fetch_all(self.store.pool())
        .await?;
        let now = at(Utc::now());
        let steps = steps
            .iter()
            .map(|s| {
                let state: String = s.try_get("state")?;
                let pending = state == "pending";
                let lease_until: Option<String> = s.try_get("lease_until")?;
                let leased = lease_until.is_some_and(|u| u > now);
                Ok(StepStatus {
                    target: s.try_get("target")?,
                    attempts: s.try_get("attempts")?,
                    last_error: s.try_get("last_error")?,
                    failure: s.try_get("failure")?,
                    next_attempt_at: if pending {
                        s.try_get("next_attempt_at")?
                    } else {
                        None
                    },
                    leased_by: if pending && leased {
                        s.try_get("lease_owner")?
                    } else {
                        None
                    },
                    state,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let report: Option<String> = row.try_get("report")?;
        Ok(Some(ActionStatus {
            action_id: id,
            status: row.try_get("status")?,
            actor: row.try_get("actor")?,
            created_at: row.try_get("created_at")?,
            retry_until: row.try_get("deadline")?,
            finished_at: row.try_get("finished_at")?,
            steps,
            report: report.map(|r| from_json("report", &r)).transpose()?,
        }))
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

/// Stores a submission: claims, the action, its steps, its first records.
/// Stores a group of submissions in one transaction, with a few multi-row statements
/// whatever the group's size. Members are decided in order, each all-or-nothing: one whose
/// claim is taken (in the store, or by an earlier member) stores nothing.
struct SubmitTx<'a> {
    group: &'a [Pending],
    backend: Backend,
}

#[async_trait]
impl Transaction for SubmitTx<'_> {
    type Output = Vec<Submitted>;

    async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<Decision<Vec<Submitted>>, sqlx::Error> {
        let ids: Vec<String> = self
            .group
            .iter()
            .map(|p| p.submission.plan.action_id.to_string())
            .collect();
        // Stored already: an earlier run of this transaction committed although its commit
        // reported an error, and `Audit::transact` ran it again.
        let stored = select_existing(
            tx,
            self.backend,
            "SELECT action_id FROM actions WHERE action_id IN",
            &ids,
        )
        .await?;
        let keys: Vec<String> = self
            .group
            .iter()
            .flat_map(|p| p.submission.claims.iter().cloned())
            .collect();
        let mut taken = select_claims(tx, self.backend, &keys).await?;

        let mut outputs = Vec::with_capacity(self.group.len());
        let mut accepted = Vec::new();
        for (pending, id) in self.group.iter().zip(&ids) {
            let s = &pending.submission;
            if stored.contains_key(id) {
                outputs.push(Submitted::Accepted(s.plan.action_id));
                continue;
            }
            let duplicate = s.claims.iter().enumerate().find_map(|(index, key)| {
                taken.get(key).map(|owner| Submitted::Duplicate {
                    index,
                    action_id: owner.clone(),
                })
            });
            if let Some(duplicate) = duplicate {
                outputs.push(duplicate);
                continue;
            }
            for key in &s.claims {
                taken.insert(key.clone(), id.clone());
            }
            accepted.push((pending, id));
            outputs.push(Submitted::Accepted(s.plan.action_id));
        }
        if accepted.is_empty() {
            return Ok(Decision::Rollback(outputs));
        }

        let now = at(Utc::now());
        let mut claims = Vec::new();
        let mut actions = Vec::new();
        let mut steps = Vec::new();
        let mut entries = Vec::new();
        for (pending, id) in &accepted {
            let s = &pending.submission;
            let plan = &s.plan;
            let mut own: Vec<&String> = s.claims.iter().collect();
            own.sort();
            own.dedup();
            claims.extend(
                own.into_iter()
                    .map(|key| [key.clone(), now.clone(), (*id).clone()]),
            );
            let finished = s.work.is_none().then(|| pipeline::report(plan, Vec::new()));
            actions.push(ActionRow {
                id: (*id).clone(),
                actor: s.actor.clone(),
                plan: to_json(plan),
                work: to_json(&s.work),
                deadline: at(pending.deadline),
                status: match &finished {
                    Some(report) => status_name(report.status),
                    None => "running",
                },
                finished_at: finished.as_ref().map(|_| now.clone()),
                report: finished.as_ref().map(to_json),
            });
            if s.work.is_some() {
                for (position, step) in plan.steps.iter().enumerate() {
                    steps.push(((*id).clone(), step.target.clone(), position));
                }
            }
            entries.extend(s.before.iter().cloned());
            entries.push(Entry::new(
                Kind::ActionPlanned,
                &s.actor,
                Some(plan.action_id),
                serde_json::to_value(plan).unwrap_or_default(),
            ));
            if let Some(report) = &finished {
                entries.push(pipeline::completed_record(report, &s.actor));
            }
        }
        // A plain INSERT: a claim taken meanwhile by a process outside this lock fails the
        // transaction, and its rerun finds the claim and answers duplicate.
        for chunk in claims.chunks(rows_per_statement(3)) {
            let sql = format!(
                "INSERT INTO webhook_deliveries (webhook_id, received_at, action_id) VALUES {}",
                values_list(self.backend, chunk.len(), 3)
            );
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
            for row in chunk {
                insert = row.iter().fold(insert, |q, v| q.bind(v));
            }
            insert.execute(&mut **tx).await?;
        }
        for chunk in actions.chunks(rows_per_statement(9)) {
            let sql = format!(
                "INSERT INTO actions (action_id, created_at, actor, plan, work, deadline, status, \
                 finished_at, report) VALUES {}",
                values_list(self.backend, chunk.len(), 9)
            );
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
            for a in chunk {
                insert = insert
                    .bind(&a.id)
                    .bind(&now)
                    .bind(&a.actor)
                    .bind(&a.plan)
                    .bind(&a.work)
                    .bind(&a.deadline)
                    .bind(a.status)
                    .bind(&a.finished_at)
                    .bind(&a.report);
            }
            insert.execute(&mut **tx).await?;
        }
        for chunk in steps.chunks(rows_per_statement(6)) {
            let sql = format!(
                "INSERT INTO action_steps (action_id, target, position, next_attempt_at, \
                 state, attempts) VALUES {}",
                values_list(self.backend, chunk.len(), 6)
            );
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
            for (id, target, position) in chunk {
                insert = insert
                    .bind(id)
                    .bind(target)
                    .bind(i64::try_from(*position).unwrap_or(i64::MAX))
                    .bind(&now)
                    .bind("pending")
                    .bind(0_i64);
            }
            insert.execute(&mut **tx).await?;
        }
        Ok(Decision::Commit(entries, outputs))
    }
}

/// One `actions` row to insert.
struct ActionRow {
    id: String,
    actor: String,
    plan: String,
    work: String,
    deadline: String,
    status: &'static str,
    finished_at: Option<String>,
    report: Option<String>,
}

/// `select` (ending in `IN`) over `values`, in chunks: the first column of every row found.
async fn select_existing(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    select: &str,
    values: &[String],
) -> Result<std::collections::HashMap<String, String>, sqlx::Error> {
    let mut found = std::collections::HashMap::new();
    // (`chunks` yields nothing for no values, so no `IN ()`.)
    for chunk in values.chunks(rows_per_statement(1)) {
        let sql = format!("{select} {}", values_list(backend, 1, chunk.len()));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for v in chunk {
            query = query.bind(v);
        }
        for row in query.fetch_all(&mut **tx).await? {
            let key: String = row.try_get(0)?;
            let value: String = row.try_get(row.len() - 1)?;
            found.insert(key, value);
        }
    }
    Ok(found)
}

/// Which of `keys` are claimed already, and by which action.
async fn select_claims(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    keys: &[String],
) -> Result<std::collections::HashMap<String, String>, sqlx::Error> {
    select_existing(
        tx,
        backend,
        "SELECT webhook_id, action_id FROM webhook_deliveries WHERE webhook_id IN",
        keys,
    )
    .await
}

/// Exponential backoff from 500 ms, capped at `max`, with jitter (half to all of it) so
/// failing steps spread out.
fn backoff(attempts: i64, max: Duration) -> Duration {
    let exp = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(19);
    let full = Duration::from_millis(500).saturating_mul(1 << exp).min(max);
    full.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// A failure class as stored in `action_steps.failure` and shown in the step's status.
fn class_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Unreachable => "unreachable",
        ErrorClass::Transient => "transient",
        ErrorClass::Deterministic => "deterministic",
        ErrorClass::Fatal => "fatal",
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Completed => "completed",
        Status::Incomplete => "incomplete",
    }
}

/// Marks a step done with its records; completes the action after its last step.
/// Output: `None` if the lease was lost, `Some(Some(report))` if the action finished.
struct FinishTx<'a> {
    owner: &'a str,
    lease: &'a Lease,
    report: &'a TargetReport,
}

#[async_trait]
impl Transaction for FinishTx<'_> {
    type Output = Option<Option<ActionReport>>;

    /// Progress of an accepted action: it finishes even after the store file is lost.
    fn is_new_work(&self) -> bool {
        false
    }

    async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<Decision<Self::Output>, sqlx::Error> {
        let lease = self.lease;
        let id = lease.action_id.to_string();
        let updated = sqlx::query(
            "UPDATE action_steps SET state = 'done', report = $4, last_error = $5, \
             failure = CASE WHEN $7 = 1 THEN failure ELSE NULL END, journal = NULL, lease_owner = NULL, lease_until = NULL \
             WHERE action_id = $1 AND target = $2 AND lease_owner = $3 AND state = 'pending' \
               AND attempts = $6",
        )
        .bind(&id)
        .bind(&lease.target)
        .bind(self.owner)
        .bind(to_json(self.report))
        .bind(&self.report.error)
        .bind(lease.attempts)
        .bind(i32::from(self.report.error.is_some()))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(Decision::Rollback(None));
        }
        let mut entries = pipeline::target_records(
            self.report,
            lease.plan.dry_run,
            &lease.actor,
            lease.action_id,
        );
        if let Some(error) = &self.report.error {
            // The step is finished with an error only when retrying is over or pointless.
            if let Some(last) = entries.iter_mut().find(|e| e.kind == Kind::TargetFailed) {
                last.detail["attempts"] = json!(lease.attempts);
                last.detail["error"] = json!(error);
            }
        }
        let pending: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM action_steps WHERE action_id = $1 AND state = 'pending'",
        )
        .bind(&id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
        if pending > 0 {
            return Ok(Decision::Commit(entries, Some(None)));
        }
        let rows =
            sqlx::query("SELECT report FROM action_steps WHERE action_id = $1 ORDER BY position")
                .bind(&id)
                .fetch_all(&mut **tx)
                .await?;
        let mut targets = Vec::with_capacity(rows.len());
        for row in rows {
            let text: Option<String> = row.try_get("report")?;
            let report: TargetReport = text
                .and_then(|t| serde_json::from_str(&t).ok())
                .ok_or_else(|| sqlx::Error::Protocol("a finished step has no report".into()))?;
            targets.push(report);
        }
        let report = pipeline::report(&lease.plan, targets);
        sqlx::query(
            "UPDATE actions SET status = $2, finished_at = $3, report = $4 WHERE action_id = $1",
        )
        .bind(&id)
        .bind(status_name(report.status))
        .bind(at(Utc::now()))
        .bind(to_json(&report))
        .execute(&mut **tx)
        .await?;
        entries.push(pipeline::completed_record(&report, &lease.actor));
        Ok(Decision::Commit(entries, Some(Some(report))))
    }
}

/// Puts a failed step back for a later attempt; the first failure is audited.
struct RetryTx<'a> {
    owner: &'a str,
    lease: &'a Lease,
    error: &'a str,
    class: ErrorClass,
    next: DateTime<Utc>,
}

#[async_trait]
impl Transaction for RetryTx<'_> {
    type Output = bool;

    /// Progress of an accepted action: it finishes even after the store file is lost.
    fn is_new_work(&self) -> bool {
        false
    }

    async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<Decision<bool>, sqlx::Error> {
        let lease = self.lease;
        let updated = sqlx::query(
            "UPDATE action_steps SET next_attempt_at = $4, last_error = $5, failure = $7, \
             lease_owner = NULL, lease_until = NULL \
             WHERE action_id = $1 AND target = $2 AND lease_owner = $3 AND state = 'pending' \
               AND attempts = $6",
        )
        .bind(lease.action_id.to_string())
        .bind(&lease.target)
        .bind(self.owner)
        .bind(at(self.next))
        .bind(self.error)
        .bind(lease.attempts)
        .bind(class_name(self.class))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(Decision::Rollback(false));
        }
        // One record when a target starts failing, not one per attempt: the attempts are
        // visible in GET /v1/actions/{id}, and the final outcome is audited either way.
        let entries = if lease.attempts == 1 {
            vec![Entry::new(
                Kind::TargetRetrying,
                &lease.actor,
                Some(lease.action_id),
                json!({
                    "target": lease.target,
                    "error": self.error,
                    "next_attempt_at": at(self.next),
                    "retry_until": at(lease.deadline),
                }),
            )]
        } else {
            Vec::new()
        };
        Ok(Decision::Commit(entries, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{Origin, Step};
    use crate::terminate::{Scope, TerminateOutcome};
    use secrecy::SecretString;

    async fn queue(owner: &str, lease: Duration) -> (tempfile::TempDir, Store, Audit, Arc<Queue>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("q.db").display());
        let store = Store::connect(&SecretString::from(url)).await.unwrap();
        let config = QueueConfig {
            lease,
            ..QueueConfig::default()
        };
        let queue = Arc::new(Queue::new(store.clone(), owner.into(), config));
        (dir, store.clone(), Audit::new(store), queue)
    }

    fn submission(targets: &[&str], claims: &[&str]) -> Submission {
        let plan = Plan {
            action_id: Uuid::now_v7(),
            origin: Origin::Revocation {
                login: "app".into(),
            },
            scope: Some(Scope::All),
            dry_run: false,
            reason: Some("test".into()),
            cutoff_defaulted: false,
            steps: targets
                .iter()
                .map(|t| Step {
                    target: (*t).into(),
                    logins: vec!["app".into()],
                    protected: Default::default(),
                })
                .collect(),
        };
        Submission {
            work: plan.scope.map(Work::Terminate),
            plan,
            actor: "tester".into(),
            claims: claims.iter().map(|c| (*c).to_string()).collect(),
            before: Vec::new(),
            retry_for: None,
        }
    }

    fn done(target: &str) -> TargetReport {
        TargetReport {
            target: target.into(),
            logins: vec!["app".into()],
            found: 0,
            error: None,
            outcome: TerminateOutcome::default(),
        }
    }

    async fn kinds(audit: &Audit) -> Vec<String> {
        audit
            .list(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.kind)
            .collect()
    }

    #[tokio::test]
    async fn submissions_arriving_together_share_commits_and_keep_their_own_outcomes() {
        let (_dir, _store, audit, q) = queue("one", Duration::from_secs(15)).await;
        let mut all: Vec<Submission> = (0..40)
            .map(|i| submission(&["a"], &[&format!("webhook:{i}")]))
            .collect();
        // Two deliveries of one event in the same group: the second is the first's duplicate.
        all.push(submission(&["a"], &["webhook:7"]));
        let outcomes =
            futures_util::future::join_all(all.iter().map(|s| q.submit(&audit, s))).await;
        for (s, outcome) in all.iter().zip(&outcomes).take(40) {
            assert_eq!(
                outcome.as_ref().unwrap(),
                &Submitted::Accepted(s.plan.action_id)
            );
        }
        assert_eq!(
            outcomes[40].as_ref().unwrap(),
            &Submitted::Duplicate {
                index: 0,
                action_id: all[7].plan.action_id.to_string()
            }
        );
        assert!(q.pending.lock().unwrap().is_empty(), "nothing left waiting");
        assert_eq!(q.claim(100, None).await.unwrap().len(), 40);
        // Each action's records are contiguous and the chain verifies.
        let records = audit.list(&Default::default()).await.unwrap();
        assert_eq!(records.len(), 40);
        assert!(records.iter().all(|r| r.kind == "action.planned"));
        let report = audit.verify().await.unwrap();
        assert!(report.ok && report.records == 40, "{:?}", report.problems);
    }

    #[tokio::test]
    async fn a_submitter_that_gives_up_while_waiting_takes_its_submission_back() {
        let (_dir, _store, audit, q) = queue("one", Duration::from_secs(15)).await;
        let s = submission(&["a"], &["webhook:1"]);
        // Another submitter's commit is under way: this one queues and waits its turn.
        let turn = q.committing.lock().await;
        let gave_up = tokio::time::timeout(Duration::from_millis(50), q.submit(&audit, &s)).await;
        assert!(gave_up.is_err(), "it was still waiting");
        assert!(q.pending.lock().unwrap().is_empty(), "taken back");
        drop(turn);
        // Nothing of it is stored, and the same delivery is new when it comes again.
        let again = submission(&["a"], &["webhook:1"]);
        q.submit(&audit, &again).await.unwrap();
        assert!(q.status(s.plan.action_id).await.unwrap().is_none());
        assert_eq!(
            q.status(again.plan.action_id)
                .await
                .unwrap()
                .unwrap()
                .status,
            "running"
        );
    }

    #[tokio::test]
    async fn an_earlier_attempt_of_this_process_can_no_longer_journal_or_record() {
        let (_dir, _store, audit, q) = queue("one", Duration::from_millis(50)).await;
        let s = submission(&["a"], &["webhook:1"]);
        q.submit(&audit, &s).await.unwrap();
        let first = q.claim(1, None).await.unwrap().pop().unwrap();
        // Its lease lapses (the store was down, say) and this same process claims it again.
        tokio::time::sleep(Duration::from_millis(80)).await;
        let second = q.claim(1, None).await.unwrap().pop().unwrap();
        assert_eq!((first.attempts, second.attempts), (1, 2));
        assert!(q.write_journal(&first, &[]).await.is_err(), "no signal");
        assert!(!q.finish(&audit, &first, &done("a")).await.unwrap());
        assert!(
            !q.retry(&audit, &first, done("a"), ErrorClass::Unreachable)
                .await
                .unwrap()
        );
        q.write_journal(&second, &[]).await.unwrap();
        assert!(q.finish(&audit, &second, &done("a")).await.unwrap());
    }

    #[tokio::test]
    async fn an_action_is_claimed_once_per_step_and_completes_after_its_last_step() {
        let (_dir, _store, audit, q) = queue("one", Duration::from_secs(15)).await;
        let s = submission(&["a", "b"], &["webhook:1"]);
        let id = s.plan.action_id;
        assert_eq!(q.submit(&audit, &s).await.unwrap(), Submitted::Accepted(id));
        // The same claim again is a duplicate, and stores nothing.
        let again = submission(&["a"], &["webhook:1"]);
        assert_eq!(
            q.submit(&audit, &again).await.unwrap(),
            Submitted::Duplicate {
                index: 0,
                action_id: id.to_string()
            }
        );
        assert!(q.status(again.plan.action_id).await.unwrap().is_none());

        let leases = q.claim(10, None).await.unwrap();
        assert_eq!(leases.len(), 2);
        assert!(
            q.claim(10, None).await.unwrap().is_empty(),
            "leased steps are not claimed twice"
        );
        assert!(
            q.finish(&audit, &leases[0], &done(&leases[0].target))
                .await
                .unwrap()
        );
        assert!(
            q.report(id).await.unwrap().is_none(),
            "one step is still pending"
        );
        assert!(
            q.finish(&audit, &leases[1], &done(&leases[1].target))
                .await
                .unwrap()
        );
        let report = q.report(id).await.unwrap().expect("finished");
        assert_eq!(report.status, Status::Completed);
        assert_eq!(
            report
                .targets
                .iter()
                .map(|t| t.target.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"],
            "the plan's order"
        );
        // Finishing again (a stale lease) changes nothing.
        assert!(!q.finish(&audit, &leases[1], &done("b")).await.unwrap());
        assert_eq!(kinds(&audit).await, ["action.planned", "action.completed"],);
        assert!(audit.verify().await.unwrap().ok);
        let status = q.status(id).await.unwrap().unwrap();
        assert_eq!(status.status, "completed");
        assert!(
            status
                .steps
                .iter()
                .all(|s| s.state == "done" && s.attempts == 1)
        );
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_the_old_holder_can_no_longer_record() {
        let (_dir, store, audit, first) = queue("first", Duration::from_secs(1)).await;
        let second = Arc::new(Queue::new(
            store,
            "second".into(),
            QueueConfig {
                lease: Duration::from_secs(1),
                ..QueueConfig::default()
            },
        ));
        let s = submission(&["a"], &[]);
        first.submit(&audit, &s).await.unwrap();
        let lost = first.claim(1, None).await.unwrap().pop().unwrap();
        assert!(second.claim(1, None).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let taken = second
            .claim(1, None)
            .await
            .unwrap()
            .pop()
            .expect("expired lease");
        assert_eq!(taken.attempts, 2);
        // The first holder may neither journal (so it signals nothing) nor record.
        let journal = first.journal(&lost);
        assert!(journal.record(&[session(7)]).await.is_err());
        assert!(!first.finish(&audit, &lost, &done("a")).await.unwrap());
        assert!(second.finish(&audit, &taken, &done("a")).await.unwrap());
        assert_eq!(
            second
                .report(s.plan.action_id)
                .await
                .unwrap()
                .unwrap()
                .status,
            Status::Completed
        );
    }

    fn session(pid: i64) -> Session {
        Session {
            pid,
            login: Some("app".into()),
            login_id: None,
            database: None,
            application_name: None,
            client_addr: None,
            backend_start: None,
            state: None,
        }
    }

    #[tokio::test]
    async fn a_failing_step_is_retried_then_given_up_at_the_deadline_and_audited_twice() {
        let (_dir, _store, audit, q) = queue("one", Duration::from_secs(15)).await;
        let q = Arc::new(Queue::new(
            q.store.clone(),
            "one".into(),
            QueueConfig {
                retry_for: Duration::from_millis(300),
                ..QueueConfig::default()
            },
        ));
        let s = submission(&["a"], &[]);
        q.submit(&audit, &s).await.unwrap();
        let mut failed = done("a");
        failed.error = Some("cannot connect: refused".into());
        let mut attempts = 0;
        loop {
            let Some(lease) = q.claim(1, None).await.unwrap().pop() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            attempts += 1;
            assert!(
                q.retry(&audit, &lease, failed.clone(), ErrorClass::Unreachable)
                    .await
                    .unwrap()
            );
            if q.report(s.plan.action_id).await.unwrap().is_some() {
                break;
            }
            assert!(attempts < 20, "never gave up");
        }
        assert!(attempts >= 2, "retried before giving up");
        let report = q.report(s.plan.action_id).await.unwrap().unwrap();
        assert_eq!(report.status, Status::Incomplete);
        assert!(
            report.targets[0]
                .error
                .as_deref()
                .unwrap()
                .contains("gave up after")
        );
        assert_eq!(
            kinds(&audit).await,
            [
                "action.planned",
                "target.retrying",
                "target.failed",
                "action.completed"
            ],
        );
    }

    #[tokio::test]
    async fn steps_queued_ahead_for_one_target_do_not_hide_another_targets_step() {
        let (_dir, _store, audit, q) = queue("one", Duration::from_secs(15)).await;
        for i in 0..300 {
            q.submit(&audit, &submission(&["stalled"], &[&format!("s:{i}")]))
                .await
                .unwrap();
        }
        let healthy = submission(&["healthy"], &["h"]);
        q.submit(&audit, &healthy).await.unwrap();
        let allow = |n: usize| vec![("stalled".to_string(), n), ("healthy".to_string(), n)];
        // One slot left: the healthy target's only step is as early in the turns as the
        // stalled target's first, though 300 were queued before it.
        let leases = q.claim_fair(2, &allow(4)).await.unwrap();
        let mut targets: Vec<&str> = leases.iter().map(|l| l.target.as_str()).collect();
        targets.sort();
        assert_eq!(targets, ["healthy", "stalled"]);
        // No more than a target's allowance, whatever the limit.
        let more = q.claim_fair(100, &allow(3)).await.unwrap();
        assert_eq!(more.len(), 3);
        assert!(more.iter().all(|l| l.target == "stalled"));
        // A target that is not allowed (parked) has nothing claimed.
        assert!(q.claim_fair(100, &[]).await.unwrap().is_empty());
        let only = vec![("healthy".to_string(), 5)];
        assert!(q.claim_fair(100, &only).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_deterministic_failure_is_given_up_after_three_attempts() {
        let (_dir, _store, audit, q) = queue("one", Duration::from_secs(15)).await;
        let s = submission(&["a"], &[]);
        q.submit(&audit, &s).await.unwrap();
        let mut failed = done("a");
        failed.error = Some("query refused: permission denied for view pg_roles".into());
        let mut attempts = 0;
        while q.report(s.plan.action_id).await.unwrap().is_none() {
            // Bringing the target back (a probe answered) does not hurry a refusal.
            q.target_back("a").await.unwrap();
            let Some(lease) = q.claim(1, None).await.unwrap().pop() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            attempts += 1;
            let waited = Utc::now();
            assert!(
                q.retry(&audit, &lease, failed.clone(), ErrorClass::Deterministic)
                    .await
                    .unwrap()
            );
            if attempts < 3 {
                let status = q.status(s.plan.action_id).await.unwrap().unwrap();
                let next = parse_time(status.steps[0].next_attempt_at.as_deref().unwrap()).unwrap();
                assert!(next > waited, "backoff between attempts");
                assert_eq!(status.steps[0].failure.as_deref(), Some("deterministic"));
                assert_eq!(q.target_back("a").await.unwrap(), 0, "not woken");
            }
        }
        assert_eq!(attempts, 3);
        let report = q.report(s.plan.action_id).await.unwrap().unwrap();
        assert_eq!(report.status, Status::Incomplete);
        assert!(
            report.targets[0]
                .error
                .as_deref()
                .unwrap()
                .contains("permission denied for view pg_roles")
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let max = Duration::from_secs(4);
        for attempts in 1..30 {
            let b = backoff(attempts, max);
            let full = Duration::from_millis(500)
                .saturating_mul(1 << (attempts.min(20) - 1))
                .min(max);
            assert!(
                b <= full && b >= full / 2,
                "attempt {attempts}: {b:?} vs {full:?}"
            );
        }
    }

    /// `Audit::transact` runs a transaction again when its commit reports an error, and the
    /// commit may have gone through all the same (the store's connection died before the
    /// answer, as when the store is restarted). The second run of a submission must then
    /// answer that it was accepted: claims taken by this very action are not a replay.
    #[tokio::test]
    async fn a_submission_run_again_after_it_committed_is_accepted_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("q.db").display());
        let store = Store::connect(&SecretString::from(url)).await.unwrap();
        let audit = Audit::new(store.clone());
        let queue = Queue::new(store, "test".into(), QueueConfig::default());
        let plan = Plan {
            action_id: Uuid::now_v7(),
            origin: Origin::Revocation {
                login: "app".into(),
            },
            scope: Some(Scope::All),
            dry_run: false,
            reason: None,
            cutoff_defaulted: false,
            steps: vec![Step {
                target: "main".into(),
                logins: vec!["app".into()],
                protected: Default::default(),
            }],
        };
        let submission = Submission {
            plan: plan.clone(),
            work: Some(Work::Terminate(Scope::All)),
            actor: "webhook".into(),
            claims: vec!["webhook:msg_1".into()],
            before: Vec::new(),
            retry_for: None,
        };
        let accepted = Submitted::Accepted(plan.action_id);
        assert_eq!(queue.submit(&audit, &submission).await.unwrap(), accepted);
        assert_eq!(queue.submit(&audit, &submission).await.unwrap(), accepted);
        let planned = audit
            .list(&crate::audit::ListFilter {
                kind: Some("action.planned".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(planned.len(), 1, "stored and audited once");

        // Another action claiming the same key is still a duplicate of the first.
        let mut other = submission.clone();
        other.plan.action_id = Uuid::now_v7();
        assert_eq!(
            queue.submit(&audit, &other).await.unwrap(),
            Submitted::Duplicate {
                index: 0,
                action_id: plan.action_id.to_string(),
            }
        );
    }
}
