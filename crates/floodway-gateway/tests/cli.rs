//! The binary's other entry points: defaults without a config, check-config, graceful shutdown.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{gateway, post_json, send_events, sigterm, sink, sink_ids, spawn, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_a_config_creates_topics_and_writes_them_to_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let gw = spawn(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data]);
    let client = reqwest::Client::new();
    let r = post_json(
        &client,
        &format!("{}/v1/topics/clicks/events", gw.url),
        r#"{"x":1}"#,
    )
    .await;
    assert_eq!(r.status(), 202);
    let out = dir.path().join("out/clicks.jsonl");
    wait_for(
        Duration::from_secs(20),
        "the event in the topic's file",
        || async { std::fs::read_to_string(&out).is_ok_and(|s| s.contains(r#""body":{"x":1}"#)) },
    )
    .await;
    let ready = client
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = client
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("floodway_accepted_total{topic=\"clicks\"} 1"),
        "{metrics}"
    );
    for typed in [
        "# TYPE floodway_accepted_total counter\n",
        "# TYPE floodway_delivered_total counter\n",
        "# TYPE floodway_backlog_events gauge\n",
    ] {
        assert!(metrics.contains(typed), "{typed}in {metrics}");
    }
}

#[test]
fn check_config_explains_errors_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[topics.orders]\nmax_backlog_events = 10\nretry = { max_atempts = 3 }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_floodway"))
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("max_atempts"),
        "{err}"
    );
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../floodway.example.toml");
    let ok = Command::new(env!("CARGO_BIN_EXE_floodway"))
        .args(["check-config", example])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_in_bounded_time_and_leaves_the_store_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&["--rate", "200"]);
    let config = format!(
        "[topics.orders]\nsink = {{ type = \"http\", url = \"{}/in\" }}\nretry = {{ max_attempts = 50, base = \"20ms\", max = \"200ms\" }}\n",
        sink.url
    );
    let mut gw = gateway(dir.path(), &config);
    let acked = send_events(&reqwest::Client::new(), &gw, 200).await;
    // A kept-alive connection, idle at the stop: closed at once, not waited for.
    let addr = gw.url.trim_start_matches("http://");
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    sigterm(&gw);
    let start = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the idle connection is closed at the stop: {closed:?}"
    );
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "shutdown must be bounded in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit: {status:?}");
    // What was not delivered before the stop is delivered after a restart: nothing lost.
    let _gw = gateway(dir.path(), &config);
    wait_for(
        Duration::from_secs(30),
        "every acknowledged id after the restart",
        || async { sink_ids(&sink, "orders").await.is_superset(&acked) },
    )
    .await;
}

/// Logs written to a pipe (a file, a collector) are plain text: no terminal colour codes.
#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let first = BufReader::new(stderr).lines().next();
        let _ = tx.send(first);
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a log line within 30 s").unwrap().unwrap();
    assert!(
        line.contains("INFO") && line.contains("serving"),
        "{line:?}"
    );
    assert!(!line.contains('\u{1b}'), "{line:?}");
}
