//! Whether a candidate is slower than the stable version, from the two arms' latency
//! histograms: the Mann-Whitney test on every request of the trial, not a ratio of two p99s
//! (over a few dozen requests a p99 is their maximum, and the ratio of two maxima is noise).
//!
//! The histograms' buckets (19 % wide) make ties: requests in the same bucket count half, and
//! the variance takes the usual tie correction. The statistic is the candidate's AUC, the
//! chance that one of its requests took longer than one of the stable version's (0.5: alike).
//!
//! The evaluator looks many times, so the test is not run at every look: it is run once the
//! candidate has `min_requests` requests and again each time its requests have doubled, and its
//! `k`-th run is judged at level `alpha / 2^k`. The levels sum to at most `alpha`, so a candidate
//! that is not slower is called slower, over the whole trial, with probability at most `alpha`
//! (a union bound over the runs), and the runs stay few (one per doubling).

use serde::Serialize;

/// The test's result, as the decision's reason and the trial view show it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencyTest {
    /// P(candidate latency > stable latency) + P(equal) / 2.
    pub auc: f64,
    /// One-sided p-value of "the candidate is slower" (the normal approximation).
    pub p_slower: f64,
    pub candidate_requests: u64,
    pub stable_requests: u64,
    /// Which run of the test this is in the trial (1 for the first): it is judged at level
    /// `alpha / 2^look`.
    pub look: u32,
}

impl LatencyTest {
    /// The level this run is judged at, for a trial-wide `alpha`.
    pub fn level(&self, alpha: f64) -> f64 {
        alpha / 2f64.powi(self.look.min(1000) as i32)
    }
}

/// The test over two histograms of the same buckets; `None` while an arm has no request.
pub fn mann_whitney(candidate: &[u64], stable: &[u64]) -> Option<LatencyTest> {
    let (n_c, n_s) = (
        candidate.iter().sum::<u64>() as f64,
        stable.iter().sum::<u64>() as f64,
    );
    if n_c == 0.0 || n_s == 0.0 {
        return None;
    }
    // U: for each candidate bucket, the stable requests below it, and half of those in it.
    let mut u = 0.0;
    let mut stable_below = 0.0;
    let mut ties = 0.0;
    for (&c, &s) in candidate.iter().zip(stable) {
        let (c, s) = (c as f64, s as f64);
        u += c * (stable_below + s / 2.0);
        stable_below += s;
        let t = c + s;
        ties += t * t * t - t;
    }
    let n = n_c + n_s;
    let mean = n_c * n_s / 2.0;
    let variance = n_c * n_s / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)).max(1.0));
    let p_slower = if variance > 0.0 {
        // With the continuity correction.
        let z = (u - mean - 0.5) / variance.sqrt();
        1.0 - normal_cdf(z)
    } else {
        0.5
    };
    Some(LatencyTest {
        auc: u / (n_c * n_s),
        p_slower,
        candidate_requests: n_c as u64,
        stable_requests: n_s as u64,
        look: 1,
    })
}

/// The standard normal CDF, through erfc (W. J. Cody's rational Chebyshev fit as in Numerical
/// Recipes' `erfcc`: relative error below 1.2e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = -z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    let erfc = if x >= 0.0 { erfc } else { 2.0 - erfc };
    erfc / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_cdf_matches_the_tables() {
        for (z, p) in [
            (0.0, 0.5),
            (1.959_964, 0.975),
            (-1.644_854, 0.05),
            (3.0, 0.998_650),
        ] {
            assert!((normal_cdf(z) - p).abs() < 2e-6, "{z}");
        }
    }

    #[test]
    fn a_slower_candidate_is_told_from_noise() {
        // Stable: 200 requests over buckets 40..50; the same shape shifted up two buckets
        // (about 40 % slower) is slower beyond doubt; the same shape is not.
        let mut stable = vec![0u64; 112];
        for i in 0..200 {
            stable[40 + i % 10] += 1;
        }
        let mut slower = vec![0u64; 112];
        for i in 0..60 {
            slower[42 + i % 10] += 1;
        }
        let t = mann_whitney(&slower, &stable).unwrap();
        assert!(t.auc > 0.6 && t.p_slower < 0.001, "{t:?}");
        let mut alike = vec![0u64; 112];
        for i in 0..60 {
            alike[40 + i % 10] += 1;
        }
        let t = mann_whitney(&alike, &stable).unwrap();
        assert!((t.auc - 0.5).abs() < 0.05 && t.p_slower > 0.2, "{t:?}");
        // One slow outlier among 60 makes the p99 ratio large, and the test does not move.
        alike[80] += 1;
        alike[40] -= 1;
        let t = mann_whitney(&alike, &stable).unwrap();
        assert!(t.p_slower > 0.1, "{t:?}");
        assert_eq!(mann_whitney(&[0; 112], &stable), None);
    }
}
