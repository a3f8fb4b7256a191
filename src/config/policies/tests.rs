use super::*;

const TARGETS: &str = r#"
protected_logins = ["postgres"]
[targets.pg]
engine = "postgres"
url = "postgres://sever@h/db"
[targets.ms]
engine = "sqlserver"
url = "mssql://sever@h3/db"
"#;

fn parse(policy: &str) -> Result<Config, String> {
    Config::parse(&format!("{TARGETS}\n[[policies]]\n{policy}")).map_err(|e| e.to_string())
}

fn refused(policy: &str, needle: &str) {
    let e = parse(policy).unwrap_err();
    assert!(e.contains(needle), "{policy}\n=> {e}");
}

#[test]
fn a_full_policy_parses_with_its_words() {
    let c = parse(
        r#"
        name = "idle-tx"
        targets = ["pg"]
        selector = { logins = ["app"], states = ["idle_in_transaction"], in_transaction_for = "15m", exclude_application_names = ["pg_dump"] }
        when = { matching_at_least = 50 }
        victims = "idlest_first"
        max_per_run = 10
        mode = "graceful"
        grace = "30s"
        enforcement = "enforce"
        interval = "1m"
        "#,
    )
    .unwrap();
    let p = &c.policies[0];
    assert_eq!(p.when, When::MatchingAtLeast(50));
    assert_eq!(p.victims, Victims::IdlestFirst);
    assert_eq!(p.ending().unwrap().grace(), Duration::from_secs(30));
    assert!(p.ends_sessions());
    assert_eq!(p.pause_after, 10);
    assert_eq!(p.reason(), "policy idle-tx");
    assert_eq!(p.target_ids(&c), ["pg"]);
    let c = parse(
        r#"
        name = "load"
        targets = "all"
        all_logins = true
        selector = { states = ["idle"] }
        when = { connections_above_percent_of_max = 80 }
        interval = "30s"
        "#,
    );
    // "all" reaches the SQL Server target, where a share of the maximum never fires.
    assert!(c.unwrap_err().contains("SQL Server"));
    let c = parse(
        r#"
        name = "always"
        targets = ["pg"]
        selector = { logins = ["app"] }
        when = "always"
        mode = "report"
        enforcement = "enforce"
        interval = "30s"
        "#,
    )
    .unwrap();
    assert!(!c.policies[0].ends_sessions());
    assert!(c.policies[0].ending().is_none());
}

#[test]
fn guard_rails_and_bad_values_are_refused_at_load() {
    let base = r#"name = "p"
        targets = ["pg"]
        interval = "1m""#;
    let with = |more: &str| format!("{base}\n{more}");
    refused(&with(r#"enforcement = "enforce""#), "names its logins");
    refused(
        &with("enforcement = \"enforce\"\nselector = { logins = [\"app\"] }"),
        "max_per_run",
    );
    refused(
        &with(
            "enforcement = \"enforce\"\nall_logins = true\nmax_per_run = 3\nselector = { exclude_logins = [\"x\"] }",
        ),
        "narrows",
    );
    refused(
        &with(
            "enforcement = \"enforce\"\nall_logins = true\nmax_per_run = 3\nselector = { application_names = [\"*\"] }",
        ),
        "narrows",
    );
    assert!(
        parse(&with(
            "enforcement = \"enforce\"\nall_logins = true\nmax_per_run = 3\nselector = { databases = [\"orders\"] }"
        ))
        .is_ok()
    );
    // Observing may be broad: it ends nothing.
    assert!(parse(&with("all_logins = true")).is_ok());
    refused(
        &with("all_logins = true\nselector = { logins = [\"a\"] }"),
        "exclude each other",
    );
    refused(
        &with("selector = { logins = [\"app\"] }\nmax_per_run = 0\nenforcement = \"enforce\""),
        "positive",
    );
    refused(&with("selector = { logins = [\"postgres\"] }"), "protected");
    refused(
        &with("selector = { logins = [\"app\"] }\nwhen = { matching_at_least = 0 }"),
        "positive",
    );
    refused(
        &with(
            "selector = { logins = [\"app\"] }\nwhen = { connections_above_percent_of_max = 101 }",
        ),
        "percentage",
    );
    refused(
        &with(
            "all_logins = true\nselector = { databases = [\"d\"] }\nwhen = { login_sessions_above = 5 }",
        ),
        "name them",
    );
    refused(
        &with("selector = { logins = [\"app\"] }\nwhen = \"sometimes\""),
        "unknown variant",
    );
    refused(
        &with("selector = { logins = [\"app\"] }\nmode = \"graceful\""),
        "grace",
    );
    refused(
        &with("selector = { logins = [\"app\"] }\nmode = \"report\"\ngrace = \"5s\""),
        "only for mode graceful",
    );
    refused(
        &with("selector = { logins = [\"app\"] }\nwindows = [\"nights\"]"),
        "no [[windows]]",
    );
    refused(
        &with("selector = { logins = [\"app\"], exclude_login = [\"x\"] }"),
        "exclude_login",
    );
    refused(
        &with("selector = { logins = [\"app\"] }\nvictim = \"all\""),
        "victim",
    );
    refused(
        r#"name = "p"
        targets = ["nope"]
        interval = "1m"
        selector = { logins = ["app"] }"#,
        "no target",
    );
    refused(
        r#"name = "p"
        targets = ["ms"]
        interval = "1m"
        mode = "cancel"
        selector = { logins = ["app"] }"#,
        "SQL Server",
    );
    refused(
        r#"name = "sweep:pg"
        targets = ["pg"]
        interval = "1m"
        selector = { logins = ["app"] }"#,
        "sweep",
    );
    refused(
        &with("selector = { logins = [\"app\"] }\ninterval = \"10ms\""),
        "duplicate key",
    );
    refused(
        r#"name = "p"
        targets = ["pg"]
        interval = "10ms"
        selector = { logins = ["app"] }"#,
        "at least 1s",
    );
    let twice = format!(
        "{TARGETS}\n[[policies]]\n{base}\nselector = {{ logins = [\"a\"] }}\n[[policies]]\n{base}\nselector = {{ logins = [\"a\"] }}"
    );
    assert!(
        Config::parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("two policies")
    );
}

#[test]
fn a_policy_naming_single_sessions_is_refused() {
    refused(
        r#"
        name = "one"
        targets = ["pg"]
        selector = { logins = ["app"], sessions = ["123@2026-12-07T01:02:03.456789Z"] }
        interval = "1m"
        "#,
        "selector.sessions",
    );
}
