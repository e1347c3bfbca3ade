//! Reader of RetailRocket `events.csv`: `timestamp,visitorid,event,itemid,transactionid`.
//!
//! Timestamps are Unix milliseconds. Some exports divide the column by 1000, so a value below
//! 10^12 (before September 2001 as milliseconds) is read as Unix seconds, as the other readers
//! do. `event` is `view`, `addtocart` or `transaction`, and
//! `transactionid` (empty, or a float such as `14418.0` in pandas exports) is not used. The
//! category comes from an [`ItemCatalog`], and the topic from the category tree's root.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use veer_models::{Behavior, Event, Id};

use super::fields::{self, invalid_value, wrong_field_count};
use super::item_catalog::ItemCatalog;
use super::time;
use super::{BadRecord, LineParser, MissingCategory, Parsed, SourceError, SourceOptions};

const HEADER: &[u8] = b"timestamp,visitorid,event,itemid,transactionid";
const FIELD_COUNT: usize = 5;

/// Parser of the `retailrocket` format.
pub(crate) struct RetailRocketParser {
    catalog: Arc<ItemCatalog>,
    missing_category: MissingCategory,
}

impl RetailRocketParser {
    pub(crate) fn new(catalog: Arc<ItemCatalog>, missing_category: MissingCategory) -> Self {
        RetailRocketParser {
            catalog,
            missing_category,
        }
    }

    /// Finds and loads the item properties and category tree, and chooses the policy for
    /// items without a category. Returns the parser and warnings for the log.
    pub(crate) fn from_options(
        options: &SourceOptions,
        events_path: Option<&Path>,
    ) -> Result<(Self, Vec<String>), SourceError> {
        let folder = events_path.map(events_folder);
        let item_properties = if options.item_properties.is_empty() {
            match &folder {
                Some(folder) => find_item_properties(folder)?,
                None => Vec::new(),
            }
        } else {
            options.item_properties.clone()
        };
        let category_tree = match (&options.category_tree, &folder) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(folder)) => find_category_tree(folder),
            (None, None) => None,
        };

        let location = match &folder {
            Some(folder) => format!("beside the events in {}", folder.display()),
            None => "for events read from standard input".to_string(),
        };
        let mut warnings = Vec::new();
        let missing_category = match (options.missing_category, item_properties.is_empty()) {
            (Some(MissingCategory::Bad), true) => {
                return Err(SourceError::NoItemProperties { location })
            }
            (Some(policy), _) => policy,
            (None, false) => MissingCategory::Bad,
            (None, true) => {
                warnings.push(format!(
                    "no RetailRocket item properties (item_properties*.csv) found {location}, so \
                     item ids are used as category ids and interests are tracked per item; pass \
                     --item-properties FILE to map items to categories, or --missing-category \
                     bad to reject events without a category"
                ));
                MissingCategory::Item
            }
        };

        let (catalog, catalog_warnings) =
            ItemCatalog::load(&item_properties, category_tree.as_deref())?;
        warnings.extend(catalog_warnings);
        let parser = RetailRocketParser::new(Arc::new(catalog), missing_category);
        Ok((parser, warnings))
    }

    /// Parses a row. A row that contains a `"` is split with CSV quoting, because some exports
    /// quote every field, so a quoted comma or doubled quote stays inside its field.
    fn parse_event(&self, line_no: u64, line: &[u8]) -> Result<Event, String> {
        if memchr::memchr(b'"', line).is_none() {
            let mut columns: [&[u8]; FIELD_COUNT] = [b""; FIELD_COUNT];
            let count = fields::split_plain(line, &mut columns);
            return self.parse_fields(line_no, &columns, count);
        }
        let quoted = fields::split_quoted(line)?;
        self.parse_fields(line_no, &quoted, quoted.len())
    }

    /// Parses the fields of a row, without their quotes. `count` is the row's number of
    /// fields, which a plain split counts past the end of `columns`.
    fn parse_fields<F: AsRef<[u8]>>(
        &self,
        line_no: u64,
        columns: &[F],
        count: usize,
    ) -> Result<Event, String> {
        if count != FIELD_COUNT {
            return Err(wrong_field_count(FIELD_COUNT, count));
        }
        let column = |index: usize| columns[index].as_ref();
        let (timestamp, visitor, event, item) = (column(0), column(1), column(2), column(3));

        let ts_ms = time::parse_epoch_digits(timestamp)
            .map_err(|error| error.reason("timestamp", timestamp, "Unix milliseconds"))?;
        let user = required_id(visitor, "visitorid")?;
        let behavior = std::str::from_utf8(event)
            .ok()
            .and_then(Behavior::parse)
            .ok_or_else(|| invalid_value("event", event, "view, addtocart or transaction"))?;
        let item = required_id(item, "itemid")?;

        let (category, topic) = match self.catalog.category_at(&item, ts_ms) {
            Some(category) => (category.clone(), self.catalog.root_of(category).cloned()),
            None => match self.missing_category {
                MissingCategory::Item => (item.clone(), None),
                MissingCategory::Bad => {
                    return Err(format!(
                        "item {item} has no categoryid in the item properties"
                    ))
                }
            },
        };

        Ok(Event {
            ts_ms,
            user,
            category,
            item,
            behavior,
            topic,
            price: None,
            brand: None,
            dwell_ms: None,
            session: None,
            line: line_no,
        })
    }
}

impl LineParser for RetailRocketParser {
    fn parse(&mut self, line_no: u64, line: &[u8]) -> Parsed {
        if line.is_empty() || fields::is_header(line, HEADER) {
            return Parsed::Skip;
        }
        if line_no == 1 && line.first().is_some_and(u8::is_ascii_alphabetic) {
            let reason = format!(
                "unexpected header; expected {:?} with the columns in that order",
                String::from_utf8_lossy(HEADER)
            );
            return Parsed::Bad(BadRecord::new(line_no, reason, line));
        }
        match self.parse_event(line_no, line) {
            Ok(event) => Parsed::Event(event),
            Err(reason) => Parsed::Bad(BadRecord::new(line_no, reason, line)),
        }
    }
}

fn required_id(field: &[u8], name: &str) -> Result<Id, String> {
    if field.is_empty() {
        return Err(format!("{name} is empty"));
    }
    fields::id_from_bytes(field).ok_or_else(|| invalid_value(name, field, "valid UTF-8"))
}

fn events_folder(events_path: &Path) -> PathBuf {
    match events_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Lists `item_properties*.csv` and `item_properties*.csv.gz` in `folder`, sorted by name.
fn find_item_properties(folder: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let entries = std::fs::read_dir(folder).map_err(|source| SourceError::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SourceError::Io {
            path: folder.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_csv = name.ends_with(".csv") || name.ends_with(".csv.gz");
        if name.starts_with("item_properties") && is_csv && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Returns `category_tree.csv` (or `.csv.gz`) in `folder` when it exists.
fn find_category_tree(folder: &Path) -> Option<PathBuf> {
    ["category_tree.csv", "category_tree.csv.gz"]
        .into_iter()
        .map(|name| folder.join(name))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser(missing_category: MissingCategory) -> RetailRocketParser {
        RetailRocketParser::new(Arc::new(ItemCatalog::default()), missing_category)
    }

    #[test]
    fn float_transaction_id_is_ignored() {
        let parsed = parser(MissingCategory::Item)
            .parse(3, b"1438829821179,264810,transaction,325310,14418.0");
        let Parsed::Event(event) = parsed else {
            panic!("expected an event, got {parsed:?}");
        };
        assert_eq!(event.ts_ms, 1_438_829_821_179);
        assert_eq!(event.user, Id::int(264_810));
        assert_eq!(event.behavior, Behavior::Buy);
        assert_eq!(event.item, Id::int(325_310));
        assert_eq!(event.category, Id::int(325_310));
        assert_eq!(event.topic, None);
        assert_eq!(event.line, 3);
    }

    #[test]
    fn timestamp_in_seconds_read_as_seconds() {
        let parse = |line: &[u8]| match parser(MissingCategory::Item).parse(2, line) {
            Parsed::Event(event) => event.ts_ms,
            other => panic!("expected an event, got {other:?}"),
        };
        assert_eq!(parse(b"1433221332,257597,view,355908,"), 1_433_221_332_000);
        assert_eq!(
            parse(b"1433221332117,257597,view,355908,"),
            1_433_221_332_117
        );
    }

    #[test]
    fn missing_category_policy() {
        let parsed = parser(MissingCategory::Bad).parse(4, b"1438829821179,1,view,400,");
        let Parsed::Bad(record) = parsed else {
            panic!("expected a bad record, got {parsed:?}");
        };
        assert_eq!(
            record.reason,
            "item 400 has no categoryid in the item properties"
        );
        assert_eq!(record.line, 4);
    }

    #[test]
    fn malformed_rows() {
        let reason = |line: &[u8]| match parser(MissingCategory::Item).parse(1, line) {
            Parsed::Bad(record) => record.reason,
            other => panic!("expected a bad record, got {other:?}"),
        };
        assert!(reason(b"1438829821179,1,view,400").contains("found 4"));
        assert!(reason(b"1438829821.5,1,view,400,").contains("timestamp"));
        assert!(reason(b"1438829821179,1,scroll,400,").contains("event \"scroll\""));
        assert!(reason(b"1438829821179,,view,400,").contains("visitorid is empty"));
        assert!(reason(b"-1438829821179,1,view,400,").contains("negative"));
        assert!(reason(b"1438829821179000,1,view,400,").contains("more than 13 digits"));
    }

    #[test]
    fn other_column_order_is_reported() {
        let parsed = parser(MissingCategory::Item)
            .parse(1, b"timestamp,visitorid,itemid,event,transactionid");
        let Parsed::Bad(record) = parsed else {
            panic!("expected a bad record, got {parsed:?}");
        };
        assert!(
            record.reason.starts_with("unexpected header"),
            "{}",
            record.reason
        );
    }

    #[test]
    fn quoted_rows() {
        let parse = |line: &[u8]| parser(MissingCategory::Item).parse(7, line);
        let plain = parse(b"1433221332117,257597,view,355908,");
        assert!(matches!(plain, Parsed::Event(_)), "{plain:?}");
        let rows: [&[u8]; 3] = [
            b"\"1433221332117\",\"257597\",\"view\",\"355908\",\"\"",
            b"1433221332117,\"257597\",view,355908,",
            // The transaction id is not read, so its quoted comma and quote change nothing.
            b"\"1433221332117\",\"257597\",\"view\",\"355908\",\"1,\"\"2\"\"\"",
        ];
        for row in rows {
            assert_eq!(parse(row), plain, "{}", String::from_utf8_lossy(row));
        }
    }

    #[test]
    fn quoted_comma_and_quote_kept_in_field() {
        let parse = |line: &[u8]| parser(MissingCategory::Item).parse(7, line);
        let user = |line: &[u8]| match parse(line) {
            Parsed::Event(event) => event.user,
            other => panic!("expected an event, got {other:?}"),
        };
        assert_eq!(
            user(b"\"1433221332117\",\"25,7597\",\"view\",\"355908\",\"\""),
            Id::text("25,7597")
        );
        assert_eq!(
            user(b"\"1433221332117\",\"25\"\"7597\",\"view\",\"355908\",\"\""),
            Id::text("25\"7597")
        );
        let reason = |line: &[u8]| match parse(line) {
            Parsed::Bad(record) => record.reason,
            other => panic!("expected a bad record, got {other:?}"),
        };
        let split_time = reason(b"\"1433221332,117\",\"257597\",\"view\",\"355908\",\"\"");
        assert!(split_time.contains("timestamp"), "{split_time}");
        let open = reason(b"\"1433221332117\",\"257597,view,355908,");
        assert!(open.contains("not closed"), "{open}");
        let after_quote = reason(b"\"1433221332117\"x,257597,view,355908,");
        assert!(
            after_quote.contains("after a closing quote"),
            "{after_quote}"
        );
        let six = reason(b"\"1433221332117\",\"257597\",\"view\",\"355908\",\"\",\"\"");
        assert!(six.contains("found 6"), "{six}");
    }

    #[test]
    fn header_skips() {
        assert_eq!(parser(MissingCategory::Item).parse(1, HEADER), Parsed::Skip);
        assert_eq!(parser(MissingCategory::Item).parse(52, b""), Parsed::Skip);
        let quoted = b"\"timestamp\",\"visitorid\",\"event\",\"itemid\",\"transactionid\"";
        assert_eq!(parser(MissingCategory::Item).parse(1, quoted), Parsed::Skip);
    }
}
