//! Whether a candidate's error rate is above `max_error_rate`, as a test rather than a comparison
//! of the rate so far with the bound: one-sided, on the candidate's requests and failures, run
//! with the latency test (once the candidate has `min_requests` requests and at each doubling)
//! and judged at the same share of `alpha` (`alpha / 2^k` for the `k`-th run), so that a candidate
//! whose error rate is at most `max_error_rate` is rolled back for it with probability at most
//! `alpha` over the whole trial.

use serde::Serialize;

/// The test's result, as the decision's reason and the trial view show it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ErrorTest {
    pub requests: u64,
    pub errors: u64,
    /// One-sided p-value of "the error rate is above the bound": P(X ≥ errors) for
    /// X ~ Binomial(requests, bound).
    pub p_above: f64,
    /// Which run of the trial's tests this is (1 for the first).
    pub look: u32,
}

impl ErrorTest {
    pub fn level(&self, alpha: f64) -> f64 {
        alpha / 2f64.powi(self.look.min(1000) as i32)
    }
}

/// The test of `errors` failures in `requests` against the rate `bound`.
pub fn above(requests: u64, errors: u64, bound: f64, look: u32) -> ErrorTest {
    ErrorTest {
        requests,
        errors,
        p_above: upper_tail(requests, errors, bound),
        look,
    }
}

/// P(X ≥ k) for X ~ Binomial(n, p): exact while `n·p` is small (where the normal approximation
/// is poor and the terms cannot underflow), the normal approximation with continuity correction
/// beyond.
fn upper_tail(n: u64, k: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    let p = p.clamp(0.0, 1.0);
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (nf, kf) = (n as f64, k as f64);
    if nf * p < 10.0 {
        // P(X ≥ k) = 1 − Σ_{i<k} P(X = i), the terms by their ratio from (1 − p)^n.
        let mut term = (1.0 - p).powf(nf);
        let mut below = 0.0;
        for i in 0..k {
            below += term;
            let i = i as f64;
            term *= (nf - i) / (i + 1.0) * p / (1.0 - p);
            if term < 1e-300 && i > nf * p {
                break;
            }
        }
        return (1.0 - below).clamp(0.0, 1.0);
    }
    let z = (kf - 0.5 - nf * p) / (nf * p * (1.0 - p)).sqrt();
    1.0 - super::latency::normal_cdf(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_match_the_binomial() {
        // Binomial(200, 0.01): P(X ≥ 3) = 1 − 0.1340 − 0.2707 − 0.2720 = 0.3233.
        assert!((upper_tail(200, 3, 0.01) - 0.3233).abs() < 1e-3);
        assert_eq!(upper_tail(200, 0, 0.01), 1.0);
        assert_eq!(upper_tail(5, 6, 0.5), 0.0);
        // Normal regime: Binomial(10,000, 0.01), 130 failures is three standard deviations up.
        let p = upper_tail(10_000, 130, 0.01);
        assert!(p > 0.001 && p < 0.003, "{p}");
    }
}
