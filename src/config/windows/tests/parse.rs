//! Maintenance windows: what parses to what, and the errors bad input is refused with. Cases
//! marked "Alertmanager" are ported from prometheus/alertmanager
//! `timeinterval/timeinterval_test.go`.

use chrono::Timelike;
use chrono_tz::Tz;

use super::super::{Location, TimeRange};
use super::{entry, entry_err, span, utc};
use crate::config::Config;

#[test]
fn alertmanager_time_ranges_parse_to_minutes() {
    for (start, end, minutes) in [
        ("00:00", "24:00", (0, 1440)),
        ("01:35", "17:39", (95, 1059)),
        ("09:35", "09:39", (575, 579)),
    ] {
        let w = entry(&format!(
            "times = [{{ start_time = \"{start}\", end_time = \"{end}\" }}]"
        ));
        let expected = TimeRange {
            start: minutes.0,
            end: minutes.1,
        };
        assert_eq!(w.time_intervals[0].times, [expected]);
    }
    for (start, end, reason) in [
        (
            "17:31",
            "17:31",
            "start_time 17:31 is not before end_time 17:31",
        ),
        ("12:30", "24:01", "end_time 24:01 is not a time of day"),
        (
            "09:30",
            "07:41",
            "start_time 09:30 is not before end_time 07:41",
        ),
        (
            "24:00",
            "17:41",
            "start_time 24:00 is not before end_time 17:41",
        ),
        ("01:99", "23:59", "start_time 01:99 is not a time of day"),
        ("00:00", "99:99", "end_time 99:99 is not a time of day"),
        ("9:00", "17:00", "start_time 9:00 is not a time of day"),
    ] {
        let e = entry_err(&format!(
            "times = [{{ start_time = \"{start}\", end_time = \"{end}\" }}]"
        ));
        assert!(
            e.contains(&format!("windows[w].time_intervals[0].times[0]: {reason}")),
            "{e}"
        );
    }
    let e = entry_err("times = [{ start_time = \"14:03\" }]");
    assert!(e.contains("missing field `end_time`"), "{e}");
}

#[test]
fn alertmanager_refuses_bad_ranges_naming_the_value() {
    for (fields, reason) in [
        (
            "weekdays = [\"friday:monday\"]",
            "weekdays[0]: friday:monday runs backwards",
        ),
        (
            "weekdays = [\"blurgsday:flurgsday\"]",
            "weekdays[0]: blurgsday is not a weekday",
        ),
        ("weekdays = [\"1:3\"]", "weekdays[0]: 1 is not a weekday"),
        ("weekdays = [\"-2:-1\"]", "weekdays[0]: -2 is not a weekday"),
        (
            "days_of_month = [\"0\"]",
            "days_of_month[0]: 0 is not a day of the month",
        ),
        (
            "days_of_month = [\"-50:-20\"]",
            "days_of_month[0]: -50 is not a day of the month",
        ),
        (
            "days_of_month = [\"1:50\"]",
            "days_of_month[0]: 50 is not a day of the month",
        ),
        (
            "days_of_month = [\"-15:5\"]",
            "days_of_month[0]: -15:5: a range that starts",
        ),
        (
            "days_of_month = [\"10:-25\"]",
            "days_of_month[0]: 10:-25: day -25 always comes before day 10",
        ),
        (
            "months = [\"martius:june\"]",
            "months[0]: martius is not a month",
        ),
        (
            "months = [\"march:junius\"]",
            "months[0]: junius is not a month",
        ),
        (
            "months = [\"december:january\"]",
            "months[0]: december:january runs backwards",
        ),
        (
            "years = [\"2022:2020\"]",
            "years[0]: 2022:2020 runs backwards",
        ),
    ] {
        let e = entry_err(fields);
        assert!(
            e.contains(&format!("windows[w].time_intervals[0].{reason}")),
            "{fields}: {e}"
        );
    }
}

#[test]
fn alertmanager_accepts_a_range_from_a_day_to_the_month_end_case_insensitive_months_and_zones() {
    let e = &entry("days_of_month = [\"1:-1\"]").time_intervals[0];
    assert_eq!(e.days_of_month, [span(1, -1)]);
    let e = &entry("months = [\"January:december\"]").time_intervals[0];
    assert_eq!(e.months, [span(1, 12)]);
    let e = &entry("years = [\"2020:2022\"]\nlocation = \"Australia/Sydney\"").time_intervals[0];
    assert_eq!(e.years, [span(2020, 2022)]);
    assert_eq!(e.location, Location::Zone(chrono_tz::Australia::Sydney));
}

#[test]
fn names_and_numbers_are_accepted_in_any_case_and_as_integers() {
    let e = &entry(
        "weekdays = [\"MONDAY\", \"Tuesday:thursday\"]\nmonths = [\"may:June\", 12, \"3:5\"]\n\
         years = [2026, \"2028:2030\"]\ndays_of_month = [15, \"-1\"]",
    )
    .time_intervals[0];
    assert_eq!(e.weekdays, [span(1, 1), span(2, 4)]);
    assert_eq!(e.months, [span(5, 6), span(12, 12), span(3, 5)]);
    assert_eq!(e.years, [span(2026, 2026), span(2028, 2030)]);
    assert_eq!(e.days_of_month, [span(15, 15), span(-1, -1)]);
    let w = entry("months = [12]\nyears = [2026]\ndays_of_month = [15]");
    assert!(w.contains(utc("2026-12-15T08:00:00Z")));
    assert!(!w.contains(utc("2026-11-15T08:00:00Z")));
    assert!(!w.contains(utc("2027-12-15T08:00:00Z")));
    assert!(!w.contains(utc("2026-12-16T08:00:00Z")));
}

#[test]
fn locations_default_to_utc_and_take_utc_iana_names_and_local() {
    assert_eq!(
        entry("").time_intervals[0].location,
        Location::Zone(Tz::UTC)
    );
    assert_eq!(
        entry("location = \"UTC\"").time_intervals[0].location,
        Location::Zone(Tz::UTC)
    );
    let local =
        entry("location = \"Local\"\ntimes = [{ start_time = \"00:00\", end_time = \"12:00\" }]");
    assert_eq!(local.time_intervals[0].location, Location::Local);
    for hour in [0, 5, 11, 12, 17, 23] {
        let at = utc(&format!("2026-06-01T{hour:02}:30:00Z"));
        let morning = at.with_timezone(&chrono::Local).hour() < 12;
        assert_eq!(local.contains(at), morning, "at {at}");
    }
}

#[test]
fn bad_input_is_refused_naming_the_window_entry_and_field() {
    let text = "[[windows]]\nname = \"weeknights\"\n[[windows.time_intervals]]\n\
                times = [{ start_time = \"22:00\", end_time = \"24:00\" }, \
                         { start_time = \"00:00\", end_time = \"25:00\" }]\n";
    let e = Config::parse(text).unwrap_err().to_string();
    assert!(
        e.contains(
            "windows[weeknights].time_intervals[0].times[1]: end_time 25:00 is not a time of day"
        ),
        "{e}"
    );
    for (fields, expected) in [
        (
            "weekdays = [\"funday\"]",
            "w].time_intervals[0].weekdays[0]: funday is not a weekday",
        ),
        (
            "location = \"Europe/Berln\"",
            "w].time_intervals[0].location: Europe/Berln is not a known time zone",
        ),
        (
            "location = \"\"",
            "w].time_intervals[0].location:  is not a known time zone",
        ),
        (
            "weekdays = []",
            "w].time_intervals[0].weekdays: an empty list never matches",
        ),
        (
            "times = []",
            "w].time_intervals[0].times: an empty list never matches",
        ),
        (
            "months = [13]",
            "w].time_intervals[0].months[0]: 13 is not a month",
        ),
        (
            "months = [\"0:3\"]",
            "w].time_intervals[0].months[0]: 0 is not a month",
        ),
        (
            "years = [0]",
            "w].time_intervals[0].years[0]: 0 is not a year",
        ),
        (
            "days_of_month = [\"1:2:3\"]",
            "days_of_month[0]: 1:2:3 is neither a value nor a range",
        ),
        (
            "days_of_month = [-32]",
            "days_of_month[0]: -32 is not a day of the month",
        ),
        (
            "days_of_month = [\"-1:-3\"]",
            "days_of_month[0]: -1:-3: day -3 always comes before day -1",
        ),
        (
            "days_of_month = [\"28:-1\"]",
            "days_of_month[0]: 28:-1: day -1 always comes before day 28",
        ),
        (
            "weekdays = [\"saturday:sunday\"]",
            "weekdays[0]: saturday:sunday runs backwards",
        ),
        ("weekday = [\"monday\"]", "unknown field `weekday`"),
        (
            "times = [{ start_time = \"01:00\", end_time = \"02:00\", zone = \"UTC\" }]",
            "unknown field `zone`",
        ),
        ("weekdays = [1]", "invalid type: integer"),
        ("days_of_month = [1.5]", "expected an integer or a string"),
    ] {
        let e = entry_err(fields);
        assert!(e.contains(expected), "{fields}: {e}");
    }
}

#[test]
fn window_names_are_unique_ids_and_window_keys_are_known() {
    let e = Config::parse(
        "[[windows]]\nname = \"a\"\n[[windows]]\nname = \"b\"\n[[windows]]\nname = \"a\"\n",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "invalid config at windows[2].name: a second window named a"
    );
    let e = Config::parse("[[windows]]\nname = \"\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("invalid config at windows[0].name: ids are 1 to 128"),
        "{e}"
    );
    let e = Config::parse("[[windows]]\nname = \"night shift\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("invalid config at windows[0].name: ids are"),
        "{e}"
    );
    let e = Config::parse("[[windows]]\n").unwrap_err().to_string();
    assert!(e.contains("missing field `name`"), "{e}");
    let e = Config::parse("[[windows]]\nname = \"a\"\nintervals = []\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `intervals`"), "{e}");
}

#[test]
fn a_config_without_windows_has_none() {
    let config = Config::parse("").unwrap();
    assert!(config.windows.is_empty());
    assert!(config.window("w").is_none());
}
