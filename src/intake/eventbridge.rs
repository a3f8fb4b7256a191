//! Which Secrets Manager events (from EventBridge, directly or through SNS) mean that
//! `AWSCURRENT` moved, and which secret and version they are about.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// An EventBridge event as [`interpret`] reads it, for the OpenAPI document only (the
/// handler reads the JSON tree leniently).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EventBridgeEvent {
    /// `Secret Label Updated`, `AWS API Call via CloudTrail`, …
    #[serde(rename = "detail-type")]
    detail_type: String,
    /// `aws.secretsmanager`; others are ignored.
    source: String,
    /// When it happened.
    time: Option<String>,
    /// What happened.
    detail: EventBridgeDetail,
}

/// The fields of an event's `detail` that are read.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct EventBridgeDetail {
    /// The CloudTrail call (`PutSecretValue`, `RotationSucceeded`, …).
    event_name: Option<String>,
    /// Set when the call failed: the event is ignored.
    error_code: Option<String>,
    /// The label that moved (`Secret Label Updated`).
    label_updated: Option<String>,
    /// The version it moved to.
    version_id: Option<String>,
    /// The secret, for label events.
    secret_id: Option<String>,
    /// The call's parameters (`secretId`, `versionStages`, …).
    request_parameters: Option<EventBridgeParameters>,
}

/// A CloudTrail call's `requestParameters`, as far as they are read.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct EventBridgeParameters {
    /// The secret.
    secret_id: Option<String>,
    /// The labels the new version gets.
    version_stages: Option<Vec<String>>,
}

/// A rotation an event reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// Secret ARN or name, as the event carries it.
    pub secret_id: String,
    /// The version that became current, when the event says.
    pub version_id: Option<String>,
    /// When it happened, per AWS.
    pub occurred_at: Option<DateTime<Utc>>,
    /// The event's `detail-type`, for the audit trail.
    pub detail_type: String,
}

/// What an event means to sever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interpretation {
    /// `AWSCURRENT` moved.
    Rotation(Reported),
    /// Not a rotation (another event, a failed call, another label); why.
    Ignored(String),
}

/// Reads an EventBridge event. `Err` when it is not an EventBridge event at all.
pub fn interpret(event: &Value) -> Result<Interpretation, String> {
    let detail_type =
        str_at(event, &["detail-type"]).ok_or("not an EventBridge event: no detail-type")?;
    let source = str_at(event, &["source"]).ok_or("not an EventBridge event: no source")?;
    let detail = event
        .get("detail")
        .filter(|d| d.is_object())
        .ok_or("not an EventBridge event: no detail")?;
    let ignored = |why: String| Ok(Interpretation::Ignored(why));
    if source != "aws.secretsmanager" {
        return ignored(format!("source {source:?} is not aws.secretsmanager"));
    }
    if let Some(code) = str_at(detail, &["errorCode"]) {
        return ignored(format!("the API call failed ({code})"));
    }
    let event_name = str_at(detail, &["eventName"]).unwrap_or_default();
    let version_id = match (detail_type, event_name) {
        ("Secret Label Updated", _) => {
            let label = str_at(detail, &["labelUpdated"]).unwrap_or_default();
            if label != "AWSCURRENT" {
                return ignored(format!("label {label:?} moved, not AWSCURRENT"));
            }
            str_at(detail, &["versionId"])
        }
        ("AWS Service Event via CloudTrail", "RotationSucceeded") => None,
        ("AWS API Call via CloudTrail", "PutSecretValue") => {
            // Without VersionStages, PutSecretValue makes the new version AWSCURRENT.
            let stages = detail.pointer("/requestParameters/versionStages");
            let moved = match stages {
                None | Some(Value::Null) => true,
                Some(Value::Array(list)) => list.iter().any(|s| s == "AWSCURRENT"),
                Some(_) => false,
            };
            if !moved {
                return ignored("PutSecretValue did not move AWSCURRENT".into());
            }
            str_at(detail, &["responseElements", "versionId"])
        }
        ("AWS API Call via CloudTrail", "UpdateSecretVersionStage") => {
            if str_at(detail, &["requestParameters", "versionStage"]) != Some("AWSCURRENT") {
                return ignored("UpdateSecretVersionStage did not move AWSCURRENT".into());
            }
            str_at(detail, &["requestParameters", "moveToVersionId"])
        }
        (other, "") => return ignored(format!("{other:?} is not a rotation event")),
        (other, name) => return ignored(format!("{other:?} {name} is not a rotation event")),
    };
    let secret_id = secret_id(event, detail).ok_or("the event names no secret")?;
    let occurred_at = [str_at(event, &["time"]), str_at(detail, &["eventTime"])]
        .into_iter()
        .flatten()
        .find_map(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    Ok(Interpretation::Rotation(Reported {
        secret_id: secret_id.to_owned(),
        version_id: version_id.map(str::to_owned),
        occurred_at,
        detail_type: detail_type.to_owned(),
    }))
}

/// The secret, from every place AWS has been seen to put it.
fn secret_id<'a>(event: &'a Value, detail: &'a Value) -> Option<&'a str> {
    let from_resources = event
        .get("resources")
        .and_then(Value::as_array)
        .and_then(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .find(|a| a.contains(":secretsmanager:"))
        });
    from_resources
        .or_else(|| str_at(detail, &["name"]))
        .or_else(|| str_at(detail, &["additionalEventData", "SecretId"]))
        .or_else(|| str_at(detail, &["requestParameters", "secretId"]))
        .or_else(|| str_at(detail, &["responseElements", "arn"]))
        // Older CloudTrail events spell it this way.
        .or_else(|| str_at(detail, &["responseElements", "aRN"]))
        .or_else(|| str_at(detail, &["arn"]))
        .or_else(|| str_at(detail, &["aRN"]))
        .filter(|s| !s.is_empty())
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, key| v.get(key))?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/orders-AbC123";

    fn envelope(detail_type: &str, detail: Value, resources: Value) -> Value {
        json!({
            "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": detail_type, "source": "aws.secretsmanager",
            "account": "123456789012", "time": "2026-11-24T10:00:00Z", "region": "us-east-1",
            "resources": resources, "detail": detail,
        })
    }

    fn rotation(event: &Value) -> Reported {
        match interpret(event).unwrap() {
            Interpretation::Rotation(r) => r,
            other => panic!("expected a rotation, got {other:?}"),
        }
    }

    #[test]
    fn label_updated_to_awscurrent_is_a_rotation() {
        let e = envelope(
            "Secret Label Updated",
            json!({"labelUpdated": "AWSCURRENT", "versionId": "v2", "name": "prod/orders"}),
            json!([ARN]),
        );
        let r = rotation(&e);
        assert_eq!(r.secret_id, ARN);
        assert_eq!(r.version_id.as_deref(), Some("v2"));
        assert_eq!(
            r.occurred_at.unwrap().to_rfc3339(),
            "2026-11-24T10:00:00+00:00"
        );
        let other = envelope(
            "Secret Label Updated",
            json!({"labelUpdated": "AWSPENDING"}),
            json!([ARN]),
        );
        assert!(matches!(
            interpret(&other).unwrap(),
            Interpretation::Ignored(_)
        ));
    }

    #[test]
    fn rotation_succeeded_reads_the_secret_from_additional_event_data() {
        let e = envelope(
            "AWS Service Event via CloudTrail",
            json!({"eventName": "RotationSucceeded", "eventSource": "secretsmanager.amazonaws.com",
                   "additionalEventData": {"SecretId": ARN}}),
            json!([]),
        );
        let r = rotation(&e);
        assert_eq!(r.secret_id, ARN);
        assert_eq!(r.version_id, None);
    }

    #[test]
    fn api_calls_count_only_when_they_move_awscurrent() {
        let put = |stages: Value| {
            envelope(
                "AWS API Call via CloudTrail",
                json!({"eventName": "PutSecretValue", "requestParameters": {"secretId": "prod/orders", "versionStages": stages},
                       "responseElements": {"versionId": "v3", "aRN": ARN}}),
                json!([]),
            )
        };
        let r = rotation(&put(Value::Null));
        assert_eq!(
            (r.secret_id.as_str(), r.version_id.as_deref()),
            ("prod/orders", Some("v3"))
        );
        assert!(matches!(
            rotation(&put(json!(["AWSCURRENT"]))).version_id.as_deref(),
            Some("v3")
        ));
        assert!(matches!(
            interpret(&put(json!(["AWSPENDING"]))).unwrap(),
            Interpretation::Ignored(_)
        ));

        let stage = |label: &str| {
            envelope(
                "AWS API Call via CloudTrail",
                json!({"eventName": "UpdateSecretVersionStage",
                       "requestParameters": {"secretId": ARN, "versionStage": label, "moveToVersionId": "v4"}}),
                json!([]),
            )
        };
        assert_eq!(
            rotation(&stage("AWSCURRENT")).version_id.as_deref(),
            Some("v4")
        );
        assert!(matches!(
            interpret(&stage("AWSPREVIOUS")).unwrap(),
            Interpretation::Ignored(_)
        ));
    }

    #[test]
    fn the_older_arn_spelling_is_read() {
        let e = envelope(
            "AWS API Call via CloudTrail",
            json!({"eventName": "PutSecretValue", "requestParameters": {}, "responseElements": {"aRN": ARN, "versionId": "v5"}}),
            json!([]),
        );
        assert_eq!(rotation(&e).secret_id, ARN);
    }

    #[test]
    fn other_events_and_failed_calls_are_ignored_and_garbage_is_an_error() {
        let delete = envelope(
            "AWS API Call via CloudTrail",
            json!({"eventName": "DeleteSecret"}),
            json!([]),
        );
        assert!(matches!(
            interpret(&delete).unwrap(),
            Interpretation::Ignored(_)
        ));
        let failed = envelope(
            "AWS API Call via CloudTrail",
            json!({"eventName": "PutSecretValue", "errorCode": "AccessDenied", "requestParameters": {"secretId": ARN}}),
            json!([]),
        );
        assert!(matches!(
            interpret(&failed).unwrap(),
            Interpretation::Ignored(_)
        ));
        let mut ec2 = envelope(
            "EC2 Instance State-change Notification",
            json!({}),
            json!([]),
        );
        ec2["source"] = json!("aws.ec2");
        assert!(matches!(
            interpret(&ec2).unwrap(),
            Interpretation::Ignored(_)
        ));
        assert!(interpret(&json!({"hello": "world"})).is_err());
        let nameless = envelope(
            "Secret Label Updated",
            json!({"labelUpdated": "AWSCURRENT"}),
            json!([]),
        );
        assert!(interpret(&nameless).is_err());
    }
}
