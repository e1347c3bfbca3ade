//! `veer explain` and `veer report` through the real binary: every picture and page is
//! parsed with an XML or HTML parser, not only checked for existence.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    arg, generate_stream, run_veer_exact, run_veer_exact_with_stdin, shared, CommandOutput,
};
use scraper::{Html, Selector};

/// The category names of user 2301 in the label case, as the input writes them.
const CASE_NAMES: [&str; 4] = [
    "母婴 & 玩具",
    "Tom & Jerry <DVD>",
    "家用电器/厨具 \"新\"",
    "x]]>y <b>&amp;",
];

/// What a parsed SVG document holds.
struct SvgFacts {
    /// Non-empty text of each element, trimmed, in document order.
    texts: Vec<String>,
    /// Text of each `<title>` element (tooltips).
    titles: Vec<String>,
}

/// Returns whether an attribute value spells a non-finite number (`NaN`, `inf`, `Infinity`)
/// as a word of its own, so that `fill="none"` or a font name does not count.
fn holds_non_finite(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    for word in ["nan", "inf"] {
        for (at, _) in lower.match_indices(word) {
            let letters_before = at >= 2
                && bytes[at - 1].is_ascii_alphabetic()
                && bytes[at - 2].is_ascii_alphabetic();
            let end = if lower[at..].starts_with("infinity") {
                at + 8
            } else {
                at + 3
            };
            let letter_after = bytes.get(end).is_some_and(u8::is_ascii_alphabetic);
            if !letters_before && !letter_after {
                return true;
            }
        }
    }
    false
}

/// Parses an SVG document and checks that no attribute contains a non-finite number.
fn parse_svg(text: &str, context: &str) -> SvgFacts {
    let document = roxmltree::Document::parse(text)
        .unwrap_or_else(|error| panic!("{context}: not well-formed XML: {error}"));
    assert_eq!(
        document.root_element().tag_name().name(),
        "svg",
        "{context}"
    );
    let mut facts = SvgFacts {
        texts: Vec::new(),
        titles: Vec::new(),
    };
    for node in document.descendants().filter(|node| node.is_element()) {
        for attribute in node.attributes() {
            assert!(
                !holds_non_finite(attribute.value()),
                "{context}: attribute {}=\"{}\" holds a non-finite number",
                attribute.name(),
                attribute.value()
            );
        }
        if let Some(text) = node.text().map(str::trim).filter(|text| !text.is_empty()) {
            facts.texts.push(text.to_string());
            if node.tag_name().name() == "title" {
                facts.titles.push(text.to_string());
            }
        }
    }
    facts
}

/// Parses an HTML page, checks its charset and that it loads nothing from the network, and
/// parses each inline SVG on its own.
fn parse_html(text: &str, context: &str) -> (Html, Vec<SvgFacts>) {
    let page = Html::parse_document(text);
    let charset = Selector::parse("meta[charset]").unwrap();
    let declared = page
        .select(&charset)
        .filter_map(|meta| meta.value().attr("charset"))
        .any(|value| value.eq_ignore_ascii_case("utf-8"));
    assert!(declared, "{context}: no <meta charset=\"utf-8\">");
    let linked = Selector::parse("[src], [href]").unwrap();
    for element in page.select(&linked) {
        for name in ["src", "href"] {
            if let Some(value) = element.value().attr(name) {
                let lower = value.trim().to_ascii_lowercase();
                assert!(
                    !(lower.starts_with("http:")
                        || lower.starts_with("https:")
                        || lower.starts_with("//")),
                    "{context}: {name}=\"{value}\" loads from the network"
                );
            }
        }
    }
    assert!(!text.contains("url("), "{context}: CSS url() found");
    assert!(!text.contains("<script"), "{context}: a script found");
    let mut pictures = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<svg") {
        let end = rest[start..]
            .find("</svg>")
            .unwrap_or_else(|| panic!("{context}: an <svg> is not closed"))
            + start
            + "</svg>".len();
        let number = pictures.len() + 1;
        pictures.push(parse_svg(
            &rest[start..end],
            &format!("{context}, inline svg {number}"),
        ));
        rest = &rest[end..];
    }
    (page, pictures)
}

/// Runs the label case's own checker when Python is installed; the Rust checks above cover
/// the same rules either way.
fn run_case_checker(file: &Path, extra: &[&str]) {
    let script = shared("cases/23-svg-report-labels/check_svg.py");
    let Ok(output) = Command::new("python3")
        .arg(&script)
        .arg(file)
        .args(extra)
        .output()
    else {
        eprintln!(
            "python3 not found: check_svg.py not run on {}",
            file.display()
        );
        return;
    };
    assert!(
        output.status.success(),
        "check_svg.py {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn succeed(args: &[&str]) -> CommandOutput {
    let output = run_veer_exact(args);
    assert_eq!(
        output.status,
        0,
        "veer {} failed:\n{}",
        args.join(" "),
        output.stderr
    );
    output
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Runs `veer run` on `input` and returns the alert file's path.
fn run_alerts(input: &Path, folder: &Path) -> PathBuf {
    let alerts = folder.join("alerts.jsonl");
    succeed(&[
        "run",
        "--input",
        arg(input),
        "--alerts",
        arg(&alerts),
        "--no-progress",
    ]);
    alerts
}

/// Returns the text of the report's `veer eval` output block.
fn eval_output(page: &Html) -> String {
    let selector = Selector::parse("pre#eval-output").unwrap();
    page.select(&selector)
        .next()
        .expect("the scorer's output in the report")
        .text()
        .collect()
}

/// Returns the value cell of the report's summary row named `name`.
fn summary_value(page: &Html, name: &str) -> String {
    let rows = Selector::parse("tr").unwrap();
    let header = Selector::parse("th").unwrap();
    let cell = Selector::parse("td").unwrap();
    for row in page.select(&rows) {
        let Some(th) = row.select(&header).next() else {
            continue;
        };
        if th.text().collect::<String>().trim() == name {
            let td = row.select(&cell).next().expect("a value cell");
            return td.text().collect::<String>().trim().to_string();
        }
    }
    panic!("no summary row {name:?}")
}

#[test]
fn label_case_pictures_parse_and_keep_names() {
    let folder = tempfile::tempdir().unwrap();
    let input = shared("cases/23-svg-report-labels/input.jsonl");
    let truth = shared("cases/23-svg-report-labels/truth.jsonl");
    let alerts = run_alerts(&input, folder.path());
    let alerts_text = read(&alerts);
    for word in ["NaN", "Infinity", "null"] {
        assert!(!alerts_text.contains(word), "alert file holds {word}");
    }
    let alert_users: Vec<String> = alerts_text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["user"].to_string())
        .collect();
    for user in ["2303", "2304"] {
        assert!(
            !alert_users.contains(&user.to_string()),
            "alert for {user}: {alerts_text}"
        );
    }
    let shifts_2301 = alerts_text
        .lines()
        .filter(|line| line.contains("\"user\":2301,") && line.contains("interest_shift"))
        .count();
    assert_eq!(shifts_2301, 1, "{alerts_text}");

    for user in ["2301", "2302", "2303", "2304", "2305"] {
        let svg = folder.path().join(format!("{user}.svg"));
        let html = folder.path().join(format!("{user}.html"));
        for out in [&svg, &html] {
            succeed(&[
                "explain",
                "--input",
                arg(&input),
                "--user",
                user,
                "--alerts",
                arg(&alerts),
                "--out",
                arg(out),
            ]);
        }
        let text_view = succeed(&["explain", "--input", arg(&input), "--user", user]).stdout;
        assert!(
            text_view.starts_with(&format!("user {user}:")),
            "{text_view}"
        );
        assert!(
            !text_view.contains('\u{7}'),
            "user {user}: the text view holds a BEL"
        );

        let svg_text = read(&svg);
        assert!(
            !svg_text.contains('\u{7}'),
            "user {user}: the SVG holds a raw BEL"
        );
        assert!(
            svg_text.len() < 1_000_000,
            "user {user}: SVG of {} bytes",
            svg_text.len()
        );
        let facts = parse_svg(&svg_text, &format!("{user}.svg"));
        let distinct: HashSet<&String> = facts.texts.iter().collect();
        assert!(
            distinct.len() <= 40,
            "user {user}: {} distinct texts",
            distinct.len()
        );
        let (_, pictures) = parse_html(&read(&html), &format!("{user}.html"));
        assert_eq!(pictures.len(), 1, "user {user}: pictures in the HTML page");

        run_case_checker(&svg, &["--max-labels", "40"]);
        run_case_checker(&html, &[]);
    }

    let facts = parse_svg(&read(&folder.path().join("2301.svg")), "2301.svg");
    for name in CASE_NAMES {
        assert!(
            facts.texts.iter().any(|text| text == name),
            "2301.svg lacks {name:?}"
        );
    }
    let mut expect = Vec::new();
    for name in CASE_NAMES {
        expect.extend(["--expect", name]);
    }
    run_case_checker(&folder.path().join("2301.svg"), &expect);

    // 600 one-off categories are grouped: a few names and one "other" entry.
    let facts = parse_svg(&read(&folder.path().join("2302.svg")), "2302.svg");
    assert!(facts.texts.iter().any(|text| text.starts_with("other (")));

    // The 300-character name is cut with an ellipsis and kept whole in a tooltip.
    let facts = parse_svg(&read(&folder.path().join("2305.svg")), "2305.svg");
    let long_name = "超长类目名称".repeat(50);
    assert!(
        facts.titles.contains(&long_name),
        "2305.svg: no tooltip with the whole name"
    );
    let cut = facts
        .texts
        .iter()
        .find(|text| text.ends_with('…') && text.starts_with("超长"))
        .expect("2305.svg: no cut name");
    assert!(long_name.starts_with(cut.trim_end_matches('…')));
    assert!(facts.texts.iter().any(|text| text == "belltab end"));

    for user in ["2303", "2304"] {
        let facts = parse_svg(&read(&folder.path().join(format!("{user}.svg"))), user);
        assert!(
            facts
                .texts
                .iter()
                .any(|text| text.contains("too little data")),
            "user {user}: no note about too little data"
        );
    }

    let report = folder.path().join("report.html");
    succeed(&[
        "report",
        "--alerts",
        arg(&alerts),
        "--events",
        arg(&input),
        "--truth",
        arg(&truth),
        "--out",
        arg(&report),
    ]);
    let report_text = read(&report);
    let (page, pictures) = parse_html(&report_text, "report.html");
    assert!(pictures.len() >= 2, "report: {} pictures", pictures.len());
    assert!(
        report_text.contains("母婴 &amp; 玩具"),
        "report: escaped name missing"
    );
    let page_text: String = page.root_element().text().collect();
    assert!(
        page_text.contains("x]]>y <b>&amp;"),
        "report: literal &amp; name lost"
    );
    assert_eq!(summary_value(&page, "duplicates (dropped)"), "4");
    run_case_checker(&report, &["--expect", CASE_NAMES[0]]);
}

#[test]
fn explain_errors_name_the_problem() {
    let input = shared("cases/23-svg-report-labels/input.jsonl");
    let unknown = run_veer_exact(&["explain", "--input", arg(&input), "--user", "999999"]);
    assert_eq!(unknown.status, 2);
    assert!(
        unknown.stderr.contains("user 999999 not found"),
        "{}",
        unknown.stderr
    );
    assert!(unknown.stderr.contains(arg(&input)), "{}", unknown.stderr);

    let folder = tempfile::tempdir().unwrap();
    let png = folder.path().join("user.png");
    let png_run = run_veer_exact(&[
        "explain",
        "--input",
        arg(&input),
        "--user",
        "2301",
        "--out",
        arg(&png),
    ]);
    assert_eq!(png_run.status, 2);
    assert!(
        png_run.stderr.contains("PNG output is not supported"),
        "{}",
        png_run.stderr
    );
    assert!(!png.exists(), "a PNG file was written");

    let zone = run_veer_exact(&[
        "explain",
        "--input",
        arg(&input),
        "--user",
        "2301",
        "--tz-offset",
        "20",
    ]);
    assert_eq!(zone.status, 2);
    assert!(zone.stderr.contains("--tz-offset"), "{}", zone.stderr);
}

#[test]
fn report_names_invalid_truth_file() {
    let folder = tempfile::tempdir().unwrap();
    let alerts = folder.path().join("alerts.jsonl");
    let truth = folder.path().join("garbage.jsonl");
    std::fs::write(&alerts, "").unwrap();
    std::fs::write(&truth, "not json\n").unwrap();
    let out = folder.path().join("report.html");
    let run = run_veer_exact(&[
        "report",
        "--alerts",
        arg(&alerts),
        "--truth",
        arg(&truth),
        "--out",
        arg(&out),
    ]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    let named = format!("truth file {}: line 1", truth.display());
    assert!(run.stderr.contains(&named), "{}", run.stderr);
    assert!(!run.stderr.contains("alert file"), "{}", run.stderr);
}

#[test]
fn text_view_matches_golden_file() {
    let input = shared("cases/01-one-shift-one-alert/input.jsonl");
    let actual = succeed(&[
        "explain",
        "--input",
        arg(&input),
        "--user",
        "101",
        "--tz-offset",
        "8",
    ])
    .stdout;
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/explain_user_101.txt");
    if std::env::var_os("VEER_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &actual).unwrap();
    }
    let expected = read(&golden);
    assert!(
        actual == expected,
        "the text view differs from {} (rerun with VEER_UPDATE_GOLDEN=1 after a deliberate \
         change):\n{actual}",
        golden.display()
    );
}

#[test]
fn explain_reads_pipe_path_whole() {
    // The time-zone probe must not read from a pipe that the replay reads after it.
    let input = shared("cases/01-one-shift-one-alert/input.jsonl");
    let from_file = succeed(&["explain", "--input", arg(&input), "--user", "101"]).stdout;
    let bytes = std::fs::read(&input).expect("case input is readable");
    let from_pipe = run_veer_exact_with_stdin(
        &["explain", "--input", "/dev/stdin", "--user", "101"],
        &bytes,
    );
    assert_eq!(from_pipe.status, 0, "{}", from_pipe.stderr);
    assert_eq!(from_pipe.stdout, from_file);
}

#[test]
fn taobao_sample_explain_and_report_parse() {
    let folder = tempfile::tempdir().unwrap();
    let input = shared("data/taobao_ub_usersorted/UserBehavior.csv");
    let alerts = run_alerts(&input, folder.path());
    let alert_lines: Vec<serde_json::Value> = read(&alerts)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let shift = alert_lines
        .iter()
        .find(|alert| alert["kind"] == "interest_shift")
        .expect("an interest_shift alert on the Taobao sample");
    let user = shift["user"].to_string();

    let svg = folder.path().join("user.svg");
    succeed(&[
        "explain",
        "--input",
        arg(&input),
        "--user",
        &user,
        "--out",
        arg(&svg),
    ]);
    let facts = parse_svg(&read(&svg), "Taobao user");
    for label in ["onset", "alert", "time (UTC+8)", "CUSUM (nats)"] {
        assert!(
            facts.texts.iter().any(|text| text == label),
            "no {label:?} label"
        );
    }

    let report = folder.path().join("report.html");
    succeed(&[
        "report",
        "--alerts",
        arg(&alerts),
        "--events",
        arg(&input),
        "--out",
        arg(&report),
    ]);
    let (page, pictures) = parse_html(&read(&report), "Taobao report");
    assert_eq!(
        summary_value(&page, "alerts"),
        alert_lines.len().to_string()
    );
    assert_eq!(summary_value(&page, "lines read"), "84476");
    assert_eq!(summary_value(&page, "bad"), "1");
    assert_eq!(summary_value(&page, "users"), "815");
    // Four charts plus one picture per distinct user among the ten top alerts.
    assert!(pictures.len() >= 5, "report: {} pictures", pictures.len());
}

#[test]
fn report_score_equals_eval() {
    let folder = tempfile::tempdir().unwrap();
    let (events, truth) = generate_stream(folder.path(), 300, 9, 5);
    let alerts = run_alerts(&events, folder.path());
    let eval = succeed(&[
        "eval",
        "--truth",
        arg(&truth),
        "--alerts",
        arg(&alerts),
        "--events",
        arg(&events),
    ]);

    let report = folder.path().join("report.html");
    succeed(&[
        "report",
        "--alerts",
        arg(&alerts),
        "--events",
        arg(&events),
        "--truth",
        arg(&truth),
        "--out",
        arg(&report),
        "--top",
        "3",
    ]);
    let (page, pictures) = parse_html(&read(&report), "generated report");
    let scored = eval_output(&page);
    assert_eq!(scored.trim(), eval.stdout.trim());
    assert!(pictures.len() >= 6, "report: {} pictures", pictures.len());

    // A planted shift that was detected: its picture marks onset and alert.
    let truth_text = read(&truth);
    let alerts_text = read(&alerts);
    let user = truth_text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|record| record["kind"] == "interest_shift")
        .map(|record| record["user"].to_string())
        .find(|user| alerts_text.contains(&format!("\"user\":{user},\"kind\":\"interest_shift\"")))
        .expect("a detected planted shift");
    let svg = folder.path().join("planted.svg");
    succeed(&[
        "explain",
        "--input",
        arg(&events),
        "--user",
        &user,
        "--out",
        arg(&svg),
    ]);
    let facts = parse_svg(&read(&svg), "planted shift");
    assert!(facts.texts.iter().any(|text| text == "onset"));
    assert!(facts.texts.iter().any(|text| text == "time (UTC)"));
}

/// Alerts and events that quote numeric user ids (`"user":"42"`) score against a truth file
/// with bare ids (`"user": 42`) exactly as the same files with bare ids do, in `veer eval` and
/// in `veer report`.
#[test]
fn quoted_user_ids_score_as_bare() {
    let folder = tempfile::tempdir().unwrap();
    let (events, truth) = generate_stream(folder.path(), 200, 9, 5);
    let alerts = run_alerts(&events, folder.path());
    let quoted_events = folder.path().join("quoted-events.jsonl");
    let quoted_alerts = folder.path().join("quoted-alerts.jsonl");
    std::fs::write(&quoted_events, common::quote_users(&read(&events))).unwrap();
    std::fs::write(&quoted_alerts, common::quote_users(&read(&alerts))).unwrap();
    assert!(read(&quoted_alerts).contains("\"user\":\""));
    assert!(
        !read(&truth).contains("\"user\":\""),
        "the truth has bare ids"
    );

    let eval = |alerts: &Path, events: &Path| {
        succeed(&[
            "eval",
            "--truth",
            arg(&truth),
            "--alerts",
            arg(alerts),
            "--events",
            arg(events),
        ])
        .stdout
    };
    let bare = eval(&alerts, &events);
    let score = common::score_line(&bare);
    assert!(score["detected"].as_u64() > Some(0), "{bare}");
    assert!(score["delay_events_median"].as_u64() > Some(0), "{bare}");
    assert_eq!(eval(&quoted_alerts, &quoted_events), bare);

    let report = folder.path().join("report.html");
    succeed(&[
        "report",
        "--alerts",
        arg(&quoted_alerts),
        "--events",
        arg(&quoted_events),
        "--truth",
        arg(&truth),
        "--out",
        arg(&report),
        "--top",
        "1",
    ]);
    let (page, _) = parse_html(&read(&report), "report of quoted ids");
    let scored = eval_output(&page);
    assert_eq!(scored.trim(), bare.trim());
}

#[test]
fn torn_alert_file_reads_with_warning() {
    let folder = tempfile::tempdir().unwrap();
    let (events, truth) = generate_stream(folder.path(), 200, 9, 5);
    let alerts = run_alerts(&events, folder.path());
    let whole = read(&alerts);
    let first_line = whole.lines().next().expect("the run raised alerts");
    // A kill in the middle of a write leaves part of a line without its newline.
    let torn = folder.path().join("torn.jsonl");
    std::fs::write(&torn, format!("{whole}{}", &first_line[..40])).unwrap();
    let whole_lines = whole.lines().count();

    let expected = succeed(&["eval", "--truth", arg(&truth), "--alerts", arg(&alerts)]);
    let scored = succeed(&["eval", "--truth", arg(&truth), "--alerts", arg(&torn)]);
    assert_eq!(scored.stdout, expected.stdout);
    assert!(
        scored.stderr.contains("skipped a torn last line"),
        "{}",
        scored.stderr
    );
    assert!(
        scored.stderr.contains(&format!("line={}", whole_lines + 1)),
        "{}",
        scored.stderr
    );

    let report = folder.path().join("report.html");
    let output = succeed(&["report", "--alerts", arg(&torn), "--out", arg(&report)]);
    assert_eq!(output.stderr.matches("skipped a torn last line").count(), 1);
    let (page, _) = parse_html(&read(&report), "report of a torn alert file");
    assert_eq!(summary_value(&page, "alerts"), whole_lines.to_string());
    assert_eq!(
        summary_value(&page, "torn last line skipped (a killed run)"),
        "1"
    );

    // The same bytes followed by more lines are a bad line, not a torn end.
    let damaged = folder.path().join("damaged.jsonl");
    std::fs::write(&damaged, format!("{}\n{whole}", &first_line[..40])).unwrap();
    let failed = run_veer_exact(&["eval", "--truth", arg(&truth), "--alerts", arg(&damaged)]);
    assert_eq!(failed.status, 2, "{}", failed.stderr);
    assert!(failed.stderr.contains("line 1: invalid JSON"), "{}", failed.stderr);
}
