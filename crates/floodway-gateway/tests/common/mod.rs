//! Helpers for the end-to-end tests: real processes of the `floodway` binary on loopback ports.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `floodway` process; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its base URL, from its first line of output.
    pub url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `floodway ARGS` and waits (at most 30 s) for its first stdout line: the address.
pub fn spawn(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodway"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the floodway binary starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the process prints its address");
    let url = first
        .split_whitespace()
        .last()
        .expect("an address")
        .trim_end_matches('/')
        .to_owned();
    Proc { child, url }
}

/// Sends SIGTERM to `p` (a graceful stop).
pub fn sigterm(p: &Proc) {
    let status = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A sink-sim with these extra arguments.
pub fn sink(extra: &[&str]) -> Proc {
    let mut args = vec!["sink-sim", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    spawn(&args)
}

/// A gateway on `data_dir` with this configuration text.
pub fn gateway(data_dir: &Path, config: &str) -> Proc {
    gateway_with_args(data_dir, config, &[])
}

/// [`gateway`] with more command-line arguments.
pub fn gateway_with_args(data_dir: &Path, config: &str, extra: &[&str]) -> Proc {
    let file = data_dir.join("floodway.toml");
    std::fs::write(&file, config).unwrap();
    let mut args = vec![
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    spawn(&args)
}

/// Polls `check` every 50 ms until it holds, for at most `limit`; panics with `what` otherwise.
/// This waits for an observable state of another process, not for time to pass.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// GETs `url` as JSON.
pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// The ids the sink received for `topic`.
pub async fn sink_ids(sink: &Proc, topic: &str) -> std::collections::HashSet<String> {
    let s = get_json(&format!("{}/stats?ids=true", sink.url)).await;
    s["ids"][topic]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// POSTs `body` as `application/json`.
pub async fn post_json(client: &reqwest::Client, url: &str, body: &str) -> reqwest::Response {
    post_json_with(client, url, &[], body).await
}

/// POSTs `body` as `application/json` with these extra headers.
pub async fn post_json_with(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// Runs `floodway ARGS` to completion (at most `limit`), asserts it succeeded, and returns its
/// standard output.
pub async fn run_ok(args: &[&str], limit: Duration) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_floodway"))
        .args(args)
        .output();
    let out = tokio::time::timeout(limit, out)
        .await
        .expect("the command finishes in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// POSTs `n` small JSON events one by one, asserts each got `202`, and returns their ids.
pub async fn send_events(
    client: &reqwest::Client,
    gateway: &Proc,
    n: usize,
) -> std::collections::HashSet<String> {
    let url = format!("{}/v1/topics/orders/events", gateway.url);
    let mut ids = std::collections::HashSet::new();
    for i in 0..n {
        let r = post_json(client, &url, &format!("{{\"i\":{i}}}")).await;
        assert_eq!(r.status(), 202);
        let b: serde_json::Value = r.json().await.unwrap();
        ids.insert(b["ids"][0].as_str().unwrap().to_owned());
    }
    ids
}

/// Posts one event with a 300 ms TTL to `ingest` while `sink` is down (a sink-sim with the
/// schedule `0s:rate=0,2s:rate=100`), waits for it in the dead letters listed by `admin` with
/// reason `expired`, waits for the sink to be back, replays it through `admin`, and waits for
/// the replayed event at the sink. `ingest` and `admin` are gateway base URLs.
/// The JSON body of the answer to `req`.
async fn json_of(req: reqwest::RequestBuilder) -> serde_json::Value {
    req.send().await.unwrap().json().await.unwrap()
}

/// Sends `body` to `orders` through `ingest` with a TTL of `ttl` and waits until `dl_url` lists
/// `dead` dead letters.
async fn dies(
    client: &reqwest::Client,
    (ingest, dl_url): (&str, &str),
    ttl: &str,
    body: &str,
    dead: usize,
) {
    let url = format!("{ingest}/v1/topics/orders/events");
    let r = post_json_with(client, &url, &[("floodway-ttl", ttl)], body).await;
    assert_eq!(r.status(), 202);
    wait_for(
        Duration::from_secs(20),
        "the event in dead letters",
        || async {
            get_json(dl_url).await["dead_letters"]
                .as_array()
                .is_some_and(|a| a.len() == dead)
        },
    )
    .await;
}

pub async fn expire_and_replay(ingest: &str, admin: &str, sink: &Proc) {
    let client = reqwest::Client::new();
    let dl_url = format!("{admin}/v1/topics/orders/dead-letters");
    dies(&client, (ingest, &dl_url), "300ms", r#"{"late":true}"#, 1).await;
    let dl = get_json(&dl_url).await;
    assert_eq!(dl["dead_letters"][0]["reason"], "expired");
    assert_eq!(dl["dead_letters"][0]["body"]["late"], true);
    assert!(sink_ids(sink, "orders").await.is_empty());
    // The topic's own figures count it too (on a shared backend, as of its next look).
    let topic_url = format!("{admin}/v1/topics/orders");
    wait_for(
        Duration::from_secs(10),
        "the dead letter counted",
        || async { get_json(&topic_url).await["dead_letters"] == 1 },
    )
    .await;
    wait_for(Duration::from_secs(20), "the sink back up", || async {
        get_json(&format!("{}/stats", sink.url)).await["rate"] == 100
    })
    .await;
    // A replay takes only the dead letters of the reason it names.
    let none = json_of(client.post(format!("{dl_url}/replay?reason=permanent"))).await;
    assert_eq!(none["replayed"], 0);
    let replayed = json_of(client.post(format!("{dl_url}/replay?reason=expired"))).await;
    assert_eq!(replayed["replayed"], 1);
    assert_eq!(
        replayed["dead_ids"],
        serde_json::json!([dl["dead_letters"][0]["id"]])
    );
    let new_id = replayed["ids"][0].as_str().unwrap().to_owned();
    wait_for(
        Duration::from_secs(20),
        "the replayed event at the sink",
        || async { sink_ids(sink, "orders").await.contains(&new_id) },
    )
    .await;
    // Three events dead on arrival (a TTL of 0), read a page of two at a time, then purged: gone
    // from the dead letters, counted.
    for n in 0..3 {
        let body = format!(r#"{{"doomed":{n}}}"#);
        dies(&client, (ingest, &dl_url), "0s", &body, n + 1).await;
    }
    let first = get_json(&format!("{dl_url}?limit=2")).await;
    let next = first["next"].as_u64().expect("a cursor to the second page");
    let second = get_json(&format!("{dl_url}?limit=2&after={next}")).await;
    assert_eq!(second["next"], serde_json::Value::Null, "{second}");
    let doomed: Vec<_> = [&first, &second]
        .iter()
        .flat_map(|page| page["dead_letters"].as_array().unwrap())
        .map(|d| d["body"]["doomed"].clone())
        .collect();
    assert_eq!(doomed, [0, 1, 2].map(serde_json::Value::from));
    // Dead before any delivery was tried: no last error.
    assert_eq!(first["dead_letters"][0]["error"], serde_json::Value::Null);
    // One letter by its id, as listed: listed alone, then replayed (which lifts its TTL), and
    // delivered; asked again, it is no longer there to replay.
    let id_of = |n: usize| first["dead_letters"][n]["id"].as_str().unwrap().to_owned();
    let (zero, one) = (id_of(0), id_of(1));
    let listed = get_json(&format!("{dl_url}?ids={one}")).await;
    assert_eq!(listed["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(listed["dead_letters"][0]["body"]["doomed"], 1);
    let again = json_of(client.post(format!("{dl_url}/replay?ids={one}"))).await;
    assert_eq!(again["replayed"], 1);
    assert_eq!(again["dead_ids"], serde_json::json!([one]));
    let new_one = again["ids"][0].as_str().unwrap().to_owned();
    wait_for(
        Duration::from_secs(20),
        "the event replayed by id at the sink",
        || async { sink_ids(sink, "orders").await.contains(&new_one) },
    )
    .await;
    let gone = json_of(client.post(format!("{dl_url}/replay?ids={one}"))).await;
    assert_eq!(gone["replayed"], 0);
    // An id of another reason than the one asked for is left alone.
    let other = json_of(client.post(format!("{dl_url}/replay?ids={zero}&reason=shed"))).await;
    assert_eq!(other["replayed"], 0);
    // So does a purge, and a listing: by reason, and by id.
    let purged = json_of(client.delete(format!("{dl_url}?reason=shed"))).await;
    assert_eq!(purged["purged"], 0);
    let expired = get_json(&format!("{dl_url}?reason=expired")).await;
    assert_eq!(expired["dead_letters"].as_array().unwrap().len(), 2);
    let purged = json_of(client.delete(format!("{dl_url}?ids={zero},{one}"))).await;
    assert_eq!(purged["purged"], 1);
    let purged = json_of(client.delete(format!("{dl_url}?reason=expired"))).await;
    assert_eq!(purged["purged"], 1);
    assert_eq!(
        get_json(&dl_url).await["dead_letters"],
        serde_json::json!([])
    );
    wait_for(Duration::from_secs(10), "the purges counted", || async {
        let t = get_json(&topic_url).await;
        t["dead_letters"] == 0 && t["purged"] == 2
    })
    .await;
}
