//! An action's schedule from what its request (or credential, or policy) asks: when it acts
//! and when it is announced, checked before anything is stored.

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};

use super::ResolveError;
use crate::action::{Schedule, ScheduleRequest};
use crate::config::Config;

/// The longest an action may be announced ahead, or wait for its window.
pub const MAX_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a window-bound action waits for its window by default.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The schedule `request` asks for at `now`; `None` to act at once. An action bound to a
/// window that does not open within its `max_wait` is scheduled `expired`: it is accepted,
/// recorded and announced as such, and acts on nothing.
pub fn schedule(
    config: &Config,
    request: &ScheduleRequest,
    now: DateTime<Utc>,
) -> Result<Option<Schedule>, ResolveError> {
    let invalid = |why: String| Err(ResolveError::Invalid(why));
    if !request.is_set() {
        if request.require_announcement {
            return invalid("require_announcement needs notify_before".into());
        }
        if request.max_wait.is_some() {
            return invalid("max_wait goes with window".into());
        }
        return Ok(None);
    }
    if request.not_before.is_some() && request.window.is_some() {
        return invalid("not_before and window exclude each other: give one".into());
    }
    if request.max_wait.is_some() && request.window.is_none() {
        return invalid("max_wait goes with window".into());
    }
    let ahead = request.notify_before.unwrap_or_default();
    if request
        .notify_before
        .is_some_and(|d| d.is_zero() || d > MAX_WAIT)
    {
        return invalid(format!(
            "notify_before is more than zero and at most {}",
            humantime::format_duration(MAX_WAIT)
        ));
    }
    if request.require_announcement && request.notify_before.is_none() {
        return invalid("require_announcement needs notify_before".into());
    }
    let announced = config.notify.channels.iter().any(|c| {
        c.events
            .contains(&crate::config::NotifyEvent::AnnouncementMade)
    });
    if request.require_announcement && !announced {
        return invalid(
            "require_announcement: no [[notify.channels]] takes announcement.made, so it \
             could never be delivered"
                .into(),
        );
    }
    let earliest = now + to_chrono(ahead);
    let mut expired = false;
    let act_at = match (&request.not_before, &request.window) {
        (Some(at), _) if request.notify_before.is_some() && *at < earliest => {
            return invalid(format!(
                "not_before {at} is less than notify_before from now: the announcement could \
                 not go out in time"
            ));
        }
        (Some(at), _) if *at > now + to_chrono(MAX_WAIT) => {
            return invalid(format!(
                "not_before is more than {} ahead",
                humantime::format_duration(MAX_WAIT)
            ));
        }
        (Some(at), _) => (*at).max(now),
        (None, Some(name)) => {
            let Some(window) = config.window(name) else {
                return invalid(format!("no [[windows]] is named {name:?}"));
            };
            let max_wait = request.max_wait.unwrap_or(DEFAULT_MAX_WAIT);
            if max_wait.is_zero() || max_wait > MAX_WAIT {
                return invalid(format!(
                    "max_wait is more than zero and at most {}",
                    humantime::format_duration(MAX_WAIT)
                ));
            }
            match next_opening(|t| window.contains(t), earliest, now + to_chrono(max_wait)) {
                Some(at) => at,
                None => {
                    expired = true;
                    now
                }
            }
        }
        (None, None) => earliest,
    };
    Ok(Some(Schedule {
        act_at,
        announce_at: request
            .notify_before
            .filter(|_| !expired)
            .map(|d| (act_at - to_chrono(d)).max(now)),
        window: request.window.clone(),
        require_announcement: request.require_announcement,
        expired,
    }))
}

/// When a lock or drain takes effect and ends: its schedule (if it waits), and its end,
/// `for` counted from when it acts (`None` when `permanent`). `what` names it in errors
/// ("a lock"), with an `example` duration.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its schedule, if it waits.
    pub schedule: Option<Schedule>,
    /// When it ends by itself; `None` for a permanent one.
    pub until: Option<DateTime<Utc>>,
    /// Its window never opens within `max_wait`: it acts on nothing and has no expiry.
    pub expired: bool,
}

/// The [`Span`] a lock's or drain's request asks for at `now`, refusing a missing,
/// doubled, zero or overlong `for`.
pub fn span(
    config: &Config,
    request: &ScheduleRequest,
    (duration, permanent): (Option<Duration>, bool),
    (what, example): (&str, &str),
    now: DateTime<Utc>,
) -> Result<Span, ResolveError> {
    let invalid = |why: String| Err(ResolveError::Invalid(why));
    let schedule = schedule(config, request, now)?;
    let expired = schedule.as_ref().is_some_and(|s| s.expired);
    // A scheduled one takes effect (and its `for` counts) from when it acts.
    let start = schedule
        .as_ref()
        .filter(|s| !s.expired)
        .map_or(now, |s| s.act_at);
    let until = match (duration, permanent) {
        (Some(_), true) => {
            return invalid("give for (a duration) or permanent: true, not both".into());
        }
        (None, false) => {
            return invalid(format!(
                "{what} needs for (e.g. \"{example}\"), or permanent: true to keep it until \
                 lifted"
            ));
        }
        (Some(d), false) if d.is_zero() => {
            return invalid("for must be longer than zero".into());
        }
        (Some(d), false) => match chrono::Duration::from_std(d) {
            Ok(d) => Some(start + d),
            Err(_) => return invalid("for is too long".into()),
        },
        (None, true) => None,
    };
    Ok(Span {
        schedule,
        until,
        expired,
    })
}

/// The first moment from `from` (then each whole minute after it, the windows' resolution)
/// up to `until` at which `open` holds.
fn next_opening(
    open: impl Fn(DateTime<Utc>) -> bool,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if open(from) {
        return Some(from);
    }
    let minute = chrono::Duration::minutes(1);
    let mut t = from.duration_trunc(minute).ok()? + minute;
    while t <= until {
        if open(t) {
            return Some(t);
        }
        t += minute;
    }
    None
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"
            [[windows]]
            name = "berlin-nights"
            [[windows.time_intervals]]
            times = [{ start_time = "02:00", end_time = "04:00" }]
            location = "Europe/Berlin"
            [[windows]]
            name = "never"
            [[windows.time_intervals]]
            years = ["2020"]
            "#,
        )
        .unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn ask(json: &str) -> ScheduleRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn announced_ahead_of_a_time_or_of_a_window_opening() {
        let c = config();
        let now = at("2026-12-06T12:00:00Z");
        assert_eq!(schedule(&c, &ask("{}"), now).unwrap(), None);
        let s = schedule(&c, &ask(r#"{"notify_before":"15m"}"#), now)
            .unwrap()
            .unwrap();
        assert_eq!(s.act_at, at("2026-12-06T12:15:00Z"));
        assert_eq!(s.announce_at, Some(now));
        let s = schedule(
            &c,
            &ask(r#"{"notify_before":"15m","not_before":"2026-12-06T14:00:00Z"}"#),
            now,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.act_at, at("2026-12-06T14:00:00Z"));
        assert_eq!(s.announce_at, Some(at("2026-12-06T13:45:00Z")));
        // 02:00 in Berlin is 01:00 UTC in winter.
        let s = schedule(
            &c,
            &ask(r#"{"window":"berlin-nights","notify_before":"1h"}"#),
            now,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.act_at, at("2026-12-07T01:00:00Z"));
        assert_eq!(s.announce_at, Some(at("2026-12-07T00:00:00Z")));
        // In summer (after the clocks went forward) it is 00:00 UTC.
        let summer = at("2026-06-01T12:00:00Z");
        let s = schedule(&c, &ask(r#"{"window":"berlin-nights"}"#), summer)
            .unwrap()
            .unwrap();
        assert_eq!(s.act_at, at("2026-06-02T00:00:00Z"));
        // Inside the window already: at once.
        let inside = at("2026-12-07T01:30:00Z");
        let s = schedule(&c, &ask(r#"{"window":"berlin-nights"}"#), inside)
            .unwrap()
            .unwrap();
        assert_eq!(s.act_at, inside);
        // The night the clocks go back (25 Oct 2026): 02:00 Berlin is still 01:00 UTC.
        let s = schedule(
            &c,
            &ask(r#"{"window":"berlin-nights"}"#),
            at("2026-10-24T12:00:00Z"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.act_at, at("2026-10-25T00:00:00Z"));
    }

    #[test]
    fn a_window_that_never_opens_expires_and_bad_requests_are_refused() {
        let c = config();
        let now = at("2026-12-06T12:00:00Z");
        let s = schedule(&c, &ask(r#"{"window":"never","max_wait":"1d"}"#), now)
            .unwrap()
            .unwrap();
        assert!(s.expired);
        assert_eq!(s.announce_at, None);
        for (json, needle) in [
            (r#"{"window":"nope"}"#, "no [[windows]]"),
            (
                r#"{"window":"never","not_before":"2026-12-07T00:00:00Z"}"#,
                "exclude each other",
            ),
            (
                r#"{"notify_before":"1h","not_before":"2026-12-06T12:30:00Z"}"#,
                "could not go out in time",
            ),
            (r#"{"require_announcement":true}"#, "needs notify_before"),
            (
                r#"{"notify_before":"1h","require_announcement":true}"#,
                "no [[notify.channels]] takes announcement.made",
            ),
            (r#"{"max_wait":"1d"}"#, "goes with window"),
            (r#"{"notify_before":"0s"}"#, "more than zero"),
            (r#"{"notify_before":"60d"}"#, "at most"),
            (r#"{"window":"never","max_wait":"90d"}"#, "at most"),
            (r#"{"not_before":"2027-12-06T12:30:00Z"}"#, "ahead"),
        ] {
            let e = schedule(&c, &ask(json), now).unwrap_err().to_string();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
