//! Per-stage rates of the hot paths, in events per second: each reader's parse, the
//! population profile update, the detector step, and the alert encoder.
//!
//! Run with `cargo bench --bench hot_paths`. Inputs are generated in memory by the labelled
//! stream generator, so the benchmark needs no files.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use veer::generate::{generate, write_events, GenFormat, GenerateConfig};
use veer::sources::{make_parser, Format, LineSplitter, MissingCategory, SourceOptions};
use veer_models::groups::SessionCounter;
use veer_models::{Alert, AlertKind, CategoryShare, Detector, DetectorConfig, Event, GroupMap, Id};
use veer_models::{PopulationDelta, ShiftDetector, UserState};

fn stream() -> Vec<Event> {
    generate(&GenerateConfig {
        users: 1500,
        ..GenerateConfig::default()
    })
    .events
}

fn encoded(events: &[Event], format: GenFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_events(events, format, &mut bytes).expect("writing to memory cannot fail");
    bytes
}

/// REES46 lines written from generated events, since the generator has no REES46 writer.
fn rees46_lines(events: &[Event]) -> Vec<u8> {
    let mut text = String::from("event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n");
    for event in events {
        let seconds = event.ts_secs();
        let days = seconds.div_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let rest = seconds.rem_euclid(86_400);
        text.push_str(&format!(
            "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC,view,{},{},electronics.phone,brand,12.50,{},5f1c2b0e-0000-4000-8000-000000000000\n",
            rest / 3600,
            rest % 3600 / 60,
            rest % 60,
            event.item,
            event.category,
            event.user
        ));
    }
    text.into_bytes()
}

/// Converts days since 1970-01-01 into a civil date (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn retailrocket_lines(events: &[Event]) -> Vec<u8> {
    let mut text = String::from("timestamp,visitorid,event,itemid,transactionid\n");
    for event in events {
        text.push_str(&format!(
            "{},{},view,{},\n",
            event.ts_ms, event.user, event.item
        ));
    }
    text.into_bytes()
}

fn parse_all(bytes: &[u8], format: Format, options: &SourceOptions) -> usize {
    let (mut parser, _) = make_parser(format, options, None).expect("a parser");
    let mut splitter = LineSplitter::new(bytes);
    let mut events = 0;
    while let Some(line) = splitter.next_line().expect("reading memory cannot fail") {
        if let veer::sources::Parsed::Event(event) = parser.parse(line.number, line.bytes) {
            black_box(event);
            events += 1;
        }
    }
    events
}

fn readers(criterion: &mut Criterion) {
    let events = stream();
    let item_options = SourceOptions {
        missing_category: Some(MissingCategory::Item),
        ..SourceOptions::default()
    };
    let inputs = [
        (
            "taobao",
            Format::Taobao,
            encoded(&events, GenFormat::Taobao),
            SourceOptions::default(),
        ),
        (
            "jsonl",
            Format::Jsonl,
            encoded(&events, GenFormat::Jsonl),
            SourceOptions::default(),
        ),
        (
            "rees46",
            Format::Rees46,
            rees46_lines(&events),
            SourceOptions::default(),
        ),
        (
            "retailrocket",
            Format::RetailRocket,
            retailrocket_lines(&events),
            item_options,
        ),
    ];
    let mut group = criterion.benchmark_group("parse");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    for (name, format, bytes, options) in &inputs {
        assert_eq!(
            parse_all(bytes, *format, options),
            events.len(),
            "{name} parses every line"
        );
        group.bench_function(*name, |bench| {
            bench.iter(|| parse_all(bytes, *format, options))
        });
    }
    let taobao = &inputs[0].2;
    group.bench_function("line_scan_baseline", |bench| {
        bench.iter(|| memchr::memchr_iter(b'\n', black_box(taobao)).count())
    });
    group.finish();
}

fn profile_update(criterion: &mut Criterion) {
    let events = stream();
    let mut group = criterion.benchmark_group("profile_update");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("session_cooccurrence", |bench| {
        bench.iter(|| {
            let mut counter = SessionCounter::new(veer_models::session::SessionRule::default());
            let mut delta = PopulationDelta::default();
            for event in &events {
                counter.count(event, &mut delta);
            }
            delta.pairs.len()
        })
    });
    group.finish();
}

fn detector_step(criterion: &mut Criterion) {
    let events = stream();
    let detector =
        ShiftDetector::new(DetectorConfig::default()).expect("default settings are valid");
    let groups = GroupMap::default();
    let mut group = criterion.benchmark_group("detector_step");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("shift_detector", |bench| {
        bench.iter(|| {
            let mut users: rustc_hash::FxHashMap<Id, UserState> = Default::default();
            let mut alerts = Vec::new();
            for event in &events {
                let state = users.entry(event.user.clone()).or_default();
                detector.observe(state, event, &groups, &mut alerts);
            }
            alerts.len()
        })
    });
    group.finish();
}

fn alert_encoder(criterion: &mut Criterion) {
    let share = |category: u64, share: f64| CategoryShare {
        category: Id::from(category),
        share,
    };
    let alert = Alert {
        user: Id::from(1_002_909),
        kind: AlertKind::InterestShift,
        ts: 1_511_673_244,
        onset_ts: 1_511_663_531,
        score: 0.9828,
        from: vec![
            share(1_505_776, 0.4189),
            share(2_858_794, 0.1878),
            share(2_419_332, 0.1334),
        ],
        to: vec![share(1_020_087, 0.5238), share(721_664, 0.3333)],
        signals: vec![
            ("cusum".into(), 26.2),
            ("novel_share".into(), 0.875),
            ("divergence".into(), 0.69),
        ],
        events_since_onset: 24,
        segment_before: None,
        segment_after: None,
    };
    let mut group = criterion.benchmark_group("alert_encoder");
    group.throughput(Throughput::Elements(1));
    group.bench_function("to_json_line", |bench| {
        bench.iter(|| black_box(&alert).to_json_line())
    });
    group.finish();
}

criterion_group!(
    hot_paths,
    readers,
    profile_update,
    detector_step,
    alert_encoder
);
criterion_main!(hot_paths);
