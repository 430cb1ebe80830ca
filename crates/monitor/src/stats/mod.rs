//! The drift statistics, defined exactly as numpy/scipy compute them.
//!
//! Everything here is a pure function of slices. Nothing panics, whatever the input (empty, all
//! missing, NaN, infinities, constant, a single value); a statistic that is undefined for its
//! input comes back as `None`, and each function says when that is.
//!
//! Conventions shared by every function:
//!
//! - **Missing is NaN.** Every statistic uses the valid (non-NaN) values only. Infinities are
//!   valid values here and go through the arithmetic as they do in numpy (a Wasserstein distance
//!   against an infinite value is infinite or NaN, as scipy's is). The [`crate::baseline`] and
//!   [`crate::report`] layers treat infinities as missing, because `baseline.json` cannot hold
//!   them; these functions do not.
//! - **Sort once.** Numeric statistics take a [`SortedValues`] (the valid values, sorted), so a
//!   window column is sorted once and reused by the quantile bins, KS, Wasserstein and the
//!   out-of-range rate.
//! - **Proportions.** PSI and Jensen–Shannon take two proportion vectors of the same length: the
//!   ten quantile-bin proportions of a numeric feature ([`bin_proportions`]) or the category
//!   proportions over the sorted union of categories ([`category_proportions`]).
//!
//! Which library function each definition matches:
//!
//! | here | numpy / scipy |
//! |---|---|
//! | [`quantile`], [`quantile_edges`] | `np.quantile(x, q)` (method `linear`, Hyndman–Fan type 7) |
//! | [`bin_counts`] | `np.bincount(np.searchsorted(edges, x, side="right"), minlength=10)` |
//! | [`psi`] | `Σ (w − b)·ln(w / b)`, zero proportions replaced by `1e-4` |
//! | [`js_distance`] | `scipy.spatial.distance.jensenshannon(b, w, base=2)` |
//! | [`ks_2samp`] | `scipy.stats.ks_2samp(a, b)` (two-sided, method `auto`), scipy 1.17 |
//! | [`kstwo_sf`] | `scipy.stats.kstwo.sf(d, n)` |
//! | [`wasserstein`] | `scipy.stats.wasserstein_distance(a, b)` |
//! | [`mean`], [`std`] | `np.mean(x)`, `np.std(x)` (ddof 0) |
//! | [`chi2_contingency`] | `scipy.stats.chi2_contingency(table)` (`correction=True`) |
//! | [`chi2_sf`] | `scipy.stats.chi2.sf(x, dof)` (`scipy.special.chdtrc`) |

mod categorical;
mod gamma;
mod kolmogorov;
mod ks;
pub(crate) mod sum;

pub use categorical::{
    category_counts, category_counts_keeping, category_proportions, chi2_contingency, unseen,
    CategoryCounts, Chi2Test, Unseen,
};
pub use gamma::chi2_sf;
pub use kolmogorov::kstwo_sf;
pub use ks::{ks_2samp, KsMethod, KsTest};

use sum::pairwise_sum;

/// The number of quantile bins PSI and Jensen–Shannon compare for a numeric feature.
pub const BINS: usize = 10;

/// The quantiles whose values are the inner bin edges: `[0.1, 0.2, …, 0.9]`, written as the
/// literals Python parses (not `k * 0.1`, whose `0.30000000000000004` would move an edge).
pub const EDGE_QUANTILES: [f64; BINS - 1] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// The proportion PSI uses in place of an empty bin, so that its logarithm is finite.
pub const PSI_EPSILON: f64 = 1e-4;

/// A feature's valid (non-NaN) values, sorted ascending.
///
/// Sorting is what every numeric statistic needs first; building this once per column and
/// passing it to each statistic is what keeps a window cheap to compare.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SortedValues(Vec<f64>);

impl SortedValues {
    /// The valid values of `values`, sorted (NaN dropped).
    pub fn new(values: &[f64]) -> Self {
        Self::from_vec(values.to_vec())
    }

    /// Takes ownership of `values`, drops NaN and sorts.
    pub fn from_vec(mut values: Vec<f64>) -> Self {
        values.retain(|v| !v.is_nan());
        values.sort_unstable_by(f64::total_cmp);
        SortedValues(values)
    }

    pub fn as_slice(&self) -> &[f64] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<f64> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The smallest value; `None` when there are none.
    pub fn min(&self) -> Option<f64> {
        self.0.first().copied()
    }

    /// The largest value; `None` when there are none.
    pub fn max(&self) -> Option<f64> {
        self.0.last().copied()
    }
}

/// The valid (non-NaN) values of `values`, in their original order.
pub fn valid_values(values: &[f64]) -> Vec<f64> {
    values.iter().copied().filter(|v| !v.is_nan()).collect()
}

/// Missing (NaN) values over all values; `None` for an empty slice.
pub fn missing_rate(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let missing = values.iter().filter(|v| v.is_nan()).count();
    Some(missing as f64 / values.len() as f64)
}

/// `np.mean` of the valid values; `None` when there are none.
pub fn mean(values: &[f64]) -> Option<f64> {
    sum::mean(&valid_values(values))
}

/// `np.std` (ddof 0) of the valid values; `None` when there are none.
pub fn std(values: &[f64]) -> Option<f64> {
    sum::std_ddof0(&valid_values(values))
}

/// `np.mean` of values that are already all valid (no NaN check), in numpy's summation order.
pub(crate) fn mean_of_valid(values: &[f64]) -> Option<f64> {
    sum::mean(values)
}

/// `np.std` (ddof 0) of values that are already all valid.
pub(crate) fn std_of_valid(values: &[f64]) -> Option<f64> {
    sum::std_ddof0(values)
}

/// `np.quantile(values, q)` with numpy's default `linear` method (Hyndman–Fan type 7): the
/// virtual index `(n − 1)·q` and numpy's two-sided `_lerp` between its neighbours.
///
/// `None` when there are no values or `q` is not in `[0, 1]`.
pub fn quantile(sorted: &SortedValues, q: f64) -> Option<f64> {
    let values = sorted.as_slice();
    let last = values.len().checked_sub(1)?;
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let virtual_index = last as f64 * q;
    if virtual_index >= last as f64 {
        return values.last().copied();
    }
    let below = virtual_index.floor();
    let gamma = virtual_index - below;
    // `below` is in [0, last), so both neighbours exist.
    let index = below as usize;
    let (a, b) = (*values.get(index)?, *values.get(index + 1)?);
    Some(lerp(a, b, gamma))
}

/// numpy's `_lerp`: interpolates from the nearer end, so that `t` close to 1 gives exactly `b`.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// The nine inner edges of the ten quantile bins: `np.quantile(values, [0.1, …, 0.9])`.
///
/// Repeated edges are kept (many ties make empty bins by construction). `None` when there are
/// no values.
pub fn quantile_edges(sorted: &SortedValues) -> Option<[f64; BINS - 1]> {
    let mut edges = [0.0; BINS - 1];
    for (edge, &q) in edges.iter_mut().zip(EDGE_QUANTILES.iter()) {
        *edge = quantile(sorted, q)?;
    }
    Some(edges)
}

/// The bin a value falls in: the number of edges `e` with `e <= v`, i.e.
/// `np.searchsorted(edges, v, side="right")`. Bins are left-closed, the outer two open-ended.
pub fn bin_index(edges: &[f64], value: f64) -> usize {
    edges.partition_point(|&e| e <= value)
}

/// Counts of `values` in the `edges.len() + 1` bins [`bin_index`] defines.
pub fn bin_counts(edges: &[f64], values: &SortedValues) -> Vec<u64> {
    let mut counts = vec![0u64; edges.len() + 1];
    for &v in values.as_slice() {
        // bin_index is at most edges.len(), always in range.
        if let Some(count) = counts.get_mut(bin_index(edges, v)) {
            *count += 1;
        }
    }
    counts
}

/// The bin proportions (counts over the number of values); `None` when there are no values.
pub fn bin_proportions(edges: &[f64], values: &SortedValues) -> Option<Vec<f64>> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    Some(
        bin_counts(edges, values)
            .into_iter()
            .map(|c| c as f64 / n)
            .collect(),
    )
}

/// Population stability index `Σ (w_i − b_i)·ln(w_i / b_i)` of two proportion vectors, with every
/// proportion that is exactly 0 replaced by [`PSI_EPSILON`] (in the difference and the log).
///
/// The replacement keeps the index finite when a bin is empty on one side; with it, an empty bin
/// against a bin holding a fraction `p` adds about `p·ln(p / 1e-4)`. `None` when the vectors are
/// empty or differ in length.
pub fn psi(baseline: &[f64], window: &[f64]) -> Option<f64> {
    if baseline.is_empty() || baseline.len() != window.len() {
        return None;
    }
    let fix = |p: f64| if p == 0.0 { PSI_EPSILON } else { p };
    let terms: Vec<f64> = baseline
        .iter()
        .zip(window)
        .map(|(&b, &w)| {
            let (b, w) = (fix(b), fix(w));
            (w - b) * (w / b).ln()
        })
        .collect();
    Some(pairwise_sum(&terms))
}

/// Jensen–Shannon distance in base 2, exactly `scipy.spatial.distance.jensenshannon(b, w,
/// base=2)`: each vector is normalized to sum 1, `m = (p + q) / 2`, and the result is
/// `sqrt((KL(p‖m) + KL(q‖m)) / ln 2 / 2)` with `0·log 0 = 0`. No epsilon: it is bounded by 1.
///
/// `None` when the vectors are empty, differ in length, or one sums to 0 (scipy's NaN). Like
/// scipy's, the result may be NaN when rounding makes the divergence of two all-but-identical
/// vectors a hair negative.
pub fn js_distance(baseline: &[f64], window: &[f64]) -> Option<f64> {
    if baseline.is_empty() || baseline.len() != window.len() {
        return None;
    }
    let (sum_p, sum_q) = (pairwise_sum(baseline), pairwise_sum(window));
    if !(sum_p > 0.0 && sum_q > 0.0) {
        return None;
    }
    let p: Vec<f64> = baseline.iter().map(|&v| v / sum_p).collect();
    let q: Vec<f64> = window.iter().map(|&v| v / sum_q).collect();
    let m: Vec<f64> = p.iter().zip(&q).map(|(&a, &b)| (a + b) / 2.0).collect();
    let left: Vec<f64> = p.iter().zip(&m).map(|(&x, &y)| rel_entr(x, y)).collect();
    let right: Vec<f64> = q.iter().zip(&m).map(|(&x, &y)| rel_entr(x, y)).collect();
    let js = (pairwise_sum(&left) + pairwise_sum(&right)) / std::f64::consts::LN_2;
    Some((js / 2.0).sqrt())
}

/// `scipy.special.rel_entr(x, y)`: `x·ln(x / y)`, 0 when `x == 0`, infinite when only `y` is 0.
fn rel_entr(x: f64, y: f64) -> f64 {
    if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x > 0.0 && y > 0.0 {
        x * (x / y).ln()
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// First Wasserstein distance between two empirical distributions, exactly
/// `scipy.stats.wasserstein_distance(a, b)`: the integral of `|F_a − F_b|` over the merged
/// sorted values, `Σ |F_a(x_k) − F_b(x_k)|·(x_{k+1} − x_k)`.
///
/// `None` when either side has no values (scipy raises).
pub fn wasserstein(a: &SortedValues, b: &SortedValues) -> Option<f64> {
    let (a, b) = (a.as_slice(), b.as_slice());
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let merged = merge_sorted(a, b);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut ia, mut ib) = (0usize, 0usize);
    let mut terms = Vec::with_capacity(merged.len().saturating_sub(1));
    for pair in merged.windows(2) {
        let (x, next) = (pair[0], pair[1]);
        // searchsorted(side="right"): how many values are <= x.
        while ia < a.len() && a[ia] <= x {
            ia += 1;
        }
        while ib < b.len() && b[ib] <= x {
            ib += 1;
        }
        let diff = (ia as f64 / na - ib as f64 / nb).abs();
        terms.push(diff * (next - x));
    }
    Some(pairwise_sum(&terms))
}

/// Two sorted slices merged into one sorted vector.
fn merge_sorted(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            merged.push(a[i]);
            i += 1;
        } else {
            merged.push(b[j]);
            j += 1;
        }
    }
    merged.extend_from_slice(&a[i..]);
    merged.extend_from_slice(&b[j..]);
    merged
}

/// The Wasserstein distance over the baseline's standard deviation (ddof 0), so that one
/// threshold fits features of any scale. `None` when the distance is undefined or the standard
/// deviation is 0 or not finite.
pub fn wasserstein_normalized(distance: Option<f64>, baseline_std: Option<f64>) -> Option<f64> {
    let (distance, std) = (distance?, baseline_std?);
    if std > 0.0 && std.is_finite() {
        Some(distance / std)
    } else {
        None
    }
}

/// The share of window values strictly below the baseline's minimum or strictly above its
/// maximum. `None` when the window has no values or the range is NaN.
pub fn out_of_range_rate(window: &SortedValues, min: f64, max: f64) -> Option<f64> {
    let values = window.as_slice();
    if values.is_empty() || min.is_nan() || max.is_nan() {
        return None;
    }
    let below = values.partition_point(|&v| v < min);
    let not_above = values.partition_point(|&v| v <= max);
    let above = values.len() - not_above.max(below);
    Some((below + above) as f64 / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_numpy() {
        let s = SortedValues::new(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(quantile(&s, 0.0), Some(1.0));
        assert_eq!(quantile(&s, 1.0), Some(4.0));
        assert_eq!(quantile(&s, 0.5), Some(2.5));
        assert_eq!(quantile(&s, 1.5), None);
        assert_eq!(quantile(&SortedValues::default(), 0.5), None);
    }

    #[test]
    fn bins_are_left_closed() {
        let edges = [1.0, 2.0, 2.0, 3.0];
        assert_eq!(bin_index(&edges, 0.5), 0);
        assert_eq!(bin_index(&edges, 1.0), 1);
        assert_eq!(bin_index(&edges, 2.0), 3);
        assert_eq!(bin_index(&edges, 3.0), 4);
        assert_eq!(bin_index(&edges, 9.0), 4);
    }

    #[test]
    fn out_of_range_counts_strictly_outside() {
        let w = SortedValues::new(&[-1.0, 0.0, 0.5, 1.0, 2.0]);
        assert_eq!(out_of_range_rate(&w, 0.0, 1.0), Some(0.4));
        // An inverted range: every value is below 1 or above 0, each counted once.
        assert_eq!(out_of_range_rate(&w, 1.0, 0.0), Some(1.0));
    }

    #[test]
    fn identical_proportions_have_zero_divergence() {
        let p = [0.1; 10];
        assert_eq!(psi(&p, &p), Some(0.0));
        assert_eq!(js_distance(&p, &p), Some(0.0));
        assert_eq!(js_distance(&[0.0, 0.0], &[0.5, 0.5]), None);
        assert_eq!(psi(&[], &[]), None);
    }
}
