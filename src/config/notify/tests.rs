//! `[notify]` parsing and validation, each refusal named by its key.

use super::*;
use crate::config::Config;

fn parse(channels: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("[notify]\n{channels}"))
}

fn refused(channels: &str) -> String {
    parse(channels).unwrap_err().to_string()
}

#[test]
fn every_event_name_round_trips() {
    for event in Event::ALL {
        assert_eq!(Event::from_name(event.as_str()), Some(event));
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(json, format!("\"{}\"", event.as_str()));
    }
    assert_eq!(Event::from_name("action.exploded"), None);
}

#[test]
fn a_channel_of_each_kind_parses_with_its_defaults() {
    let config = parse(
        r#"
        [[notify.channels]]
        name = "ops"
        kind = "slack"
        url = { env = "SLACK_URL" }
        events = ["action.incomplete", "target.down"]
        include = ["application_names"]
        filter = { targets = ["main"], min_severity = "warning" }

        [[notify.channels]]
        name = "pager"
        kind = "pagerduty"
        routing_key = { file = "/run/secrets/pd" }
        events = ["action.given_up"]

        [[notify.channels]]
        name = "siem"
        kind = "webhook"
        url = "https://siem.example/hooks/sever"
        secret = { env = "SIEM_SECRET" }
        events = ["action.completed"]
        coalesce = "0s"
        rate_per_minute = 5
        "#,
    )
    .unwrap();
    let [slack, pager, hook] = &config.notify.channels[..] else {
        panic!("three channels")
    };
    assert_eq!(slack.rate_per_minute(), 30);
    assert_eq!(slack.coalesce(), Duration::from_secs(60));
    assert!(slack.include.contains(&Include::ApplicationNames));
    assert_eq!(slack.filter.min_severity, Some(Severity::Warning));
    assert!(pager.url.is_none() && pager.wants(Event::ActionGivenUp));
    assert!(!pager.wants(Event::ActionStarted));
    assert_eq!(hook.coalesce(), Duration::ZERO);
    assert_eq!(hook.rate_per_minute(), 5);
    assert!(config.notify.wants(Event::TargetDown));
    assert!(!config.notify.wants(Event::LockStarted));
}

#[test]
fn bad_channels_are_refused_by_key() {
    let slack_inline = refused(
        r#"[[notify.channels]]
        name = "ops"
        kind = "slack"
        url = "https://hooks.slack.com/services/T/B/X"
        events = ["action.started"]"#,
    );
    assert!(
        slack_inline.contains("notify.channels[0].url"),
        "{slack_inline}"
    );
    assert!(slack_inline.contains("credential"), "{slack_inline}");
    assert!(!slack_inline.contains("services/T/B/X"), "{slack_inline}");

    let plain_http = refused(
        r#"[[notify.channels]]
        name = "siem"
        kind = "webhook"
        url = "http://siem.internal/x"
        secret = { env = "S" }
        events = ["action.started"]"#,
    );
    assert!(plain_http.contains("must be https"), "{plain_http}");
    assert!(
        parse(
            r#"[[notify.channels]]
            name = "siem"
            kind = "webhook"
            url = "http://127.0.0.1:9/x"
            secret = { env = "S" }
            allow_http = true
            events = ["action.started"]"#,
        )
        .is_ok()
    );

    let unknown_event = refused(
        r#"[[notify.channels]]
        name = "p"
        kind = "pagerduty"
        routing_key = { env = "K" }
        events = ["action.exploded"]"#,
    );
    assert!(unknown_event.contains("action.exploded"), "{unknown_event}");

    let duplicate = refused(
        r#"[[notify.channels]]
        name = "p"
        kind = "pagerduty"
        routing_key = { env = "K" }
        events = ["target.down"]
        [[notify.channels]]
        name = "p"
        kind = "pagerduty"
        routing_key = { env = "K" }
        events = ["target.down"]"#,
    );
    assert!(duplicate.contains("notify.channels[1].name"), "{duplicate}");

    for (fields, key) in [
        ("kind = \"pagerduty\"", "routing_key"),
        ("kind = \"webhook\"\nurl = \"https://x.example\"", "secret"),
        ("kind = \"webhook\"\nsecret = { env = \"S\" }", "url"),
        ("kind = \"slack\"", "url"),
        (
            "kind = \"slack\"\nurl = { env = \"U\" }\nrouting_key = { env = \"K\" }",
            "routing_key",
        ),
        ("kind = \"email\"", "kind"),
    ] {
        let text =
            format!("[[notify.channels]]\nname = \"c\"\n{fields}\nevents = [\"target.down\"]");
        let err = refused(&text);
        assert!(err.contains(key), "{fields}: {err}");
    }
    let no_events = refused(
        r#"[[notify.channels]]
        name = "p"
        kind = "pagerduty"
        routing_key = { env = "K" }
        events = []"#,
    );
    assert!(no_events.contains("at least one event"), "{no_events}");
    assert!(refused("max_outbox = 0").contains("notify.max_outbox"));
    assert!(refused("retry_min = \"10s\"\nretry_max = \"1s\"").contains("notify.retry_max"));
}

#[test]
fn endpoints_must_be_absolute_https() {
    assert!(check_endpoint("https://events.pagerduty.com", false).is_ok());
    assert!(check_endpoint("http://127.0.0.1:8080/x", true).is_ok());
    assert!(check_endpoint("http://127.0.0.1:8080/x", false).is_err());
    assert!(check_endpoint("ftp://x.example/", true).is_err());
    assert!(check_endpoint("/relative", true).is_err());
}
