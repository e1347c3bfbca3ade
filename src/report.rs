//! `veer report`: one self-contained HTML page about a run's alerts.
//!
//! The page contains a run summary, alerts per hour, the categories most often left and entered,
//! the score distribution, with a truth file the contract's score (computed by
//! [`crate::eval::score`], so it equals `veer eval` on the same files) with delay histograms,
//! and a table of the top alerts with their `veer explain` pictures. Pictures are inline SVG,
//! the style sheet is inline, and the page loads nothing and runs no script.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use veer_models::{AlertKind, Event, Id};

use crate::config::TimeConfig;
use crate::eval::{self, EvalConfig, Score, UserTimeline};
use crate::explain::{self, escape_preformatted, AlertRecord, ExplainError};
use crate::ingest::{self, LineCounts, Watermark};
use crate::plot::charts::{bar_chart, column_chart, ChartText, Column};
use crate::plot::svg::escape;
use crate::plot::time::TimeZone;
use crate::replay::ReplaySettings;
use crate::sources::SourceOptions;

/// Everything a report is built from.
#[derive(Clone, Debug)]
pub struct ReportRequest {
    /// Alert file of the run (JSON lines).
    pub alerts: PathBuf,
    /// Event inputs of the run, for counts, delays in events and pictures.
    pub events: Option<Vec<String>>,
    /// Reader options of the event inputs.
    pub options: SourceOptions,
    /// Truth file, for the contract's score.
    pub truth: Option<PathBuf>,
    /// Scoring horizon in seconds.
    pub horizon_secs: i64,
    /// Time zone of times and hourly bins.
    pub zone: TimeZone,
    /// Number of top alerts listed, each with its picture when events are given.
    pub top: usize,
    /// Settings of the replay that draws the pictures.
    pub replay: ReplaySettings,
    /// Replay-order settings of the run, to count late events as the run did.
    pub time: TimeConfig,
}

/// Categories listed in each of the "left" and "entered" charts.
const RANKED_CATEGORIES: usize = 15;
/// Bins of the score histogram over 0..1.
const SCORE_BINS: usize = 10;
/// Hours of alerts beyond which the time chart counts per day instead of per hour.
const MAX_HOURLY_COLUMNS: i64 = 24 * 14;

/// Facts about the run's events.
struct EventFacts {
    counts: LineCounts,
    duplicates: u64,
    late: u64,
    users: usize,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
}

/// Reads the inputs of a report and returns its HTML text.
pub fn build(request: &ReportRequest) -> Result<String, ExplainError> {
    let alert_lines = explain::read_alert_file(&request.alerts)?;
    let torn_lines = u64::from(alert_lines.torn_last_line.is_some());
    let alerts = alert_lines.alerts;
    let alert_error = |error: eval::EvalError| ExplainError::AlertFile {
        path: request.alerts.clone(),
        message: error.to_string(),
    };
    let alert_file =
        std::fs::File::open(&request.alerts).map_err(|error| ExplainError::AlertFile {
            path: request.alerts.clone(),
            message: format!("cannot open: {error}"),
        })?;
    // The scorer reads the file with its own reader, exactly as `veer eval` does.
    let scored = eval::read_alerts(std::io::BufReader::new(alert_file))
        .map_err(alert_error)?
        .alerts;

    let events = match &request.events {
        Some(paths) => Some(
            ingest::read_events(paths.clone(), request.options.clone())
                .map_err(ExplainError::Input)?,
        ),
        None => None,
    };
    let facts = events
        .as_ref()
        .map(|(events, counts)| event_facts(events, counts, &request.time));

    let score = match &request.truth {
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|error| ExplainError::TruthFile {
                path: path.clone(),
                message: format!("cannot open: {error}"),
            })?;
            let truth = eval::read_truth(std::io::BufReader::new(file)).map_err(|error| {
                ExplainError::TruthFile {
                    path: path.clone(),
                    message: error.to_string(),
                }
            })?;
            let timeline = events.as_ref().map(|(events, _)| {
                events
                    .iter()
                    .map(|event| (event.user.clone(), event.ts_secs()))
                    .collect::<UserTimeline>()
            });
            let config = EvalConfig {
                horizon_secs: request.horizon_secs,
            };
            Some(eval::score(&truth, &scored, timeline.as_ref(), &config))
        }
        None => None,
    };

    let mut body = String::new();
    let _ = writeln!(body, "<h1>veer report</h1>");
    let _ = writeln!(
        body,
        "<p>Alerts: <code>{}</code>{}{}. Times in {}. Written by veer {}.</p>",
        escape(&request.alerts.display().to_string()),
        request
            .events
            .as_ref()
            .map_or(String::new(), |paths| format!(
                "; events: <code>{}</code>",
                escape(&paths.join(", "))
            )),
        request.truth.as_ref().map_or(String::new(), |path| format!(
            "; truth: <code>{}</code>",
            escape(&path.display().to_string())
        )),
        escape(&request.zone.label()),
        env!("CARGO_PKG_VERSION"),
    );
    write_summary(&mut body, &alerts, torn_lines, facts.as_ref(), request.zone);
    write_alerts_over_time(&mut body, &alerts, request.zone);
    write_categories(&mut body, &alerts);
    write_score_distribution(&mut body, &alerts);
    if let Some(score) = &score {
        write_score(&mut body, score, request.horizon_secs);
    }
    let events_only = events.as_ref().map(|(events, _)| events.as_slice());
    write_top_alerts(&mut body, &alerts, events_only, request)?;
    Ok(crate::plot::html_document("veer report", &body))
}

/// Counts duplicates, late events and users as `veer run` would with `time`'s settings.
fn event_facts(events: &[Event], counts: &LineCounts, time: &TimeConfig) -> EventFacts {
    let profile = ingest::profile_order(events, time.out_of_orderness.as_millis() as i64);
    let sorted = ingest::replay_sorted(time.order, &profile, events.len());
    let mut late = 0;
    let mut kept: Vec<&Event> = Vec::with_capacity(events.len());
    if sorted {
        kept.extend(events.iter());
    } else {
        let mut watermark = Watermark::new(
            time.out_of_orderness.as_millis() as i64,
            time.max_future_skew.as_millis() as i64,
        );
        for event in events {
            if watermark.observe(event.ts_ms) {
                late += 1;
            } else {
                kept.push(event);
            }
        }
    }
    let duplicates = crate::ingest::drop_exact_duplicates(&mut kept);
    let users: HashSet<&Id> = kept.iter().map(|event| &event.user).collect();
    EventFacts {
        counts: counts.clone(),
        duplicates,
        late,
        users: users.len(),
        first_ts: kept.first().map(|event| event.ts_secs()),
        last_ts: kept.last().map(|event| event.ts_secs()),
    }
}

fn table_row(body: &mut String, name: &str, value: &str) {
    // Leading spaces of `name` mark a sub-row. HTML would collapse them, so they become padding.
    let depth = name.len() - name.trim_start().len();
    let _ = writeln!(
        body,
        "<tr><th style=\"padding-left:{}px\">{}</th><td class=\"n\">{}</td></tr>",
        8 + depth * 8,
        escape(name.trim_start()),
        escape(value)
    );
}

fn write_summary(
    body: &mut String,
    alerts: &[AlertRecord],
    torn_lines: u64,
    facts: Option<&EventFacts>,
    zone: TimeZone,
) {
    let _ = writeln!(body, "<h2>Run summary</h2>\n<table>");
    if let Some(facts) = facts {
        let counts = &facts.counts;
        table_row(body, "lines read", &counts.lines.to_string());
        let events = counts.events - facts.late - facts.duplicates;
        table_row(body, "events", &events.to_string());
        table_row(body, "duplicates (dropped)", &facts.duplicates.to_string());
        table_row(body, "late", &facts.late.to_string());
        table_row(body, "bad", &counts.bad.to_string());
        table_row(
            body,
            "skipped (blank or header lines)",
            &counts.skipped.to_string(),
        );
        table_row(body, "users", &facts.users.to_string());
        if let (Some(first), Some(last)) = (facts.first_ts, facts.last_ts) {
            let span = format!("{} .. {}", zone.minutes(first), zone.minutes(last));
            table_row(body, "event time", &span);
        }
    }
    let users: HashSet<&Id> = alerts.iter().map(|alert| &alert.user).collect();
    table_row(body, "alerts", &alerts.len().to_string());
    if torn_lines > 0 {
        table_row(
            body,
            "torn last line skipped (a killed run)",
            &torn_lines.to_string(),
        );
    }
    let mut by_kind: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for alert in alerts {
        *by_kind
            .entry((alert.kind.name(), alert.severity.as_str()))
            .or_default() += 1;
    }
    for kind in [AlertKind::InterestShift, AlertKind::Anomaly] {
        let total: usize = by_kind
            .iter()
            .filter(|((name, _), _)| *name == kind.name())
            .map(|(_, count)| count)
            .sum();
        table_row(body, &format!("  {}", kind.name()), &total.to_string());
        for ((name, severity), count) in &by_kind {
            if *name == kind.name() {
                table_row(body, &format!("    {severity}"), &count.to_string());
            }
        }
    }
    table_row(body, "users with alerts", &users.len().to_string());
    let _ = writeln!(body, "</table>");
    if facts.is_some() {
        let _ = writeln!(
            body,
            "<p>Counts follow <code>veer run</code>'s rules with the default replay settings \
             (or those of <code>--config</code>): every line is an event, a duplicate, a late \
             event, a bad record or a skipped line.</p>"
        );
    }
}

fn write_alerts_over_time(body: &mut String, alerts: &[AlertRecord], zone: TimeZone) {
    let _ = writeln!(body, "<h2>Alerts over time</h2>");
    let (Some(first), Some(last)) = (
        alerts.iter().map(|alert| alert.ts).min(),
        alerts.iter().map(|alert| alert.ts).max(),
    ) else {
        let _ = writeln!(body, "<p>No alerts.</p>");
        return;
    };
    let offset = i64::from(zone.offset_secs());
    let hours = (last - first) / 3600 + 1;
    let (step, unit) = if hours > MAX_HOURLY_COLUMNS {
        (86_400, "day")
    } else {
        (3600, "hour")
    };
    let first_bin = (first + offset).div_euclid(step);
    let last_bin = (last + offset).div_euclid(step);
    let mut counts: BTreeMap<i64, [usize; 2]> = BTreeMap::new();
    for alert in alerts {
        let kind = usize::from(alert.kind == AlertKind::Anomaly);
        counts
            .entry((alert.ts + offset).div_euclid(step))
            .or_default()[kind] += 1;
    }
    let total_bins = (last_bin - first_bin + 1) as usize;
    let label_every = total_bins.div_ceil(12).max(1);
    let columns: Vec<Column> = (first_bin..=last_bin)
        .enumerate()
        .map(|(index, bin)| {
            let start = bin * step - offset;
            let [shifts, anomalies] = counts.get(&bin).copied().unwrap_or_default();
            let pattern = if step == 3600 { "%m-%d %H:00" } else { "%m-%d" };
            Column {
                label: (index % label_every == 0).then(|| zone.format(start, pattern)),
                value: (shifts + anomalies) as f64,
                tooltip: format!(
                    "{}: {shifts} interest_shift, {anomalies} anomaly",
                    zone.minutes(start)
                ),
            }
        })
        .collect();
    let title = format!("Alerts per {unit}");
    let x_title = format!("alert time, {unit} starting ({})", zone.label());
    body.push_str(&column_chart(
        &ChartText {
            title: &title,
            x_title: &x_title,
            y_title: "alerts",
        },
        &columns,
    ));
}

fn ranked_categories(alerts: &[AlertRecord], entered: bool) -> Vec<(String, f64)> {
    let mut counts: HashMap<&Id, usize> = HashMap::new();
    for alert in alerts.iter().filter(|a| a.kind == AlertKind::InterestShift) {
        let list = if entered { &alert.to } else { &alert.from };
        for entry in list {
            *counts.entry(&entry.category).or_default() += 1;
        }
    }
    let mut ranked: Vec<(&Id, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(RANKED_CATEGORIES)
        .map(|(category, count)| (category.to_string(), count as f64))
        .collect()
}

fn write_categories(body: &mut String, alerts: &[AlertRecord]) {
    let _ = writeln!(
        body,
        "<h2>Categories left and entered</h2>\n<p>Number of <code>interest_shift</code> alerts \
         that list each category in <code>from</code> (left) or <code>to</code> (entered).</p>\n\
         <div style=\"display:flex;flex-wrap:wrap;gap:16px\">"
    );
    body.push_str(&bar_chart(
        &ChartText {
            title: "Categories most often left",
            x_title: "alerts",
            y_title: "",
        },
        &ranked_categories(alerts, false),
    ));
    body.push_str(&bar_chart(
        &ChartText {
            title: "Categories most often entered",
            x_title: "alerts",
            y_title: "",
        },
        &ranked_categories(alerts, true),
    ));
    let _ = writeln!(body, "</div>");
}

fn write_score_distribution(body: &mut String, alerts: &[AlertRecord]) {
    let _ = writeln!(body, "<h2>Score distribution</h2>");
    let mut bins = [[0usize; 2]; SCORE_BINS];
    let mut unknown = 0;
    for alert in alerts {
        let Some(score) = alert.score else {
            unknown += 1;
            continue;
        };
        let bin = ((score.clamp(0.0, 1.0) * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1);
        bins[bin][usize::from(alert.kind == AlertKind::Anomaly)] += 1;
    }
    let columns: Vec<Column> = bins
        .iter()
        .enumerate()
        .map(|(index, [shifts, anomalies])| {
            let low = index as f64 / SCORE_BINS as f64;
            let high = (index + 1) as f64 / SCORE_BINS as f64;
            Column {
                label: Some(format!("{low:.1}–{high:.1}")),
                value: (shifts + anomalies) as f64,
                tooltip: format!(
                    "score {low:.1} to {high:.1}: {shifts} interest_shift, {anomalies} anomaly"
                ),
            }
        })
        .collect();
    body.push_str(&column_chart(
        &ChartText {
            title: "Alerts by score",
            x_title: "score (0..1; severity low < 0.5 ≤ medium < 0.8 ≤ high)",
            y_title: "alerts",
        },
        &columns,
    ));
    if unknown > 0 {
        let _ = writeln!(body, "<p>{unknown} alerts without a finite score.</p>");
    }
}

/// Formats an optional ratio as the scorer's table does.
fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |value| format!("{value:.4}"))
}

fn write_score(body: &mut String, score: &Score, horizon_secs: i64) {
    let _ = writeln!(
        body,
        "<h2>Score against the truth</h2>\n<p>The contract's rule with horizon {horizon_secs} s; \
         the same numbers as <code>veer eval</code> on the same files.</p>\n<table>"
    );
    let optional = |value: Option<i64>| value.map_or_else(|| "n/a".to_string(), |v| v.to_string());
    table_row(body, "shifts", &score.shifts.to_string());
    table_row(body, "detected (TP)", &score.detected.to_string());
    table_row(body, "interest_shift alerts", &score.alerts.to_string());
    table_row(body, "false positives", &score.fp.to_string());
    table_row(body, "ignored (repeat alerts)", &score.ignored.to_string());
    table_row(body, "precision", &ratio(score.precision));
    table_row(body, "recall", &ratio(score.recall));
    table_row(body, "F1", &ratio(score.f1));
    table_row(
        body,
        "delay, events: median / p90",
        &format!(
            "{} / {}",
            optional(score.delay_events_median.map(|v| v as i64)),
            optional(score.delay_events_p90.map(|v| v as i64))
        ),
    );
    table_row(
        body,
        "delay, seconds: median / p90",
        &format!(
            "{} / {}",
            optional(score.delay_secs_median),
            optional(score.delay_secs_p90)
        ),
    );
    for decoy in &score.decoys {
        table_row(
            body,
            &format!("false alarms on {} decoys", decoy.kind.name()),
            &format!(
                "{} of {} ({})",
                decoy.false_alarms,
                decoy.count,
                ratio(decoy.rate)
            ),
        );
    }
    let anomaly = &score.anomaly;
    table_row(
        body,
        "anomaly alerts: bursts hit / FP",
        &format!(
            "{} of {} / {} (precision {}, recall {})",
            anomaly.hits,
            anomaly.bursts,
            anomaly.fp,
            ratio(anomaly.precision),
            ratio(anomaly.recall)
        ),
    );
    table_row(body, "ceiling", &ratio(score.ceiling));
    let _ = writeln!(body, "</table>");
    let _ = writeln!(
        body,
        "<p>The output of <code>veer eval</code> on the same files:</p>\n\
         <pre id=\"eval-output\">{}</pre>",
        // The same two lines that `veer eval` prints.
        escape_preformatted(&format!("{}\n{}", score.to_table(), score.to_json_line()))
    );
    let events: Vec<f64> = score.delay_events.iter().map(|&v| v as f64).collect();
    let hours: Vec<f64> = score
        .delay_secs
        .iter()
        .map(|&v| v as f64 / 3600.0)
        .collect();
    let _ = writeln!(body, "<div style=\"display:flex;flex-wrap:wrap;gap:16px\">");
    if events.is_empty() {
        let _ = writeln!(
            body,
            "<p>No delays in events: pass <code>--events</code> or no shift was detected.</p>"
        );
    } else {
        body.push_str(&column_chart(
            &ChartText {
                title: "Delay of detected shifts, in events",
                x_title: "user's events from onset to alert (both counted)",
                y_title: "shifts",
            },
            &histogram(&events, "events"),
        ));
    }
    if !hours.is_empty() {
        body.push_str(&column_chart(
            &ChartText {
                title: "Delay of detected shifts, in hours",
                x_title: "hours from onset to alert",
                y_title: "shifts",
            },
            &histogram(&hours, "hours"),
        ));
    }
    let _ = writeln!(body, "</div>");
}

/// Bins non-negative values into at most 20 columns of a round width.
fn histogram(values: &[f64], unit: &str) -> Vec<Column> {
    let highest = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let raw = (highest / 20.0).max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    let mut width = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|factor| factor * power)
        .find(|width| *width >= raw)
        .unwrap_or(10.0 * power);
    if unit == "events" {
        width = width.max(1.0).round();
    }
    let bins = ((highest / width).floor() as usize + 1).min(21);
    let mut counts = vec![0usize; bins];
    for value in values.iter().filter(|v| v.is_finite()) {
        let bin = ((value.max(0.0) / width).floor() as usize).min(bins - 1);
        counts[bin] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(index, count)| {
            let low = index as f64 * width;
            let high = low + width;
            let label = if unit == "events" && width == 1.0 {
                format!("{low}")
            } else {
                format!("{}–{}", trim_number(low), trim_number(high))
            };
            Column {
                tooltip: format!("{label} {unit}: {count}"),
                label: Some(label),
                value: *count as f64,
            }
        })
        .collect()
}

fn trim_number(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn write_top_alerts(
    body: &mut String,
    alerts: &[AlertRecord],
    events: Option<&[Event]>,
    request: &ReportRequest,
) -> Result<(), ExplainError> {
    let zone = request.zone;
    let mut ranked: Vec<&AlertRecord> = alerts.iter().collect();
    ranked.sort_by(|a, b| {
        let score = |alert: &AlertRecord| alert.score.unwrap_or(f64::NEG_INFINITY);
        score(b)
            .total_cmp(&score(a))
            .then_with(|| a.ts.cmp(&b.ts))
            .then_with(|| a.user.cmp(&b.user))
    });
    ranked.truncate(request.top);
    let _ = writeln!(body, "<h2>Top alerts</h2>");
    if ranked.is_empty() {
        let _ = writeln!(body, "<p>No alerts.</p>");
        return Ok(());
    }
    let mut traces = match events {
        Some(events) => {
            let users: HashSet<Id> = ranked.iter().map(|alert| alert.user.clone()).collect();
            explain::trace_users(events, &request.replay, &users)?
        }
        None => {
            let _ = writeln!(
                body,
                "<p>Pass <code>--events</code> to add each user's <code>veer explain</code> \
                 picture.</p>"
            );
            HashMap::new()
        }
    };
    // Pictures show the alerts of the file, so they match the table.
    for trace in traces.values_mut() {
        trace.alerts = alerts
            .iter()
            .filter(|alert| alert.user == trace.user)
            .cloned()
            .collect();
    }
    let _ = writeln!(
        body,
        "<p>By score, highest first. Times in {}.</p>\n<table>\n<tr><th>#</th><th>user</th>\
         <th>kind</th><th>alert</th><th>onset</th><th>score</th><th>severity</th><th>from</th>\
         <th>to</th></tr>",
        escape(&zone.label())
    );
    let mut drawn: HashSet<&Id> = HashSet::new();
    for (rank, alert) in ranked.iter().enumerate() {
        let shares = |list: &[veer_models::CategoryShare]| {
            list.iter()
                .map(|entry| {
                    format!(
                        "{} ({:.0}%)",
                        escape(&entry.category.to_string()),
                        entry.share * 100.0
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let _ = writeln!(
            body,
            "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            rank + 1,
            escape(&alert.user.to_string()),
            alert.kind.name(),
            escape(&zone.minutes(alert.ts)),
            escape(&zone.minutes(alert.onset_ts)),
            alert
                .score
                .map_or_else(|| "n/a".to_string(), |s| format!("{s:.3}")),
            escape(&alert.severity),
            shares(&alert.from),
            shares(&alert.to),
        );
        // One picture per user: a user with several top alerts shows them all in the first.
        if let Some(trace) = traces.get(&alert.user) {
            if drawn.insert(&alert.user) {
                let _ = writeln!(
                    body,
                    "<tr><td colspan=\"9\">{}</td></tr>",
                    crate::plot::timeline::render(trace, zone)
                );
            }
        } else if events.is_some() {
            let _ = writeln!(
                body,
                "<tr><td colspan=\"9\">User not found in the events.</td></tr>"
            );
        }
    }
    let _ = writeln!(body, "</table>");
    Ok(())
}
