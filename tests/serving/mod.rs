//! Helpers for tests that run `veer serve`: start it on loopback ports chosen by the system,
//! read its log as it runs, send it signals and wait for its exit.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `veer` process whose standard error is collected.
pub struct Server {
    pub child: Child,
    log: Arc<Mutex<String>>,
    pub addresses: Vec<SocketAddr>,
}

impl Server {
    /// Starts `veer ARGS` and waits until it listens on `listeners` addresses.
    pub fn start(args: &[&str], listeners: usize) -> Server {
        Self::start_with_stdin(args, listeners, Stdio::null())
    }

    /// Starts `veer ARGS` with the given standard input.
    pub fn start_with_stdin(args: &[&str], listeners: usize, stdin: Stdio) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_veer"))
            .args(args)
            .env("VEER_LOG", "info")
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("veer starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut server = Server {
            child,
            log,
            addresses: Vec::new(),
        };
        if listeners > 0 {
            server.wait_for(
                |log| log.matches("listening for events").count() >= listeners,
                10,
            );
            server.addresses = server
                .log()
                .lines()
                .filter(|line| line.contains("listening for events"))
                .map(|line| {
                    let address = line.split("address=").nth(1).expect("address field");
                    address.trim().parse().expect("socket address")
                })
                .collect();
        }
        server
    }

    /// Returns the log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `condition` holds on the log, failing after `seconds`.
    pub fn wait_for(&self, condition: impl Fn(&str) -> bool, seconds: u64) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            if condition(&self.log()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("condition not met within {seconds} s; log:\n{}", self.log());
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child this test started.
        let result = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(result, 0, "kill failed");
    }

    /// Waits for the exit and returns the exit code (or 128 + signal) and the time it took.
    pub fn wait_exit(&mut self, seconds: u64) -> (i32, Duration) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the log thread read the last lines.
                std::thread::sleep(Duration::from_millis(100));
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                return (code, started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("veer did not exit within {seconds} s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Returns the CPU time (user + system) used so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("/proc stat");
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // Fields 14 and 15 of stat(5); index 0 here is field 3.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Returns the resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns the value of a count in the end-of-run summary, such as `lines read` or `late`.
pub fn summary_count(log: &str, name: &str) -> u64 {
    for line in log.lines() {
        if let Some(rest) = line.trim_start().strip_prefix(name) {
            if let Some(Ok(value)) = rest.split_whitespace().next().map(str::parse) {
                return value;
            }
        }
    }
    panic!("no `{name}` count in the summary:\n{log}")
}

/// Connects to `address` and sends `bytes`, keeping the connection open.
pub fn connect_and_send(address: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.write_all(bytes).expect("send");
    stream
}

/// Reads a JSON-lines file; fails on a line that does not parse.
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} does not end with a newline",
        path.display()
    );
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect()
}

/// Returns the alert ids of an alert file, sorted.
pub fn alert_ids(path: &Path) -> Vec<String> {
    let mut ids: Vec<String> = read_json_lines(path)
        .iter()
        .map(|alert| alert["alert_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Returns the path of a handed case file beside the repository.
pub fn case_file(case: &str, name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/cases")
        .join(case)
        .join(name);
    assert!(path.exists(), "missing case file {}", path.display());
    path
}
