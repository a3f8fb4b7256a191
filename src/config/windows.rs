//! `[[windows]]`: named maintenance windows in Alertmanager's `time_intervals` shape, which
//! policies and notifications refer to by name. Matching follows Alertmanager's `timeinterval`
//! package; parsing is stricter (empty lists, months outside 1..12, years below 1 and an empty
//! `location` are refused instead of never or silently matching). Each field is parsed while the
//! TOML is read, so its errors name the window and the field; names are checked in
//! [`validate`]. Uses only `config`'s own helpers.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{ConfigError, check_id, invalid};

/// A named maintenance window: the moments at least one of its entries contains.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowConfig {
    /// How policies and notifications refer to the window (an id, unique among windows).
    pub name: String,
    /// The entries; with none the window contains no moment at all, as in Alertmanager.
    pub time_intervals: Vec<TimeInterval>,
}

impl WindowConfig {
    /// Whether `at` is inside the window: whether any of its entries contains it.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.time_intervals.iter().any(|entry| entry.contains(at))
    }
}

/// One `time_intervals` entry: it contains a moment when every field it gives matches that
/// moment's wall-clock time in its `location`; an entry without fields contains every moment.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeInterval {
    // An empty list means the field was left out (explicit empty lists are refused).
    times: Vec<TimeRange>,
    weekdays: Vec<Span>,
    days_of_month: Vec<Span>,
    months: Vec<Span>,
    years: Vec<Span>,
    location: Location,
}

impl TimeInterval {
    /// Whether `at`, read as wall-clock time in this entry's location, matches every field given.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let local = self.location.wall_clock(at);
        let minute = local.hour() * 60 + local.minute();
        let day = local.day() as i32;
        let month_length = i32::from(local.num_days_in_month());
        let weekday = local.weekday().num_days_from_sunday() as i32;
        any(&self.times, |t| t.start <= minute && minute < t.end)
            && any(&self.days_of_month, |d| {
                // Alertmanager counts negative days back from the month's last day and then
                // clamps both ends to the month; as the day itself is always within the month,
                // that clamping comes down to this comparison. The month's length is the
                // calendar's, as in Alertmanager since its fix for months with a DST change
                // (counting hours made a 31-day March 30 days long there).
                let resolve = |n: i32| if n < 0 { month_length + n + 1 } else { n };
                resolve(d.begin) <= day && day <= resolve(d.end)
            })
            && any(&self.months, |m| m.holds(local.month() as i32))
            && any(&self.weekdays, |w| w.holds(weekday))
            && any(&self.years, |y| y.holds(local.year()))
    }
}

/// True when `list` is empty (the field was left out) or any member satisfies `holds`.
fn any<T>(list: &[T], holds: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(holds)
}

/// Minutes of the day: `start` inclusive, `end` exclusive, `0 <= start < end <= 1440`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeRange {
    start: u32,
    end: u32,
}

/// An inclusive range of weekdays (0 = Sunday), days of month, months or years.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    begin: i32,
    end: i32,
}

impl Span {
    fn holds(self, n: i32) -> bool {
        self.begin <= n && n <= self.end
    }
}

/// Where an entry's wall-clock time is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Location {
    /// An IANA zone, `UTC` included (the default).
    Zone(Tz),
    /// The host's zone (`TZ`, else /etc/localtime), as Go's `time.Local`.
    Local,
}

impl Location {
    fn wall_clock(self, at: DateTime<Utc>) -> NaiveDateTime {
        match self {
            Location::Zone(tz) => at.with_timezone(&tz).naive_local(),
            Location::Local => at.with_timezone(&chrono::Local).naive_local(),
        }
    }
}

/// Checks the windows' names: ids by the crate's rules, and unique.
pub(super) fn validate(windows: &[WindowConfig]) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    for (i, window) in windows.iter().enumerate() {
        let path = format!("windows[{i}].name");
        check_id(&window.name).map_err(|reason| invalid(path.clone(), reason))?;
        if !names.insert(window.name.as_str()) {
            return Err(invalid(
                path,
                &format!("a second window named {}", window.name),
            ));
        }
    }
    Ok(())
}

/// A `[[windows]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    name: String,
    #[serde(default)]
    time_intervals: Vec<RawInterval>,
}

/// A `time_intervals` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterval {
    times: Option<Vec<RawTimes>>,
    weekdays: Option<Vec<String>>,
    days_of_month: Option<Vec<Member>>,
    months: Option<Vec<Member>>,
    years: Option<Vec<Member>>,
    location: Option<String>,
}

/// `{ start_time = "HH:MM", end_time = "HH:MM" }` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimes {
    start_time: String,
    end_time: String,
}

/// A value or range of `days_of_month`, `months` or `years`: a string (`"1:5"`, `"march"`) or,
/// for a single value, a TOML integer, which YAML users of Alertmanager are used to writing.
struct Member(String);

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MemberVisitor;
        impl Visitor<'_> for MemberVisitor {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string such as \"1:5\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Member, E> {
                Ok(Member(n.to_string()))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Member, E> {
                Ok(Member(s.to_owned()))
            }
        }
        deserializer.deserialize_any(MemberVisitor)
    }
}

impl<'de> Deserialize<'de> for WindowConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawWindow::deserialize(deserializer)?;
        let time_intervals = raw
            .time_intervals
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                let path = format!("windows[{}].time_intervals[{i}]", shown(&raw.name));
                compile(entry, &path)
            })
            .collect::<Result<_, _>>()
            .map_err(de::Error::custom)?;
        Ok(WindowConfig {
            name: raw.name,
            time_intervals,
        })
    }
}

/// Parses one entry; an error reads `{path}.{field}[{index}]: {reason}`.
fn compile(raw: RawInterval, path: &str) -> Result<TimeInterval, String> {
    let location = match raw.location {
        None => Location::Zone(Tz::UTC),
        Some(name) => location(&name).map_err(|reason| format!("{path}.location: {reason}"))?,
    };
    Ok(TimeInterval {
        times: each(path, "times", raw.times, |t| time_range(&t))?,
        weekdays: each(path, "weekdays", raw.weekdays, |w| weekdays(&w))?,
        days_of_month: each(path, "days_of_month", raw.days_of_month, |d| days(&d.0))?,
        months: each(path, "months", raw.months, |m| months(&m.0))?,
        years: each(path, "years", raw.years, |y| years(&y.0))?,
        location,
    })
}

/// Parses every member of an optional list; a list given empty is refused, as it would never
/// match (Alertmanager's reading) while looking like "any".
fn each<R, T>(
    path: &str,
    field: &str,
    list: Option<Vec<R>>,
    parse: impl Fn(R) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    match list {
        None => Ok(Vec::new()),
        Some(list) if list.is_empty() => Err(format!(
            "{path}.{field}: an empty list never matches; leave the field out to match any"
        )),
        Some(list) => list
            .into_iter()
            .enumerate()
            .map(|(i, member)| {
                parse(member).map_err(|reason| format!("{path}.{field}[{i}]: {reason}"))
            })
            .collect(),
    }
}

/// Config text inside an error message, with control characters escaped.
fn shown(text: &str) -> String {
    text.escape_debug().to_string()
}

fn time_range(raw: &RawTimes) -> Result<TimeRange, String> {
    let start = minute_of_day(&raw.start_time).ok_or_else(|| {
        format!(
            "start_time {} is not a time of day {HH_MM}",
            shown(&raw.start_time)
        )
    })?;
    let end = minute_of_day(&raw.end_time).ok_or_else(|| {
        format!(
            "end_time {} is not a time of day {HH_MM}",
            shown(&raw.end_time)
        )
    })?;
    if start >= end {
        return Err(format!(
            "start_time {} is not before end_time {} (to span midnight, give two ranges: \
             up to 24:00 and from 00:00)",
            raw.start_time, raw.end_time
        ));
    }
    Ok(TimeRange { start, end })
}

const HH_MM: &str = "(\"HH:MM\", 00:00 to 24:00)";

/// `HH:MM` with two-digit hours 00..23 and minutes 00..59, or `24:00`, as Alertmanager's
/// pattern; minutes since midnight.
fn minute_of_day(text: &str) -> Option<u32> {
    if text == "24:00" {
        return Some(24 * 60);
    }
    let (hours, minutes) = text.split_once(':')?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(hours) || !two_digits(minutes) {
        return None;
    }
    let (hours, minutes): (u32, u32) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours < 24 && minutes < 60).then_some(hours * 60 + minutes)
}

/// Splits `first:last` (a lone value is both), case-insensitively, and maps both ends.
fn span(text: &str, member: impl Fn(&str) -> Result<i32, String>) -> Result<Span, String> {
    let lower = text.to_ascii_lowercase();
    let (first, last) = lower.split_once(':').unwrap_or((&lower, &lower));
    if last.contains(':') {
        return Err(format!(
            "{} is neither a value nor a range \"first:last\"",
            shown(text)
        ));
    }
    Ok(Span {
        begin: member(first)?,
        end: member(last)?,
    })
}

const WEEKDAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

fn weekdays(text: &str) -> Result<Span, String> {
    // Names only, as Alertmanager: a number would leave open whether weeks start on Sunday.
    let span = span(text, |name| {
        WEEKDAYS
            .iter()
            .position(|day| *day == name)
            .map(|i| i as i32)
            .ok_or_else(|| format!("{} is not a weekday (sunday to saturday)", shown(name)))
    })?;
    if span.begin > span.end {
        return Err(format!(
            "{} runs backwards: weeks run from sunday to saturday here, as in Alertmanager, \
             so list the parts (e.g. [\"saturday\", \"sunday\"])",
            shown(text)
        ));
    }
    Ok(span)
}

fn days(text: &str) -> Result<Span, String> {
    let span = span(text, |n| {
        n.parse::<i32>()
            .ok()
            .filter(|n| (1..=31).contains(n) || (-31..=-1).contains(n))
            .ok_or_else(|| {
                format!(
                    "{} is not a day of the month (1 to 31, or -1 to -31 counting back from \
                     its last day)",
                    shown(n)
                )
            })
    })?;
    // As Alertmanager: a range from a negative day to a positive one would hold in longer
    // months and run backwards in shorter ones; a range that runs backwards even in a 28-day
    // month is refused; anything else is left to the month at hand.
    if span.begin < 0 && span.end > 0 {
        return Err(format!(
            "{}: a range that starts counting from the month's end must end that way too",
            shown(text)
        ));
    }
    let in_february = |n: i32| if n < 0 { 28 + n } else { n };
    if in_february(span.begin) > in_february(span.end) {
        return Err(format!(
            "{}: day {} always comes before day {}",
            shown(text),
            span.end,
            span.begin
        ));
    }
    Ok(span)
}

fn months(text: &str) -> Result<Span, String> {
    let span = span(text, |m| {
        let by_name = MONTHS
            .iter()
            .position(|name| *name == m)
            .map(|i| i as i32 + 1);
        by_name
            .or_else(|| m.parse::<i32>().ok().filter(|n| (1..=12).contains(n)))
            .ok_or_else(|| {
                format!(
                    "{} is not a month (january to december, or 1 to 12)",
                    shown(m)
                )
            })
    })?;
    if span.begin > span.end {
        return Err(format!(
            "{} runs backwards: list the parts (e.g. [\"november:december\", \"january\"])",
            shown(text)
        ));
    }
    Ok(span)
}

fn years(text: &str) -> Result<Span, String> {
    let span = span(text, |y| {
        y.parse::<i32>()
            .ok()
            .filter(|y| *y >= 1)
            .ok_or_else(|| format!("{} is not a year", shown(y)))
    })?;
    if span.begin > span.end {
        return Err(format!("{} runs backwards", shown(text)));
    }
    Ok(span)
}

/// `Local`, or an IANA zone name (`UTC` included), as Go's `time.LoadLocation`.
fn location(name: &str) -> Result<Location, String> {
    if name == "Local" {
        return Ok(Location::Local);
    }
    name.parse::<Tz>().map(Location::Zone).map_err(|_| {
        format!(
            "{} is not a known time zone (an IANA name such as Europe/Berlin, UTC or Local)",
            shown(name)
        )
    })
}

#[cfg(test)]
mod tests;
