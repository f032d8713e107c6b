//! tower layers: shared state across clones, typed refusals with hints.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use floodway::layer::{
    BoxError, ConcurrencyLimitLayer, KeyedRateLimitLayer, QueueLayer, RateLimitLayer, Reason,
    Refused,
};
use floodway::queue::Meta;
use floodway::{
    CoDel, ConcurrencyLimiter, DropReason, KeyedRateLimiter, Overflow, Quota, RateLimiter,
};
use tower::{Layer, ServiceExt, service_fn};

fn reason(e: &BoxError) -> Reason {
    e.downcast_ref::<Refused>()
        .expect("a floodway refusal")
        .reason()
}

#[tokio::test(start_paused = true)]
async fn rate_limit_is_shared_by_every_clone() {
    let limiter = Arc::new(RateLimiter::new(Quota::per_second(
        NonZeroU32::new(3).unwrap(),
    )));
    let svc = RateLimitLayer::new(limiter)
        .layer(service_fn(|x: u32| async move { Ok::<_, BoxError>(x) }));
    let mut ok = 0;
    let mut refused = Vec::new();
    for i in 0..6 {
        // A new clone per request, as a server makes one per connection.
        match svc.clone().oneshot(i).await {
            Ok(_) => ok += 1,
            Err(e) => refused.push(e),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(refused.len(), 3);
    let r = refused[0].downcast_ref::<Refused>().unwrap();
    assert_eq!(r.reason(), Reason::Rate);
    assert!(r.retry_after().unwrap() <= Duration::from_millis(334));
}

#[tokio::test(start_paused = true)]
async fn keyed_rate_limit_takes_the_key_from_the_request() {
    let limiter = Arc::new(KeyedRateLimiter::new(
        Quota::per_second(NonZeroU32::new(1).unwrap()),
        16,
    ));
    let svc = KeyedRateLimitLayer::new(limiter, |req: &(&'static str, u32)| req.0).layer(
        service_fn(|r: (&'static str, u32)| async move { Ok::<_, BoxError>(r.1) }),
    );
    assert!(svc.clone().oneshot(("a", 1)).await.is_ok());
    let e = svc.clone().oneshot(("a", 2)).await.unwrap_err();
    assert_eq!(reason(&e), Reason::Rate);
    assert!(svc.clone().oneshot(("b", 3)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_refuses_beyond_the_limit_and_learns_from_responses() {
    let limiter = ConcurrencyLimiter::fixed(2);
    let svc = ConcurrencyLimitLayer::new(limiter.clone()).layer(service_fn(|d: u64| async move {
        tokio::time::sleep(Duration::from_millis(d)).await;
        Ok::<_, BoxError>(d)
    }));
    let a = tokio::spawn(svc.clone().oneshot(100));
    let b = tokio::spawn(svc.clone().oneshot(100));
    tokio::task::yield_now().await;
    assert_eq!(limiter.stats().in_flight, 2);
    let e = svc.clone().oneshot(1).await.unwrap_err();
    assert_eq!(reason(&e), Reason::Concurrency);
    assert_eq!(a.await.unwrap().unwrap(), 100);
    b.await.unwrap().unwrap();
    assert_eq!(limiter.stats().in_flight, 0);
    assert_eq!(limiter.stats().samples, 2);
}

#[tokio::test(start_paused = true)]
async fn queue_layer_answers_every_caller_even_when_it_sheds() {
    // A slow inner service (one request at a time, 10 ms each) behind a CoDel-managed queue.
    let inner =
        tower::limit::ConcurrencyLimitLayer::new(1).layer(service_fn(|id: u32| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, BoxError>(id)
        }));
    let svc = QueueLayer::new(10_000, Overflow::Reject)
        .codel(
            CoDel::new(Duration::from_millis(5), Duration::from_millis(50)),
            false,
        )
        .with_meta(|_: &u32| Meta::default())
        .layer(inner);
    // 200 requests arrive at once: far more than 10 ms each can serve within the target.
    let calls: Vec<_> = (0..200)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    let mut served = 0;
    let mut shed = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => served += 1,
            Err(e) => {
                assert_eq!(reason(&e), Reason::Shed(DropReason::Shed));
                shed += 1;
            }
        }
    }
    assert_eq!(served + shed, 200, "every caller hears back");
    assert!(shed > 0 && served > 0, "served {served}, shed {shed}");
    let stats = svc.stats();
    assert_eq!(stats.dead_lettered.get(DropReason::Shed), shed);
}

#[tokio::test(start_paused = true)]
async fn queue_layer_rejects_when_full_with_a_hint() {
    let inner = service_fn(|_: u32| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, BoxError>(())
    });
    let inner = tower::limit::ConcurrencyLimitLayer::new(1).layer(inner);
    let svc = QueueLayer::new(2, Overflow::Reject).layer(inner);
    // One request in the service, one held by the worker waiting for the service to be ready,
    // two in the queue: the queue is full.
    let mut pending = Vec::new();
    for i in 0..4u64 {
        pending.push(tokio::spawn(svc.clone().oneshot(i as u32)));
        // Let the worker take what it can before the next request arrives.
        for _ in 0..100 {
            let s = svc.stats();
            if s.offered == i + 1 && s.delivered == (i + 1).min(2) {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(svc.stats().len, 2, "{:?}", svc.stats());
    let e = svc.clone().oneshot(9).await.unwrap_err();
    let r = e.downcast_ref::<Refused>().unwrap();
    assert_eq!(r.reason(), Reason::Full);
    assert!(r.retry_after().is_some());
    for p in pending {
        p.await.unwrap().unwrap();
    }
}
