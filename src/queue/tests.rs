use super::finish::backoff;
use super::*;
use crate::action::{Origin, Step, TargetReport};
use crate::audit::Audit;
use crate::store::Store;
use crate::terminate::classify::ErrorClass;
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

/// As [`queue`], on a throwaway PostgreSQL (kept alive by the first value).
async fn pg_queue(owner: &str) -> (sever_testkit::pg::TestPostgres, Store, Audit, Arc<Queue>) {
    let pg = sever_testkit::pg::TestPostgres::start();
    let store = Store::connect(&SecretString::from(pg.superuser_url("postgres")))
        .await
        .unwrap();
    let queue = Arc::new(Queue::new(
        store.clone(),
        owner.into(),
        QueueConfig::default(),
    ));
    (pg, store.clone(), Audit::new(store), queue)
}

fn submission(targets: &[&str], claims: &[&str]) -> Submission {
    let plan = Plan {
        action_id: Uuid::now_v7(),
        origin: Origin::Revocation {
            login: Some("app".into()),
        },
        scope: Some(Scope::All),
        dry_run: false,
        reason: Some("test".into()),
        cutoff_defaulted: false,
        ending: Default::default(),
        selection: None,
        schedule: None,
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
        plan,
        actor: "tester".into(),
        claims: claims.iter().map(|c| (*c).to_string()).collect(),
        before: Vec::new(),
        retry_for: None,
        due: None,
        never_give_up: false,
    }
}

fn done(target: &str) -> TargetReport {
    TargetReport {
        target: target.into(),
        logins: vec!["app".into()],
        found: 0,
        error: None,
        outcome: TerminateOutcome::default(),
        decisions: Vec::new(),
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
    let outcomes = futures_util::future::join_all(all.iter().map(|s| q.submit(&audit, s))).await;
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
    claimed_once_per_step_and_completed_after_the_last(audit, q).await;
}

/// As above on a PostgreSQL store, where the duplicate and the two finishes go through the
/// one-statement commit first: it refuses the duplicate (`taken`) and the last step
/// (`others`), and commits the first step's finish itself.
#[tokio::test]
async fn on_postgres_an_action_is_claimed_once_per_step_and_completes_after_its_last_step() {
    let (_pg, _store, audit, q) = pg_queue("one").await;
    claimed_once_per_step_and_completed_after_the_last(audit, q).await;
}

async fn claimed_once_per_step_and_completed_after_the_last(audit: Audit, q: Arc<Queue>) {
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
            login: Some("app".into()),
        },
        scope: Some(Scope::All),
        dry_run: false,
        reason: None,
        cutoff_defaulted: false,
        ending: Default::default(),
        selection: None,
        schedule: None,
        steps: vec![Step {
            target: "main".into(),
            logins: vec!["app".into()],
            protected: Default::default(),
        }],
    };
    let submission = Submission {
        plan: plan.clone(),
        actor: "webhook".into(),
        claims: vec!["webhook:msg_1".into()],
        before: Vec::new(),
        retry_for: None,
        due: None,
        never_give_up: false,
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

mod fast_commit;
mod round_trips;

#[tokio::test]
async fn a_waiter_gets_the_report_of_a_finish_here_before_or_after_it_subscribed_and_elsewhere() {
    let (_dir, store, audit, here) = queue("here", Duration::from_secs(15)).await;
    let elsewhere = Queue::new(store, "elsewhere".into(), QueueConfig::default());
    let budget = Duration::from_secs(30);
    // Finished here before anyone waited: announced already, found in memory.
    let s = submission(&["a"], &[]);
    here.submit(&audit, &s).await.unwrap();
    let lease = here.claim(1, None).await.unwrap().pop().unwrap();
    here.finish(&audit, &lease, &done("a")).await.unwrap();
    let report = here.wait(s.plan.action_id, budget).await.unwrap();
    assert_eq!(report.unwrap().status, Status::Completed);
    // Finished here while waiting: the announcement carries the report.
    let s = submission(&["a"], &[]);
    here.submit(&audit, &s).await.unwrap();
    let (report, ()) = tokio::join!(here.wait(s.plan.action_id, budget), async {
        let lease = here.claim(1, None).await.unwrap().pop().unwrap();
        here.finish(&audit, &lease, &done("a")).await.unwrap();
    });
    assert_eq!(report.unwrap().unwrap().action_id, s.plan.action_id);
    // Finished by another replica: seen by polling the store.
    let s = submission(&["a"], &[]);
    here.submit(&audit, &s).await.unwrap();
    let (report, ()) = tokio::join!(here.wait(s.plan.action_id, budget), async {
        let lease = elsewhere.claim(1, None).await.unwrap().pop().unwrap();
        elsewhere.finish(&audit, &lease, &done("a")).await.unwrap();
    });
    assert_eq!(report.unwrap().unwrap().action_id, s.plan.action_id);
}

/// The depth the metrics collector reads: due steps (waiting or leased), scheduled ones, and
/// the oldest due one's due time; on both store backends (the SQL is shared).
async fn depth_counts_due_and_scheduled_steps(store: Store) {
    let audit = Audit::new(store.clone());
    let q = Queue::new(store, "depth".into(), QueueConfig::default());
    let empty = q.depth().await.unwrap();
    assert_eq!((empty.due, empty.scheduled, empty.oldest_due), (0, 0, None));
    let before = Utc::now();
    q.submit(&audit, &submission(&["a", "b"], &[]))
        .await
        .unwrap();
    let later = Submission {
        due: Some(Utc::now() + chrono::Duration::hours(1)),
        ..submission(&["a"], &[])
    };
    q.submit(&audit, &later).await.unwrap();
    let depth = q.depth().await.unwrap();
    assert_eq!((depth.due, depth.scheduled), (2, 1));
    let oldest = depth.oldest_due.unwrap();
    assert!(oldest >= before - chrono::Duration::seconds(1) && oldest <= Utc::now());
    // A leased step is still due work; a finished one is no longer counted.
    let lease = q.claim(1, None).await.unwrap().pop().unwrap();
    assert_eq!(q.depth().await.unwrap().due, 2);
    assert!(
        q.finish(&audit, &lease, &done(&lease.target))
            .await
            .unwrap()
    );
    assert_eq!(q.depth().await.unwrap().due, 1);
}

#[tokio::test]
async fn queue_depth_on_sqlite() {
    let (_dir, store, _, _) = queue("depth", Duration::from_secs(30)).await;
    depth_counts_due_and_scheduled_steps(store).await;
}

#[tokio::test]
async fn queue_depth_on_postgres() {
    let pg = sever_testkit::pg::TestPostgres::start();
    let url = pg.superuser_url("postgres");
    let store = Store::connect(&SecretString::from(url)).await.unwrap();
    depth_counts_due_and_scheduled_steps(store).await;
}
