//! Proves the OpenBao test kit (tests/kit/src/openbao.rs) against the real server: plain and
//! TLS starts, extra HTTPS listeners with chosen certificates, static-role rotation, dynamic
//! credentials, kv-v2, AppRole, namespaces, and the answers sever's error handling relies on.

use std::time::Duration;

use serde_json::json;
use sever_testkit::certs::{TestCa, Validity};
use sever_testkit::openbao::{AppRoleOptions, BaoOptions, TestBao, TlsListener, TokenOptions};
use sever_testkit::pg::TestPostgres;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

/// Whether `login`/`password` can open a session on `pg`.
async fn can_log_in(pg: &TestPostgres, login: &str, password: &str) -> bool {
    let opts = PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(pg.port())
        .username(login)
        .password(password)
        .database("postgres")
        .ssl_mode(PgSslMode::Disable);
    match PgConnection::connect_with(&opts).await {
        Ok(conn) => {
            let _ = conn.close().await;
            true
        }
        Err(_) => false,
    }
}

/// Whether a PostgreSQL role named `login` exists.
async fn role_exists(pg: &TestPostgres, login: &str) -> bool {
    let mut conn = PgConnection::connect(&pg.superuser_url("postgres"))
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(login)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    exists
}

/// The TLS error text a client trusting `ca` gets from `url`.
async fn tls_error(ca: &std::path::Path, url: &str) -> String {
    sever_testkit::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = client
        .get(format!("{url}/v1/sys/health"))
        .send()
        .await
        .expect_err("the TLS handshake should fail");
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[tokio::test]
async fn plain_and_tls_servers_start_answer_and_stop() {
    let plain = TestBao::start().await;
    assert!(plain.addr().starts_with("http://127.0.0.1:"));
    let (status, health) = plain.get("", "sys/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["version"], "2.7.2");
    assert_eq!(health["sealed"], false);

    // HTTPS with the generated CA; extra listeners with a wrong name and an expired
    // certificate from our own CA.
    let ca = TestCa::new("sever test CA");
    let wrong_name = ca.issue(&["DNS:wrong.example"], Validity::Current);
    let expired = ca.issue(&["IP:127.0.0.1"], Validity::Expired);
    let tls = TestBao::start_with(BaoOptions {
        tls: true,
        extra_listeners: vec![
            TlsListener {
                cert_pem: wrong_name.cert_pem.clone(),
                key_pem: wrong_name.key_pem.clone(),
            },
            TlsListener {
                cert_pem: expired.cert_pem.clone(),
                key_pem: expired.key_pem.clone(),
            },
        ],
    })
    .await;
    assert!(tls.addr().starts_with("https://127.0.0.1:"));
    assert!(tls.ca_path().ends_with("tls/vault-ca.pem"));
    let (status, _) = tls.get("", "sys/health").await;
    assert_eq!(status, 200);
    let mismatch = tls_error(&ca.cert_path(), &tls.extra_addr(0)).await;
    assert!(mismatch.contains("not valid for name"), "{mismatch}");
    let stale = tls_error(&ca.cert_path(), &tls.extra_addr(1)).await;
    assert!(stale.contains("expired"), "{stale}");
    // The main listener's CA is not ours: unknown issuer.
    let unknown = tls_error(&ca.cert_path(), &tls.addr()).await;
    assert!(unknown.contains("UnknownIssuer"), "{unknown}");

    // Stopped: nothing answers any more.
    let addr = plain.addr();
    plain.stop();
    plain.stop();
    let gone = reqwest::Client::new()
        .get(format!("{addr}/v1/sys/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(gone.is_err(), "{gone:?}");
}

#[tokio::test]
async fn static_role_rotation_changes_the_password_and_advances_last_vault_rotation() {
    let pg = TestPostgres::start();
    let bao = TestBao::start().await;
    bao.enable_database("", "database", &pg).await;
    pg.create_login("app", "initial").await;
    bao.create_static_role("", "database", "app", "app", "1h")
        .await;
    let first = bao.read_static_role("", "database", "app").await;
    assert_eq!(first.username, "app");
    assert_eq!(first.data["rotation_period"], 3600);
    let (user, old_password) = bao.static_creds("", "database", "app").await;
    assert_eq!(user, "app");
    assert!(!can_log_in(&pg, "app", "initial").await, "set on creation");
    assert!(can_log_in(&pg, "app", &old_password).await);

    bao.rotate_role("", "database", "app").await;
    let second = bao.read_static_role("", "database", "app").await;
    assert!(
        second.last_vault_rotation > first.last_vault_rotation,
        "{first:?} then {second:?}"
    );
    assert!(second.last_vault_rotation_raw.ends_with('Z'));
    let (_, new_password) = bao.static_creds("", "database", "app").await;
    assert_ne!(new_password, old_password);
    assert!(!can_log_in(&pg, "app", &old_password).await);
    assert!(can_log_in(&pg, "app", &new_password).await);

    // What a mistyped mount and an empty one answer (sever must tell them apart).
    let (status, missing) = bao.list("", "databse/static-roles").await;
    assert_eq!(status, 404);
    assert!(
        missing["errors"][0]
            .as_str()
            .unwrap()
            .contains("no handler for route"),
        "{missing}"
    );
    bao.enable_database("", "empty", &pg).await;
    let (status, empty) = bao.list("", "empty/static-roles").await;
    assert_eq!((status.as_u16(), empty), (404, json!({"errors": []})));
    let (status, listed) = bao.list("", "database/static-roles").await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"]["keys"], json!(["app"]));
    let (status, denied) = bao
        .request("not-a-token", "", "GET", "database/static-roles/app", None)
        .await;
    assert_eq!(
        (status.as_u16(), denied),
        (403, json!({"errors": ["permission denied"]}))
    );
}

#[tokio::test]
async fn dynamic_creds_log_in_and_their_role_goes_on_revoke_and_on_expiry() {
    let pg = TestPostgres::start();
    let bao = TestBao::start().await;
    bao.enable_database("", "database", &pg).await;
    bao.create_dynamic_role("", "database", "app", "1h", "2h")
        .await;
    bao.create_dynamic_role("", "database", "brief", "1s", "2s")
        .await;

    let creds = bao.dynamic_creds("", "database", "app").await;
    assert!(creds.username.starts_with("v-token-app-"), "{creds:?}");
    assert!(creds.lease_id.starts_with("database/creds/app/"));
    assert_eq!(creds.lease_duration, 3600);
    let (session, _pid) = pg
        .session(&creds.username, &creds.password, "postgres", "svc")
        .await;
    bao.revoke_lease("", &creds.lease_id).await;
    // Revocation drops the login at once; its session stays (PostgreSQL does not end it).
    assert!(!role_exists(&pg, &creds.username).await);
    assert!(!can_log_in(&pg, &creds.username, &creds.password).await);
    drop(session);

    // An expired lease is revoked by OpenBao itself shortly after its TTL.
    let brief = bao.dynamic_creds("", "database", "brief").await;
    assert!(role_exists(&pg, &brief.username).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while role_exists(&pg, &brief.username).await {
        assert!(std::time::Instant::now() < deadline, "never revoked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kv2_versions_metadata_and_namespace_isolation() {
    let bao = TestBao::start().await;
    bao.enable_kv2("", "secret").await;
    assert_eq!(
        bao.kv_put("", "secret", "app/db", &json!({"password": "a"}))
            .await,
        1
    );
    assert_eq!(
        bao.kv_put("", "secret", "app/db", &json!({"password": "b"}))
            .await,
        2
    );
    let meta = bao.kv_metadata("", "secret", "app/db").await;
    assert_eq!(meta["current_version"], 2);
    assert!(meta["versions"]["2"]["created_time"].is_string(), "{meta}");

    bao.create_namespace("team").await;
    bao.enable_kv2("team", "secret").await;
    assert_eq!(
        bao.kv_put("team", "secret", "app/db", &json!({"password": "c"}))
            .await,
        1
    );
    // The same path in two namespaces: two secrets.
    assert_eq!(
        bao.kv_metadata("team", "secret", "app/db").await["current_version"],
        1
    );
    assert_eq!(
        bao.kv_metadata("", "secret", "app/db").await["current_version"],
        2
    );
    let (status, _) = bao.get("team", "secret/metadata/app/other").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn approle_and_token_auth_issue_tokens_with_the_asked_ttls() {
    let bao = TestBao::start().await;
    bao.write_policy(
        "",
        "reader",
        "path \"secret/*\" { capabilities = [\"read\"] }",
    )
    .await
    .unwrap();
    let (role_id, secret_id) = bao
        .enable_approle(
            "",
            "sever",
            &["reader"],
            &AppRoleOptions {
                token_ttl: "3s".into(),
                token_max_ttl: "10s".into(),
                ..AppRoleOptions::default()
            },
        )
        .await;
    let login = bao.approle_login("", &role_id, &secret_id).await;
    assert_eq!(login.lease_duration, 3);
    assert!(login.renewable);
    assert!(
        login.auth["policies"]
            .as_array()
            .unwrap()
            .contains(&json!("reader"))
    );
    let (status, me) = bao.lookup_self("", &login.token).await;
    assert_eq!(status, 200, "{me}");
    assert!(me["data"]["ttl"].as_u64().unwrap() <= 3);
    let (status, renewed) = bao
        .request(
            &login.token,
            "",
            "POST",
            "auth/token/renew-self",
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");

    // A second AppRole role reuses the mount: batch tokens, not renewable.
    let (role_id, secret_id) = bao
        .enable_approle(
            "",
            "batchy",
            &["reader"],
            &AppRoleOptions {
                token_ttl: "4s".into(),
                token_type: "batch".into(),
                ..AppRoleOptions::default()
            },
        )
        .await;
    let batch = bao.approle_login("", &role_id, &secret_id).await;
    assert!(batch.token.starts_with("b."), "{batch:?}");
    assert!(!batch.renewable);

    let token = bao
        .create_token(
            "",
            &TokenOptions {
                policies: vec!["reader".into()],
                ttl: "5s".into(),
                ..TokenOptions::default()
            },
        )
        .await;
    assert_eq!(token.lease_duration, 5);
    assert!(token.token.starts_with("s."));
    assert_eq!(bao.lookup_self("", &token.token).await.0, 200);
    bao.revoke_token("", &token.token).await;
    assert_eq!(bao.lookup_self("", &token.token).await.0, 403);

    // Refused policy: the write's Err names the cause.
    let refused = bao
        .write_policy(
            "",
            "events",
            "path \"sys/events/subscribe/*\" {\n  capabilities = [\"read\"]\n  \
             subscribe_event_types = [\"*\"]\n}\n",
        )
        .await
        .unwrap_err();
    assert!(refused.contains("subscribe_event_types"), "{refused}");
}
