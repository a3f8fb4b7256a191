//! Self-test of the moto harness: a throwaway moto_server stands in for AWS Secrets Manager,
//! a rotation is simulated the way AWS's rotation Lambdas do it, and a stopped server fails fast.

use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, SdkError};
use serde_json::{Value, json};
use sever_testkit::moto::TestMoto;

fn password(secret_string: &str) -> String {
    let v: Value = serde_json::from_str(secret_string).expect("SecretString is JSON");
    v["password"]
        .as_str()
        .expect("password is a string")
        .to_string()
}

/// The harness client, with fast failure: no retries, short connect and operation timeouts.
fn quick_client(moto: &TestMoto) -> Client {
    let config = moto
        .client()
        .config()
        .to_builder()
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_timeout(Duration::from_secs(3))
                .build(),
        )
        .build();
    Client::from_conf(config)
}

#[tokio::test]
async fn moto_rotation_is_seen_and_stopped_server_fails_fast() {
    let started = Instant::now();
    let moto = TestMoto::start();
    println!(
        "moto_server up on {} in {:?}",
        moto.endpoint(),
        started.elapsed()
    );
    assert_eq!(moto.endpoint(), format!("http://127.0.0.1:{}", moto.port()));

    let name = "sever/test/app-db";
    let original = json!({
        "engine": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "username": "app",
        "password": "p1",
        "dbname": "postgres"
    });
    let (arn, v1) = moto.create_secret(name, &original).await;
    println!("ARN: {arn}\ninitial VersionId: {v1}");
    assert!(
        arn.starts_with(&format!(
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}"
        )),
        "unexpected ARN {arn}"
    );

    let (cur, value) = moto.read(name, "AWSCURRENT").await;
    assert_eq!(cur, v1);
    assert_eq!(
        serde_json::from_str::<Value>(&value).unwrap(),
        original,
        "SecretString round-trips"
    );

    // DescribeSecret by name and by ARN both find it.
    let client = moto.client();
    for id in [name, arn.as_str()] {
        let d = client
            .describe_secret()
            .secret_id(id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("describe_secret({id}): {}", DisplayErrorContext(&e)));
        assert_eq!(d.arn(), Some(arn.as_str()), "describe_secret({id}) ARN");
        assert_eq!(d.name(), Some(name), "describe_secret({id}) name");
    }

    // Rotate, the way the rotation Lambda templates do it.
    let mut rotated = original.clone();
    rotated["password"] = json!("p2");
    let v2 = moto.rotate(&arn, &rotated).await;
    println!("rotated VersionId: {v2}");
    assert_ne!(v2, v1);

    let (cur, value) = moto.read(name, "AWSCURRENT").await;
    assert_eq!(
        (cur.as_str(), password(&value).as_str()),
        (v2.as_str(), "p2")
    );
    let (prev, value) = moto.read(&arn, "AWSPREVIOUS").await;
    assert_eq!(
        (prev.as_str(), password(&value).as_str()),
        (v1.as_str(), "p1")
    );

    let d = client
        .describe_secret()
        .secret_id(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("describe_secret: {}", DisplayErrorContext(&e)));
    let stages = d
        .version_ids_to_stages()
        .expect("describe_secret returns VersionIdsToStages");
    println!("VersionIdsToStages: {stages:?}");
    println!("LastRotatedDate: {:?}", d.last_rotated_date());
    println!("LastChangedDate: {:?}", d.last_changed_date());
    println!("RotationEnabled: {:?}", d.rotation_enabled());
    let stages_of = |v: &str| -> Vec<&str> {
        stages
            .get(v)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default()
    };
    assert!(
        stages_of(&v2).contains(&"AWSCURRENT"),
        "new version is AWSCURRENT: {stages:?}"
    );
    assert!(
        stages_of(&v1).contains(&"AWSPREVIOUS"),
        "old version is AWSPREVIOUS: {stages:?}"
    );
    assert!(
        !stages_of(&v1).contains(&"AWSCURRENT"),
        "old version lost AWSCURRENT: {stages:?}"
    );

    // Unreachable Secrets Manager: the call fails, and quickly.
    moto.stop();
    moto.stop(); // idempotent
    let quick = quick_client(&moto);
    let t = Instant::now();
    let err = quick
        .describe_secret()
        .secret_id(name)
        .send()
        .await
        .expect_err("describe_secret after stop must fail");
    let quick_took = t.elapsed();
    println!(
        "stopped, quick client (no retries): failed in {quick_took:?}: {}",
        DisplayErrorContext(&err)
    );
    match &err {
        SdkError::DispatchFailure(f) => println!(
            "  DispatchFailure: is_io={} is_timeout={} is_other={:?}",
            f.is_io(),
            f.is_timeout(),
            f.as_other()
        ),
        SdkError::TimeoutError(_) => println!("  TimeoutError"),
        other => println!("  other SdkError: {other:?}"),
    }
    assert!(
        matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
        ),
        "expected a dispatch failure or timeout, got {err:?}"
    );
    assert!(quick_took < Duration::from_secs(5), "took {quick_took:?}");

    // For reference: the harness client as is (SDK default retries) against the dead server.
    let t = Instant::now();
    let err = client
        .describe_secret()
        .secret_id(name)
        .send()
        .await
        .expect_err("describe_secret after stop must fail");
    println!(
        "stopped, default client: failed in {:?}: {}",
        t.elapsed(),
        DisplayErrorContext(&err)
    );
}
