//! `veer run --models --models-save` and `--models-load`: saved model versions, runs that
//! score with loaded models, and the errors for bad model files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{arg, generate_stream};
use serde_json::Value;
use veer::generate::{generate, GenerateConfig};
use veer::model_file::{self, FitRecord, ModelSaver};
use veer::pipeline;
use veer::replay::{replay_with_models, ModelRunSettings, ReplaySettings};
use veer_models::Alert;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// What one run of `veer run` wrote, with the log at info level.
struct Run {
    status: i32,
    stderr: String,
    /// The alert file, or `None` when the run did not create it.
    alerts: Option<String>,
}

/// Runs `veer run` with `args` and an alert file `name` in `folder`.
fn run_in(folder: &Path, name: &str, args: &[&str]) -> Run {
    let alerts_path = folder.join(name);
    let output = Command::new(env!("CARGO_BIN_EXE_veer"))
        .arg("run")
        .args(args)
        .arg("--alerts")
        .arg(&alerts_path)
        .arg("--no-progress")
        .env("VEER_LOG", "info")
        .output()
        .expect("the veer binary runs");
    Run {
        status: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        alerts: std::fs::read_to_string(&alerts_path).ok(),
    }
}

/// A generated stream of 300 users over 6 days, and a model file saved by a fitting run on it
/// with the alerts of that run.
struct Saved {
    folder: tempfile::TempDir,
    events: PathBuf,
    models: PathBuf,
    fitting: Run,
}

fn saved_models() -> Saved {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, _) = generate_stream(folder.path(), 300, 6, 11);
    let models = folder.path().join("models.json");
    let fitting = run_in(
        folder.path(),
        "fitting.jsonl",
        &[
            "--input",
            arg(&events),
            "--models",
            "--models-save",
            arg(&models),
        ],
    );
    assert_eq!(fitting.status, 0, "{}", fitting.stderr);
    Saved {
        folder,
        events,
        models,
        fitting,
    }
}

/// Runs on the saved stream with `--models-load models`, `extra` options and an alert file
/// `name`.
fn run_loaded(saved: &Saved, models: &Path, name: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "--input",
        arg(&saved.events),
        "--models",
        "--models-load",
        arg(models),
    ];
    args.extend_from_slice(extra);
    run_in(saved.folder.path(), name, &args)
}

fn parse_alerts(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("an alert line"))
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("model file")).expect("model file JSON")
}

/// Returns the start of the hour window of an alert, in Unix milliseconds.
fn window_start_ms(alert: &Value) -> u64 {
    let ts_ms = alert["ts"].as_u64().expect("alert ts") * 1000;
    ts_ms - ts_ms % HOUR_MS
}

#[test]
fn saved_models_reload_byte_identical() {
    let saved = saved_models();
    assert!(
        saved.fitting.stderr.contains("saved model version"),
        "{}",
        saved.fitting.stderr
    );
    let document = read_json(&saved.models);
    assert_eq!(document["format"], 2);
    assert_eq!(document["user_columns"], Value::Null);
    assert_eq!(document["version"], 0);
    let from = document["trained_from_ms"]
        .as_u64()
        .expect("trained_from_ms");
    let until = document["trained_until_ms"]
        .as_u64()
        .expect("trained_until_ms");
    assert!(from < until, "training span {from}..{until}");
    assert_eq!(document["settings"]["seed"], 7);
    assert_eq!(document["settings"]["window_ms"], HOUR_MS);

    let resaved = saved.folder.path().join("resaved.json");
    let loading = run_loaded(
        &saved,
        &saved.models,
        "loading.jsonl",
        &["--models-save", arg(&resaved)],
    );
    assert_eq!(loading.status, 0, "{}", loading.stderr);
    assert!(
        loading.stderr.contains("loaded models"),
        "{}",
        loading.stderr
    );
    assert!(
        !loading.stderr.contains("models fitted"),
        "a run with loaded models fitted models:\n{}",
        loading.stderr
    );
    let original = std::fs::read(&saved.models).expect("saved file");
    let copy = std::fs::read(&resaved).expect("resaved file");
    assert!(
        original.len() > 1000,
        "model file of {} bytes",
        original.len()
    );
    assert!(
        original == copy,
        "the loaded models saved again differ from the file"
    );

    let mut names: Vec<String> = std::fs::read_dir(saved.folder.path())
        .expect("folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let expected = [
        "events.jsonl",
        "fitting.jsonl",
        "loading.jsonl",
        "models.json",
        "resaved.json",
        "truth.jsonl",
    ];
    assert_eq!(names, expected, "a temporary file was left behind");
}

#[test]
fn loaded_models_same_for_one_and_two_workers() {
    let saved = saved_models();
    let mut texts = Vec::new();
    for workers in ["1", "2"] {
        let name = format!("workers-{workers}.jsonl");
        let run = run_loaded(&saved, &saved.models, &name, &["--workers", workers]);
        assert_eq!(run.status, 0, "{}", run.stderr);
        texts.push(run.alerts.expect("alert file"));
    }
    assert!(!texts[0].is_empty(), "the stream raises alerts");
    assert_eq!(texts[0], texts[1]);
}

/// A run with loaded models also scores the windows of the bootstrap period, which a fitting
/// run passes unscored. Later windows get the same model signals in both runs, because the
/// models are the same and the window features depend only on the events.
#[test]
fn loaded_models_score_bootstrap_windows() {
    let saved = saved_models();
    let bootstrap_end = read_json(&saved.models)["trained_until_ms"]
        .as_u64()
        .expect("trained_until_ms");
    let loading = run_loaded(&saved, &saved.models, "loading.jsonl", &[]);
    assert_eq!(loading.status, 0, "{}", loading.stderr);
    let fitted = parse_alerts(saved.fitting.alerts.as_deref().expect("alert file"));
    let loaded = parse_alerts(loading.alerts.as_deref().expect("alert file"));
    let scored = |alert: &&Value| alert["signals"].get("isolation_forest").is_some();

    let early = |alert: &&Value| window_start_ms(alert) < bootstrap_end;
    assert_eq!(
        fitted.iter().filter(early).filter(scored).count(),
        0,
        "the fitting run scored a bootstrap window"
    );
    assert!(
        loaded.iter().filter(early).filter(scored).count() > 0,
        "the loading run scored no bootstrap window"
    );

    let key = |alert: &Value| {
        (
            alert["user"].to_string(),
            alert["ts"].as_u64(),
            alert["kind"].to_string(),
        )
    };
    let later_loaded: std::collections::HashMap<_, &Value> = loaded
        .iter()
        .filter(|alert| window_start_ms(alert) >= bootstrap_end)
        .map(|alert| (key(alert), alert))
        .collect();
    let mut compared = 0;
    for alert in fitted
        .iter()
        .filter(|alert| window_start_ms(alert) >= bootstrap_end)
    {
        let Some(other) = later_loaded.get(&key(alert)) else {
            continue;
        };
        for signal in ["isolation_forest", "one_class_svm", "surprise"] {
            assert_eq!(
                alert["signals"].get(signal),
                other["signals"].get(signal),
                "{signal} of {alert} against {other}"
            );
        }
        compared += 1;
    }
    assert!(compared > 10, "only {compared} later alerts in both runs");
}

#[test]
fn retraining_saves_latest_version() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, _) = generate_stream(folder.path(), 300, 6, 11);
    let config = folder.path().join("veer.toml");
    std::fs::write(
        &config,
        "[models]\nbootstrap = \"1d\"\nretrain_every = \"1d\"\n",
    )
    .expect("config file");
    let models = folder.path().join("models.json");
    let run_with = |name: &str, flag: &str| {
        let args = [
            "--input",
            arg(&events),
            "--config",
            arg(&config),
            "--models",
            flag,
            arg(&models),
        ];
        run_in(folder.path(), name, &args)
    };
    let fitting = run_with("fitting.jsonl", "--models-save");
    assert_eq!(fitting.status, 0, "{}", fitting.stderr);
    let saves = fitting.stderr.matches("saved model version").count();
    let fits = fitting.stderr.matches("models fitted").count();
    assert!(fits >= 3, "{fits} fits:\n{}", fitting.stderr);
    assert_eq!(saves, fits, "each fitted version is saved");
    let latest = read_json(&models)["version"].as_u64().expect("version");
    assert_eq!(
        latest,
        fits as u64 - 1,
        "the file contains the latest version"
    );

    let loading = run_with("loading.jsonl", "--models-load");
    assert_eq!(loading.status, 0, "{}", loading.stderr);
    let refits = loading.stderr.matches("models fitted").count();
    assert_eq!(refits, fits - 1, "the loaded models replace version 0 only");
    assert!(
        loading.stderr.contains("retraining schedule set"),
        "{}",
        loading.stderr
    );
}

/// Writes `bytes` to the file `name` and checks that a run with `--models-load` of it fails as
/// [`assert_load_fails`] checks.
fn assert_rejected(saved: &Saved, name: &str, bytes: &[u8], extra: &[&str], expected: &str) {
    let path = saved.folder.path().join(name);
    std::fs::write(&path, bytes).expect("bad model file");
    assert_load_fails(saved, &path, extra, expected);
}

/// Checks that a run with `--models-load path` and `extra` fails before it starts, with an
/// error that names the file and contains `expected`.
fn assert_load_fails(saved: &Saved, path: &Path, extra: &[&str], expected: &str) {
    let alerts_name = format!("{}.alerts", path.file_name().unwrap().to_string_lossy());
    let run = run_loaded(saved, path, &alerts_name, extra);
    assert_eq!(run.status, 2, "{}", run.stderr);
    let error = run
        .stderr
        .lines()
        .find(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{}", run.stderr));
    assert!(
        error.contains(arg(path)),
        "the error names no path: {error}"
    );
    assert!(
        error.contains(expected),
        "expected {expected:?} in: {error}"
    );
    assert!(run.alerts.is_none(), "the run started: {error}");
}

/// Returns the good model file with one field replaced.
fn edited(saved: &Saved, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut document = read_json(&saved.models);
    edit(&mut document);
    serde_json::to_vec(&document).expect("JSON")
}

#[test]
fn bad_model_files_rejected() {
    let saved = saved_models();
    let good = std::fs::read(&saved.models).expect("model file");
    let missing = saved.folder.path().join("absent.json");
    assert_load_fails(&saved, &missing, &[], "not found");

    let no_models = edited(&saved, |document| {
        document.as_object_mut().unwrap().remove("models");
    });
    let broken_models = edited(&saved, |document| {
        document["models"]["segmenter"] = 5.into()
    });
    let future_format = edited(&saved, |document| document["format"] = 99.into());
    let first_format = edited(&saved, |document| {
        document["format"] = 1.into();
        document.as_object_mut().unwrap().remove("user_columns");
    });
    let old_models = edited(&saved, |document| document["models"]["version"] = 2.into());
    let renamed_feature = edited(&saved, |document| {
        document["models"]["spec"]["names"][0] = "renamed".into()
    });
    let cases: [(&str, &[u8], &str); 9] = [
        ("truncated.json", &good[..good.len() / 2], "truncated"),
        ("empty.json", b"", "truncated"),
        ("garbage.json", b"PK\x03\x04 not a model", "invalid JSON"),
        ("no-models.json", &no_models, "missing field `models`"),
        ("broken-models.json", &broken_models, "invalid `models`"),
        ("format.json", &future_format, "file format version 99"),
        ("first-format.json", &first_format, "file format version 1,"),
        ("old-models.json", &old_models, "models format version 2"),
        (
            "features.json",
            &renamed_feature,
            "feature 0 = `renamed` (of 32 features), but this run has `log_events`",
        ),
    ];
    for (name, bytes, expected) in cases {
        assert_rejected(&saved, name, bytes, &[], expected);
    }
}

#[test]
fn mismatched_settings_rejected() {
    let saved = saved_models();
    let config = saved.folder.path().join("seed.toml");
    std::fs::write(&config, "[models]\nseed = 11\n").expect("config file");
    assert_load_fails(
        &saved,
        &saved.models,
        &["--config", arg(&config)],
        "[models] seed = 7, but this run has 11",
    );
    assert_load_fails(
        &saved,
        &saved.models,
        &["--window", "2h"],
        "--window in milliseconds = 3600000, but this run has 7200000",
    );
    let decay = edited(&saved, |document| {
        document["settings"]["reference_decay"] = 0.5.into()
    });
    assert_rejected(
        &saved,
        "decay.json",
        &decay,
        &[],
        "fit setting `reference_decay` = 0.5",
    );
}

/// Writes a user table of `columns` for users 1 to 300 to `name` in the saved folder.
fn user_table(saved: &Saved, name: &str, columns: &[&str]) -> PathBuf {
    let path = saved.folder.path().join(name);
    let mut text = format!("user,{}\n", columns.join(","));
    for user in 1..=300 {
        let values: Vec<&str> = columns
            .iter()
            .map(|column| match *column {
                "age" => "25-34",
                "gender" => {
                    if user % 2 == 0 {
                        "F"
                    } else {
                        "M"
                    }
                }
                _ => "x",
            })
            .collect();
        text.push_str(&format!("{user},{}\n", values.join(",")));
    }
    std::fs::write(&path, text).expect("user table");
    path
}

#[test]
fn user_table_mismatch_rejected() {
    let saved = saved_models();
    let full = user_table(&saved, "full.csv", &["age", "gender", "region"]);
    let no_gender = user_table(&saved, "no-gender.csv", &["age", "region"]);
    let other_extra = user_table(&saved, "extra.csv", &["age", "gender", "vip_level"]);

    assert_load_fails(
        &saved,
        &saved.models,
        &["--users", arg(&full)],
        "fitted with no --users table, but this run has a --users table of columns age, \
         gender, region",
    );

    let with_table = edited(&saved, |document| {
        document["user_columns"] = serde_json::json!(["age", "gender", "region"])
    });
    assert_rejected(
        &saved,
        "with-table.json",
        &with_table,
        &[],
        "fitted with a --users table of columns age, gender, region, but this run has no \
         --users table",
    );
    assert_load_fails(
        &saved,
        &saved.folder.path().join("with-table.json"),
        &["--users", arg(&no_gender)],
        "but this run has a --users table of columns age, region",
    );
    // Columns that the features do not encode may differ.
    let accepted = run_loaded(
        &saved,
        &saved.folder.path().join("with-table.json"),
        "extra.jsonl",
        &["--users", arg(&other_extra)],
    );
    assert_eq!(accepted.status, 0, "{}", accepted.stderr);

    // A saving run with a table records its columns.
    let resaved = saved.folder.path().join("resaved.json");
    let saving = run_loaded(
        &saved,
        &saved.folder.path().join("with-table.json"),
        "saving.jsonl",
        &["--users", arg(&full), "--models-save", arg(&resaved)],
    );
    assert_eq!(saving.status, 0, "{}", saving.stderr);
    let document = read_json(&resaved);
    assert_eq!(
        document["user_columns"],
        serde_json::json!(["age", "gender", "region"])
    );
}

#[test]
fn model_file_flags_need_models() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, _) = generate_stream(folder.path(), 50, 5, 3);
    let path = folder.path().join("models.json");
    for flag in ["--models-save", "--models-load"] {
        let run = run_in(
            folder.path(),
            "alerts.jsonl",
            &["--input", arg(&events), flag, arg(&path)],
        );
        assert_eq!(run.status, 2, "{}", run.stderr);
        assert!(run.stderr.contains(flag), "{}", run.stderr);
        assert!(run.stderr.contains("add --models"), "{}", run.stderr);
        assert!(run.alerts.is_none(), "the run started");
    }
}

#[test]
fn missing_save_folder_rejected() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (events, _) = generate_stream(folder.path(), 50, 5, 3);
    let path = folder.path().join("absent").join("models.json");
    let run = run_in(
        folder.path(),
        "alerts.jsonl",
        &[
            "--input",
            arg(&events),
            "--models",
            "--models-save",
            arg(&path),
        ],
    );
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
    assert!(run.stderr.contains("create it"), "{}", run.stderr);
    assert!(run.stderr.contains(arg(&path)), "{}", run.stderr);
    assert!(run.alerts.is_none(), "the run started");
}

/// Returns the alerts of the dataflow with `workers` workers for `models`.
fn dataflow_alerts(
    events: &[veer_models::Event],
    workers: usize,
    models: &ModelRunSettings,
) -> Vec<Alert> {
    pipeline::run_with_models(
        common::memory_run_settings(events.to_vec(), workers),
        models.clone(),
    )
    .expect("the pipeline runs")
    .kept_alerts
}

/// The dataflow with loaded models, with and without retraining, against the single-threaded
/// reference. The model file is saved by a dataflow run through [`ModelSaver`].
#[test]
fn loaded_models_match_reference() {
    let events = generate(&GenerateConfig {
        users: 300,
        days: 6,
        seed: 11,
        ..GenerateConfig::default()
    })
    .events;
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("models.json");
    let fitting = ModelRunSettings::default();
    let saver = Arc::new(
        ModelSaver::new(&path, FitRecord::of(&fitting, HOUR_MS), None).expect("a writable folder"),
    );
    let with_saver = ModelRunSettings {
        sink: Some(saver.clone()),
        ..fitting.clone()
    };
    dataflow_alerts(&events, 2, &with_saver);
    assert_eq!(saver.saved(), 1);
    saver.finish().expect("every version saved");

    let file = model_file::load(&path).expect("the saved file loads");
    file.check(&path, &FitRecord::of(&fitting, HOUR_MS), None)
        .expect("the same settings");
    let replay_settings = ReplaySettings {
        window_ms: HOUR_MS,
        ..ReplaySettings::default()
    };
    for retrain_every_ms in [None, Some(DAY_MS)] {
        let loaded = ModelRunSettings {
            loaded: Some(Arc::new(file.clone())),
            retrain_every_ms,
            ..fitting.clone()
        };
        let reference =
            replay_with_models(&events, &replay_settings, &loaded).expect("the reference runs");
        assert!(!reference.alerts.is_empty(), "the stream raises alerts");
        let expected_versions = match retrain_every_ms {
            None => 1,
            Some(_) => 4,
        };
        assert_eq!(
            reference.versions, expected_versions,
            "{retrain_every_ms:?}"
        );
        for workers in [1, 2] {
            let alerts = dataflow_alerts(&events, workers, &loaded);
            assert!(
                alerts == reference.alerts,
                "{workers} workers, retraining {retrain_every_ms:?}: {} alerts against {} of the reference",
                alerts.len(),
                reference.alerts.len()
            );
        }
    }
}

#[test]
fn model_load_errors_name_one_cause() {
    let saved = saved_models();
    assert_load_fails(&saved, saved.folder.path(), &[], "is a folder");
    let run = run_loaded(&saved, saved.folder.path(), "folder.alerts", &[]);
    assert!(
        !run.stderr.contains("os error 21"),
        "the error repeats the system's cause: {}",
        run.stderr
    );

    let broken = edited(&saved, |document| {
        document["models"]["segmenter"] = 5.into()
    });
    let path = saved.folder.path().join("broken.json");
    std::fs::write(&path, broken).expect("broken model file");
    let run = run_loaded(&saved, &path, "broken.alerts", &[]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(
        !run.stderr.contains("save or load"),
        "the error does not say which: {}",
        run.stderr
    );
}
