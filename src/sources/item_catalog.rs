//! RetailRocket item-to-category snapshots and category tree.
//!
//! RetailRocket gives an item's category only in its item properties files
//! (`timestamp,itemid,property,value`), as rows with property `categoryid`. Those rows are
//! snapshots taken at different times, and an item may change category between them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use veer_models::Id;

use super::fields::{self, show};
use super::lines::LineSplitter;
use super::time;
use super::{open_input, SourceError};

const PROPERTIES_HEADER: &str = "timestamp,itemid,property,value";
const TREE_HEADER: &str = "categoryid,parentid";

/// Item categories over time and the root category of each category.
#[derive(Debug, Default)]
pub struct ItemCatalog {
    /// Category snapshots of each item as (time in Unix ms, category), sorted by time, with
    /// consecutive snapshots of the same category merged.
    snapshots: HashMap<Id, Vec<(i64, Id)>>,
    /// Root ancestor of each category of the tree. A root maps to itself.
    roots: HashMap<Id, Id>,
}

impl ItemCatalog {
    /// Loads `categoryid` rows from RetailRocket item properties files, and the category tree
    /// if given. Returns the catalog and warnings about skipped rows.
    ///
    /// Files may be gzip. A file whose first line is not the expected header is an error,
    /// because it is probably the wrong file. Malformed rows are skipped and counted.
    pub fn load(
        item_properties: &[PathBuf],
        category_tree: Option<&Path>,
    ) -> Result<(ItemCatalog, Vec<String>), SourceError> {
        let mut catalog = ItemCatalog::default();
        let mut warnings = Vec::new();
        for path in item_properties {
            catalog.read_item_properties(path, &mut warnings)?;
        }
        for snapshots in catalog.snapshots.values_mut() {
            // Stable, so that rows with the same time keep their file order and the last wins.
            snapshots.sort_by_key(|(ts_ms, _)| *ts_ms);
            snapshots.dedup_by(|later, earlier| later.1 == earlier.1);
        }
        if let Some(path) = category_tree {
            catalog.read_category_tree(path, &mut warnings)?;
        }
        Ok((catalog, warnings))
    }

    /// Returns the category of `item` at `ts_ms`: the latest snapshot at or before that time,
    /// or the earliest snapshot for an event before all of them.
    pub fn category_at(&self, item: &Id, ts_ms: i64) -> Option<&Id> {
        let snapshots = self.snapshots.get(item)?;
        let after = snapshots.partition_point(|(snapshot_ms, _)| *snapshot_ms <= ts_ms);
        snapshots
            .get(after.saturating_sub(1))
            .map(|(_, category)| category)
    }

    /// Returns the root ancestor of `category` in the category tree, or `None` when the
    /// category is not in the tree or no tree was loaded.
    pub fn root_of(&self, category: &Id) -> Option<&Id> {
        self.roots.get(category)
    }

    /// Returns the number of items with at least one category.
    pub fn item_count(&self) -> usize {
        self.snapshots.len()
    }

    /// Returns the number of categories in the category tree.
    pub fn tree_size(&self) -> usize {
        self.roots.len()
    }

    fn read_item_properties(
        &mut self,
        path: &Path,
        warnings: &mut Vec<String>,
    ) -> Result<(), SourceError> {
        let mut skipped = SkippedRows::default();
        let mut category_rows: u64 = 0;
        read_rows(
            path,
            PROPERTIES_HEADER,
            PROPERTIES_HINT,
            |line_no, line| match parse_category_row(line) {
                Ok(None) => {}
                Ok(Some((item, ts_ms, category))) => {
                    category_rows += 1;
                    self.snapshots
                        .entry(item)
                        .or_default()
                        .push((ts_ms, category));
                }
                Err(reason) => skipped.add(line_no, reason),
            },
        )?;
        if category_rows == 0 {
            warnings.push(format!(
                "{}: no categoryid rows, so no item gets a category from this file",
                path.display()
            ));
        }
        skipped.warn(path, "categoryid rows", warnings);
        Ok(())
    }

    fn read_category_tree(
        &mut self,
        path: &Path,
        warnings: &mut Vec<String>,
    ) -> Result<(), SourceError> {
        let mut parents: HashMap<Id, Option<Id>> = HashMap::new();
        let mut skipped = SkippedRows::default();
        read_rows(
            path,
            TREE_HEADER,
            TREE_HINT,
            |line_no, line| match parse_tree_row(line) {
                Ok((category, parent)) => {
                    parents.insert(category, parent);
                }
                Err(reason) => skipped.add(line_no, reason),
            },
        )?;
        skipped.warn(path, "rows", warnings);

        let mut in_cycles = 0;
        for category in parents.keys() {
            match find_root(&parents, category) {
                Some(root) => {
                    self.roots.insert(category.clone(), root.clone());
                }
                None => in_cycles += 1,
            }
        }
        if in_cycles > 0 {
            warnings.push(format!(
                "{}: {in_cycles} categories have a cycle among their ancestors and get no topic",
                path.display()
            ));
        }
        Ok(())
    }
}

const PROPERTIES_HINT: &str =
    "--item-properties takes RetailRocket item_properties_part1.csv and item_properties_part2.csv";
const TREE_HINT: &str = "--category-tree takes RetailRocket category_tree.csv";

/// Follows parent links up to the root. A parent missing from the tree counts as a root.
///
/// Returns `None` when the chain of parents has a cycle.
fn find_root<'a>(parents: &'a HashMap<Id, Option<Id>>, category: &'a Id) -> Option<&'a Id> {
    let mut current = category;
    // Without a cycle, the chain reaches a root within `parents.len()` steps, because it
    // cannot visit a category twice.
    for _ in 0..=parents.len() {
        match parents.get(current) {
            Some(Some(parent)) => current = parent,
            Some(None) | None => return Some(current),
        }
    }
    None
}

/// Reads a CSV file line by line after checking its header, calling `row` for each non-blank
/// data line.
fn read_rows(
    path: &Path,
    header: &'static str,
    hint: &'static str,
    mut row: impl FnMut(u64, &[u8]),
) -> Result<(), SourceError> {
    let io_error = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = open_input(&path.to_string_lossy()).map_err(io_error)?;
    let mut lines = LineSplitter::new(reader);
    while let Some(line) = lines.next_line().map_err(io_error)? {
        if line.number == 1 {
            if !fields::is_header(line.bytes, header.as_bytes()) {
                return Err(SourceError::InvalidHeader {
                    path: path.to_path_buf(),
                    found: String::from_utf8_lossy(line.bytes).into_owned(),
                    expected: header,
                    hint,
                });
            }
            continue;
        }
        if !line.bytes.is_empty() {
            row(line.number, line.bytes);
        }
    }
    Ok(())
}

/// Parses a `categoryid` row of the item properties as (item, time in ms, category).
///
/// Returns `Ok(None)` for rows of other properties, which are not checked further: only the
/// value column may be quoted there, and it comes after the property name.
fn parse_category_row(line: &[u8]) -> Result<Option<(Id, i64, Id)>, String> {
    let mut commas = memchr::memchr_iter(b',', line);
    let (Some(first), Some(second)) = (commas.next(), commas.next()) else {
        return Err("expected 4 comma-separated fields".into());
    };
    let Some(value) = line[second + 1..].strip_prefix(b"categoryid,") else {
        return Ok(None);
    };
    if memchr::memchr(b',', value).is_some() {
        return Err(format!("categoryid value {} contains a comma", show(value)));
    }
    let timestamp = unquote(&line[..first]);
    let ts_ms = time::parse_epoch_digits(timestamp)
        .map_err(|error| error.reason("timestamp", timestamp, "Unix milliseconds"))?;
    let item = required_id(unquote(&line[first + 1..second]), "itemid")?;
    let category = required_id(unquote(value), "categoryid value")?;
    Ok(Some((item, ts_ms, category)))
}

/// Parses a category tree row as (category, parent); an empty parent marks a root.
fn parse_tree_row(line: &[u8]) -> Result<(Id, Option<Id>), String> {
    let mut columns: [&[u8]; 2] = [b""; 2];
    let count = fields::split_plain(line, &mut columns);
    if count != 2 {
        return Err(fields::wrong_field_count(2, count));
    }
    let category = required_id(unquote(columns[0]), "categoryid")?;
    let parent = unquote(columns[1]);
    let parent = if parent.is_empty() {
        None
    } else {
        Some(required_id(parent, "parentid")?)
    };
    Ok((category, parent))
}

/// Removes the quotes around a CSV field that has no quote inside.
fn unquote(field: &[u8]) -> &[u8] {
    match field {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'"') => inner,
        _ => field,
    }
}

fn required_id(field: &[u8], name: &str) -> Result<Id, String> {
    if field.is_empty() {
        return Err(format!("{name} is empty"));
    }
    fields::id_from_bytes(field).ok_or_else(|| fields::invalid_value(name, field, "valid UTF-8"))
}

/// Count of skipped rows of one file, with the first one for the warning.
#[derive(Default)]
struct SkippedRows {
    count: u64,
    first: Option<(u64, String)>,
}

impl SkippedRows {
    fn add(&mut self, line_no: u64, reason: String) {
        self.count += 1;
        self.first.get_or_insert((line_no, reason));
    }

    fn warn(&self, path: &Path, what: &str, warnings: &mut Vec<String>) {
        if let Some((line_no, reason)) = &self.first {
            warnings.push(format!(
                "{}: skipped {} malformed {what}; the first is line {line_no}: {reason}",
                path.display(),
                self.count
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(rows: &[(i64, u64, u64)]) -> ItemCatalog {
        let mut catalog = ItemCatalog::default();
        for &(ts_ms, item, category) in rows {
            catalog
                .snapshots
                .entry(Id::from(item))
                .or_default()
                .push((ts_ms, Id::from(category)));
        }
        for snapshots in catalog.snapshots.values_mut() {
            snapshots.sort_by_key(|(ts_ms, _)| *ts_ms);
            snapshots.dedup_by(|later, earlier| later.1 == earlier.1);
        }
        catalog
    }

    #[test]
    fn snapshot_in_force_at_event_time() {
        let catalog = catalog(&[(200, 1, 20), (100, 1, 10), (300, 1, 20)]);
        let at = |ts_ms| catalog.category_at(&Id::from(1u64), ts_ms).cloned();
        assert_eq!(at(50), Some(Id::from(10u64)), "before the first snapshot");
        assert_eq!(at(100), Some(Id::from(10u64)));
        assert_eq!(at(199), Some(Id::from(10u64)));
        assert_eq!(at(200), Some(Id::from(20u64)));
        assert_eq!(at(10_000), Some(Id::from(20u64)));
        assert_eq!(catalog.category_at(&Id::from(2u64), 100), None);
        assert_eq!(catalog.snapshots[&Id::from(1u64)].len(), 2);
    }

    #[test]
    fn category_rows() {
        assert_eq!(
            parse_category_row(b"1431226800000,200,categoryid,1338"),
            Ok(Some((
                Id::from(200u64),
                1_431_226_800_000,
                Id::from(1338u64)
            )))
        );
        assert_eq!(
            parse_category_row(b"\"1431226800000\",\"200\",categoryid,\"1338\""),
            Ok(Some((
                Id::from(200u64),
                1_431_226_800_000,
                Id::from(1338u64)
            )))
        );
        assert_eq!(
            parse_category_row(b"1431226800,200,categoryid,1338"),
            Ok(Some((
                Id::from(200u64),
                1_431_226_800_000,
                Id::from(1338u64)
            ))),
            "a time in seconds is read as seconds, as in the events"
        );
        assert_eq!(
            parse_category_row(b"1,400,283,\"n12.000,n5.000\""),
            Ok(None)
        );
        assert_eq!(parse_category_row(b"1,400,available,1"), Ok(None));
        assert!(parse_category_row(b"1,400").is_err());
        assert!(parse_category_row(b"x,400,categoryid,5").is_err());
        assert!(parse_category_row(b"1,,categoryid,5").is_err());
        assert!(parse_category_row(b"1,400,categoryid,").is_err());
        assert!(parse_category_row(b"1,400,categoryid,5,6").is_err());
    }

    #[test]
    fn roots_with_missing_parents_and_cycles() {
        let mut parents: HashMap<Id, Option<Id>> = HashMap::new();
        parents.insert(Id::from(1u64), None);
        parents.insert(Id::from(2u64), Some(Id::from(1u64)));
        parents.insert(Id::from(3u64), Some(Id::from(2u64)));
        parents.insert(Id::from(4u64), Some(Id::from(99u64)));
        parents.insert(Id::from(5u64), Some(Id::from(6u64)));
        parents.insert(Id::from(6u64), Some(Id::from(5u64)));
        parents.insert(Id::from(7u64), Some(Id::from(7u64)));
        assert_eq!(find_root(&parents, &Id::from(3u64)), Some(&Id::from(1u64)));
        assert_eq!(find_root(&parents, &Id::from(1u64)), Some(&Id::from(1u64)));
        assert_eq!(find_root(&parents, &Id::from(4u64)), Some(&Id::from(99u64)));
        assert_eq!(find_root(&parents, &Id::from(5u64)), None);
        assert_eq!(find_root(&parents, &Id::from(7u64)), None);
    }

    #[test]
    fn tree_rows() {
        assert_eq!(
            parse_tree_row(b"1016,213"),
            Ok((Id::from(1016u64), Some(Id::from(213u64))))
        );
        assert_eq!(parse_tree_row(b"231,"), Ok((Id::from(231u64), None)));
        assert!(parse_tree_row(b"231").is_err());
        assert!(parse_tree_row(b",5").is_err());
    }
}
