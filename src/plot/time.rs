//! Times on axes and in text: a fixed UTC offset, tick placement and formatting.

use chrono::{DateTime, FixedOffset};

/// A fixed offset from UTC in which times are shown, such as UTC+8 for Taobao data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeZone {
    offset_secs: i32,
}

impl TimeZone {
    /// UTC itself.
    pub const UTC: TimeZone = TimeZone { offset_secs: 0 };

    /// Creates a zone from an offset in hours, such as `8`, `-5` or `5.5`.
    ///
    /// The offset must lie in -14..=14 hours and be a whole number of minutes.
    pub fn from_hours(hours: f64) -> Result<TimeZone, String> {
        if !hours.is_finite() || !(-14.0..=14.0).contains(&hours) {
            return Err(format!(
                "invalid UTC offset {hours} hours: expected a number from -14 to 14"
            ));
        }
        let seconds = hours * 3600.0;
        if (seconds / 60.0).fract() != 0.0 {
            return Err(format!(
                "invalid UTC offset {hours} hours: expected a whole number of minutes"
            ));
        }
        Ok(TimeZone {
            offset_secs: seconds as i32,
        })
    }

    /// Returns the offset in seconds east of UTC.
    pub fn offset_secs(self) -> i32 {
        self.offset_secs
    }

    /// Returns the zone's name for axis titles: `UTC`, `UTC+8`, `UTC-3:30`.
    pub fn label(self) -> String {
        if self.offset_secs == 0 {
            return "UTC".to_string();
        }
        let sign = if self.offset_secs < 0 { '-' } else { '+' };
        let minutes = self.offset_secs.unsigned_abs() / 60;
        if minutes.is_multiple_of(60) {
            format!("UTC{sign}{}", minutes / 60)
        } else {
            format!("UTC{sign}{}:{:02}", minutes / 60, minutes % 60)
        }
    }

    /// Formats Unix seconds with a `chrono` pattern such as `%Y-%m-%d %H:%M`.
    ///
    /// Times outside chrono's range (about ±262,000 years) are written as raw seconds.
    pub fn format(self, ts: i64, pattern: &str) -> String {
        let offset = FixedOffset::east_opt(self.offset_secs).expect("offset checked in range");
        match DateTime::from_timestamp(ts, 0) {
            Some(time) => time.with_timezone(&offset).format(pattern).to_string(),
            None => format!("{ts}s"),
        }
    }

    /// Formats Unix seconds as `YYYY-MM-DD HH:MM` in this zone.
    pub fn minutes(self, ts: i64) -> String {
        self.format(ts, "%Y-%m-%d %H:%M")
    }
}

/// Tick spacings in seconds, from one minute to one week.
const TICK_STEPS: [i64; 14] = [
    60, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400, 172_800, 345_600, 604_800,
];

/// Tick times of a time axis over `[start, end]` and the pattern to label them with.
///
/// Ticks fall on round local times (whole hours, local midnights) and number at most
/// `max_ticks` (at least 2 is sensible). An empty or reversed range gives no ticks.
pub fn time_ticks(
    start: i64,
    end: i64,
    zone: TimeZone,
    max_ticks: usize,
) -> (Vec<i64>, &'static str) {
    if end <= start {
        return (Vec::new(), "%H:%M");
    }
    let span = end - start;
    let max_ticks = max_ticks.max(1) as i64;
    let step = TICK_STEPS
        .iter()
        .copied()
        .find(|step| span / step < max_ticks)
        .unwrap_or_else(|| {
            let days = (span / 86_400 / max_ticks + 1).max(1);
            days * 86_400
        });
    let offset = i64::from(zone.offset_secs());
    let local_start = start + offset;
    let first =
        local_start.div_euclid(step) * step + if local_start % step == 0 { 0 } else { step };
    let mut ticks = Vec::new();
    let mut local = first;
    while local - offset <= end {
        ticks.push(local - offset);
        local += step;
    }
    let pattern = if step >= 86_400 {
        "%m-%d"
    } else if span > 86_400 {
        "%m-%d %H:%M"
    } else {
        "%H:%M"
    };
    (ticks, pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_labels_and_formats() {
        let beijing = TimeZone::from_hours(8.0).unwrap();
        assert_eq!(beijing.label(), "UTC+8");
        assert_eq!(beijing.minutes(1_511_798_400), "2017-11-28 00:00");
        assert_eq!(TimeZone::from_hours(-3.5).unwrap().label(), "UTC-3:30");
        assert_eq!(TimeZone::UTC.minutes(0), "1970-01-01 00:00");
    }

    #[test]
    fn invalid_offsets_are_rejected() {
        assert!(TimeZone::from_hours(15.0).is_err());
        assert!(TimeZone::from_hours(f64::NAN).is_err());
        assert!(TimeZone::from_hours(0.01).is_err());
    }

    #[test]
    fn ticks_fall_on_local_midnights() {
        let beijing = TimeZone::from_hours(8.0).unwrap();
        // 2017-11-25 08:00 in UTC+8, so the first tick is the next local midnight.
        let start = 1_511_568_000;
        let (ticks, pattern) = time_ticks(start, start + 6 * 86_400, beijing, 8);
        assert_eq!(pattern, "%m-%d");
        assert!(ticks.len() <= 8, "{ticks:?}");
        assert!(ticks.len() >= 3, "{ticks:?}");
        for tick in &ticks {
            assert_eq!(beijing.format(*tick, "%H:%M"), "00:00");
        }
    }

    #[test]
    fn empty_range_has_no_ticks() {
        assert!(time_ticks(10, 10, TimeZone::UTC, 6).0.is_empty());
    }
}
