//! `kill -9` the gateway during steady ingest, restart it on the same data dir: every event it
//! acknowledged reaches the sink.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{gateway, sink, sink_ids, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    // A slow sink, so a backlog is stored when the gateway dies.
    let sink = sink(&["--rate", "100"]);
    let config = format!(
        "[storage]\nfsync = \"batch\"\n[topics.orders]\nsink = {{ type = \"http\", url = \"{}/in\" }}\n",
        sink.url
    );
    let mut gw = gateway(dir.path(), &config);
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let url = format!("{}/v1/topics/orders/events", gw.url);
    // Four producers send steadily until their requests start failing (the gateway is gone).
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (url, acked) = (url.clone(), acked.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in 0..2000 {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(format!("{{\"p\":{p},\"i\":{i}}}"))
                        .send()
                        .await;
                    let Ok(r) = r else { return };
                    if r.status() == 202 {
                        let Ok(b) = r.json::<serde_json::Value>().await else {
                            return;
                        };
                        acked
                            .lock()
                            .unwrap()
                            .insert(b["ids"][0].as_str().unwrap().to_owned());
                    }
                }
            })
        })
        .collect();
    wait_for(
        Duration::from_secs(30),
        "500 acknowledged events",
        || async { acked.lock().unwrap().len() >= 500 },
    )
    .await;
    // SIGKILL: no shutdown code runs.
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let before_restart = sink_ids(&sink, "orders").await;
    assert!(
        !acked.is_subset(&before_restart),
        "the test must kill the gateway with a backlog"
    );
    let gw = gateway(dir.path(), &config);
    wait_for(
        Duration::from_secs(60),
        "every acknowledged id at the sink after restart",
        || async { sink_ids(&sink, "orders").await.is_superset(&acked) },
    )
    .await;
    let topic = common::get_json(&format!("{}/v1/topics/orders", gw.url)).await;
    assert_eq!(topic["dead_letters"], 0, "{topic}");
}
