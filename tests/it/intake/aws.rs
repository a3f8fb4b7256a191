//! AWS Secrets Manager rotations end to end: real PostgreSQL, a real `moto_server` speaking
//! the Secrets Manager API, and the real server, through each intake path (Lambda hook,
//! EventBridge API destination, SNS), with rotations simulated the way AWS's templates do.

use std::sync::Arc;
use std::time::Duration;

use crate::support::sever::{
    API_KEY, SECRET, TestServer, Workspace, create_admin, db_now, now, pids, sorted,
};
use crate::support::sns::TestSns;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::moto::TestMoto;
use sever_testkit::pg::TestPostgres;

const GONE: Duration = Duration::from_secs(5);
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:sever-rotations";

fn rds_secret(pg: &TestPostgres, username: &str, password: &str) -> Value {
    json!({"engine": "postgres", "host": "127.0.0.1", "port": pg.port(), "username": username,
           "password": password, "dbname": "postgres"})
}

/// A rotation the way the single-user template does it: new password in the database, then
/// the new version staged and made current in Secrets Manager.
async fn rotate(
    pg: &TestPostgres,
    moto: &TestMoto,
    arn: &str,
    login: &str,
    password: &str,
) -> String {
    pg.exec(&format!("ALTER ROLE {login} PASSWORD '{password}'"))
        .await;
    moto.rotate(arn, &rds_secret(pg, login, password)).await
}

struct Env {
    pg: TestPostgres,
    moto: TestMoto,
    sns: Arc<TestSns>,
    ws: Workspace,
    server: TestServer,
}

/// PostgreSQL with sever's admin and `logins`, moto, and sever configured with `credentials`.
async fn env(logins: &[&str], credentials: &str) -> Env {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    for login in logins {
        pg.create_login(login, "pw0").await;
    }
    let moto = TestMoto::start();
    let sns = TestSns::new();
    let ws = Workspace::new();
    let config = ws.target_config(ws.config(), "main", &pg);
    let config = ws
        .aws(config, &moto.endpoint(), &[TOPIC])
        .merge_toml(credentials)
        .toml();
    let options = sever::RunOptions {
        sns_http: sns.clone(),
        ..Default::default()
    };
    let server = TestServer::start_with(&ws.write_config(&config), options).await;
    Env {
        pg,
        moto,
        sns,
        ws,
        server,
    }
}

impl Env {
    async fn hook(&self, secret_id: &str, token: &str, step: &str) -> (StatusCode, Value) {
        let body = serde_json::to_vec(
            &json!({"SecretId": secret_id, "ClientRequestToken": token, "Step": step}),
        )
        .unwrap();
        let id = format!("sm_{token}_{step}");
        let r = self
            .server
            .post_signed("/v1/events/aws?wait=true", &body, &id, now(), SECRET)
            .await;
        (r.status(), r.json().await.unwrap())
    }

    async fn eventbridge(&self, event: &Value, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = self
            .server
            .client
            .post(self.server.url("/v1/events/aws?wait=true"))
            .json(event);
        if let Some(key) = key {
            request = request.header("x-sever-api-key", key);
        }
        let r = request.send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn sns(&self, body: Vec<u8>, kind: &str) -> (StatusCode, Value) {
        let r = self
            .server
            .client
            .post(self.server.url("/v1/events/aws?wait=true"))
            .header("x-amz-sns-message-type", kind)
            .header("content-type", "text/plain; charset=UTF-8")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn records(&self, kind: &str) -> Vec<Value> {
        self.ws.records(kind).await
    }
}

fn label_updated(arn: &str, version: &str, time: &str) -> Value {
    json!({
        "version": "0", "id": format!("evt-{version}"), "detail-type": "Secret Label Updated",
        "source": "aws.secretsmanager", "account": "123456789012", "time": time,
        "region": "us-east-1", "resources": [arn],
        "detail": {"labelUpdated": "AWSCURRENT", "versionId": version},
    })
}

#[tokio::test]
async fn lambda_hook_rotation_then_eventbridge_for_the_same_rotation_acts_once() {
    // The login is not named in the config: it comes from the secret, and the target is the
    // one whose host and port the secret names.
    let e = env(
        &["app", "bystander"],
        "[credentials.orders]\n[credentials.orders.aws]\nsecret = \"prod/orders\"\n",
    )
    .await;
    let (arn, _) = e
        .moto
        .create_secret("prod/orders", &rds_secret(&e.pg, "app", "pw0"))
        .await;
    let old = e.pg.open_sessions("app", "pw0", 2).await;
    let bystander = e.pg.open_sessions("bystander", "pw0", 1).await;

    // A lambda may call at every step; only finishSecret acts.
    let (status, body) = e.hook(&arn, "tok-create", "createSecret").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("acknowledged")),
        "{body}"
    );

    let version = rotate(&e.pg, &e.moto, &arn, "app", "pw1").await;
    let (status, report) = e.hook(&arn, &version, "finishSecret").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(report["origin"], "aws");
    assert_eq!(report["source"], "lambda_hook");
    assert_eq!(report["version_id"], version.as_str());
    assert_eq!(report["current_user"], "app");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&old));
    for pid in &old {
        assert!(e.pg.wait_gone(*pid, GONE).await);
    }
    assert!(e.pg.is_alive(bystander[0]).await);

    // EventBridge reports the same rotation: recognised, nothing terminated twice.
    let after = e.pg.open_sessions("app", "pw1", 1).await;
    let (status, body) = e
        .eventbridge(
            &label_updated(&arn, &version, "2026-11-24T10:00:00Z"),
            Some(API_KEY),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "duplicate");
    assert_eq!(body["action_id"], report["action_id"]);
    assert!(e.pg.is_alive(after[0]).await);

    assert_eq!(e.records("event.acknowledged").await.len(), 1);
    assert_eq!(e.records("event.duplicate").await.len(), 1);
    let planned = e.records("action.planned").await;
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0]["secret_arn"], arn.as_str());
    // The secret's password never reaches the audit trail.
    let trail = e.ws.audit().await.list(&Default::default()).await.unwrap();
    assert!(
        trail
            .iter()
            .all(|r| !r.detail.contains("pw1") && !r.detail.contains("pw0"))
    );
    e.server.stop().await;
}

#[tokio::test]
async fn eventbridge_cloudtrail_event_uses_the_event_time_as_cutoff() {
    let e = env(
        &["app"],
        "[credentials.orders]\nlogins = [{ target = \"main\", login = \"app\" }]\n[credentials.orders.aws]\nsecret = \"prod/orders\"\n",
    )
    .await;
    let (arn, _) = e
        .moto
        .create_secret("prod/orders", &rds_secret(&e.pg, "app", "pw0"))
        .await;
    let old = e.pg.open_sessions("app", "pw0", 2).await;
    rotate(&e.pg, &e.moto, &arn, "app", "pw1").await;
    let (mut admin, _) = e.pg.session("postgres", "", "postgres", "").await;
    let moved_at = db_now(&mut admin).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let newer = e.pg.open_sessions("app", "pw1", 1).await;

    let event = json!({
        "version": "0", "id": "ct-1", "detail-type": "AWS Service Event via CloudTrail",
        "source": "aws.secretsmanager", "account": "123456789012", "time": moved_at,
        "region": "us-east-1", "resources": [],
        "detail": {"eventName": "RotationSucceeded", "eventSource": "secretsmanager.amazonaws.com",
                   "additionalEventData": {"SecretId": arn}},
    });
    let (status, report) = e.eventbridge(&event, Some(API_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["source"], "eventbridge");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&old));
    for pid in &old {
        assert!(e.pg.wait_gone(*pid, GONE).await);
    }
    assert!(
        e.pg.is_alive(newer[0]).await,
        "a session opened after the rotation must survive"
    );
    e.server.stop().await;
}

#[tokio::test]
async fn alternating_users_keep_or_terminate_the_previous_user_as_configured() {
    let credentials = "\
        [credentials.keep]\nlogins = [{ target = \"main\", login = \"u1\" }, { target = \"main\", login = \"u1_clone\" }]\n\
        [credentials.keep.aws]\nsecret = \"alt/keep\"\n\
        [credentials.term]\nlogins = [{ target = \"main\", login = \"u2\" }, { target = \"main\", login = \"u2_clone\" }]\n\
        [credentials.term.aws]\nsecret = \"alt/term\"\nprevious_user = \"terminate\"\n";
    let e = env(&["u1", "u1_clone", "u2", "u2_clone"], credentials).await;
    for (name, user) in [("alt/keep", "u1"), ("alt/term", "u2")] {
        let clone = format!("{user}_clone");
        let (arn, _) = e
            .moto
            .create_secret(name, &rds_secret(&e.pg, user, "pw0"))
            .await;
        let user_sessions = e.pg.open_sessions(user, "pw0", 1).await;
        let clone_sessions = e.pg.open_sessions(&clone, "pw0", 1).await;
        // The template sets a new password on the clone and makes the clone current.
        let version = rotate(&e.pg, &e.moto, &arn, &clone, "pw1").await;
        let (status, report) = e.hook(&arn, &version, "finishSecret").await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["current_user"], clone.as_str());
        assert_eq!(report["previous_user"]["login"], user, "{report}");
        assert!(
            e.pg.wait_gone(clone_sessions[0], GONE).await,
            "the clone's pre-rotation session must end"
        );
        if user == "u1" {
            assert_eq!(report["previous_user"]["decision"], "keep");
            assert_eq!(pids(&report, "main", "terminated"), sorted(&clone_sessions));
            assert!(
                e.pg.is_alive(user_sessions[0]).await,
                "keep: the previous user stays"
            );
        } else {
            assert_eq!(report["previous_user"]["decision"], "terminate");
            let both: Vec<i32> = user_sessions
                .iter()
                .chain(&clone_sessions)
                .copied()
                .collect();
            assert_eq!(pids(&report, "main", "terminated"), sorted(&both));
            assert!(
                e.pg.wait_gone(user_sessions[0], GONE).await,
                "terminate: the previous user goes too"
            );
        }
    }
    // Both decisions are on record.
    let planned = e.records("action.planned").await;
    let decisions: Vec<&str> = planned
        .iter()
        .map(|p| p["previous_user"]["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["keep", "terminate"]);
    e.server.stop().await;
}

#[tokio::test]
async fn unmapped_secrets_other_events_and_bad_auth_change_nothing() {
    let e = env(
        &["app"],
        "[credentials.orders]\n[credentials.orders.aws]\nsecret = \"prod/orders\"\n",
    )
    .await;
    let (arn, first_version) = e
        .moto
        .create_secret("prod/orders", &rds_secret(&e.pg, "app", "pw0"))
        .await;
    let (other_arn, _) = e
        .moto
        .create_secret("prod/other", &rds_secret(&e.pg, "app", "pw0"))
        .await;
    let alive = e.pg.open_sessions("app", "pw0", 1).await;

    // Verified but not ours, or not a rotation: acknowledged, audited, ignored.
    let (status, body) = e
        .eventbridge(
            &label_updated(&other_arn, "v9", "2026-11-24T10:00:00Z"),
            Some(API_KEY),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ignored")),
        "{body}"
    );
    let mut delete = label_updated(&arn, "v9", "2026-11-24T10:00:00Z");
    delete["detail-type"] = json!("AWS API Call via CloudTrail");
    delete["detail"] = json!({"eventName": "DeleteSecret", "requestParameters": {"secretId": arn}});
    let (status, body) = e.eventbridge(&delete, Some(API_KEY)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ignored")),
        "{body}"
    );
    assert_eq!(e.records("event.ignored").await.len(), 2);

    // Refused, each with its own code.
    let rotation = label_updated(&arn, &first_version, "2026-11-24T10:00:00Z");
    let (status, body) = e.eventbridge(&rotation, Some("wrong-key")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
    );
    let (status, body) = e.eventbridge(&rotation, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_credentials"))
    );
    let body = serde_json::to_vec(
        &json!({"SecretId": arn, "ClientRequestToken": first_version, "Step": "finishSecret"}),
    )
    .unwrap();
    let r = e
        .server
        .post_signed(
            "/v1/events/aws",
            &body,
            "sm_bad",
            now(),
            crate::support::sever::WRONG_SECRET,
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A hook call for a version that is not AWSCURRENT (called too early) is refused.
    let (status, body) = e
        .hook(&arn, "not-the-current-version", "finishSecret")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("version_not_current")),
        "{body}"
    );
    // SNS: a tampered signature, and a validly signed message from a topic nobody configured.
    let mut tampered: Value =
        serde_json::from_slice(&e.sns.notification(TOPIC, "m1", &rotation)).unwrap();
    tampered["Message"] = json!(label_updated(&arn, "forged", "2026-11-24T10:00:00Z").to_string());
    let (status, body) = e
        .sns(serde_json::to_vec(&tampered).unwrap(), "Notification")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_sns_signature"))
    );
    // A validly signed message older than the replay window cannot be replayed.
    let old_message = e
        .sns
        .notification_at(TOPIC, "m-old", &rotation, "2020-01-01T00:00:00.000Z");
    let (status, body) = e.sns(old_message, "Notification").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("stale_sns_message"))
    );
    let stranger = "arn:aws:sns:us-east-1:999999999999:not-ours";
    let (status, body) = e
        .sns(
            e.sns.notification(stranger, "m2", &rotation),
            "Notification",
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("untrusted_topic"))
    );
    let (status, _) = e
        .sns(
            e.sns.confirmation(stranger, "t-stranger"),
            "SubscriptionConfirmation",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        e.sns.confirmations().is_empty(),
        "a stranger's subscription must not be confirmed"
    );

    let rejected = e.records("request.rejected").await;
    let codes: Vec<&str> = rejected
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "invalid_api_key",
            "missing_credentials",
            "invalid_signature",
            "version_not_current",
            "invalid_sns_signature",
            "stale_sns_message",
            "untrusted_topic",
            "untrusted_topic"
        ]
    );
    assert!(e.records("action.planned").await.is_empty());
    assert!(e.pg.is_alive(alive[0]).await);
    e.server.stop().await;
}

#[tokio::test]
async fn secrets_manager_unreachable_is_reported_audited_and_leaves_the_delivery_retryable() {
    let e = env(
        &["app"],
        "[credentials.orders]\n[credentials.orders.aws]\nsecret = \"prod/orders\"\n",
    )
    .await;
    let (arn, _) = e
        .moto
        .create_secret("prod/orders", &rds_secret(&e.pg, "app", "pw0"))
        .await;
    let alive = e.pg.open_sessions("app", "pw0", 1).await;
    let version = rotate(&e.pg, &e.moto, &arn, "app", "pw1").await;
    e.moto.stop();

    let (status, body) = e.hook(&arn, &version, "finishSecret").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "secrets_manager_unavailable");
    // The same delivery again is not a replay: it was never accepted.
    let (status, body) = e.hook(&arn, &version, "finishSecret").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let rejected = e.records("request.rejected").await;
    assert_eq!(rejected.len(), 2);
    assert!(
        rejected
            .iter()
            .all(|r| r["code"] == "secrets_manager_unavailable")
    );
    assert!(
        e.records("action.planned").await.is_empty(),
        "nothing half-done"
    );
    assert!(e.pg.is_alive(alive[0]).await);
    e.server.stop().await;
}

#[tokio::test]
async fn sns_confirms_configured_topics_and_delivers_rotations_once() {
    let e = env(
        &["app"],
        "[credentials.orders]\n[credentials.orders.aws]\nsecret = \"prod/orders\"\n",
    )
    .await;
    let (status, body) = e
        .sns(e.sns.confirmation(TOPIC, "t-1"), "SubscriptionConfirmation")
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("confirmed")),
        "{body}"
    );
    assert_eq!(e.sns.confirmations().len(), 1);
    assert!(e.sns.confirmations()[0].contains("Token=t-1"));

    let (arn, _) = e
        .moto
        .create_secret("prod/orders", &rds_secret(&e.pg, "app", "pw0"))
        .await;
    let old = e.pg.open_sessions("app", "pw0", 2).await;
    let version = rotate(&e.pg, &e.moto, &arn, "app", "pw1").await;
    let (mut admin, _) = e.pg.session("postgres", "", "postgres", "").await;
    let event = label_updated(&arn, &version, &db_now(&mut admin).await);
    let message = e.sns.notification(TOPIC, "msg-1", &event);
    let (status, report) = e.sns(message.clone(), "Notification").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["source"], "sns");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&old));
    // SNS redelivers the same message: acknowledged as a duplicate.
    let (status, body) = e.sns(message, "Notification").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("duplicate")),
        "{body}"
    );
    assert_eq!(e.records("action.planned").await.len(), 1);
    e.server.stop().await;
}

#[tokio::test]
async fn the_shipped_python_lambda_hook_drives_a_rotation() {
    let e = env(
        &["app"],
        "[credentials.orders]\n[credentials.orders.aws]\nsecret = \"prod/orders\"\n",
    )
    .await;
    let (arn, _) = e
        .moto
        .create_secret("prod/orders", &rds_secret(&e.pg, "app", "pw0"))
        .await;
    let old = e.pg.open_sessions("app", "pw0", 2).await;
    let version = rotate(&e.pg, &e.moto, &arn, "app", "pw1").await;

    // Exactly the file a Lambda author copies, run as its CLI.
    let hook = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/integrations/aws/sever_hook.py"
    );
    let run = || {
        tokio::process::Command::new("python3")
            .args([
                hook,
                "--secret-id",
                &arn,
                "--token",
                &version,
                "--timeout",
                "20",
            ])
            .env("SEVER_URL", e.server.url("/v1/events/aws?wait=true"))
            .env("SEVER_WEBHOOK_SECRET", SECRET)
            .output()
    };
    let out = run().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains(SECRET),
        "the hook logged its signing secret"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted(&old));
    for pid in &old {
        assert!(e.pg.wait_gone(*pid, GONE).await);
    }
    // A retried call carries the same webhook-id: sever refuses the replay, the hook is content.
    let out = run().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(e.records("action.planned").await.len(), 1);
    e.server.stop().await;
}
