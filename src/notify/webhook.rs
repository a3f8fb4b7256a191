//! Outbound Standard Webhooks: `{type, timestamp, data}` with the event name as `type`,
//! signed with [`crate::signing`] (the code the intake verifies with). The body is the same
//! on every attempt and `webhook-id` is the notification's own id, so a receiver can
//! de-duplicate; `webhook-timestamp` and the signature are made per attempt, so a retry
//! hours later is still inside the receiver's tolerance.

use serde_json::{Value, json};
use uuid::Uuid;

use super::content::Digest;

/// The body: the same bytes on every attempt.
pub fn body(digest: &Digest, id: Uuid) -> Value {
    json!({
        "type": digest.event.as_str(),
        "timestamp": digest.last_at,
        "data": digest.data(id),
    })
}

/// The headers of one attempt at unix second `now`, signed with `key`.
pub fn headers(key: &[u8], id: Uuid, now: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    let id = id.to_string();
    let signature = crate::signing::signature(key, &id, now, body);
    vec![
        ("content-type", "application/json".to_owned()),
        ("webhook-id", id),
        ("webhook-timestamp", now.to_string()),
        ("webhook-signature", signature),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Event, Notice};

    #[test]
    fn a_delivery_is_signed_over_its_exact_bytes() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = crate::signing::decode_key(secret).unwrap();
        let notice = Notice {
            logins: vec!["app\"}, \"evil\": {".into()],
            ..Notice::new(Event::ActionStarted)
        };
        let digest = Digest::of(&notice, Event::ActionStarted, &Default::default());
        let id = Uuid::now_v7();
        let bytes = serde_json::to_vec(&body(&digest, id)).unwrap();
        let parsed: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed["type"], "action.started");
        assert_eq!(parsed["data"]["logins"][0], "app\"}, \"evil\": {");
        assert!(parsed.get("evil").is_none());
        let headers = headers(&key, id, 1_700_000_000, &bytes);
        let get = |name: &str| headers.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert_eq!(get("webhook-id"), id.to_string());
        assert_eq!(get("webhook-timestamp"), "1700000000");
        let candidates = crate::signing::candidates(&get("webhook-signature"), 8);
        assert!(crate::signing::matches(
            &key,
            &id.to_string(),
            1_700_000_000,
            &bytes,
            &candidates
        ));
        assert!(!crate::signing::matches(
            &key,
            &id.to_string(),
            1_700_000_001,
            &bytes,
            &candidates
        ));
    }
}
