//! Where delivered events go: an HTTP endpoint, a JSON-lines file, or standard output.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};

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
    File(FileSink),
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
            SinkConfig::File { path, sync } => {
                let file = open_append(path).await?;
                let len = file.metadata()?.len();
                Sink::File(FileSink {
                    file: Arc::new(file),
                    written: std::sync::Mutex::new(Written { lines: 0, len }),
                    synced: tokio::sync::Mutex::new(0),
                    sync: *sync,
                    syncs: AtomicU64::new(0),
                    #[cfg(test)]
                    fail_next_write: std::sync::atomic::AtomicBool::new(false),
                    #[cfg(test)]
                    fail_next_sync: std::sync::atomic::AtomicBool::new(false),
                })
            }
            SinkConfig::Stdout => Sink::Stdout,
        })
    }

    /// One delivery attempt (`attempt` counts from 1).
    pub async fn deliver(&self, topic: &str, e: &StoredEvent, attempt: u32) -> Attempt {
        match self {
            Sink::Http { client, url } => http(client, url, topic, e, attempt).await,
            Sink::File(file) => file.deliver(topic, e),
            Sink::Stdout => write_line(&mut std::io::stdout().lock(), topic, e),
        }
    }

    /// Completes once what this sink was given so far will survive a crash of the machine: at
    /// once for HTTP (the endpoint answered) and stdout, after a sync for a synced file. Awaited
    /// after a delivery and before its ack, apart from it, so the concurrency limit measures the
    /// sink's answer and not the wait for a shared sync. After an error the lines may be lost
    /// (the kernel may already have dropped them): the event must be delivered again.
    pub async fn durable(&self) -> std::io::Result<()> {
        match self {
            Sink::File(file) => file.durable().await,
            Sink::Http { .. } | Sink::Stdout => Ok(()),
        }
    }

    /// Makes a file sink's next sync fail, for tests of what delivery does then.
    #[cfg(test)]
    pub fn fail_next_sync(&self) {
        if let Sink::File(file) = self {
            file.fail_next_sync.store(true, Ordering::Relaxed);
        }
    }
}

/// A file of JSON lines. Each line is one short append to the page cache, written in place
/// (a hop to tokio's blocking pool per event costs more than the write; the file is opened
/// `O_APPEND`, unbuffered, so each line is one write call). With `sync`, [`Sink::durable`] then
/// waits until a sync covers the line: the first to wait syncs for every line written so far, and
/// those behind it find theirs covered (group commit, as the store does).
#[derive(Debug)]
pub struct FileSink {
    file: Arc<std::fs::File>,
    /// What was written; the lock also keeps lines whole when deliveries run at once.
    written: std::sync::Mutex<Written>,
    /// Lines known to be on disk; held while a sync runs.
    synced: tokio::sync::Mutex<u64>,
    sync: bool,
    /// Syncs made.
    syncs: AtomicU64,
    /// Makes the next write stop half-way and fail, for tests of that path.
    #[cfg(test)]
    fail_next_write: std::sync::atomic::AtomicBool,
    /// Makes the next sync fail, for tests of that path.
    #[cfg(test)]
    fail_next_sync: std::sync::atomic::AtomicBool,
}

/// What a file sink has written.
#[derive(Debug)]
struct Written {
    /// Lines.
    lines: u64,
    /// The file's length after them.
    len: u64,
}

impl FileSink {
    fn deliver(&self, topic: &str, e: &StoredEvent) -> Attempt {
        let line = json_line(topic, e);
        let mut written = self.written.locked();
        match self.append(&line) {
            Ok(()) => {
                written.lines += 1;
                written.len += line.len() as u64;
                Attempt::Delivered
            }
            Err(err) => {
                // A write that failed part-way (a full disk) leaves the start of the line: cut it
                // off, so the file holds whole lines and the retry's line starts on its own.
                let _ = self.file.set_len(written.len);
                Attempt::Retry {
                    after: None,
                    error: format!("write failed: {err}"),
                }
            }
        }
    }

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_next_write.swap(false, Ordering::Relaxed) {
            (&*self.file).write_all(&line[..line.len() / 2])?;
            return Err(std::io::Error::other("disk full (injected)"));
        }
        (&*self.file).write_all(line)
    }

    async fn durable(&self) -> std::io::Result<()> {
        if !self.sync {
            return Ok(());
        }
        let mine = self.written.locked().lines;
        let mut synced = self.synced.lock().await;
        if *synced >= mine {
            return Ok(());
        }
        let upto = self.written.locked().lines;
        #[cfg(test)]
        if self.fail_next_sync.swap(false, Ordering::Relaxed) {
            return Err(std::io::Error::other("sync failed (injected)"));
        }
        let file = self.file.clone();
        self.syncs.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))?;
        *synced = upto;
        Ok(())
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
/// is UTF-8, else as hex. Keys in alphabetical order.
///
/// A JSON body already on one line is copied in as it is, once checked to be JSON: parsing it into
/// a tree and printing that again was most of the line's cost. Any other body goes through
/// `serde_json`, which also puts a JSON body spread over several lines onto one.
pub fn json_line(topic: &str, e: &StoredEvent) -> Vec<u8> {
    let body = &e.event.body;
    let is_json = e.event.content_type.starts_with("application/json");
    let one_line = !body.iter().any(|b| matches!(b, b'\n' | b'\r'));
    let mut line = Vec::with_capacity(body.len() + e.event.content_type.len() + topic.len() + 96);
    put(&mut line, "accepted_ms", &e.event.accepted_ms);
    if is_json && one_line && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        key(&mut line, "body");
        line.extend_from_slice(body);
    } else {
        let parsed = is_json
            .then(|| serde_json::from_slice::<serde_json::Value>(body).ok())
            .flatten();
        match (parsed, std::str::from_utf8(body)) {
            (Some(j), _) => put(&mut line, "body", &j),
            (None, Ok(text)) => put(&mut line, "body_text", text),
            (None, Err(_)) => {
                let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
                put(&mut line, "body_hex", &hex);
            }
        }
    }
    put(&mut line, "content_type", &e.event.content_type);
    put(&mut line, "id", &e.seq.to_string());
    put(&mut line, "priority", e.event.priority.as_str());
    put(&mut line, "topic", topic);
    line.extend_from_slice(b"}\n");
    line
}

/// Starts the next member of the object being written into `line`: `{` or `,`, then the key.
fn key(line: &mut Vec<u8>, key: &str) {
    line.push(if line.is_empty() { b'{' } else { b',' });
    line.push(b'"');
    line.extend_from_slice(key.as_bytes());
    line.extend_from_slice(b"\":");
}

/// One member of the object being written into `line`.
fn put<T: serde::Serialize + ?Sized>(line: &mut Vec<u8>, name: &str, value: &T) {
    key(line, name);
    // Writing to a Vec fails only for a value that cannot be JSON, which none here is.
    let _ = serde_json::to_writer(&mut *line, value);
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::NewEvent;

    /// The line as a tree of values, built the plain way: what [`json_line`] must match.
    fn model(topic: &str, e: &StoredEvent) -> serde_json::Value {
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
        v
    }

    fn event(seq: u64, content_type: &str, body: &[u8]) -> StoredEvent {
        StoredEvent {
            seq,
            event: NewEvent {
                content_type: content_type.to_owned(),
                body: body.to_vec(),
                priority: floodway::Priority::High,
                deadline_ms: None,
                idempotency_key: None,
                accepted_ms: 1_700_000_000_123,
            },
        }
    }

    /// Deliveries that wait for their lines to be durable while a sync runs are all covered by
    /// the next one: ten lines, one sync, and every line in the file whole.
    #[tokio::test]
    async fn lines_written_during_a_sync_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let config = SinkConfig::File {
            path: path.clone(),
            sync: true,
        };
        let sink = Arc::new(Sink::open(&config).await.unwrap());
        let Sink::File(file) = &*sink else {
            unreachable!("a file sink")
        };
        let running = file.synced.lock().await; // as if a sync were under way
        let deliveries: Vec<_> = (0..10)
            .map(|i| {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let e = event(i, "application/json", b"{}");
                    assert_eq!(sink.deliver("t", &e, 1).await, Attempt::Delivered);
                    sink.durable().await
                })
            })
            .collect();
        while file.written.locked().lines < 10 {
            tokio::task::yield_now().await;
        }
        drop(running);
        for d in deliveries {
            d.await.unwrap().unwrap();
        }
        assert_eq!(file.syncs.load(Ordering::Relaxed), 1);
        let out = std::fs::read_to_string(&path).unwrap();
        assert_eq!(out.lines().count(), 10);
        for line in out.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        // Without sync, a delivery never waits for one.
        let config = SinkConfig::File { path, sync: false };
        let Sink::File(unsynced) = Sink::open(&config).await.unwrap() else {
            unreachable!("a file sink")
        };
        let delivered = unsynced.deliver("t", &event(11, "text/plain", b"x"));
        assert_eq!(delivered, Attempt::Delivered);
        unsynced.durable().await.unwrap();
        assert_eq!(unsynced.syncs.load(Ordering::Relaxed), 0);
    }

    /// A write that fails half-way leaves no fragment: the retry's line follows the last whole
    /// one, and every line of the file parses.
    #[tokio::test]
    async fn a_line_that_failed_half_way_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"before\":true}\n").unwrap();
        let config = SinkConfig::File {
            path: path.clone(),
            sync: false,
        };
        let Sink::File(file) = Sink::open(&config).await.unwrap() else {
            unreachable!("a file sink")
        };
        let e = event(7, "application/json", br#"{"n":7}"#);
        file.fail_next_write.store(true, Ordering::Relaxed);
        assert!(matches!(file.deliver("t", &e), Attempt::Retry { .. }));
        assert_eq!(file.deliver("t", &e), Attempt::Delivered);
        let out = std::fs::read_to_string(&path).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        for line in out.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn a_line_holds_the_event_on_one_line_whatever_its_body() {
        let cases: [(&str, &[u8]); 9] = [
            ("application/json", br#"{"order":17,"items":["a","b"]}"#),
            (
                "application/json; charset=utf-8",
                br#" { "spaced" : [1, 2.5, null] } "#,
            ),
            ("application/json", b"{\n  \"pretty\": \"yes\"\n}\n"),
            ("application/json", br#""just a string with \" and \\n""#),
            ("application/json", b"[1,2,3]"),
            ("application/json", b"{not json"),
            ("text/plain", "caf\u{e9} \"quoted\"\nline two".as_bytes()),
            ("application/octet-stream", &[0xff, 0x00, 0x10]),
            ("text/x-\"odd\"", b""),
        ];
        for (i, (content_type, body)) in cases.into_iter().enumerate() {
            let e = event(40 + i as u64, content_type, body);
            let line = json_line("orders", &e);
            let text = String::from_utf8(line.clone()).unwrap();
            assert!(text.ends_with('\n'), "{text}");
            assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
            let got: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(got, model("orders", &e), "case {i}: {text}");
        }
    }
}
