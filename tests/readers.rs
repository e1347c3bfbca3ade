//! Input readers on real sample files of each format and on small inputs with known faults.
//!
//! Every test reads its file through the public `veer::sources` API, the way the engine does,
//! and fails when a file is missing.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use veer::sources::{
    detect_format, make_parser, open_input, BadRecord, Format, ItemCatalog, LineSplitter,
    MissingCategory, Parsed, SourceError, SourceOptions,
};
use veer_models::{Behavior, Event, Id};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared");

/// Returns the path of a file under the shared folder, failing the test when it is missing.
fn shared(relative: &str) -> PathBuf {
    let path = Path::new(SHARED).join(relative);
    assert!(path.is_file(), "test input {} is missing", path.display());
    path
}

/// Everything a reader produced from one input.
#[derive(Debug, Default)]
struct Outcome {
    events: Vec<Event>,
    bad: Vec<BadRecord>,
    skipped: Vec<u64>,
    warnings: Vec<String>,
    lines: u64,
}

impl Outcome {
    fn bad_lines(&self) -> Vec<u64> {
        self.bad.iter().map(|record| record.line).collect()
    }

    fn bad_line(&self, line: u64) -> &BadRecord {
        self.bad
            .iter()
            .find(|record| record.line == line)
            .unwrap_or_else(|| panic!("line {line} is not a bad record: {:?}", self.bad))
    }

    fn event_at(&self, line: u64) -> &Event {
        self.events
            .iter()
            .find(|event| event.line == line)
            .unwrap_or_else(|| panic!("line {line} is not an event"))
    }

    fn behavior_counts(&self) -> BTreeMap<Behavior, usize> {
        let mut counts = BTreeMap::new();
        for event in &self.events {
            *counts.entry(event.behavior).or_default() += 1;
        }
        counts
    }

    /// Returns the earliest and the latest event time, in Unix milliseconds.
    fn time_range(&self) -> (i64, i64) {
        let times = self.events.iter().map(|event| event.ts_ms);
        let min = times.clone().min().expect("at least one event");
        let max = times.max().expect("at least one event");
        (min, max)
    }

    fn distinct<T: std::hash::Hash + Eq>(&self, key: impl Fn(&Event) -> T) -> usize {
        self.events.iter().map(key).collect::<HashSet<_>>().len()
    }
}

fn read_lines(
    mut lines: LineSplitter<impl BufRead>,
    format: Format,
    options: &SourceOptions,
    events_path: Option<&Path>,
) -> Outcome {
    let (mut parser, warnings) = make_parser(format, options, events_path).unwrap();
    let mut outcome = Outcome {
        warnings,
        ..Outcome::default()
    };
    while let Some(parsed) = lines.next_parsed(parser.as_mut()).unwrap() {
        outcome.lines = lines.line_number();
        match parsed {
            Parsed::Event(event) => outcome.events.push(event),
            Parsed::Skip => outcome.skipped.push(lines.line_number()),
            Parsed::Bad(record) => outcome.bad.push(record),
        }
    }
    outcome
}

fn read_file_with(path: &Path, format: Format, options: &SourceOptions) -> Outcome {
    let reader = open_input(path.to_str().unwrap()).unwrap();
    read_lines(LineSplitter::new(reader), format, options, Some(path))
}

fn read_file(path: &Path, format: Format) -> Outcome {
    read_file_with(path, format, &SourceOptions::default())
}

fn detect_file(path: &Path) -> Option<Format> {
    let mut reader = open_input(path.to_str().unwrap()).unwrap();
    detect_format(reader.fill_buf().unwrap())
}

/// Unix milliseconds of 2017-11-25 00:00:00 UTC+8, the start of Taobao's documented window.
const TAOBAO_WINDOW_START_MS: i64 = 1_511_539_200_000;

#[test]
fn taobao_usersorted_truncated_last_line() {
    let outcome = read_file(
        &shared("data/taobao_ub_usersorted/UserBehavior.csv"),
        Format::Taobao,
    );
    assert_eq!(outcome.lines, 84_476);
    assert_eq!(outcome.events.len(), 84_475);
    assert_eq!(outcome.bad_lines(), vec![84_476]);
    let last = outcome.bad_line(84_476);
    assert!(last.reason.contains("found 4"), "{}", last.reason);
    assert_eq!(last.raw, "100370,1968385,1875258,pv");
    assert!(outcome.skipped.is_empty());

    let counts = outcome.behavior_counts();
    assert_eq!(counts[&Behavior::View], 75_872);
    assert_eq!(counts[&Behavior::Cart], 4_497);
    assert_eq!(counts[&Behavior::Fav], 2_356);
    assert_eq!(counts[&Behavior::Buy], 1_750);
    assert_eq!(outcome.distinct(|event| event.user.clone()), 815);
    assert_eq!(outcome.distinct(|event| event.category.clone()), 2_914);

    // Rows outside the documented window are read, and left to the late-data policy.
    let early = outcome
        .events
        .iter()
        .filter(|event| event.ts_ms < TAOBAO_WINDOW_START_MS);
    assert_eq!(early.count(), 35);
    let (min, max) = outcome.time_range();
    assert_eq!(min, 1_505_117_799_000);
    assert_eq!(max, 1_512_316_763_000);
    assert!(outcome
        .events
        .iter()
        .all(|event| event.item.as_int().is_some()));
}

#[test]
fn taobao_crlf_without_final_newline() {
    let outcome = read_file(
        &shared("data/taobao_ub_subsample_crlf/UserBehavior.csv"),
        Format::Taobao,
    );
    assert_eq!(outcome.lines, 4_000);
    assert_eq!(outcome.events.len(), 4_000);
    assert!(outcome.bad.is_empty(), "{:?}", outcome.bad.first());
    let counts = outcome.behavior_counts();
    assert_eq!(counts[&Behavior::View], 3_581);
    assert_eq!(counts[&Behavior::Cart], 199);
    assert_eq!(counts[&Behavior::Fav], 116);
    assert_eq!(counts[&Behavior::Buy], 104);

    let first = outcome.event_at(1);
    assert_eq!(first.user, Id::int(543_462));
    assert_eq!(first.ts_ms, 1_511_658_000_000);
    let last = outcome.event_at(4_000);
    assert_eq!(last.user, Id::int(400_512));
    assert_eq!(last.item, Id::int(316_530));
    assert_eq!(last.category, Id::int(4_874_384));
    assert_eq!(last.ts_ms, 1_511_678_730_000);
}

#[test]
fn taobao_timesorted_file() {
    let outcome = read_file(
        &shared("data/taobao_ub_timesorted/UserBehavior.csv"),
        Format::Taobao,
    );
    assert_eq!(outcome.events.len(), 110_300);
    assert!(outcome.bad.is_empty(), "{:?}", outcome.bad.first());
    let counts = outcome.behavior_counts();
    assert_eq!(counts[&Behavior::View], 98_361);
    assert_eq!(counts[&Behavior::Cart], 6_063);
    assert_eq!(counts[&Behavior::Fav], 3_383);
    assert_eq!(counts[&Behavior::Buy], 2_493);
    assert_eq!(outcome.distinct(|event| event.user.clone()), 66_454);
    assert_eq!(outcome.distinct(|event| event.item.clone()), 84_793);
    assert!(outcome
        .events
        .windows(2)
        .all(|pair| pair[0].ts_ms <= pair[1].ts_ms));
    assert_eq!(outcome.events[0].ts_ms, 1_511_658_000_000);
    assert_eq!(outcome.events.last().unwrap().ts_ms, 1_511_665_811_000);
    let lines: Vec<u64> = outcome.events.iter().map(|event| event.line).collect();
    assert_eq!(lines, (1..=110_300).collect::<Vec<u64>>());
}

#[test]
fn rees46_sample_with_truncated_last_line() {
    let outcome = read_file(&shared("data/rees46_2019oct/2019-Oct.csv"), Format::Rees46);
    assert_eq!(outcome.lines, 17_436);
    assert_eq!(outcome.skipped, vec![1]);
    assert_eq!(outcome.events.len(), 17_434);
    assert_eq!(outcome.bad_lines(), vec![17_436]);
    let reason = &outcome.bad_line(17_436).reason;
    assert!(
        reason.contains("expected 9 comma-separated fields, found 8"),
        "{reason}"
    );

    let counts = outcome.behavior_counts();
    assert_eq!(counts[&Behavior::View], 17_055);
    assert_eq!(counts[&Behavior::Buy], 214);
    assert_eq!(counts[&Behavior::Cart], 165);
    assert_eq!(outcome.distinct(|event| event.user.clone()), 4_504);
    assert_eq!(outcome.distinct(|event| event.item.clone()), 6_493);
    assert_eq!(outcome.distinct(|event| event.category.clone()), 434);
    assert_eq!(outcome.distinct(|event| event.session.clone()), 5_066);

    let first = outcome.event_at(2);
    assert_eq!(first.ts_ms, 1_569_888_000_000);
    assert_eq!(first.category, Id::int(2_103_807_459_595_387_724));
    assert_eq!(first.brand, Some(Id::text("shiseido")));
    assert_eq!(first.price, Some(35.79));
    assert_eq!(first.topic, None);
    assert_eq!(
        first.session.as_deref(),
        Some("72d76fde-8bb3-4e00-8c23-a032dfed738c")
    );
    let second = outcome.event_at(3);
    assert_eq!(second.topic, Some(Id::text("appliances")));

    let no_topic = outcome.events.iter().filter(|event| event.topic.is_none());
    assert_eq!(no_topic.count(), 5_746);
    let no_brand = outcome.events.iter().filter(|event| event.brand.is_none());
    assert_eq!(no_brand.count(), 2_477);
    let free = outcome
        .events
        .iter()
        .filter(|event| event.price == Some(0.0));
    assert_eq!(free.count(), 19);
    assert_eq!(
        outcome.distinct(|event| event.topic.clone()),
        14,
        "13 topics and none"
    );
    let (_, max) = outcome.time_range();
    assert_eq!(max, 1_569_898_200_000);
}

#[test]
fn retailrocket_sample_without_item_properties() {
    let path = shared("data/retailrocket_events_sample/events.csv");
    let outcome = read_file(&path, Format::RetailRocket);
    assert_eq!(outcome.skipped, vec![1]);
    assert_eq!(outcome.events.len(), 2_771);
    assert!(outcome.bad.is_empty(), "{:?}", outcome.bad.first());

    assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
    let warning = &outcome.warnings[0];
    assert!(
        warning.contains("no RetailRocket item properties"),
        "{warning}"
    );
    assert!(
        warning.contains("item ids are used as category ids"),
        "{warning}"
    );
    assert!(warning.contains("--item-properties"), "{warning}");
    assert!(warning.contains("--missing-category bad"), "{warning}");
    assert!(outcome
        .events
        .iter()
        .all(|event| event.category == event.item));

    let counts = outcome.behavior_counts();
    assert_eq!(counts[&Behavior::View], 2_695);
    assert_eq!(counts[&Behavior::Cart], 62);
    assert_eq!(counts[&Behavior::Buy], 14);
    assert_eq!(outcome.distinct(|event| event.user.clone()), 1_500);
    assert_eq!(outcome.distinct(|event| event.item.clone()), 2_127);
    let (min, max) = outcome.time_range();
    assert_eq!(min, 1_430_637_875_596);
    assert_eq!(max, 1_442_541_735_449);

    // `transactionid` written as a float by pandas.
    let transaction = outcome.event_at(478);
    assert_eq!(transaction.behavior, Behavior::Buy);
    assert_eq!(transaction.user, Id::int(264_810));
    assert_eq!(transaction.item, Id::int(325_310));
    // The one duplicate row of the sample is read twice, with its own line numbers.
    assert_eq!(outcome.event_at(1_217).ts_ms, outcome.event_at(1_218).ts_ms);
    assert_eq!(outcome.event_at(1_217).item, outcome.event_at(1_218).item);
}

#[test]
fn retailrocket_bad_policy_needs_properties() {
    let path = shared("data/retailrocket_events_sample/events.csv");
    let options = SourceOptions {
        missing_category: Some(MissingCategory::Bad),
        ..SourceOptions::default()
    };
    let error = make_parser(Format::RetailRocket, &options, Some(&path))
        .err()
        .unwrap();
    assert!(
        matches!(error, SourceError::NoItemProperties { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("retailrocket_events_sample"), "{message}");
    assert!(message.contains("--item-properties"), "{message}");
}

#[test]
fn retailrocket_case_bom_crlf_snapshots() {
    let path = shared("cases/07-retailrocket-bom-crlf/events.csv");
    shared("cases/07-retailrocket-bom-crlf/item_properties_part1.csv");
    shared("cases/07-retailrocket-bom-crlf/item_properties_part2.csv");
    // The item properties are found beside the events file.
    let outcome = read_file(&path, Format::RetailRocket);
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    assert_eq!(outcome.lines, 52);
    assert_eq!(outcome.skipped, vec![1, 52], "header and final blank line");

    assert_eq!(outcome.events.len(), 44);
    let counts = outcome.behavior_counts();
    assert_eq!(counts[&Behavior::View], 39);
    assert_eq!(counts[&Behavior::Cart], 2);
    assert_eq!(counts[&Behavior::Buy], 3);

    assert_eq!(outcome.bad_lines(), vec![17, 23, 29, 34, 35, 44]);
    for record in &outcome.bad {
        assert_eq!(
            record.reason,
            "item 400 has no categoryid in the item properties"
        );
        assert!(!record.raw.ends_with('\r'), "{:?}", record.raw);
    }

    // Milliseconds read as milliseconds: every event is in May or June 2015.
    let may_first_2015 = 1_430_438_400_000;
    let july_first_2015 = 1_435_708_800_000;
    for event in &outcome.events {
        assert!(
            (may_first_2015..july_first_2015).contains(&event.ts_ms),
            "{event:?}"
        );
    }

    let item_200 = Id::int(200);
    for line in [2, 5, 6, 8, 10, 12, 13, 25, 26, 27, 28, 30, 32] {
        let event = outcome.event_at(line);
        assert_eq!(event.item, item_200, "line {line}");
        assert_eq!(event.category, Id::int(1338), "line {line}");
    }
    for line in [36, 40, 48, 51] {
        let event = outcome.event_at(line);
        assert_eq!(event.item, item_200, "line {line}");
        assert_eq!(event.category, Id::int(491), "line {line}");
    }
    let item_200_events = outcome.events.iter().filter(|event| event.item == item_200);
    assert_eq!(item_200_events.count(), 17);
    for event in outcome
        .events
        .iter()
        .filter(|event| event.item == Id::int(300))
    {
        assert_eq!(event.category, Id::int(682), "line {}", event.line);
    }
    assert!(outcome.events.iter().all(|event| event.topic.is_none()));
}

#[test]
fn retailrocket_case_with_item_policy() {
    let path = shared("cases/07-retailrocket-bom-crlf/events.csv");
    let options = SourceOptions {
        missing_category: Some(MissingCategory::Item),
        ..SourceOptions::default()
    };
    let outcome = read_file_with(&path, Format::RetailRocket, &options);
    assert!(outcome.bad.is_empty(), "{:?}", outcome.bad);
    assert_eq!(outcome.events.len(), 50);
    assert_eq!(outcome.event_at(17).category, Id::int(400));
    assert_eq!(outcome.event_at(2).category, Id::int(1338));
}

#[test]
fn retailrocket_topic_from_category_tree() {
    let folder = "cases/07-retailrocket-bom-crlf";
    let options = SourceOptions {
        item_properties: vec![
            shared(&format!("{folder}/item_properties_part1.csv")),
            shared(&format!("{folder}/item_properties_part2.csv")),
        ],
        category_tree: Some(shared("data/retailrocket_category_tree/category_tree.csv")),
        ..SourceOptions::default()
    };
    let outcome = read_file_with(
        &shared(&format!("{folder}/events.csv")),
        Format::RetailRocket,
        &options,
    );
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    assert_eq!(outcome.events.len(), 44);
    // Roots in the real tree: 1338 -> 395, 491 -> 679, 682 -> 1532.
    assert_eq!(outcome.event_at(2).topic, Some(Id::int(395)));
    assert_eq!(outcome.event_at(36).topic, Some(Id::int(679)));
    assert_eq!(outcome.event_at(4).topic, Some(Id::int(1532)));
}

#[test]
fn category_tree_roots() {
    let tree = shared("data/retailrocket_category_tree/category_tree.csv");
    let (catalog, warnings) = ItemCatalog::load(&[], Some(&tree)).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(catalog.tree_size(), 1_669);
    let root = |category: u64| catalog.root_of(&Id::from(category)).cloned();
    assert_eq!(root(1338), Some(Id::int(395)));
    assert_eq!(root(491), Some(Id::int(679)));
    assert_eq!(root(682), Some(Id::int(1532)));
    assert_eq!(root(1016), Some(Id::int(1532)));
    assert_eq!(catalog.root_of(&Id::from(395u64)), Some(&Id::from(395u64)));
    assert_eq!(catalog.root_of(&Id::from(999_999u64)), None);
}

#[test]
fn item_properties_with_wrong_header() {
    let events = shared("cases/07-retailrocket-bom-crlf/events.csv");
    let error = ItemCatalog::load(std::slice::from_ref(&events), None)
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(
        matches!(error, SourceError::InvalidHeader { .. }),
        "{error:?}"
    );
    assert!(message.contains(&events.display().to_string()), "{message}");
    assert!(
        message.contains("timestamp,itemid,property,value"),
        "{message}"
    );
    assert!(message.contains("--item-properties"), "{message}");
}

#[test]
fn taobao_case_malformed_lines() {
    let path = shared("cases/08-taobao-malformed-lines/input.csv");
    let outcome = read_file(&path, Format::Taobao);
    assert_eq!(outcome.lines, 179);
    assert_eq!(outcome.bad_lines(), vec![1, 15, 30, 45, 60, 75, 90, 105]);
    assert_eq!(outcome.skipped, vec![120]);
    assert_eq!(outcome.events.len(), 170);
    assert_eq!(outcome.events.last().unwrap().line, 179);

    let reason = |line| outcome.bad_line(line).reason.clone();
    assert!(reason(1).contains("header"), "{}", reason(1));
    assert!(reason(15).contains("found 4"), "{}", reason(15));
    assert!(reason(30).contains("found 6"), "{}", reason(30));
    assert!(reason(45).contains("\"clk\""), "{}", reason(45));
    assert!(reason(60).contains("15116OO200"), "{}", reason(60));
    assert!(
        reason(75).contains("behavior_type is not valid UTF-8"),
        "{}",
        reason(75)
    );
    assert!(
        reason(90).contains("item id is not valid UTF-8"),
        "{}",
        reason(90)
    );
    assert!(reason(105).contains("item id"), "{}", reason(105));
    assert!(
        reason(105).contains("not an integer of at most 38 digits"),
        "{}",
        reason(105)
    );
    assert!(
        reason(105).len() < 200,
        "the reason quotes only the start of the id"
    );
    assert!(outcome.bad_line(105).raw.len() <= 1024);
    for record in &outcome.bad {
        assert!(!record.raw.is_empty(), "line {}", record.line);
    }
}

#[test]
fn jsonl_case_ids_and_shapes() {
    let path = shared("cases/09-json-ids-and-shapes/input.jsonl");
    let outcome = read_file(&path, Format::Jsonl);
    assert_eq!(outcome.lines, 454);
    assert_eq!(outcome.bad_lines(), vec![12, 24, 36, 48]);
    assert_eq!(outcome.events.len(), 450);

    let reason = |line| outcome.bad_line(line).reason.clone();
    assert!(
        reason(12).contains("category is an object"),
        "{}",
        reason(12)
    );
    assert!(
        reason(24).contains("expected a JSON object"),
        "{}",
        reason(24)
    );
    assert!(reason(36).contains("trailing comma"), "{}", reason(36));
    assert!(reason(48).contains("user is null"), "{}", reason(48));

    // Line 1 starts with a byte order mark and carries a string `ts`, an alias and extra fields.
    let first = outcome.event_at(1);
    assert_eq!(first.user, Id::int(123_456_789_012_345_678_901));
    assert_eq!(first.behavior, Behavior::View);
    assert_eq!(first.ts_ms, 1_511_539_200_000);
    assert_eq!(first.category, Id::int(12));

    let mut per_user: BTreeMap<Id, usize> = BTreeMap::new();
    for event in &outcome.events {
        *per_user.entry(event.user.clone()).or_default() += 1;
    }
    let expected: BTreeMap<Id, usize> = [
        Id::int(9_196_877_626_998_784),
        Id::int(9_196_877_626_998_785),
        Id::int(123_456_789_012_345_678_901),
        Id::int(123_456_789_012_345_678_902),
        Id::text("u-7f3a"),
    ]
    .into_iter()
    .map(|user| (user, 90))
    .collect();
    assert_eq!(per_user, expected);
    assert_eq!(
        Id::int(123_456_789_012_345_678_901).to_string(),
        "123456789012345678901"
    );
    let behaviors: HashSet<Behavior> = outcome.events.iter().map(|event| event.behavior).collect();
    assert!(behaviors.contains(&Behavior::Cart), "addtocart normalised");
    assert!(behaviors.contains(&Behavior::Buy), "purchase normalised");
    assert!(behaviors.contains(&Behavior::Fav), "like normalised");
}

#[test]
fn rees46_case_duplicates_and_gaps() {
    for (file, rows, removals) in [("input.csv", 347, 7), ("input-dedup.csv", 215, 5)] {
        let path = shared(&format!("cases/12-rees46-duplicate-rows/{file}"));
        let outcome = read_file(&path, Format::Rees46);
        assert!(outcome.bad.is_empty(), "{file}: {:?}", outcome.bad);
        assert_eq!(outcome.skipped, vec![1], "{file}");
        assert_eq!(outcome.events.len(), rows, "{file}");
        let counts = outcome.behavior_counts();
        assert_eq!(counts[&Behavior::RemoveFromCart], removals, "{file}");
        assert!(
            outcome.events.iter().any(|event| event.price == Some(0.0)),
            "{file}"
        );
        assert!(
            outcome.events.iter().any(|event| event.session.is_none()),
            "{file}"
        );
        assert!(
            outcome.events.iter().any(|event| event.brand.is_none()),
            "{file}"
        );
        for event in &outcome.events {
            let Some(category) = event.category.as_int() else {
                panic!("{file}: category {} is not an integer", event.category);
            };
            assert_eq!(
                category.to_string().len(),
                19,
                "{file}: line {}",
                event.line
            );
        }
    }
}

#[test]
fn gzip_detected_by_magic_bytes() {
    let plain_path = shared("data/taobao_ub_subsample_crlf/UserBehavior.csv");
    let plain = std::fs::read(&plain_path).unwrap();
    let (head, tail) = plain.split_at(plain.len() / 2);

    // Two gzip members, as `cat a.gz b.gz` makes, under a name without `.gz`.
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("UserBehavior.csv");
    let mut file = std::fs::File::create(&path).unwrap();
    for part in [head, tail] {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(part).unwrap();
        file.write_all(&encoder.finish().unwrap()).unwrap();
    }
    drop(file);
    assert_eq!(&std::fs::read(&path).unwrap()[..2], &[0x1f, 0x8b]);

    assert_eq!(detect_file(&path), Some(Format::Taobao));
    let decoded = read_file(&path, Format::Taobao);
    let direct = read_file(&plain_path, Format::Taobao);
    assert_eq!(decoded.events.len(), 4_000);
    assert!(decoded.bad.is_empty(), "{:?}", decoded.bad.first());
    assert_eq!(decoded.events, direct.events);
}

#[test]
fn missing_input_names_path() {
    let error = open_input("/nonexistent/veer/events.csv").err().unwrap();
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    assert!(
        error.to_string().contains("/nonexistent/veer/events.csv"),
        "{error}"
    );
}

#[test]
fn format_detection_on_samples() {
    let cases = [
        ("data/taobao_ub_usersorted/UserBehavior.csv", Format::Taobao),
        (
            "data/taobao_ub_subsample_crlf/UserBehavior.csv",
            Format::Taobao,
        ),
        ("data/taobao_ub_timesorted/UserBehavior.csv", Format::Taobao),
        ("data/rees46_2019oct/2019-Oct.csv", Format::Rees46),
        (
            "data/retailrocket_events_sample/events.csv",
            Format::RetailRocket,
        ),
        (
            "cases/07-retailrocket-bom-crlf/events.csv",
            Format::RetailRocket,
        ),
        ("cases/08-taobao-malformed-lines/input.csv", Format::Taobao),
        ("cases/09-json-ids-and-shapes/input.jsonl", Format::Jsonl),
        ("cases/12-rees46-duplicate-rows/input.csv", Format::Rees46),
    ];
    for (file, expected) in cases {
        assert_eq!(detect_file(&shared(file)), Some(expected), "{file}");
    }
    assert_eq!(
        detect_file(&shared("data/retailrocket_category_tree/category_tree.csv")),
        None
    );
}

#[test]
fn long_line_is_bad_and_reading_continues() {
    // Line 105 of the case is about 200 KB; with a 1000-byte limit it is cut instead of parsed.
    let path = shared("cases/08-taobao-malformed-lines/input.csv");
    let reader = open_input(path.to_str().unwrap()).unwrap();
    let lines = LineSplitter::new(reader).with_max_line_bytes(1000);
    let outcome = read_lines(
        lines,
        Format::Taobao,
        &SourceOptions::default(),
        Some(&path),
    );
    assert_eq!(outcome.bad_lines(), vec![1, 15, 30, 45, 60, 75, 90, 105]);
    assert_eq!(outcome.bad_line(105).reason, "line longer than 1000 bytes");
    assert_eq!(outcome.events.len(), 170);
    assert_eq!(outcome.event_at(106).line, 106);

    // Over the default limit of 1 MiB.
    let mut input = b"1,2,3,pv,1511658000\n".to_vec();
    input.extend(std::iter::repeat_n(b'9', 3 << 20));
    input.extend_from_slice(b"\n4,5,6,buy,1511658001\n");
    let outcome = read_lines(
        LineSplitter::new(input.as_slice()),
        Format::Taobao,
        &SourceOptions::default(),
        None,
    );
    assert_eq!(outcome.bad_lines(), vec![2]);
    assert_eq!(outcome.bad_line(2).reason, "line longer than 1048576 bytes");
    assert_eq!(outcome.bad_line(2).raw.len(), 1024);
    assert_eq!(outcome.events.len(), 2);
    assert_eq!(outcome.event_at(3).behavior, Behavior::Buy);
}

#[test]
fn retailrocket_options_warn_for_other_formats() {
    let options = SourceOptions {
        category_tree: Some(PathBuf::from("category_tree.csv")),
        ..SourceOptions::default()
    };
    let (_, warnings) = make_parser(Format::Taobao, &options, None).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("--category-tree is ignored"),
        "{}",
        warnings[0]
    );
}

#[test]
fn jsonl_ids_over_38_digits_bad() {
    // A 39-digit integer kept as text would print as a JSON string and merge with the string
    // id of the same digits, so it is rejected like a fraction.
    let long = "1".repeat(39);
    let max = "9".repeat(38);
    let line = |user: &str, item: &str, category: &str| {
        format!(
            r#"{{"user":{user},"item":{item},"category":{category},"behavior":"view","ts":1511539200}}"#
        )
    };
    let input = [
        line(&long, "1", "1"),
        line(&format!("\"{long}\""), "1", "1"),
        line("1", &long, "1"),
        line("1", "1", &long),
        line(&max, "1", "1"),
        line(&"7".repeat(400), "1", "1"),
    ]
    .join("\n");
    let outcome = read_lines(
        LineSplitter::new(input.as_bytes()),
        Format::Jsonl,
        &SourceOptions::default(),
        None,
    );

    assert_eq!(outcome.bad_lines(), vec![1, 3, 4, 6]);
    assert_eq!(
        outcome.bad_line(1).reason,
        "user is an integer of 39 digits, but integer ids have at most 38; write a longer id \
         as a JSON string"
    );
    assert!(outcome
        .bad_line(3)
        .reason
        .starts_with("item is an integer of 39 digits"));
    assert!(outcome
        .bad_line(4)
        .reason
        .starts_with("category is an integer of 39 digits"));
    assert!(outcome
        .bad_line(6)
        .reason
        .starts_with("user is an integer of 400 digits"));
    assert_eq!(outcome.event_at(2).user, Id::text(&long));
    assert_eq!(outcome.event_at(5).user, Id::int(max.parse().unwrap()));
}

#[test]
fn byte_order_marks_of_joined_files_removed() {
    // `cat a.csv b.csv` of two files saved with a byte order mark puts the second mark at the
    // start of a later line: a repeated header must still be skipped, and a row still read.
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let rees46 = std::fs::read(shared("cases/12-rees46-duplicate-rows/input-dedup.csv")).unwrap();
    let with_bom = [BOM, rees46.as_slice()].concat();
    let joined = [with_bom.as_slice(), with_bom.as_slice()].concat();
    let outcome = read_lines(
        LineSplitter::new(joined.as_slice()),
        Format::Rees46,
        &SourceOptions::default(),
        None,
    );
    let rows = rees46.iter().filter(|&&byte| byte == b'\n').count() as u64;
    assert_eq!(outcome.bad_lines(), Vec::<u64>::new());
    assert_eq!(outcome.skipped, vec![1, rows + 1]);
    assert_eq!(outcome.events.len() as u64, 2 * (rows - 1));

    let taobao = [
        BOM,
        b"1,2,3,pv,1511539200\n",
        BOM,
        b"4,5,6,buy,1511539201\n",
    ]
    .concat();
    let outcome = read_lines(
        LineSplitter::new(taobao.as_slice()),
        Format::Taobao,
        &SourceOptions::default(),
        None,
    );
    assert_eq!(outcome.bad_lines(), Vec::<u64>::new());
    assert_eq!(outcome.event_at(2).user, Id::int(4));

    let event = br#"{"user":7,"item":1,"category":2,"behavior":"view","ts":1511539200}"#;
    let jsonl = [BOM, event, b"\n", BOM, event, b"\n"].concat();
    let outcome = read_lines(
        LineSplitter::new(jsonl.as_slice()),
        Format::Jsonl,
        &SourceOptions::default(),
        None,
    );
    assert_eq!(outcome.bad_lines(), Vec::<u64>::new());
    assert_eq!(outcome.events.len(), 2);
}
