//! Event-time edge cases of the real binary: microsecond timestamps.

mod common;

use std::path::{Path, PathBuf};

use common::{arg, run_veer};

/// 2017-11-24T16:00:00Z in Unix seconds.
const START_SECS: i64 = 1_511_539_200;

/// Returns `count` JSON lines of views, one a minute from `first_secs`, of 40 users in turn.
fn views(count: usize, first_secs: i64) -> String {
    (0..count)
        .map(|index| {
            format!(
                "{{\"user\":{},\"item\":{},\"category\":{},\"behavior\":\"view\",\"ts\":{}}}\n",
                index % 40,
                1000 + index,
                index % 12,
                first_secs + index as i64 * 60
            )
        })
        .collect()
}

/// Writes `text` to `name` in `folder` and returns the path.
fn write(folder: &Path, name: &str, text: &str) -> PathBuf {
    let path = folder.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Returns a view at `ts` as a JSON line.
fn view_at(ts: &str) -> String {
    format!("{{\"user\":1,\"item\":1,\"category\":1,\"behavior\":\"view\",\"ts\":{ts}}}\n")
}

#[test]
fn microsecond_timestamps_are_bad_records() {
    let folder = tempfile::tempdir().unwrap();
    let micros = (START_SECS * 1_000_000).to_string();
    let json_text = format!(
        "{}{}{}{}",
        views(20, START_SECS),
        view_at(&micros),
        view_at(&format!("\"{micros}\"")),
        view_at(&((START_SECS + 20 * 60) * 1000).to_string()),
    );
    let json = write(folder.path(), "events.jsonl", &json_text);
    let taobao_text = format!(
        "1,2,3,pv,{START_SECS}\n1,2,3,pv,{}\n1,2,3,pv,{micros}\n",
        START_SECS * 1000
    );
    let taobao = write(folder.path(), "events.csv", &taobao_text);
    for (input, bad_lines, max_digits) in [(&json, vec![21, 22], 13), (&taobao, vec![2, 3], 12)] {
        let run = run_veer(&["--input", arg(input)]);
        assert_eq!(run.status, 0, "{}", run.stderr);
        assert_eq!(run.dead_lines("bad"), bad_lines, "{input:?}");
        for record in &run.dead_letter {
            let reason = record["reason"].as_str().unwrap();
            let expected = format!("more than {max_digits} digits");
            assert!(reason.contains(&expected), "{input:?}: {reason}");
            assert!(reason.contains("microseconds"), "{input:?}: {reason}");
        }
    }
}
