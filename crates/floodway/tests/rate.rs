//! GCRA limiters against exact expected decisions, with paused time.

use std::num::NonZeroU32;
use std::time::Duration;

use floodway::limit::rate::{KeyedRateError, RateError};
use floodway::{KeyedRateLimiter, Quota, RateLimiter};
use tokio::time::{Instant, advance};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn gcra_exact_decisions() {
    // 10 per second (one per 100 ms), burst 3.
    let l = RateLimiter::new(Quota::per_second(nz(10)).allow_burst(nz(3)));
    let remaining: Vec<u32> = (0..3).map(|_| l.check().unwrap().remaining()).collect();
    assert_eq!(remaining, vec![2, 1, 0]);
    assert_eq!(l.check().unwrap_err().retry_after, ms(100));
    advance(ms(40)).await;
    assert_eq!(l.check().unwrap_err().retry_after, ms(60));
    advance(ms(60)).await;
    let a = l.check().unwrap();
    assert_eq!((a.remaining(), a.reset()), (0, ms(300)));
    // Sustained: exactly one per interval.
    for _ in 0..5 {
        assert!(l.check().is_err());
        advance(ms(100)).await;
        assert!(l.check().is_ok());
    }
    assert_eq!(l.limited_count(), 7);
}

/// On the counter clock (which paused time cannot drive) the same quota must give the same
/// decisions, with waits and resets in real nanoseconds. Real time passes between checks here, so
/// the figures are bounded rather than exact (the checks take microseconds; the slack is 30 ms, a
/// third of the interval, so a wait in the wrong unit still falls outside it).
#[test]
fn the_counter_clock_gives_the_same_decisions_in_real_time() {
    let l = RateLimiter::with_clock(
        Quota::per_second(nz(10)).allow_burst(nz(3)),
        floodway::Clock::tsc(),
    );
    let slack = ms(30);
    let passed: Vec<_> = (0..3).map(|_| l.check().unwrap()).collect();
    let remaining: Vec<u32> = passed.iter().map(|a| a.remaining()).collect();
    assert_eq!(remaining, vec![2, 1, 0]);
    let reset = passed[2].reset();
    assert!(reset <= ms(300) && reset + slack >= ms(300), "{reset:?}");
    let wait = l.check().unwrap_err().retry_after;
    assert!(wait <= ms(100) && wait + slack >= ms(100), "{wait:?}");
    match l.check_n(nz(2)) {
        Err(RateError::Limited(x)) => {
            assert!(x.retry_after <= ms(200) && x.retry_after + slack >= ms(200));
        }
        other => panic!("expected Limited, got {other:?}"),
    }
    std::thread::sleep(wait);
    l.check().unwrap();
    assert!(l.check().is_err());
    assert_eq!(l.quota(), Quota::per_second(nz(10)).allow_burst(nz(3)));
    assert_eq!(l.limited_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn check_n_is_all_or_nothing_and_never_beyond_burst() {
    let l = RateLimiter::new(Quota::per_second(nz(10)).allow_burst(nz(5)));
    l.check_n(nz(4)).unwrap();
    match l.check_n(nz(2)) {
        Err(RateError::Limited(x)) => assert_eq!(x.retry_after, ms(100)),
        other => panic!("expected Limited, got {other:?}"),
    }
    l.check_n(nz(1)).unwrap();
    match l.check_n(nz(6)) {
        Err(RateError::Insufficient(e)) => assert_eq!((e.requested, e.burst), (6, 5)),
        other => panic!("expected Insufficient, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn quota_changes_at_run_time() {
    let l = RateLimiter::new(Quota::per_second(nz(1)));
    l.check().unwrap();
    assert_eq!(l.check().unwrap_err().retry_after, ms(1000));
    l.set_quota(Quota::per_second(nz(10)).allow_burst(nz(1)));
    // The debt of one cell (TAT 1 s ahead) stays; the faster rate applies to what follows.
    assert_eq!(l.check().unwrap_err().retry_after, ms(1000));
    advance(ms(1000)).await;
    l.check().unwrap();
    assert_eq!(l.check().unwrap_err().retry_after, ms(100));
}

#[tokio::test(start_paused = true)]
async fn until_ready_waits_exactly_as_long_as_needed() {
    let l = RateLimiter::new(Quota::per_second(nz(4)).allow_burst(nz(1)));
    let start = Instant::now();
    for _ in 0..5 {
        l.until_ready().await;
    }
    assert_eq!(start.elapsed(), ms(1000));
    let err = l.until_n_ready(nz(2)).await.unwrap_err();
    assert_eq!(err.burst, 1);
}

#[tokio::test(start_paused = true)]
async fn keyed_limits_are_per_key() {
    let l = KeyedRateLimiter::new(Quota::per_second(nz(2)), 100);
    l.check(&"a").unwrap();
    l.check(&"a").unwrap();
    assert!(matches!(l.check(&"a"), Err(KeyedRateError::Limited(_))));
    l.check(&"b").unwrap();
    assert_eq!(l.stats().keys, 2);
}

#[tokio::test(start_paused = true)]
async fn keyed_state_is_bounded_and_idle_keys_are_forgotten() {
    let l = KeyedRateLimiter::new(Quota::per_second(nz(10)).allow_burst(nz(1)), 3)
        .with_sweep_every(Duration::from_secs(3600));
    for k in 0..3 {
        l.check(&k).unwrap();
    }
    // Full of active keys: a new key is refused, with the time until the first key goes idle.
    match l.check(&99) {
        Err(KeyedRateError::TooManyKeys { retry_after }) => assert_eq!(retry_after, ms(100)),
        other => panic!("expected TooManyKeys, got {other:?}"),
    }
    // Known keys are still served (and limited) normally.
    assert!(matches!(l.check(&0), Err(KeyedRateError::Limited(_))));
    advance(ms(100)).await;
    // All three are idle now: the new key evicts them and is tracked.
    l.check(&99).unwrap();
    let s = l.stats();
    assert_eq!((s.keys, s.evicted, s.refused_keys), (1, 3, 1));
    // A key that went idle and came back is treated exactly like a fresh one.
    l.check(&0).unwrap();
}

#[tokio::test(start_paused = true)]
async fn periodic_sweeps_keep_memory_to_active_keys() {
    let l = KeyedRateLimiter::new(Quota::per_second(nz(100)), 1_000_000).with_sweep_every(ms(500));
    for k in 0..10_000u32 {
        l.check(&k).unwrap();
    }
    advance(ms(600)).await;
    l.check(&1).unwrap();
    assert_eq!(l.stats().keys, 1);
    assert_eq!(l.retain_recent(), 0);
}
