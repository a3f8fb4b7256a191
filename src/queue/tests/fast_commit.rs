//! The one-statement commit of a PostgreSQL store (`sever_commit`, migration 0014) against
//! the transactions it stands in for: the same rows and one unbroken chain when it applies,
//! nothing written when one of its assumptions fails, and the transaction's answer then.

use super::*;
use crate::audit::{Entry, Kind};

async fn count(store: &Store, table: &str) -> i64 {
    let sql = match table {
        "audit_records" => "SELECT COUNT(*) FROM audit_records",
        "actions" => "SELECT COUNT(*) FROM actions",
        _ => unreachable!("a table this test reads"),
    };
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Appends one record by `actor`, as another writer would.
async fn append_one(audit: &Audit, actor: &str) {
    let entry = Entry::new(Kind::EventAccepted, actor, None, serde_json::json!({}));
    audit.append(entry).await.unwrap();
}

/// What the function answers for `doc`.
async fn call(store: &Store, doc: serde_json::Value) -> String {
    sqlx::query_scalar("SELECT sever_commit($1)")
        .bind(doc.to_string())
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_one_statement_commit_writes_what_the_transaction_would_and_refuses_what_it_must() {
    let (_pg, store, audit, q) = super::pg_queue("one").await;

    // No head known yet: the transaction, which leaves the head known.
    let first = submission(&["pg"], &["webhook:first"]);
    let first_id = first.plan.action_id;
    assert_eq!(
        q.submit(&audit, &first).await.unwrap(),
        Submitted::Accepted(first_id)
    );

    // Control, bidi, escaped-NUL, quote and 4-byte characters in what the JSON parameter
    // carries: stored exactly, or the chain's hashes would not verify below.
    let mut odd = submission(&["pg"], &["webhook:\u{1F600}\u{7}\u{202e}'\""]);
    odd.plan.reason = Some("r\u{0}\u{7}\u{202e}\u{1F600}\"'\\ $1; --".into());
    odd.actor = "operator:\u{1F600}\u{1b}[31m".into();
    let odd_id = odd.plan.action_id;
    assert_eq!(
        q.submit(&audit, &odd).await.unwrap(),
        Submitted::Accepted(odd_id)
    );

    // The same claim again: refused (`taken`); the transaction answers duplicate.
    let again = submission(&["pg"], &["webhook:\u{1F600}\u{7}\u{202e}'\""]);
    assert_eq!(
        q.submit(&audit, &again).await.unwrap(),
        Submitted::Duplicate {
            index: 0,
            action_id: odd_id.to_string()
        }
    );
    assert!(q.status(again.plan.action_id).await.unwrap().is_none());

    // Another writer (the CLI, a second replica) appends: the head this process knows is
    // not the head any more (`head`), and the transaction chains after the other's record.
    append_one(&Audit::new(store.clone()), "elsewhere").await;
    let third = submission(&["pg"], &["webhook:third"]);
    assert_eq!(
        q.submit(&audit, &third).await.unwrap(),
        Submitted::Accepted(third.plan.action_id)
    );

    // Another process claims the steps, so their plans are read back from the store.
    let worker = Queue::new(store.clone(), "worker".into(), QueueConfig::default());
    let leases = worker.claim(10, None).await.unwrap();
    assert_eq!(leases.len(), 3);
    let odd_lease = leases.iter().find(|l| l.action_id == odd_id).unwrap();
    assert_eq!(
        serde_json::to_value(&odd_lease.plan).unwrap(),
        serde_json::to_value(&odd.plan).unwrap(),
        "the plan as submitted"
    );
    assert_eq!(odd_lease.actor, odd.actor);

    // A lease that is not the holder's any more (`lost`) writes nothing.
    let records = count(&store, "audit_records").await;
    let mut stale = leases[0].clone();
    stale.attempts += 1;
    assert!(!worker.finish(&audit, &stale, &done("pg")).await.unwrap());
    assert_eq!(count(&store, "audit_records").await, records);
    assert_eq!(
        worker
            .status(stale.action_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "running"
    );

    // Each one-step action is finished and completed by its step's finish.
    for lease in &leases {
        let mut report = done("pg");
        report.outcome.matched = vec![session(7)];
        report.outcome.terminated = vec![session(7)];
        report.found = 1;
        assert!(worker.finish(&audit, lease, &report).await.unwrap());
        let stored = worker.report(lease.action_id).await.unwrap().expect("done");
        assert_eq!(stored.status, Status::Completed);
        // As the transaction reads it back: the step's report, with the report's
        // decisions.
        let mut expected = serde_json::to_value(&report).unwrap();
        expected["decisions"] = serde_json::json!([
            {"decision": "terminated", "login": "app", "pid": 7}
        ]);
        assert_eq!(
            serde_json::to_value(&stored.targets).unwrap(),
            serde_json::json!([expected])
        );
        let status = worker.status(lease.action_id).await.unwrap().unwrap();
        assert_eq!(status.status, "completed");
        assert!(status.steps.iter().all(|s| s.state == "done"));
    }
    let verified = audit.verify().await.unwrap();
    assert!(verified.ok, "{verified:?}");
    let kinds = kinds(&audit).await;
    for (kind, n) in [("action.planned", 3), ("action.completed", 3)] {
        assert_eq!(kinds.iter().filter(|k| *k == kind).count(), n, "{kinds:?}");
    }
    let odd_records = audit
        .list(&crate::audit::ListFilter {
            action_id: Some(odd_id.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(odd_records.iter().all(|r| r.actor == odd.actor));
}

#[tokio::test]
async fn the_store_function_writes_nothing_when_an_assumption_fails() {
    let (_pg, store, audit, _) = super::pg_queue("one").await;
    append_one(&audit, "t").await;
    let head = audit
        .list(&Default::default())
        .await
        .unwrap()
        .pop()
        .unwrap();
    let action = |id: &str| {
        serde_json::json!({
            "action_id": id, "created_at": "2026-01-01T00:00:00.000000Z", "actor": "t",
            "plan": "{}", "work": "null", "deadline": "2026-01-01T00:00:00.000000Z",
            "status": "running", "finished_at": null, "report": null, "origin": "revocation",
        })
    };
    let record = serde_json::json!({
        "seq": head.seq + 1, "id": "r", "at": "2026-01-01T00:00:00.000000Z",
        "kind": "event.accepted", "actor": "t", "action_id": null, "detail": "{}",
        "prev_hash": head.hash, "hash": "h",
    });
    let doc = |head_seq: i64, action_id: &str, claim: &str| {
        serde_json::json!({
            "head_seq": head_seq, "head_hash": head.hash,
            "actions": [action(action_id)],
            "claims": [{"webhook_id": claim, "received_at": "2026-01-01T00:00:00.000000Z",
                        "action_id": action_id}],
            "steps": [{"action_id": action_id, "target": "pg", "position": 0,
                       "next_attempt_at": "2026-01-01T00:00:00.000000Z"}],
            "records": [record],
        })
    };
    assert_eq!(call(&store, doc(head.seq - 1, "a", "k")).await, "head");
    assert_eq!(count(&store, "actions").await, 0);
    assert_eq!(count(&store, "audit_records").await, 1);
    // Taken by an earlier action, and (below) by an earlier claim.
    assert_eq!(call(&store, doc(head.seq, "a", "k")).await, "ok");
    assert_eq!(count(&store, "audit_records").await, 2);
    let head = audit
        .list(&Default::default())
        .await
        .unwrap()
        .pop()
        .unwrap();
    let moved = |mut d: serde_json::Value| {
        d["head_seq"] = head.seq.into();
        d["head_hash"] = head.hash.clone().into();
        d["records"][0]["seq"] = (head.seq + 1).into();
        d
    };
    assert_eq!(call(&store, moved(doc(0, "a", "k2"))).await, "taken");
    assert_eq!(call(&store, moved(doc(0, "b", "k"))).await, "taken");
    // A finish whose step is not leased to it writes nothing, records included.
    let finish = moved(serde_json::json!({
        "step": {"action_id": "a", "target": "pg", "owner": "someone", "attempts": 1,
                 "report": "{}", "last_error": null, "failed": false,
                 "others_pending": false},
        "finished": {"action_id": "a", "status": "completed",
                     "finished_at": "2026-01-01T00:00:00.000000Z", "report": "{}"},
        "records": [record],
    }));
    assert_eq!(call(&store, finish.clone()).await, "lost");
    let mut others = finish;
    others["step"]["others_pending"] = true.into();
    assert_eq!(call(&store, others).await, "others");
    assert_eq!(count(&store, "actions").await, 1);
    assert_eq!(count(&store, "audit_records").await, 2);
    let status: String = sqlx::query_scalar("SELECT status FROM actions WHERE action_id = 'a'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(status, "running");
}

/// With the worker running, the due steps of an action accepted here are stored leased to
/// this process and handed over without a claim; a scheduled one is not; a step handed back
/// is claimed as if never taken.
async fn accepted_steps_are_adopted_and_handed_back(audit: Audit, q: Arc<Queue>) {
    q.adopt_accepted(true);
    let now = submission(&["a", "b"], &["webhook:now"]);
    let mut later = submission(&["a"], &["webhook:later"]);
    later.due = Some(Utc::now() + chrono::Duration::hours(1));
    q.submit(&audit, &now).await.unwrap();
    q.submit(&audit, &later).await.unwrap();
    let mut adopted = q.take_adopted();
    adopted.sort_by(|x, y| x.target.cmp(&y.target));
    assert_eq!(
        adopted
            .iter()
            .map(|l| (l.action_id, l.target.as_str(), l.attempts))
            .collect::<Vec<_>>(),
        [(now.plan.action_id, "a", 1), (now.plan.action_id, "b", 1)]
    );
    assert!(q.take_adopted().is_empty(), "taken once");
    assert!(
        q.claim(10, None).await.unwrap().is_empty(),
        "leased already"
    );
    let status = q.status(now.plan.action_id).await.unwrap().unwrap();
    assert!(
        status
            .steps
            .iter()
            .all(|s| s.leased_by.as_deref() == Some("one"))
    );

    // The worker cannot start "b" now: handed back, then claimed as a first attempt.
    q.hand_back(&adopted[1]).await.unwrap();
    let claimed = q.claim(10, None).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].target.as_str(), claimed[0].attempts), ("b", 1));
    assert!(q.finish(&audit, &adopted[0], &done("a")).await.unwrap());
    assert!(q.finish(&audit, &claimed[0], &done("b")).await.unwrap());
    let report = q
        .report(now.plan.action_id)
        .await
        .unwrap()
        .expect("finished");
    assert_eq!(report.status, Status::Completed);

    // Without a worker (the CLI), nothing is adopted: a claim takes it.
    q.adopt_accepted(false);
    let unadopted = submission(&["a"], &["webhook:cli"]);
    q.submit(&audit, &unadopted).await.unwrap();
    assert!(q.take_adopted().is_empty());
    let claimed = q.claim(10, None).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].action_id, unadopted.plan.action_id);
    assert!(audit.verify().await.unwrap().ok);
}

#[tokio::test]
async fn accepted_steps_are_adopted_on_sqlite() {
    let (_dir, _store, audit, q) = super::queue("one", Duration::from_secs(15)).await;
    accepted_steps_are_adopted_and_handed_back(audit, q).await;
}

/// On PostgreSQL the first submission goes through the transaction (no head known yet),
/// the later ones through the one-statement commit.
#[tokio::test]
async fn accepted_steps_are_adopted_on_postgres() {
    let (_pg, _store, audit, q) = super::pg_queue("one").await;
    accepted_steps_are_adopted_and_handed_back(audit, q).await;
}
