//! Pictures for `veer explain` and `veer report`: hand-written SVG and self-contained HTML.
//!
//! The SVG is written directly rather than through a plotting crate, so that every label from
//! the data is escaped and measured in one place ([`svg`]). Chinese names are measured as
//! wide characters, and long names are cut with an ellipsis and shown whole in a tooltip.
//! Many categories are grouped, and no coordinate can be `NaN` or infinite. Nothing in the output
//! loads anything from the network, and no script runs.

pub mod charts;
pub mod svg;
pub mod time;
pub mod timeline;

/// Style sheet shared by the HTML pages: system fonts, no external resources.
const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:1240px;color:#222}\
table{border-collapse:collapse;margin:8px 0 16px}\
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
pre{background:#f6f6f6;padding:8px;overflow-x:auto}\
svg{display:block;margin:8px 0}\
h2{margin-top:28px;border-bottom:1px solid #ddd}";

/// Wraps an HTML body in a UTF-8 document with the shared style sheet.
///
/// `title` is escaped here, while `body` must already be escaped markup.
pub fn html_document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        svg::escape(title)
    )
}
