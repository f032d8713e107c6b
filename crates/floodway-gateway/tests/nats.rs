//! The nats backend end to end: real `nats-server -js` processes on free loopback ports with
//! their own temp store dirs, real gateways and a real sink-sim.
//!
//! Without `nats-server` on `PATH` these tests say so and pass, unless `FLOODWAY_REQUIRE_NATS`
//! is set, as the project's test command (`scripts/test`) does after installing it: there they
//! fail instead of skipping.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Proc, expire_and_replay, gateway_with_args, get_json, post_json, post_json_with, sigterm, sink,
    sink_ids, wait_for,
};

/// True when `nats-server` can be run; otherwise reports the skip (or fails, when required).
fn have_nats(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nats-server").is_file()));
    if !found {
        assert!(
            std::env::var_os("FLOODWAY_REQUIRE_NATS").is_none(),
            "FLOODWAY_REQUIRE_NATS is set but nats-server is not on PATH (apt-get install nats-server)"
        );
        eprintln!("SKIPPED {test}: nats-server is not installed; scripts/test installs it");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server` process; killed (SIGKILL) when dropped.
struct Nats {
    child: Child,
    url: String,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a JetStream server named `name` with its store under `dir`; with `cluster`, its own
/// route port and its peers' route ports. Waits (at most 20 s) until it says it is ready.
fn start_nats(dir: &Path, name: &str, cluster: Option<(u16, &[u16])>) -> Nats {
    let port = free_port();
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new("nats-server");
    cmd.args(["-js", "-a", "127.0.0.1", "-n", name])
        .args(["-p", &port.to_string()])
        .arg("-sd")
        .arg(dir.join(name))
        .arg("-l")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((own, peers)) = cluster {
        let routes: Vec<String> = peers
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        cmd.args(["--cluster_name", "floodway-test"])
            .args(["--cluster", &format!("nats://127.0.0.1:{own}")])
            .args(["--routes", &routes.join(",")]);
    }
    let child = cmd.spawn().expect("nats-server starts");
    let server = Nats {
        child,
        url: format!("nats://127.0.0.1:{port}"),
    };
    let start = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Server is ready")) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nats-server {name} did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// A gateway with `role` on the nats backend at `urls`, delivering topic `orders` to `sink`, with
/// an ack wait of 2 s.
fn gateway(dir: &Path, name: &str, role: &str, urls: &str, sink: &str, extra: &str) -> Proc {
    gateway_with_ack_wait(dir, name, role, urls, sink, extra, "2s")
}

fn gateway_with_ack_wait(
    dir: &Path,
    name: &str,
    role: &str,
    urls: &str,
    sink: &str,
    extra: &str,
    ack_wait: &str,
) -> Proc {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let config = format!(
        "[storage]\nbackend = \"nats\"\n[storage.nats]\nurl = \"{urls}\"\nrequest_timeout = \"2s\"\n\
         ack_wait = \"{ack_wait}\"\n[topics.orders]\nsink = {{ type = \"http\", url = \"{sink}/in\" }}\n{extra}\n"
    );
    gateway_with_args(&data, &config, &["--role", role])
}

fn events_url(gw: &Proc) -> String {
    format!("{}/v1/topics/orders/events", gw.url)
}

async fn topic_stats(gw: &Proc) -> serde_json::Value {
    get_json(&format!("{}/v1/topics/orders", gw.url)).await
}

/// Posts `n` events alternately to `gateways` and returns the acknowledged ids; every post must
/// be accepted.
async fn send_alternately(gateways: &[&Proc], n: usize) -> HashSet<String> {
    let client = reqwest::Client::new();
    let mut ids = HashSet::new();
    for i in 0..n {
        let gw = gateways[i % gateways.len()];
        let r = post_json(&client, &events_url(gw), &format!("{{\"i\":{i}}}")).await;
        assert_eq!(r.status(), 202, "event {i}");
        let b: serde_json::Value = r.json().await.unwrap();
        ids.insert(b["ids"][0].as_str().unwrap().to_owned());
    }
    ids
}

async fn wait_delivered(sink: &Proc, acked: &HashSet<String>, limit: Duration) {
    wait_for(limit, "every acknowledged id at the sink", || async {
        sink_ids(sink, "orders").await.is_superset(acked)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_stream_within_one_concurrency_limit() {
    if !have_nats("two_gateways_share_one_stream_within_one_concurrency_limit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = start_nats(dir.path(), "n1", None);
    // A sink of limited capacity (each delivery takes 20 ms) that fails one delivery in ten:
    // those go back to the stream with a delay and come back to either gateway.
    let sink = sink(&[
        "--rate",
        "10000",
        "--latency",
        "20ms",
        "--error-rate",
        "0.1",
    ]);
    let extra = "concurrency = { min = 1, max = 4 }\n\
                 retry = { max_attempts = 50, base = \"20ms\", max = \"200ms\" }";
    let a = gateway(dir.path(), "a", "both", &nats.url, &sink.url, extra);
    let b = gateway(dir.path(), "b", "both", &nats.url, &sink.url, extra);
    let acked = send_alternately(&[&a, &b], 300).await;
    assert_eq!(acked.len(), 300, "ids are unique across gateways");
    // An idempotency key is one event whichever gateway hears it (JetStream de-duplicates).
    let client = reqwest::Client::new();
    let mut keyed = Vec::new();
    for gw in [&a, &b] {
        let r = post_json_with(
            &client,
            &events_url(gw),
            &[("idempotency-key", "order-17")],
            "{\"order\":17}",
        )
        .await;
        assert_eq!(r.status(), 202);
        keyed.push(r.json::<serde_json::Value>().await.unwrap());
    }
    assert_eq!(keyed[0]["ids"], keyed[1]["ids"]);
    assert_eq!(keyed[1]["duplicates"], 1);
    let acked: HashSet<String> = acked
        .into_iter()
        .chain(keyed[0]["ids"][0].as_str().map(str::to_owned))
        .collect();
    wait_delivered(&sink, &acked, Duration::from_secs(60)).await;
    let s = get_json(&format!("{}/stats", sink.url)).await;
    assert!(s["errors"].as_u64().unwrap() > 0, "retries were exercised");
    let peak = s["peak_in_flight"].as_u64().unwrap();
    assert!(
        (1..=4).contains(&peak),
        "the sink saw {peak} deliveries at once from two gateways with a total limit of 4"
    );
    // Both gateways delivered: adding one added delivery capacity.
    let (sa, sb) = (topic_stats(&a).await, topic_stats(&b).await);
    let (da, db) = (
        sa["delivered"].as_u64().unwrap(),
        sb["delivered"].as_u64().unwrap(),
    );
    assert!(da > 0 && db > 0, "deliveries split {da}/{db}");
    // Conservation across the cluster: accepted = delivered (+ redelivered duplicates).
    assert_eq!(
        sa["accepted"].as_u64().unwrap() + sb["accepted"].as_u64().unwrap(),
        301
    );
    assert!(da + db >= 301);
    wait_for(
        Duration::from_secs(5),
        "an empty shared backlog",
        || async { topic_stats(&a).await["backlog_events"] == 0 },
    )
    .await;
    assert_eq!(sa["backlog_scope"], "cluster");
}

/// The `orders` consumer's max_ack_pending: the delivery limit shared by every process.
async fn shared_limit(url: &str) -> i64 {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let stream = js.get_stream("FLOODWAY_E_orders").await.unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("floodway").await.unwrap();
    consumer.info().await.unwrap().config.max_ack_pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_delivery_limit_follows_the_adaptive_one() {
    if !have_nats("the_shared_delivery_limit_follows_the_adaptive_one") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = start_nats(dir.path(), "n1", None);
    // Every delivery fails: AIMD backs off, and the cluster-wide limit must follow it down.
    let sink = sink(&["--rate", "10000", "--error-rate", "1.0"]);
    let extra = "concurrency = { algorithm = \"aimd\", min = 1, max = 32 }\n\
                 retry = { max_attempts = 1000, base = \"10ms\", max = \"50ms\" }";
    let gw = gateway(dir.path(), "a", "both", &nats.url, &sink.url, extra);
    send_alternately(&[&gw], 50).await;
    // AIMD starts at 4 and halves on failures down to its minimum, 1: the consumer, created at
    // the maximum (32), must follow it all the way down.
    wait_for(
        Duration::from_secs(30),
        "the consumer's max_ack_pending at the adaptive minimum",
        || async { shared_limit(&nats.url).await == 1 },
    )
    .await;
    assert_eq!(topic_stats(&gw).await["concurrency_limit"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_events_are_redelivered_by_another() {
    if !have_nats("a_killed_worker_s_events_are_redelivered_by_another") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = start_nats(dir.path(), "n1", None);
    // Slow deliveries, so the worker holds some when it dies.
    let sink = sink(&["--rate", "10000", "--latency", "400ms"]);
    let extra = "concurrency = { algorithm = \"fixed\", min = 1, max = 8 }";
    let ingest = gateway(dir.path(), "in", "ingest", &nats.url, &sink.url, extra);
    let mut w1 = gateway(dir.path(), "w1", "worker", &nats.url, &sink.url, extra);
    // A worker refuses events with 421.
    let client = reqwest::Client::new();
    let r = post_json(&client, &events_url(&w1), "{}").await;
    assert_eq!(r.status(), 421);
    let acked = send_alternately(&[&ingest], 60).await;
    wait_for(Duration::from_secs(20), "worker 1 mid-delivery", || async {
        topic_stats(&w1).await["in_flight"].as_u64().unwrap_or(0) > 0
    })
    .await;
    w1.child.kill().unwrap();
    w1.child.wait().unwrap();
    let before = sink_ids(&sink, "orders").await;
    assert!(
        !before.is_superset(&acked),
        "worker 1 died holding undelivered events"
    );
    let w2 = gateway(dir.path(), "w2", "worker", &nats.url, &sink.url, extra);
    wait_delivered(&sink, &acked, Duration::from_secs(60)).await;
    assert!(topic_stats(&w2).await["delivered"].as_u64().unwrap() > 0);
    // The ingest process delivers nothing, whatever its backlog.
    assert_eq!(topic_stats(&ingest).await["delivered"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_hands_its_events_back_at_once() {
    if !have_nats("a_stopped_worker_hands_its_events_back_at_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = start_nats(dir.path(), "n1", None);
    let sink = sink(&["--rate", "10000", "--latency", "300ms"]);
    let extra = "concurrency = { algorithm = \"fixed\", min = 1, max = 8 }";
    // An ack wait far longer than the test: only an explicit hand-back lets w2 have w1's events.
    let (ingest, mut w1) = (
        gateway_with_ack_wait(
            dir.path(),
            "in",
            "ingest",
            &nats.url,
            &sink.url,
            extra,
            "10m",
        ),
        gateway_with_ack_wait(
            dir.path(),
            "w1",
            "worker",
            &nats.url,
            &sink.url,
            extra,
            "10m",
        ),
    );
    let acked = send_alternately(&[&ingest], 60).await;
    wait_for(Duration::from_secs(20), "worker 1 busy", || async {
        topic_stats(&w1).await["in_flight"].as_u64().unwrap_or(0) > 0
    })
    .await;
    sigterm(&w1);
    assert!(w1.child.wait().unwrap().success());
    let _w2 = gateway_with_ack_wait(
        dir.path(),
        "w2",
        "worker",
        &nats.url,
        &sink.url,
        extra,
        "10m",
    );
    wait_delivered(&sink, &acked, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_live_in_their_own_stream_and_replay_delivers_them() {
    if !have_nats("dead_letters_live_in_their_own_stream_and_replay_delivers_them") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = start_nats(dir.path(), "n1", None);
    // Down for 2 s: the event's 300 ms TTL passes while deliveries fail.
    let sink = sink(&["--rate", "100", "--schedule", "0s:rate=0,2s:rate=100"]);
    let extra = "retry = { max_attempts = 50, base = \"50ms\", max = \"200ms\" }";
    let a = gateway(dir.path(), "a", "both", &nats.url, &sink.url, extra);
    let b = gateway(dir.path(), "b", "both", &nats.url, &sink.url, extra);
    // Accepted by one gateway, listed and replayed through the other: dead letters are shared.
    expire_and_replay(&a.url, &b.url, &sink).await;
    assert_eq!(
        get_json(&format!("{}/v1/topics/orders/dead-letters", a.url)).await["dead_letters"],
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_is_429_at_every_gateway_and_holds_exactly_what_was_acknowledged() {
    if !have_nats("a_full_stream_is_429_at_every_gateway_and_holds_exactly_what_was_acknowledged") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = start_nats(dir.path(), "n1", None);
    let sink = sink(&["--rate", "10000"]);
    // Ingest-only gateways: nothing drains, so the stream fills. Its limit (20) is below the
    // topic's own bound, so the stream decides.
    let extra = "max_backlog_events = 100\nstream = { max_msgs = 20 }";
    let a = gateway(dir.path(), "a", "ingest", &nats.url, &sink.url, extra);
    let b = gateway(dir.path(), "b", "ingest", &nats.url, &sink.url, extra);
    let client = reqwest::Client::new();
    let (mut accepted, mut refused_503) = (0u64, 0u64);
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = post_json_with(
            &client,
            &events_url(gw),
            &[("floodway-priority", "critical")],
            "{}",
        )
        .await;
        match r.status().as_u16() {
            202 => accepted += 1,
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                refused_503 += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(accepted, 20, "the stream holds at most its max_msgs");
    assert_eq!(refused_503, 10);
    for gw in [&a, &b] {
        wait_for(Duration::from_secs(5), "the full backlog seen", || async {
            topic_stats(gw).await["backlog_events"] == 20
        })
        .await;
        let r = post_json(&client, &events_url(gw), "{}").await;
        assert_eq!(r.status(), 429, "a normal event at a full backlog");
        let after: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(after >= 1);
        let p: serde_json::Value = r.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains("is full"), "{p}");
    }
    // Nothing was added by the refusals.
    assert_eq!(topic_stats(&a).await["backlog_events"], 20);
}

/// The name of the server leading the `orders` stream.
async fn stream_leader(urls: &str) -> String {
    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let info = js
        .get_stream("FLOODWAY_E_orders")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    info.cluster
        .and_then(|c| c.leader)
        .expect("a replicated stream has a leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_stream_takes_in_part_lists_what_was_stored_and_a_resend_completes_it() {
    if !have_nats(
        "a_batch_the_stream_takes_in_part_lists_what_was_stored_and_a_resend_completes_it",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = start_nats(dir.path(), "n1", None);
    let sink = sink(&["--rate", "10000"]);
    // The gateway admits the batch on its body bytes (30 x 100 of 4096); the stream counts whole
    // messages (subject and record header too) against the same 4096 and takes only part of it.
    let extra = "max_backlog_bytes = 4096\nmax_event_bytes = 1024";
    let ingest = gateway(dir.path(), "in", "ingest", &nats.url, &sink.url, extra);
    let batch: String = (0..30)
        .map(|i| format!("{{\"i\":{i},\"pad\":\"{}\"}}\n", "x".repeat(83)))
        .collect();
    let send = || {
        reqwest::Client::new()
            .post(events_url(&ingest))
            .header("content-type", "application/x-ndjson")
            .header("floodway-priority", "critical")
            .header("idempotency-key", "batch-1")
            .body(batch.clone())
            .send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let p: serde_json::Value = r.json().await.unwrap();
    let stored: Vec<String> = p["stored_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{p}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        !stored.is_empty() && stored.len() < 30,
        "part of the batch: {p}"
    );
    // A worker drains the stream; the same batch sent again stores only the missing lines.
    let _worker = gateway(dir.path(), "w", "worker", &nats.url, &sink.url, extra);
    wait_for(
        Duration::from_secs(20),
        "the first part delivered",
        || async { sink_ids(&sink, "orders").await.len() == stored.len() },
    )
    .await;
    wait_for(Duration::from_secs(5), "an empty backlog seen", || async {
        topic_stats(&ingest).await["backlog_events"] == 0
    })
    .await;
    let r = send().await.unwrap();
    assert_eq!(r.status(), 202);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["accepted"], 30);
    assert_eq!(b["duplicates"], stored.len());
    let ids: Vec<String> = b["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        &ids[..stored.len()],
        &stored[..],
        "the stored lines keep their ids"
    );
    let all: HashSet<String> = ids.into_iter().collect();
    wait_delivered(&sink, &all, Duration::from_secs(20)).await;
    assert_eq!(sink_ids(&sink, "orders").await.len(), 30, "each line once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nats_node_loses_no_acknowledged_event_and_nobody_hangs() {
    if !have_nats("a_dead_nats_node_loses_no_acknowledged_event_and_nobody_hangs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Option<Nats>> = (0..3)
        .map(|i| {
            let peers: Vec<u16> = routes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            Some(start_nats(
                dir.path(),
                &format!("n{i}"),
                Some((routes[i], &peers)),
            ))
        })
        .collect();
    let urls = nodes
        .iter()
        .map(|n| n.as_ref().unwrap().url.clone())
        .collect::<Vec<_>>()
        .join(",");
    let sink = sink(&["--rate", "300"]);
    let gw = gateway(
        dir.path(),
        "g",
        "both",
        &urls,
        &sink.url,
        "stream = { replicas = 3 }",
    );
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let statuses: Arc<Mutex<Vec<u16>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = events_url(&gw);
    // Two producers, each request bounded: a hang fails the test.
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let (url, acked, statuses, stop) =
                (url.clone(), acked.clone(), statuses.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Acquire) && i < 3000 {
                    i += 1;
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(format!("{{\"p\":{p},\"i\":{i}}}"))
                        .send()
                        .await
                        .expect("every request is answered within 10 s");
                    let status = r.status().as_u16();
                    statuses.lock().unwrap().push(status);
                    match status {
                        202 => {
                            let b: serde_json::Value = r.json().await.unwrap();
                            acked
                                .lock()
                                .unwrap()
                                .insert(b["ids"][0].as_str().unwrap().to_owned());
                        }
                        429 | 503 => assert!(r.headers().contains_key("retry-after")),
                        s => panic!("unexpected status {s}"),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(30), "200 acknowledged", || async {
        acked.lock().unwrap().len() >= 200
    })
    .await;
    // SIGKILL the node that leads the stream, during ingest and delivery: the hardest case, as
    // the others must elect a new leader before the stream accepts again.
    let leader = stream_leader(&urls).await;
    let victim: usize = leader.trim_start_matches('n').parse().unwrap();
    drop(nodes[victim].take());
    let at_kill = acked.lock().unwrap().len();
    wait_for(
        Duration::from_secs(40),
        "400 more acknowledged after the kill",
        || async { acked.lock().unwrap().len() >= at_kill + 400 },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    wait_delivered(&sink, &acked, Duration::from_secs(60)).await;
    let statuses = statuses.lock().unwrap();
    let refused = statuses.iter().filter(|s| **s != 202).count();
    eprintln!(
        "{} requests, {} acknowledged, {refused} refused with Retry-After",
        statuses.len(),
        acked.len()
    );
    drop(nodes);
}
