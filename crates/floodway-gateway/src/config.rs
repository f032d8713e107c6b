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
    /// Every request's events are written to the write-ahead log and synced on their own before
    /// its `202`.
    Always,
    /// Group commit: concurrent requests share one synced write of the write-ahead log; each `202`
    /// waits for it.
    #[default]
    Batch,
    /// No sync before the `202`: events are written to the log and the store syncs every
    /// 250 ms. A machine crash (not a process crash) can lose the last 250 ms of acknowledged events.
    Never,
}

/// Where accepted events are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded store in the data directory: one process owns it.
    #[default]
    Embedded,
    /// NATS JetStream: every topic is a stream that several gateways share.
    Nats,
}

/// `[storage]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The backend (default `embedded`).
    #[serde(default)]
    pub backend: Backend,
    /// The sync policy of the embedded store (default `batch`). JetStream has its own.
    #[serde(default)]
    pub fsync: Fsync,
    /// How long an ingest request waits for the store to confirm its write (default 10 s). Past
    /// it the producer gets `503` saying the events may still be stored, and new requests get
    /// `503` until the store has answered for it.
    #[serde(default = "default_write_timeout")]
    pub write_timeout: Dur,
    /// The NATS settings, for `backend = "nats"`.
    #[serde(default)]
    pub nats: NatsConfig,
}

/// `[storage.nats]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs, comma-separated (default `nats://127.0.0.1:4222`).
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password, with `user`.
    pub password: Option<String>,
    /// An authentication token, instead of user and password.
    pub token: Option<String>,
    /// How long a publish or a JetStream request may take before the producer is told `503`
    /// (default 5 s).
    #[serde(default = "default_nats_timeout")]
    pub request_timeout: Dur,
    /// How long a worker may hold an event before another one gets it (default 30 s). Longer than
    /// the sink's timeout, or slow deliveries are duplicated.
    #[serde(default = "default_ack_wait")]
    pub ack_wait: Dur,
    /// Stream defaults for every topic; `[topics.<name>.stream]` overrides them.
    #[serde(default)]
    pub stream: StreamConfig,
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
impl Default for Storage {
    fn default() -> Self {
        Storage {
            backend: Backend::default(),
            fsync: Fsync::default(),
            write_timeout: default_write_timeout(),
            nats: NatsConfig::default(),
        }
    }
}

fn default_write_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_nats_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_ack_wait() -> Dur {
    Dur(Duration::from_secs(30))
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: default_nats_url(),
            user: None,
            password: None,
            token: None,
            request_timeout: default_nats_timeout(),
            ack_wait: default_ack_wait(),
            stream: StreamConfig::default(),
        }
    }
}

/// A topic's JetStream stream. Unset limits follow the topic's backlog bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Copies kept by a JetStream cluster (default 1; use 3 in production).
    pub replicas: Option<usize>,
    /// Most events in the stream (default: the topic's `max_backlog_events`).
    pub max_msgs: Option<u64>,
    /// Most bytes in the stream (default: the topic's `max_backlog_bytes`).
    pub max_bytes: Option<Size>,
    /// Events older than this are removed by JetStream itself, without a dead letter (default:
    /// never; prefer `shed.max_age`, which dead-letters).
    pub max_age: Option<Dur>,
}

impl StreamConfig {
    /// `self`, with unset fields taken from `defaults`.
    pub fn or(self, defaults: StreamConfig) -> StreamConfig {
        StreamConfig {
            replicas: self.replicas.or(defaults.replicas),
            max_msgs: self.max_msgs.or(defaults.max_msgs),
            max_bytes: self.max_bytes.or(defaults.max_bytes),
            max_age: self.max_age.or(defaults.max_age),
        }
    }
}

/// What a `floodway serve` process does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accept and deliver.
    #[default]
    Both,
    /// Only accept events (no delivery).
    Ingest,
    /// Only deliver (ingest answers `421`).
    Worker,
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
        /// Whether a line is on disk (`fdatasync`, shared by the deliveries waiting at the time)
        /// before its event counts as delivered and leaves the store (default true). Without it
        /// a line is only in the page cache: it survives the gateway's crash, not the machine's.
        #[serde(default = "default_true")]
        sync: bool,
    },
    /// Print each event as one JSON line.
    Stdout,
}

fn default_true() -> bool {
    true
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
    /// Dead letters kept, at most (default 100 000). When the dead-letter store is full, an event
    /// due to be dead-lettered waits in the backlog until a replay or a purge makes room.
    #[serde(default = "default_dead_letters")]
    pub max_dead_letters: u64,
    /// Bytes of dead letters kept, at most (default 1 GiB).
    #[serde(default = "default_dead_letter_bytes")]
    pub max_dead_letter_bytes: Size,
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
    /// The topic's stream, with `backend = "nats"`.
    #[serde(default)]
    pub stream: StreamConfig,
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
fn default_dead_letters() -> u64 {
    100_000
}
fn default_dead_letter_bytes() -> Size {
    Size(1 << 30)
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            sink: None,
            max_backlog_events: default_backlog_events(),
            max_backlog_bytes: default_backlog_bytes(),
            max_event_bytes: default_event_bytes(),
            max_dead_letters: default_dead_letters(),
            max_dead_letter_bytes: default_dead_letter_bytes(),
            retry: Retry::default(),
            rate_limit: None,
            concurrency: Concurrency::default(),
            workers: Workers::default(),
            shed: Shed::default(),
            producers: None,
            stream: StreamConfig::default(),
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
    /// Client connections open at once, at most (default 1024). At the cap the gateway stops
    /// accepting until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A client connection with nothing read or written for this long is closed (default 60 s).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// A request's head (request line and headers) must have arrived whole this long after its
    /// first byte (default 30 s), or the connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Dur,
    /// A request body must have arrived whole this long after its handler started reading it
    /// (default 30 s); a slower one gets `408` and stores nothing.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Dur,
    /// Storage settings.
    #[serde(default)]
    pub storage: Storage,
    /// What this process does (default `both`; `ingest` and `worker` need the nats backend).
    #[serde(default)]
    pub role: Role,
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
fn default_max_connections() -> usize {
    1024
}
fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_header_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_body_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            data_dir: default_data_dir(),
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            storage: Storage::default(),
            role: Role::default(),
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
        if self.max_connections == 0 {
            return Err("max_connections: must be at least 1".into());
        }
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("storage.write_timeout", self.storage.write_timeout),
        ] {
            if d.0.is_zero() {
                return Err(format!("{key}: must be more than 0"));
            }
        }
        if self.role != Role::Both && self.storage.backend != Backend::Nats {
            return Err(
                "role: ingest and worker processes share a backlog, which needs storage.backend = \"nats\""
                    .into(),
            );
        }
        if self.storage.backend == Backend::Nats {
            if self.strategy != Strategy::Floodway && self.strategy != Strategy::Fixed {
                return Err(
                    "strategy: the in-memory comparison strategies have no nats backend".into(),
                );
            }
            let n = &self.storage.nats;
            if n.url.split(',').any(|u| u.trim().is_empty()) {
                return Err("storage.nats.url: a comma-separated list of server URLs".into());
            }
            if n.user.is_some() != n.password.is_some() {
                return Err("storage.nats: user and password go together".into());
            }
            for (name, t) in std::iter::once(("storage.nats.stream".to_owned(), n.stream)).chain(
                self.topics
                    .iter()
                    .map(|(k, t)| (format!("topics.{k}.stream"), t.stream)),
            ) {
                if t.replicas.is_some_and(|r| r == 0 || r > 5) {
                    return Err(format!("{name}.replicas: JetStream keeps 1 to 5 copies"));
                }
                if t.max_msgs == Some(0) || t.max_bytes.is_some_and(|b| b.0 == 0) {
                    return Err(format!("{name}: limits must be at least 1"));
                }
            }
        }
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
            for (bound, max, what) in [
                ("max_backlog_bytes", t.max_backlog_bytes.0, "accepted"),
                (
                    "max_dead_letter_bytes",
                    t.max_dead_letter_bytes.0,
                    "dead-lettered",
                ),
            ] {
                if t.max_event_bytes.0 > max {
                    return Err(format!(
                        "{}: {} is larger than {bound} ({max}): such an event could never be {what}",
                        at("max_event_bytes"),
                        t.max_event_bytes.0,
                    ));
                }
            }
            if t.max_dead_letters == 0 {
                return Err(format!("{}: must be at least 1", at("max_dead_letters")));
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
        let nats: Config =
            toml::from_str(include_str!("../../../floodway.nats.example.toml")).unwrap();
        nats.check().unwrap();
        assert_eq!(nats.storage.backend, Backend::Nats);
        let bad = toml::from_str::<Config>("[topics.a]\nmax_backlog_event = 3\n").unwrap_err();
        let text = bad.to_string();
        assert!(text.contains("unknown field `max_backlog_event`"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn roles_and_the_nats_backend_are_checked() {
        let worker: Config = toml::from_str("role = \"worker\"\n").unwrap();
        assert!(worker.check().unwrap_err().contains("storage.backend"));
        let nats: Config = toml::from_str(
            "role = \"worker\"\n[storage]\nbackend = \"nats\"\n[storage.nats]\nurl = \"nats://a:1,nats://b:2\"\n\
             stream = { replicas = 3 }\n[topics.a]\nstream = { max_msgs = 10 }\n",
        )
        .unwrap();
        nats.check().unwrap();
        let s = nats.topics["a"].stream.or(nats.storage.nats.stream);
        assert_eq!((s.replicas, s.max_msgs), (Some(3), Some(10)));
        let bad: Config = toml::from_str(
            "[storage]\nbackend = \"nats\"\n[topics.a]\nstream = { replicas = 0 }\n",
        )
        .unwrap();
        assert_eq!(
            bad.check().unwrap_err(),
            "topics.a.stream.replicas: JetStream keeps 1 to 5 copies"
        );
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
        let e: Config = toml::from_str("max_connections = 0\n").unwrap();
        assert_eq!(
            e.check().unwrap_err(),
            "max_connections: must be at least 1"
        );
        let f: Config = toml::from_str("idle_timeout = \"0s\"\n").unwrap();
        assert_eq!(f.check().unwrap_err(), "idle_timeout: must be more than 0");
        let g: Config = toml::from_str("[storage]\nwrite_timeout = \"0s\"\n").unwrap();
        assert_eq!(
            g.check().unwrap_err(),
            "storage.write_timeout: must be more than 0"
        );
        let h: Config = toml::from_str("[topics.a]\nmax_dead_letters = 0\n").unwrap();
        assert_eq!(
            h.check().unwrap_err(),
            "topics.a.max_dead_letters: must be at least 1"
        );
        let i: Config = toml::from_str("[topics.a]\nmax_dead_letter_bytes = \"1KiB\"\n").unwrap();
        assert!(
            i.check()
                .unwrap_err()
                .contains("is larger than max_dead_letter_bytes (1024)")
        );
    }
}
