//! The pressure signal: hysteresis, dwell, subscription.

use std::time::Duration;

use floodway::pressure::Watermark;
use floodway::{Level, Pressure};
use tokio::time::{Instant, advance};

#[tokio::test(start_paused = true)]
async fn no_flapping_under_a_load_oscillating_around_one_watermark() {
    let p = Pressure::builder()
        .min_dwell(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut rx = p.subscribe();
    let mut changes = 0;
    // Utilisation swings 0.78 <-> 0.82 around saturated's enter mark (0.8) every 10 ms for 5 s.
    for i in 0..500 {
        let u = if i % 2 == 0 { 0.82 } else { 0.78 };
        p.update(u);
        if rx.has_changed().unwrap() {
            rx.borrow_and_update();
            changes += 1;
        }
        advance(Duration::from_millis(10)).await;
    }
    assert_eq!(
        changes, 1,
        "entered saturated once and stayed (exit mark is 0.7)"
    );
    assert_eq!(p.level(), Level::Saturated);
}

#[tokio::test(start_paused = true)]
async fn rises_at_once_falls_only_after_dwell() {
    let p = Pressure::builder()
        .min_dwell(Duration::from_secs(1))
        .build()
        .unwrap();
    let t0 = Instant::now();
    assert_eq!(p.update_at(0.99, t0), Level::Overloaded);
    assert_eq!(
        p.update_at(0.1, t0 + Duration::from_millis(999)),
        Level::Overloaded
    );
    assert_eq!(p.update_at(0.1, t0 + Duration::from_secs(1)), Level::Normal);
    assert_eq!(
        p.update_at(0.6, t0 + Duration::from_millis(1001)),
        Level::Elevated
    );
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_each_change() {
    let p = Pressure::builder()
        .min_dwell(Duration::ZERO)
        .watermark(Level::Elevated, Watermark::new(0.3, 0.2))
        .build()
        .unwrap();
    let mut rx = p.subscribe();
    p.update(0.35);
    rx.changed().await.unwrap();
    assert_eq!(*rx.borrow_and_update(), Level::Elevated);
    p.update(0.1);
    rx.changed().await.unwrap();
    assert_eq!(*rx.borrow_and_update(), Level::Normal);
}
