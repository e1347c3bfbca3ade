//! Differences between two JSON documents of settings, for errors that name each setting
//! that differs and both of its values.

use serde_json::Value;

/// A leaf that differs: its dotted key, its value in the saved document and in the current
/// one. A key that only one document has gets `no such setting` on the other side.
pub(crate) type Difference = (String, String, String);

/// Returns every leaf where `saved` and `current` differ, keys prefixed with `key`: the
/// current document's keys in its order, then the keys that only `saved` has.
pub(crate) fn differences(key: &str, saved: &Value, current: &Value) -> Vec<Difference> {
    let mut found = Vec::new();
    collect(key, saved, current, &mut found);
    found
}

fn collect(key: &str, saved: &Value, current: &Value, found: &mut Vec<Difference>) {
    let join = |name: &str| match key {
        "" => name.to_string(),
        _ => format!("{key}.{name}"),
    };
    match (saved, current) {
        (Value::Object(saved_fields), Value::Object(current_fields)) => {
            for (name, current_value) in current_fields {
                let saved_value = saved_fields.get(name).unwrap_or(&Value::Null);
                collect(&join(name), saved_value, current_value, found);
            }
            for (name, value) in saved_fields {
                if !current_fields.contains_key(name) {
                    found.push((join(name), value.to_string(), "no such setting".into()));
                }
            }
        }
        _ if saved == current => {}
        _ => found.push((key.to_string(), saved.to_string(), current.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::differences;

    #[test]
    fn differences_lists_every_leaf() {
        let saved = json!({"window_ms": 3600000, "groups": {"k": 4, "old": 1}, "seed": 7});
        let current = json!({"window_ms": 60000, "groups": {"k": 5}, "seed": 7});
        let found = differences("", &saved, &current);
        assert_eq!(
            found,
            vec![
                ("window_ms".into(), "3600000".into(), "60000".into()),
                ("groups.k".into(), "4".into(), "5".into()),
                ("groups.old".into(), "1".into(), "no such setting".into()),
            ]
        );
    }

    #[test]
    fn differences_empty_when_equal() {
        let value = json!({"seed": 7, "params": {"max_rows": 3000}});
        assert!(differences("", &value, &value).is_empty());
    }
}
