//! The benchmark's figures: medians and p95s, ratios, and the lines of the final table.

use std::time::Duration;

/// Median and 95th percentile of a set of durations.
#[derive(Clone, Copy)]
pub struct Stats {
    pub median: Duration,
    pub p95: Duration,
}

impl Stats {
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self {
            median: at(0.5),
            p95: at(0.95),
        }
    }

    pub fn show(&self) -> String {
        format!("{} (p95 {})", ms(self.median), ms(self.p95))
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One line of the final table.
pub struct Line {
    pub scenario: String,
    pub sever: String,
    pub comparison: String,
    pub ratio: String,
}

pub fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}
