//! A minimal HTTP/1.1 POST client over `std::net`, for the webhook sink.
//!
//! The webhook needs one request shape (a POST with a JSON body and a few headers) and the
//! status code of the reply, with one deadline over connect, write and read, and errors it
//! can sort into retryable and permanent. That fits in this file, adds no dependency tree to
//! the build, and keeps every timeout and error visible. It speaks plain `http://` only:
//! for HTTPS, run the receiver behind a TLS-terminating proxy.
//!
//! Each request opens its own connection (`Connection: close`), so a retry never reuses a
//! connection that the receiver may have half-closed.

use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// A parsed `http://host[:port]/path` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Url {
    host: String,
    port: u16,
    path: String,
}

impl Url {
    /// Parses a webhook URL.
    pub(crate) fn parse(text: &str) -> Result<Url, String> {
        let rest = match text.strip_prefix("http://") {
            Some(rest) => rest,
            None if text.starts_with("https://") => {
                return Err(format!(
                    "unsupported webhook URL {text:?}: veer speaks plain http:// only; put a \
                     TLS-terminating proxy in front of an HTTPS receiver"
                ))
            }
            None => {
                return Err(format!(
                    "invalid webhook URL {text:?}: expected http://host:port/path"
                ))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(index) => (&rest[..index], &rest[index..]),
            None => (rest, "/"),
        };
        let parse_port = |port: &str| {
            port.parse::<u16>()
                .map_err(|_| format!("invalid port {port:?} in webhook URL {text:?}"))
        };
        // An IPv6 host is written in brackets, and its colons are not the port's.
        let (host, port) = if authority.starts_with('[') {
            let Some(close) = authority.find(']') else {
                return Err(format!(
                    "invalid webhook URL {text:?}: the IPv6 address has no closing `]`"
                ));
            };
            let address = &authority[1..close];
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "invalid webhook URL {text:?}: {address:?} is not an IPv6 address"
                ));
            }
            match &authority[close + 1..] {
                "" => (&authority[..=close], 80),
                after => match after.strip_prefix(':') {
                    Some(port) => (&authority[..=close], parse_port(port)?),
                    None => {
                        return Err(format!(
                            "invalid webhook URL {text:?}: expected `:port` or `/` after `]`"
                        ))
                    }
                },
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, parse_port(port)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return Err(format!("invalid webhook URL {text:?}: the host is missing"));
        }
        let name_character =
            |character: char| character.is_ascii_alphanumeric() || "-._".contains(character);
        if !host.starts_with('[') && !host.chars().all(name_character) {
            return Err(format!(
                "invalid webhook URL {text:?}: the host {host:?} is not a host name or IPv4 \
                 address; write an IPv6 address in brackets, such as http://[::1]:8080/"
            ));
        }
        Ok(Url {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    fn addresses(&self) -> std::io::Result<Vec<SocketAddr>> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        Ok((host, self.port).to_socket_addrs()?.collect())
    }
}

/// Failure of a request that returned no status code.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// The deadline passed while connecting, writing or reading.
    Timeout,
    /// Connecting failed: refused, unreachable, or the host did not resolve.
    Connect(std::io::Error),
    /// The connection broke: reset, closed before a status line, or another I/O error.
    Io(std::io::Error),
    /// The reply did not start with an HTTP/1.x status line.
    Malformed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::Connect(error) => write!(f, "connect failed: {error}"),
            HttpError::Io(error) => write!(f, "connection failed: {error}"),
            HttpError::Malformed(line) => write!(f, "malformed reply {line:?}"),
        }
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// Maximum single wait for the reply, so that a deadline moved earlier while a request runs
/// takes effect within this time.
const READ_SLICE: Duration = Duration::from_millis(100);

/// Sends one POST and returns the reply's status code. `deadline` returns the time by which
/// the whole request must end. It is called again before each step and at least every
/// [`READ_SLICE`] while waiting for the reply, so the caller can move it earlier.
pub(crate) fn post(
    url: &Url,
    headers: &[(&str, &str)],
    body: &[u8],
    deadline: &dyn Fn() -> Instant,
) -> Result<u16, HttpError> {
    let remaining = || {
        deadline()
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or(HttpError::Timeout)
    };

    // NOTE: connecting waits up to the deadline as it is when the connect starts. A deadline
    // moved earlier during the connect applies only once the connect ends.
    let mut stream = connect(url, remaining()?)?;
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nUser-Agent: veer/{}\r\n",
        url.path,
        url.host,
        url.port,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let io = |error: std::io::Error| {
        if is_timeout(&error) {
            HttpError::Timeout
        } else {
            HttpError::Io(error)
        }
    };
    stream.set_write_timeout(Some(remaining()?)).map_err(io)?;
    super::send_all(&stream, &bytes).map_err(io)?;

    // Only the status line matters; the reply's headers and body are not read.
    let mut reply = Vec::new();
    let mut chunk = [0u8; 512];
    while !reply.contains(&b'\n') {
        stream
            .set_read_timeout(Some(remaining()?.min(READ_SLICE)))
            .map_err(io)?;
        let read = match stream.read(&mut chunk) {
            Ok(read) => read,
            // The next `remaining` ends the request once the deadline has passed.
            Err(error) if is_timeout(&error) => continue,
            Err(error) => return Err(HttpError::Io(error)),
        };
        if read == 0 {
            return Err(HttpError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the receiver closed the connection before replying",
            )));
        }
        reply.extend_from_slice(&chunk[..read]);
        if reply.len() > 8192 {
            break;
        }
    }
    parse_status(&reply)
}

fn connect(url: &Url, timeout: Duration) -> Result<TcpStream, HttpError> {
    let addresses = url.addresses().map_err(HttpError::Connect)?;
    let mut last_error = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(error) if is_timeout(&error) => return Err(HttpError::Timeout),
            Err(error) => last_error = Some(error),
        }
    }
    Err(HttpError::Connect(last_error.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address")
    })))
}

fn parse_status(reply: &[u8]) -> Result<u16, HttpError> {
    let end = reply
        .iter()
        .position(|&byte| byte == b'\n')
        .unwrap_or(reply.len());
    let line = String::from_utf8_lossy(&reply[..end])
        .trim_end()
        .to_string();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .ok()
            .filter(|code| (100..600).contains(code))
            .ok_or(HttpError::Malformed(line)),
        _ => Err(HttpError::Malformed(line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parses_host_port_path() {
        let url = Url::parse("http://127.0.0.1:7191/alerts").unwrap();
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 7191);
        assert_eq!(url.path, "/alerts");
        let url = Url::parse("http://localhost").unwrap();
        assert_eq!((url.port, url.path.as_str()), (80, "/"));
        let url = Url::parse("http://[::1]:8080/a?b=1").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("[::1]", 8080));
    }

    #[test]
    fn url_rejects_https_and_garbage() {
        assert!(Url::parse("https://example.com/")
            .unwrap_err()
            .contains("TLS"));
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://host:port/").is_err());
    }

    #[test]
    fn url_rejects_malformed_hosts() {
        let cases = [
            ("http://[::1/x", "no closing `]`"),
            ("http://[::1", "no closing `]`"),
            ("http://[zz]:80/", "not an IPv6 address"),
            ("http://[::1]x/", "expected `:port`"),
            ("http://::1:80/", "write an IPv6 address in brackets"),
            ("http://a b:80/", "not a host name"),
            ("http://user@host/", "not a host name"),
        ];
        for (text, expected) in cases {
            let error = Url::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert!(Url::parse("http://[::1]/").is_ok());
        assert!(Url::parse("http://my-host.example_1:9/").is_ok());
    }

    #[test]
    fn status_line_parses() {
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Service Unavailable\r\n").unwrap(),
            503
        );
        assert_eq!(parse_status(b"HTTP/1.0 200\r\n").unwrap(), 200);
        assert!(parse_status(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status(b"HTTP/1.1 abc\r\n").is_err());
    }

    #[test]
    fn refused_connection_is_connect_error() {
        // Bind then drop a listener, so the port is very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let error = post(&url, &[], b"{}", &|| deadline).unwrap_err();
        assert!(matches!(error, HttpError::Connect(_)), "{error}");
    }

    #[test]
    fn deadline_moved_earlier_ends_wait_for_reply() {
        // A receiver that accepts and never replies.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let started = Instant::now();
        let moved = started + Duration::from_millis(300);
        // The deadline is 30 s until 100 ms have passed, then 300 ms after the start.
        let deadline = || {
            if started.elapsed() < Duration::from_millis(100) {
                started + Duration::from_secs(30)
            } else {
                moved
            }
        };
        let error = post(&url, &[], b"{}", &deadline).unwrap_err();
        assert!(matches!(error, HttpError::Timeout), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        drop(listener);
    }
}
