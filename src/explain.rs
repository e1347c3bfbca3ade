//! `veer explain`: one user's events with what the detector made of them.
//!
//! An explanation replays the whole input with [`crate::replay::replay`], because the
//! category groups and population trends that the detector reads are learned from every user,
//! and records the traced users' events with the detector's state after each of them. The
//! result, a [`UserTrace`], is drawn as an SVG timeline ([`crate::plot::timeline`]), written
//! as an HTML page, or printed as a compact text view of the user's sessions.
//!
//! The replay sorts the input by event time, as `veer run --order event-time` does. A run
//! that replayed the file in arrival order and dropped late events can differ from it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;
use veer_models::alert::id_from_json;
use veer_models::session::{SessionMark, SessionRule};
use veer_models::{Alert, AlertKind, Behavior, CategoryShare, Event, Id};

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use crate::plot::svg::{clean_text, escape};
use crate::plot::time::TimeZone;
use crate::replay::{replay, ReplaySettings};
use crate::sources::{Format, SourceOptions};

/// An error of `veer explain` or `veer report`.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The requested user has no event in the input.
    #[error(
        "user {user} not found in {input} ({users} users, {events} events read); \
         check the id, or pass the input that holds this user"
    )]
    UnknownUser {
        /// The id as requested.
        user: String,
        /// The input paths, joined with commas.
        input: String,
        /// Distinct users in the input.
        users: usize,
        /// Events read from the input.
        events: usize,
    },
    /// The input could not be read.
    #[error("{0:#}")]
    Input(anyhow::Error),
    /// An alert file could not be opened or contains an invalid line.
    #[error("alert file {path}: {message}")]
    AlertFile {
        /// The file's path.
        path: PathBuf,
        /// Description of the failure, with the line number where one applies.
        message: String,
    },
    /// A truth file could not be opened or contains an invalid line.
    #[error("truth file {path}: {message}")]
    TruthFile {
        /// The file's path.
        path: PathBuf,
        /// Description of the failure, with the line number where one applies.
        message: String,
    },
    /// The detector settings are invalid.
    #[error(transparent)]
    Config(#[from] veer_models::detector::ConfigError),
}

/// An alert as an explanation or a report shows it: the contract's fields that matter here.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRecord {
    /// The user id, exactly as the alert file wrote it.
    pub user: Id,
    /// `interest_shift` or `anomaly`.
    pub kind: AlertKind,
    /// Event time of the triggering event, in Unix seconds.
    pub ts: i64,
    /// Estimated start of the change, in Unix seconds (`ts` when the file has none).
    pub onset_ts: i64,
    /// Confidence in 0..1, or `None` when the file has no finite number.
    pub score: Option<f64>,
    /// `low`, `medium` or `high`, as the file wrote it.
    pub severity: String,
    /// Categories that lost interest, with their shares.
    pub from: Vec<CategoryShare>,
    /// Categories that gained interest, with their shares.
    pub to: Vec<CategoryShare>,
}

impl AlertRecord {
    /// Converts an alert raised in a replay.
    pub fn from_alert(alert: &Alert) -> AlertRecord {
        AlertRecord {
            user: alert.user.clone(),
            kind: alert.kind,
            ts: alert.ts,
            onset_ts: alert.onset_ts,
            score: alert.score.is_finite().then_some(alert.score),
            severity: alert.severity().to_string(),
            from: alert.from.clone(),
            to: alert.to.clone(),
        }
    }

    /// Parses one line of an alert file in the contract's JSON form.
    ///
    /// `user`, `kind` and `ts` are required; `onset_ts`, `score`, `severity`, `from` and `to`
    /// are read when present and valid.
    pub fn parse_line(line: &str) -> Result<AlertRecord, String> {
        let (required, object) = crate::eval::parse_alert_fields(line)?;
        let crate::eval::ScoredAlert { user, kind, ts } = required;
        let integer = |key: &str| {
            object
                .get(key)
                .and_then(|value| value.as_i64().or_else(|| value.as_str()?.parse().ok()))
        };
        let score = object
            .get("score")
            .and_then(Value::as_f64)
            .filter(|score| score.is_finite());
        let shares = |key: &str| -> Vec<CategoryShare> {
            let Some(Value::Array(list)) = object.get(key) else {
                return Vec::new();
            };
            list.iter()
                .filter_map(|entry| {
                    let category = id_from_json(entry.get("category")?)?;
                    let share = entry.get("share").and_then(Value::as_f64).unwrap_or(0.0);
                    Some(CategoryShare {
                        category,
                        share: if share.is_finite() { share } else { 0.0 },
                    })
                })
                .collect()
        };
        Ok(AlertRecord {
            user,
            kind,
            ts,
            onset_ts: integer("onset_ts").unwrap_or(ts),
            score,
            severity: object
                .get("severity")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            from: shares("from"),
            to: shares("to"),
        })
    }
}

/// Reads an alert file of JSON lines, skipping blank lines and, with a warning, a torn last
/// line (see [`crate::eval::for_each_alert_line`]).
pub fn read_alert_file(
    path: &Path,
) -> Result<crate::eval::AlertLines<AlertRecord>, ExplainError> {
    let failure = |message: String| ExplainError::AlertFile {
        path: path.to_path_buf(),
        message,
    };
    let file =
        std::fs::File::open(path).map_err(|error| failure(format!("cannot open: {error}")))?;
    let mut alerts = Vec::new();
    let torn_last_line =
        crate::eval::for_each_alert_line(std::io::BufReader::new(file), |line| {
            alerts.push(AlertRecord::parse_line(line)?);
            Ok(())
        })
        .map_err(|error| failure(error.to_string()))?;
    if let Some(torn) = &torn_last_line {
        torn.warn(path);
    }
    Ok(crate::eval::AlertLines {
        alerts,
        torn_last_line,
    })
}

/// One event of a traced user, with what the detector did with it.
#[derive(Clone, Debug, PartialEq)]
pub struct TracedEvent {
    /// Event time in Unix seconds.
    pub ts: i64,
    /// Leaf category of the event's item.
    pub category: Id,
    /// The action: view, cart, favourite, buy and so on.
    pub behavior: Behavior,
    /// The input's session id, when it has one.
    pub session: Option<Box<str>>,
    /// Whether the event counted for the CUSUM test.
    pub judged: bool,
    /// Whether a judged event fell in a group novel to the user.
    pub novel: bool,
    /// The CUSUM statistic after the event; at an `interest_shift` alarm, the value that
    /// crossed the threshold (the detector then resets it to 0).
    pub cusum: f64,
}

/// One user's events in processing order with the detector's trace, and the user's alerts.
#[derive(Clone, Debug)]
pub struct UserTrace {
    /// The traced user.
    pub user: Id,
    /// The user's events after duplicates are dropped, in processing order.
    pub events: Vec<TracedEvent>,
    /// Alerts of this user, from the replay or from an alert file, in time order.
    pub alerts: Vec<AlertRecord>,
    /// The detector's CUSUM alarm threshold.
    pub threshold: f64,
    /// The detector's rule that splits the events into sessions.
    pub session_rule: SessionRule,
}

/// Replays `events` and returns the trace of each user in `users` who has events.
///
/// Alerts in the traces are those the replay raised.
pub fn trace_users(
    events: &[Event],
    settings: &ReplaySettings,
    users: &HashSet<Id>,
) -> Result<HashMap<Id, UserTrace>, ExplainError> {
    let mut traces: HashMap<Id, UserTrace> = HashMap::new();
    let alerts = replay(events, settings, |event, _, step, _| {
        if !users.contains(&event.user) {
            return;
        }
        // Each event has its own trace: after an alarm the trace still shows the statistic
        // that crossed the threshold, and the next event's trace shows it reset.
        let (judged, novel, cusum) = (step.judged, step.judged && step.novel, step.cusum);
        let trace = traces
            .entry(event.user.clone())
            .or_insert_with(|| UserTrace {
                user: event.user.clone(),
                events: Vec::new(),
                alerts: Vec::new(),
                threshold: settings.detector.threshold,
                session_rule: settings.detector.session_rule(),
            });
        trace.events.push(TracedEvent {
            ts: event.ts_secs(),
            category: event.category.clone(),
            behavior: event.behavior,
            session: event.session.clone(),
            judged,
            novel,
            cusum,
        });
    })?;
    for alert in &alerts {
        if let Some(trace) = traces.get_mut(&alert.user) {
            trace.alerts.push(AlertRecord::from_alert(alert));
        }
    }
    Ok(traces)
}

/// What `veer explain` needs to trace one user.
#[derive(Clone, Debug)]
pub struct ExplainRequest {
    /// Event inputs (`-` for standard input).
    pub inputs: Vec<String>,
    /// Reader options of the inputs.
    pub options: SourceOptions,
    /// The user id as given on the command line.
    pub user: String,
    /// Alert file whose alerts replace those of the replay.
    pub alerts: Option<PathBuf>,
    /// Detector, group and window settings of the replay.
    pub replay: ReplaySettings,
}

/// Reads the inputs, replays them and returns the requested user's trace.
///
/// Fails with [`ExplainError::UnknownUser`] when the user has no event in the inputs.
pub fn explain(request: &ExplainRequest) -> Result<UserTrace, ExplainError> {
    let (events, _) = crate::ingest::read_events(request.inputs.clone(), request.options.clone())
        .map_err(ExplainError::Input)?;
    let input = request.inputs.join(", ");
    let user = find_user(&events, &request.user)
        .ok_or_else(|| unknown_user(&events, &request.user, &input))?;
    let file_alerts = match &request.alerts {
        Some(path) => Some(read_alert_file(path)?.alerts),
        None => None,
    };
    let users = HashSet::from([user.clone()]);
    let mut trace = trace_users(&events, &request.replay, &users)?
        .remove(&user)
        .ok_or_else(|| unknown_user(&events, &request.user, &input))?;
    if let Some(alerts) = file_alerts {
        trace.alerts = alerts
            .into_iter()
            .filter(|alert| alert.user == user)
            .collect();
        trace.alerts.sort_by_key(|alert| (alert.ts, alert.kind));
    }
    Ok(trace)
}

/// Returns the default time zone of pictures of `inputs`: UTC+8 (Beijing time, the time
/// of the Taobao data) for Taobao UserBehavior CSV, UTC for every other format.
///
/// The format is `options.format` or is detected from the first input's first line; an
/// unreadable input gives UTC, and reading it later reports the error. Standard input and
/// other inputs that are not regular files, such as named pipes, also give UTC without
/// `--format`, because detecting their format would consume the bytes that the replay reads.
pub fn default_zone(inputs: &[String], options: &SourceOptions) -> TimeZone {
    let format = options.format.or_else(|| {
        let path = inputs.first().filter(|path| path.as_str() != "-")?;
        if !std::fs::metadata(path).ok()?.is_file() {
            return None;
        }
        let mut reader = crate::sources::open_input(path).ok()?;
        let head = reader.fill_buf().ok()?;
        crate::sources::detect_format(head)
    });
    match format {
        Some(Format::Taobao) => TimeZone::from_hours(8.0).expect("8 hours is a valid offset"),
        _ => TimeZone::UTC,
    }
}

/// Finds the user that `text` names among the events' users.
///
/// Digits name an integer id first; a JSON string id of the same digits is found when no
/// integer id matches.
pub fn find_user(events: &[Event], text: &str) -> Option<Id> {
    let parsed = Id::from_field(text);
    if events.iter().any(|event| event.user == parsed) {
        return Some(parsed);
    }
    let as_text = Id::text(text);
    events
        .iter()
        .any(|event| event.user == as_text)
        .then_some(as_text)
}

/// Builds the error for a user missing from `input`.
pub fn unknown_user(events: &[Event], user: &str, input: &str) -> ExplainError {
    let users: HashSet<&Id> = events.iter().map(|event| &event.user).collect();
    ExplainError::UnknownUser {
        user: user.to_string(),
        input: input.to_string(),
        users: users.len(),
        events: events.len(),
    }
}

/// A run of a user's events without a gap longer than the session gap (or with one session
/// id, when the input has them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Index of the session's first event in [`UserTrace::events`].
    pub first: usize,
    /// Number of events.
    pub len: usize,
    /// Time of the first event, in Unix seconds.
    pub start: i64,
    /// Time of the last event, in Unix seconds.
    pub end: i64,
}

impl UserTrace {
    /// Splits the events into sessions with the detector's [`SessionRule`].
    pub fn sessions(&self) -> Vec<Session> {
        let mut sessions: Vec<Session> = Vec::new();
        let mut mark = SessionMark::default();
        for (index, event) in self.events.iter().enumerate() {
            let starts = self
                .session_rule
                .advance(&mut mark, event.ts, event.session.as_deref());
            match sessions.last_mut() {
                Some(last) if !starts => {
                    last.len += 1;
                    last.end = event.ts;
                }
                _ => sessions.push(Session {
                    first: index,
                    len: 1,
                    start: event.ts,
                    end: event.ts,
                }),
            }
        }
        sessions
    }

    /// Returns the user's categories by event count, most frequent first (ties by id).
    pub fn categories_by_count(&self) -> Vec<(Id, usize)> {
        let mut counts: BTreeMap<&Id, usize> = BTreeMap::new();
        for event in &self.events {
            *counts.entry(&event.category).or_default() += 1;
        }
        let mut ranked: Vec<(Id, usize)> = counts
            .into_iter()
            .map(|(category, count)| (category.clone(), count))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked
    }
}

/// Display width, in terminal columns, of category names in the text view's session lines.
const TEXT_NAME_COLUMNS: usize = 24;
/// Categories listed per session in the text view.
const TEXT_CATEGORIES_PER_SESSION: usize = 3;

/// Renders the compact text view: a header, the alerts with their full category names, and
/// one line per session with its start, size, behaviours, highest CUSUM and top categories.
///
/// Sessions holding an alert's onset are marked `O`, sessions holding the alert itself `A`
/// (`a` for an anomaly alert). Control characters in names are removed.
pub fn text_view(trace: &UserTrace, zone: TimeZone) -> String {
    let mut text = String::new();
    let sessions = trace.sessions();
    let (first, last) = match (trace.events.first(), trace.events.last()) {
        (Some(first), Some(last)) => (first.ts, last.ts),
        _ => (0, 0),
    };
    let _ = writeln!(
        text,
        "user {}: {} in {}, {} .. {} ({})",
        clean_text(&trace.user.to_string()),
        plural(trace.events.len(), "event"),
        plural(sessions.len(), "session"),
        zone.minutes(first),
        zone.minutes(last),
        zone.label()
    );
    if trace.alerts.is_empty() {
        let _ = writeln!(text, "no alerts");
    }
    for alert in &trace.alerts {
        let score = alert
            .score
            .map_or_else(|| "unknown".to_string(), |score| format!("{score:.3}"));
        let _ = writeln!(
            text,
            "{} at {} (onset {}), score {score} {}",
            alert.kind.name(),
            zone.minutes(alert.ts),
            zone.minutes(alert.onset_ts),
            clean_text(&alert.severity)
        );
        let shares = |list: &[CategoryShare]| {
            list.iter()
                .map(|entry| {
                    format!(
                        "{} {:.0}%",
                        clean_text(&entry.category.to_string()),
                        entry.share * 100.0
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(text, "  from: {}", shares(&alert.from));
        let _ = writeln!(text, "  to:   {}", shares(&alert.to));
    }
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "   session start     events cart fav buy  max CUSUM  top categories (events)"
    );
    for session in &sessions {
        let events = &trace.events[session.first..session.first + session.len];
        let mark = session_marks(trace, session);
        let count = |behavior: Behavior| events.iter().filter(|e| e.behavior == behavior).count();
        let max_cusum = events.iter().map(|e| e.cusum).fold(0.0_f64, f64::max);
        let mut counts: BTreeMap<&Id, usize> = BTreeMap::new();
        for event in events {
            *counts.entry(&event.category).or_default() += 1;
        }
        let mut ranked: Vec<(&Id, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let mut names: Vec<String> = ranked
            .iter()
            .take(TEXT_CATEGORIES_PER_SESSION)
            .map(|(category, count)| {
                let name = truncate_columns(&category.to_string(), TEXT_NAME_COLUMNS);
                format!("{name} {count}")
            })
            .collect();
        if ranked.len() > TEXT_CATEGORIES_PER_SESSION {
            names.push(format!(
                "+{} more",
                ranked.len() - TEXT_CATEGORIES_PER_SESSION
            ));
        }
        let _ = writeln!(
            text,
            "{mark:<2} {} {:>6} {:>4} {:>3} {:>3} {:>10.2}  {}",
            zone.minutes(session.start),
            session.len,
            count(Behavior::Cart),
            count(Behavior::Fav),
            count(Behavior::Buy),
            max_cusum,
            names.join(", ")
        );
    }
    let _ = writeln!(
        text,
        "O: an alert's onset falls in the session; A: an interest_shift alert, a: an anomaly \
         alert, raised in the session. Times in {}. CUSUM threshold {}.",
        zone.label(),
        trace.threshold
    );
    text
}

/// Returns the marks of a session in the text view: `O` for an onset, `A`/`a` for alerts.
fn session_marks(trace: &UserTrace, session: &Session) -> String {
    let mut mark = String::new();
    let inside = |ts: i64| ts >= session.start && ts <= session.end;
    if trace
        .alerts
        .iter()
        .any(|alert| alert.kind == AlertKind::InterestShift && inside(alert.onset_ts))
    {
        mark.push('O');
    }
    for alert in &trace.alerts {
        if inside(alert.ts) {
            let symbol = match alert.kind {
                AlertKind::InterestShift => 'A',
                AlertKind::Anomaly => 'a',
            };
            if !mark.contains(symbol) {
                mark.push(symbol);
            }
        }
    }
    mark
}

/// Renders a self-contained HTML page with the user's timeline picture and text view.
pub fn html_page(trace: &UserTrace, zone: TimeZone) -> String {
    let svg = crate::plot::timeline::render(trace, zone);
    let body = format!(
        "<h1>Interest timeline of user {user}</h1>\n{svg}\n<h2>Sessions</h2>\n<pre>{text}</pre>\n",
        user = escape(&trace.user.to_string()),
        text = escape_preformatted(&text_view(trace, zone)),
    );
    crate::plot::html_document(&format!("veer explain: user {}", trace.user), &body)
}

/// Shortens a name to `columns` terminal columns (East Asian wide characters take two),
/// ending with an ellipsis, after removing control characters.
fn truncate_columns(text: &str, columns: usize) -> String {
    let text = clean_text(text);
    if text.width() <= columns {
        return text;
    }
    let mut kept = String::new();
    let mut used = 0;
    for character in text.chars() {
        let width = character.width().unwrap_or(0);
        if used + width + 1 > columns {
            break;
        }
        used += width;
        kept.push(character);
    }
    kept.push('…');
    kept
}

/// Escapes text for a `<pre>` block, keeping its line breaks, blank lines included.
pub fn escape_preformatted(text: &str) -> String {
    text.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

/// Returns `count` followed by `noun`, with an `s` unless the count is 1.
pub fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plural_suffix_except_one() {
        assert_eq!(plural(1, "event"), "1 event");
        assert_eq!(plural(0, "session"), "0 sessions");
        assert_eq!(plural(12, "event"), "12 events");
    }

    fn traced(ts: i64, category: u64) -> TracedEvent {
        TracedEvent {
            ts,
            category: Id::from(category),
            behavior: Behavior::View,
            session: None,
            judged: false,
            novel: false,
            cusum: 0.0,
        }
    }

    #[test]
    fn sessions_split_on_gaps() {
        let trace = UserTrace {
            user: Id::from(1u64),
            events: vec![
                traced(0, 1),
                traced(60, 2),
                traced(4000, 1),
                traced(4000, 3),
            ],
            alerts: Vec::new(),
            threshold: 6.0,
            session_rule: SessionRule {
                gap_secs: 1800,
                max_span_secs: 3 * 3600,
            },
        };
        let sessions = trace.sessions();
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0].len, 2);
        assert_eq!(sessions[1].start, 4000);
        assert_eq!(sessions[1].len, 2);
    }

    #[test]
    fn truncate_counts_wide_columns() {
        assert_eq!(truncate_columns("超长类目名称", 7), "超长类…");
        assert_eq!(truncate_columns("bell\u{7}tab\tend", 24), "belltab end");
    }

    #[test]
    fn alert_line_keeps_names_verbatim() {
        let line = r#"{"user":2301,"kind":"interest_shift","ts":10,"onset_ts":5,"score":0.9,"severity":"high","from":[{"category":"x]]>y <b>&amp;","share":0.5}],"to":[]}"#;
        let alert = AlertRecord::parse_line(line).unwrap();
        assert_eq!(alert.from[0].category, Id::text("x]]>y <b>&amp;"));
        assert_eq!(alert.onset_ts, 5);
        assert_eq!(alert.score, Some(0.9));
    }
}
