//! One port, many kinds of client: 40 idle connections, a trickle of one byte per 0.5 s, a
//! 10 MiB line, a firehose and four normal clients. The normal clients' alerts arrive while
//! every troublesome connection is open, nothing of theirs is late, the firehose is slowed by
//! TCP backpressure and fully processed, and memory stays bounded.
//!
//! The handed case's firehose has 1,000,000 events and holds its sockets for 90 s; here it
//! has 200,000 events and the pauses are scaled to an idle timeout of 3 s.

mod serving;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serving::{alert_ids, case_file, read_json_lines, summary_count, Server};

const CASE: &str = "20-tcp-slow-client-backpressure";
const FIREHOSE_EVENTS: u64 = 200_000;

/// Peak resident memory of a process, sampled every 100 ms on a thread of its own.
struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<()>,
}

impl PeakRss {
    /// Starts sampling the process `pid`.
    fn start(pid: u32) -> PeakRss {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let sampler = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let status =
                        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                    let rss = status
                        .lines()
                        .find_map(|line| line.strip_prefix("VmRSS:"))
                        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                        .unwrap_or(0);
                    peak.fetch_max(rss, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        PeakRss {
            peak,
            stop,
            sampler,
        }
    }

    /// Stops sampling and returns the peak in KiB.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

/// Returns one JSON event line of the view behaviour, with its newline.
fn view_event(user: u64, item: u64, category: u64, ts: u64) -> String {
    format!(
        "{{\"user\":{user},\"item\":{item},\"category\":{category},\"behavior\":\"view\",\"ts\":{ts}}}\n"
    )
}

/// Starts `veer serve` on a free loopback port with `options`, writing alerts to `alerts`.
fn serve_with(alerts: &std::path::Path, options: &[&str]) -> Server {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(options);
    args.extend(["--alerts", alerts.to_str().unwrap()]);
    Server::start(&args, 1)
}

/// Sends a client file in 10 slices, 300 ms apart, and returns the open connection.
fn normal_client(mut stream: TcpStream, number: usize) -> TcpStream {
    let text = std::fs::read_to_string(case_file(CASE, &format!("client{number}.jsonl"))).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for slice in lines.chunks(lines.len().div_ceil(10)) {
        stream
            .write_all(format!("{}\n", slice.join("\n")).as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    stream
}

/// Sends the firehose events and returns the connection and the time spent blocked in send.
fn firehose(address: SocketAddr) -> (TcpStream, Duration) {
    let (start, span) = (1_511_539_200u64, 6 * 86_400u64);
    let mut stream = TcpStream::connect(address).unwrap();
    let mut blocked = Duration::ZERO;
    let mut batch = String::new();
    for index in 0..FIREHOSE_EVENTS {
        let category = if index % 3 == 0 { 15 } else { 12 };
        batch.push_str(&view_event(
            2100 + index % 100,
            category * 1000 + index % 40,
            category,
            start + index * span / FIREHOSE_EVENTS,
        ));
        if index % 1000 == 999 {
            let before = Instant::now();
            stream.write_all(batch.as_bytes()).unwrap();
            blocked += before.elapsed();
            batch.clear();
        }
    }
    (stream, blocked)
}

/// The troublesome clients; each returns its open connection.
fn troublesome(address: SocketAddr) -> Vec<JoinHandle<Option<TcpStream>>> {
    let mut clients: Vec<JoinHandle<Option<TcpStream>>> = (0..40)
        .map(|_| std::thread::spawn(move || TcpStream::connect(address).ok()))
        .collect();
    clients.push(std::thread::spawn(move || {
        let line = b"{\"user\":2009,\"item\":12001,\"category\":12,\"behavior\":\"view\",\"ts\":1511798400}\n";
        let mut stream = TcpStream::connect(address).ok()?;
        for byte in line.chunks(1) {
            if stream.write_all(byte).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Some(stream)
    }));
    clients.push(std::thread::spawn(move || {
        let mut stream = TcpStream::connect(address).ok()?;
        let _ = stream.write_all(&vec![b'x'; 10 << 20]);
        Some(stream)
    }));
    clients
}

/// Connects the four normal clients together, so none of them starts after another one has
/// moved event time past its first events, then sends their files.
fn start_normal_clients(address: SocketAddr) -> Vec<JoinHandle<TcpStream>> {
    let streams: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    streams
        .into_iter()
        .zip(1..=4)
        .map(|(stream, number)| std::thread::spawn(move || normal_client(stream, number)))
        .collect()
}

/// Starts the server of the mix test: 4 workers and an idle timeout of 3 s.
fn serve(alerts: &std::path::Path) -> Server {
    let options = [
        "--workers",
        "4",
        "--idle-timeout",
        "3s",
        "--status-interval",
        "200ms",
    ];
    serve_with(alerts, &options)
}

#[test]
fn troublesome_clients_do_not_stall_others() {
    let folder = tempfile::tempdir().unwrap();

    // Baseline: the normal clients alone.
    let base = folder.path().join("base.jsonl");
    let mut server = serve(&base);
    let address = server.addresses[0];
    let peak_base = PeakRss::start(server.child.id());
    let normal = start_normal_clients(address);
    let normal: Vec<TcpStream> = normal
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    drop(normal);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(10).0, 0);
    let base_kib = peak_base.finish();
    let log = server.log();
    assert_eq!(summary_count(&log, "lines read"), 1396);
    assert_eq!(summary_count(&log, "late"), 0);
    assert_eq!(summary_count(&log, "bad"), 0);
    let base_alerts = read_json_lines(&base);
    let truth = read_json_lines(&case_file(CASE, "truth.jsonl"));
    assert_eq!(base_alerts.len(), 4, "{base_alerts:?}");
    for shift in &truth {
        let onset = shift["onset_ts"].as_i64().unwrap();
        let found = base_alerts.iter().any(|alert| {
            let ts = alert["ts"].as_i64().unwrap();
            alert["user"] == shift["user"] && (onset..=onset + 259_200).contains(&ts)
        });
        assert!(found, "no alert for {shift}");
    }

    // The full mix.
    let mix = folder.path().join("mix.jsonl");
    let mut server = serve(&mix);
    let address = server.addresses[0];
    let peak_mix = PeakRss::start(server.child.id());
    let troublesome = troublesome(address);
    let hose = std::thread::spawn(move || firehose(address));
    let normal = start_normal_clients(address);
    let normal: Vec<TcpStream> = normal
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    let sent = Instant::now();

    // The normal clients' alerts arrive while every connection is still open.
    let deadline = Duration::from_secs(3 + 10);
    while alert_ids(&mix).len() < 4 && sent.elapsed() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        alert_ids(&mix),
        alert_ids(&base),
        "after {:?}",
        sent.elapsed()
    );

    let (hose_stream, blocked) = hose.join().unwrap();
    assert!(
        blocked > Duration::ZERO,
        "the firehose never waited in send"
    );
    let troublesome: Vec<Option<TcpStream>> = troublesome
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    server.wait_for(
        |log| log.contains(&format!("events={}", 1396 + FIREHOSE_EVENTS)),
        60,
    );
    drop(troublesome);
    drop(hose_stream);
    drop(normal);

    // After the clients leave, a new client is accepted at once.
    std::thread::sleep(Duration::from_millis(500));
    let opened = server.log().matches("connection opened").count();
    let _late_client = TcpStream::connect(address).unwrap();
    server.wait_for(|log| log.matches("connection opened").count() > opened, 2);

    server.signal(libc::SIGTERM);
    let (code, took) = server.wait_exit(10);
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(10));
    let mix_kib = peak_mix.finish();

    let log = server.log();
    let long_line = log
        .lines()
        .find(|line| line.contains("line longer than max_line_bytes"))
        .expect("a log line for the 10 MiB line");
    assert!(long_line.contains("peer=127.0.0.1:"), "{long_line}");
    assert!(long_line.contains("max_line_bytes=1048576"), "{long_line}");
    let trickle_cut = log.contains("within line_timeout");
    let events = summary_count(&log, "events");
    assert_eq!(events, 1396 + FIREHOSE_EVENTS + u64::from(!trickle_cut));
    assert_eq!(summary_count(&log, "late"), 0);
    assert_eq!(summary_count(&log, "bad"), 1 + u64::from(trickle_cut));
    assert_eq!(alert_ids(&mix), alert_ids(&base));

    assert!(
        mix_kib <= base_kib + 256 * 1024,
        "peak RSS {mix_kib} KiB against {base_kib} KiB"
    );
}

/// A client that sends more events than `--max-buffered-events` allows during the startup hold
/// is read to its end at once, because the hold ends early instead of pausing every connection
/// until it expires.
#[test]
fn full_buffer_ends_startup_hold() {
    let folder = tempfile::tempdir().unwrap();
    let alerts = folder.path().join("alerts.jsonl");
    let options = ["--startup-hold", "120s", "--max-buffered-events", "1000"];
    let mut server = serve_with(&alerts, &options);
    // Far more than the socket buffers take, so the reader cannot take it all before worker 0
    // counts the buffered events.
    let lines: String = (0..100_000u64)
        .map(|index| view_event(index % 50, index, index % 7, 1_511_539_200 + index))
        .collect();
    let address = server.addresses[0];
    // A paused reader blocks the send, so it runs on its own thread.
    std::thread::spawn(move || {
        if let Ok(mut stream) = TcpStream::connect(address) {
            let _ = stream.write_all(lines.as_bytes());
        }
    });

    // Without the early end, the reader would pause until the 120 s hold ends.
    server.wait_for(|log| log.contains("connection closed"), 30);
    assert!(server.log().contains("startup hold ended early"));

    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(10).0, 0);
    let log = server.log();
    assert_eq!(summary_count(&log, "lines read"), 100_000);
    assert_eq!(summary_count(&log, "late"), 0);
}

/// A client held back because a silent client holds the frontier is logged once its pause
/// lasts a second, and again when it resumes after the silent client leaves.
#[test]
fn long_pause_is_logged() {
    let folder = tempfile::tempdir().unwrap();
    let alerts = folder.path().join("alerts.jsonl");
    let options = [
        "--startup-hold",
        "0s",
        "--idle-timeout",
        "120s",
        "--status-interval",
        "100ms",
        "--max-buffered-events",
        "1000",
    ];
    let mut server = serve_with(&alerts, &options);
    let address = server.addresses[0];
    let event = |user: u64, item: u64, ts: u64| view_event(user, item, item % 7, ts);
    // The silent client sends one event and keeps its connection open, so it holds the
    // frontier at that event's time.
    let mut silent = TcpStream::connect(address).unwrap();
    silent
        .write_all(event(1, 0, 1_511_539_200).as_bytes())
        .unwrap();
    // Worker 0 must know the silent client before the sender connects. Otherwise event time
    // follows the sender alone, nothing waits, and the silent client's event is late.
    server.wait_for(|log| log.contains("lines=1 events=1 late=0"), 30);
    // The sender goes on in chunks until the pause is logged, so the test does not depend on
    // how much the reader takes before worker 0 counts the buffered events. A paused reader
    // blocks the send, so it runs on its own thread and returns the lines it sent.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(address).unwrap();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && sent < 2_000_000 {
                let chunk: String = (sent..sent + 1_000)
                    .map(|index| event(2 + index % 50, index, 1_511_625_600 + index))
                    .collect();
                stream.write_all(chunk.as_bytes()).unwrap();
                sent += 1_000;
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        })
    };

    server.wait_for(|log| log.contains("connection paused"), 30);
    stop.store(true, Ordering::Relaxed);
    assert!(
        !server.log().contains("connection resumed"),
        "the pause lasts while the silent client holds the frontier"
    );
    drop(silent);
    server.wait_for(|log| log.contains("connection resumed after a pause"), 30);
    let sent = sender.join().unwrap();

    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(10).0, 0);
    let log = server.log();
    assert_eq!(summary_count(&log, "lines read"), sent + 1);
    assert_eq!(summary_count(&log, "late"), 0);
    assert_eq!(log.matches("connection paused").count(), 1, "{log}");
}
