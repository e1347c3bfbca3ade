//! Bar charts for `veer report`: columns over a series (per hour, per score bin) and
//! horizontal bars for ranked names.

use super::svg::{ellipsize, num, Anchor, Svg};

/// One column of a [`column_chart`].
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// Label under the column; `None` leaves it unlabelled (for dense series).
    pub label: Option<String>,
    /// Height of the column, in the chart's unit (a count).
    pub value: f64,
    /// Tooltip text, such as the bin's range and count.
    pub tooltip: String,
}

/// Titles of a chart, escaped when written.
#[derive(Clone, Debug)]
pub struct ChartText<'a> {
    /// Title above the chart, also the SVG's accessible title.
    pub title: &'a str,
    /// Title of the horizontal axis, with its unit.
    pub x_title: &'a str,
    /// Title of the vertical axis of a column chart, with its unit.
    pub y_title: &'a str,
}

const CHART_WIDTH: f64 = 960.0;
const CHART_HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 940.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 200.0;

/// Returns a "nice" axis maximum and tick step for counts up to `max` (steps of at least 1).
fn value_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = (max / 4.0).max(1.0);
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|factor| factor * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power);
    ((max / step).ceil() * step, step)
}

/// Formats an axis value without a trailing `.0`.
fn axis_label(value: f64) -> String {
    if value == value.trunc() {
        format!("{}", value as i64)
    } else {
        num(value)
    }
}

/// Draws vertical columns with a value axis; an empty series draws an empty frame.
pub fn column_chart(text: &ChartText<'_>, columns: &[Column]) -> String {
    let mut svg = Svg::new(CHART_WIDTH, CHART_HEIGHT, text.title);
    svg.text(
        LEFT,
        20.0,
        Anchor::Start,
        "font-size=\"14\" font-weight=\"bold\"",
        text.title,
    );
    let highest = columns
        .iter()
        .map(|column| column.value)
        .filter(|value| value.is_finite())
        .fold(0.0_f64, f64::max);
    let (top_value, step) = value_axis(highest);
    let y = |value: f64| BOTTOM - value.clamp(0.0, top_value) / top_value * (BOTTOM - TOP);
    let mut tick = 0.0;
    while tick <= top_value + step / 2.0 {
        svg.line(LEFT, y(tick), RIGHT, y(tick), "stroke=\"#eeeeee\"");
        svg.text(
            LEFT - 6.0,
            y(tick) + 4.0,
            Anchor::End,
            "font-size=\"10\"",
            &axis_label(tick),
        );
        tick += step;
    }
    let slot = (RIGHT - LEFT) / columns.len().max(1) as f64;
    let gap = if slot > 6.0 { slot * 0.15 } else { 0.0 };
    for (index, column) in columns.iter().enumerate() {
        let x = LEFT + index as f64 * slot;
        let value = if column.value.is_finite() {
            column.value
        } else {
            0.0
        };
        svg.begin_group(Some(&column.tooltip));
        svg.rect(
            x + gap / 2.0,
            y(value),
            slot - gap,
            BOTTOM - y(value),
            "fill=\"#4e79a7\"",
        );
        svg.end_group();
        if let Some(label) = &column.label {
            let shown = ellipsize(label, slot.max(40.0) * 2.0, 10.0);
            svg.text(
                x + slot / 2.0,
                BOTTOM + 14.0,
                Anchor::Middle,
                "font-size=\"10\"",
                &shown,
            );
        }
    }
    svg.line(LEFT, BOTTOM, RIGHT, BOTTOM, "stroke=\"#666666\"");
    svg.text(
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 40.0,
        Anchor::Middle,
        "font-size=\"12\"",
        text.x_title,
    );
    svg.text_vertical(16.0, (TOP + BOTTOM) / 2.0, "font-size=\"12\"", text.y_title);
    svg.finish()
}

const BAR_ROW: f64 = 20.0;
const BAR_LABEL_WIDTH: f64 = 230.0;

/// Draws one horizontal bar per named count, in the given order; long names are cut with an
/// ellipsis and kept whole in a tooltip.
pub fn bar_chart(text: &ChartText<'_>, bars: &[(String, f64)]) -> String {
    let width = 470.0;
    let height = 60.0 + BAR_ROW * bars.len().max(1) as f64 + 30.0;
    let left = BAR_LABEL_WIDTH + 10.0;
    let right = width - 50.0;
    let mut svg = Svg::new(width, height, text.title);
    svg.text(
        8.0,
        20.0,
        Anchor::Start,
        "font-size=\"14\" font-weight=\"bold\"",
        text.title,
    );
    let highest = bars
        .iter()
        .map(|(_, value)| *value)
        .filter(|value| value.is_finite())
        .fold(0.0_f64, f64::max);
    let (top_value, _) = value_axis(highest);
    if bars.is_empty() {
        svg.text(
            8.0,
            50.0,
            Anchor::Start,
            "font-size=\"11\" fill=\"#555555\"",
            "none",
        );
    }
    for (index, (name, value)) in bars.iter().enumerate() {
        let y = 40.0 + index as f64 * BAR_ROW;
        let value = if value.is_finite() { *value } else { 0.0 };
        let shown = ellipsize(name, BAR_LABEL_WIDTH, 11.0);
        let cut = shown != super::svg::clean_text(name);
        svg.begin_group(cut.then_some(name.as_str()));
        svg.text(
            left - 6.0,
            y + 13.0,
            Anchor::End,
            "font-size=\"11\"",
            &shown,
        );
        svg.end_group();
        let length = value / top_value * (right - left);
        svg.rect(left, y + 3.0, length, BAR_ROW - 6.0, "fill=\"#f28e2b\"");
        svg.text(
            left + length + 4.0,
            y + 13.0,
            Anchor::Start,
            "font-size=\"10\"",
            &axis_label(value),
        );
    }
    svg.text(
        (left + right) / 2.0,
        height - 10.0,
        Anchor::Middle,
        "font-size=\"11\"",
        text.x_title,
    );
    svg.finish()
}
