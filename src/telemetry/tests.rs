//! The recording functions, each into a recorder of its own test and read back as the
//! exporter renders it.

use super::*;

#[test]
fn every_counter_ends_in_total_and_every_name_has_the_prefix() {
    let counters = [
        EVENTS_RECEIVED,
        REFUSALS,
        ACTIONS,
        SESSIONS_TERMINATED,
        SESSIONS_CANCELLED,
        SESSIONS_SKIPPED,
        SESSIONS_FAILED,
        SESSIONS_REMAINING,
        STEP_RETRIES,
        POLICY_EVALUATIONS,
        POLICY_MATCHED,
        NOTIFICATIONS,
        NOTIFICATION_FAILURES,
    ];
    for name in counters {
        assert!(
            name.starts_with("sever_") && name.ends_with("_total"),
            "{name}"
        );
    }
    for (name, buckets) in HISTOGRAMS {
        assert!(
            name.starts_with("sever_") && name.ends_with("_seconds"),
            "{name}"
        );
        assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{name}: sorted");
    }
}

#[test]
fn ages_are_never_negative() {
    let now = SystemTime::now();
    assert_eq!(seconds_between(now + Duration::from_secs(5), now), 0.0);
    assert_eq!(seconds_between(now, now + Duration::from_secs(5)), 5.0);
}

/// What `record` records, rendered by a Prometheus recorder of this test's own (the
/// process-wide one is the server's).
fn rendered(record: impl FnOnce()) -> String {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, record);
    recorder.handle().render()
}

/// The value of the rendered line that starts with `series` (name and labels as rendered).
fn line_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[test]
fn a_steps_decisions_count_by_fate_and_dry_run_words_count_nothing() {
    let text = rendered(|| {
        step_sessions(
            "t1",
            "event",
            [
                "terminated",
                "terminated",
                "remaining",
                "cancelled",
                "failed",
                "protected",
                "unknown_state",
                "would_terminate",
            ],
        );
    });
    let at = |series: &str| line_value(&text, series);
    assert_eq!(
        at(r#"sever_sessions_terminated_total{target="t1",origin="event"}"#),
        Some(2.0)
    );
    assert_eq!(
        at(r#"sever_sessions_remaining_total{target="t1",origin="event"}"#),
        Some(1.0)
    );
    assert_eq!(
        at(r#"sever_sessions_cancelled_total{target="t1",origin="event"}"#),
        Some(1.0)
    );
    assert_eq!(
        at(r#"sever_session_terminations_failed_total{target="t1",origin="event"}"#),
        Some(1.0)
    );
    assert_eq!(
        at(r#"sever_sessions_skipped_total{target="t1",reason="protected"}"#),
        Some(1.0)
    );
    assert_eq!(
        at(r#"sever_sessions_skipped_total{target="t1",reason="unknown_state"}"#),
        Some(1.0)
    );
    assert!(!text.contains("would_"), "{text}");
}

#[test]
fn a_login_that_disappears_reads_zero_not_its_last_count() {
    let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(l, n)| ((*l).to_owned(), *n)).collect()
    };
    let text = rendered(|| {
        sessions("t2", &counts(&[("app", 2), ("other", 1)]));
        sessions("t2", &counts(&[("other", 3)]));
    });
    assert_eq!(
        line_value(&text, r#"sever_sessions{target="t2",login="app"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        line_value(&text, r#"sever_sessions{target="t2",login="other"}"#),
        Some(3.0)
    );
}

#[test]
fn the_vault_token_ttl_counts_down_to_the_scrape() {
    let ttl = |token| {
        let text = rendered(|| vault_token(token));
        line_value(&text, "sever_vault_token_ttl_seconds").unwrap()
    };
    let left = ttl(VaultToken::ExpiresIn(Duration::from_secs(100)));
    assert!((99.0..=100.0).contains(&left), "{left}");
    assert_eq!(ttl(VaultToken::Unlimited), f64::INFINITY);
    assert_eq!(ttl(VaultToken::Missing), 0.0);
}

#[test]
fn counters_the_alerts_watch_start_at_zero() {
    let text = rendered(|| initialize(["t3"], &["event", "sweep"]));
    for series in [
        r#"sever_actions_total{origin="sweep",status="incomplete"}"#,
        r#"sever_actions_total{origin="event",status="completed"}"#,
        r#"sever_sessions_remaining_total{target="t3",origin="event"}"#,
    ] {
        assert_eq!(line_value(&text, series), Some(0.0), "{series} in {text}");
    }
}
