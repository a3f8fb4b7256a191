//! The HTTPS client that fetches SNS certificates and confirms subscriptions.

use std::time::Duration;

use url::Url;

use super::SnsError;

/// Largest response body read by [`HttpsClient`]; SNS certificates are a few KiB.
const MAX_BODY: usize = 64 * 1024;
/// Whole-request timeout for [`HttpsClient`].
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches SNS URLs; injectable so tests never reach the network.
#[async_trait::async_trait]
pub trait SnsHttp: Send + Sync {
    /// GETs an already-validated https SNS URL and returns the body.
    async fn get(&self, url: &Url) -> Result<Vec<u8>, SnsError>;
}

/// The production [`SnsHttp`]: HTTPS only, no redirects, 5 s timeout, 64 KiB body cap.
pub struct HttpsClient {
    client: reqwest::Client,
}

impl HttpsClient {
    /// Builds the client.
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            // A redirect could leave the SNS host that the URL check approved.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .build()
            .expect("reqwest client with static settings builds");
        Self { client }
    }
}

impl Default for HttpsClient {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl SnsHttp for HttpsClient {
    async fn get(&self, url: &Url) -> Result<Vec<u8>, SnsError> {
        let mut response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| SnsError::Fetch(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(SnsError::Fetch(format!("HTTP status {status}")));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(SnsError::Fetch("response body too large".into()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| SnsError::Fetch(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(SnsError::Fetch("response body too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
