//! `floodway load` against a server with known answers: the counts must be exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;

/// Answers 202, except every fourth request: 429 with `Retry-After: 1`.
async fn known_server() -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let app = axum::Router::new().route(
        "/v1/topics/t/events",
        axum::routing::post(move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n % 4 == 0 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1")],
                        "slow down",
                    )
                        .into_response()
                } else {
                    (StatusCode::ACCEPTED, "{}").into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/topics/t/events",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, count)
}

/// Runs `floodway load ARGS --out FILE` (bounded in time) and returns the results it wrote.
async fn run_load(args: &[&str]) -> serde_json::Value {
    run_load_with_progress(args).await.0
}

/// The same, with the progress lines it printed to stderr (one a second, since stderr is a pipe).
async fn run_load_with_progress(args: &[&str]) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_floodway"))
        .args(args)
        .args(["--out", out.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let report = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    (report, String::from_utf8(output.stderr).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_accounts_for_every_request_exactly() {
    let (url, served) = known_server().await;
    let (r, progress) = run_load_with_progress(&[
        "load",
        "--url",
        &url,
        "--rate",
        "200",
        "--duration",
        "2s",
        "--arrival",
        "constant",
        "--priority-mix",
        "critical=1,low=1",
    ])
    .await;
    assert_eq!(r["offered"], 400, "{r}");
    assert_eq!(served.load(Ordering::SeqCst), 400);
    assert_eq!(r["accepted"], 300);
    assert_eq!(r["refused"]["429"], 100);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["accepted_latency"]["count"], 300);
    assert_eq!(r["refused_latency"]["count"], 100);
    let seconds = r["seconds"].as_array().unwrap();
    let offered: u64 = seconds.iter().map(|s| s["offered"].as_u64().unwrap()).sum();
    assert_eq!(offered, 400);
    assert_eq!(
        seconds[0]["offered"], 200,
        "constant arrivals: 200 due in each second"
    );
    assert!(seconds[0]["accepted_p99_ms"].as_f64().unwrap() > 0.0, "{r}");
    // The live line of the first second shows its p99, not a placeholder.
    let first = progress
        .lines()
        .find(|l| l.starts_with("t=  0s"))
        .unwrap_or_else(|| panic!("a line for the first second in {progress:?}"));
    let p99: f64 = first
        .split("p99")
        .nth(1)
        .and_then(|v| v.trim().trim_end_matches("ms").trim().parse().ok())
        .unwrap_or_else(|| panic!("a p99 in {first:?}"));
    assert!(p99 > 0.0, "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honouring_producer_waits_and_resends() {
    let (url, served) = known_server().await;
    let r = run_load(&[
        "load",
        "--url",
        &url,
        "--rate",
        "20",
        "--duration",
        "1s",
        "--honour-retry-after",
    ])
    .await;
    // Every refused request was sent again once its Retry-After had passed, until accepted.
    assert_eq!(r["accepted"], r["offered"], "{r}");
    let refused = r["refused"]["429"].as_u64().unwrap();
    assert!(refused > 0);
    assert_eq!(r["resent"].as_u64().unwrap(), refused);
    assert_eq!(
        served.load(Ordering::SeqCst),
        r["offered"].as_u64().unwrap() + refused
    );
}
