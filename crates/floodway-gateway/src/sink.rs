//! Where delivered events go: an HTTP endpoint, a JSON-lines file, or standard output.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::json;

use crate::Locked;
use crate::config::SinkConfig;
use crate::store::StoredEvent;

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The sink took it.
    Delivered,
    /// The sink is overloaded or failing: try again, no sooner than `after` if it said so.
    Retry {
        /// The sink's own `Retry-After`, if it sent one.
        after: Option<Duration>,
        /// What went wrong.
        error: String,
    },
    /// The sink refused this event for good.
    Permanent {
        /// What went wrong.
        error: String,
    },
}

/// A topic's sink.
#[derive(Debug)]
pub enum Sink {
    /// `POST` to a URL.
    Http {
        /// Shared connection pool.
        client: reqwest::Client,
        /// The endpoint.
        url: String,
    },
    /// Append JSON lines to a file.
    File(std::sync::Mutex<std::fs::File>),
    /// Print JSON lines.
    Stdout,
}

impl Sink {
    /// Builds the sink; a file sink creates its directory and opens its file for appending.
    pub async fn open(config: &SinkConfig) -> std::io::Result<Sink> {
        Ok(match config {
            SinkConfig::Http { url, timeout } => Sink::Http {
                client: reqwest::Client::builder()
                    .timeout(timeout.0)
                    .pool_max_idle_per_host(256)
                    .build()
                    .map_err(std::io::Error::other)?,
                url: url.clone(),
            },
            SinkConfig::File { path } => {
                Sink::File(std::sync::Mutex::new(open_append(path).await?))
            }
            SinkConfig::Stdout => Sink::Stdout,
        })
    }

    /// One delivery attempt (`attempt` counts from 1).
    pub async fn deliver(&self, topic: &str, e: &StoredEvent, attempt: u32) -> Attempt {
        match self {
            Sink::Http { client, url } => http(client, url, topic, e, attempt).await,
            // One short append to the page cache: written in place, since a hop to tokio's
            // blocking pool per event costs more than the write (the file is opened O_APPEND,
            // unbuffered, so each line is one write call).
            Sink::File(file) => write_line(&mut *file.locked(), topic, e),
            Sink::Stdout => write_line(&mut std::io::stdout().lock(), topic, e),
        }
    }
}

async fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

async fn http(
    client: &reqwest::Client,
    url: &str,
    topic: &str,
    e: &StoredEvent,
    attempt: u32,
) -> Attempt {
    let mut req = client
        .post(url)
        .header(CONTENT_TYPE, &e.event.content_type)
        .header("Floodway-Event-Id", e.seq.to_string())
        .header("Floodway-Topic", topic)
        .header("Floodway-Attempt", attempt.to_string())
        .header("Floodway-Accepted-At", e.event.accepted_ms.to_string())
        .body(e.event.body.clone());
    if let Some(key) = &e.event.idempotency_key {
        req = req.header("Idempotency-Key", key);
    }
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Attempt::Delivered,
        Ok(resp) => {
            let status = resp.status();
            let after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let error = format!("sink answered {status}");
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                Attempt::Retry { after, error }
            } else {
                Attempt::Permanent { error }
            }
        }
        Err(err) => Attempt::Retry {
            after: None,
            error: if err.is_timeout() {
                "sink timed out".to_owned()
            } else {
                format!("sink unreachable: {err}")
            },
        },
    }
}

/// The JSON line a file or stdout sink writes: the body inline when it is JSON, as text when it
/// is UTF-8, else as hex.
pub fn json_line(topic: &str, e: &StoredEvent) -> Vec<u8> {
    let body = &e.event.body;
    let mut v = json!({
        "id": e.seq.to_string(),
        "topic": topic,
        "accepted_ms": e.event.accepted_ms,
        "content_type": e.event.content_type,
        "priority": e.event.priority.as_str(),
    });
    let parsed = e
        .event
        .content_type
        .starts_with("application/json")
        .then(|| serde_json::from_slice::<serde_json::Value>(body).ok())
        .flatten();
    match (parsed, std::str::from_utf8(body)) {
        (Some(j), _) => v["body"] = j,
        (None, Ok(text)) => v["body_text"] = json!(text),
        (None, Err(_)) => {
            v["body_hex"] = json!(body.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    }
    let mut line = serde_json::to_vec(&v).unwrap_or_default();
    line.push(b'\n');
    line
}

fn write_line<W: std::io::Write>(w: &mut W, topic: &str, e: &StoredEvent) -> Attempt {
    let line = json_line(topic, e);
    match w.write_all(&line).and_then(|()| w.flush()) {
        Ok(()) => Attempt::Delivered,
        Err(err) => Attempt::Retry {
            after: None,
            error: format!("write failed: {err}"),
        },
    }
}
