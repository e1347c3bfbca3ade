//! Tests of the labelled-stream generator: determinism, planted labels, output formats, and
//! realism against the Taobao UserBehavior sample.

use std::collections::{BTreeMap, BTreeSet};

use veer::generate::{generate, write_events, write_truth, GenFormat, GenerateConfig, Generated};
use veer::stats::{self, StreamStats};
use veer::truth::{DecoyKind, TruthRecord};
use veer_models::{Behavior, Event, Id};

const DAY: i64 = 86_400;

const TAOBAO_SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/taobao_ub_usersorted/UserBehavior.csv"
);

fn small_config(seed: u64) -> GenerateConfig {
    GenerateConfig {
        users: 300,
        seed,
        ..GenerateConfig::default()
    }
}

fn shifts(truth: &[TruthRecord]) -> Vec<(&Id, i64)> {
    truth
        .iter()
        .filter_map(|record| match record {
            TruthRecord::InterestShift { user, onset_ts, .. } => Some((user, *onset_ts)),
            TruthRecord::Decoy { .. } => None,
        })
        .collect()
}

fn decoys(truth: &[TruthRecord]) -> Vec<(&Id, DecoyKind, i64)> {
    truth
        .iter()
        .filter_map(|record| match record {
            TruthRecord::Decoy {
                user, decoy, ts, ..
            } => Some((user, *decoy, *ts)),
            TruthRecord::InterestShift { .. } => None,
        })
        .collect()
}

fn events_by_user(events: &[Event]) -> BTreeMap<&Id, Vec<&Event>> {
    let mut by_user: BTreeMap<&Id, Vec<&Event>> = BTreeMap::new();
    for event in events {
        by_user.entry(&event.user).or_default().push(event);
    }
    by_user
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Reads a Taobao UserBehavior CSV, skipping lines that are not 5 valid fields.
fn read_taobao(path: &str) -> Vec<Event> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("failed to read the Taobao sample {path}: {error}"));
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let [user, item, category, behavior, ts] = fields[..] else {
                return None;
            };
            Some(Event::plain(
                ts.parse::<i64>().ok()? * 1000,
                Id::from_field(user),
                Id::from_field(category),
                Id::from_field(item),
                Behavior::parse(behavior)?,
            ))
        })
        .collect()
}

#[test]
fn same_seed_same_output() {
    let first = generate(&small_config(11));
    let second = generate(&small_config(11));
    assert_eq!(first, second);

    let bytes = |generated: &Generated| {
        let mut events = Vec::new();
        write_events(&generated.events, GenFormat::Jsonl, &mut events).unwrap();
        let mut truth = Vec::new();
        write_truth(&generated.truth, &mut truth).unwrap();
        (events, truth)
    };
    assert_eq!(bytes(&first), bytes(&second));
}

#[test]
fn different_seed_different_output() {
    let first = generate(&small_config(11));
    let second = generate(&small_config(12));
    assert_ne!(first.events, second.events);
    assert_ne!(first.truth, second.truth);
}

#[test]
fn events_sorted_and_numbered() {
    let generated = generate(&small_config(3));
    assert!(!generated.events.is_empty());
    for pair in generated.events.windows(2) {
        assert!(
            pair[0].processing_cmp(&pair[1]).is_le(),
            "events out of order: {pair:?}"
        );
    }
    for (position, event) in generated.events.iter().enumerate() {
        assert_eq!(event.line, position as u64 + 1);
    }
}

#[test]
fn planted_label_counts() {
    let config = GenerateConfig::default();
    let generated = generate(&config);
    let shifts = shifts(&generated.truth);
    let decoys = decoys(&generated.truth);

    let expected_shifts = (config.users as f64 * config.shift_frac).round() as usize;
    assert_eq!(shifts.len(), expected_shifts);

    let shifted: BTreeSet<&Id> = shifts.iter().map(|(user, _)| *user).collect();
    assert_eq!(shifted.len(), shifts.len(), "a user has two shifts");
    for (user, kind, _) in &decoys {
        assert!(
            !shifted.contains(user),
            "user {user} has a shift and a {} decoy",
            kind.name()
        );
    }

    let count = |kind: DecoyKind| decoys.iter().filter(|decoy| decoy.1 == kind).count();
    let users = config.users as f64;
    assert!(
        count(DecoyKind::OneOff) as f64 >= 0.04 * users,
        "{} one_off",
        count(DecoyKind::OneOff)
    );
    assert!(
        count(DecoyKind::Burst) as f64 >= 0.04 * users,
        "{} burst",
        count(DecoyKind::Burst)
    );
    let seasonal = count(DecoyKind::Seasonal) as f64;
    assert!(seasonal >= 0.05 * users, "{seasonal} seasonal");
    assert!(seasonal <= 0.20 * users, "{seasonal} seasonal");

    let earliest = config.start_ts + 2 * DAY;
    let latest = config.start_ts + (i64::from(config.days) - 2) * DAY;
    for (user, onset) in &shifts {
        assert!(
            (earliest..latest).contains(onset),
            "user {user} has onset {onset}"
        );
    }
}

#[test]
fn shifted_users_leave_old_categories() {
    let generated = generate(&GenerateConfig::default());
    let by_user = events_by_user(&generated.events);
    let labelled: BTreeSet<&Id> = generated.truth.iter().map(TruthRecord::user).collect();

    // Share of a user's events after `settled` whose category the user visited before `split`.
    let old_share = |events: &[&Event], split: i64, settled: i64| -> Option<f64> {
        let before: BTreeSet<&Id> = events
            .iter()
            .filter(|e| e.ts_secs() < split)
            .map(|e| &e.category)
            .collect();
        let after: Vec<&&Event> = events.iter().filter(|e| e.ts_secs() >= settled).collect();
        if before.is_empty() || after.len() < 5 {
            return None;
        }
        let old = after
            .iter()
            .filter(|e| before.contains(&e.category))
            .count();
        Some(old as f64 / after.len() as f64)
    };

    // Ramps last at most 2 days, so events 2 days after the onset follow the new interests.
    let shifted: Vec<f64> = shifts(&generated.truth)
        .iter()
        .filter_map(|(user, onset)| old_share(&by_user[user], *onset, onset + 2 * DAY))
        .collect();
    let split = GenerateConfig::default().start_ts + 4 * DAY;
    let unlabelled: Vec<f64> = by_user
        .iter()
        .filter(|(user, _)| !labelled.contains(*user))
        .filter_map(|(_, events)| old_share(events, split, split + 2 * DAY))
        .collect();

    assert!(
        shifted.len() >= 200,
        "only {} shifted users with enough events",
        shifted.len()
    );
    let shifted_median = median(shifted);
    let unlabelled_median = median(unlabelled);
    assert!(
        shifted_median <= 0.1,
        "shifted users keep {shifted_median:.3} in old categories"
    );
    assert!(
        unlabelled_median >= 0.25,
        "unlabelled users keep {unlabelled_median:.3}"
    );
}

#[test]
fn shifted_users_stay_active() {
    let generated = generate(&GenerateConfig::default());
    let by_user = events_by_user(&generated.events);
    let shifts = shifts(&generated.truth);
    let active = shifts
        .iter()
        .filter(|(user, onset)| {
            let window = *onset..onset + 3 * DAY;
            by_user[user]
                .iter()
                .filter(|e| window.contains(&e.ts_secs()))
                .count()
                >= 10
        })
        .count();
    let share = active as f64 / shifts.len() as f64;
    assert!(
        share >= 0.8,
        "only {share:.3} of shifts have 10 events within 3 days"
    );
    assert!(
        share < 1.0,
        "every shift is active; the stream should keep some sparse ones"
    );
}

#[test]
fn burst_decoys_are_fast() {
    let generated = generate(&GenerateConfig::default());
    let by_user = events_by_user(&generated.events);
    for (user, _, start) in decoys(&generated.truth)
        .iter()
        .filter(|d| d.1 == DecoyKind::Burst)
    {
        let burst: Vec<i64> = by_user[user]
            .iter()
            .map(|e| e.ts_secs())
            .filter(|ts| (*start..start + 1_500).contains(ts))
            .collect();
        assert!(
            burst.len() >= 50,
            "burst of user {user} has {} events",
            burst.len()
        );
        let slowest = burst
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap();
        assert!(
            slowest <= 5,
            "burst of user {user} has a gap of {slowest} s"
        );
    }
}

#[test]
fn seasonal_decoys_share_a_trend() {
    let generated = generate(&GenerateConfig::default());
    let seasonal: Vec<&TruthRecord> = generated
        .truth
        .iter()
        .filter(|r| {
            matches!(
                r,
                TruthRecord::Decoy {
                    decoy: DecoyKind::Seasonal,
                    ..
                }
            )
        })
        .collect();
    let times: Vec<i64> = decoys(&generated.truth)
        .iter()
        .filter(|d| d.1 == DecoyKind::Seasonal)
        .map(|d| d.2)
        .collect();
    let span = times.iter().max().unwrap() - times.iter().min().unwrap();
    assert!(span <= 2 * DAY, "seasonal decoys spread over {span} s");

    // Trend sessions stay in one or two families of at most 40 leaf categories each, while the
    // catalogue has thousands of leaf categories.
    let mut trend_categories: BTreeSet<&Id> = BTreeSet::new();
    for record in &seasonal {
        if let TruthRecord::Decoy { categories, .. } = record {
            trend_categories.extend(categories);
        }
    }
    assert!(
        seasonal.len() >= 100,
        "only {} seasonal decoys",
        seasonal.len()
    );
    assert!(
        trend_categories.len() <= 80,
        "{} seasonal decoys name {} distinct categories",
        seasonal.len(),
        trend_categories.len()
    );
}

#[test]
fn harder_has_fewer_events_per_user() {
    let default = stats::compute(&generate(&small_config(5)).events);
    let harder_config = GenerateConfig {
        harder: true,
        ..small_config(5)
    };
    let harder = stats::compute(&generate(&harder_config).events);
    assert!(
        harder.events_per_user_per_day < default.events_per_user_per_day,
        "harder {} >= default {}",
        harder.events_per_user_per_day,
        default.events_per_user_per_day
    );
}

#[test]
fn jsonl_and_taobao_lines() {
    let generated = generate(&small_config(9));
    let mut jsonl = Vec::new();
    write_events(&generated.events, GenFormat::Jsonl, &mut jsonl).unwrap();
    let mut taobao = Vec::new();
    write_events(&generated.events, GenFormat::Taobao, &mut taobao).unwrap();
    let jsonl = String::from_utf8(jsonl).unwrap();
    let taobao = String::from_utf8(taobao).unwrap();
    assert_eq!(jsonl.lines().count(), generated.events.len());
    assert_eq!(taobao.lines().count(), generated.events.len());

    let event = &generated.events[0];
    let value: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(value["user"].to_string(), event.user.to_string());
    assert_eq!(value["item"].to_string(), event.item.to_string());
    assert_eq!(value["category"].to_string(), event.category.to_string());
    assert_eq!(value["behavior"], event.behavior.name());
    assert_eq!(value["ts"].as_i64(), Some(event.ts_secs()));

    let expected = format!("{},{},{},", event.user, event.item, event.category);
    let first = taobao.lines().next().unwrap();
    assert!(
        first.starts_with(&expected),
        "{first:?} does not start with {expected:?}"
    );
    for line in taobao.lines() {
        let behavior = line.split(',').nth(3).unwrap();
        assert!(["pv", "cart", "fav", "buy"].contains(&behavior), "{line:?}");
    }
}

#[test]
fn unsorted_events_written_sorted() {
    let generated = generate(&small_config(9));
    let mut reversed = generated.events.clone();
    reversed.reverse();
    let mut sorted_output = Vec::new();
    write_events(&generated.events, GenFormat::Taobao, &mut sorted_output).unwrap();
    let mut reversed_output = Vec::new();
    write_events(&reversed, GenFormat::Taobao, &mut reversed_output).unwrap();
    assert_eq!(sorted_output, reversed_output);
}

#[test]
fn taobao_rejects_search() {
    let mut event = generate(&small_config(9)).events[0].clone();
    event.behavior = Behavior::Search;
    let error = write_events(&[event], GenFormat::Taobao, &mut Vec::new()).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn truth_lines_parse_back_sorted() {
    let generated = generate(&small_config(4));
    let mut output = Vec::new();
    write_truth(&generated.truth, &mut output).unwrap();
    let parsed: Vec<TruthRecord> = String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|line| TruthRecord::parse_line(line).unwrap())
        .collect();
    assert_eq!(parsed, generated.truth);
    for pair in parsed.windows(2) {
        assert!(
            pair[0].user() <= pair[1].user(),
            "truth not sorted by user: {pair:?}"
        );
    }
}

/// Compares the default stream's statistics with the Taobao sample's, within stated bands.
#[test]
fn default_stream_matches_taobao_sample() {
    let real = stats::compute(&read_taobao(TAOBAO_SAMPLE));
    assert!(
        real.users > 800,
        "the Taobao sample has only {} users",
        real.users
    );
    let generated = stats::compute(&generate(&GenerateConfig::default()).events);
    println!("{}", StreamStats::markdown_header());
    println!("{}", generated.to_markdown_row("generator, default"));
    println!("{}", real.to_markdown_row("Taobao sample"));

    let names = ["view", "cart", "fav", "buy"];
    for ((name, generated_share), real_share) in names
        .iter()
        .zip(generated.behavior_mix)
        .zip(real.behavior_mix)
    {
        let gap = (generated_share - real_share).abs();
        assert!(
            gap <= 0.03,
            "{name} share {generated_share:.3} vs real {real_share:.3}"
        );
    }

    let within_factor = |name: &str, generated: f64, real: f64, factor: f64| {
        let ratio = generated / real;
        assert!(
            (1.0 / factor..=factor).contains(&ratio),
            "{name}: generated {generated:.2} vs real {real:.2}, ratio {ratio:.2} beyond {factor}"
        );
    };
    within_factor(
        "distinct categories per user",
        generated.distinct_categories_per_user,
        real.distinct_categories_per_user,
        2.0,
    );
    within_factor(
        "events per user per day",
        generated.events_per_user_per_day,
        real.events_per_user_per_day,
        1.5,
    );
    within_factor(
        "sessions per day",
        generated.sessions_per_day,
        real.sessions_per_day,
        1.5,
    );
    within_factor(
        "events per session",
        generated.events_per_session,
        real.events_per_session,
        1.5,
    );

    let within_gap = |name: &str, generated: f64, real: f64, tolerance: f64| {
        let gap = (generated - real).abs();
        assert!(
            gap <= tolerance,
            "{name}: generated {generated:.3} vs real {real:.3}"
        );
    };
    within_gap(
        "new category share",
        generated.new_category_share,
        real.new_category_share,
        0.15,
    );
    within_gap(
        "outside usual share",
        generated.outside_usual_share,
        real.outside_usual_share,
        0.15,
    );
    within_gap(
        "recurring new share",
        generated.recurring_new_share,
        real.recurring_new_share,
        0.15,
    );
}

#[test]
#[ignore = "speed check: run with --release --ignored --nocapture"]
fn million_events_speed() {
    let users = 10_000;
    let started = std::time::Instant::now();
    let generated = generate(&GenerateConfig {
        users,
        ..GenerateConfig::default()
    });
    let generated_in = started.elapsed();
    let mut output = Vec::new();
    write_events(&generated.events, GenFormat::Jsonl, &mut output).unwrap();
    println!(
        "{users} users: {} events generated in {generated_in:?}, written as {} MB of jsonl in {:?}",
        generated.events.len(),
        output.len() / 1_000_000,
        started.elapsed() - generated_in
    );
}
