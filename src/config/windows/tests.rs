//! Maintenance windows: which moments they contain. Cases marked "Alertmanager" are ported from
//! prometheus/alertmanager `timeinterval/timeinterval_test.go` (and its DST fix, #5447).

use chrono::{Duration, NaiveDate, TimeZone};

use super::*;
use crate::config::Config;

mod parse;

/// A config holding one window `w` with the given entries (TOML `[[windows.time_intervals]]`).
fn window(entries: &str) -> WindowConfig {
    let text = format!("[[windows]]\nname = \"w\"\n{entries}");
    let mut config = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    config.windows.remove(0)
}

/// A window with one entry made of `fields`.
fn entry(fields: &str) -> WindowConfig {
    window(&format!("[[windows.time_intervals]]\n{fields}"))
}

/// The error a config with one window `w` and one entry of `fields` is refused with.
fn entry_err(fields: &str) -> String {
    let text = format!("[[windows]]\nname = \"w\"\n[[windows.time_intervals]]\n{fields}");
    Config::parse(&text).unwrap_err().to_string()
}

/// Alertmanager's test times, Go's RFC822Z: "02 Jan 06 15:04 +0000".
fn am(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_str(text, "%d %b %y %H:%M %z")
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&Utc)
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// Asserts `window` contains every time of `inside` and none of `outside` (Alertmanager format).
fn check(window: &WindowConfig, inside: &[&str], outside: &[&str]) {
    for t in inside {
        assert!(window.contains(am(t)), "{t} should be inside {window:?}");
    }
    for t in outside {
        assert!(!window.contains(am(t)), "{t} should be outside {window:?}");
    }
}

fn span(begin: i32, end: i32) -> Span {
    Span { begin, end }
}

#[test]
fn alertmanager_an_entry_without_fields_contains_every_moment() {
    let w = window("[[windows.time_intervals]]\n");
    check(
        &w,
        &[
            "02 Jan 06 15:04 +0000",
            "03 Jan 07 10:04 +0000",
            "04 Jan 06 09:04 +0000",
        ],
        &[],
    );
}

#[test]
fn a_window_without_entries_contains_no_moment_as_in_alertmanager() {
    // Alertmanager's Mutes loops over a name's entries: none, no mute.
    let w = window("");
    assert!(w.time_intervals.is_empty());
    assert!(!w.contains(am("02 Jan 06 15:04 +0000")));
}

#[test]
fn alertmanager_business_hours_monday_to_friday() {
    let w = entry(
        "times = [{ start_time = \"09:00\", end_time = \"17:00\" }]\nweekdays = [\"monday:friday\"]",
    );
    assert_eq!(
        w.time_intervals[0].times,
        [TimeRange {
            start: 540,
            end: 1020
        }]
    );
    assert_eq!(w.time_intervals[0].weekdays, [span(1, 5)]);
    check(
        &w,
        &[
            "04 May 20 15:04 +0000",
            "05 May 20 10:04 +0000",
            "09 Jun 20 09:04 +0000",
            "08 Jul 20 09:00 +0000",
            "08 Jul 20 16:59 +0000",
            "01 Apr 21 13:00 +0000",
        ],
        &[
            "03 May 20 15:04 +0000", // a Sunday
            "04 May 20 08:59 +0000",
            "05 May 20 05:00 +0000",
            "08 Jul 20 05:00 +0000",
            "08 Jul 20 08:59 +0000",
        ],
    );
}

#[test]
fn alertmanager_easter_2020() {
    let w = entry("days_of_month = [\"4:6\"]\nmonths = [\"4\"]\nyears = [\"2020\"]");
    check(
        &w,
        &[
            "04 Apr 20 15:04 +0000",
            "05 Apr 20 00:00 +0000",
            "06 Apr 20 23:05 +0000",
        ],
        &[
            "03 May 18 15:04 +0000",
            "03 Apr 20 23:59 +0000",
            "04 Jun 20 23:59 +0000",
            "06 Apr 19 23:59 +0000",
            "07 Apr 20 00:00 +0000",
        ],
    );
}

#[test]
fn alertmanager_negative_days_are_the_last_days_of_each_month() {
    let w = entry("days_of_month = [\"-3:-1\"]");
    check(
        &w,
        &[
            "31 Jan 20 15:04 +0000",
            "30 Jan 20 15:04 +0000",
            "29 Jan 20 15:04 +0000",
            "30 Jun 20 00:00 +0000",
            "29 Feb 20 23:05 +0000", // a leap year's February
        ],
        &[
            "03 May 18 15:04 +0000",
            "27 Jan 20 15:04 +0000",
            "03 Apr 20 23:59 +0000",
            "04 Jun 20 23:59 +0000",
            "06 Apr 19 23:59 +0000",
            "07 Apr 20 00:00 +0000",
            "01 Mar 20 00:00 +0000",
        ],
    );
    // February of a common year: 26 to 28.
    let w = entry("days_of_month = [-1]");
    check(&w, &["28 Feb 21 10:00 +0000"], &["27 Feb 21 10:00 +0000"]);
}

#[test]
fn alertmanager_out_of_range_days_are_clamped_to_the_month() {
    // Alertmanager builds this entry directly: the parser refuses "-31:31" (a range from the
    // end to a day from the start), so only the matching is checked here.
    let w = WindowConfig {
        name: "june".into(),
        time_intervals: vec![TimeInterval {
            times: vec![],
            weekdays: vec![],
            days_of_month: vec![span(-31, 31)],
            months: vec![span(6, 6)],
            years: vec![],
            location: Location::Zone(Tz::UTC),
        }],
    };
    check(
        &w,
        &["30 Jun 20 00:00 +0000", "01 Jun 20 00:00 +0000"],
        &["31 May 20 00:00 +0000", "01 Jul 20 00:00 +0000"],
    );
    assert!(entry_err("days_of_month = [\"-31:31\"]").contains("must end that way too"));
}

#[test]
fn alertmanager_days_past_the_end_of_a_short_month_do_not_match_its_last_day() {
    let w = entry("days_of_month = [\"30:31\"]\nyears = [\"2020:2023\"]\nmonths = [\"february\"]");
    check(&w, &[], &["28 Feb 21 13:00 +0000", "29 Feb 20 13:00 +0000"]);
    // And day 31 never matches a 30-day month.
    let w = entry("days_of_month = [31]");
    check(&w, &["31 Jan 21 13:00 +0000"], &["30 Jun 21 13:00 +0000"]);
}

#[test]
fn alertmanager_sydney_business_hours_with_and_without_daylight_saving() {
    let fields = "times = [{ start_time = \"09:00\", end_time = \"17:00\" }]\n\
                  weekdays = [\"monday:friday\"]\nlocation = \"Australia/Sydney\"";
    check(
        &entry(fields),
        &["06 Apr 21 13:00 +1000"],
        &["06 Apr 21 13:00 +0000"],
    );
    let november = format!("{fields}\nmonths = [\"11\"]");
    check(
        &entry(&november),
        &["01 Nov 21 09:00 +1100", "31 Oct 21 22:00 +0000"],
        &["31 Oct 21 21:00 +0000"],
    );
}

#[test]
fn alertmanager_last_week_of_the_first_quarter_in_some_years() {
    let w = entry(
        "weekdays = [\"monday:friday\", \"sunday\"]\nmonths = [\"january:march\"]\n\
         days_of_month = [\"-7:-1\"]\nyears = [\"2020:2025\", \"2030:2035\"]\n\
         times = [{ start_time = \"09:00\", end_time = \"17:00\" }]",
    );
    let e = &w.time_intervals[0];
    assert_eq!(e.weekdays, [span(1, 5), span(0, 0)]);
    assert_eq!(e.months, [span(1, 3)]);
    assert_eq!(e.days_of_month, [span(-7, -1)]);
    assert_eq!(e.years, [span(2020, 2025), span(2030, 2035)]);
    check(
        &w,
        &[
            "27 Jan 21 09:00 +0000",
            "28 Jan 21 16:59 +0000",
            "29 Jan 21 13:00 +0000",
            "31 Mar 25 13:00 +0000",
            "31 Jan 35 13:00 +0000",
        ],
        &[
            "30 Jan 21 13:00 +0000", // Saturday
            "01 Apr 21 13:00 +0000", // April
            "30 Jan 26 13:00 +0000", // 2026
            "31 Jan 35 17:01 +0000", // after 17:00
        ],
    );
}

#[test]
fn alertmanager_every_field_at_once() {
    let w = entry(
        "weekdays = [\"monday:wednesday\", \"saturday\", \"sunday\"]\n\
         times = [{ start_time = \"13:00\", end_time = \"15:00\" }]\n\
         days_of_month = [\"1\", \"10\", \"20:-1\"]\nyears = [\"2020:2023\"]\n\
         months = [\"january:march\"]",
    );
    check(
        &w,
        &["10 Jan 21 13:00 +0000", "30 Jan 21 14:24 +0000"],
        &[
            "09 Jan 21 13:00 +0000",
            "20 Jan 21 12:59 +0000",
            "02 Feb 21 13:00 +0000",
        ],
    );
}

#[test]
fn alertmanager_evenings_and_weekends_in_sydney() {
    let config = Config::parse(
        "[[windows]]\nname = \"evenings\"\n[[windows.time_intervals]]\n\
         times = [{ start_time = \"00:00\", end_time = \"09:00\" }, \
                  { start_time = \"17:00\", end_time = \"24:00\" }]\n\
         location = \"Australia/Sydney\"\n\
         [[windows]]\nname = \"weekends\"\n[[windows.time_intervals]]\n\
         weekdays = [\"saturday\", \"sunday\"]\nlocation = \"Australia/Sydney\"\n",
    )
    .unwrap();
    let sydney = chrono_tz::Australia::Sydney;
    let local = |d, h| {
        sydney
            .with_ymd_and_hms(2024, 1, d, h, 0, 0)
            .unwrap()
            .with_timezone(&Utc)
    };
    let cases = [
        (local(1, 0), [true, false]),
        (local(1, 9), [false, false]),
        (local(6, 10), [false, true]),
        (local(6, 17), [true, true]),
        (utc("2024-01-01T10:00:00Z"), [true, false]),
        (utc("2024-01-06T10:00:00Z"), [true, true]),
    ];
    for (at, expected) in cases {
        let got = ["evenings", "weekends"].map(|name| config.window(name).unwrap().contains(at));
        assert_eq!(got, expected, "at {at}");
    }
    assert!(config.window("holidays").is_none());
}

#[test]
fn alertmanager_the_last_day_of_a_month_with_a_dst_change_is_its_calendar_last_day() {
    // Alertmanager #5447: counting the month's hours made March 2021 in New York 30 days long.
    let w = entry("days_of_month = [\"-1\"]\nlocation = \"America/New_York\"");
    check(&w, &["31 Mar 21 12:00 -0400"], &["30 Mar 21 12:00 -0400"]);
    let w = entry("days_of_month = [\"-1\"]\nlocation = \"Europe/Berlin\"");
    assert!(w.contains(utc("2026-03-31T10:00:00Z")));
    assert!(!w.contains(utc("2026-03-30T10:00:00Z")));
    // 22:30 UTC on the 31st is already April 1st in Berlin.
    assert!(!w.contains(utc("2026-03-31T22:30:00Z")));
}

#[test]
fn times_start_inclusive_end_exclusive_by_the_minute() {
    let w = entry("times = [{ start_time = \"09:00\", end_time = \"17:00\" }]");
    assert!(w.contains(utc("2026-05-04T09:00:00Z")));
    assert!(!w.contains(utc("2026-05-04T08:59:59Z")));
    // Seconds do not count, as in Alertmanager (hour and minute only).
    assert!(w.contains(utc("2026-05-04T16:59:59Z")));
    assert!(!w.contains(utc("2026-05-04T17:00:00Z")));
}

#[test]
fn a_range_to_24_00_ends_at_midnight() {
    let w = entry("times = [{ start_time = \"22:00\", end_time = \"24:00\" }]");
    assert!(w.contains(utc("2026-05-04T23:59:59Z")));
    assert!(w.contains(utc("2026-05-04T22:00:00Z")));
    assert!(!w.contains(utc("2026-05-05T00:00:00Z")));
    assert!(!w.contains(utc("2026-05-04T21:59:00Z")));
}

/// Minutes of the UTC day `date` that `w` contains.
fn minutes_inside(w: &WindowConfig, date: &str) -> usize {
    let start = NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    (0..24 * 60)
        .filter(|m| w.contains(start + Duration::minutes(*m)))
        .count()
}

#[test]
fn berlin_wall_clock_hours_across_the_dst_changes_of_2026() {
    let w = entry(
        "times = [{ start_time = \"02:00\", end_time = \"04:00\" }]\nlocation = \"Europe/Berlin\"",
    );
    // Berlin's 02:00-04:00 is 01:00-03:00 UTC in winter and 00:00-02:00 UTC in summer: within
    // one UTC day either way.
    assert_eq!(minutes_inside(&w, "2026-03-28"), 120);
    // 2026-03-29: 02:00 CET becomes 03:00 CEST, so only 03:00-04:00 exists.
    assert_eq!(minutes_inside(&w, "2026-03-29"), 60);
    assert!(!w.contains(utc("2026-03-29T00:59:00Z"))); // 01:59 CET
    assert!(w.contains(utc("2026-03-29T01:00:00Z"))); // 03:00 CEST
    assert!(!w.contains(utc("2026-03-29T02:00:00Z"))); // 04:00 CEST
    // 2026-10-25: 03:00 CEST becomes 02:00 CET, so 02:00-03:00 happens twice.
    assert_eq!(minutes_inside(&w, "2026-10-25"), 180);
    assert!(w.contains(utc("2026-10-25T00:00:00Z"))); // 02:00 CEST
    assert!(w.contains(utc("2026-10-25T01:00:00Z"))); // 02:00 CET
    assert!(!w.contains(utc("2026-10-24T23:59:00Z"))); // 01:59 CEST
    // An hour that the spring change skips is never inside.
    let skipped = entry(
        "times = [{ start_time = \"02:00\", end_time = \"03:00\" }]\nlocation = \"Europe/Berlin\"",
    );
    assert_eq!(minutes_inside(&skipped, "2026-03-29"), 0);
    assert_eq!(minutes_inside(&skipped, "2026-03-30"), 60);
}

#[test]
fn weeknights_any_entry_puts_a_moment_inside_each_in_its_own_zone() {
    let w = window(
        "[[windows.time_intervals]]\nweekdays = [\"monday:friday\"]\n\
         times = [{ start_time = \"22:00\", end_time = \"24:00\" }, \
                  { start_time = \"00:00\", end_time = \"06:00\" }]\n\
         location = \"Europe/Berlin\"\n\
         [[windows.time_intervals]]\nweekdays = [\"saturday\", \"sunday\"]\n",
    );
    assert!(w.contains(utc("2026-03-03T21:30:00Z"))); // Tue 22:30 Berlin
    assert!(w.contains(utc("2026-03-04T04:59:00Z"))); // Wed 05:59 Berlin
    assert!(!w.contains(utc("2026-03-04T05:00:00Z"))); // Wed 06:00 Berlin
    assert!(!w.contains(utc("2026-03-04T12:00:00Z"))); // Wed noon
    assert!(w.contains(utc("2026-03-07T12:00:00Z"))); // Saturday (UTC, the second entry)
    assert!(w.contains(utc("2026-03-08T23:30:00Z"))); // Mon 00:30 Berlin (Sunday in UTC)
    // Fri 23:30 UTC is Sat 00:30 in Berlin: not a weekday there, and Friday in UTC.
    assert!(!w.contains(utc("2026-03-06T23:30:00Z")));
}
