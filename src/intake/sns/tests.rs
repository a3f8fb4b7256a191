//! Unit tests of parsing, signature verification, URL checks and confirmation.

use url::Url;

use super::testkit::*;
use super::*;

#[test]
fn string_to_sign_follows_aws_key_order() {
    let msg = notification("1", Some("hi"));
    assert_eq!(
        msg.string_to_sign().unwrap(),
        format!(
            "Message\n{}\nMessageId\n{}\nSubject\nhi\nTimestamp\n{}\nTopicArn\n{TOPIC}\nType\nNotification\n",
            msg.message, msg.message_id, msg.timestamp
        )
    );
    let msg = confirmation(SnsMessageType::SubscriptionConfirmation);
    assert_eq!(
        msg.string_to_sign().unwrap(),
        format!(
            "Message\n{}\nMessageId\n{}\nSubscribeURL\n{SUBSCRIBE_URL}\nTimestamp\n{}\nToken\nabc\nTopicArn\n{TOPIC}\nType\nSubscriptionConfirmation\n",
            msg.message, msg.message_id, msg.timestamp
        )
    );
}

#[tokio::test]
async fn notifications_verify_with_v1_and_v2_with_and_without_subject() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.cert_pem);
    let v = verifier(&http);
    for version in ["1", "2"] {
        for subject in [None, Some("Rotation")] {
            let msg = fx.sign(notification(version, subject));
            v.verify(&msg)
                .await
                .unwrap_or_else(|e| panic!("v{version} subject {subject:?}: {e}"));
        }
    }
}

#[tokio::test]
async fn signature_made_with_other_digest_fails() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.cert_pem);
    let mut msg = fx.sign(notification("1", None));
    msg.signature_version = "2".into();
    assert_eq!(
        verifier(&http).verify(&msg).await,
        Err(SnsError::BadSignature)
    );
}

#[tokio::test]
async fn parsed_notification_with_extra_fields_verifies() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.cert_pem);
    let msg = fx.sign(notification("2", Some("Rotation")));
    let body = serde_json::json!({
        "Type": "Notification",
        "MessageId": msg.message_id,
        "TopicArn": msg.topic_arn,
        "Subject": msg.subject,
        "Message": msg.message,
        "Timestamp": msg.timestamp,
        "SignatureVersion": msg.signature_version,
        "Signature": msg.signature,
        "SigningCertURL": msg.signing_cert_url,
        "UnsubscribeURL": msg.unsubscribe_url,
        "MessageAttributes": {"k": {"Type": "String", "Value": "v"}},
    });
    let parsed = parse(body.to_string().as_bytes()).unwrap();
    assert_eq!(parsed, msg);
    verifier(&http).verify(&parsed).await.unwrap();
}

#[test]
fn parse_errors_do_not_echo_the_body() {
    let secret = "do-not-log-this-value";
    let body = format!(r#"{{"Type":"Notification","MessageId":"{secret}"}}"#);
    let err = parse(body.as_bytes()).unwrap_err();
    assert!(matches!(err, SnsError::Malformed(_)), "{err}");
    assert!(!err.to_string().contains(secret), "{err}");

    let body = format!(r#"{{"Type":"Notification","Message":["{secret}"]}}"#);
    let err = parse(body.as_bytes()).unwrap_err();
    assert!(!err.to_string().contains(secret), "{err}");

    let body = format!(r#"{{"Type":"{secret}"}}"#);
    let err = parse(body.as_bytes()).unwrap_err();
    assert!(!err.to_string().contains(secret), "{err}");

    assert!(matches!(parse(b"not json"), Err(SnsError::Malformed(_))));
}

#[tokio::test]
async fn subscription_confirmation_verifies_and_confirm_gets_subscribe_url() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.cert_pem);
    let v = verifier(&http);
    let msg = fx.sign(confirmation(SnsMessageType::SubscriptionConfirmation));
    v.verify(&msg).await.unwrap();
    assert_eq!(http.requests(), vec![CERT_URL.to_owned()]);
    v.confirm(&msg).await.unwrap();
    let requests = http.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1],
        Url::parse(SUBSCRIBE_URL).unwrap().to_string(),
        "confirm GETs exactly the SubscribeURL"
    );
}

#[tokio::test]
async fn unsubscribe_confirmation_verifies() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.cert_pem);
    let msg = fx.sign(confirmation(SnsMessageType::UnsubscribeConfirmation));
    verifier(&http).verify(&msg).await.unwrap();
}

#[tokio::test]
async fn confirm_refuses_unsigned_or_wrong_type_or_untrusted_subscribe_url() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.cert_pem);
    let v = verifier(&http);

    // Tampered: fails verification, so the SubscribeURL is never fetched.
    let mut msg = fx.sign(confirmation(SnsMessageType::SubscriptionConfirmation));
    msg.token = Some("other".into());
    assert_eq!(v.confirm(&msg).await, Err(SnsError::BadSignature));
    assert_eq!(http.requests(), vec![CERT_URL.to_owned()]);

    // Validly signed, but the SubscribeURL is off-SNS: refused before any fetch.
    let mut off_sns = confirmation(SnsMessageType::SubscriptionConfirmation);
    off_sns.subscribe_url = Some("https://sns.evil.com/?Action=ConfirmSubscription".into());
    let msg = fx.sign(off_sns);
    assert!(matches!(
        v.confirm(&msg).await,
        Err(SnsError::UntrustedUrl(_))
    ));
    assert_eq!(http.requests().len(), 1);

    let msg = fx.sign(confirmation(SnsMessageType::UnsubscribeConfirmation));
    assert!(matches!(v.confirm(&msg).await, Err(SnsError::Malformed(_))));
    let msg = fx.sign(notification("2", None));
    assert!(matches!(v.confirm(&msg).await, Err(SnsError::Malformed(_))));
    assert_eq!(http.requests().len(), 1);
}

#[tokio::test]
async fn confirmation_without_token_is_malformed() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.cert_pem);
    let mut msg = fx.sign(confirmation(SnsMessageType::SubscriptionConfirmation));
    msg.token = None;
    assert!(matches!(
        verifier(&http).verify(&msg).await,
        Err(SnsError::Malformed(_))
    ));
}

#[tokio::test]
async fn tampered_fields_are_bad_signatures() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.cert_pem);
    let v = verifier(&http);
    let good = fx.sign(notification("2", Some("Rotation")));

    let mut msg = good.clone();
    msg.message.push(' ');
    assert_eq!(v.verify(&msg).await, Err(SnsError::BadSignature));

    let mut msg = good.clone();
    msg.topic_arn = "arn:aws:sns:us-east-1:123456789012:other".into();
    assert_eq!(v.verify(&msg).await, Err(SnsError::BadSignature));

    let mut msg = good.clone();
    msg.subject = None;
    assert_eq!(v.verify(&msg).await, Err(SnsError::BadSignature));

    let mut msg = good.clone();
    msg.signature = "!!!".into();
    assert!(matches!(v.verify(&msg).await, Err(SnsError::Malformed(_))));

    v.verify(&good).await.unwrap();
}

#[tokio::test]
async fn untrusted_cert_urls_are_rejected_without_fetching() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.cert_pem);
    let v = verifier(&http);
    for url in [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
        "https://sns.evil.com/SimpleNotificationService-test.pem",
        "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-test.pem",
        "https://x@sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
        "https://x:y@sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-test.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.txt",
        "https://sns.us-east-1.amazonaws.com/cert?x=.pem",
        "https://evilsns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
        "https://sns..amazonaws.com/SimpleNotificationService-test.pem",
        "https://sns.us_east.amazonaws.com/SimpleNotificationService-test.pem",
        "https://sns.us-east-1.evil.amazonaws.com.cn.evil/x.pem",
        "https://sns.us-east-1.amazonaws.com./SimpleNotificationService-test.pem",
        "https://1.2.3.4/SimpleNotificationService-test.pem",
        "not a url",
    ] {
        let mut msg = notification("2", None);
        msg.signing_cert_url = url.into();
        let msg = fx.sign(msg);
        let err = v.verify(&msg).await.unwrap_err();
        assert!(matches!(err, SnsError::UntrustedUrl(_)), "{url}: {err}");
    }
    assert!(http.requests().is_empty(), "{:?}", http.requests());
}

#[tokio::test]
async fn unsupported_signature_version_is_rejected() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.cert_pem);
    let mut msg = fx.sign(notification("2", None));
    msg.signature_version = "3".into();
    assert_eq!(
        verifier(&http).verify(&msg).await,
        Err(SnsError::UnsupportedSignatureVersion("3".into()))
    );
    assert!(http.requests().is_empty());
}

#[tokio::test]
async fn certificate_is_fetched_once_and_cached() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.cert_pem);
    let v = verifier(&http);
    v.verify(&fx.sign(notification("1", None))).await.unwrap();
    v.verify(&fx.sign(notification("2", Some("s"))))
        .await
        .unwrap();
    assert_eq!(http.requests(), vec![CERT_URL.to_owned()]);
}

#[tokio::test]
async fn expired_certificate_is_rejected() {
    let fx = Fixture::new();
    let http = FakeHttp::new(&fx.expired_cert());
    let msg = fx.sign(notification("2", None));
    let err = verifier(&http).verify(&msg).await.unwrap_err();
    assert!(
        matches!(&err, SnsError::Certificate(m) if m.contains("validity")),
        "{err}"
    );
}

#[tokio::test]
async fn non_rsa_and_garbage_certificates_are_rejected() {
    let fx = Fixture::new();
    openssl(
        fx.dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ec-key.pem",
            "-out",
            "ec-cert.pem",
            "-subj",
            "/CN=ec",
            "-days",
            "30",
        ],
    );
    let ec = std::fs::read(fx.path("ec-cert.pem")).unwrap();
    let msg = fx.sign(notification("2", None));
    for (pem, want) in [
        (ec, "not RSA"),
        (b"hello".to_vec(), "not PEM"),
        (
            b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n".to_vec(),
            "not X.509",
        ),
    ] {
        let http = FakeHttp::new(&pem);
        let err = verifier(&http).verify(&msg).await.unwrap_err();
        assert!(
            matches!(&err, SnsError::Certificate(m) if m.contains(want)),
            "{want}: {err}"
        );
    }
}
