//! The user attribute table: age, gender, region and other columns per user.
//!
//! [`AttributeTable::parse`] reads a CSV file with a header line or JSON lines. The `user`
//! column is required, and in JSON it is an integer or a string, as in events. The table is
//! a second file joined to the events, so rows are keyed by [`Id::join_key`]: the user `7`,
//! `"7"` in JSON or `7` in CSV is one key, which matches the event ids `7` and `"7"`. `age` is an
//! integer or a band such as `25-34`, from 0 to 150 years, and `gender` and `region` are text.
//! Any other column is kept as text, so `vip_level` `0` stays the text `"0"`; JSON numbers and
//! booleans become their text, and a JSON array or object is an invalid value. An empty or
//! `null` value is unknown. A user without a row has no attributes at all,
//! which [`AttributeTable::get`] returns as `None`, never as filled-in defaults.
//!
//! Problems in single rows are not fatal: a later row for the same user replaces the earlier
//! one, a value that cannot be read (an age of `abc`) is unknown, and a row without a user id
//! or whose CSV field count differs from the header's is left out. Each is listed in the
//! [`LoadReport`] with its line number, for the log.
//!
//! `veer run --users` loads the table, watches the file, and joins each version into the
//! per-user profiles. [`AttributeTable::changes`] turns two versions of the table into the
//! retractions and insertions that the join consumes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::alert::input_id;
use crate::event::Id;

/// A user's age: whole years, or a band of years with both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Age {
    Years(u32),
    Band { low: u32, high: u32 },
}

impl Age {
    /// Maximum age in years, for a value or a band's upper end. Older values are invalid.
    pub const MAX_YEARS: u32 = 150;

    /// Parses `31` or `25-34`, returning `None` for anything else, a band whose ends are
    /// reversed, or an age above [`Age::MAX_YEARS`].
    pub fn parse(text: &str) -> Option<Age> {
        let text = text.trim();
        if let Some((low, high)) = text.split_once('-') {
            let low: u32 = low.trim().parse().ok()?;
            let high: u32 = high.trim().parse().ok()?;
            return (low <= high && high <= Age::MAX_YEARS).then_some(Age::Band { low, high });
        }
        let years: u32 = text.parse().ok()?;
        (years <= Age::MAX_YEARS).then_some(Age::Years(years))
    }

    /// Returns the age as JSON: years as a number, a band as its text such as `"25-34"`.
    pub fn to_json(self) -> Value {
        match self {
            Age::Years(years) => Value::from(years),
            Age::Band { low, high } => Value::String(format!("{low}-{high}")),
        }
    }

    /// Returns the age in years, or the middle of a band, as a model feature.
    pub fn years(self) -> f64 {
        match self {
            Age::Years(years) => f64::from(years),
            Age::Band { low, high } => (f64::from(low) + f64::from(high)) / 2.0,
        }
    }
}

/// The attributes of one user's row. `None` and absent keys are unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserAttributes {
    pub age: Option<Age>,
    pub gender: Option<String>,
    pub region: Option<String>,
    /// Every other column with a value, as text.
    pub other: BTreeMap<String, String>,
}

impl UserAttributes {
    /// Returns the attributes as a JSON object. `age`, `gender` and `region` are always present,
    /// as `null` when unknown; other columns appear only with a value, as text.
    pub fn to_json(&self) -> Map<String, Value> {
        let text = |value: &Option<String>| value.clone().map_or(Value::Null, Value::String);
        let mut object = Map::new();
        object.insert("age".into(), self.age.map_or(Value::Null, Age::to_json));
        object.insert("gender".into(), text(&self.gender));
        object.insert("region".into(), text(&self.region));
        for (column, value) in &self.other {
            object.insert(column.clone(), Value::String(value.clone()));
        }
        object
    }
}

/// One user's row before and after a change of the table. `None` means no row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowChange {
    /// The user's [`Id::join_key`].
    pub user: Id,
    pub before: Option<UserAttributes>,
    pub after: Option<UserAttributes>,
}

/// A user whose row appears more than once. The row on `later_line` is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateUser {
    pub user: Id,
    pub earlier_line: u64,
    pub later_line: u64,
}

/// A value that could not be read and is treated as unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidValue {
    pub line: u64,
    pub column: String,
    pub value: String,
}

/// A row left out of the table because it has no user id, has another field count than the
/// CSV header, or cannot be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedRow {
    pub line: u64,
    pub reason: String,
}

/// Counts and problems of one load, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Data rows read (not counting the header or blank lines), skipped rows included.
    pub rows: u64,
    pub duplicates: Vec<DuplicateUser>,
    pub invalid: Vec<InvalidValue>,
    pub skipped: Vec<SkippedRow>,
}

/// A table that cannot be read at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttributeError {
    #[error("missing `user` column in the attribute table header")]
    MissingUserColumn,
    /// A column name that the header repeats, so which value counts would be arbitrary.
    #[error("column `{name}` appears more than once in the attribute table header; keep one")]
    DuplicateColumn { name: String },
    #[error("line {line}: {detail}")]
    InvalidLine { line: u64, detail: String },
}

impl AttributeError {
    /// Returns the error's text without its line number.
    fn detail(&self) -> String {
        match self {
            AttributeError::InvalidLine { detail, .. } => detail.clone(),
            other => other.to_string(),
        }
    }
}

/// Attributes by user.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttributeTable {
    users: BTreeMap<Id, UserAttributes>,
    /// Column names besides `user`, sorted: the CSV header's, or every key of the JSON lines.
    columns: Vec<String>,
}

impl AttributeTable {
    /// Parses a whole table, CSV with a header or JSON lines (detected from the first
    /// non-blank character, `{` for JSON).
    ///
    /// Only a CSV header without a `user` column, or with a column twice, is an error. A row without a user id, a CSV
    /// row whose field count differs from the header's, or a JSON line that is not an object,
    /// is left out and listed in the report's `skipped`.
    pub fn parse(text: &str) -> Result<(AttributeTable, LoadReport), AttributeError> {
        let json = text.trim_start().starts_with('{');
        let mut table = AttributeTable::default();
        let mut report = LoadReport::default();
        let mut lines_of: BTreeMap<Id, u64> = BTreeMap::new();
        let mut header: Option<Vec<String>> = None;
        let mut columns: BTreeSet<String> = BTreeSet::new();
        for (index, line) in text.lines().enumerate() {
            let number = index as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            let mut compound = Vec::new();
            let fields: Vec<(String, Option<String>)> = if json {
                match json_fields(line, number) {
                    Ok(row) => {
                        compound = row.compound;
                        row.fields
                    }
                    Err(error) => {
                        report.rows += 1;
                        report.skipped.push(SkippedRow {
                            line: number,
                            reason: error.detail(),
                        });
                        continue;
                    }
                }
            } else if let Some(names) = &header {
                let values = split_csv(line);
                if values.len() != names.len() {
                    report.rows += 1;
                    report.skipped.push(SkippedRow {
                        line: number,
                        reason: format!(
                            "expected {} comma-separated fields as in the header, found {}",
                            names.len(),
                            values.len()
                        ),
                    });
                    continue;
                }
                names
                    .iter()
                    .cloned()
                    .zip(values.into_iter().map(Some))
                    .collect()
            } else {
                let names: Vec<String> = split_csv(line)
                    .iter()
                    .map(|name| name.trim().to_string())
                    .collect();
                if !names.iter().any(|name| name == "user") {
                    return Err(AttributeError::MissingUserColumn);
                }
                let mut seen = BTreeSet::new();
                if let Some(name) = names.iter().find(|name| !seen.insert(name.as_str())) {
                    return Err(AttributeError::DuplicateColumn { name: name.clone() });
                }
                columns.extend(names.iter().filter(|name| *name != "user").cloned());
                header = Some(names);
                continue;
            };
            if json {
                columns.extend(
                    fields
                        .iter()
                        .map(|(name, _)| name)
                        .filter(|name| *name != "user")
                        .cloned(),
                );
            }
            report.rows += 1;
            let Some(user) = row_user(&fields) else {
                report.skipped.push(SkippedRow {
                    line: number,
                    reason: "missing user id".into(),
                });
                continue;
            };
            report
                .invalid
                .extend(compound.into_iter().map(|(column, value)| InvalidValue {
                    line: number,
                    column,
                    value,
                }));
            let attributes = read_attributes(fields, number, &mut report);
            if let Some(earlier_line) = lines_of.insert(user.clone(), number) {
                report.duplicates.push(DuplicateUser {
                    user: user.clone(),
                    earlier_line,
                    later_line: number,
                });
            }
            table.users.insert(user, attributes);
        }
        table.columns = columns.into_iter().collect();
        Ok((table, report))
    }

    /// Returns the column names besides `user`, sorted.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Returns a user's attributes, or `None` when the table has no row for the user. The
    /// event ids `7` and `"7"` both find the row of user 7.
    pub fn get(&self, user: &Id) -> Option<&UserAttributes> {
        self.users.get(&*user.join_key())
    }

    /// Returns every user's row by [`Id::join_key`], in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Id, &UserAttributes)> {
        self.users.iter()
    }

    /// Returns the rows that differ between `self` and `newer`, in user order: added, changed
    /// and removed rows. A removed row makes that user's attributes unknown, because a file is
    /// the whole table.
    pub fn changes(&self, newer: &AttributeTable) -> Vec<RowChange> {
        let mut changes = Vec::new();
        let mut old = self.users.iter().peekable();
        let mut new = newer.users.iter().peekable();
        loop {
            let order = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((old_user, _)), Some((new_user, _))) => old_user.cmp(new_user),
            };
            let (user, before, after) = match order {
                std::cmp::Ordering::Less => {
                    let (user, before) = old.next().expect("peeked");
                    (user, Some(before), None)
                }
                std::cmp::Ordering::Greater => {
                    let (user, after) = new.next().expect("peeked");
                    (user, None, Some(after))
                }
                std::cmp::Ordering::Equal => {
                    let (user, before) = old.next().expect("peeked");
                    let (_, after) = new.next().expect("peeked");
                    (user, Some(before), Some(after))
                }
            };
            if before != after {
                changes.push(RowChange {
                    user: user.clone(),
                    before: before.cloned(),
                    after: after.cloned(),
                });
            }
        }
        changes
    }

    /// Returns the number of users with a row.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Returns whether no user has a row.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The versions of the attribute table during a run, each with the event time (Unix
/// milliseconds) from which it applies, in time order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttributeHistory {
    versions: Vec<(u64, std::sync::Arc<AttributeTable>)>,
}

impl AttributeHistory {
    /// Adds a version that applies from `from_ms` on. A version at or before the latest one's
    /// time replaces it, so times stay increasing.
    pub fn push(&mut self, from_ms: u64, table: std::sync::Arc<AttributeTable>) {
        while self.versions.last().is_some_and(|(at, _)| *at >= from_ms) {
            self.versions.pop();
        }
        self.versions.push((from_ms, table));
    }

    /// Returns a user's row in the version in force at `time_ms`, or `None` when that version
    /// has no row for the user or no version applies yet.
    pub fn row(&self, user: &Id, time_ms: u64) -> Option<&UserAttributes> {
        let applied = self.versions.partition_point(|(at, _)| *at <= time_ms);
        let (_, table) = self.versions.get(applied.checked_sub(1)?)?;
        table.get(user)
    }

    /// Returns the number of versions.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Returns whether no version was recorded.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}

/// Returns the row's user key, or `None` when the `user` field is missing or blank.
///
/// The field is the id's text for CSV and JSON alike, so [`Id::from_field`] gives the same key
/// as [`Id::join_key`]: a JSON string of canonical digits and a JSON integer are one user.
fn row_user(fields: &[(String, Option<String>)]) -> Option<Id> {
    let (_, value) = fields.iter().find(|(column, _)| column == "user")?;
    let value = value.as_deref()?.trim();
    (!value.is_empty()).then(|| Id::from_field(value))
}

/// Reads the attributes of one row, recording values that cannot be read in `report`.
fn read_attributes(
    fields: Vec<(String, Option<String>)>,
    line: u64,
    report: &mut LoadReport,
) -> UserAttributes {
    let mut attributes = UserAttributes::default();
    for (column, value) in fields {
        let Some(value) = value.map(|value| value.trim().to_string()) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        match column.as_str() {
            "user" => {}
            "age" => match Age::parse(&value) {
                Some(age) => attributes.age = Some(age),
                None => report.invalid.push(InvalidValue {
                    line,
                    column,
                    value,
                }),
            },
            "gender" => attributes.gender = Some(value),
            "region" => attributes.region = Some(value),
            _ => {
                attributes.other.insert(column, value);
            }
        }
    }
    attributes
}

/// Returns the fields of one JSON object line, and the values that are arrays or objects.
///
/// Numbers and booleans become their text and `null` unknown. An array or object is not an
/// attribute value, so its field is unknown and it is returned for the report. A `user` that
/// is not an integer or a string, such as `2405.5` or `[1]`, makes the line an error, as it
/// makes an event line a bad record.
fn json_fields(line: &str, number: u64) -> Result<JsonRow, AttributeError> {
    let invalid_line = |detail: String| AttributeError::InvalidLine {
        line: number,
        detail,
    };
    let value: Value = serde_json::from_str(line)
        .map_err(|error| invalid_line(format!("invalid JSON: {error}")))?;
    let Value::Object(object) = value else {
        return Err(invalid_line("expected a JSON object".into()));
    };
    let mut row = JsonRow::default();
    for (key, value) in object {
        let text = match &value {
            Value::Null => None,
            Value::String(text) => Some(text.clone()),
            _ if key == "user" => Some(input_id(&value, "user").map_err(invalid_line)?.to_string()),
            Value::Array(_) | Value::Object(_) => {
                row.compound.push((key.clone(), value.to_string()));
                None
            }
            other => Some(other.to_string()),
        };
        row.fields.push((key, text));
    }
    Ok(row)
}

/// The fields of one JSON line, with the keys whose values are arrays or objects.
#[derive(Default)]
struct JsonRow {
    fields: Vec<(String, Option<String>)>,
    /// Key and JSON text of each array or object value, which is unknown in `fields`.
    compound: Vec<(String, String)>,
}

/// Splits one CSV line at commas outside double quotes, with `""` as an escaped quote.
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut characters = line.trim_end_matches('\r').chars().peekable();
    while let Some(character) = characters.next() {
        match character {
            '"' if quoted && characters.peek() == Some(&'"') => {
                current.push('"');
                characters.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut current)),
            _ => current.push(character),
        }
    }
    fields.push(current);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION_ONE: &str = "user,age,gender,region,vip_level\n\
        2401,25-34,F,east,2\n\
        2402,31,M,north,1\n\
        2402,45,M,north,3\n\
        2403,,,,\n\
        2405,abc,M,south,\n\
        2407,52,F,west,0\n";

    #[test]
    fn csv_table_loads_with_report() {
        let (table, report) = AttributeTable::parse(VERSION_ONE).unwrap();
        assert_eq!(report.rows, 6);
        assert_eq!(table.len(), 5);
        assert_eq!(
            report.duplicates,
            vec![DuplicateUser {
                user: Id::from(2402u64),
                earlier_line: 3,
                later_line: 4
            }]
        );
        assert_eq!(report.invalid.len(), 1);
        assert_eq!(report.invalid[0].line, 6);
        assert_eq!(report.invalid[0].column, "age");
    }

    #[test]
    fn later_duplicate_row_wins() {
        let (table, _) = AttributeTable::parse(VERSION_ONE).unwrap();
        let user = table.get(&Id::from(2402u64)).unwrap();
        assert_eq!(user.age, Some(Age::Years(45)));
        assert_eq!(user.other["vip_level"], "3");
    }

    #[test]
    fn missing_values_stay_unknown() {
        let (table, _) = AttributeTable::parse(VERSION_ONE).unwrap();
        let empty = table.get(&Id::from(2403u64)).unwrap();
        assert_eq!(empty, &UserAttributes::default());
        assert!(
            table.get(&Id::from(2404u64)).is_none(),
            "no row means no attributes"
        );
        let invalid_age = table.get(&Id::from(2405u64)).unwrap();
        assert_eq!(invalid_age.age, None);
        assert_eq!(invalid_age.gender.as_deref(), Some("M"));
        assert!(!invalid_age.other.contains_key("vip_level"));
        let zero = table.get(&Id::from(2407u64)).unwrap();
        assert_eq!(zero.other["vip_level"], "0", "a zero is a real value");
    }

    const VERSION_TWO: &str = "user,age,gender,region,vip_level\n\
        2401,25-34,F,west,2\n\
        2402,45,M,north,3\n\
        2403,,,,\n\
        2405,abc,M,south,\n\
        2406,19,F,east,1\n";

    #[test]
    fn changes_list_added_changed_removed_rows() {
        let (one, _) = AttributeTable::parse(VERSION_ONE).unwrap();
        let (two, report) = AttributeTable::parse(VERSION_TWO).unwrap();
        assert!(report.duplicates.is_empty());
        assert_eq!(report.invalid.len(), 1);
        assert_eq!(report.invalid[0].line, 5);
        let changes = one.changes(&two);
        let users: Vec<Id> = changes.iter().map(|change| change.user.clone()).collect();
        assert_eq!(users, [2401u64, 2406, 2407].map(Id::from));
        assert_eq!(
            changes[0].after.as_ref().unwrap().region.as_deref(),
            Some("west")
        );
        assert!(changes[1].before.is_none(), "2406 had no row");
        assert_eq!(changes[1].after.as_ref().unwrap().age, Some(Age::Years(19)));
        assert!(
            changes[2].after.is_none(),
            "a removed row leaves no attributes"
        );
        assert!(two.changes(&two).is_empty());
    }

    #[test]
    fn history_returns_row_in_force() {
        let (one, _) = AttributeTable::parse(VERSION_ONE).unwrap();
        let (two, _) = AttributeTable::parse(VERSION_TWO).unwrap();
        let mut history = AttributeHistory::default();
        history.push(0, std::sync::Arc::new(one));
        history.push(5_000, std::sync::Arc::new(two));
        let user = Id::from(2407u64);
        assert_eq!(history.row(&user, 4_999).unwrap().other["vip_level"], "0");
        assert!(history.row(&user, 5_000).is_none(), "the row was removed");
        let late = Id::from(2406u64);
        assert!(history.row(&late, 0).is_none());
        assert_eq!(
            history.row(&late, 9_000).unwrap().gender.as_deref(),
            Some("F")
        );
    }

    #[test]
    fn unknown_values_render_as_null() {
        let (table, _) = AttributeTable::parse(VERSION_ONE).unwrap();
        let empty = table.get(&Id::from(2403u64)).unwrap().to_json();
        assert_eq!(empty["age"], Value::Null);
        assert_eq!(empty["gender"], Value::Null);
        assert!(!empty.contains_key("vip_level"));
        let band = table.get(&Id::from(2401u64)).unwrap().to_json();
        assert_eq!(band["age"], Value::from("25-34"));
        let zero = table.get(&Id::from(2407u64)).unwrap().to_json();
        assert_eq!(zero["age"], Value::from(52));
        assert_eq!(zero["vip_level"], Value::from("0"));
    }

    #[test]
    fn age_bands_and_years_parse() {
        assert_eq!(Age::parse("25-34"), Some(Age::Band { low: 25, high: 34 }));
        assert_eq!(Age::parse("31"), Some(Age::Years(31)));
        assert_eq!(Age::parse("34-25"), None);
        assert_eq!(Age::parse("abc"), None);
        assert_eq!(Age::Band { low: 25, high: 34 }.years(), 29.5);
    }

    #[test]
    fn json_lines_table_loads() {
        let text = "{\"user\":1,\"age\":19,\"gender\":\"F\",\"region\":null,\"vip_level\":1}\n\
                    {\"user\":\"u2\",\"segment_hint\":\"a,b\"}\n";
        let (table, report) = AttributeTable::parse(text).unwrap();
        assert_eq!(report.rows, 2);
        let first = table.get(&Id::from(1u64)).unwrap();
        assert_eq!(first.age, Some(Age::Years(19)));
        assert_eq!(first.region, None);
        assert_eq!(first.other["vip_level"], "1");
        let second = table.get(&Id::text("u2")).unwrap();
        assert_eq!(second.other["segment_hint"], "a,b");
    }

    #[test]
    fn rows_match_integer_and_text_event_ids() {
        let json = "{\"user\":\"7\",\"region\":\"north\"}\n\
                    {\"user\":8,\"region\":\"south\"}\n\
                    {\"user\":\"007\",\"region\":\"east\"}\n";
        let csv = "user,region\n7,north\n8,south\n007,east\n";
        for text in [json, csv] {
            let (table, report) = AttributeTable::parse(text).unwrap();
            assert!(report.duplicates.is_empty(), "{text}");
            let region = |user: Id| table.get(&user).and_then(|row| row.region.clone());
            assert_eq!(region(Id::int(7)).as_deref(), Some("north"), "{text}");
            assert_eq!(region(Id::text("7")).as_deref(), Some("north"), "{text}");
            assert_eq!(region(Id::int(8)).as_deref(), Some("south"), "{text}");
            assert_eq!(region(Id::text("8")).as_deref(), Some("south"), "{text}");
            assert_eq!(region(Id::text("007")).as_deref(), Some("east"), "{text}");
            assert_eq!(region(Id::text("07")), None, "{text}");
        }
    }

    #[test]
    fn quoted_and_bare_json_user_are_duplicates() {
        let text = "{\"user\":7,\"region\":\"north\"}\n{\"user\":\"7\",\"region\":\"south\"}\n";
        let (table, report) = AttributeTable::parse(text).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(report.duplicates.len(), 1);
        let row = table.get(&Id::text("7")).unwrap();
        assert_eq!(row.region.as_deref(), Some("south"));
    }

    #[test]
    fn quoted_csv_fields_keep_commas() {
        let text = "user,region\n7,\"north, coast\"\n";
        let (table, _) = AttributeTable::parse(text).unwrap();
        let user = table.get(&Id::from(7u64)).unwrap();
        assert_eq!(user.region.as_deref(), Some("north, coast"));
    }

    #[test]
    fn header_without_user_is_rejected() {
        let error = AttributeTable::parse("id,age\n1,30\n").unwrap_err();
        assert_eq!(error, AttributeError::MissingUserColumn);
    }

    #[test]
    fn row_without_user_is_skipped() {
        let (table, report) = AttributeTable::parse("user,age\n,30\n  ,31\n2,40\n").unwrap();
        assert_eq!(table.len(), 1);
        assert!(table.get(&Id::from_field("2")).is_some());
        assert_eq!(report.rows, 3);
        assert_eq!(
            report.skipped,
            vec![
                SkippedRow {
                    line: 2,
                    reason: "missing user id".into()
                },
                SkippedRow {
                    line: 3,
                    reason: "missing user id".into()
                },
            ]
        );
    }

    #[test]
    fn csv_row_with_wrong_field_count_is_skipped() {
        let text = "user,age,gender,region,vip_level\n\
                    2401,2\n\
                    2402,30,M,north,1,extra,more\n\
                    2403,41,F,west,0\n";
        let (table, report) = AttributeTable::parse(text).unwrap();
        assert_eq!(report.rows, 3);
        assert_eq!(table.len(), 1);
        assert!(table.get(&Id::from(2401u64)).is_none());
        assert!(table.get(&Id::from(2402u64)).is_none());
        assert_eq!(
            table.get(&Id::from(2403u64)).unwrap().age,
            Some(Age::Years(41))
        );
        let lines: Vec<u64> = report.skipped.iter().map(|row| row.line).collect();
        assert_eq!(lines, vec![2, 3]);
        assert_eq!(
            report.skipped[0].reason,
            "expected 5 comma-separated fields as in the header, found 2"
        );
        assert_eq!(
            report.skipped[1].reason,
            "expected 5 comma-separated fields as in the header, found 7"
        );
    }

    #[test]
    fn unreadable_json_row_is_skipped() {
        let lines = "{\"user\":1,\"age\":30}\n{\"user\":2,\n[3]\n{\"age\":40}\n{\"user\":4}\n";
        let (table, report) = AttributeTable::parse(lines).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(report.rows, 5);
        let lines: Vec<u64> = report.skipped.iter().map(|row| row.line).collect();
        assert_eq!(lines, vec![2, 3, 4]);
        assert!(report.skipped[0].reason.starts_with("invalid JSON"));
        assert_eq!(report.skipped[1].reason, "expected a JSON object");
        assert_eq!(report.skipped[2].reason, "missing user id");
    }

    #[test]
    fn json_ids_rejected_like_event_ids() {
        let lines = "{\"user\":2405.5,\"age\":30}\n\
                     {\"user\":[1],\"age\":30}\n\
                     {\"user\":true}\n\
                     {\"user\":null,\"age\":30}\n\
                     {\"user\":2406,\"age\":30}\n";
        let (table, report) = AttributeTable::parse(lines).unwrap();
        assert_eq!(table.len(), 1);
        assert!(table.get(&Id::from(2406u64)).is_some());
        let reasons: Vec<&str> = report
            .skipped
            .iter()
            .map(|row| row.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "user 2405.5 is not an integer; ids are integers or strings",
                "user is an array, expected an integer or a string",
                "user is a boolean, expected an integer or a string",
                "missing user id",
            ]
        );
    }

    #[test]
    fn json_arrays_and_objects_are_invalid() {
        let line = "{\"user\":1,\"gender\":{\"x\":\"F\"},\"age\":[30],\"tier\":[\"a\"],\
                    \"region\":\"east\",\"vip\":true}\n";
        let (table, report) = AttributeTable::parse(line).unwrap();
        let user = table.get(&Id::from(1u64)).unwrap();
        assert_eq!(user.gender, None);
        assert_eq!(user.age, None);
        assert!(!user.other.contains_key("tier"));
        assert_eq!(user.region.as_deref(), Some("east"));
        assert_eq!(user.other["vip"], "true");
        let columns: Vec<&str> = report
            .invalid
            .iter()
            .map(|value| value.column.as_str())
            .collect();
        assert_eq!(
            columns,
            ["gender", "age", "tier"],
            "in the line's key order"
        );
        assert_eq!(report.invalid[0].value, "{\"x\":\"F\"}");
        assert_eq!(table.columns(), ["age", "gender", "region", "tier", "vip"]);
    }

    #[test]
    fn ages_above_maximum_are_invalid() {
        assert_eq!(Age::parse("150"), Some(Age::Years(150)));
        assert_eq!(Age::parse("151"), None);
        assert_eq!(Age::parse("250"), None);
        assert_eq!(Age::parse("-5"), None);
        assert_eq!(Age::parse("0-150"), Some(Age::Band { low: 0, high: 150 }));
        assert_eq!(Age::parse("140-160"), None);
        let (_, report) = AttributeTable::parse("user,age\n1,250\n").unwrap();
        assert_eq!(report.invalid.len(), 1);
        assert_eq!(report.invalid[0].value, "250");
    }

    #[test]
    fn columns_listed_without_user() {
        let (csv, _) = AttributeTable::parse(VERSION_ONE).unwrap();
        assert_eq!(csv.columns(), ["age", "gender", "region", "vip_level"]);

        let lines = "{\"user\":1,\"gender\":\"F\"}\n{\"user\":2,\"age\":30,\"tier\":null}\n";
        let (json, _) = AttributeTable::parse(lines).unwrap();
        assert_eq!(json.columns(), ["age", "gender", "tier"]);

        let (header_only, _) = AttributeTable::parse("user,gender\n").unwrap();
        assert_eq!(header_only.columns(), ["gender"]);
    }
}
