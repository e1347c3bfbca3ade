//! Input readers: turn lines of the supported behaviour-log formats into [`Event`]s.
//!
//! [`open_input`] opens a file or stdin and decodes gzip. [`detect_format`] guesses the format
//! from the first bytes when the user did not name one. [`make_parser`] builds the
//! [`LineParser`] of a format, which for RetailRocket loads the item-to-category snapshots
//! first. [`LineSplitter`] cuts the input into physical lines, and
//! [`LineSplitter::next_parsed`] hands each line to the parser. A parser returns an event, a
//! skip (a blank line or a header) or a bad record with the line number and a reason. A bad
//! line never stops the read.
//!
//! ```
//! use veer::sources::{make_parser, Format, LineSplitter, Parsed, SourceOptions};
//!
//! let input: &[u8] = b"1,2,3,pv,1511658000\n\n1,2,3,clk,1511658001\n";
//! let (mut parser, _warnings) = make_parser(Format::Taobao, &SourceOptions::default(), None)?;
//! let mut lines = LineSplitter::new(input);
//! let mut events = Vec::new();
//! let mut bad_lines = Vec::new();
//! while let Some(parsed) = lines.next_parsed(parser.as_mut())? {
//!     match parsed {
//!         Parsed::Event(event) => events.push(event),
//!         Parsed::Skip => {}
//!         Parsed::Bad(record) => bad_lines.push(record.line),
//!     }
//! }
//! assert_eq!(events[0].ts_ms, 1_511_658_000_000);
//! assert_eq!(bad_lines, vec![3]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use veer_models::Event;

mod digits;
mod fields;
mod flat_json;
mod head;
mod item_catalog;
mod jsonl;
mod lines;
mod pipe;
mod rees46;
mod retailrocket;
mod row;
pub(crate) mod sized;
mod taobao;
mod time;

pub use head::{detect_input_format, InputHead};
pub use item_catalog::ItemCatalog;
pub use lines::{strip_utf8_bom, Line, LineSplitter, DEFAULT_MAX_LINE_BYTES};
pub use pipe::ShutdownCut;

/// Size of the read buffer of [`open_input`]. A large buffer keeps most lines on the fast path
/// of [`LineSplitter`], which returns lines in place without copying.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Maximum length in bytes of [`BadRecord::raw`].
pub const MAX_RAW_BYTES: usize = 1024;

/// An input format that veer reads natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// One JSON object per line with the contract's field names.
    Jsonl,
    /// Alibaba Taobao UserBehavior CSV without header.
    Taobao,
    /// RetailRocket `events.csv`, with categories from its item properties files.
    RetailRocket,
    /// REES46 multi-category store CSV.
    Rees46,
}

impl Format {
    /// All formats, in the order of their names in help text.
    pub const ALL: [Format; 4] = [
        Format::Jsonl,
        Format::Taobao,
        Format::RetailRocket,
        Format::Rees46,
    ];

    /// Returns the name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Taobao => "taobao",
            Format::RetailRocket => "retailrocket",
            Format::Rees46 => "rees46",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = SourceError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|format| format.name() == name)
            .ok_or_else(|| SourceError::UnknownFormat { name: name.into() })
    }
}

/// A line that could not be turned into an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRecord {
    /// 1-based physical line number.
    pub line: u64,
    /// Reason the line was rejected, for the dead-letter record.
    pub reason: String,
    /// The line as text, cut to at most [`MAX_RAW_BYTES`] bytes, with invalid UTF-8 replaced
    /// by U+FFFD.
    pub raw: String,
}

impl BadRecord {
    /// Creates a bad record, converting and cutting the raw line.
    pub fn new(line: u64, reason: impl Into<String>, raw: &[u8]) -> Self {
        let mut text = String::from_utf8_lossy(&raw[..raw.len().min(MAX_RAW_BYTES)]).into_owned();
        // Replacement characters take 3 bytes for 1 invalid byte, so cut again on a char boundary.
        if text.len() > MAX_RAW_BYTES {
            let mut end = MAX_RAW_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        BadRecord {
            line,
            reason: reason.into(),
            raw: text,
        }
    }
}

/// The result of parsing one line.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// A valid event.
    Event(Event),
    /// A blank line, or a header line of a format that has one.
    Skip,
    /// A line that is not a valid event.
    Bad(BadRecord),
}

/// The outcome of a line parsed by [`LineParser::parse_into`].
#[derive(Clone, Debug, PartialEq)]
pub enum Pushed {
    /// A valid event, now the last of the events.
    Event,
    /// A blank line, or a header line of a format that has one.
    Skip,
    /// A line that is not a valid event.
    Bad(BadRecord),
}

/// A parser of one input format, fed one physical line at a time.
pub trait LineParser: Send {
    /// Parses one line, given without its line ending. `line_no` is the 1-based physical line
    /// number, copied into the event or bad record.
    fn parse(&mut self, line_no: u64, line: &[u8]) -> Parsed;

    /// Parses one line like [`LineParser::parse`] and pushes its event onto `events`.
    ///
    /// A reader can write the event's fields straight into the vector, while an event returned
    /// through [`Parsed`] is written to the stack first and then copied.
    fn parse_into(&mut self, line_no: u64, line: &[u8], events: &mut Vec<Event>) -> Pushed {
        self.parse(line_no, line).push_into(events)
    }
}

impl Parsed {
    /// Pushes the event, if this is one, onto `events`, and returns what the line became.
    pub fn push_into(self, events: &mut Vec<Event>) -> Pushed {
        match self {
            Parsed::Event(event) => {
                events.push(event);
                Pushed::Event
            }
            Parsed::Skip => Pushed::Skip,
            Parsed::Bad(record) => Pushed::Bad(record),
        }
    }
}

/// What a RetailRocket reader does with an event whose item has no `categoryid` property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MissingCategory {
    /// The event is a bad record.
    Bad,
    /// The item id is used as the category id.
    Item,
}

impl FromStr for MissingCategory {
    type Err = SourceError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "bad" => Ok(MissingCategory::Bad),
            "item" => Ok(MissingCategory::Item),
            _ => Err(SourceError::UnknownMissingCategory { name: name.into() }),
        }
    }
}

impl fmt::Display for MissingCategory {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            MissingCategory::Bad => "bad",
            MissingCategory::Item => "item",
        })
    }
}

/// Settings of the readers that come from the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceOptions {
    /// Input format, or `None` to detect it from the first bytes.
    pub format: Option<Format>,
    /// RetailRocket `item_properties*.csv` files. When empty, they are looked for beside the
    /// events file.
    pub item_properties: Vec<PathBuf>,
    /// RetailRocket `category_tree.csv`. When `None`, it is looked for beside the events file.
    pub category_tree: Option<PathBuf>,
    /// RetailRocket policy for items without a category. When `None`: `Bad` if item properties
    /// were found, else `Item` with a warning.
    pub missing_category: Option<MissingCategory>,
}

/// An error that stops reading an input before it starts.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `--format` names no known format.
    #[error("unknown input format {name:?}; use one of jsonl, taobao, retailrocket, rees46")]
    UnknownFormat {
        /// The name given.
        name: String,
    },

    /// `--missing-category` names no known policy.
    #[error("unknown missing-category policy {name:?}; use bad or item")]
    UnknownMissingCategory {
        /// The name given.
        name: String,
    },

    /// An input could not be opened or read.
    #[error("failed to read {}: {source}; check that the file exists and is readable", path.display())]
    Io {
        /// The input's path.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },

    /// The first line is not the header the format requires.
    #[error(
        "{}: line 1 is {found:?}, expected the header {expected:?}; {hint}",
        path.display()
    )]
    InvalidHeader {
        /// The input's path.
        path: PathBuf,
        /// The first line as read.
        found: String,
        /// The header the format requires.
        expected: &'static str,
        /// Remedy to suggest to the user.
        hint: &'static str,
    },

    #[error(
        "no RetailRocket item properties (item_properties*.csv) found {location}, but \
         --missing-category bad needs them; pass --item-properties FILE or use \
         --missing-category item"
    )]
    /// RetailRocket events need item properties that were not found.
    NoItemProperties {
        /// Folder that was searched.
        location: String,
    },
}

/// Opens a file, or stdin for `-`, and decodes it when it is gzip.
///
/// Gzip is recognised by its magic bytes `1f 8b`, whatever the file name, and concatenated
/// gzip members are read one after the other. Errors name the path.
pub fn open_input(path: &str) -> io::Result<Box<dyn BufRead + Send>> {
    open_input_until_shutdown(path).map(|(reader, _)| reader)
}

/// Opens an input as [`open_input`] does, and returns with it the mark of a shutdown that
/// ended it.
///
/// Standard input and any input that is not a regular file (a named pipe, a device) end early
/// when a shutdown is requested. A regular file gets `None` and is read up to the size it had
/// when it was opened. One that shrinks before then ends with a read error (see
/// [`sized::SizedFile`]).
pub fn open_input_until_shutdown(
    path: &str,
) -> io::Result<(Box<dyn BufRead + Send>, Option<ShutdownCut>)> {
    if path == "-" {
        let stdin = pipe::PipeUntilShutdown::stdin().map_err(stdin_error)?;
        let cut = stdin.cut();
        let reader = wrap_decoder(BufReader::with_capacity(READ_BUFFER_BYTES, stdin))
            .map_err(stdin_error)?;
        return Ok((reader, Some(cut)));
    }
    let cannot = |verb: &str, error: io::Error| {
        io::Error::new(error.kind(), format!("cannot {verb} {path}: {error}"))
    };
    // A named pipe without a writer would block a plain open until one connects, out of
    // reach of a shutdown. Opened without blocking, it waits in the reader's poll loop.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| cannot("open", error))?;
    let regular = file
        .metadata()
        .map_err(|error| cannot("read", error))?
        .is_file();
    if regular {
        set_blocking(&file).map_err(|error| cannot("open", error))?;
        let file = sized::SizedFile::whole(file).map_err(|error| cannot("read", error))?;
        let reader = wrap_decoder(BufReader::with_capacity(READ_BUFFER_BYTES, file))
            .map_err(|error| cannot("read", error))?;
        return Ok((reader, None));
    }
    let pipe = pipe::PipeUntilShutdown::file(file);
    let cut = pipe.cut();
    let reader = wrap_decoder(BufReader::with_capacity(READ_BUFFER_BYTES, pipe))
        .map_err(|error| cannot("read", error))?;
    Ok((reader, Some(cut)))
}

/// Returns the error of a standard input that cannot be read. EBADF, a descriptor 0 that is
/// closed or open only for writing, gets what to do about it.
fn stdin_error(error: io::Error) -> io::Error {
    let hint = if error.raw_os_error() == Some(libc::EBADF) {
        ": file descriptor 0 is closed or not open for reading. Send the events through a pipe \
         or `< FILE`, or name the file with --input PATH"
    } else {
        ""
    };
    io::Error::new(
        error.kind(),
        format!("cannot read standard input (--input -): {error}{hint}"),
    )
}

/// Clears `O_NONBLOCK` on an opened file.
fn set_blocking(file: &File) -> io::Result<()> {
    let descriptor = file.as_raw_fd();
    // SAFETY: `descriptor` is open for the life of `file`, and F_GETFL and F_SETFL only read
    // and set its status flags.
    let flags = unsafe { libc::fcntl(descriptor, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(descriptor, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The first two bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Returns `reader` decompressed when it starts with the gzip magic bytes, or as it is.
fn wrap_decoder<R: Read + Send + 'static>(
    mut reader: BufReader<R>,
) -> io::Result<Box<dyn BufRead + Send>> {
    let head = head::fill(&mut reader)?;
    if head == &GZIP_MAGIC[..1] {
        // A pipe can return the first byte alone, which hides the second magic byte: read on
        // until both are known, then put them back in front of the rest.
        let mut first = vec![head[0]];
        reader.consume(1);
        if let Some(&second) = head::fill(&mut reader)?.first() {
            first.push(second);
            reader.consume(1);
        }
        let gzip = first == GZIP_MAGIC;
        return Ok(decode_if(gzip, io::Cursor::new(first).chain(reader)));
    }
    let gzip = head.starts_with(&GZIP_MAGIC);
    Ok(decode_if(gzip, reader))
}

/// Boxes `reader`, behind a gzip decoder when `gzip` is set.
fn decode_if<B: BufRead + Send + 'static>(gzip: bool, reader: B) -> Box<dyn BufRead + Send> {
    if gzip {
        let decoder = GzipMembers {
            member: Some(flate2::bufread::GzDecoder::new(reader)),
        };
        Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, decoder))
    } else {
        Box::new(reader)
    }
}

/// Decoder of a gzip stream of one or more members, read as `gzip -d` reads it: zero bytes
/// after the last member (the padding that block copies leave) end the stream.
///
/// flate2's `MultiGzDecoder` reads such padding as the header of another member and fails.
struct GzipMembers<R: BufRead> {
    /// The member being decoded; `None` once the stream has ended.
    member: Option<flate2::bufread::GzDecoder<R>>,
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(member) = self.member.as_mut() else {
                return Ok(0);
            };
            let count = member.read(buffer)?;
            if count > 0 || buffer.is_empty() {
                return Ok(count);
            }
            // The member ended: the stream ends here or after zero padding, or a new member
            // starts.
            let Some(member) = self.member.take() else {
                return Ok(0);
            };
            let mut rest = member.into_inner();
            if !ends_after_zero_padding(&mut rest)? {
                self.member = Some(flate2::bufread::GzDecoder::new(rest));
            }
        }
    }
}

/// Consumes the zero bytes at the front of `reader` and returns whether the input ends after
/// them. Returns false when other data follows at once (the next gzip member), and an error
/// when it follows the zero bytes.
fn ends_after_zero_padding<R: BufRead>(reader: &mut R) -> io::Result<bool> {
    let mut zeros: u64 = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(true);
        }
        let leading = available.iter().take_while(|&&byte| byte == 0).count();
        if leading == 0 {
            if zeros == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("data after {zeros} zero bytes that follow a gzip member"),
            ));
        }
        reader.consume(leading);
        zeros += leading as u64;
    }
}

/// Guesses the format from the first bytes of the decoded input.
///
/// Returns the format of the first of up to 8 non-blank lines that is a known header, a JSON
/// object or a data row of a CSV format. The last line of `head` may be cut off. A UTF-8 byte order mark is
/// ignored. The Taobao header `user_id,item_id,...` gives `Taobao`, although the format has no
/// header, so that the reader reports that line as bad rather than the whole input as unknown.
pub fn detect_format(head: &[u8]) -> Option<Format> {
    let head = strip_utf8_bom(head);
    head.split(|&byte| byte == b'\n')
        .map(|line| line.trim_ascii())
        .filter(|line| !line.is_empty())
        .take(8)
        .find_map(detect_line_format)
}

fn detect_line_format(line: &[u8]) -> Option<Format> {
    if line.starts_with(b"{") {
        return Some(Format::Jsonl);
    }
    // A CSV writer may quote every field, the header's too.
    match fields::unquoted(line) {
        Some(plain) => detect_csv_format(&plain),
        None => detect_csv_format(line),
    }
}

/// Guesses the CSV format of one line without quotes: a known header or a data row.
fn detect_csv_format(line: &[u8]) -> Option<Format> {
    if line.starts_with(b"timestamp,visitorid,event,itemid") {
        return Some(Format::RetailRocket);
    }
    if line.starts_with(b"event_time,event_type,product_id") {
        return Some(Format::Rees46);
    }
    if line.starts_with(b"user_id,item_id,category_id,behavior_type") {
        return Some(Format::Taobao);
    }
    let mut fields: [&[u8]; 9] = [b""; 9];
    let count = fields::split_plain(line, &mut fields);
    let digits = |field: &[u8]| !field.is_empty() && field.iter().all(u8::is_ascii_digit);
    match count {
        5 if matches!(fields[3], b"pv" | b"buy" | b"cart" | b"fav") && digits(fields[4]) => {
            Some(Format::Taobao)
        }
        5 if matches!(fields[2], b"view" | b"addtocart" | b"transaction") && digits(fields[0]) => {
            Some(Format::RetailRocket)
        }
        9 if fields[0].ends_with(b" UTC") => Some(Format::Rees46),
        _ => None,
    }
}

/// Builds the parser of `format`, and returns it with warnings for the log.
///
/// `events_path` is the events file, or `None` for stdin. RetailRocket looks for
/// `item_properties*.csv` and `category_tree.csv` beside it when `options` names none.
pub fn make_parser(
    format: Format,
    options: &SourceOptions,
    events_path: Option<&Path>,
) -> Result<(Box<dyn LineParser>, Vec<String>), SourceError> {
    let mut warnings = Vec::new();
    if format != Format::RetailRocket {
        let retailrocket_options = [
            (!options.item_properties.is_empty(), "--item-properties"),
            (options.category_tree.is_some(), "--category-tree"),
            (options.missing_category.is_some(), "--missing-category"),
        ];
        for (_, option) in retailrocket_options.iter().filter(|(given, _)| *given) {
            warnings.push(format!(
                "{option} is ignored: it applies only to the retailrocket format, and the input \
                 format is {format}"
            ));
        }
    }
    let parser: Box<dyn LineParser> = match format {
        Format::Jsonl => Box::new(jsonl::JsonlParser::new()),
        Format::Taobao => Box::new(taobao::TaobaoParser::new()),
        Format::Rees46 => Box::new(rees46::Rees46Parser::new()),
        Format::RetailRocket => {
            let (parser, catalog_warnings) =
                retailrocket::RetailRocketParser::from_options(options, events_path)?;
            warnings.extend(catalog_warnings);
            Box::new(parser)
        }
    };
    Ok((parser, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns its first byte alone, as a pipe can, then the rest.
    struct FirstByteAlone {
        bytes: Vec<u8>,
        position: usize,
    }

    impl Read for FirstByteAlone {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            let limit = if self.position == 0 { 1 } else { buffer.len() };
            let rest = &self.bytes[self.position..];
            let count = rest.len().min(limit).min(buffer.len());
            buffer[..count].copy_from_slice(&rest[..count]);
            self.position += count;
            Ok(count)
        }
    }

    fn read_through_decoder(bytes: Vec<u8>) -> Vec<u8> {
        let reader = BufReader::new(FirstByteAlone { bytes, position: 0 });
        let mut out = Vec::new();
        wrap_decoder(reader).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn wrap_decoder_gzip_with_one_byte_first_read() {
        let text = b"{\"user\":1}\n{\"user\":2}\n".to_vec();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &text).unwrap();
        let compressed = encoder.finish().unwrap();
        assert_eq!(read_through_decoder(compressed), text);
    }

    fn gzip(text: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, text).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn wrap_decoder_gzip_members_and_zero_padding() {
        let mut members = gzip(b"a\n");
        members.extend(gzip(b"b\n"));
        assert_eq!(read_through_decoder(members.clone()), b"a\nb\n");

        let mut padded = members.clone();
        padded.extend([0u8; 1000]);
        assert_eq!(read_through_decoder(padded), b"a\nb\n");

        let mut one_zero = gzip(b"a\n");
        one_zero.push(0);
        assert_eq!(read_through_decoder(one_zero), b"a\n");
    }

    #[test]
    fn wrap_decoder_rejects_data_after_padding() {
        let mut damaged = gzip(b"a\n");
        damaged.extend([0u8; 10]);
        damaged.extend(b"text");
        let reader = BufReader::new(FirstByteAlone {
            bytes: damaged,
            position: 0,
        });
        let mut out = Vec::new();
        let error = wrap_decoder(reader)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(error.to_string().contains("after 10 zero bytes"), "{error}");

        let mut garbage = gzip(b"a\n");
        garbage.extend(b"text");
        let reader = BufReader::new(FirstByteAlone {
            bytes: garbage,
            position: 0,
        });
        assert!(wrap_decoder(reader).unwrap().read_to_end(&mut out).is_err());
    }

    #[test]
    fn wrap_decoder_lone_magic_byte_as_text() {
        assert_eq!(read_through_decoder(vec![0x1f, b'a', b'\n']), vec![0x1f, b'a', b'\n']);
        assert_eq!(read_through_decoder(vec![0x1f]), vec![0x1f]);
    }

    #[test]
    fn format_names_round_trip() {
        for format in Format::ALL {
            assert_eq!(format.to_string().parse::<Format>().unwrap(), format);
        }
        let error = "csv".parse::<Format>().unwrap_err().to_string();
        assert!(error.contains("\"csv\""), "{error}");
        assert!(error.contains("rees46"), "{error}");
    }

    #[test]
    fn missing_category_names() {
        assert_eq!(
            "bad".parse::<MissingCategory>().unwrap(),
            MissingCategory::Bad
        );
        assert_eq!(
            "item".parse::<MissingCategory>().unwrap(),
            MissingCategory::Item
        );
        assert!("Item".parse::<MissingCategory>().is_err());
    }

    #[test]
    fn raw_text_is_bounded() {
        let record = BadRecord::new(3, "reason", &[b'x'; 5000]);
        assert_eq!(record.raw.len(), MAX_RAW_BYTES);
        let record = BadRecord::new(3, "reason", &[0xff; 2000]);
        assert!(record.raw.len() <= MAX_RAW_BYTES, "{}", record.raw.len());
        assert!(record.raw.starts_with('\u{FFFD}'));
        // A multi-byte character cut at the limit becomes one replacement character.
        let mut raw = vec![b'a'; MAX_RAW_BYTES - 1];
        raw.extend_from_slice("é".as_bytes());
        let record = BadRecord::new(1, "reason", &raw);
        assert!(record.raw.len() <= MAX_RAW_BYTES, "{}", record.raw.len());
    }

    #[test]
    fn detects_rows_without_header() {
        assert_eq!(
            detect_format(b"543462,1715,1464116,pv,1511658000\r\n"),
            Some(Format::Taobao)
        );
        assert_eq!(
            detect_format(b"1431328072718,7002,view,200,\n"),
            Some(Format::RetailRocket)
        );
        assert_eq!(
            detect_format(b"2019-10-01 00:00:00 UTC,view,1,2,,,1.0,3,s\n"),
            Some(Format::Rees46)
        );
        assert_eq!(detect_format(b"\n\n  {\"user\":1}"), Some(Format::Jsonl));
        assert_eq!(detect_format(b"hello world\n"), None);
        assert_eq!(detect_format(b""), None);
    }

    #[test]
    fn detects_quoted_headers_and_rows() {
        let header = b"\"event_time\",\"event_type\",\"product_id\",\"category_id\",\"category_code\",\"brand\",\"price\",\"user_id\",\"user_session\"\n";
        assert_eq!(detect_format(header), Some(Format::Rees46));
        assert_eq!(
            detect_format(b"\"2019-10-01 00:00:00 UTC\",\"view\",\"1\",\"2\",\"\",\"\",\"1.0\",\"3\",\"s\"\n"),
            Some(Format::Rees46)
        );
        assert_eq!(
            detect_format(b"\"timestamp\",\"visitorid\",\"event\",\"itemid\",\"transactionid\"\n"),
            Some(Format::RetailRocket)
        );
        assert_eq!(detect_format(b"\"hello\",\"world\"\n"), None);
        assert_eq!(detect_format(b"\"not closed\n"), None);
    }

    /// Writes `lines` numbered lines to a temporary file, more than one read buffer's worth
    /// when `lines` is large, so that opening it does not read all of it.
    fn numbered_file(lines: usize) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let text: String = (0..lines).map(|line| format!("line {line:08}\n")).collect();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn regular_file_read_to_size_at_open() {
        use std::io::Write;
        let mut file = numbered_file(100_000);
        let size = file.as_file().metadata().unwrap().len();
        let (mut reader, cut) = open_input_until_shutdown(file.path().to_str().unwrap()).unwrap();
        assert!(cut.is_none());
        file.write_all(b"appended after the open\n").unwrap();

        let mut text = Vec::new();
        reader.read_to_end(&mut text).unwrap();
        assert_eq!(text.len() as u64, size);
        assert!(text.ends_with(b"line 00099999\n"));
    }

    #[test]
    fn regular_file_shrunk_after_open_is_read_error() {
        let file = numbered_file(100_000);
        let path = file.path().to_str().unwrap();
        let (reader, _) = open_input_until_shutdown(path).unwrap();
        file.as_file().set_len(500_000).unwrap();

        let mut splitter = LineSplitter::new(reader);
        let mut lines = 0u64;
        let error = loop {
            match splitter.next_line() {
                Ok(Some(_)) => lines += 1,
                Ok(None) => panic!("the read ended without an error after {lines} lines"),
                Err(error) => break error,
            }
        };
        assert_eq!(lines, 500_000 / 14, "whole lines before the new end");
        assert!(error.to_string().contains("the file shrank"), "{error}");
    }
}
