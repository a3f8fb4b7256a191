use std::time::Duration;

use chrono::{TimeZone, Utc};

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap()
}

/// A session everything about is known: pid 4242, `app` on `orders` from 10.1.2.3, idle for
/// 5 min, connected an hour ago (11:00:00.123456), no transaction.
fn facts() -> Facts<'static> {
    Facts {
        pid: Seen::Known(4242),
        login: Seen::Known("app"),
        database: Seen::Known("orders"),
        application_name: Seen::Known("pg_dump"),
        client_addr: Seen::Known("10.1.2.3".parse().unwrap()),
        backend_start: Seen::Known(started()),
        state: Seen::Known(SessionState::Idle),
        state_since: Seen::Known(now() - chrono::Duration::minutes(5)),
        xact_start: Seen::Absent,
        now: now(),
    }
}

fn started() -> DateTime<Utc> {
    now() - chrono::Duration::hours(1) + chrono::Duration::microseconds(123_456)
}

fn selector(json: &str) -> Selector {
    serde_json::from_str(json).unwrap()
}

#[test]
fn globs_match_only_with_stars_special() {
    let p = |s: &str| Pattern::new(s);
    assert!(p("pg_dump").matches("pg_dump"));
    assert!(!p("pg_dump").matches("pg_dumpall"));
    assert!(p("pg_dump*").matches("pg_dumpall"));
    assert!(p("*dump").matches("pg_dump"));
    assert!(p("a*b*c").matches("a-b-c"));
    assert!(!p("a*b*c").matches("a-c-b"));
    assert!(!p("ab*ba").matches("aba"), "pieces must not overlap");
    assert!(p("").matches(""));
    assert!(!p("").matches("x"));
    assert!(p("app[1]?").matches("app[1]?"), "[ and ? are literal");
    assert!(!p("app[1]?").matches("app1x"));
    assert!(p("*").matches("") && p("**").matches_everything());
    assert!(
        p("🦀*").matches("🦀 crab"),
        "4-byte code points are whole characters"
    );
}

#[test]
fn address_blocks_parse_strictly_and_match_mapped_v4() {
    let b: AddrBlock = "10.0.0.0/8".parse().unwrap();
    assert!(b.contains("10.200.1.1".parse().unwrap()));
    assert!(b.contains("::ffff:10.9.9.9".parse().unwrap()));
    assert!(!b.contains("11.0.0.1".parse().unwrap()));
    let one: AddrBlock = "2001:db8::7".parse().unwrap();
    assert_eq!(one.to_string(), "2001:db8::7");
    assert!(one.contains("2001:db8::7".parse().unwrap()));
    let err = "10.0.0.7/8".parse::<AddrBlock>().unwrap_err();
    assert!(err.contains("10.0.0.0/8"), "{err}");
    assert!("localhost".parse::<AddrBlock>().is_err());
    assert!("0.0.0.0/0".parse::<AddrBlock>().unwrap().is_everything());
}

#[test]
fn fields_are_read_as_one_value_or_many_with_aliases() {
    let s = selector(
        r#"{"login": "app", "exclude_application_names": ["pg_dump", "wal*"],
            "client_addr": "10.0.0.0/8", "states": "idle", "idle_for": "10m"}"#,
    );
    assert_eq!(s.logins, ["app"]);
    assert_eq!(s.exclude_application_names.len(), 2);
    assert_eq!(s.states, [SessionState::Idle]);
    assert_eq!(s.idle_for, Some(Duration::from_secs(600)));
    assert_eq!(
        s.fields(),
        [
            "logins",
            "exclude_application_names",
            "client_addrs",
            "states",
            "idle_for"
        ]
    );
    // Round trip through the serialized form (policies are stored and shown this way).
    let back: Selector = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

#[test]
fn a_bad_value_or_unknown_field_is_named() {
    let e = serde_json::from_str::<Selector>(r#"{"client_addrs": ["10.0.0.1", "db-host"]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("db-host"), "{e}");
    let e = serde_json::from_str::<Selector>(r#"{"exclude_login": "x"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exclude_login"), "{e}");
    let e = serde_json::from_str::<Selector>(r#"{"states": ["sleeping"]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sleeping"), "{e}");
    assert!(serde_json::from_str::<Selector>(r#"{"idle_for": "ten minutes"}"#).is_err());
    let contradictory = selector(
        r#"{"started_after": "2026-12-06T12:00:00Z", "started_before": "2026-12-06T11:00:00Z"}"#,
    );
    assert_eq!(contradictory.validate().unwrap_err().field, "started_after");
}

#[test]
fn every_field_narrows_and_exclusions_win() {
    let f = facts();
    let selected = |json: &str| selector(json).decide(&f);
    assert_eq!(selected("{}"), Decision::Selected);
    assert_eq!(
        selected(
            r#"{"logins": ["app"], "databases": ["orders"], "application_names": ["pg_*"],
                     "client_addrs": ["10.1.0.0/16"], "states": ["idle", "active"],
                     "idle_for": "4m", "started_before": "2026-12-06T11:30:00Z",
                     "started_after": "2026-12-06T10:30:00Z"}"#
        ),
        Decision::Selected
    );
    let out = |json: &str, rule: &str| {
        assert_eq!(selected(json), Decision::Excluded(rule.into()), "{json}");
    };
    out(r#"{"logins": ["other"]}"#, "logins");
    out(r#"{"databases": ["billing"]}"#, "databases");
    out(r#"{"application_names": ["psql"]}"#, "application_names");
    out(r#"{"client_addrs": ["10.2.0.0/16"]}"#, "client_addrs");
    out(r#"{"states": ["active"]}"#, "states");
    out(r#"{"idle_for": "6m"}"#, "idle_for");
    out(r#"{"active_for": "1s"}"#, "active_for");
    out(r#"{"in_transaction_for": "1s"}"#, "in_transaction_for");
    out(
        r#"{"started_before": "2026-12-06T10:30:00Z"}"#,
        "started_before",
    );
    out(
        r#"{"started_after": "2026-12-06T11:30:00Z"}"#,
        "started_after",
    );
    // The exclusion wins over every inclusion that holds, and names the rule that matched.
    out(
        r#"{"logins": ["app"], "application_names": ["*"], "exclude_application_names": ["psql", "pg_dump*"]}"#,
        "exclude_application_names: pg_dump*",
    );
    out(
        r#"{"logins": ["app"], "exclude_logins": ["app"]}"#,
        "exclude_logins: app",
    );
    out(
        r#"{"exclude_databases": ["orders"]}"#,
        "exclude_databases: orders",
    );
}

#[test]
fn an_unknown_value_is_spared_by_inclusions_and_exclusions_alike() {
    let mut f = facts();
    f.client_addr = Facts::addr(Some("db-host.internal"));
    f.state = Seen::Unknown;
    f.backend_start = Seen::Unknown;
    f.application_name = Seen::Unknown;
    f.xact_start = Seen::Unknown;
    let decide = |json: &str| selector(json).decide(&f);
    assert_eq!(
        decide(r#"{"client_addrs": ["0.0.0.0/0"]}"#),
        Decision::Unknown("client_addr")
    );
    assert_eq!(
        decide(r#"{"exclude_application_names": ["pg_dump"]}"#),
        Decision::Unknown("application_name")
    );
    assert_eq!(
        decide(r#"{"states": ["idle"]}"#),
        Decision::Unknown("state")
    );
    assert_eq!(decide(r#"{"idle_for": "1s"}"#), Decision::Unknown("state"));
    assert_eq!(
        decide(r#"{"in_transaction_for": "1s"}"#),
        Decision::Unknown("xact_start")
    );
    assert_eq!(
        decide(r#"{"started_before": "2030-01-01T00:00:00Z"}"#),
        Decision::Unknown("backend_start")
    );
    assert_eq!(
        Decision::Unknown("client_addr").reason().as_deref(),
        Some("unknown_client_addr")
    );
    // A field not given never needs its value.
    assert_eq!(decide(r#"{"logins": ["app"]}"#), Decision::Selected);
    // A local-socket session has no address: known, and in no block.
    let mut local = facts();
    local.client_addr = Facts::addr(None);
    assert_eq!(
        selector(r#"{"client_addrs": ["0.0.0.0/0"]}"#).decide(&local),
        Decision::Excluded("client_addrs".into())
    );
}

#[test]
fn durations_count_from_the_state_change_and_the_transaction_start() {
    let mut f = facts();
    f.state = Seen::Known(SessionState::IdleInTransaction);
    f.state_since = Seen::Known(now() - chrono::Duration::seconds(2));
    f.xact_start = Seen::Known(now() - chrono::Duration::seconds(3));
    let decide = |json: &str| selector(json).decide(&f);
    assert_eq!(
        decide(r#"{"in_transaction_for": "3s"}"#),
        Decision::Selected
    );
    assert_eq!(
        decide(r#"{"in_transaction_for": "4s"}"#),
        Decision::Excluded("in_transaction_for".into())
    );
    assert_eq!(
        decide(r#"{"idle_for": "1s"}"#),
        Decision::Excluded("idle_for".into()),
        "idle in a transaction is not idle"
    );
    // A state change read a moment after `now` has lasted zero, not a negative time.
    f.state = Seen::Known(SessionState::Active);
    f.state_since = Seen::Known(now() + chrono::Duration::milliseconds(5));
    assert_eq!(
        selector(r#"{"active_for": "0s"}"#).decide(&f),
        Decision::Selected
    );
}

#[test]
fn trivial_values_do_not_narrow() {
    let trivial = selector(
        r#"{"logins": ["app"], "exclude_logins": ["x"], "exclude_databases": ["y"],
            "application_names": ["*"], "client_addrs": ["10.0.0.0/8", "::/0"],
            "states": ["active", "idle", "idle_in_transaction", "idle_in_transaction_aborted"],
            "idle_for": "0s", "started_before": "2027-01-01T00:00:00Z"}"#,
    );
    assert!(
        trivial.narrowing(now()).is_empty(),
        "{:?}",
        trivial.narrowing(now())
    );
    let real = selector(
        r#"{"databases": ["orders"], "application_names": ["pg_*"], "client_addrs": ["10.0.0.0/8"],
            "states": ["idle"], "idle_for": "1m", "active_for": "1s", "in_transaction_for": "1s",
            "started_before": "2026-12-06T11:00:00Z", "started_after": "2026-12-06T10:00:00Z"}"#,
    );
    assert_eq!(real.narrowing(now()).len(), 9);
}

#[test]
fn a_query_string_repeats_a_key_for_a_list() {
    let s: Selector = serde_html_form::from_str(
        "logins=app&logins=batch&application_name=pg_dump&states=idle&idle_for=10m\
         &client_addrs=10.0.0.0%2F8&started_before=2026-12-06T11%3A00%3A00Z",
    )
    .unwrap();
    assert_eq!(s.logins, ["app", "batch"]);
    assert_eq!(s.application_names, [Pattern::new("pg_dump")]);
    assert_eq!(s.states, [SessionState::Idle]);
    assert_eq!(s.idle_for, Some(Duration::from_secs(600)));
    assert_eq!(s.client_addrs.len(), 1);
    assert!(s.started_before.is_some());
    let e = serde_html_form::from_str::<Selector>("client_addrs=db-host").unwrap_err();
    assert!(e.to_string().contains("db-host"), "{e}");
    assert!(serde_html_form::from_str::<Selector>("logn=app").is_err());
}

#[test]
fn a_session_ref_matches_its_pid_and_exact_start_only() {
    let f = facts();
    let decide = |json: &str| selector(json).decide(&f);
    assert_eq!(
        decide(r#"{"sessions": [{"pid": 4242, "backend_start": "2026-12-06T11:00:00.123456Z"}]}"#),
        Decision::Selected
    );
    // The same instant in another offset is the same start.
    assert_eq!(
        decide(r#"{"sessions": ["4242@2026-12-06T12:00:00.123456+01:00"]}"#),
        Decision::Selected
    );
    // Values OR'd: one ref of several is enough.
    assert_eq!(
        decide(r#"{"sessions": ["7@2026-12-06T11:00:00Z", "4242@2026-12-06T11:00:00.123456Z"]}"#),
        Decision::Selected
    );
    // A reused pid: same id, another start (a microsecond off is another session).
    assert_eq!(
        decide(r#"{"sessions": ["4242@2026-12-06T11:00:00.123457Z"]}"#),
        Decision::Excluded("sessions".into())
    );
    assert_eq!(
        decide(r#"{"sessions": ["4243@2026-12-06T11:00:00.123456Z"]}"#),
        Decision::Excluded("sessions".into())
    );
    // ANDed with the other fields.
    assert_eq!(
        decide(r#"{"databases": ["billing"], "sessions": ["4242@2026-12-06T11:00:00.123456Z"]}"#),
        Decision::Excluded("databases".into())
    );
    // An id alone (MySQL/MariaDB, which record no start) matches on the id.
    let mut mysql = facts();
    mysql.backend_start = Seen::Unknown;
    assert_eq!(
        selector(r#"{"sessions": [{"pid": 4242}]}"#).decide(&mysql),
        Decision::Selected
    );
    assert_eq!(
        selector(r#"{"sessions": "4241"}"#).decide(&mysql),
        Decision::Excluded("sessions".into())
    );
}

#[test]
fn a_session_whose_start_or_id_is_unreadable_is_spared() {
    let mut f = facts();
    f.backend_start = Seen::Unknown;
    let one = selector(r#"{"sessions": ["4242@2026-12-06T11:00:00.123456Z"]}"#);
    assert_eq!(one.decide(&f), Decision::Unknown("backend_start"));
    assert_eq!(
        Decision::Unknown("backend_start").reason().as_deref(),
        Some("unknown_backend_start")
    );
    // Another pid is out whatever its start.
    let other = selector(r#"{"sessions": ["7@2026-12-06T11:00:00Z"]}"#);
    assert_eq!(other.decide(&f), Decision::Excluded("sessions".into()));
    f.pid = Seen::Unknown;
    assert_eq!(one.decide(&f), Decision::Unknown("pid"));
    // Facts start unknown: an engine that forgets the id never selects by it.
    let mut blank = Facts::unknown(now());
    blank.backend_start = Seen::Known(started());
    assert_eq!(one.decide(&blank), Decision::Unknown("pid"));
}

#[test]
fn session_refs_read_both_forms_and_refuse_malformed_ones() {
    let s = selector(
        r#"{"sessions": [{"pid": 1, "backend_start": "2026-12-07T01:02:03.456789Z"}, "2@2026-12-07T01:02:03Z", "3"]}"#,
    );
    assert_eq!(s.sessions.len(), 3);
    assert_eq!(s.sessions[0].to_string(), "1@2026-12-07T01:02:03.456789Z");
    assert_eq!(s.sessions[1].to_string(), "2@2026-12-07T01:02:03Z");
    assert_eq!(
        s.sessions[2],
        SessionRef {
            pid: 3,
            backend_start: None
        }
    );
    assert_eq!(s.fields(), ["sessions"]);
    let single = selector(r#"{"sessions": {"pid": 9}}"#);
    assert_eq!(
        single.sessions,
        [SessionRef {
            pid: 9,
            backend_start: None
        }]
    );
    // Round trip (actions are stored this way), and through the text form.
    let back: Selector = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    for r in &s.sessions {
        assert_eq!(r.to_string().parse::<SessionRef>().unwrap(), *r);
    }
    let nanos: SessionRef = "5@2026-12-07T01:02:03.123456789Z".parse().unwrap();
    assert_eq!(nanos.to_string(), "5@2026-12-07T01:02:03.123456789Z");
    for (bad, needle) in [
        (r#"{"sessions": ["abc"]}"#, "PID@START"),
        (r#"{"sessions": ["12@yesterday"]}"#, "RFC 3339"),
        (r#"{"sessions": ["12@2026-12-07T01:02:03 01:00"]}"#, "%2B"),
        (r#"{"sessions": ["0"]}"#, "positive"),
        (r#"{"sessions": [{"pid": -4}]}"#, "positive"),
        (
            r#"{"sessions": [{"pid": 4, "start": "2026-12-07T01:02:03Z"}]}"#,
            "start",
        ),
        (
            r#"{"sessions": [{"backend_start": "2026-12-07T01:02:03Z"}]}"#,
            "pid",
        ),
        (r#"{"sessions": [{"pid": "4"}]}"#, "i64"),
    ] {
        let e = serde_json::from_str::<Selector>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{bad} => {e}");
    }
}

#[test]
fn sessions_narrow_unless_the_list_is_empty() {
    let some = selector(r#"{"sessions": ["4242@2026-12-06T11:00:00Z"]}"#);
    assert_eq!(some.narrowing(now()), ["sessions"]);
    // `sessions: []` is a field not given: with all_logins it must be refused, never read
    // as "every session".
    let none = selector(r#"{"sessions": []}"#);
    assert!(none.narrowing(now()).is_empty());
    assert!(none.fields().is_empty());
    assert_eq!(none.decide(&facts()), Decision::Selected);
}

#[test]
fn a_query_string_names_sessions_by_text() {
    let s: Selector = serde_html_form::from_str(
        "sessions=4242%402026-12-06T11%3A00%3A00.123456Z&sessions=7%402026-12-06T12%3A00%3A00%2B01%3A00",
    )
    .unwrap();
    assert_eq!(s.sessions.len(), 2);
    assert_eq!(s.decide(&facts()), Decision::Selected);
    assert_eq!(s.sessions[1].to_string(), "7@2026-12-06T11:00:00Z");
    let one: Selector = serde_html_form::from_str("sessions=42").unwrap();
    assert_eq!(
        one.sessions,
        [SessionRef {
            pid: 42,
            backend_start: None
        }]
    );
    let e = serde_html_form::from_str::<Selector>("sessions=42%40soon").unwrap_err();
    assert!(e.to_string().contains("RFC 3339"), "{e}");
}
