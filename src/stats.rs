//! Realism statistics of an event stream, for comparing a generated stream with real data.
//!
//! Apart from the counts, the span and the behaviour mix, every statistic is a median over users
//! (or over sessions), so that a few very active users or bots do not dominate it.
//!
//! Time-based statistics use the stream's span, from the 0.1 % to the 99.9 % quantile of the
//! event times, so that a few late or corrupt timestamps do not stretch it. The Taobao
//! UserBehavior data, for example, has a row 2.5 months before its nominal start. Events
//! outside the span are left out of every statistic except `users`, `events` and
//! `behavior_mix`.
//!
//! The span is split into a first part (its first 5/9) and a second part (the rest). On a
//! 9-day stream this is days 1-5 against days 6-9.

use std::collections::HashMap;

use veer_models::{Behavior, Event, Id};

/// A gap between two events of a user longer than this starts a new session.
pub const SESSION_GAP_MS: i64 = 30 * 60 * 1000;

/// Share of the first part's events that the user's usual categories cover.
const USUAL_COVERAGE: f64 = 0.8;

const DAY_MS: f64 = 86_400_000.0;

/// Realism statistics of an event stream, as computed by [`compute`]. A median over no values is
/// NaN.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamStats {
    /// Distinct users.
    pub users: usize,
    /// All events, inside the span or not.
    pub events: usize,
    /// Length of the span in days.
    pub days: f64,
    /// Median over users of events per day of the span.
    pub events_per_user_per_day: f64,
    /// Median over users of sessions per day of the span, with sessions split by
    /// [`SESSION_GAP_MS`].
    pub sessions_per_day: f64,
    /// Median over all sessions of their number of events.
    pub events_per_session: f64,
    /// Median over users of the number of distinct categories.
    pub distinct_categories_per_user: f64,
    /// Shares of `view`, `cart`, `fav` and `buy` among all events. Other behaviours count in the
    /// total only.
    pub behavior_mix: [f64; 4],
    /// Median, over users with events in both parts, of the share of second-part events whose
    /// category is outside the user's usual categories. The usual categories are the user's
    /// most frequent first-part categories (ties by lower category), taken in that order until
    /// they cover at least 80 % of the first-part events.
    pub outside_usual_share: f64,
    /// Median, over users with events in both parts, of the share of second-part events whose
    /// category has no first-part event of that user.
    pub new_category_share: f64,
    /// Median, over users with at least one such new category, of the share of new categories
    /// that occur in at least 2 distinct sessions.
    pub recurring_new_share: f64,
}

/// Computes the statistics of `events`, in any order.
///
/// # Examples
///
/// ```
/// use veer::generate::{generate, GenerateConfig};
///
/// let stream = generate(&GenerateConfig { users: 100, ..GenerateConfig::default() });
/// let stats = veer::stats::compute(&stream.events);
/// assert_eq!(stats.users, 100);
/// assert!((stats.behavior_mix[0] - 0.9).abs() < 0.03, "view share {}", stats.behavior_mix[0]);
/// ```
pub fn compute(events: &[Event]) -> StreamStats {
    let mut behavior_counts = [0usize; 4];
    for event in events {
        let slot = match event.behavior {
            Behavior::View => 0,
            Behavior::Cart => 1,
            Behavior::Fav => 2,
            Behavior::Buy => 3,
            _ => continue,
        };
        behavior_counts[slot] += 1;
    }
    let total = events.len().max(1) as f64;
    let behavior_mix = behavior_counts.map(|count| count as f64 / total);

    let mut user_index: HashMap<&Id, u32> = HashMap::new();
    let mut category_index: HashMap<&Id, u32> = HashMap::new();
    let mut rows: Vec<Row> = events
        .iter()
        .map(|event| {
            let next_user = user_index.len() as u32;
            let next_category = category_index.len() as u32;
            Row {
                user: *user_index.entry(&event.user).or_insert(next_user),
                ts_ms: event.ts_ms,
                category: *category_index
                    .entry(&event.category)
                    .or_insert(next_category),
            }
        })
        .collect();

    let Some((span_start, span_end)) = span(&rows) else {
        return StreamStats {
            users: 0,
            events: 0,
            days: 0.0,
            events_per_user_per_day: f64::NAN,
            sessions_per_day: f64::NAN,
            events_per_session: f64::NAN,
            distinct_categories_per_user: f64::NAN,
            behavior_mix,
            outside_usual_share: f64::NAN,
            new_category_share: f64::NAN,
            recurring_new_share: f64::NAN,
        };
    };
    // A span of one instant still counts as one second, so that rates stay finite.
    let days = ((span_end - span_start).max(1000)) as f64 / DAY_MS;
    let cut = span_start + (span_end - span_start) * 5 / 9;

    rows.retain(|row| (span_start..=span_end).contains(&row.ts_ms));
    rows.sort_unstable_by_key(|row| (row.user, row.ts_ms, row.category));

    let mut per_user = PerUser::default();
    for user_rows in rows.chunk_by(|a, b| a.user == b.user) {
        per_user.add(user_rows, days, cut);
    }

    StreamStats {
        users: user_index.len(),
        events: events.len(),
        days,
        events_per_user_per_day: median(per_user.events_per_day),
        sessions_per_day: median(per_user.sessions_per_day),
        events_per_session: median(per_user.session_lengths),
        distinct_categories_per_user: median(per_user.distinct_categories),
        behavior_mix,
        outside_usual_share: median(per_user.outside_usual),
        new_category_share: median(per_user.new_category),
        recurring_new_share: median(per_user.recurring_new),
    }
}

impl StreamStats {
    /// Returns the header of the Markdown table that [`StreamStats::to_markdown_row`] fills.
    pub fn markdown_header() -> String {
        let columns = [
            "stream",
            "users",
            "events",
            "days",
            "events/user/day",
            "sessions/user/day",
            "events/session",
            "categories/user",
            "view",
            "cart",
            "fav",
            "buy",
            "outside usual",
            "new categories",
            "recurring new",
        ];
        let separators = vec!["---"; columns.len()];
        format!(
            "| {} |\n| {} |",
            columns.join(" | "),
            separators.join(" | ")
        )
    }

    /// Formats the statistics as one row of the table of [`StreamStats::markdown_header`].
    pub fn to_markdown_row(&self, name: &str) -> String {
        // A median or share over no values is NaN, shown as "n/a" like `veer eval` does.
        let number = |value: f64, decimals: usize| {
            if value.is_finite() {
                format!("{value:.decimals$}")
            } else {
                "n/a".to_string()
            }
        };
        let percent = |share: f64| {
            if self.events == 0 || !share.is_finite() {
                "n/a".to_string()
            } else {
                format!("{:.1}%", share * 100.0)
            }
        };
        let cells = [
            name.to_string(),
            self.users.to_string(),
            self.events.to_string(),
            number(self.days, 2),
            number(self.events_per_user_per_day, 2),
            number(self.sessions_per_day, 2),
            number(self.events_per_session, 1),
            number(self.distinct_categories_per_user, 1),
            percent(self.behavior_mix[0]),
            percent(self.behavior_mix[1]),
            percent(self.behavior_mix[2]),
            percent(self.behavior_mix[3]),
            number(self.outside_usual_share, 3),
            number(self.new_category_share, 3),
            number(self.recurring_new_share, 3),
        ];
        format!("| {} |", cells.join(" | "))
    }
}

/// One event reduced to what the statistics need, with interned ids.
#[derive(Clone, Copy, Debug)]
struct Row {
    user: u32,
    ts_ms: i64,
    category: u32,
}

/// Returns the 0.1 % and 99.9 % quantiles of the event times, or `None` without events.
fn span(rows: &[Row]) -> Option<(i64, i64)> {
    let mut times: Vec<i64> = rows.iter().map(|row| row.ts_ms).collect();
    if times.is_empty() {
        return None;
    }
    times.sort_unstable();
    let at = |quantile: f64| times[((times.len() - 1) as f64 * quantile).round() as usize];
    Some((at(0.001), at(0.999)))
}

/// Per-user values whose medians make up the statistics.
#[derive(Default)]
struct PerUser {
    events_per_day: Vec<f64>,
    sessions_per_day: Vec<f64>,
    session_lengths: Vec<f64>,
    distinct_categories: Vec<f64>,
    outside_usual: Vec<f64>,
    new_category: Vec<f64>,
    recurring_new: Vec<f64>,
}

impl PerUser {
    /// Adds one user's events, sorted by time.
    fn add(&mut self, rows: &[Row], days: f64, cut: i64) {
        self.events_per_day.push(rows.len() as f64 / days);

        let mut sessions = Vec::with_capacity(rows.len());
        let mut session = 0usize;
        let mut length = 0usize;
        for (position, row) in rows.iter().enumerate() {
            if position > 0 && row.ts_ms - rows[position - 1].ts_ms > SESSION_GAP_MS {
                self.session_lengths.push(length as f64);
                session += 1;
                length = 0;
            }
            length += 1;
            sessions.push(session);
        }
        self.session_lengths.push(length as f64);
        self.sessions_per_day.push((session + 1) as f64 / days);

        let mut categories: Vec<u32> = rows.iter().map(|row| row.category).collect();
        categories.sort_unstable();
        categories.dedup();
        self.distinct_categories.push(categories.len() as f64);

        let split = rows.partition_point(|row| row.ts_ms < cut);
        if split == 0 || split == rows.len() {
            return;
        }
        let (first, second) = rows.split_at(split);

        let mut first_counts: HashMap<u32, usize> = HashMap::new();
        for row in first {
            *first_counts.entry(row.category).or_default() += 1;
        }
        let mut ranked: Vec<(u32, usize)> = first_counts.iter().map(|(&c, &n)| (c, n)).collect();
        ranked.sort_unstable_by_key(|&(category, count)| (std::cmp::Reverse(count), category));
        let mut usual = Vec::new();
        let mut covered = 0;
        for (category, count) in ranked {
            if covered as f64 >= USUAL_COVERAGE * first.len() as f64 {
                break;
            }
            usual.push(category);
            covered += count;
        }
        let outside = second
            .iter()
            .filter(|row| !usual.contains(&row.category))
            .count();
        self.outside_usual
            .push(outside as f64 / second.len() as f64);

        let mut new_sessions: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut new_events = 0;
        for (row, &session) in second.iter().zip(&sessions[split..]) {
            if !first_counts.contains_key(&row.category) {
                new_events += 1;
                let seen = new_sessions.entry(row.category).or_default();
                if seen.last() != Some(&session) {
                    seen.push(session);
                }
            }
        }
        self.new_category
            .push(new_events as f64 / second.len() as f64);
        if !new_sessions.is_empty() {
            let recurring = new_sessions.values().filter(|seen| seen.len() >= 2).count();
            self.recurring_new
                .push(recurring as f64 / new_sessions.len() as f64);
        }
    }
}

/// Returns the median, averaging the two middle values of an even count, or NaN when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    fn event(user: u64, category: u64, behavior: Behavior, ts_secs: i64) -> Event {
        Event::plain(ts_secs * 1000, user, category, 1u64, behavior)
    }

    /// Returns one user's events over 9 days: categories 1 and 2 on days 1-5, then 2, 3 and 4,
    /// with 3 in two sessions.
    fn one_user_stream() -> Vec<Event> {
        let day = 86_400;
        vec![
            event(5, 1, Behavior::View, 0),
            event(5, 1, Behavior::View, 60),
            event(5, 1, Behavior::Cart, 120),
            event(5, 2, Behavior::View, day),
            event(5, 2, Behavior::View, 6 * day),
            event(5, 3, Behavior::Buy, 6 * day + 60),
            event(5, 3, Behavior::View, 8 * day),
            event(5, 4, Behavior::Fav, 9 * day),
        ]
    }

    #[test]
    fn stats_of_one_user() {
        let stats = compute(&one_user_stream());
        assert_eq!(stats.users, 1);
        assert_eq!(stats.events, 8);
        assert!((stats.days - 9.0).abs() < 1e-9, "days {}", stats.days);
        assert_eq!(stats.distinct_categories_per_user, 4.0);
        assert_eq!(
            stats.behavior_mix,
            [5.0 / 8.0, 1.0 / 8.0, 1.0 / 8.0, 1.0 / 8.0]
        );
        // Sessions: [0, 60, 120], [day], [6 day, +60], [8 day], [9 day].
        assert!((stats.sessions_per_day - 5.0 / 9.0).abs() < 1e-9);
        assert_eq!(stats.events_per_session, 1.0);
        // Second part: 2, 3, 3, 4. Usual categories: 1 alone covers 3 of 4 first-part events,
        // below 80 %, so 1 and 2.
        assert_eq!(stats.outside_usual_share, 0.75);
        assert_eq!(stats.new_category_share, 0.75);
        // New categories 3 (two sessions) and 4 (one session).
        assert_eq!(stats.recurring_new_share, 0.5);
    }

    #[test]
    fn empty_stream_row_shows_na() {
        let row = compute(&[]).to_markdown_row("empty");
        assert!(!row.contains("NaN"), "{row}");
        assert_eq!(row, "| empty | 0 | 0 | 0.00 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |");
    }

    #[test]
    fn stats_ignore_input_order() {
        let mut events = one_user_stream();
        let sorted = compute(&events);
        events.reverse();
        assert_eq!(compute(&events), sorted);
    }

    #[test]
    fn stats_trim_outlier_timestamps() {
        let mut events = Vec::new();
        for user in 0..20 {
            for hour in 0..100 {
                events.push(event(
                    user,
                    hour % 7,
                    Behavior::View,
                    1_000_000 + hour as i64 * 3_600,
                ));
            }
        }
        events.push(event(0, 1, Behavior::View, 0));
        let stats = compute(&events);
        assert!(
            (stats.days - 99.0 / 24.0).abs() < 1e-9,
            "days {}",
            stats.days
        );
    }

    #[test]
    fn stats_of_empty_stream() {
        let stats = compute(&[]);
        assert_eq!(stats.events, 0);
        assert!(stats.new_category_share.is_nan());
        assert!(StreamStats::markdown_header().starts_with("| stream |"));
    }
}
