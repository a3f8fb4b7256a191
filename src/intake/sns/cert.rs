//! Signing certificates: fetching, key extraction and caching.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use url::Url;
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
use x509_parser::time::ASN1Time;

use super::{SnsError, SnsHttp};

/// How long an extracted public key is reused before its certificate is fetched again.
const KEY_TTL: Duration = Duration::from_secs(3600);
/// Certificates remembered at once, so many distinct (valid) URLs cannot grow memory unbounded.
const MAX_CACHED_KEYS: usize = 64;

/// An RSA public key (RSAPublicKey DER) and how long it may still be used.
pub(super) struct ExtractedKey {
    pub(super) der: Vec<u8>,
    remaining: Duration,
}

/// Extracts the RSA public key from a PEM certificate that is currently within its validity.
pub(super) fn extract_key(pem: &[u8]) -> Result<ExtractedKey, SnsError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| SnsError::Certificate(format!("not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| SnsError::Certificate(format!("not X.509: {e}")))?;
    let validity = cert.validity();
    let now = ASN1Time::now();
    if !validity.is_valid_at(now) {
        return Err(SnsError::Certificate("outside its validity period".into()));
    }
    let remaining = u64::try_from(validity.not_after.timestamp() - now.timestamp()).unwrap_or(0);
    let spki = cert.public_key();
    if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION {
        return Err(SnsError::Certificate("public key is not RSA".into()));
    }
    Ok(ExtractedKey {
        der: spki.subject_public_key.data.to_vec(),
        remaining: Duration::from_secs(remaining),
    })
}

/// Certificate URL → (RSAPublicKey DER, instant the entry expires).
type KeyCache = HashMap<String, (Arc<Vec<u8>>, Instant)>;

/// Signing certificates' public keys, fetched through an [`SnsHttp`] and cached.
pub(super) struct Certificates {
    http: Arc<dyn SnsHttp>,
    cache: tokio::sync::Mutex<KeyCache>,
}

impl Certificates {
    /// An empty cache that fetches through `http`.
    pub(super) fn new(http: Arc<dyn SnsHttp>) -> Self {
        Self {
            http,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The public key for a validated certificate URL, from the cache or freshly fetched.
    pub(super) async fn public_key(&self, url: &Url) -> Result<Arc<Vec<u8>>, SnsError> {
        let now = Instant::now();
        {
            let cache = self.cache.lock().await;
            if let Some((key, expires)) = cache.get(url.as_str())
                && *expires > now
            {
                return Ok(Arc::clone(key));
            }
        }
        // The lock is not held across the fetch; concurrent misses may fetch twice, harmlessly.
        let pem = self.http.get(url).await?;
        let extracted = extract_key(&pem)?;
        let key = Arc::new(extracted.der);
        // Never reuse a key past its certificate's notAfter.
        let expires = now + KEY_TTL.min(extracted.remaining);
        let mut cache = self.cache.lock().await;
        cache.retain(|_, (_, e)| *e > now);
        if cache.len() >= MAX_CACHED_KEYS
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone())
        {
            cache.remove(&oldest);
        }
        cache.insert(url.as_str().to_owned(), (Arc::clone(&key), expires));
        Ok(key)
    }
}
