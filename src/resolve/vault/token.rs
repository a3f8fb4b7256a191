//! Keeping sever's Vault token valid. A token is renewed at about two thirds of its remaining
//! TTL (at least a second apart), and replaced by a fresh login when it cannot be renewed
//! (batch tokens), when renewal stops extending it (it reached `token_max_ttl`), when renewal
//! fails, or when Vault refuses it. With `method = "token"` the token is read again from its
//! source instead (an agent may have rewritten the file).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Vault;

/// How often a token that never expires is looked at again (a token file may be rewritten
/// at any time; a refused request re-reads it at once as well).
const RECHECK: Duration = Duration::from_secs(300);
/// Longest wait between failed logins.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What sever knows of its current token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TokenLease {
    /// The earliest it may expire (see [`surely_valid`]); `None` when it never does.
    pub expires_at: Option<Instant>,
    /// Vault extends it on `renew-self`.
    pub renewable: bool,
    /// The TTL it was issued with: a renewal that returns less has hit `token_max_ttl`.
    pub ttl: Duration,
    /// Renewal no longer extends it: log in again before it expires.
    pub capped: bool,
}

/// How long a token Vault says has `ttl` left can be relied on. Vault and OpenBao report
/// TTLs in whole seconds rounded up, and count `token_max_ttl` from the whole second the
/// token was created: a renewal that reports the full TTL may be less than a second from the
/// max, and the next renewal would then come too late ("past the max TTL, cannot renew").
/// So a second less (half of a one-second TTL).
fn surely_valid(ttl: Duration) -> Duration {
    ttl - Duration::from_secs(1).min(ttl / 2)
}

impl TokenLease {
    /// A token just issued (or looked up) with `ttl` left; a TTL of zero never expires.
    pub fn issued(now: Instant, ttl: Duration, renewable: bool) -> Self {
        Self {
            expires_at: (!ttl.is_zero()).then(|| now + surely_valid(ttl)),
            renewable,
            ttl,
            capped: false,
        }
    }

    /// The same token after a renewal that left it `ttl` (zero for a token that expires:
    /// it is at its max TTL, replace it now).
    pub fn renewed(self, now: Instant, ttl: Duration, renewable: bool) -> Self {
        let expires_at = match (ttl.is_zero(), self.expires_at) {
            (true, None) => None,
            (true, Some(_)) => Some(now),
            (false, _) => Some(now + surely_valid(ttl)),
        };
        Self {
            expires_at,
            renewable,
            ttl: self.ttl,
            capped: ttl < self.ttl,
        }
    }
}

/// The next step for the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// `renew-self`.
    Renew,
    /// A fresh login (for `method = "token"`: read the token again).
    Login,
}

/// When to act next and how: at two thirds of the remaining TTL, never sooner than a second
/// unless less than that remains; a capped or non-renewable token is replaced instead;
/// without a token, back off exponentially from a second.
pub(super) fn schedule(
    lease: Option<&TokenLease>,
    failures: u32,
    now: Instant,
    token_method: bool,
) -> (Duration, Next) {
    let Some(lease) = lease else {
        let backoff = Duration::from_secs(1u64 << failures.min(5)).min(MAX_BACKOFF);
        return (
            if failures == 0 {
                Duration::ZERO
            } else {
                backoff
            },
            Next::Login,
        );
    };
    let Some(expires_at) = lease.expires_at else {
        return (RECHECK, Next::Login);
    };
    let remaining = expires_at.saturating_duration_since(now);
    let wait = if remaining >= Duration::from_millis(1500) {
        (remaining * 2 / 3).max(Duration::from_secs(1))
    } else {
        remaining / 2
    };
    let next = if !token_method && lease.renewable && !lease.capped {
        Next::Renew
    } else {
        Next::Login
    };
    (wait, next)
}

impl Vault {
    /// Keeps the token alive until `stop` (see the module's description). A login that fails
    /// is retried with backoff while the old token, if any, is still used.
    pub async fn keep_token_alive(self: Arc<Self>, stop: CancellationToken) {
        let token_method = self.reads_token();
        let mut failures = 0u32;
        loop {
            let lease = self.lease();
            let (wait, next) = schedule(lease.as_ref(), failures, Instant::now(), token_method);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let outcome = match next {
                Next::Renew => match self.renew().await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, "Vault token renewal failed; logging in again");
                        self.login().await
                    }
                },
                Next::Login => self.refresh().await,
            };
            match outcome {
                Ok(()) => failures = 0,
                Err(e) => {
                    tracing::error!(error = %e, "Vault login failed");
                    failures = failures.saturating_add(1);
                    // Keep the old token until it expires: it may still work.
                    if lease
                        .and_then(|l| l.expires_at)
                        .is_some_and(|at| at <= Instant::now())
                    {
                        self.set_lease(None);
                    }
                }
            }
        }
    }

    /// A fresh login; for a token read from a file or the environment, the token is read
    /// again and, if unchanged and renewable, renewed.
    async fn refresh(&self) -> Result<(), super::VaultError> {
        let before = self.token_fingerprint().await;
        self.login().await?;
        let unchanged = before == self.token_fingerprint().await;
        if self.reads_token() && unchanged && self.lease().is_some_and(|l| l.renewable) {
            self.renew().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn renewal_comes_at_two_thirds_of_a_short_ttl_not_after_thirty_seconds() {
        let now = Instant::now();
        // Two thirds of what surely remains: a second less than reported.
        let lease = TokenLease::issued(now, 3 * S, true);
        assert_eq!(
            schedule(Some(&lease), 0, now, false),
            (2 * S * 2 / 3, Next::Renew)
        );
        let lease = TokenLease::issued(now, 10 * S, true);
        assert_eq!(schedule(Some(&lease), 0, now, false), (6 * S, Next::Renew));
    }

    #[test]
    fn the_floor_is_a_second_unless_less_remains() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let lease = |left: Duration| TokenLease {
            expires_at: Some(now + left),
            renewable: true,
            ttl: 3 * S,
            capped: false,
        };
        assert_eq!(schedule(Some(&lease(ms(1500))), 0, now, false).0, S);
        assert_eq!(schedule(Some(&lease(ms(800))), 0, now, false).0, ms(400));
        // A one-second TTL counts as half a second.
        let short = TokenLease::issued(now, S, true);
        assert_eq!(schedule(Some(&short), 0, now, false).0, ms(250));
    }

    #[test]
    fn batch_and_capped_tokens_are_replaced_by_a_login() {
        let now = Instant::now();
        let batch = TokenLease::issued(now, 4 * S, false);
        assert_eq!(schedule(Some(&batch), 0, now, false).1, Next::Login);
        let capped = TokenLease::issued(now, 4 * S, true).renewed(now, 2 * S, true);
        assert!(capped.capped);
        assert_eq!(schedule(Some(&capped), 0, now, false).1, Next::Login);
        let full = TokenLease::issued(now, 4 * S, true).renewed(now, 4 * S, true);
        assert!(!full.capped);
    }

    #[test]
    fn token_sources_are_read_again_and_unexpiring_tokens_rechecked() {
        let now = Instant::now();
        let lease = TokenLease::issued(now, 7 * S, true);
        assert_eq!(schedule(Some(&lease), 0, now, true), (4 * S, Next::Login));
        let root = TokenLease::issued(now, Duration::ZERO, false);
        assert_eq!(schedule(Some(&root), 0, now, true), (RECHECK, Next::Login));
    }

    #[test]
    fn a_renewal_at_the_max_ttl_replaces_the_token_now() {
        let now = Instant::now();
        let at_max = TokenLease::issued(now, 3 * S, true).renewed(now + S, Duration::ZERO, true);
        assert_eq!(at_max.expires_at, Some(now + S));
        assert_eq!(
            schedule(Some(&at_max), 0, now + S, false),
            (Duration::ZERO, Next::Login)
        );
    }

    /// OpenBao 2.7.2 as observed: `token_max_ttl` counts from the whole second the token was
    /// created, a renewal reports what is left rounded up to whole seconds (capped at the
    /// max) and extends the lease by what it reports, and one at or past the max fails.
    /// Whatever the fraction of a second the login happens at, and with a few milliseconds
    /// per request, sever must log in again before the max without renewing past it.
    #[test]
    fn renewals_never_land_past_a_max_ttl_counted_from_the_whole_second() {
        let ms = Duration::from_millis;
        for (ttl, max) in [(3, 9), (2, 10), (4, 10), (10, 30), (60, 600)] {
            let (ttl, max) = (ttl * S, max * S);
            for fraction in (0..1000).step_by(7) {
                let second = Instant::now();
                let login = second + ms(fraction);
                let max_at = second + max;
                let mut lease = TokenLease::issued(login, ttl, true);
                let mut valid_until = login + ttl;
                let mut t = login;
                loop {
                    let (wait, next) = schedule(Some(&lease), 0, t, false);
                    t += wait + ms(5);
                    assert!(
                        t < valid_until,
                        "ttl {ttl:?}, max {max:?}, login at .{fraction:03}: used {:?} after expiry",
                        t - valid_until
                    );
                    if next == Next::Login {
                        break;
                    }
                    assert!(
                        t < max_at,
                        "ttl {ttl:?}, max {max:?}, login at .{fraction:03}: renewed {:?} past the max",
                        t - max_at
                    );
                    let left = ttl.min(max_at - t);
                    let reported =
                        Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0));
                    valid_until = t + reported;
                    lease = lease.renewed(t, reported, true);
                }
            }
        }
    }

    #[test]
    fn failed_logins_back_off_from_a_second() {
        let now = Instant::now();
        assert_eq!(schedule(None, 0, now, false), (Duration::ZERO, Next::Login));
        assert_eq!(schedule(None, 1, now, false).0, 2 * S);
        assert_eq!(schedule(None, 9, now, false).0, MAX_BACKOFF);
    }
}
