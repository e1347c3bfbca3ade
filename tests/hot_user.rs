//! A hot user (a bot with half of all events) among normal users: the bot is reported as an
//! anomaly, not as a shift, no other user is alerted, and the worker count changes nothing.

mod common;

use std::process::Command;

use common::{arg, run_veer, shared};

#[test]
fn hot_user_is_an_anomaly_only() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let script = shared("cases/14-hot-user-skew/generate.py");
    let status = Command::new("python3")
        .arg(&script)
        .arg("200000")
        .current_dir(folder.path())
        .status()
        .expect("python3 runs the case's generator");
    assert!(status.success(), "the case's generator failed");
    let hot = folder.path().join("hot.jsonl");
    let uniform = folder.path().join("uniform.jsonl");

    let one = run_veer(&["--input", arg(&hot), "--workers", "1"]);
    let four = run_veer(&["--input", arg(&hot), "--workers", "4"]);
    for run in [&one, &four] {
        assert_eq!(run.status, 0, "{}", run.stderr);
        let bot = run.alerts_of("1400");
        assert!(
            bot.iter().any(|alert| alert["kind"] == "anomaly"),
            "{}",
            run.alerts_text
        );
        assert!(
            bot.iter().all(|alert| alert["kind"] != "interest_shift"),
            "{}",
            run.alerts_text
        );
        assert_eq!(
            bot.len(),
            run.alerts.len(),
            "only the bot is alerted: {}",
            run.alerts_text
        );
    }
    assert_eq!(one.alerts_text, four.alerts_text);

    let calm = run_veer(&["--input", arg(&uniform), "--workers", "2"]);
    assert_eq!(calm.status, 0, "{}", calm.stderr);
    assert!(calm.alerts.is_empty(), "{}", calm.alerts_text);
}
