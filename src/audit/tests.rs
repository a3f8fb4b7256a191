use super::*;
use secrecy::SecretString;
use serde_json::json;

async fn audit() -> (tempfile::TempDir, Audit) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let store = Store::connect(&SecretString::from(url)).await.unwrap();
    (dir, Audit::new(store))
}

#[tokio::test]
async fn appended_records_chain_verify_and_export() {
    let (_dir, audit) = audit().await;
    let action = Uuid::now_v7();
    audit
        .append(Entry::new(
            Kind::EventAccepted,
            "webhook",
            Some(action),
            json!({"b": 1, "a": 2}),
        ))
        .await
        .unwrap();
    audit
        .append_all(vec![
            Entry::new(
                Kind::SessionTerminated,
                "webhook",
                Some(action),
                json!({"pid": 7}),
            ),
            Entry::new(Kind::ActionCompleted, "webhook", Some(action), json!({})),
        ])
        .await
        .unwrap();
    let records = audit.list(&ListFilter::default()).await.unwrap();
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(records[0].detail, r#"{"a":2,"b":1}"#);
    assert_eq!(records[1].prev_hash, records[0].hash);
    let report = audit.verify().await.unwrap();
    assert!(report.ok && report.records == 3, "{report:?}");

    let mut out = Vec::new();
    assert_eq!(audit.export_jsonl(&mut out).await.unwrap(), 3);
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[1]["detail"], json!({"pid": 7}));
    assert_eq!(lines[2]["kind"], "action.completed");
    assert_eq!(lines[2]["prev_hash"], lines[1]["hash"]);

    let filtered = audit
        .list(&ListFilter {
            kind: Some("session.terminated".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1);
    let last = audit
        .list(&ListFilter {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(last.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3]);
}

#[tokio::test]
async fn concurrent_appends_keep_one_chain() {
    let (_dir, audit) = audit().await;
    let audit = std::sync::Arc::new(audit);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let audit = audit.clone();
            tokio::spawn(async move {
                audit
                    .append(Entry::new(
                        Kind::RequestRejected,
                        "anonymous",
                        None,
                        json!({"i": i}),
                    ))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let report = audit.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records, 20);
}

#[tokio::test]
async fn writers_that_remember_the_head_chain_onto_each_others_records_and_a_cut_tail() {
    let (_dir, one) = audit().await;
    // A second writer on the same store, as another process: its own remembered head.
    let other = Audit::new(one.store.clone());
    let entry = |i: i64| Entry::new(Kind::RequestRejected, "anonymous", None, json!({"i": i}));
    one.append(entry(1)).await.unwrap();
    other.append_all(vec![entry(2), entry(3)]).await.unwrap();
    // `one` remembers seq 1 as the head; the chain moved to 3.
    one.append(entry(4)).await.unwrap();
    other.append(entry(5)).await.unwrap();
    // The tail is cut behind `other`'s back: it chains onto what is there, as before.
    sqlx::query("DELETE FROM audit_records WHERE seq = 5")
        .execute(one.store.pool())
        .await
        .unwrap();
    other.append(entry(6)).await.unwrap();
    let records = one.list(&ListFilter::default()).await.unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(records[4].detail, r#"{"i":6}"#);
    let report = one.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
}
