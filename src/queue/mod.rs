//! The durable work queue every action runs from.
//!
//! An action is accepted only once its plan and one row per step (the action on one target)
//! are stored, in the same transaction as its idempotency claims and its first audit records.
//! Workers (the runner, above the queue) then claim due steps with expiring leases (`FOR
//! UPDATE SKIP LOCKED` on PostgreSQL, so several replicas share one queue), run them, and
//! record each step's outcome together with its audit records. A step whose target fails is
//! retried with backoff until the action's deadline; a process that dies holding a lease
//! loses it when it expires, and the sessions an interrupted attempt was about to signal are
//! in the step's journal, so they are still audited exactly once.
//!
//! The queue is storage: it knows an action only as its [`Plan`] (whose [`Plan::work`] says
//! what each step does) and its reports, from [`crate::action`], and never calls up into
//! what runs the steps. Its rooms: `submit` (storing actions, in group commits), `lease`
//! (claiming, renewing and releasing steps, their journals), `finish` (a step's outcome or
//! retry), `status` (what `GET /v1/actions/{id}` shows, waiting, pruning), [`fairness`]
//! (which targets may take more steps). Notices of what it records (an action started or
//! finished, a step given up, sessions left, locks and drains) are queued for the notifier in
//! the same transactions (`notices`). May call `action`, `notify`, `terminate`, `audit`,
//! `store` and `config`.

mod cancel;
pub mod fairness;
mod finish;
mod lease;
mod notices;
mod status;
mod submit;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{Mutex, Notify, broadcast, oneshot};
use uuid::Uuid;

use crate::action::{ActionReport, Plan, Status, Work};

use crate::audit::{AuditError, Entry};
use crate::config::QueueConfig;
use crate::notify::Notifier;
use crate::store::{Store, StoredRoles, timestamp};
use crate::terminate::Session;
pub use cancel::Cancelled;

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
    /// What to do; its [`Plan::work`] is what each step does (`None`: nothing to run).
    pub plan: Plan,
    /// Who asked (on every audit record).
    pub actor: String,
    /// Idempotency keys taken in the same transaction; the first already taken aborts it.
    pub claims: Vec<String>,
    /// Records written before `action.planned` (e.g. `event.accepted`).
    pub before: Vec<Entry>,
    /// How long failing targets are retried, if not `[queue] retry_for`, counted from when
    /// the steps are due.
    pub retry_for: Option<Duration>,
    /// When the steps are due, if not at once: a scheduled action (a lock's expiry).
    pub due: Option<DateTime<Utc>>,
    /// The steps are retried until they succeed, whatever the error: restoring what a lock
    /// changed is never given up, or the lock would silently become permanent.
    pub never_give_up: bool,
}

impl Submission {
    /// A plan to store as it is: no idempotency keys, no records before `action.planned`,
    /// the configured retry window (operator revocations, the CLI, sweeps).
    pub fn new(plan: Plan, actor: String) -> Self {
        Self {
            plan,
            actor,
            claims: Vec::new(),
            before: Vec::new(),
            retry_for: None,
            due: None,
            never_give_up: false,
        }
    }

    /// When its steps give up: `retry_for` (or the queue's) after they are due, or never.
    pub fn deadline(&self, retry_for: Duration) -> DateTime<Utc> {
        if self.never_give_up {
            return never();
        }
        let from = self.due.unwrap_or_else(Utc::now);
        from + chrono::Duration::from_std(self.retry_for.unwrap_or(retry_for))
            .unwrap_or(chrono::Duration::MAX / 2)
    }

    /// Whether its steps are due at `moment` (not a scheduled action's, later).
    fn due_at(&self, moment: DateTime<Utc>) -> bool {
        self.due.is_none_or(|due| due <= moment)
    }
}

/// The deadline of a step that never gives up; far enough that no clock reaches it, and
/// still a time every store can hold.
pub fn never() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("9999-12-31T00:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
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
    /// What the store keeps about the target's roles, read beside the commit that accepted
    /// the step here ([`Queue::read_roles_ahead`]); `None` for a claimed step.
    pub roles: Option<Arc<StoredRoles>>,
}

/// The parts of a [`Lease`] that come from its action's row; never changed once stored.
#[derive(Debug)]
struct LeasedAction {
    plan: Plan,
    work: Work,
    actor: String,
    deadline: DateTime<Utc>,
}

/// One step's state, as `GET /v1/actions/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActionStatus {
    /// The action.
    pub action_id: String,
    /// `running`, `completed` or `incomplete`.
    pub status: String,
    /// Running and waiting for its time (as `GET /v1/actions?status=scheduled` lists it):
    /// it has not acted yet, so it can still be cancelled.
    pub scheduled: bool,
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

/// How deep the queue is, as [`Queue::depth`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    /// Pending steps that are due: waiting for a worker, or running.
    pub due: u64,
    /// Pending steps due later (a retry's backoff, a lock's or drain's expiry).
    pub scheduled: u64,
    /// When the oldest due step became due.
    pub oldest_due: Option<DateTime<Utc>>,
}

/// Which actions [`Queue::list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ActionFilter {
    /// Only this origin (`event`, `revocation`, `lock`, …).
    pub origin: Option<String>,
    /// Only this actor (`webhook`, `operator:alice`, …).
    pub actor: Option<String>,
    /// Only this status (`running`, `completed`, `incomplete`).
    pub status: Option<String>,
    /// Only actions accepted at or after this moment.
    pub since: Option<DateTime<Utc>>,
    /// Only actions accepted before this one (the previous page's last id).
    pub before: Option<Uuid>,
    /// At most this many.
    pub limit: usize,
}

/// One action in a list: what it is and how it stands, without its steps or report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActionSummary {
    /// The action.
    pub action_id: String,
    /// What asked for it (`null` for actions accepted before origins were recorded).
    pub origin: Option<String>,
    /// Who asked.
    pub actor: String,
    /// `running`, `completed` or `incomplete`.
    pub status: String,
    /// When it was accepted.
    pub created_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
}

/// The queue, shared by the server's workers, its handlers and the CLI.
#[derive(Debug)]
pub struct Queue {
    store: Store,
    owner: String,
    config: QueueConfig,
    /// Wakes the local worker: new work, a freed slot, a target back.
    wake: Notify,
    /// Wakes the local worker for steps accepted here and handed to it: they need no claim.
    adopted_wake: Notify,
    /// Announces actions this process finished, with their reports, to local waiters.
    finished: broadcast::Sender<(Uuid, Arc<ActionReport>)>,
    /// The last actions this process finished, for a waiter that subscribes after the
    /// announcement.
    recent: std::sync::Mutex<std::collections::VecDeque<(Uuid, Arc<ActionReport>)>>,
    /// Submissions waiting for the next group commit.
    pending: std::sync::Mutex<Vec<Pending>>,
    /// Held by the submitter that commits the waiting group.
    committing: Mutex<()>,
    /// Plans of unfinished actions, so a claim need not read them back from the store.
    plans: std::sync::Mutex<Plans>,
    /// Where notices of what the queue records go; none in tests that need none.
    notifier: Option<Arc<Notifier>>,
    /// Whether this process's worker runs, so accepted steps that are due are stored
    /// leased to this process and handed to it ([`Queue::take_adopted`]) without a claim.
    adopting: std::sync::atomic::AtomicBool,
    /// Steps accepted here and leased to this process, for the worker to start.
    adopted: std::sync::Mutex<Vec<Lease>>,
    /// Targets whose adopted steps get their stored roles read beside their acceptance.
    roles_ahead: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// How many finished reports a waiter that subscribed late can still find in memory: more
/// than finish between a submission's acceptance and its waiter's subscription.
const RECENT_KEPT: usize = 256;

/// How many actions' plans [`Plans`] keeps: far more than run at once; past it the oldest
/// are read from the store again when claimed.
const PLANS_KEPT: usize = 1024;

/// Immutable action rows by action id, bounded, oldest dropped first.
#[derive(Debug, Default)]
struct Plans {
    by_id: std::collections::HashMap<String, Arc<LeasedAction>>,
    order: std::collections::VecDeque<String>,
}

impl Plans {
    fn get(&self, action_id: &str) -> Option<Arc<LeasedAction>> {
        self.by_id.get(action_id).cloned()
    }

    fn insert(&mut self, action_id: String, action: Arc<LeasedAction>) {
        if self.by_id.insert(action_id.clone(), action).is_none() {
            self.order.push_back(action_id);
        }
        while self.order.len() > PLANS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }

    fn remove(&mut self, action_id: &str) {
        if self.by_id.remove(action_id).is_some() {
            self.order.retain(|id| id != action_id);
        }
    }
}

/// A submission waiting for a group commit, with where its outcome goes.
#[derive(Debug)]
struct Pending {
    submission: Submission,
    deadline: DateTime<Utc>,
    /// What became of it, and whether it was stored with its due steps leased to this
    /// process's worker ([`Queue::take_adopted`]): then no claim can find them.
    reply: oneshot::Sender<Result<(Submitted, bool), QueueError>>,
}

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
            adopted_wake: Notify::new(),
            finished,
            recent: std::sync::Mutex::default(),
            pending: std::sync::Mutex::new(Vec::new()),
            committing: Mutex::new(()),
            plans: std::sync::Mutex::default(),
            notifier: None,
            adopting: std::sync::atomic::AtomicBool::new(false),
            adopted: std::sync::Mutex::default(),
            roles_ahead: std::sync::Mutex::default(),
        }
    }

    /// The same queue, queueing notices of what it records for `notifier`.
    pub fn with_notifier(mut self, notifier: Arc<Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
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

    /// Wakes the local worker.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The action row of `action_id`, if this process keeps it.
    fn kept_plan(&self, action_id: &str) -> Option<Arc<LeasedAction>> {
        self.plans.lock().ok()?.get(action_id)
    }

    /// Keeps `action`'s row in memory for its claims.
    fn keep_plan(&self, action_id: String, action: Arc<LeasedAction>) {
        if let Ok(mut plans) = self.plans.lock() {
            plans.insert(action_id, action);
        }
    }

    /// Tells local waiters that `action_id` finished with `report`.
    fn announce(&self, action_id: Uuid, report: ActionReport) {
        let report = Arc::new(report);
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() >= RECENT_KEPT {
                recent.pop_front();
            }
            recent.push_back((action_id, report.clone()));
        }
        let _ = self.finished.send((action_id, report));
    }

    /// The report of `action_id` if this process finished it lately.
    fn recently_finished(&self, action_id: Uuid) -> Option<ActionReport> {
        let recent = self.recent.lock().ok()?;
        let (_, report) = recent.iter().rev().find(|(id, _)| *id == action_id)?;
        Some(report.as_ref().clone())
    }

    /// Forgets a finished action's row.
    fn forget_plan(&self, action_id: &str) {
        if let Ok(mut plans) = self.plans.lock() {
            plans.remove(action_id);
        }
    }

    /// Waits until the local worker is woken.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Waits until steps are accepted here and handed to the local worker
    /// ([`Self::take_adopted`]); nothing else became due with them, so this asks for no
    /// claim.
    pub async fn adopted_woken(&self) {
        self.adopted_wake.notified().await;
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Completed => "completed",
        Status::Incomplete => "incomplete",
        Status::Cancelled => "cancelled",
        Status::Expired => "expired",
    }
}

#[cfg(test)]
mod tests;
