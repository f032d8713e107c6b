//! The GCRA arithmetic, on nanoseconds since a limiter's start. Private: users see `Quota` and the
//! limiters.

use super::{Allowed, Quota};

/// The outcome of testing one request against a TAT.
pub(crate) enum Decision {
    /// Allowed: store `tat`.
    Allow { tat: u64, allowed: Allowed },
    /// Refused until `wait` has passed.
    Deny { wait: u64 },
    /// Larger than the burst: never.
    Never,
}

/// Tests `n` cells arriving at `now` against `tat`, all in nanoseconds.
#[inline]
pub(crate) fn decide(quota: Quota, tat: u64, now: u64, n: u32) -> Decision {
    decide_raw(
        quota.interval.as_nanos() as u64,
        quota.burst.get(),
        tat,
        now,
        n,
    )
}

/// [`decide`] on a quota given as its emission interval `t` (nanoseconds) and `burst`, the form a
/// limiter keeps in atomics (no `Duration` round trip on the hot path).
#[inline]
pub(crate) fn decide_raw(t: u64, burst: u32, tat: u64, now: u64, n: u32) -> Decision {
    if n > burst {
        return Decision::Never;
    }
    let tau = t.saturating_mul(u64::from(burst));
    let new_tat = tat.max(now).saturating_add(t.saturating_mul(u64::from(n)));
    let allow_at = new_tat.saturating_sub(tau);
    if now < allow_at {
        return Decision::Deny {
            wait: allow_at - now,
        };
    }
    Decision::Allow {
        tat: new_tat,
        allowed: Allowed {
            burst,
            interval_nanos: t,
            debt_nanos: new_tat - now,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn burst_then_one_per_interval() {
        let q = Quota::per_second(NonZeroU32::new(10).unwrap())
            .allow_burst(NonZeroU32::new(3).unwrap());
        let ms = 1_000_000u64;
        let mut tat = 0;
        for expect_remaining in [2, 1, 0] {
            match decide(q, tat, 0, 1) {
                Decision::Allow { tat: t, allowed } => {
                    assert_eq!(allowed.remaining(), expect_remaining);
                    tat = t;
                }
                _ => panic!("burst must pass"),
            }
        }
        match decide(q, tat, 0, 1) {
            Decision::Deny { wait } => assert_eq!(wait, 100 * ms),
            _ => panic!("fourth must wait one interval"),
        }
        assert!(matches!(
            decide(q, tat, 100 * ms, 1),
            Decision::Allow { .. }
        ));
        assert!(matches!(decide(q, 0, 0, 4), Decision::Never));
    }
}
