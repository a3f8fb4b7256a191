use super::*;
use crate::action::{Origin, Plan, Step, TargetReport, Work};
use crate::terminate::{Scope, Skipped, TerminateOutcome};

fn session(pid: i64) -> Session {
    Session {
        pid,
        login: Some("app".into()),
        login_id: Some("16384".into()),
        database: None,
        application_name: None,
        client_addr: None,
        backend_start: Some(chrono::Utc::now()),
        state: None,
    }
}

fn lease(journal: Vec<Session>) -> Lease {
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
            target: "a".into(),
            logins: vec!["app".into()],
            protected: Default::default(),
        }],
    };
    Lease {
        action_id: plan.action_id,
        target: "a".into(),
        attempts: 2,
        journal,
        plan,
        work: Work::Terminate(Scope::All),
        actor: "tester".into(),
        deadline: chrono::Utc::now(),
        roles: None,
    }
}

#[test]
fn journaled_sessions_gone_now_are_counted_terminated_whether_listed_again_or_not() {
    let (listed, unlisted, own) = (session(1), session(2), session(3));
    let stranger = session(4);
    let gone = |s: &Session| Skipped {
        session: s.clone(),
        reason: SkipReason::AlreadyGone,
    };
    // This attempt listed 1 (then found it gone when signalling), never saw 2, ended 3
    // itself, and found 4 gone, which the earlier attempt never journaled.
    let mut report = TargetReport {
        target: "a".into(),
        logins: vec!["app".into()],
        found: 0,
        error: None,
        outcome: TerminateOutcome {
            matched: vec![listed.clone(), own.clone(), stranger.clone()],
            terminated: vec![own.clone()],
            skipped: vec![gone(&listed), gone(&stranger)],
            ..TerminateOutcome::default()
        },
        decisions: Vec::new(),
    };
    recovered(&lease(vec![listed, unlisted, own]), &mut report);
    let pids = |v: &[Session]| {
        let mut p: Vec<i64> = v.iter().map(|s| s.pid).collect();
        p.sort();
        p
    };
    let o = &report.outcome;
    assert_eq!(pids(&o.terminated), [1, 2, 3]);
    assert_eq!(pids(&o.matched), [1, 2, 3, 4]);
    assert_eq!(o.skipped.len(), 1);
    assert_eq!(
        o.skipped[0].session.pid, 4,
        "not journaled: it went by itself"
    );
    assert_eq!(report.found, 5);
    assert!(o.notes[0].starts_with("2 session(s)"), "{:?}", o.notes);
}
