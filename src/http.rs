//! The operations HTTP server of `veer run --http ADDR`: Prometheus metrics, user profiles and
//! a health check, for loopback use by a scraper and a recommender.
//!
//! - `GET /metrics`: every [`Metrics`] value in the Prometheus text format.
//! - `GET /users/{id}`: the user's [`veer_models::profile::UserProfile`] as JSON, read from the
//!   live state of the worker that owns the user (see [`crate::query`]); 404 for a user no
//!   worker tracks, 503 when the owner cannot reply in time. A quoted id (`/users/%227%22`)
//!   is a text id, so the text id `"7"` and the integer id `7` can both be requested.
//! - `GET /healthz`: `{"status":"ok"}` while the workers run, 503 once they have finished.
//!
//! The server is `tiny_http` (synchronous, no async runtime): its own threads accept and parse
//! connections, and one handler thread serves requests, which are all short. It has no
//! authentication, so it binds to loopback unless told otherwise.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tiny_http::{Header, Method, Response, Server};
use veer_models::{Id, IdValue};

use crate::metrics::Metrics;
use crate::query::{QueryError, QueryRouter};

/// How long a profile request waits for the owning worker.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A running server; dropping it stops the server and joins its thread.
pub struct HttpServer {
    server: Arc<Server>,
    address: SocketAddr,
    handler: Option<JoinHandle<()>>,
    running: Arc<AtomicBool>,
}

impl HttpServer {
    /// Binds `address` and starts serving requests on a new thread.
    pub fn start(
        address: &str,
        metrics: Arc<Metrics>,
        router: Arc<QueryRouter>,
    ) -> anyhow::Result<HttpServer> {
        let server = Server::http(address).map_err(|error| {
            anyhow::anyhow!("cannot start the HTTP server on {address}: {error}")
        })?;
        let address = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("the HTTP server on {address} has no IP address"))?;
        if !address.ip().is_loopback() {
            tracing::warn!(
                %address,
                "the HTTP server has no authentication and listens beyond loopback"
            );
        }
        tracing::info!(%address, "HTTP server listening");
        let server = Arc::new(server);
        let running = Arc::new(AtomicBool::new(true));
        let handler = {
            let server = server.clone();
            let running = running.clone();
            std::thread::Builder::new()
                .name("veer-http".into())
                .spawn(move || serve(&server, &metrics, &router, &running))
                .map_err(|error| anyhow::anyhow!("cannot start the HTTP thread: {error}"))?
        };
        Ok(HttpServer {
            server,
            address,
            handler: Some(handler),
            running,
        })
    }

    /// Returns the address the server listens on (the real port when 0 was requested).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Marks the workers as finished, so `/healthz` returns 503.
    pub fn set_finished(&self) {
        self.running.store(false, Ordering::Relaxed);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(handler) = self.handler.take() {
            let _ = handler.join();
        }
        tracing::info!(address = %self.address, "HTTP server stopped");
    }
}

fn serve(server: &Server, metrics: &Metrics, router: &QueryRouter, running: &AtomicBool) {
    for request in server.incoming_requests() {
        let started = Instant::now();
        let method = request.method().clone();
        let url = request.url().to_string();
        let response = route(&method, &url, metrics, router, running);
        let status = response.status;
        let reply = Response::from_string(response.body)
            .with_status_code(status)
            .with_header(content_type(response.content_type));
        if let Err(error) = request.respond(reply) {
            tracing::warn!(%error, %url, "failed to send an HTTP response");
        }
        tracing::debug!(%method, %url, status, micros = started.elapsed().as_micros() as u64, "HTTP request");
    }
}

/// A response before it is encoded.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string(),
        }
    }

    fn error(status: u16, message: String) -> Reply {
        Reply::json(status, serde_json::json!({ "error": message }))
    }
}

fn content_type(value: &'static str) -> Header {
    Header::from_bytes("Content-Type", value).expect("a static header is valid")
}

fn route(
    method: &Method,
    url: &str,
    metrics: &Metrics,
    router: &QueryRouter,
    running: &AtomicBool,
) -> Reply {
    let path = url.split('?').next().unwrap_or("");
    if *method != Method::Get {
        return Reply::error(405, format!("method {method} is not allowed; use GET"));
    }
    match path {
        "/metrics" => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.to_prometheus(),
        },
        "/healthz" if running.load(Ordering::Relaxed) => {
            Reply::json(200, serde_json::json!({ "status": "ok" }))
        }
        "/healthz" => Reply::json(503, serde_json::json!({ "status": "finished" })),
        _ => match path.strip_prefix("/users/") {
            Some(id) if !id.is_empty() && !id.contains('/') => user_profile(id, router),
            _ => Reply::error(
                404,
                format!("no such path {path}; use /metrics, /users/{{id}} or /healthz"),
            ),
        },
    }
}

fn user_profile(encoded_id: &str, router: &QueryRouter) -> Reply {
    let user = match requested_user(encoded_id) {
        Ok(user) => user,
        Err(message) => return Reply::error(400, message),
    };
    // The id as JSON writes it, so the text id "7" and the integer 7 read apart. `Id`'s serde
    // form is the checkpoint encoding (`{"Int":7}`), not this.
    let id = user.to_json().to_string();
    match router.query(user.clone(), QUERY_TIMEOUT) {
        Ok(Some(profile)) => match serde_json::to_value(&profile) {
            Ok(value) => Reply::json(200, value),
            Err(error) => {
                tracing::error!(%error, user = %id, "failed to encode a user profile");
                Reply::error(500, format!("failed to encode the profile: {error}"))
            }
        },
        Ok(None) => Reply::error(404, not_tracked_message(&user, &id)),
        Err(error @ QueryError::Remote { .. }) => Reply::error(421, error.to_string()),
        Err(error) => {
            tracing::warn!(%error, user = %id, "user query failed");
            Reply::error(503, error.to_string())
        }
    }
}

/// Returns the 404 message for `user`, written `id` in JSON. A query matches the stream's ids
/// exactly, so for a numeric id the message names the request of the other type, which may be
/// the one the input used.
fn not_tracked_message(user: &Id, id: &str) -> String {
    let other = match user.value() {
        IdValue::Int(value) => {
            format!("for the text id \"{value}\" request /users/%22{value}%22")
        }
        IdValue::Text(text) => match Id::parse_int(text) {
            Some(value) => format!("for the integer id {value} request /users/{value}"),
            None => return format!("user {id} is not tracked"),
        },
    };
    format!("user {id} is not tracked; {other}")
}

/// Parses the `{id}` of `/users/{id}`: canonical decimal digits are an integer id and other
/// text is a text id, as in the input formats. An id in double quotes (`%227%22`) is a JSON
/// string and always a text id, so a text id that looks like a number can be requested.
fn requested_user(encoded_id: &str) -> Result<Id, String> {
    let Some(id) = percent_decode(encoded_id) else {
        return Err(format!(
            "invalid percent-encoding in user id {encoded_id:?}"
        ));
    };
    let quoted = id.len() >= 2 && id.starts_with('"') && id.ends_with('"');
    if !quoted {
        return Ok(Id::from_field(&id));
    }
    serde_json::from_str::<String>(&id)
        .map(|text| Id::text(&text))
        .map_err(|error| {
            format!(
                "invalid quoted user id {id}: {error}; a quoted id is a JSON string, such as \
                 %227%22 for the text id \"7\""
            )
        })
}

/// Decodes `%XX` escapes; returns `None` for a malformed escape or invalid UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decode_handles_escapes() {
        assert_eq!(percent_decode("abc").as_deref(), Some("abc"));
        assert_eq!(percent_decode("a%20b%2F").as_deref(), Some("a b/"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
    }

    #[test]
    fn quoted_user_id_is_text() {
        assert_eq!(requested_user("7"), Ok(Id::int(7)));
        assert_eq!(requested_user("%227%22"), Ok(Id::text("7")));
        assert_eq!(requested_user("\"7\""), Ok(Id::text("7")));
        assert_eq!(requested_user("abc"), Ok(Id::text("abc")));
        assert_eq!(requested_user("007"), Ok(Id::text("007")));
        // A text id with quotes in it is written as a JSON string with escapes.
        assert_eq!(
            requested_user("%22%5C%22x%5C%22%22"),
            Ok(Id::text("\"x\""))
        );
        // A single quote character is not a quoted id.
        assert_eq!(requested_user("%22"), Ok(Id::text("\"")));
    }

    #[test]
    fn not_tracked_message_names_other_form() {
        let integer = not_tracked_message(&Id::int(7), "7");
        assert!(integer.contains("/users/%227%22"), "{integer}");
        let text = not_tracked_message(&Id::text("7"), "\"7\"");
        assert!(text.contains("/users/7"), "{text}");
        let word = not_tracked_message(&Id::text("abc"), "\"abc\"");
        assert_eq!(word, "user \"abc\" is not tracked");
    }

    #[test]
    fn invalid_quoted_user_id_is_rejected() {
        let error = requested_user("%22a%5Cq%22").unwrap_err();
        assert!(error.contains("invalid quoted user id"), "{error}");
        assert!(requested_user("%zz").unwrap_err().contains("percent-encoding"));
    }

    #[test]
    fn routes_reject_unknown_paths_and_methods() {
        let metrics = Metrics::default();
        let router = QueryRouter::new(1, 0, 1);
        let running = AtomicBool::new(true);
        let get = |path: &str| route(&Method::Get, path, &metrics, &router, &running);
        assert_eq!(get("/metrics").status, 200);
        assert_eq!(get("/healthz").status, 200);
        assert_eq!(get("/nothing").status, 404);
        assert_eq!(get("/users/").status, 404);
        assert_eq!(get("/users/1/2").status, 404);
        let post = route(&Method::Post, "/metrics", &metrics, &router, &running);
        assert_eq!(post.status, 405);
        running.store(false, Ordering::Relaxed);
        assert_eq!(get("/healthz").status, 503);
    }
}
