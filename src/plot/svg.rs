//! A small SVG writer that escapes every text and keeps every coordinate finite.
//!
//! Labels come from the data: category names may hold `&`, `<`, quotes, control characters,
//! Chinese text or hundreds of characters. Everything that reaches the output goes through
//! [`escape`], which drops the characters XML 1.0 cannot hold, and every number goes through
//! [`num`], which never writes `NaN` or `inf`.

use std::fmt::Write as _;

use unicode_width::UnicodeWidthChar;

/// Removes control characters from a label: tabs and line breaks become spaces, and the
/// other C0 and C1 controls (which XML 1.0 cannot hold, or which a terminal would act on)
/// are dropped.
pub fn clean_text(text: &str) -> String {
    text.chars()
        .filter_map(|character| match character {
            '\t' | '\n' | '\r' => Some(' '),
            character if character.is_control() => None,
            // Noncharacters that XML 1.0 also rejects.
            '\u{FFFE}' | '\u{FFFF}' => None,
            character => Some(character),
        })
        .collect()
}

/// Escapes a text for XML element content or a double- or single-quoted attribute value,
/// after [`clean_text`].
///
/// ```
/// use veer::plot::svg::escape;
/// assert_eq!(escape("Tom & Jerry <DVD> \"new\""), "Tom &amp; Jerry &lt;DVD&gt; &quot;new&quot;");
/// assert_eq!(escape("bell\u{7}tab\tend"), "belltab end");
/// ```
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in clean_text(text).chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            character => escaped.push(character),
        }
    }
    escaped
}

/// Formats a coordinate or length with at most two decimals, writing 0 for a non-finite value.
///
/// Callers guard their arithmetic against empty or zero-length ranges. This is the last line
/// of defence, so that no `NaN` or `inf` ever reaches an attribute.
pub fn num(value: f64) -> String {
    if !value.is_finite() {
        return "0".to_string();
    }
    let rounded = (value * 100.0).round() / 100.0;
    if rounded == rounded.trunc() {
        format!("{}", rounded as i64)
    } else {
        format!("{rounded}")
    }
}

/// Width of one narrow character, as a fraction of the font size (an estimate for sans-serif
/// Latin text).
const NARROW_EM: f64 = 0.62;
/// Width of one wide (East Asian) character, as a fraction of the font size.
const WIDE_EM: f64 = 1.0;

/// Estimates the rendered width of a label in pixels, counting East Asian wide characters
/// as a full em and others as about 0.62 em.
pub fn text_width(text: &str, font_size: f64) -> f64 {
    text.chars()
        .map(|character| match character.width() {
            Some(2) => WIDE_EM,
            Some(0) | None => 0.0,
            _ => NARROW_EM,
        })
        .sum::<f64>()
        * font_size
}

/// Shortens a cleaned label to fit `max_width` pixels, cutting at a character boundary and
/// ending with an ellipsis. Returns the label unchanged when it fits.
///
/// ```
/// use veer::plot::svg::{ellipsize, text_width};
/// let short = ellipsize("超长类目名称超长类目名称", 60.0, 12.0);
/// assert!(short.ends_with('…'));
/// assert!(text_width(&short, 12.0) <= 60.0);
/// assert_eq!(ellipsize("cart", 60.0, 12.0), "cart");
/// ```
pub fn ellipsize(text: &str, max_width: f64, font_size: f64) -> String {
    let text = clean_text(text);
    if text_width(&text, font_size) <= max_width {
        return text;
    }
    let budget = max_width - text_width("…", font_size);
    let mut kept = String::new();
    let mut width = 0.0;
    for character in text.chars() {
        let next = text_width(character.encode_utf8(&mut [0; 4]), font_size);
        if width + next > budget {
            break;
        }
        width += next;
        kept.push(character);
    }
    kept.push('…');
    kept
}

/// Text anchor of a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// The text starts at the point.
    Start,
    /// The text is centred on the point.
    Middle,
    /// The text ends at the point.
    End,
}

impl Anchor {
    fn name(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

/// An SVG document under construction.
///
/// Style attributes are passed as `&'static str` so that only literal styles reach the
/// output unescaped; any text from the data goes through [`escape`].
pub struct Svg {
    buffer: String,
}

impl Svg {
    /// Starts a document of `width` × `height` pixels with an accessible title.
    pub fn new(width: f64, height: f64, title: &str) -> Svg {
        let mut buffer = String::with_capacity(16 * 1024);
        let _ = write!(
            buffer,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\
             <title>{title}</title>\
             <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>",
            w = num(width),
            h = num(height),
            title = escape(title),
        );
        Svg { buffer }
    }

    /// Draws a rectangle with further literal attributes in `style`, such as `fill="#ccc"`.
    pub fn rect(&mut self, x: f64, y: f64, width: f64, height: f64, style: &'static str) {
        let _ = write!(
            self.buffer,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" {style}/>",
            num(x),
            num(y),
            num(width.max(0.0)),
            num(height.max(0.0)),
        );
    }

    /// Draws a rectangle filled with a colour computed at run time (`#rrggbb`).
    pub fn rect_fill(&mut self, x: f64, y: f64, width: f64, height: f64, fill: Color) {
        let _ = write!(
            self.buffer,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\"/>",
            num(x),
            num(y),
            num(width.max(0.0)),
            num(height.max(0.0)),
        );
    }

    /// Draws a straight line.
    pub fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, style: &'static str) {
        let _ = write!(
            self.buffer,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" {style}/>",
            num(x1),
            num(y1),
            num(x2),
            num(y2),
        );
    }

    /// Draws a line of a colour computed at run time.
    pub fn line_colored(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: Color, width: f64) {
        let _ = write!(
            self.buffer,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{stroke}\" stroke-width=\"{}\"/>",
            num(x1),
            num(y1),
            num(x2),
            num(y2),
            num(width),
        );
    }

    /// Draws an open polyline through `points`; nothing is drawn for fewer than two points.
    pub fn polyline(&mut self, points: &[(f64, f64)], style: &'static str) {
        if points.len() < 2 {
            return;
        }
        self.buffer.push_str("<polyline points=\"");
        for (index, (x, y)) in points.iter().enumerate() {
            if index > 0 {
                self.buffer.push(' ');
            }
            let _ = write!(self.buffer, "{},{}", num(*x), num(*y));
        }
        let _ = write!(self.buffer, "\" fill=\"none\" {style}/>");
    }

    /// Draws a circle.
    pub fn circle(&mut self, x: f64, y: f64, radius: f64, style: &'static str) {
        let _ = write!(
            self.buffer,
            "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" {style}/>",
            num(x),
            num(y),
            num(radius.max(0.0)),
        );
    }

    /// Draws a circle filled with a colour computed at run time, with a thin dark outline.
    pub fn circle_fill(&mut self, x: f64, y: f64, radius: f64, fill: Color) {
        let _ = write!(
            self.buffer,
            "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{fill}\" stroke=\"#333333\" \
             stroke-width=\"0.6\"/>",
            num(x),
            num(y),
            num(radius.max(0.0)),
        );
    }

    /// Writes a label; the text is escaped.
    pub fn text(&mut self, x: f64, y: f64, anchor: Anchor, style: &'static str, text: &str) {
        let _ = write!(
            self.buffer,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"{}\" {style}>{}</text>",
            num(x),
            num(y),
            anchor.name(),
            escape(text),
        );
    }

    /// Writes a label rotated by -90 degrees around its anchor point, for vertical axes.
    pub fn text_vertical(&mut self, x: f64, y: f64, style: &'static str, text: &str) {
        let _ = write!(
            self.buffer,
            "<text x=\"{x}\" y=\"{y}\" text-anchor=\"middle\" transform=\"rotate(-90 {x} {y})\" \
             {style}>{}</text>",
            escape(text),
            x = num(x),
            y = num(y),
        );
    }

    /// Opens a group with an optional tooltip (`<title>`), closed by [`Svg::end_group`].
    pub fn begin_group(&mut self, tooltip: Option<&str>) {
        self.buffer.push_str("<g>");
        if let Some(tooltip) = tooltip {
            let _ = write!(self.buffer, "<title>{}</title>", escape(tooltip));
        }
    }

    /// Closes the group opened last.
    pub fn end_group(&mut self) {
        self.buffer.push_str("</g>");
    }

    /// Closes the document and returns its text.
    pub fn finish(mut self) -> String {
        self.buffer.push_str("</svg>\n");
        self.buffer
    }
}

/// An RGB colour, written as `#rrggbb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Color(pub u8, pub u8, pub u8);

impl std::fmt::Display for Color {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

/// Category colours: a qualitative palette of ten (Tableau 10), then grey for "other".
pub const PALETTE: [Color; 10] = [
    Color(0x4e, 0x79, 0xa7),
    Color(0xf2, 0x8e, 0x2b),
    Color(0x59, 0xa1, 0x4f),
    Color(0xe1, 0x57, 0x59),
    Color(0x76, 0xb7, 0xb2),
    Color(0xed, 0xc9, 0x48),
    Color(0xb0, 0x7a, 0xa1),
    Color(0xff, 0x9d, 0xa7),
    Color(0x9c, 0x75, 0x5f),
    Color(0x3c, 0x8d, 0x8f),
];

/// Colour of the "other categories" band.
pub const OTHER_COLOR: Color = Color(0xc8, 0xc8, 0xc8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keeps_cjk_and_literal_entities() {
        assert_eq!(escape("母婴 & 玩具"), "母婴 &amp; 玩具");
        assert_eq!(escape("x]]>y <b>&amp;"), "x]]&gt;y &lt;b&gt;&amp;amp;");
    }

    #[test]
    fn num_never_writes_non_finite() {
        assert_eq!(num(f64::NAN), "0");
        assert_eq!(num(f64::INFINITY), "0");
        assert_eq!(num(1.005), "1");
        assert_eq!(num(12.347), "12.35");
        assert_eq!(num(-3.0), "-3");
    }

    #[test]
    fn wide_characters_count_double() {
        assert_eq!(text_width("ab", 10.0), 2.0 * NARROW_EM * 10.0);
        assert_eq!(text_width("类目", 10.0), 20.0);
    }

    #[test]
    fn ellipsize_cuts_at_character_boundary() {
        let long = "超长类目名称".repeat(50);
        let short = ellipsize(&long, 120.0, 12.0);
        assert!(short.ends_with('…'));
        assert_eq!(short.chars().count(), 10);
        assert!(long.starts_with(short.trim_end_matches('…')));
    }
}
