//! Storing actions: each submission with its claims and first records, all or nothing,
//! many submissions to one commit (group commit).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Row;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Pending, Queue, QueueError, Submission, Submitted, at, notices, status_name, to_json};
use crate::action;
use crate::audit::{Audit, Decision, Entry, Kind, Prepared, Transaction};
use crate::store::{
    Backend, StoredRoles, keep_padded_prepared, keep_prepared, padded, rows_per_statement,
    values_list,
};

/// The most submissions one commit carries; bounds how long one transaction holds the lock.
const GROUP_MAX: usize = 256;

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

impl Queue {
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
        let deadline = submission.deadline(self.config.retry_for);
        let mut answer = self.enqueue(submission, deadline);
        // A submitter that gives up (its request timed out, its client left) while its
        // submission still waits takes it back, so a `503` never hides an acceptance.
        let withdraw = Withdraw {
            queue: self,
            action_id: submission.plan.action_id,
        };
        let turn = self.committing.lock().await;
        let (submitted, adopted) = loop {
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
            match submission.plan.work() {
                // Finished as stored: the report is the one the transaction wrote.
                None => self.announce(action_id, action::report(&submission.plan, Vec::new())),
                Some(work) => {
                    // What its claims would read back from the store (a rerun that found
                    // it stored has the same plan: it is this submission).
                    let action = super::LeasedAction {
                        plan: submission.plan.clone(),
                        work,
                        actor: submission.actor.clone(),
                        // As stored: to the microsecond.
                        deadline: super::parse_time(&at(deadline)).unwrap_or(deadline),
                    };
                    self.keep_plan(action_id.to_string(), Arc::new(action));
                    if adopted {
                        // Handed to the worker as stored: a claim would find nothing of it.
                        self.adopted_wake.notify_one();
                    } else {
                        self.wake.notify_one();
                    }
                }
            }
        }
        Ok(submitted)
    }

    fn enqueue(
        &self,
        submission: &Submission,
        deadline: DateTime<Utc>,
    ) -> oneshot::Receiver<Result<(Submitted, bool), QueueError>> {
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
        let adopt = self.adopting();
        let leased_until = at(super::later(self.config.lease));
        // One moment decides which steps are due, for the rows and the leases alike.
        let decided = Utc::now();
        // Only across a network: on SQLite a read costs no round trip, and on its one
        // connection it would only queue behind the commit.
        let ahead = if adopt && self.store.backend() == Backend::Postgres {
            self.roles_ahead_of(
                group
                    .iter()
                    .filter(|p| p.submission.due_at(decided) && p.submission.plan.work().is_some())
                    .flat_map(|p| p.submission.plan.steps.iter().map(|s| s.target.clone())),
            )
        } else {
            Vec::new()
        };
        let tx = SubmitTx {
            group: &group,
            backend: self.store.backend(),
            notifier: self.notifier.as_deref(),
            lease: adopt.then_some((self.owner.as_str(), leased_until.as_str())),
            decided,
        };
        let commit = audit.transact(&tx);
        // Beside the commit, on another connection; unread (the step's engine reads it
        // then) if it fails.
        let read_ahead = async {
            if ahead.is_empty() {
                return Default::default();
            }
            self.store.stored_roles(&ahead).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "cannot read the targets' roles ahead");
                Default::default()
            })
        };
        let (committed, mut roles) = tokio::join!(commit, read_ahead);
        match committed {
            Ok(outputs) => {
                if let Some(notifier) = &self.notifier {
                    notifier.wake();
                }
                if adopt {
                    let roles: std::collections::HashMap<String, Arc<StoredRoles>> = roles
                        .drain()
                        .map(|(target, r)| (target, Arc::new(r)))
                        .collect();
                    self.adopt(
                        group
                            .iter()
                            .zip(&outputs)
                            .filter(|(_, output)| matches!(output, Submitted::Accepted(_)))
                            .flat_map(|(pending, _)| {
                                super::lease::adopted(pending, &roles, decided)
                            }),
                    );
                }
                for (pending, output) in group.into_iter().zip(outputs) {
                    let _ = pending.reply.send(Ok((output, adopt)));
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
}

/// Stores a group of submissions in one transaction, with a few multi-row statements
/// whatever the group's size. Members are decided in order, each all-or-nothing: one whose
/// claim is taken (in the store, or by an earlier member) stores nothing.
struct SubmitTx<'a> {
    group: &'a [Pending],
    backend: Backend,
    notifier: Option<&'a crate::notify::Notifier>,
    /// The owner and lease end the due steps are stored leased with, if any
    /// ([`Queue::adopt_accepted`]).
    lease: Option<(&'a str, &'a str)>,
    /// When the steps that are due were decided (so the leases handed over match the rows).
    decided: DateTime<Utc>,
}

#[async_trait]
impl Transaction for SubmitTx<'_> {
    type Output = Vec<Submitted>;

    fn prepared(&self) -> Option<Prepared<Vec<Submitted>>> {
        self.prepared_rows()
    }

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

        let Rows {
            now,
            claims,
            actions,
            steps,
            entries,
        } = rows(&accepted, self.lease, self.decided);
        // A plain INSERT: a claim taken meanwhile by a process outside this lock fails the
        // transaction, and its rerun finds the claim and answers duplicate.
        for chunk in claims.chunks(rows_per_statement(3)) {
            let sql = format!(
                "INSERT INTO webhook_deliveries (webhook_id, received_at, action_id) VALUES {}",
                values_list(self.backend, chunk.len(), 3)
            );
            let mut insert =
                sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(keep_prepared(chunk.len()));
            for row in chunk {
                insert = row.iter().fold(insert, |q, v| q.bind(v));
            }
            insert.execute(&mut **tx).await?;
        }
        for chunk in actions.chunks(rows_per_statement(10)) {
            let sql = format!(
                "INSERT INTO actions (action_id, created_at, actor, plan, work, deadline, status, \
                 finished_at, report, origin) VALUES {}",
                values_list(self.backend, chunk.len(), 10)
            );
            let mut insert =
                sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(keep_prepared(chunk.len()));
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
                    .bind(&a.report)
                    .bind(a.origin);
            }
            insert.execute(&mut **tx).await?;
        }
        for chunk in steps.chunks(rows_per_statement(8)) {
            let sql = format!(
                "INSERT INTO action_steps (action_id, target, position, next_attempt_at, \
                 state, attempts, lease_owner, lease_until) VALUES {}",
                values_list(self.backend, chunk.len(), 8)
            );
            let mut insert =
                sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(keep_prepared(chunk.len()));
            for step in chunk {
                let (owner, until) = step.lease.unzip();
                insert = insert
                    .bind(&step.action_id)
                    .bind(&step.target)
                    .bind(i64::try_from(step.position).unwrap_or(i64::MAX))
                    .bind(&step.due)
                    .bind("pending")
                    .bind(i64::from(step.lease.is_some()))
                    .bind(owner)
                    .bind(until);
            }
            insert.execute(&mut **tx).await?;
        }
        let started: Vec<_> = accepted
            .iter()
            .filter_map(|(pending, _)| notices::started(&pending.submission.plan))
            .collect();
        notices::queue(self.notifier, tx, started).await?;
        Ok(Decision::Commit(entries, outputs))
    }
}

/// One `action_steps` row to insert.
struct StepRow<'a> {
    action_id: String,
    target: String,
    position: usize,
    due: String,
    /// Stored leased to this process (owner, lease end): its first attempt, adopted.
    lease: Option<(&'a str, &'a str)>,
}

/// What a group's accepted members write.
struct Rows<'a> {
    /// When they were stored.
    now: String,
    /// `webhook_deliveries`: key, received at, action id.
    claims: Vec<[String; 3]>,
    actions: Vec<ActionRow>,
    steps: Vec<StepRow<'a>>,
    /// Their records, in order.
    entries: Vec<Entry>,
}

/// The rows of `accepted` (each a member and its action id); the steps due at `decided`
/// leased with `lease`, if given.
fn rows<'a>(
    accepted: &[(&Pending, &String)],
    lease: Option<(&'a str, &'a str)>,
    decided: DateTime<Utc>,
) -> Rows<'a> {
    let now = at(Utc::now());
    let mut claims = Vec::new();
    let mut actions = Vec::new();
    let mut steps = Vec::new();
    let mut entries = Vec::new();
    for (pending, id) in accepted {
        let s = &pending.submission;
        let plan = &s.plan;
        let mut own: Vec<&String> = s.claims.iter().collect();
        own.sort();
        own.dedup();
        claims.extend(
            own.into_iter()
                .map(|key| [key.clone(), now.clone(), (*id).clone()]),
        );
        let work = plan.work();
        let finished = work.is_none().then(|| action::report(plan, Vec::new()));
        actions.push(ActionRow {
            id: (*id).clone(),
            actor: s.actor.clone(),
            origin: plan.origin.name(),
            plan: to_json(plan),
            work: to_json(&work),
            deadline: at(pending.deadline),
            status: match &finished {
                Some(report) => status_name(report.status),
                None => "running",
            },
            finished_at: finished.as_ref().map(|_| now.clone()),
            report: finished.as_ref().map(to_json),
        });
        if work.is_some() {
            let due = s.due.map_or_else(|| now.clone(), at);
            let lease = lease.filter(|_| s.due_at(decided));
            for (position, step) in plan.steps.iter().enumerate() {
                steps.push(StepRow {
                    action_id: (*id).clone(),
                    target: step.target.clone(),
                    position,
                    due: due.clone(),
                    lease,
                });
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
            entries.push(action::completed_record(report, &s.actor));
        }
    }
    Rows {
        now,
        claims,
        actions,
        steps,
        entries,
    }
}

impl SubmitTx<'_> {
    /// The rows of the whole group, assuming every member is new: none stored already, no
    /// claim taken (the store function checks both). `None` when members share a key,
    /// or when notices would be queued (their outbox rows are written by `run` alone).
    fn prepared_rows(&self) -> Option<Prepared<Vec<Submitted>>> {
        if self.group.is_empty() {
            return None;
        }
        let mut owners: std::collections::HashMap<&str, usize> = Default::default();
        for (member, pending) in self.group.iter().enumerate() {
            for key in &pending.submission.claims {
                if *owners.entry(key.as_str()).or_insert(member) != member {
                    return None;
                }
            }
        }
        let started: Vec<_> = self
            .group
            .iter()
            .filter_map(|p| notices::started(&p.submission.plan))
            .collect();
        if notices::any_wanted(self.notifier, &started) {
            return None;
        }
        let ids: Vec<String> = self
            .group
            .iter()
            .map(|p| p.submission.plan.action_id.to_string())
            .collect();
        let accepted: Vec<(&Pending, &String)> = self.group.iter().zip(&ids).collect();
        let rows = rows(&accepted, self.lease, self.decided);
        let mut doc = serde_json::Map::new();
        doc.insert(
            "claims".into(),
            rows.claims
                .iter()
                .map(|[key, received, id]| {
                    json!({"webhook_id": key, "received_at": received, "action_id": id})
                })
                .collect(),
        );
        doc.insert(
            "actions".into(),
            rows.actions
                .iter()
                .map(|a| {
                    json!({
                        "action_id": a.id, "created_at": rows.now, "actor": a.actor,
                        "plan": a.plan, "work": a.work, "deadline": a.deadline,
                        "status": a.status, "finished_at": a.finished_at, "report": a.report,
                        "origin": a.origin,
                    })
                })
                .collect(),
        );
        doc.insert(
            "steps".into(),
            rows.steps
                .iter()
                .map(|step| {
                    let (owner, until) = step.lease.unzip();
                    json!({"action_id": step.action_id, "target": step.target,
                           "position": step.position, "next_attempt_at": step.due,
                           "attempts": i64::from(step.lease.is_some()),
                           "lease_owner": owner, "lease_until": until})
                })
                .collect(),
        );
        Some(Prepared {
            rows: doc,
            entries: rows.entries,
            output: self
                .group
                .iter()
                .map(|p| Submitted::Accepted(p.submission.plan.action_id))
                .collect(),
        })
    }
}

/// One `actions` row to insert.
struct ActionRow {
    id: String,
    actor: String,
    origin: &'static str,
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
        // Padded by repeating the last value, so the text stays one of a few and prepared.
        let shape = padded(chunk.len()).min(rows_per_statement(1));
        let sql = format!("{select} {}", values_list(backend, 1, shape));
        let mut query =
            sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(keep_padded_prepared(shape));
        for v in chunk {
            query = query.bind(v);
        }
        for _ in chunk.len()..shape {
            query = query.bind(&chunk[chunk.len() - 1]);
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
