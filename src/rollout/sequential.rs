//! The sequential accuracy test of a canary: an anytime-valid confidence sequence for the
//! difference of the two arms' accuracies, so that the evaluator may look after every labelled
//! row and still keep its error rates.
//!
//! The interval is the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and
//! Ramdas ("Time-uniform central limit theory and asymptotic confidence sequences", 2021,
//! Theorem 2.2), applied to the difference of the two accuracies: over `t = n_c + n_s`
//! labelled rows with estimated standard deviation `σ` (per row, so that `σ / √t` is the usual
//! standard error),
//!
//! ```text
//! d̂ ± σ · √( 2(tρ² + 1) / (t²ρ²) · ln( √(tρ² + 1) / α ) )
//! ```
//!
//! holds the true difference at every `t` at once with probability at least `1 − α`
//! (asymptotically; the simulation in the tests measures the rates at the sizes a canary sees).
//! `ρ` only sets where the interval is tightest; it is fixed by the configuration (the row count
//! at which a fixed-size test would resolve the margin), never by the data.
//!
//! Paired, on rows both versions answered (a shadow candidate scores a copy of each request the
//! stable version answers), the same sequence is applied to the per-row difference
//! `d = candidate right − stable right ∈ {−1, 0, 1}` over `t` pairs: its mean is the accuracy
//! difference, only the discordant pairs (McNemar's `b`, right on the stable side only, and `c`,
//! on the candidate's only) move it, and its variance `(b + c)/t − ((c − b)/t)²` is far below
//! the unpaired one when the two versions mostly agree, so the same margin is resolved on fewer
//! labelled rows.
//!
//! The rule, with margin `m` (`max_accuracy_drop`): promote once the interval's low end is above
//! `−m` (the candidate is not worse by more than `m`); roll back once its high end is below 0
//! (the candidate is worse than stable). A candidate worse by `m` or more is promoted, and one as
//! good as stable or better rolled back, each with probability at most `α`, however often the
//! evaluator looks. Once the interval is narrower than `m` one of the two holds, so every trial
//! ends; the row count at which that happens bounds "needs at most about N more labelled rows".

/// The interval for the accuracy difference (candidate − stable) after some labelled rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// Labelled rows of one arm.
#[derive(Clone, Copy, Debug)]
pub struct Arm {
    pub correct: u64,
    pub labelled: u64,
}

impl Arm {
    fn accuracy(self) -> f64 {
        self.correct as f64 / self.labelled as f64
    }

    /// The per-row variance of the arm's correctness, from the accuracy shrunk towards 1/2
    /// (`(k + 1) / (n + 2)`): an arm that has been right on every row so far still counts as
    /// uncertain.
    fn variance(self) -> f64 {
        let p = (self.correct as f64 + 1.0) / (self.labelled as f64 + 2.0);
        p * (1.0 - p)
    }
}

/// Labelled rows that both versions answered, and the discordant ones.
#[derive(Clone, Copy, Debug)]
pub struct Pairs {
    pub pairs: u64,
    /// Right on the stable side only (McNemar's `b`).
    pub stable_only: u64,
    /// Right on the candidate's side only (`c`).
    pub candidate_only: u64,
}

impl Pairs {
    /// The per-row variance of the difference, from the discordant shares shrunk as an arm's
    /// accuracy is (`(k + 1) / (n + 2)`): pairs that have all agreed so far still count as
    /// uncertain.
    fn variance(self) -> f64 {
        let n = self.pairs as f64 + 2.0;
        let b = (self.stable_only as f64 + 1.0) / n;
        let c = (self.candidate_only as f64 + 1.0) / n;
        b + c - (c - b).powi(2)
    }
}

/// The `1 − alpha` interval for the accuracy difference on paired rows; `None` before any.
pub fn paired_interval(p: Pairs, alpha: f64, rho2: f64) -> Option<Interval> {
    if p.pairs == 0 {
        return None;
    }
    let t = p.pairs as f64;
    let estimate = (p.candidate_only as f64 - p.stable_only as f64) / t;
    let r = radius(t, p.variance().sqrt(), alpha, rho2);
    // A difference of two accuracies lies in [−1, 1].
    Some(Interval {
        estimate,
        low: (estimate - r).max(-1.0),
        high: (estimate + r).min(1.0),
    })
}

/// About how many more labelled pairs (with today's discordance) until the interval's radius
/// is below `radius_below`.
pub fn paired_rows_to_decide(p: Pairs, alpha: f64, rho2: f64, radius_below: f64) -> u64 {
    rows_until(
        p.pairs as f64,
        p.variance().sqrt(),
        alpha,
        rho2,
        radius_below,
    )
}

/// `ρ²` for a sequence that is tightest near `t_star` rows (the paper's closed form).
pub fn rho_squared(alpha: f64, t_star: f64) -> f64 {
    let l = -2.0 * alpha.ln();
    (l + (l + 1.0).ln()) / t_star.max(1.0)
}

/// Where the sequence is tuned to be tightest: the rows a fixed-size two-sided test at level
/// `alpha` needs to resolve `margin` when both arms are near 85 % accuracy and share the
/// traffic evenly (a per-row standard deviation of 0.7).
pub fn planned_rows(alpha: f64, margin: f64) -> f64 {
    let z = normal_quantile(1.0 - alpha / 2.0);
    (z * 0.7 / margin).powi(2)
}

fn radius(t: f64, sigma: f64, alpha: f64, rho2: f64) -> f64 {
    let tr = t * rho2 + 1.0;
    sigma * (2.0 * tr / (t * t * rho2) * (tr.sqrt() / alpha).ln()).sqrt()
}

/// The per-row standard deviation of the difference: `σ² = t · (v_c / n_c + v_s / n_s)`.
fn sigma(candidate: Arm, stable: Arm) -> f64 {
    let t = (candidate.labelled + stable.labelled) as f64;
    (t * (candidate.variance() / candidate.labelled as f64
        + stable.variance() / stable.labelled as f64))
        .sqrt()
}

/// The `1 − alpha` interval after the rows so far; `None` while an arm has none.
pub fn interval(candidate: Arm, stable: Arm, alpha: f64, rho2: f64) -> Option<Interval> {
    if candidate.labelled == 0 || stable.labelled == 0 {
        return None;
    }
    let t = (candidate.labelled + stable.labelled) as f64;
    let estimate = candidate.accuracy() - stable.accuracy();
    let r = radius(t, sigma(candidate, stable), alpha, rho2);
    Some(Interval {
        estimate,
        low: estimate - r,
        high: estimate + r,
    })
}

/// About how many more labelled rows (both arms together, in today's proportions and with
/// today's variances) until the interval's radius is below `radius_below`.
pub fn rows_to_decide(
    candidate: Arm,
    stable: Arm,
    alpha: f64,
    rho2: f64,
    radius_below: f64,
) -> u64 {
    let now = (candidate.labelled + stable.labelled) as f64;
    rows_until(now, sigma(candidate, stable), alpha, rho2, radius_below)
}

/// Rows from `now` until the radius with per-row deviation `s` is below `radius_below`.
fn rows_until(now: f64, s: f64, alpha: f64, rho2: f64, radius_below: f64) -> u64 {
    let narrow = |t: f64| radius(t, s, alpha, rho2) < radius_below;
    if narrow(now) {
        return 0;
    }
    // The radius shrinks like √(ln t / t) past the tuning point: double, then bisect.
    let mut high = now.max(1.0) * 2.0;
    while !narrow(high) && high < 1e12 {
        high *= 2.0;
    }
    let mut low = now;
    while high - low > 1.0 {
        let mid = (low + high) / 2.0;
        if narrow(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    (high - now).ceil() as u64
}

/// The standard normal quantile (Acklam's rational approximation, relative error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles_match_the_tables() {
        for (p, z) in [(0.975, 1.959_963_985), (0.95, 1.644_853_627), (0.5, 0.0)] {
            assert!((normal_quantile(p) - z).abs() < 1e-8, "{p}");
            assert!((normal_quantile(1.0 - p) + z).abs() < 1e-8, "{p}");
        }
        assert!((normal_quantile(0.001) + 3.090_232_306).abs() < 1e-7);
    }

    #[test]
    fn the_interval_is_wider_than_a_fixed_size_one_and_shrinks_with_rows() {
        let alpha = 0.05;
        let rho2 = rho_squared(alpha, planned_rows(alpha, 0.05));
        let at = |n: u64| {
            interval(
                Arm {
                    correct: n * 85 / 100,
                    labelled: n,
                },
                Arm {
                    correct: n * 80 / 100,
                    labelled: n,
                },
                alpha,
                rho2,
            )
            .unwrap()
        };
        let (small, large) = (at(100), at(10_000));
        assert!((small.estimate - 0.05).abs() < 1e-12);
        let fixed = 1.96 * (0.85f64 * 0.15 / 100.0 + 0.8 * 0.2 / 100.0).sqrt();
        assert!(
            small.high - small.estimate > fixed,
            "anytime validity costs width"
        );
        assert!(large.high - large.low < (small.high - small.low) / 5.0);
        let more = rows_to_decide(
            Arm {
                correct: 85,
                labelled: 100,
            },
            Arm {
                correct: 80,
                labelled: 100,
            },
            alpha,
            rho2,
            0.05,
        );
        assert!(more > 0);
        let then = at(100 + more.div_ceil(2));
        assert!(then.high - then.low < 0.1 + 1e-3, "{then:?}");
    }
}
