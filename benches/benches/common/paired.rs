//! Paired runs, for a machine whose speed drifts from run to run: the alternative and floodway take
//! turns, one run each per round (the order swapped every round), and each round's ratio (the
//! alternative's time over floodway's) is taken on its own. A change of the machine's speed that
//! lasts longer than a round moves both runs of the round and not their ratio, so the median ratio
//! holds still where criterion's separate estimates do not.

/// The sorted ratios of `rounds` paired rounds (after a warm-up), the alternative's time over
/// floodway's: above 1.0, floodway was faster in that round.
pub(crate) fn ratios(rounds: usize, alternative: &dyn Fn(), floodway: &dyn Fn()) -> Ratios {
    const WARM_UP: usize = 20;
    let time = |run: &dyn Fn()| {
        let start = std::time::Instant::now();
        run();
        start.elapsed().as_secs_f64()
    };
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..WARM_UP + rounds {
        let (a, f) = if round % 2 == 0 {
            let a = time(alternative);
            (a, time(floodway))
        } else {
            let f = time(floodway);
            (time(alternative), f)
        };
        if round >= WARM_UP {
            ratios.push(a / f);
        }
    }
    ratios.sort_by(f64::total_cmp);
    Ratios(ratios)
}

/// Sorted per-round ratios.
pub(crate) struct Ratios(Vec<f64>);

impl Ratios {
    /// The ratio at quantile `p` (0.5 is the median).
    pub(crate) fn at(&self, p: f64) -> f64 {
        self.0[((self.0.len() - 1) as f64 * p).round() as usize]
    }

    /// How many rounds had a ratio of at least `floor`.
    pub(crate) fn at_least(&self, floor: f64) -> usize {
        self.0.iter().filter(|r| **r >= floor).count()
    }

    /// "median 1.02x (quartiles 0.97x-1.08x)".
    pub(crate) fn summary(&self) -> String {
        format!(
            "median {:.2}x (quartiles {:.2}x-{:.2}x)",
            self.at(0.5),
            self.at(0.25),
            self.at(0.75)
        )
    }
}

/// A bench's `main`: criterion's benches (`criterion`, from `criterion_group!`), or with
/// `FLOODWAY_PAIRED=ROUNDS` the paired runs (`paired`) instead.
pub(crate) fn main(criterion: fn(), paired: fn(usize)) {
    match std::env::var("FLOODWAY_PAIRED") {
        Ok(rounds) => paired(
            rounds
                .parse()
                .expect("FLOODWAY_PAIRED is a number of rounds"),
        ),
        Err(_) => {
            criterion();
            criterion::Criterion::default()
                .configure_from_args()
                .final_summary();
        }
    }
}
