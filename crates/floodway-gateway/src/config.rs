//! The gateway's configuration: TOML, unknown keys refused, durations like `"250ms"`, sizes like
//! `"256MiB"`. Every error names where it is.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as text (`"250ms"`, `"2s"`, `"1m 30s"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

/// A size in bytes, written as a number or as text (`"256MiB"`, `"64 KB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Size(n)),
            Raw::Text(t) => t
                .parse::<bytesize::ByteSize>()
                .map(|b| Size(b.as_u64()))
                .map_err(|e| serde::de::Error::custom(format!("invalid size {t:?}: {e}"))),
        }
    }
}

/// When an accepted event is on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Every request is committed and synced on its own before its `202`.
    Always,
    /// Group commit: concurrent requests share one synced commit; each `202` waits for it.
    #[default]
    Batch,
    /// No sync: fastest, and a machine crash (not a process crash) can lose acknowledged events.
    Never,
}

/// `[storage]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The sync policy (default `batch`).
    #[serde(default)]
    pub fsync: Fsync,
}

/// Where a topic's events are delivered.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// `POST` each event to `url`.
    Http {
        /// The endpoint.
        url: String,
        /// Per-attempt timeout (default 10 s).
        #[serde(default = "default_http_timeout")]
        timeout: Dur,
    },
    /// Append each event as one JSON line to `path`.
    File {
        /// The file.
        path: PathBuf,
    },
    /// Print each event as one JSON line.
    Stdout,
}

fn default_http_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// `retry = { max_attempts, base, max }`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts before an event is dead-lettered (default 8).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The first backoff (default 100 ms); it doubles per attempt, with jitter.
    #[serde(default = "default_retry_base")]
    pub base: Dur,
    /// The longest backoff (default 30 s).
    #[serde(default = "default_retry_max")]
    pub max: Dur,
}

fn default_attempts() -> u32 {
    8
}
fn default_retry_base() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_retry_max() -> Dur {
    Dur(Duration::from_secs(30))
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: default_attempts(),
            base: default_retry_base(),
            max: default_retry_max(),
        }
    }
}

/// `{ per_second, burst }`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained rate.
    pub per_second: u32,
    /// Burst (default: one second's worth).
    pub burst: Option<u32>,
}

/// The adaptive concurrency algorithm for delivery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Loss-based.
    Aimd,
    /// Delay-based, keeps a small queue at the sink (default).
    #[default]
    Vegas,
    /// Delay-based, gradient of RTTs.
    Gradient2,
    /// `max`, never changing.
    Fixed,
}

/// `concurrency = { algorithm, min, max }`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Default `vegas`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Default 1.
    #[serde(default = "one")]
    pub min: usize,
    /// Default 64.
    #[serde(default = "sixty_four")]
    pub max: usize,
}

fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn sixty_four() -> usize {
    64
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            algorithm: Algorithm::default(),
            min: 1,
            max: 64,
        }
    }
}

/// `workers = { min, max }`: the elastic delivery pool.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workers {
    /// Default 4: enough to find a sink's pace quickly at start.
    #[serde(default = "four")]
    pub min: usize,
    /// Default 64.
    #[serde(default = "sixty_four")]
    pub max: usize,
}

impl Default for Workers {
    fn default() -> Self {
        Workers { min: 4, max: 64 }
    }
}

/// `shed = { max_age }`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shed {
    /// Events older than this when their turn comes are dead-lettered as shed.
    pub max_age: Option<Dur>,
}

/// `[topics.<name>]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Where events go (default: a file sink at `<data_dir>/out/<topic>.jsonl`).
    pub sink: Option<SinkConfig>,
    /// Backlog bound in events (default 100 000).
    #[serde(default = "default_backlog_events")]
    pub max_backlog_events: u64,
    /// Backlog bound in bytes (default 256 MiB).
    #[serde(default = "default_backlog_bytes")]
    pub max_backlog_bytes: Size,
    /// The largest event (default 1 MiB).
    #[serde(default = "default_event_bytes")]
    pub max_event_bytes: Size,
    /// Delivery retries.
    #[serde(default)]
    pub retry: Retry,
    /// Delivery rate limit (default none).
    pub rate_limit: Option<Rate>,
    /// Delivery concurrency.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Delivery workers.
    #[serde(default)]
    pub workers: Workers,
    /// Shedding by age.
    #[serde(default)]
    pub shed: Shed,
    /// Ingest quota per producer key (default none).
    pub producers: Option<Rate>,
}

fn default_backlog_events() -> u64 {
    100_000
}
fn default_backlog_bytes() -> Size {
    Size(256 << 20)
}
fn default_event_bytes() -> Size {
    Size(1 << 20)
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            sink: None,
            max_backlog_events: default_backlog_events(),
            max_backlog_bytes: default_backlog_bytes(),
            max_event_bytes: default_event_bytes(),
            retry: Retry::default(),
            rate_limit: None,
            concurrency: Concurrency::default(),
            workers: Workers::default(),
            shed: Shed::default(),
            producers: None,
        }
    }
}

/// How the gateway handles overload. Only `floodway` is meant for use; the others exist so
/// `floodway bench` can show, side by side, what the naive designs do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Durable bounded backlog, watermarks with `429`/`503` + `Retry-After`, adaptive delivery.
    #[default]
    Floodway,
    /// Durable bounded backlog and its signals, but static delivery limits: `concurrency.max`
    /// permits, delivery rate fixed at `rate_limit` (or unlimited), no adaptation.
    Fixed,
    /// Accept everything into an unbounded in-memory queue, always `202`: memory and latency grow
    /// without limit, and a crash loses everything.
    Unbounded,
    /// A bounded in-memory queue that drops the newest event when full and still answers `202`:
    /// no signal upstream, silent loss.
    Drop,
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen address (default `127.0.0.1:7070`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Data directory (default `./floodway-data`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Storage settings.
    #[serde(default)]
    pub storage: Storage,
    /// Overload strategy (default `floodway`; the others are for comparisons).
    #[serde(default)]
    pub strategy: Strategy,
    /// Declared topics. When there are none, topics are created on first use.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./floodway-data")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            data_dir: default_data_dir(),
            storage: Storage::default(),
            strategy: Strategy::default(),
            topics: BTreeMap::new(),
        }
    }
}

/// A configuration error with where it is.
#[derive(Debug)]
pub struct ConfigError {
    /// The file, if the configuration came from one.
    pub file: Option<PathBuf>,
    /// What is wrong and where (TOML errors carry line and column; checks name the key path).
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => write!(f, "{}: {}", p.display(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// True for names made of `[A-Za-z0-9._-]`, 1 to 128 characters.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: Some(path.to_owned()),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let config: Config = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        config.check().map_err(err)?;
        Ok(config)
    }

    /// Checks what the types cannot: names, bounds, orderings. Errors name the key path.
    pub fn check(&self) -> Result<(), String> {
        for (name, t) in &self.topics {
            let at = |key: &str| format!("topics.{name}.{key}");
            if !valid_topic_name(name) {
                return Err(format!(
                    "topics.{name}: a topic name is 1-128 characters of letters, digits, '.', '_' or '-'"
                ));
            }
            if t.max_backlog_events == 0 {
                return Err(format!("{}: must be at least 1", at("max_backlog_events")));
            }
            if t.max_backlog_bytes.0 == 0 || t.max_event_bytes.0 == 0 {
                return Err(format!(
                    "{}: byte bounds must be at least 1",
                    at("max_backlog_bytes / max_event_bytes")
                ));
            }
            if t.max_event_bytes.0 > t.max_backlog_bytes.0 {
                return Err(format!(
                    "{}: {} is larger than max_backlog_bytes ({}): such an event could never be accepted",
                    at("max_event_bytes"),
                    t.max_event_bytes.0,
                    t.max_backlog_bytes.0
                ));
            }
            if t.concurrency.min == 0 || t.concurrency.min > t.concurrency.max {
                return Err(format!("{}: need 1 <= min <= max", at("concurrency")));
            }
            if t.workers.min > t.workers.max || t.workers.max == 0 {
                return Err(format!("{}: need min <= max and max >= 1", at("workers")));
            }
            if t.retry.max_attempts == 0 {
                return Err(format!("{}: must be at least 1", at("retry.max_attempts")));
            }
            for (key, rate) in [("rate_limit", t.rate_limit), ("producers", t.producers)] {
                if let Some(r) = rate {
                    if r.per_second == 0 || r.burst == Some(0) {
                        return Err(format!(
                            "{}: per_second and burst must be at least 1",
                            at(key)
                        ));
                    }
                }
            }
            if let Some(SinkConfig::Http { url, .. }) = &t.sink {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        "{}: url must start with http:// or https://",
                        at("sink.url")
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_example_and_refuses_unknown_keys() {
        let example = include_str!("../../../floodway.example.toml");
        let c: Config = toml::from_str(example).unwrap();
        c.check().unwrap();
        assert!(c.topics.contains_key("orders"));
        let bad = toml::from_str::<Config>("[topics.a]\nmax_backlog_event = 3\n").unwrap_err();
        let text = bad.to_string();
        assert!(text.contains("unknown field `max_backlog_event`"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn checks_name_the_key() {
        let c: Config = toml::from_str("[topics.a]\nconcurrency = { min = 5, max = 2 }\n").unwrap();
        assert_eq!(
            c.check().unwrap_err(),
            "topics.a.concurrency: need 1 <= min <= max"
        );
        let d: Config = toml::from_str(
            "[topics.a]\nmax_event_bytes = \"2MiB\"\nmax_backlog_bytes = \"1MiB\"\n",
        )
        .unwrap();
        assert!(
            d.check()
                .unwrap_err()
                .starts_with("topics.a.max_event_bytes")
        );
    }
}
