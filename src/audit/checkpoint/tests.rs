use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use secrecy::SecretString;
use serde_json::json;

use super::*;
use crate::audit::{Audit, AuditError, Entry, GENESIS, Kind};
use crate::config::{AuditConfig, UnkeyedPin};
use crate::store::Store;

fn key(text: &str) -> CheckpointKey {
    CheckpointKey::new(SecretString::from(text.repeat(32))).unwrap()
}

async fn audit() -> (tempfile::TempDir, Audit) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let store = Store::connect(&SecretString::from(url)).await.unwrap();
    (dir, Audit::new(store))
}

async fn append(audit: &Audit, n: usize) {
    for i in 0..n {
        audit
            .append(Entry::new(
                Kind::RequestRejected,
                "test",
                None,
                json!({"i": i}),
            ))
            .await
            .unwrap();
    }
}

fn options(key: Option<&CheckpointKey>) -> VerifyOptions {
    VerifyOptions {
        keys: key.into_iter().cloned().collect(),
        ..Default::default()
    }
}

async fn problems(audit: &Audit, options: &VerifyOptions) -> Vec<String> {
    let report = audit.verify_with(options).await.unwrap();
    assert_eq!(
        report.ok,
        report.problems.is_empty() && report.checkpoints.problems.is_empty()
    );
    report
        .checkpoints
        .problems
        .iter()
        .map(|p| format!("{:?}: {}", p.index, p.what))
        .collect()
}

async fn exec(audit: &Audit, sql: &'static str) {
    sqlx::query(sql).execute(audit.store.pool()).await.unwrap();
}

#[test]
fn keys_shorter_than_32_bytes_are_refused_and_never_printed() {
    assert!(CheckpointKey::new(SecretString::from("x".repeat(31))).is_none());
    let k = key("s");
    assert!(!format!("{k:?}").contains("sss"));
}

#[test]
fn a_checkpoint_verifies_only_with_its_key_and_content() {
    let mut cp = Checkpoint {
        index: 1,
        at: "2026-01-01T00:00:00.000000Z".into(),
        head_seq: 3,
        head_hash: "ab".repeat(32),
        prev_mac: GENESIS.into(),
        alg: String::new(),
        mac: String::new(),
    };
    cp.seal(Some(&key("a")));
    assert_eq!(cp.alg, KEYED);
    cp.check(&[key("a")]).unwrap();
    assert!(cp.check(&[key("b")]).unwrap_err().contains("MAC"));
    // After a key rotation the previous key still verifies what it made.
    cp.check(&[key("b"), key("a")]).unwrap();
    assert!(
        cp.check(&[])
            .unwrap_err()
            .contains("no audit.checkpoint_key")
    );
    let mut moved = cp.clone();
    moved.head_seq = 2;
    assert!(moved.check(&[key("a")]).is_err());
    // Relabelling a keyed checkpoint as unkeyed does not make it check out.
    let mut relabelled = cp.clone();
    relabelled.alg = UNKEYED.into();
    assert!(relabelled.check(&[]).is_err());

    cp.seal(None);
    assert_eq!(cp.alg, UNKEYED);
    cp.check(&[]).unwrap();
    cp.check(&[key("a")]).unwrap();
}

#[tokio::test]
async fn checkpoints_chain_and_verify_even_when_nothing_changed() {
    let (_dir, audit) = audit().await;
    let k = key("k");
    let mut writer = Writer::new(Some(k.clone()), None);
    let first = writer.write(&audit).await.unwrap().checkpoint;
    assert_eq!((first.index, first.head_seq), (1, 0));
    assert_eq!(first.prev_mac, GENESIS);
    append(&audit, 3).await;
    let second = writer.write(&audit).await.unwrap();
    assert!(second.tampering.is_empty(), "{:?}", second.tampering);
    let third = writer.write(&audit).await.unwrap().checkpoint;
    assert_eq!((third.index, third.head_seq), (3, 3));
    assert_eq!(third.prev_mac, second.checkpoint.mac);

    let report = audit.verify_with(&options(Some(&k))).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checkpoints.checked, 3);
    assert_eq!(report.checkpoints.newest.as_ref(), Some(&third));
    assert_eq!(report.checkpoints.uncovered_records, 0);
    append(&audit, 2).await;
    let report = audit.verify_with(&options(Some(&k))).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checkpoints.uncovered_records, 2);
}

#[tokio::test]
async fn truncating_the_tail_below_a_checkpoint_is_named() {
    let (_dir, audit) = audit().await;
    let k = key("k");
    let mut writer = Writer::new(Some(k.clone()), None);
    append(&audit, 5).await;
    writer.write(&audit).await.unwrap();
    exec(&audit, "DELETE FROM audit_records WHERE seq >= 4").await;
    // The shortened chain is a valid chain: only the checkpoint shows the truncation.
    let report = audit.verify_with(&options(Some(&k))).await.unwrap();
    assert!(report.problems.is_empty());
    assert!(!report.ok);
    let found = problems(&audit, &options(Some(&k))).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("record seq 5") && found[0].contains("truncated"));

    // Re-appending the same seq numbers gives different hashes: still named.
    append(&audit, 2).await;
    let found = problems(&audit, &options(Some(&k))).await;
    assert!(found[0].contains("no longer has the hash"), "{found:?}");

    // The writer that made the checkpoint notices at its next one, and that next one
    // records the shorter head, which verify names too.
    let written = writer.write(&audit).await.unwrap();
    assert!(written.tampering[0].contains("record seq 5"), "{written:?}");
    let found = problems(&audit, &options(Some(&k))).await;
    assert!(found.iter().any(|p| p.contains("no longer has the hash")));
}

#[tokio::test]
async fn deleting_the_newest_checkpoints_too_is_stale_and_leaves_a_gap() {
    let (_dir, audit) = audit().await;
    let k = key("k");
    let mut writer = Writer::new(Some(k.clone()), None);
    append(&audit, 2).await;
    let first = writer.write(&audit).await.unwrap().checkpoint;
    append(&audit, 2).await;
    writer.write(&audit).await.unwrap();
    writer.write(&audit).await.unwrap();
    exec(&audit, "DELETE FROM audit_records WHERE seq > 2").await;
    exec(&audit, "DELETE FROM audit_checkpoints WHERE idx > 1").await;
    // Consistent on its own: only the age of the newest checkpoint gives it away.
    assert!(problems(&audit, &options(Some(&k))).await.is_empty());
    let written_at = DateTime::parse_from_rfc3339(&first.at).unwrap().to_utc();
    let stale = VerifyOptions {
        keys: vec![k.clone()],
        max_checkpoint_age: Some(Duration::from_secs(180)),
        now: Some(written_at + chrono::Duration::seconds(600)),
        ..Default::default()
    };
    let found = problems(&audit, &stale).await;
    assert!(
        found[0].contains("newest checkpoint is 10m old"),
        "{found:?}"
    );
    let fresh = VerifyOptions {
        now: Some(written_at + chrono::Duration::seconds(60)),
        ..stale.clone()
    };
    assert!(problems(&audit, &fresh).await.is_empty());

    // The running writer notices and keeps its own chain, leaving a visible gap.
    let written = writer.write(&audit).await.unwrap();
    assert!(
        written.tampering.iter().any(|t| t.contains("removed")),
        "{written:?}"
    );
    assert_eq!(written.checkpoint.index, 4);
    let found = problems(&audit, &options(Some(&k))).await;
    assert!(
        found
            .iter()
            .any(|p| p.contains("checkpoints 2..3 are missing"))
    );
}

fn pin(cp: &Checkpoint) -> Option<UnkeyedPin> {
    Some(UnkeyedPin {
        index: cp.index,
        mac: cp.mac.clone(),
    })
}

fn pinned(key: &CheckpointKey, pin: Option<UnkeyedPin>) -> VerifyOptions {
    VerifyOptions {
        pin,
        ..options(Some(key))
    }
}

#[tokio::test]
async fn with_a_key_unkeyed_checkpoints_count_only_up_to_the_pinned_one() {
    let (_dir, audit) = audit().await;
    let k = key("k");
    append(&audit, 2).await;
    let before_key = Writer::new(None, None)
        .write(&audit)
        .await
        .unwrap()
        .checkpoint;
    // The store alone never makes an unkeyed checkpoint acceptable: verify says what to pin.
    let report = audit.verify_with(&options(Some(&k))).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.checkpoints.suggested_pin, pin(&before_key));
    let found = problems(&audit, &options(Some(&k))).await;
    assert!(
        found[0].starts_with("Some(1): it is unkeyed")
            && found[0].contains("no audit.unkeyed_checkpoints_through"),
        "{found:?}"
    );
    // Pinned, the keyed writer chains onto it and the whole trail verifies.
    let mut writer = Writer::new(Some(k.clone()), None).pinning(pin(&before_key));
    let first_keyed = writer.write(&audit).await.unwrap();
    assert!(first_keyed.tampering.is_empty(), "{first_keyed:?}");
    assert_eq!(first_keyed.checkpoint.prev_mac, before_key.mac);
    assert!(
        problems(&audit, &pinned(&k, pin(&before_key)))
            .await
            .is_empty()
    );
    // Without the pin it fails and suggests the unkeyed checkpoint the keyed chain starts on.
    let report = audit.verify_with(&options(Some(&k))).await.unwrap();
    assert_eq!(report.checkpoints.suggested_pin, pin(&before_key));

    // Whoever lacks the key can only add unkeyed or wrongly keyed checkpoints.
    Writer::new(None, None).write(&audit).await.unwrap();
    let found = problems(&audit, &pinned(&k, pin(&before_key))).await;
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("Some(3)") && p.contains("comes after checkpoint 1")),
        "{found:?}"
    );
    Writer::new(Some(key("x")), None)
        .write(&audit)
        .await
        .unwrap();
    let found = problems(&audit, &pinned(&k, pin(&before_key))).await;
    assert!(found.iter().any(|p| p.contains("MAC does not verify")));
    // Keyed checkpoints cannot be checked without the key: that is a failure, not a pass.
    let found = problems(&audit, &options(None)).await;
    assert!(
        found
            .iter()
            .any(|p| p.contains("2 checkpoint(s) are keyed"))
    );

    // A pin that does not match the store, or names a checkpoint it lacks, is named.
    let wrong = Some(UnkeyedPin {
        index: 1,
        mac: "ab".repeat(32),
    });
    let found = problems(&audit, &pinned(&k, wrong)).await;
    assert!(
        found[0].starts_with("Some(1)") && found[0].contains("not the checkpoint pinned"),
        "{found:?}"
    );
    exec(&audit, "DELETE FROM audit_checkpoints WHERE idx = 1").await;
    let found = problems(&audit, &pinned(&k, pin(&before_key))).await;
    assert!(
        found.iter().any(|p| p.starts_with("Some(1)")
            && p.contains("pinned by")
            && p.contains("not in the store")),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_restarted_writer_never_chains_onto_checkpoints_it_cannot_trust() {
    let (_dir, audit) = audit().await;
    let k = key("k");
    append(&audit, 3).await;
    let mut writer = Writer::new(Some(k.clone()), None);
    writer.write(&audit).await.unwrap();
    let trusted = writer.write(&audit).await.unwrap().checkpoint;
    // Someone without the key adds a checkpoint with another key, then unkeyed ones.
    Writer::new(Some(key("x")), None)
        .write(&audit)
        .await
        .unwrap();
    Writer::new(None, None).write(&audit).await.unwrap();

    // A fresh writer (a restart) passes over both and chains onto the newest it can trust.
    let restarted = Writer::new(Some(k.clone()), None)
        .write(&audit)
        .await
        .unwrap();
    assert_eq!(restarted.checkpoint.index, 5);
    assert_eq!(restarted.checkpoint.prev_mac, trusted.mac);
    assert!(
        restarted.tampering[0].contains("checkpoint 4, the store's newest, cannot be trusted")
            && restarted.tampering[0].contains("chains onto checkpoint 2"),
        "{:?}",
        restarted.tampering
    );
    let found = problems(&audit, &options(Some(&k))).await;
    assert!(found[0].starts_with("Some(3)"), "{found:?}");
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("Some(5)") && p.contains("does not chain to checkpoint 4"))
    );

    // With every checkpoint replaced by unkeyed ones over a rewritten trail, it starts anew.
    exec(&audit, "DELETE FROM audit_checkpoints").await;
    exec(&audit, "DELETE FROM audit_records WHERE seq = 3").await;
    Writer::new(None, None).write(&audit).await.unwrap();
    let restarted = Writer::new(Some(k.clone()), None)
        .write(&audit)
        .await
        .unwrap();
    assert_eq!(restarted.checkpoint.index, 2);
    assert_eq!(restarted.checkpoint.prev_mac, GENESIS);
    assert!(
        restarted.tampering[0].contains("chains onto nothing"),
        "{:?}",
        restarted.tampering
    );
    let found = problems(&audit, &options(Some(&k))).await;
    assert!(found[0].starts_with("Some(1): it is unkeyed"), "{found:?}");
}

#[tokio::test]
async fn a_running_writer_chains_only_onto_checkpoints_that_lead_back_to_its_own() {
    let (_dir, audit) = audit().await;
    let k = key("k");
    append(&audit, 1).await;
    let mut a = Writer::new(Some(k.clone()), None);
    let own = a.write(&audit).await.unwrap().checkpoint;
    // A forged checkpoint numbered past this writer's last one.
    Writer::new(None, None).write(&audit).await.unwrap();
    let next = a.write(&audit).await.unwrap();
    assert_eq!(next.checkpoint.index, 3);
    assert_eq!(next.checkpoint.prev_mac, own.mac);
    assert!(
        next.tampering[0].contains("checkpoint 2, the store's newest, cannot be trusted"),
        "{:?}",
        next.tampering
    );
    // Another replica's valid checkpoint chaining back to ours is the normal case.
    let mut b = Writer::new(Some(k.clone()), None);
    let theirs = b.write(&audit).await.unwrap();
    assert!(theirs.tampering.is_empty(), "{:?}", theirs.tampering);
    append(&audit, 1).await;
    let theirs = b.write(&audit).await.unwrap().checkpoint;
    let after = a.write(&audit).await.unwrap();
    assert!(after.tampering.is_empty(), "{:?}", after.tampering);
    assert_eq!(after.checkpoint.prev_mac, theirs.mac);
    // Only the forged checkpoint and the one that chained around it are named.
    let found = problems(&audit, &options(Some(&k))).await;
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("Some(2)") && found[1].starts_with("Some(3)"));
}

#[tokio::test]
async fn the_checkpoint_file_shows_a_store_rolled_back_wholesale() {
    let (dir, audit) = audit().await;
    let k = key("k");
    let file = dir.path().join("checkpoints.jsonl");
    let mut writer = Writer::new(Some(k.clone()), Some(file.clone()));
    append(&audit, 2).await;
    writer.write(&audit).await.unwrap();
    append(&audit, 2).await;
    writer.write(&audit).await.unwrap();
    let with_file = VerifyOptions {
        keys: vec![k.clone()],
        checkpoint_file: Some(file.clone()),
        ..Default::default()
    };
    let report = audit.verify_with(&with_file).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checkpoints.anchored, 2);
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), 2);
    assert!(lines.lines().all(|l| l.contains("\"alg\":\"hmac-sha256\"")));

    // Back to the state after the first checkpoint: consistent, but not with the file.
    exec(&audit, "DELETE FROM audit_records WHERE seq > 2").await;
    exec(&audit, "DELETE FROM audit_checkpoints WHERE idx > 1").await;
    assert!(problems(&audit, &options(Some(&k))).await.is_empty());
    let found = problems(&audit, &with_file).await;
    assert!(
        found.iter().any(|p| p.starts_with("Some(2)")
            && p.contains("in the checkpoint file (line 2) but not in the store")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.contains("record seq 4")),
        "{found:?}"
    );

    std::fs::write(&file, format!("{lines}not json\n")).unwrap();
    let found = problems(&audit, &with_file).await;
    assert!(
        found
            .iter()
            .any(|p| p.contains("line 3 is not a checkpoint"))
    );
    let missing = VerifyOptions {
        checkpoint_file: Some(dir.path().join("nope")),
        ..with_file
    };
    assert!(matches!(
        audit.verify_with(&missing).await,
        Err(AuditError::CheckpointFile { .. })
    ));
}

#[test]
fn an_unwritable_checkpoint_file_is_a_config_error() {
    let config = AuditConfig {
        checkpoint_file: Some("/nonexistent-dir/checkpoints.jsonl".into()),
        ..Default::default()
    };
    let e = Writer::from_config(&config).unwrap_err().to_string();
    assert!(e.contains("audit.checkpoint_file"), "{e}");
}

#[tokio::test]
async fn without_checkpoints_an_age_limit_fails_and_no_limit_passes() {
    let (_dir, audit) = audit().await;
    append(&audit, 1).await;
    let report = audit.verify_with(&options(None)).await.unwrap();
    assert!(report.ok);
    assert_eq!(report.checkpoints.uncovered_records, 1);
    let limited = VerifyOptions {
        max_checkpoint_age: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let found = problems(&audit, &limited).await;
    assert!(found[0].contains("there is no checkpoint"), "{found:?}");
}

#[tokio::test]
async fn writers_in_two_processes_keep_one_checkpoint_chain() {
    let (_dir, audit) = audit().await;
    let k = key("k");
    let audit = Arc::new(audit);
    // A second `Audit` on the same file stands in for another process.
    let other = Audit::new(audit.store.clone());
    let mut a = Writer::new(Some(k.clone()), None);
    let mut b = Writer::new(Some(k.clone()), None);
    for _ in 0..5 {
        let (x, y) = tokio::join!(a.write(&audit), b.write(&other));
        assert!(x.unwrap().tampering.is_empty());
        assert!(y.unwrap().tampering.is_empty());
        append(&audit, 1).await;
    }
    let report = audit.verify_with(&options(Some(&k))).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checkpoints.checked, 10);
}
