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
    let t = quota.interval.as_nanos() as u64;
    let burst = quota.burst.get();
    if n > burst {
        return Decision::Never;
    }
    match test(
        tolerance(t, burst),
        t.saturating_mul(u64::from(n)),
        tat,
        now,
    ) {
        Ok(tat) => Decision::Allow {
            tat,
            allowed: Allowed {
                burst,
                interval_nanos: t,
                debt_nanos: tat - now,
            },
        },
        Err(wait) => Decision::Deny { wait },
    }
}

/// The burst tolerance (tau): how far the TAT may run ahead of now, `burst` emission intervals
/// of `t` nanoseconds.
#[inline]
pub(crate) fn tolerance(t: u64, burst: u32) -> u64 {
    t.saturating_mul(u64::from(burst))
}

/// The GCRA test itself: a request costing `step` nanoseconds of emission (n cells times the
/// interval) at `now`, against `tat`, with tolerance `tau`. The new TAT when it passes, else how
/// long until it would. The caller has checked that the request fits in the burst at all.
///
/// Kept to this much so that a limiter that stores `tau` beside its quota pays one comparison and
/// no multiplication per check.
#[inline(always)]
pub(crate) fn test(tau: u64, step: u64, tat: u64, now: u64) -> Result<u64, u64> {
    let new_tat = tat.max(now).saturating_add(step);
    let allow_at = new_tat.saturating_sub(tau);
    if now < allow_at {
        Err(allow_at - now)
    } else {
        Ok(new_tat)
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
