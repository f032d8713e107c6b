//! End to end: the real binary, a real sink-sim, a real store in a temp dir, over loopback.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{
    expire_and_replay, gateway, get_json, post_json, send_events, sink, sink_ids, wait_for,
};

fn topic_config(sink_url: &str, extra: &str) -> String {
    format!(
        "[topics.orders]\nsink = {{ type = \"http\", url = \"{sink_url}/in\", timeout = \"2s\" }}\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_delivered_once_and_a_repeated_key_is_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&["--rate", "1000"]);
    let gw = gateway(dir.path(), &topic_config(&sink.url, ""));
    let client = reqwest::Client::new();
    let url = format!("{}/v1/topics/orders/events", gw.url);
    let send = || {
        client
            .post(&url)
            .header("content-type", "application/json")
            .header("idempotency-key", "order-17")
            .body(r#"{"order":17}"#)
            .send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["floodway-pressure"], "normal");
    // No producer quota: the policy in force is the backlog bound (the default 100 000 events),
    // and what remains of it is what this event left (or all of it, once delivered).
    assert_eq!(r.headers()["ratelimit-policy"], "\"backlog\";q=100000");
    let state = r.headers()["ratelimit"].to_str().unwrap();
    assert!(
        ["\"backlog\";r=99999", "\"backlog\";r=100000"].contains(&state),
        "{state}"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 1);
    let id = body["ids"][0].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(20), "delivery", || async {
        sink_ids(&sink, "orders").await.contains(&id)
    })
    .await;
    let again: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(again["ids"][0], id.as_str());
    assert_eq!(again["duplicates"], 1);
    let t = get_json(&format!("{}/v1/topics/orders", gw.url)).await;
    assert_eq!(
        t["accepted"], 1,
        "the repeated key was acknowledged, not stored: {t}"
    );
    let stats = get_json(&format!("{}/stats", sink.url)).await;
    assert_eq!(stats["duplicates"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_problem_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&["--rate", "1000"]);
    let gw = gateway(
        dir.path(),
        &topic_config(&sink.url, "max_event_bytes = \"1KiB\""),
    );
    let client = reqwest::Client::new();
    let url = format!("{}/v1/topics/orders/events", gw.url);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client
                .post(&url)
                .header("content-type", "application/json")
                .body("{\"a\":"),
            400,
            "malformed JSON at line 1, column 5: EOF while parsing a value",
        ),
        (
            client
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .body("{\"a\":1}\n{\"b\":2}\n{oops}\n"),
            400,
            "malformed NDJSON at line 3, column 2: key must be a string",
        ),
        (
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(format!("\"{}\"", "x".repeat(2000))),
            413,
            "max_event_bytes",
        ),
        (client.post(&url).body("{}"), 415, "Content-Type"),
        (
            client
                .post(format!("{}/v1/topics/nope/events", gw.url))
                .header("content-type", "application/json")
                .body("{}"),
            404,
            "unknown topic",
        ),
        (
            client
                .post(&url)
                .header("content-type", "application/json")
                .header("floodway-priority", "urgent")
                .body("{}"),
            400,
            "urgent",
        ),
        (
            client
                .post(&url)
                .header("content-type", "application/json")
                .header("floodway-ttl", "soon")
                .body("{}"),
            400,
            "Floodway-TTL",
        ),
        // Routing and query errors are problems too.
        (
            client
                .post(format!("{}/v1/topics/%FF/events", gw.url))
                .header("content-type", "application/json")
                .body("{}"),
            400,
            "bad topic in the path: Invalid URL",
        ),
        (
            client.get(format!("{}/v2/topics", gw.url)),
            404,
            "no resource at /v2/topics",
        ),
        (
            client.delete(format!("{}/v1/topics/orders", gw.url)),
            405,
            "DELETE is not allowed on /v1/topics/orders",
        ),
        (
            client.get(format!(
                "{}/v1/topics/orders/dead-letters?limit=many",
                gw.url
            )),
            400,
            "bad query string",
        ),
        (
            client.get(format!("{}/v1/topics/orders/dead-letters?limit=0", gw.url)),
            400,
            "limit must be 1 to 1000, not 0",
        ),
        (
            client.delete(format!(
                "{}/v1/topics/orders/dead-letters?reason=old",
                gw.url
            )),
            400,
            "reason must be one of expired, shed, permanent, exhausted, not \"old\"",
        ),
        (
            client.post(format!(
                "{}/v1/topics/orders/dead-letters/replay?ids=3,x",
                gw.url
            )),
            400,
            "ids must be event ids separated by commas (ids=3,17), and \"x\" is not an id",
        ),
        (
            client.get(format!("{}/v1/topics/orders/dead-letters?ids=", gw.url)),
            400,
            "and \"\" is not an id",
        ),
        (
            client.delete(format!(
                "{}/v1/topics/orders/dead-letters?ids={}",
                gw.url,
                (1..=1001)
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            400,
            "ids names more than 1000 ids; act on them in parts",
        ),
    ];
    for (req, status, needle) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["status"], status);
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains(needle),
            "{status}: {detail:?} should mention {needle:?}"
        );
    }
    let t = get_json(&format!("{}/v1/topics/orders", gw.url)).await;
    assert_eq!(
        (t["accepted"].as_u64(), t["backlog_events"].as_u64()),
        (Some(0), Some(0)),
        "{t}"
    );
    // The gateway still works after all that.
    assert_eq!(post_json(&client, &url, "{}").await.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_retry_after_and_every_acknowledged_event_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&["--rate", "100"]);
    let gw = gateway(
        dir.path(),
        &topic_config(&sink.url, "max_backlog_events = 60"),
    );
    let client = reqwest::Client::new();
    let url = format!("{}/v1/topics/orders/events", gw.url);
    let mut acked = HashSet::new();
    let mut refused = 0;
    // 300 events offered as fast as 4 connections allow: several times the sink's 100/s.
    for _ in 0..75 {
        let batch: Vec<_> = (0..4)
            .map(|i| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(
                    async move { post_json(&client, &url, &format!("{{\"n\":{i}}}")).await },
                )
            })
            .collect();
        for handle in batch {
            let r = handle.await.unwrap();
            match r.status().as_u16() {
                202 => {
                    let b: serde_json::Value = r.json().await.unwrap();
                    acked.insert(b["ids"][0].as_str().unwrap().to_owned());
                }
                429 | 503 => {
                    let after: u64 = r.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(
                        (1..=60).contains(&after),
                        "an honest, bounded Retry-After: {after}"
                    );
                    assert_eq!(r.headers()["content-type"], "application/problem+json");
                    refused += 1;
                }
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert!(
        refused > 0,
        "offered load beyond the backlog bound must be refused"
    );
    assert!(!acked.is_empty());
    wait_for(
        Duration::from_secs(30),
        "every acknowledged id at the sink",
        || async { sink_ids(&sink, "orders").await.is_superset(&acked) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_goes_down_and_comes_back_is_fully_drained() {
    let dir = tempfile::tempdir().unwrap();
    // Down for the first 3 s (every request refused with 503), then 500/s.
    let sink = sink(&["--rate", "500", "--schedule", "0s:rate=0,3s:rate=500"]);
    let gw = gateway(
        dir.path(),
        &topic_config(
            &sink.url,
            "retry = { max_attempts = 30, base = \"50ms\", max = \"1s\" }",
        ),
    );
    let acked = send_events(&reqwest::Client::new(), &gw, 50).await;
    wait_for(
        Duration::from_secs(30),
        "a full drain after the sink came back",
        || async { sink_ids(&sink, "orders").await == acked },
    )
    .await;
    let stats = get_json(&format!("{}/stats", sink.url)).await;
    assert!(
        stats["rejected"].as_u64().unwrap() > 0,
        "the sink was really down: {stats}"
    );
    let t = get_json(&format!("{}/v1/topics/orders", gw.url)).await;
    assert_eq!(t["backlog_events"], 0);
    assert_eq!(t["dead_letters"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_event_is_dead_lettered_and_replay_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    // Down for 2 s: the event's 300 ms TTL passes while deliveries fail.
    let sink = sink(&["--rate", "100", "--schedule", "0s:rate=0,2s:rate=100"]);
    let gw = gateway(
        dir.path(),
        &topic_config(
            &sink.url,
            "retry = { max_attempts = 50, base = \"50ms\", max = \"200ms\" }",
        ),
    );
    expire_and_replay(&gw.url, &gw.url, &sink).await;
    let dl_url = format!("{}/v1/topics/orders/dead-letters", gw.url);
    assert!(
        get_json(&dl_url).await["dead_letters"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_sees_how_long_delivery_took() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&["--rate", "1000"]);
    let gw = gateway(dir.path(), &topic_config(&sink.url, ""));
    send_events(&reqwest::Client::new(), &gw, 5).await;
    wait_for(Duration::from_secs(20), "five deliveries", || async {
        get_json(&format!("{}/stats", sink.url)).await["end_to_end_ms"]["count"] == 5
    })
    .await;
    let p99 = get_json(&format!("{}/stats", sink.url)).await["end_to_end_ms"]["p99"]
        .as_u64()
        .unwrap();
    assert!(
        (1..10_000).contains(&p99),
        "accept-to-delivery p99 {p99} ms"
    );
}

/// The gateway keeps at most `max_connections` open: a connection beyond them is not served
/// until one closes. A connection on which nothing is sent is closed after `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_idle_ones_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    let gw = common::gateway(dir.path(), "max_connections = 2\nidle_timeout = \"5s\"\n");
    let addr = gw.url.trim_start_matches("http://").to_owned();
    // Accepted in the order they connect: these two take the room. (The idle timeout is long
    // enough that neither is closed for it before the third has been checked.)
    let first = TcpStream::connect(&addr).await.unwrap();
    let mut second = TcpStream::connect(&addr).await.unwrap();
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(waited.is_err(), "served while two connections were open");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The second sent nothing: the gateway closes it.
    let n = tokio::time::timeout(Duration::from_secs(20), second.read(&mut buf))
        .await
        .expect("the idle connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Once the closed ones are gone, the gauge counts only the request asking for it.
    let url = format!("{}/metrics", gw.url);
    wait_for(Duration::from_secs(10), "one open connection", || async {
        let m = reqwest::get(&url).await.unwrap().text().await.unwrap();
        assert!(m.contains("floodway_connections_max 2\n"), "{m}");
        m.contains("floodway_connections 1\n")
    })
    .await;
}
