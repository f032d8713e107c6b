//! `floodway bench` on a tiny scenario: it runs every strategy named, writes one report, and its
//! figures tell the strategies apart (floodway loses nothing it acknowledged; drop does).

mod common;

use std::time::Duration;

use common::run_ok;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_compares_strategies_in_one_report() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bench-tiny.toml");
    run_ok(
        &[
            "bench",
            "--scenario",
            scenario,
            "--check",
            "--report",
            dir.path().to_str().unwrap(),
        ],
        Duration::from_secs(150),
    )
    .await;
    let report = std::fs::read_to_string(dir.path().join("tiny.md")).unwrap();
    let row = |name: &str| -> Vec<String> {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("| {name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{report}"));
        line.split('|')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    };
    let (floodway, drop) = (row("Floodway"), row("Drop"));
    // Columns: strategy, offered, accepted, refused, goodput, ingest p99, e2e p99, undelivered, dropped, ...
    assert_eq!(
        floodway[7], "0",
        "floodway delivers all it acknowledged: {report}"
    );
    assert!(
        floodway[3].parse::<u64>().unwrap() > 0,
        "floodway refuses what it cannot take: {report}"
    );
    assert_eq!(drop[3], "0", "drop never says no: {report}");
    assert!(
        drop[8].parse::<u64>().unwrap() > 0,
        "drop throws events away: {report}"
    );
    assert!(report.contains("acknowledged-but-undelivered 0 (expected <= 0): met"));
}
