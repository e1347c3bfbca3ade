//! The `veer explain` picture: a user's interest timeline above the detector's statistic.
//!
//! From top to bottom, on one time axis:
//!
//! - category shares of the user's events per time bin, as stacked columns, with the most
//!   frequent categories named in the legend and the rest grouped as "other" (empty bins stay
//!   blank, so idle time is visible);
//! - a strip with one tick per event in its category's colour, and lanes with the cart,
//!   favourite and buy events;
//! - the CUSUM statistic after each event, with the alarm threshold and the judged events
//!   whose group was novel to the user.
//!
//! Vertical lines mark each alert and, for interest shifts, the estimated onset.

use veer_models::{AlertKind, Behavior, Id};

use super::svg::{ellipsize, Anchor, Color, Svg, OTHER_COLOR, PALETTE};
use super::time::{time_ticks, TimeZone};
use crate::explain::{plural, UserTrace};

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 560.0;
const PLOT_LEFT: f64 = 78.0;
const PLOT_RIGHT: f64 = 760.0;
const LEGEND_LEFT: f64 = 778.0;
const LEGEND_WIDTH: f64 = 210.0;

const SHARE_TOP: f64 = 70.0;
const SHARE_HEIGHT: f64 = 190.0;
const RUG_TOP: f64 = 270.0;
const RUG_HEIGHT: f64 = 16.0;
/// Centres of the cart, favourite and buy lanes.
const LANES: [(Behavior, &str, f64); 3] = [
    (Behavior::Cart, "cart", 300.0),
    (Behavior::Fav, "fav", 316.0),
    (Behavior::Buy, "buy", 332.0),
];
const CUSUM_TOP: f64 = 350.0;
const CUSUM_HEIGHT: f64 = 160.0;
const AXIS_Y: f64 = CUSUM_TOP + CUSUM_HEIGHT;

/// Categories named in the legend; the others are drawn as one "other" band.
pub const NAMED_CATEGORIES: usize = 8;
/// Maximum number of time bins of the share columns.
const MAX_BINS: i64 = 120;
/// Bin widths in seconds, from one minute to one week.
const BIN_STEPS: [i64; 13] = [
    60, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400, 172_800, 604_800,
];
/// Shortest time axis, in seconds, so that one event or one second of events still has room.
const MIN_SPAN: i64 = 3600;

/// Maps event time to x.
struct TimeScale {
    start: i64,
    end: i64,
}

impl TimeScale {
    /// Builds a scale over the times, padded, and never shorter than [`MIN_SPAN`].
    fn covering(times: impl Iterator<Item = i64>) -> TimeScale {
        let (mut low, mut high) = (i64::MAX, i64::MIN);
        for ts in times {
            low = low.min(ts);
            high = high.max(ts);
        }
        if low > high {
            return TimeScale {
                start: 0,
                end: MIN_SPAN,
            };
        }
        let span = high.saturating_sub(low);
        if span < MIN_SPAN {
            let middle = low + span / 2;
            return TimeScale {
                start: middle - MIN_SPAN / 2,
                end: middle + MIN_SPAN / 2,
            };
        }
        let pad = span / 50;
        TimeScale {
            start: low - pad,
            end: high + pad,
        }
    }

    fn x(&self, ts: i64) -> f64 {
        // `covering` guarantees end > start.
        let fraction = (ts - self.start) as f64 / (self.end - self.start) as f64;
        PLOT_LEFT + fraction.clamp(0.0, 1.0) * (PLOT_RIGHT - PLOT_LEFT)
    }
}

/// The legend's categories: the named ones in rank order, and how many are grouped.
struct Legend {
    named: Vec<(Id, usize)>,
    other_categories: usize,
}

impl Legend {
    fn of(trace: &UserTrace) -> Legend {
        let mut ranked = trace.categories_by_count();
        // One "other" entry for a single category would hide a name for nothing.
        let keep = if ranked.len() <= NAMED_CATEGORIES + 1 {
            ranked.len()
        } else {
            NAMED_CATEGORIES
        };
        let other_categories = ranked.len() - keep;
        ranked.truncate(keep);
        Legend {
            named: ranked,
            other_categories,
        }
    }

    /// Returns the band of a category: its rank among the named ones, or the "other" band.
    fn band(&self, category: &Id) -> usize {
        self.named
            .iter()
            .position(|(named, _)| named == category)
            .unwrap_or(self.named.len())
    }

    fn bands(&self) -> usize {
        self.named.len() + 1
    }

    fn color(&self, band: usize) -> Color {
        if band < self.named.len() {
            PALETTE[band % PALETTE.len()]
        } else {
            OTHER_COLOR
        }
    }
}

/// Draws the timeline of one user as a standalone SVG document.
pub fn render(trace: &UserTrace, zone: TimeZone) -> String {
    let alert_times = trace
        .alerts
        .iter()
        .flat_map(|alert| [alert.ts, alert.onset_ts]);
    let scale = TimeScale::covering(trace.events.iter().map(|event| event.ts).chain(alert_times));
    let legend = Legend::of(trace);
    let user = trace.user.to_string();
    let mut svg = Svg::new(WIDTH, HEIGHT, &format!("Interest timeline of user {user}"));

    draw_header(&mut svg, trace, zone, &scale);
    draw_time_grid(&mut svg, &scale, zone);
    draw_shares(&mut svg, trace, &legend, &scale, zone);
    draw_event_lanes(&mut svg, trace, &legend, &scale);
    draw_cusum(&mut svg, trace, &scale);
    draw_alerts(&mut svg, trace, &scale, zone);
    draw_legend(&mut svg, &legend);
    svg.finish()
}

/// Returns the bin width used for the share columns over the scale.
fn bin_step(scale: &TimeScale) -> i64 {
    let span = scale.end - scale.start;
    BIN_STEPS
        .iter()
        .copied()
        .find(|step| span / step <= MAX_BINS)
        .unwrap_or(BIN_STEPS[BIN_STEPS.len() - 1])
}

/// Names a bin width for the subtitle, such as `2-hour` or `15-minute`.
fn step_name(step: i64) -> String {
    match step {
        step if step % 86_400 == 0 && step / 86_400 == 1 => "1-day".to_string(),
        step if step % 86_400 == 0 => format!("{}-day", step / 86_400),
        step if step % 3600 == 0 => format!("{}-hour", step / 3600),
        step => format!("{}-minute", step / 60),
    }
}

fn draw_header(svg: &mut Svg, trace: &UserTrace, zone: TimeZone, scale: &TimeScale) {
    let title = format!("User {}: interest timeline", trace.user);
    let title = ellipsize(&title, WIDTH - 2.0 * PLOT_LEFT, 16.0);
    svg.text(
        PLOT_LEFT,
        24.0,
        Anchor::Start,
        "font-size=\"16\" font-weight=\"bold\"",
        &title,
    );
    let sessions = trace.sessions().len();
    let alerts = trace.alerts.len();
    let span = match (trace.events.first(), trace.events.last()) {
        (Some(first), Some(last)) => last.ts - first.ts,
        _ => 0,
    };
    let mut subtitle = format!(
        "{} in {}, {}; columns: category shares per {} bin; times in {}",
        plural(trace.events.len(), "event"),
        plural(sessions, "session"),
        plural(alerts, "alert"),
        step_name(bin_step(scale)),
        zone.label()
    );
    if trace.events.len() < 2 || span == 0 {
        subtitle.push_str("; too little data for a trend (all events at one time)");
    }
    svg.text(
        PLOT_LEFT,
        42.0,
        Anchor::Start,
        "font-size=\"11\" fill=\"#555555\"",
        &subtitle,
    );
}

fn draw_time_grid(svg: &mut Svg, scale: &TimeScale, zone: TimeZone) {
    let (ticks, pattern) = time_ticks(scale.start, scale.end, zone, 7);
    for tick in ticks {
        let x = scale.x(tick);
        svg.line(x, SHARE_TOP, x, AXIS_Y, "stroke=\"#eeeeee\"");
        svg.line(x, AXIS_Y, x, AXIS_Y + 4.0, "stroke=\"#666666\"");
        svg.text(
            x,
            AXIS_Y + 16.0,
            Anchor::Middle,
            "font-size=\"10\"",
            &zone.format(tick, pattern),
        );
    }
    svg.line(PLOT_LEFT, AXIS_Y, PLOT_RIGHT, AXIS_Y, "stroke=\"#666666\"");
    svg.text(
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        AXIS_Y + 36.0,
        Anchor::Middle,
        "font-size=\"12\"",
        &format!("time ({})", zone.label()),
    );
}

fn draw_shares(
    svg: &mut Svg,
    trace: &UserTrace,
    legend: &Legend,
    scale: &TimeScale,
    zone: TimeZone,
) {
    let step = bin_step(scale);
    let offset = i64::from(zone.offset_secs());
    let mut bins: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for event in &trace.events {
        let bin = (event.ts + offset).div_euclid(step);
        let counts = bins.entry(bin).or_insert_with(|| vec![0; legend.bands()]);
        counts[legend.band(&event.category)] += 1;
    }
    let bottom = SHARE_TOP + SHARE_HEIGHT;
    for (bin, counts) in &bins {
        let total: usize = counts.iter().sum();
        let x0 = scale.x(bin * step - offset);
        let x1 = scale.x((bin + 1) * step - offset);
        let width = (x1 - x0).max(1.0);
        let mut y = bottom;
        for (band, count) in counts.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            // `total` is at least 1 because this bin contains `count` events.
            let height = SHARE_HEIGHT * *count as f64 / total as f64;
            y -= height;
            svg.rect_fill(x0, y, width, height, legend.color(band));
        }
    }
    svg.rect(
        PLOT_LEFT,
        SHARE_TOP,
        PLOT_RIGHT - PLOT_LEFT,
        SHARE_HEIGHT,
        "fill=\"none\" stroke=\"#999999\"",
    );
    for (fraction, label) in [(0.0, "0%"), (0.5, "50%"), (1.0, "100%")] {
        let y = bottom - fraction * SHARE_HEIGHT;
        svg.line(PLOT_LEFT - 4.0, y, PLOT_LEFT, y, "stroke=\"#666666\"");
        svg.text(
            PLOT_LEFT - 6.0,
            y + 4.0,
            Anchor::End,
            "font-size=\"10\"",
            label,
        );
    }
    svg.text_vertical(
        20.0,
        SHARE_TOP + SHARE_HEIGHT / 2.0,
        "font-size=\"12\"",
        "share of events (%)",
    );
}

fn draw_event_lanes(svg: &mut Svg, trace: &UserTrace, legend: &Legend, scale: &TimeScale) {
    svg.text(
        PLOT_LEFT - 6.0,
        RUG_TOP + 12.0,
        Anchor::End,
        "font-size=\"10\"",
        "events",
    );
    for event in &trace.events {
        let x = scale.x(event.ts);
        let color = legend.color(legend.band(&event.category));
        svg.line_colored(x, RUG_TOP, x, RUG_TOP + RUG_HEIGHT, color, 1.2);
    }
    for (behavior, label, y) in LANES {
        svg.line(PLOT_LEFT, y, PLOT_RIGHT, y, "stroke=\"#e4e4e4\"");
        svg.text(
            PLOT_LEFT - 6.0,
            y + 4.0,
            Anchor::End,
            "font-size=\"10\"",
            label,
        );
        for event in trace
            .events
            .iter()
            .filter(|event| event.behavior == behavior)
        {
            let color = legend.color(legend.band(&event.category));
            svg.circle_fill(scale.x(event.ts), y, 3.5, color);
        }
    }
}

/// Returns a tick step of 1, 2 or 5 times a power of ten giving at most `count` ticks.
fn nice_step(max: f64, count: f64) -> f64 {
    let raw = (max / count).max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|factor| factor * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power)
}

fn draw_cusum(svg: &mut Svg, trace: &UserTrace, scale: &TimeScale) {
    let highest = trace
        .events
        .iter()
        .map(|event| event.cusum)
        .filter(|value| value.is_finite())
        .fold(0.0_f64, f64::max);
    let threshold = if trace.threshold.is_finite() {
        trace.threshold
    } else {
        0.0
    };
    let top_value = (highest.max(threshold) * 1.15).max(1.0);
    let bottom = CUSUM_TOP + CUSUM_HEIGHT;
    let y = |value: f64| bottom - value.clamp(0.0, top_value) / top_value * CUSUM_HEIGHT;

    let step = nice_step(top_value, 4.0);
    let mut tick = 0.0;
    while tick <= top_value {
        svg.line(
            PLOT_LEFT - 4.0,
            y(tick),
            PLOT_LEFT,
            y(tick),
            "stroke=\"#666666\"",
        );
        svg.text(
            PLOT_LEFT - 6.0,
            y(tick) + 4.0,
            Anchor::End,
            "font-size=\"10\"",
            &format!("{tick}"),
        );
        tick += step;
    }
    svg.rect(
        PLOT_LEFT,
        CUSUM_TOP,
        PLOT_RIGHT - PLOT_LEFT,
        CUSUM_HEIGHT,
        "fill=\"none\" stroke=\"#999999\"",
    );
    svg.text_vertical(
        20.0,
        CUSUM_TOP + CUSUM_HEIGHT / 2.0,
        "font-size=\"12\"",
        "CUSUM (nats)",
    );
    svg.line(
        PLOT_LEFT,
        y(threshold),
        PLOT_RIGHT,
        y(threshold),
        "stroke=\"#d62728\" stroke-dasharray=\"6 4\"",
    );
    // At the left edge the statistic is usually 0, so the label rarely hides the curve.
    svg.text(
        PLOT_LEFT + 4.0,
        y(threshold) - 4.0,
        Anchor::Start,
        "font-size=\"10\" fill=\"#d62728\"",
        &format!("alarm threshold {threshold}"),
    );

    // A staircase, because the statistic keeps its value between events.
    let mut points = Vec::with_capacity(trace.events.len() * 2);
    let mut previous = 0.0;
    for event in &trace.events {
        let x = scale.x(event.ts);
        points.push((x, y(previous)));
        points.push((x, y(event.cusum)));
        previous = event.cusum;
    }
    if let Some(last) = points.last().copied() {
        points.push((PLOT_RIGHT.min(last.0 + 2.0), last.1));
    }
    svg.polyline(&points, "stroke=\"#1f77b4\" stroke-width=\"1.4\"");
    for event in trace.events.iter().filter(|event| event.novel) {
        svg.circle(
            scale.x(event.ts),
            y(event.cusum),
            2.2,
            "fill=\"#d62728\" fill-opacity=\"0.7\"",
        );
    }
}

fn draw_alerts(svg: &mut Svg, trace: &UserTrace, scale: &TimeScale, zone: TimeZone) {
    for alert in &trace.alerts {
        let score = alert
            .score
            .map_or_else(|| "unknown".to_string(), |score| format!("{score:.3}"));
        if alert.kind == AlertKind::InterestShift {
            let x = scale.x(alert.onset_ts);
            svg.begin_group(Some(&format!(
                "estimated onset {}",
                zone.minutes(alert.onset_ts)
            )));
            svg.line(
                x,
                SHARE_TOP - 12.0,
                x,
                AXIS_Y,
                "stroke=\"#222222\" stroke-width=\"1.4\" stroke-dasharray=\"5 3\"",
            );
            svg.text(
                x - 3.0,
                SHARE_TOP - 4.0,
                Anchor::End,
                "font-size=\"11\"",
                "onset",
            );
            svg.end_group();
        }
        let x = scale.x(alert.ts);
        svg.begin_group(Some(&format!(
            "{} alert at {}, score {score} ({})",
            alert.kind.name(),
            zone.minutes(alert.ts),
            alert.severity
        )));
        let (style, label) = match alert.kind {
            AlertKind::InterestShift => ("stroke=\"#d62728\" stroke-width=\"1.8\"", "alert"),
            AlertKind::Anomaly => (
                "stroke=\"#ff7f0e\" stroke-width=\"1.8\" stroke-dasharray=\"2 2\"",
                "anomaly",
            ),
        };
        svg.line(x, SHARE_TOP - 12.0, x, AXIS_Y, style);
        svg.text(
            x + 3.0,
            SHARE_TOP - 4.0,
            Anchor::Start,
            "font-size=\"11\"",
            label,
        );
        svg.end_group();
    }
}

fn draw_legend(svg: &mut Svg, legend: &Legend) {
    const FONT: f64 = 11.0;
    svg.text(
        LEGEND_LEFT,
        SHARE_TOP + 4.0,
        Anchor::Start,
        "font-size=\"12\" font-weight=\"bold\"",
        "top categories",
    );
    let name_width = LEGEND_WIDTH - 16.0;
    let mut y = SHARE_TOP + 22.0;
    for (band, (category, _)) in legend.named.iter().enumerate() {
        let name = category.to_string();
        let shown = ellipsize(&name, name_width, FONT);
        let cut = shown != super::svg::clean_text(&name);
        // A cut name keeps its whole text in a tooltip.
        svg.begin_group(cut.then_some(name.as_str()));
        svg.rect_fill(LEGEND_LEFT, y - 9.0, 10.0, 10.0, legend.color(band));
        svg.text(
            LEGEND_LEFT + 16.0,
            y,
            Anchor::Start,
            "font-size=\"11\"",
            &shown,
        );
        svg.end_group();
        y += 18.0;
    }
    if legend.other_categories > 0 {
        svg.rect_fill(LEGEND_LEFT, y - 9.0, 10.0, 10.0, OTHER_COLOR);
        let label = format!("other ({} categories)", legend.other_categories);
        svg.text(
            LEGEND_LEFT + 16.0,
            y,
            Anchor::Start,
            "font-size=\"11\"",
            &label,
        );
    }
}
