//! `[aws]`: AWS access (region, endpoint, static keys) and the EventBridge and SNS intakes.
//! Uses only `config`'s own types.

use serde::Deserialize;

use super::{ConfigError, SecretRef, invalid};

/// AWS access and intake settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region of the secrets; default: the AWS SDK's region chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Secrets Manager endpoint override (VPC endpoint, FIPS endpoint, or a local stand-in).
    pub endpoint_url: Option<String>,
    /// Static access keys; without them the SDK's default chain applies (env, web identity
    /// / IRSA, container and instance metadata).
    pub static_credentials: Option<StaticCredentials>,
    /// EventBridge API-destination intake.
    #[serde(default)]
    pub eventbridge: EventBridgeConfig,
    /// SNS HTTPS-subscription intake.
    #[serde(default)]
    pub sns: SnsConfig,
}

/// An access key pair, both halves kept outside the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: SecretRef,
    /// Secret access key.
    pub secret_access_key: SecretRef,
}

/// EventBridge API destinations cannot sign requests; they send an API-key header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventBridgeConfig {
    /// Accepted API keys (several, so a key can be rotated).
    pub api_keys: Vec<SecretRef>,
    /// Header the API destination's connection sends the key in.
    pub header: String,
}

impl Default for EventBridgeConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            header: "x-sever-api-key".into(),
        }
    }
}

/// SNS topics whose HTTPS notifications sever accepts.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SnsConfig {
    /// Topic ARNs; subscriptions are confirmed for these only.
    #[serde(default)]
    pub topics: Vec<String>,
}

impl AwsConfig {
    /// Checks the EventBridge header name and the SNS topic ARNs.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.eventbridge.header.is_empty()
            || axum::http::HeaderName::from_bytes(self.eventbridge.header.as_bytes()).is_err()
        {
            return Err(invalid(
                "aws.eventbridge.header".into(),
                "must be a valid HTTP header name",
            ));
        }
        for (i, topic) in self.sns.topics.iter().enumerate() {
            if !topic.starts_with("arn:") || topic.split(':').count() != 6 {
                return Err(invalid(
                    format!("aws.sns.topics[{i}]"),
                    "must be an SNS topic ARN",
                ));
            }
        }
        Ok(())
    }
}
