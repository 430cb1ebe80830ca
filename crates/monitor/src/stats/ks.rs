//! The two-sample Kolmogorov–Smirnov test, ported from scipy 1.17's `ks_2samp`
//! (`scipy/stats/_stats_py.py`, with `_compute_outer_prob_inside_method` from
//! `_stats_pythran.py` and the asymptotic `kstwo` distribution from `_ksstats.py`).

use serde::Serialize;

use super::kolmogorov::kstwo_sf;
use super::SortedValues;

/// `method="auto"` computes the exact p-value when the larger sample has at most this many values
/// (scipy's `MAX_AUTO_N`), the asymptotic one beyond.
pub const MAX_EXACT_N: usize = 10_000;

/// How a KS p-value was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KsMethod {
    /// The exact distribution of the statistic under the null (lattice-path counting).
    Exact,
    /// `kstwo.sf(d, round(n1·n2 / (n1 + n2)))`: for large samples, or where the exact
    /// computation failed (scipy falls back the same way).
    Asymptotic,
}

/// A two-sample KS result: the statistic `D = max |F_a − F_b|` and its two-sided p-value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct KsTest {
    pub statistic: f64,
    pub pvalue: f64,
    /// Not part of the report's JSON, which names only the statistic and the p-value.
    #[serde(skip)]
    pub method: KsMethod,
}

/// `scipy.stats.ks_2samp(a, b, alternative="two-sided", method="auto")`.
///
/// The statistic is the largest absolute difference of the two empirical CDFs evaluated at every
/// value of the merged sample (`np.searchsorted(…, side="right")`, so ties count fully on both
/// sides). The p-value is exact when `max(n1, n2) <= 10000` — with the statistic then reported as
/// scipy does, `h / lcm(n1, n2)` for the integer `h` nearest `D·lcm` — and asymptotic otherwise or
/// when the exact computation leaves `[0, 1]`; it is finally clipped to `[0, 1]`.
///
/// `None` when either sample is empty (scipy raises).
pub fn ks_2samp(a: &SortedValues, b: &SortedValues) -> Option<KsTest> {
    let (a, b) = (a.as_slice(), b.as_slice());
    let (n1, n2) = (a.len(), b.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let mut d = statistic(a, b);
    if n1.max(n2) <= MAX_EXACT_N {
        let exact = attempt_exact(n1 as u64, n2 as u64, d);
        if let Some(pvalue) = exact.pvalue {
            return Some(KsTest {
                statistic: exact.d,
                pvalue: pvalue.clamp(0.0, 1.0),
                method: KsMethod::Exact,
            });
        }
        // scipy keeps the rounded statistic when it falls back to the asymptotic p-value.
        d = exact.d;
    }
    Some(KsTest {
        statistic: d,
        pvalue: asymptotic_pvalue(n1, n2, d),
        method: KsMethod::Asymptotic,
    })
}

/// `max |F_a(x) − F_b(x)|` over the merged values, as scipy computes it: the largest positive and
/// the (clipped) largest negative difference, the negative one winning only when strictly larger.
fn statistic(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let (mut max_diff, mut min_diff) = (f64::NEG_INFINITY, f64::INFINITY);
    while i < a.len() || j < b.len() {
        let x = match (a.get(i), b.get(j)) {
            (Some(&u), Some(&v)) => u.min(v),
            (Some(&u), None) => u,
            (None, Some(&v)) => v,
            (None, None) => break,
        };
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        let diff = i as f64 / n1 - j as f64 / n2;
        max_diff = max_diff.max(diff);
        min_diff = min_diff.min(diff);
    }
    let min_s = (-min_diff).clamp(0.0, 1.0);
    if min_s > max_diff {
        min_s
    } else {
        max_diff
    }
}

/// What `_attempt_exact_2kssamp` returns: the statistic rounded to the lattice, and the p-value
/// when the exact computation succeeded.
struct Exact {
    d: f64,
    pvalue: Option<f64>,
}

/// `_attempt_exact_2kssamp(n1, n2, g, d, "two-sided")`.
fn attempt_exact(n1: u64, n2: u64, d: f64) -> Exact {
    let g = gcd(n1, n2);
    let lcm = (n1 / g) * n2;
    let h_float = (d * lcm as f64).round_ties_even();
    let h = h_float as u64;
    let d = h as f64 / lcm as f64;
    if h == 0 {
        return Exact {
            d,
            pvalue: Some(1.0),
        };
    }
    let prob = if n1 == n2 {
        Some(prob_outside_square(n1, h))
    } else {
        outer_prob_inside(n1, n2, g, h)
    };
    Exact {
        d,
        pvalue: prob.filter(|p| (0.0..=1.0).contains(p)),
    }
}

/// `_compute_prob_outside_square(n, h)`: `P(D_{n,n} >= h/n)`, the alternating binomial sum
/// evaluated in scipy's Horner-like form to avoid cancellation.
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let (n, h) = (n as i64, h as i64);
    let mut p = 0.0f64;
    let mut k = (n as f64 / h as f64).floor() as i64;
    while k >= 0 {
        let mut p1 = 1.0f64;
        for j in 0..h {
            p1 = (n - k * h - j) as f64 * p1 / (n + k * h + j + 1) as f64;
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// `_compute_outer_prob_inside_method(m, n, g, h)`: the proportion of lattice paths from (0, 0)
/// to (m, n) that leave the band `|x/m − y/n| < h / lcm(m, n)`, by Hodges' inside method with
/// Viehmann's recursion for `1 − p` (numerically stable for small p-values).
///
/// One column of the path-count matrix is kept, in a window that slides with the band, so memory
/// is O(n) and time O(m · band width). `None` if an index would leave the window (scipy's pythran
/// code would read out of bounds there; it cannot happen for valid arguments).
fn outer_prob_inside(m: u64, n: u64, g: u64, h: u64) -> Option<f64> {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (m, n, g, h) = (m as i64, n as i64, g as i64, h as i64);
    let (mg, ng) = (m / g, n / g);
    let mut minj: i64 = 0;
    let mut maxj: i64 = ((h as f64 / mg as f64).ceil() as i64).min(n + 1);
    let mut curlen = maxj - minj;
    let len_a = (2 * maxj + 2).min(n + 1);
    let mut a = vec![1.0f64; usize::try_from(len_a).ok()?];
    fill(&mut a, minj, maxj, 0.0);
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = ((((ng * i - h) as f64 / mg as f64).floor() as i64) + 1).max(0);
        minj = minj.min(n);
        maxj = (((ng * i + h) as f64 / mg as f64).ceil() as i64).min(n + 1);
        if maxj <= minj {
            return Some(1.0);
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        for jj in 0..(maxj - minj) {
            let j = jj + minj;
            let prev = *a.get(usize::try_from(jj + minj - lastminj).ok()?)?;
            val = (prev * i as f64 + val * j as f64) / (i + j) as f64;
            *a.get_mut(usize::try_from(jj).ok()?)? = val;
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            fill(&mut a, maxj - minj, maxj - minj + (lastlen - curlen), 1.0);
        }
    }
    a.get(usize::try_from(maxj - minj - 1).ok()?).copied()
}

/// `a[start:end] = value` with numpy's slice clamping.
fn fill(a: &mut [f64], start: i64, end: i64, value: f64) {
    let len = a.len() as i64;
    let (start, end) = (start.clamp(0, len) as usize, end.clamp(0, len) as usize);
    if start < end {
        a[start..end].fill(value);
    }
}

/// scipy's asymptotic two-sided p-value: `kstwo.sf(d, round(m·n / (m + n)))`, rounding half to
/// even as `np.round` does, clipped to `[0, 1]`.
fn asymptotic_pvalue(n1: usize, n2: usize, d: f64) -> f64 {
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    let en = m * n / (m + n);
    let prob = kstwo_sf(d, en.round_ties_even() as u64);
    if prob.is_nan() {
        prob
    } else {
        prob.clamp(0.0, 1.0)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(v: &[f64]) -> SortedValues {
        SortedValues::new(v)
    }

    #[test]
    fn disjoint_samples_have_statistic_one() {
        let r = ks_2samp(&sorted(&[1.0, 2.0, 3.0]), &sorted(&[4.0, 5.0])).unwrap();
        assert_eq!(r.statistic, 1.0);
        assert_eq!(r.method, KsMethod::Exact);
        assert!(r.pvalue > 0.0 && r.pvalue <= 1.0);
    }

    #[test]
    fn identical_samples_have_pvalue_one() {
        let v = sorted(&[1.0, 2.0, 2.0, 3.0]);
        let r = ks_2samp(&v, &v).unwrap();
        assert_eq!(r.statistic, 0.0);
        assert_eq!(r.pvalue, 1.0);
    }

    #[test]
    fn empty_samples_are_undefined() {
        assert!(ks_2samp(&sorted(&[]), &sorted(&[1.0])).is_none());
        assert!(ks_2samp(&sorted(&[f64::NAN]), &sorted(&[1.0])).is_none());
    }

    #[test]
    fn square_probability_for_one_each() {
        assert_eq!(prob_outside_square(1, 1), 1.0);
    }
}
