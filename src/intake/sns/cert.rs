//! Signing certificates: fetching, key extraction and caching.
//!
//! A `SigningCertURL` is the sender's choice (within the SNS hosts), so fetching is guarded:
//! one fetch per URL at a time however many messages name it, at most [`MAX_FETCHES`] fetches
//! at once, a refusal ([`SnsError::Busy`]) instead of a queue when none is free for
//! [`PERMIT_WAIT`], and failures remembered for [`FAILURE_TTL`] so a failing URL is not
//! fetched again for every message that names it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;
use url::Url;
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
use x509_parser::time::ASN1Time;

use super::{SnsError, SnsHttp};

/// How long an extracted public key is reused before its certificate is fetched again.
const KEY_TTL: Duration = Duration::from_secs(3600);
/// Certificates remembered at once, so many distinct (valid) URLs cannot grow memory unbounded.
const MAX_CACHED_KEYS: usize = 64;
/// How long a failed fetch (or an unusable certificate) is answered from memory.
pub const FAILURE_TTL: Duration = Duration::from_secs(60);
/// Failures remembered at once; beyond it the soonest to expire is forgotten.
const MAX_CACHED_FAILURES: usize = 256;
/// Certificate fetches running at once, across all URLs.
pub const MAX_FETCHES: usize = 4;
/// How long a fetch waits for one of the [`MAX_FETCHES`] slots before it is refused.
pub const PERMIT_WAIT: Duration = Duration::from_secs(2);

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

/// A fetch's outcome: the RSAPublicKey DER, or why there is none.
type Outcome = Result<Arc<Vec<u8>>, SnsError>;

/// A fetch in progress, awaited by every message that names its URL.
type Pending = Shared<BoxFuture<'static, Outcome>>;

/// A cached value and the instant it expires.
type Entry<T> = (T, Instant);

/// What is known about certificate URLs, under one lock so that a fetch's end (its result
/// cached, its pending entry gone) is seen by everyone at once.
#[derive(Default)]
struct Known {
    keys: HashMap<String, Entry<Arc<Vec<u8>>>>,
    failures: HashMap<String, Entry<SnsError>>,
    pending: HashMap<String, Pending>,
}

/// Inserts into a cache of at most `max` entries: expired entries go first, then, if still
/// full, the one that expires soonest.
fn insert_bounded<T>(
    cache: &mut HashMap<String, Entry<T>>,
    max: usize,
    key: String,
    entry: Entry<T>,
    now: Instant,
) {
    if cache.len() >= max {
        cache.retain(|_, (_, expires)| *expires > now);
    }
    if cache.len() >= max
        && let Some(soonest) = cache
            .iter()
            .min_by_key(|(_, (_, expires))| *expires)
            .map(|(k, _)| k.clone())
    {
        cache.remove(&soonest);
    }
    cache.insert(key, entry);
}

/// The bounds on fetching: the constants above, smaller in unit tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    failure_ttl: Duration,
    max_fetches: usize,
    permit_wait: Duration,
}

const LIMITS: Limits = Limits {
    failure_ttl: FAILURE_TTL,
    max_fetches: MAX_FETCHES,
    permit_wait: PERMIT_WAIT,
};

/// Signing certificates' public keys, fetched through an [`SnsHttp`] and cached.
pub(super) struct Certificates {
    http: Arc<dyn SnsHttp>,
    permits: Arc<Semaphore>,
    known: Arc<Mutex<Known>>,
    limits: Limits,
}

impl Certificates {
    /// An empty cache that fetches through `http`.
    pub(super) fn new(http: Arc<dyn SnsHttp>) -> Self {
        Self::with_limits(http, LIMITS)
    }

    fn with_limits(http: Arc<dyn SnsHttp>, limits: Limits) -> Self {
        Self {
            http,
            permits: Arc::new(Semaphore::new(limits.max_fetches)),
            known: Arc::new(Mutex::new(Known::default())),
            limits,
        }
    }

    /// The public key for a validated certificate URL: cached, the cached failure, the
    /// outcome of the fetch already running for it, or a new fetch's.
    pub(super) async fn public_key(&self, url: &Url) -> Outcome {
        let pending = {
            let mut known = lock(&self.known);
            let now = Instant::now();
            if let Some((key, expires)) = known.keys.get(url.as_str())
                && *expires > now
            {
                return Ok(Arc::clone(key));
            }
            if let Some((error, expires)) = known.failures.get(url.as_str())
                && *expires > now
            {
                return Err(error.clone());
            }
            known
                .pending
                .entry(url.as_str().to_owned())
                .or_insert_with(|| self.start(url.clone()))
                .clone()
        };
        pending.await
    }

    /// Starts fetching `url` on its own task, so that it finishes (and releases its slot)
    /// even if every request waiting for it goes away.
    fn start(&self, url: Url) -> Pending {
        let known = Arc::clone(&self.known);
        let key = url.as_str().to_owned();
        let task = tokio::spawn(fetch(
            Arc::clone(&self.http),
            Arc::clone(&self.permits),
            Arc::clone(&self.known),
            url,
            self.limits,
        ));
        async move {
            task.await.unwrap_or_else(|_| {
                // The task panicked before ending its pending entry; end it here so the
                // next message for this URL fetches again.
                lock(&known).pending.remove(&key);
                Err(SnsError::Fetch("certificate fetch task failed".into()))
            })
        }
        .boxed()
        .shared()
    }
}

/// The lock on what is known; a panic while it was held can at worst have lost a cache
/// entry, so a poisoned lock is used as is.
fn lock(known: &Mutex<Known>) -> MutexGuard<'_, Known> {
    known
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Fetches `url` within a slot, then records the outcome and ends the pending entry.
async fn fetch(
    http: Arc<dyn SnsHttp>,
    permits: Arc<Semaphore>,
    known: Arc<Mutex<Known>>,
    url: Url,
    limits: Limits,
) -> Outcome {
    let fetched = async {
        let _permit = tokio::time::timeout(limits.permit_wait, permits.acquire())
            .await
            .map_err(|_| SnsError::Busy)?
            .map_err(|_| SnsError::Busy)?;
        let pem = http.get(&url).await?;
        extract_key(&pem)
    }
    .await;
    let now = Instant::now();
    let mut known = lock(&known);
    known.pending.remove(url.as_str());
    let key = url.as_str().to_owned();
    match fetched {
        Ok(extracted) => {
            let der = Arc::new(extracted.der);
            // Never reuse a key past its certificate's notAfter.
            let expires = now + KEY_TTL.min(extracted.remaining);
            let entry = (Arc::clone(&der), expires);
            insert_bounded(&mut known.keys, MAX_CACHED_KEYS, key, entry, now);
            Ok(der)
        }
        // Busy says nothing about the URL: the next message may fetch it.
        Err(SnsError::Busy) => Err(SnsError::Busy),
        Err(error) => {
            let entry = (error.clone(), now + limits.failure_ttl);
            insert_bounded(&mut known.failures, MAX_CACHED_FAILURES, key, entry, now);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::testkit::{CERT_URL, Fixture};
    use super::*;

    /// Serves the fixture's certificate at [`CERT_URL`] and fails every other URL, each GET
    /// held until the test lets it through.
    struct GatedHttp {
        cert_pem: Vec<u8>,
        gate: Semaphore,
        started: AtomicUsize,
    }

    impl GatedHttp {
        fn new(cert_pem: &[u8]) -> Arc<Self> {
            Arc::new(Self {
                cert_pem: cert_pem.to_vec(),
                gate: Semaphore::new(0),
                started: AtomicUsize::new(0),
            })
        }

        fn started(&self) -> usize {
            self.started.load(Ordering::SeqCst)
        }

        /// Waits (a few seconds at most) until `n` GETs have started.
        async fn wait_started(&self, n: usize) {
            for _ in 0..300 {
                if self.started() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{} GETs started, expected {n}", self.started());
        }
    }

    #[async_trait::async_trait]
    impl SnsHttp for GatedHttp {
        async fn get(&self, url: &Url) -> Result<Vec<u8>, SnsError> {
            self.started.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("gate open").forget();
            if url.as_str() == CERT_URL {
                Ok(self.cert_pem.clone())
            } else {
                Err(SnsError::Fetch("HTTP status 404 Not Found".into()))
            }
        }
    }

    fn certificates(http: &Arc<GatedHttp>, limits: Limits) -> Arc<Certificates> {
        Arc::new(Certificates::with_limits(
            Arc::clone(http) as Arc<dyn SnsHttp>,
            limits,
        ))
    }

    fn url(raw: &str) -> Url {
        Url::parse(raw).expect("url")
    }

    #[tokio::test]
    async fn concurrent_requests_for_one_url_share_one_fetch() {
        let fx = Fixture::new();
        let http = GatedHttp::new(&fx.cert_pem);
        let certs = certificates(&http, LIMITS);
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let certs = Arc::clone(&certs);
                tokio::spawn(async move { certs.public_key(&url(CERT_URL)).await })
            })
            .collect();
        http.wait_started(1).await;
        http.gate.add_permits(10);
        for w in waiting {
            w.await.expect("task").expect("key");
        }
        assert_eq!(http.started(), 1);
        // And the key is cached afterwards.
        certs.public_key(&url(CERT_URL)).await.expect("key");
        assert_eq!(http.started(), 1);
    }

    #[tokio::test]
    async fn a_failure_is_remembered_for_its_ttl_then_fetched_again() {
        let http = GatedHttp::new(b"");
        let limits = Limits {
            failure_ttl: Duration::from_millis(200),
            ..LIMITS
        };
        let certs = certificates(&http, limits);
        http.gate.add_permits(10);
        let failing = url("https://sns.us-east-1.amazonaws.com/gone.pem");
        let first = certs.public_key(&failing).await.unwrap_err();
        assert!(matches!(first, SnsError::Fetch(_)), "{first}");
        for _ in 0..5 {
            assert_eq!(certs.public_key(&failing).await.unwrap_err(), first);
        }
        assert_eq!(http.started(), 1);
        // Past the TTL the URL is tried again.
        tokio::time::sleep(limits.failure_ttl + Duration::from_millis(50)).await;
        certs.public_key(&failing).await.unwrap_err();
        assert_eq!(http.started(), 2);
    }

    #[tokio::test]
    async fn a_fetch_that_waits_too_long_for_a_slot_is_busy_and_not_remembered() {
        let http = GatedHttp::new(b"");
        let limits = Limits {
            max_fetches: 1,
            permit_wait: Duration::from_millis(100),
            ..LIMITS
        };
        let certs = certificates(&http, limits);
        let holder = {
            let certs = Arc::clone(&certs);
            tokio::spawn(async move {
                certs
                    .public_key(&url("https://sns.us-east-1.amazonaws.com/a.pem"))
                    .await
            })
        };
        http.wait_started(1).await;
        let b = url("https://sns.us-east-1.amazonaws.com/b.pem");
        assert_eq!(certs.public_key(&b).await, Err(SnsError::Busy));
        assert_eq!(
            http.started(),
            1,
            "the refused fetch never reached the host"
        );
        http.gate.add_permits(10);
        holder.await.expect("task").unwrap_err();
        // Busy said nothing about the URL: it is fetched now that a slot is free.
        assert!(matches!(
            certs.public_key(&b).await,
            Err(SnsError::Fetch(_))
        ));
        assert_eq!(http.started(), 2);
    }

    #[tokio::test]
    async fn a_fetch_whose_callers_all_left_still_finishes_and_frees_its_slot() {
        let http = GatedHttp::new(b"");
        let limits = Limits {
            max_fetches: 1,
            ..LIMITS
        };
        let certs = certificates(&http, limits);
        let a = url("https://sns.us-east-1.amazonaws.com/a.pem");
        let caller = {
            let (certs, a) = (Arc::clone(&certs), a.clone());
            tokio::spawn(async move { certs.public_key(&a).await })
        };
        http.wait_started(1).await;
        caller.abort();
        http.gate.add_permits(10);
        // The one slot comes free, and the abandoned fetch's failure was still recorded.
        let b = url("https://sns.us-east-1.amazonaws.com/b.pem");
        assert!(matches!(
            certs.public_key(&b).await,
            Err(SnsError::Fetch(_))
        ));
        assert!(matches!(
            certs.public_key(&a).await,
            Err(SnsError::Fetch(_))
        ));
        assert_eq!(http.started(), 2);
    }

    /// Panics on its first GET, fails the others.
    struct PanicsOnce(AtomicUsize);

    #[async_trait::async_trait]
    impl SnsHttp for PanicsOnce {
        async fn get(&self, _: &Url) -> Result<Vec<u8>, SnsError> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("injected fault in the certificate client");
            }
            Err(SnsError::Fetch("HTTP status 404 Not Found".into()))
        }
    }

    #[tokio::test]
    async fn a_fetch_that_panics_is_a_failure_and_the_url_can_be_fetched_again() {
        let http = Arc::new(PanicsOnce(AtomicUsize::new(0)));
        let certs = Certificates::new(Arc::clone(&http) as Arc<dyn SnsHttp>);
        let a = url("https://sns.us-east-1.amazonaws.com/a.pem");
        let first = certs.public_key(&a).await.unwrap_err();
        assert!(
            matches!(&first, SnsError::Fetch(m) if m.contains("task failed")),
            "{first}"
        );
        let second = certs.public_key(&a).await.unwrap_err();
        assert!(
            matches!(&second, SnsError::Fetch(m) if m.contains("404")),
            "{second}"
        );
        assert_eq!(http.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn caches_are_bounded_dropping_expired_then_soonest_to_expire() {
        let now = Instant::now();
        let later = |s: u64| now + Duration::from_secs(s);
        let mut cache: HashMap<String, Entry<u8>> = HashMap::new();
        cache.insert("expired".into(), (0, now));
        cache.insert("soon".into(), (1, later(10)));
        cache.insert("late".into(), (2, later(60)));
        insert_bounded(&mut cache, 3, "new".into(), (3, later(30)), now);
        let mut keys: Vec<_> = cache.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["late", "new", "soon"]);
        insert_bounded(&mut cache, 3, "newer".into(), (4, later(30)), now);
        let mut keys: Vec<_> = cache.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["late", "new", "newer"]);
    }
}
