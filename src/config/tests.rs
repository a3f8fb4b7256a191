//! The configuration's parsing and validation, section by section.

use std::time::Duration;

use super::*;

const GOOD: &str = r#"
    protected_logins = ["postgres"]
    [webhooks]
    secrets = [{ env = "X" }]
    [[operators]]
    name = "alice"
    token_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
    [targets.pg]
    engine = "postgres"
    url = "postgres://sever@localhost/postgres"
    [credentials.app]
    logins = [{ target = "pg", login = "app" }]
"#;

fn err(text: &str) -> String {
    Config::parse(text).unwrap_err().to_string()
}

#[test]
fn a_complete_config_parses_with_defaults() {
    let config = Config::parse(GOOD).unwrap();
    assert_eq!(config.webhooks.tolerance, Duration::from_secs(300));
    assert_eq!(
        config.credentials["app"].policy,
        RotationPolicy::TerminateBeforeCutoff
    );
    assert!(config.protected_on("pg").contains("postgres"));
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!("../../config/sever.example.toml");
    let config = Config::parse(text).unwrap();
    assert_eq!(config.credentials["orders-app"].logins.len(), 2);
    assert!(config.protected_on("orders-db").contains("orders_migrator"));
    assert_eq!(config.audit.checkpoint_interval, Duration::from_secs(60));
    assert!(config.audit.checkpoint_key.is_some() && config.audit.checkpoint_file.is_some());
    assert_eq!(config.window("weeknights").unwrap().time_intervals.len(), 2);
    let slack = &config.notify.channels[0];
    assert_eq!(
        (slack.name.as_str(), slack.kind),
        ("dba-slack", ChannelKind::Slack)
    );
    assert!(slack.wants(NotifyEvent::TargetDown));
}

#[test]
fn audit_checkpoints_default_to_every_minute_unkeyed_with_a_warning() {
    let config = Config::parse(GOOD).unwrap();
    assert_eq!(config.audit.checkpoint_interval, Duration::from_secs(60));
    assert!(config.audit.checkpoint_key.is_none());
    assert!(
        config
            .warnings()
            .iter()
            .any(|w| w.contains("audit.checkpoint_key"))
    );
    let keyed = format!("{GOOD}\n[audit]\ncheckpoint_key = {{ env = \"K\" }}\n");
    let config = Config::parse(&keyed).unwrap();
    assert!(
        !config
            .warnings()
            .iter()
            .any(|w| w.contains("audit.checkpoint_key"))
    );
    let orphan = format!("{GOOD}\n[audit]\ncheckpoint_previous_keys = [{{ env = \"K\" }}]\n");
    assert!(err(&orphan).contains("audit.checkpoint_previous_keys"));
    let e = err(&format!("{GOOD}\n[audit]\ncheckpoint_interval = \"0s\"\n"));
    assert!(e.contains("audit.checkpoint_interval"), "{e}");
    assert!(
        err(&format!("{GOOD}\n[audit]\ncheckpoint_every = \"1m\"\n")).contains("checkpoint_every")
    );
}

#[test]
fn an_unkeyed_checkpoint_pin_needs_a_key_an_index_and_a_digest() {
    let mac = "ab".repeat(32);
    let pin = |index: i64, mac: &str| {
        format!("[audit]\nunkeyed_checkpoints_through = {{ index = {index}, mac = {mac:?} }}\n")
    };
    let keyed = format!("{GOOD}\n[audit]\ncheckpoint_key = {{ env = \"K\" }}\n");
    let config =
        Config::parse(&format!("{keyed}{}", pin(7, &mac).replace("[audit]\n", ""))).unwrap();
    let pinned = config.audit.unkeyed_checkpoints_through.unwrap();
    assert_eq!((pinned.index, pinned.mac), (7, mac.clone()));
    let e = err(&format!("{GOOD}\n{}", pin(7, &mac)));
    assert!(e.contains("needs audit.checkpoint_key"), "{e}");
    let with_key =
        |index: i64, mac: &str| format!("{keyed}{}", pin(index, mac).replace("[audit]\n", ""));
    assert!(err(&with_key(0, &mac)).contains("unkeyed_checkpoints_through.index"));
    assert!(err(&with_key(7, "abc")).contains("unkeyed_checkpoints_through.mac"));
    assert!(err(&with_key(7, &"AB".repeat(32))).contains("lowercase hex"));
}

#[test]
fn the_kubernetes_config_is_valid() {
    let text = include_str!("../../integrations/kubernetes/sever.toml");
    let config = Config::parse(text).unwrap();
    assert!(config.server.operator_listen.is_some());
    assert_eq!(
        config.store.url,
        UrlSource::Secret(SecretRef::Env("SEVER_STORE_URL".into()))
    );
}

#[test]
fn empty_config_is_the_embedded_default() {
    let config = Config::parse("").unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert!(config.targets.is_empty());
    assert_eq!(config.server.operator_listen, None);
    assert_eq!(config.server.header_read_timeout, Duration::from_secs(10));
    // Unset: sized at start to fit the open-file limit.
    assert_eq!(config.server.max_connections, None);
    assert_eq!(config.server.operator_max_connections, None);
}

#[test]
fn server_limits_are_checked() {
    let config = Config::parse(
        "[server]\nlisten = \"0.0.0.0:8080\"\noperator_listen = \"127.0.0.1:8081\"\n\
         header_read_timeout = \"2s\"\nmax_connections = 8\noperator_max_connections = 3",
    )
    .unwrap();
    assert_eq!(config.server.operator_listen.unwrap().port(), 8081);
    assert_eq!(config.server.header_read_timeout, Duration::from_secs(2));
    assert_eq!(config.server.max_connections, Some(8));
    assert_eq!(config.server.operator_max_connections, Some(3));
    for (text, path) in [
        ("max_connections = 0", "server.max_connections"),
        (
            "operator_max_connections = 0",
            "server.operator_max_connections",
        ),
        ("header_read_timeout = \"0s\"", "server.header_read_timeout"),
        ("request_timeout = \"0s\"", "server.request_timeout"),
        (
            "listen = \"127.0.0.1:9\"\noperator_listen = \"127.0.0.1:9\"",
            "server.operator_listen",
        ),
    ] {
        let e = err(&format!("[server]\n{text}"));
        assert!(e.contains(path), "{text}: {e}");
    }
}

#[test]
fn unknown_keys_are_errors() {
    assert!(err("[server]\nlisen = \"127.0.0.1:1\"").contains("lisen"));
    let e = err(&GOOD.replace("engine = \"postgres\"", "engine = \"postgres\"\nfoo = 1"));
    assert!(e.contains("foo"), "{e}");
}

#[test]
fn dangling_target_reference_is_an_error() {
    let e = err(&GOOD.replace("target = \"pg\"", "target = \"nope\""));
    assert!(e.contains("credentials.app.logins[0].target"), "{e}");
}

#[test]
fn mapping_a_protected_login_is_an_error() {
    let e = err(&GOOD.replace("login = \"app\"", "login = \"postgres\""));
    assert!(e.contains("protected"), "{e}");
}

#[test]
fn bad_operator_hash_and_duplicates_are_errors() {
    assert!(err(&GOOD.replace(&"0".repeat(64), "abc")).contains("token_sha256"));
    let twice = format!(
        "{GOOD}\n[[operators]]\nname = \"alice\"\ntoken_sha256 = \"{}\"",
        "1".repeat(64)
    );
    assert!(err(&twice).contains("duplicate operator"));
}

#[test]
fn aws_credentials_may_derive_logins_but_not_share_a_secret() {
    let aws = format!("{GOOD}\n[credentials.rds]\n[credentials.rds.aws]\nsecret = \"prod/db\"\n");
    let config = Config::parse(&aws).unwrap();
    assert!(config.credentials["rds"].logins.is_empty());
    assert_eq!(
        config.credentials["rds"]
            .aws
            .as_ref()
            .unwrap()
            .previous_user,
        PreviousUserPolicy::Keep
    );
    let twin = format!("{aws}[credentials.rds2]\n[credentials.rds2.aws]\nsecret = \"prod/db\"\n");
    assert!(err(&twin).contains("maps the same secret"));
    let bad_target = aws.replace(
        "secret = \"prod/db\"",
        "secret = \"prod/db\"\ntarget = \"nope\"",
    );
    assert!(err(&bad_target).contains("credentials.rds.aws.target"));
    let no_logins = format!("{GOOD}\n[credentials.bare]\ndescription = \"x\"\n");
    assert!(err(&no_logins).contains("credentials.bare.logins"));
    assert!(
        err(&format!("{GOOD}\n[aws.sns]\ntopics = [\"not-an-arn\"]\n"))
            .contains("aws.sns.topics[0]")
    );
}

#[test]
fn unknown_engine_and_policy_are_errors() {
    assert!(err(&GOOD.replace("engine = \"postgres\"", "engine = \"oracle\"")).contains("oracle"));
    let e = err(&GOOD.replace(
        "[credentials.app]",
        "[credentials.app]\npolicy = \"sometimes\"",
    ));
    assert!(e.contains("sometimes"), "{e}");
}

#[test]
fn a_sweep_learns_every_two_seconds_unless_told_and_never_every_zero() {
    let sweep = |extra: &str| {
        format!("{GOOD}\n[targets.pg.sweep]\npattern = \"v-%\"\ninterval = \"5m\"\n{extra}")
    };
    let config = Config::parse(&sweep("")).unwrap();
    let learn = config.targets["pg"].sweep.as_ref().unwrap().learn_interval;
    assert_eq!(learn, Duration::from_secs(2));
    let config = Config::parse(&sweep("learn_interval = \"500ms\"\n")).unwrap();
    let learn = config.targets["pg"].sweep.as_ref().unwrap().learn_interval;
    assert_eq!(learn, Duration::from_millis(500));
    let e = err(&sweep("learn_interval = \"0s\"\n"));
    assert!(
        e.contains("targets.pg.sweep") && e.contains("learn_interval"),
        "{e}"
    );
}

#[test]
fn a_credential_may_be_graceful_within_five_minutes_and_never_cancel() {
    let with =
        |extra: &str| GOOD.replace("[credentials.app]", &format!("[credentials.app]\n{extra}"));
    let config = Config::parse(&with("mode = \"graceful\"\ngrace = \"30s\"")).unwrap();
    let ending = config.credentials["app"].ending();
    assert_eq!(ending.grace(), Duration::from_secs(30));
    assert!(Config::parse(&with("mode = \"graceful\"\ngrace = \"5m\"")).is_ok());
    for (extra, needle) in [
        ("mode = \"cancel\"", "credentials.app.mode"),
        ("mode = \"graceful\"", "credentials.app.grace"),
        (
            "mode = \"graceful\"\ngrace = \"6m\"",
            "credentials.app.grace",
        ),
        ("grace = \"30s\"", "credentials.app.grace"),
        ("mode = \"kill\"", "kill"),
    ] {
        let e = err(&with(extra));
        assert!(e.contains(needle), "{extra}: {e}");
    }
}

#[test]
fn locks_are_off_unless_enabled_and_a_lock_url_needs_them() {
    let config = Config::parse(GOOD).unwrap();
    assert!(!config.targets["pg"].locks && config.targets["pg"].lock_url.is_none());
    let with = |extra: &str| {
        GOOD.replace(
            "url = \"postgres://sever@localhost/postgres\"",
            &format!("url = \"postgres://sever@localhost/postgres\"\n{extra}"),
        )
    };
    let config = Config::parse(&with(
        "locks = true\nlock_url = { env = \"SEVER_LOCK_URL\" }",
    ))
    .unwrap();
    assert!(config.targets["pg"].locks);
    assert_eq!(
        config.targets["pg"].lock_url,
        Some(UrlSource::Secret(SecretRef::Env("SEVER_LOCK_URL".into())))
    );
    assert!(Config::parse(&with("locks = true")).is_ok());
    let e = err(&with("lock_url = \"postgres://locker@localhost/postgres\""));
    assert!(
        e.contains("targets.pg.lock_url") && e.contains("locks = true"),
        "{e}"
    );
}

#[test]
fn metrics_tokens_are_hashes_of_their_own_and_the_collector_ticks_every_15s_by_default() {
    let config = Config::parse(GOOD).unwrap();
    assert!(config.metrics.tokens_sha256.is_empty());
    assert_eq!(config.metrics.sessions_interval, Duration::from_secs(15));
    let with = |body: &str| format!("{GOOD}\n[metrics]\n{body}\n");
    let ok = with(&format!(
        "tokens_sha256 = [\"{}\"]\nsessions_interval = \"200ms\"",
        "A".repeat(64)
    ));
    let config = Config::parse(&ok).unwrap();
    assert_eq!(config.metrics.sessions_interval, Duration::from_millis(200));
    let e = err(&with("tokens_sha256 = [\"abc\"]"));
    assert!(e.contains("metrics.tokens_sha256[0]"), "{e}");
    // The operator's token (GOOD's hash, in another case) is not a scraper's.
    let e = err(&with(&format!("tokens_sha256 = [\"{}\"]", "0".repeat(64))));
    assert!(e.contains("operator's token"), "{e}");
    let twice = format!("tokens_sha256 = [\"{0}\", \"{0}\"]", "b".repeat(64));
    assert!(err(&with(&twice)).contains("metrics.tokens_sha256[1]"));
    assert!(err(&with("sessions_interval = \"0s\"")).contains("metrics.sessions_interval"));
    assert!(err(&with("token = \"x\"")).contains("token"));
}

#[test]
fn the_metrics_listener_is_an_address_of_its_own_and_a_public_one_is_warned_about() {
    let server = |body: &str| format!("{GOOD}\n[server]\n{body}\n");
    let e = err(&server(
        "listen = \"127.0.0.1:9000\"\nmetrics_listen = \"127.0.0.1:9000\"",
    ));
    assert!(e.contains("server.metrics_listen"), "{e}");
    let e = err(&server(
        "operator_listen = \"127.0.0.1:9001\"\nmetrics_listen = \"127.0.0.1:9001\"",
    ));
    assert!(e.contains("server.metrics_listen"), "{e}");
    let warned = |text: &str, what: &str| {
        Config::parse(text)
            .unwrap()
            .warnings()
            .iter()
            .any(|w| w.contains(what))
    };
    // Neither a listener nor a token: /metrics refuses every call.
    assert!(warned(GOOD, "GET /metrics refuses every call"));
    let token = format!(
        "{GOOD}\n[metrics]\ntokens_sha256 = [\"{}\"]\n",
        "c".repeat(64)
    );
    assert!(!warned(&token, "GET /metrics"));
    for (addr, public) in [
        ("127.0.0.1:9100", false),
        ("10.1.2.3:9100", false),
        ("[::1]:9100", false),
        ("[fd00::1]:9100", false),
        ("0.0.0.0:9100", true),
        ("[::]:9100", true),
        ("203.0.113.7:9100", true),
    ] {
        let text = server(&format!("metrics_listen = \"{addr}\""));
        assert!(!warned(&text, "refuses every call"), "{addr}");
        assert_eq!(warned(&text, "not a loopback or private"), public, "{addr}");
    }
}
