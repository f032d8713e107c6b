//! A short `floodway demo` run: it must finish, lose nothing, and write its report with its plots.

mod common;

use std::time::Duration;

use common::run_ok;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_demo_writes_its_report_with_every_plot() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let stdout = run_ok(
        &[
            "demo",
            "--duration",
            "4s",
            "--capacity",
            "100",
            "--report",
            report.to_str().unwrap(),
        ],
        Duration::from_secs(150),
    )
    .await;
    assert!(
        stdout.contains("acknowledged but not delivered: 0"),
        "{stdout}"
    );
    // The convergence after each capacity step is read from the run (100/s halves, then recovers).
    assert!(stdout.contains("capacity -> 50/s at t="), "{stdout}");
    assert!(stdout.contains("capacity -> 100/s at t="), "{stdout}");
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("capacity to 50/s at"));
    for title in [
        "Offered vs accepted vs delivered",
        "Backlog",
        "Pressure level",
        "Delivery concurrency limit and workers",
        "Refusals by status",
        "Accepted ingest latency",
    ] {
        assert!(html.contains(title), "the report lacks the plot {title:?}");
    }
    assert_eq!(html.matches("<svg").count(), 6);
    assert!(
        html.matches("<polyline").count() >= 6,
        "every plot has data"
    );
    assert!(report.join("rates.svg").exists());
}
