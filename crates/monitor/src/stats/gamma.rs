//! The chi-squared survival function, through the regularized upper incomplete gamma function.
//!
//! scipy computes `chi2.sf(x, k)` as `chdtrc(k, x) = igamc(k/2, x/2)` (cephes). This is not a
//! line-by-line port of cephes' `igamc` but the classic pair of evaluations — the power series
//! of `P(a, x)` below `x < a + 1`, and Lentz's continued fraction for `Q(a, x)` above — with a
//! log-gamma accurate to a few ulps, which agrees with scipy to ~1e-12 relative (see the
//! `chi2_sf` fixtures) and keeps full relative precision for p-values far in the tail.

use std::f64::consts::PI;

/// Iteration cap of the series and the continued fraction; both converge in O(√a) steps, so
/// this is only a guard against non-finite input.
const MAX_ITERATIONS: usize = 100_000;

/// `scipy.stats.chi2.sf(x, dof)` (`scipy.special.chdtrc(dof, x)`): the probability that a
/// chi-squared variable with `dof` degrees of freedom exceeds `x`.
///
/// 1 for `x <= 0` (cephes returns 1 below 0, and `Q(a, 0) = 1`), 0 for `x = ∞`, NaN for NaN
/// input or `dof < 0`; `dof == 0` gives 0 for `x > 0` (a point mass at 0).
pub fn chi2_sf(x: f64, dof: f64) -> f64 {
    if x.is_nan() || dof.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 1.0;
    }
    gamma_q(dof / 2.0, x / 2.0)
}

/// The regularized upper incomplete gamma function `Q(a, x) = Γ(a, x) / Γ(a)`.
fn gamma_q(a: f64, x: f64) -> f64 {
    if a.is_nan() || x.is_nan() || a < 0.0 || x < 0.0 || a.is_infinite() {
        return f64::NAN;
    }
    if a == 0.0 {
        return if x > 0.0 { 0.0 } else { f64::NAN };
    }
    if x == 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    if x < a + 1.0 {
        1.0 - lower_series(a, x)
    } else {
        upper_continued_fraction(a, x)
    }
}

/// `P(a, x) = e^{−x} x^a / Γ(a + 1) · Σ_{n≥0} x^n / ((a + 1)…(a + n))`, for `x < a + 1`.
fn lower_series(a: f64, x: f64) -> f64 {
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut ap = a;
    for _ in 0..MAX_ITERATIONS {
        ap += 1.0;
        term *= x / ap;
        sum += term;
        if term.abs() <= sum.abs() * f64::EPSILON {
            break;
        }
    }
    (a * x.ln() - x - ln_gamma(a + 1.0)).exp() * sum
}

/// `Q(a, x)` by the modified Lentz evaluation of its continued fraction, for `x >= a + 1`.
fn upper_continued_fraction(a: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..MAX_ITERATIONS {
        let i = i as f64;
        let an = -i * (i - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() <= f64::EPSILON {
            break;
        }
    }
    (a * x.ln() - x - ln_gamma(a)).exp() * h
}

/// `B_{2k} / (2k (2k − 1))` for k = 1…8: the coefficients of Stirling's series.
const STIRLING: [f64; 8] = [
    1.0 / 12.0,
    -1.0 / 360.0,
    1.0 / 1260.0,
    -1.0 / 1680.0,
    1.0 / 1188.0,
    -691.0 / 360_360.0,
    1.0 / 156.0,
    -3617.0 / 122_400.0,
];

/// `ln Γ(x)` for `x > 0`: Stirling's series from 10 up (its truncation error is below 1e-17
/// there), and the recurrence `Γ(x) = Γ(x + k) / (x (x + 1) … (x + k − 1))` below.
pub(crate) fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    if x >= 10.0 {
        return stirling(x);
    }
    let mut shifted = x;
    let mut product = 1.0;
    while shifted < 10.0 {
        product *= shifted;
        shifted += 1.0;
    }
    stirling(shifted) - product.ln()
}

fn stirling(x: f64) -> f64 {
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let series = STIRLING.iter().rev().fold(0.0, |acc, &c| acc * inv2 + c) * inv;
    (x - 0.5) * x.ln() - x + 0.5 * (2.0 * PI).ln() + series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_of_integers_is_log_factorial() {
        let mut factorial = 1.0f64;
        for n in 1..30u32 {
            let expected = factorial.ln();
            let got = ln_gamma(f64::from(n));
            assert!(
                (got - expected).abs() <= 1e-13 * expected.abs().max(1.0),
                "{n}"
            );
            factorial *= f64::from(n);
        }
        assert!((ln_gamma(0.5) - PI.sqrt().ln()).abs() < 1e-14);
    }

    #[test]
    fn chi2_sf_edges() {
        assert_eq!(chi2_sf(0.0, 3.0), 1.0);
        assert_eq!(chi2_sf(-1.0, 3.0), 1.0);
        assert_eq!(chi2_sf(f64::INFINITY, 3.0), 0.0);
        assert!(chi2_sf(f64::NAN, 3.0).is_nan());
        // dof 2: sf = exp(-x/2).
        assert!((chi2_sf(3.0, 2.0) - (-1.5f64).exp()).abs() < 1e-14);
    }
}
