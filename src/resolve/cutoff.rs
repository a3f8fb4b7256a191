//! The two rules every rotation source shares: when the old secret stopped being valid (the
//! cutoff), and which sessions a credential's policy then ends (the scope). The generic event,
//! AWS and Vault all decide them here. Uses `config` (the policy) and `terminate` (the scope).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::RotationPolicy;
use crate::terminate::Scope;

/// A reported time further ahead of sever's clock than the tolerance allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{at} is more than {}s in the future", tolerance.as_secs())]
pub struct TooFarAhead {
    /// The reported time.
    pub at: DateTime<Utc>,
    /// The tolerance it exceeds.
    pub tolerance: Duration,
}

/// The cutoff of a rotation: sessions that began before it may hold the old secret.
///
/// - `reported`: the time the report names (a generic event's `rotated_at`, the moment AWS
///   moved `AWSCURRENT`, a Vault event's `time`), if any.
/// - `source`: the time the secret's own system records for the change (Vault's
///   `last_vault_rotation` or a kv version's `created_time`, AWS's `LastRotatedDate`), if
///   known.
/// - `arrival`: when sever verified the report.
///
/// The cutoff is the later of the times known (so a source time that marks the start of a
/// rotation never spares a session opened before the password actually changed), `arrival`
/// when neither is, and never later than `arrival`: a cutoff in the future would also end
/// sessions opened with the new secret.
pub fn clamped(
    reported: Option<DateTime<Utc>>,
    source: Option<DateTime<Utc>>,
    arrival: DateTime<Utc>,
) -> DateTime<Utc> {
    let latest = match (reported, source) {
        (Some(r), Some(s)) => r.max(s),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => arrival,
    };
    latest.min(arrival)
}

/// [`clamped`], after refusing a `reported` time more than `tolerance` ahead of `arrival`:
/// within it, it is clock skew and clamped to `arrival`; beyond it, it is refused rather than
/// trusted.
pub fn cutoff(
    reported: Option<DateTime<Utc>>,
    source: Option<DateTime<Utc>>,
    arrival: DateTime<Utc>,
    tolerance: Duration,
) -> Result<DateTime<Utc>, TooFarAhead> {
    match reported {
        Some(at) if at > arrival + tolerance => Err(TooFarAhead { at, tolerance }),
        _ => Ok(clamped(reported, source, arrival)),
    }
}

/// Which sessions a rotation of a credential with `policy` ends: those that began before
/// `cutoff`, all of them, or none (`None`: record the rotation, terminate nothing).
pub fn scope(policy: RotationPolicy, cutoff: DateTime<Utc>) -> Option<Scope> {
    match policy {
        RotationPolicy::TerminateBeforeCutoff => Some(Scope::Before(cutoff)),
        RotationPolicy::TerminateAll => Some(Scope::All),
        RotationPolicy::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn without_a_reported_time_the_cutoff_is_the_arrival() {
        let now = Utc::now();
        assert_eq!(cutoff(None, None, now, TOL), Ok(now));
        let earlier = now - chrono::Duration::minutes(1);
        assert_eq!(cutoff(Some(earlier), None, now, TOL), Ok(earlier));
    }

    #[test]
    fn a_reported_time_ahead_is_clamped_within_tolerance_and_refused_beyond() {
        let now = Utc::now();
        let skewed = now + chrono::Duration::seconds(3);
        assert_eq!(cutoff(Some(skewed), None, now, TOL), Ok(now));
        let far = now + chrono::Duration::hours(1);
        let e = cutoff(Some(far), None, now, TOL).unwrap_err();
        assert_eq!(
            e,
            TooFarAhead {
                at: far,
                tolerance: TOL
            }
        );
        assert!(
            e.to_string().ends_with("is more than 300s in the future"),
            "{e}"
        );
        // Without a tolerance nothing is refused, and nothing passes the arrival.
        assert_eq!(clamped(Some(far), None, now), now);
    }

    #[test]
    fn the_cutoff_is_never_before_the_label_moved() {
        // AWS: `LastRotatedDate` (the source time) may mark the start of the rotation; the
        // label move (the reported time) is never earlier than the change.
        let moved = Utc::now();
        let arrival = moved + chrono::Duration::minutes(1);
        let early = moved - chrono::Duration::minutes(3);
        assert_eq!(clamped(Some(moved), Some(early), arrival), moved);
        assert_eq!(clamped(Some(moved), None, arrival), moved);
        let late = moved + chrono::Duration::seconds(1);
        assert_eq!(clamped(Some(moved), Some(late), arrival), late);
    }

    #[test]
    fn a_source_time_alone_is_exact_but_never_after_the_arrival() {
        // Vault: `last_vault_rotation` and a kv version's `created_time` are exact.
        let arrival = Utc::now();
        let rotated = arrival - chrono::Duration::seconds(30);
        assert_eq!(clamped(None, Some(rotated), arrival), rotated);
        let ahead = arrival + chrono::Duration::seconds(30);
        assert_eq!(clamped(None, Some(ahead), arrival), arrival);
    }

    #[test]
    fn the_policy_chooses_the_scope() {
        let cutoff = Utc::now();
        assert_eq!(
            scope(RotationPolicy::TerminateBeforeCutoff, cutoff),
            Some(Scope::Before(cutoff))
        );
        assert_eq!(
            scope(RotationPolicy::TerminateAll, cutoff),
            Some(Scope::All)
        );
        assert_eq!(scope(RotationPolicy::None, cutoff), None);
    }
}
