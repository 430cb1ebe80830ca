//! Statistics of categorical features: counts, the chi-squared test of homogeneity, category
//! proportions for PSI and Jensen–Shannon, and unseen/vanished categories.
//!
//! Every comparison runs over the sorted union of the categories observed on either side
//! (a category whose count is 0 on both sides is not observed and is left out).

use std::collections::BTreeMap;

use serde::Serialize;

use super::gamma::chi2_sf;
use super::sum::pairwise_sum;

/// A categorical column's category counts (sorted by category) and its missing values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CategoryCounts {
    pub counts: BTreeMap<String, u64>,
    pub missing: u64,
}

impl CategoryCounts {
    /// The number of valid (non-missing) values.
    pub fn valid(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Counts each category of `values`; `None` is a missing value.
pub fn category_counts(values: &[Option<String>]) -> CategoryCounts {
    let mut counts = CategoryCounts::default();
    for value in values {
        match value {
            Some(category) => *counts.counts.entry(category.clone()).or_insert(0) += 1,
            None => counts.missing += 1,
        }
    }
    counts
}

/// The two count rows over the sorted union of observed categories.
fn aligned_counts(
    baseline: &BTreeMap<String, u64>,
    window: &BTreeMap<String, u64>,
) -> (Vec<f64>, Vec<f64>) {
    let mut union: Vec<&String> = baseline
        .iter()
        .chain(window.iter())
        .filter(|(_, &count)| count > 0)
        .map(|(category, _)| category)
        .collect();
    union.sort_unstable();
    union.dedup();
    let count = |map: &BTreeMap<String, u64>, c: &String| map.get(c).copied().unwrap_or(0) as f64;
    let b = union.iter().map(|c| count(baseline, c)).collect();
    let w = union.iter().map(|c| count(window, c)).collect();
    (b, w)
}

/// The category proportions of each side (`counts / counts.sum()`) over the sorted union of
/// categories, the vectors [`super::psi`] and [`super::js_distance`] compare. `None` when either
/// side has no valid values.
pub fn category_proportions(
    baseline: &BTreeMap<String, u64>,
    window: &BTreeMap<String, u64>,
) -> Option<(Vec<f64>, Vec<f64>)> {
    let (b, w) = aligned_counts(baseline, window);
    let (total_b, total_w) = (pairwise_sum(&b), pairwise_sum(&w));
    if !(total_b > 0.0 && total_w > 0.0) {
        return None;
    }
    Some((
        b.iter().map(|&c| c / total_b).collect(),
        w.iter().map(|&c| c / total_w).collect(),
    ))
}

/// A chi-squared test of homogeneity of the baseline's and the window's category distributions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Chi2Test {
    pub statistic: f64,
    pub dof: u64,
    pub pvalue: f64,
}

/// `scipy.stats.chi2_contingency(table)` (Pearson, default `correction=True`) on the 2×k table of
/// counts, row 0 the baseline and row 1 the window, over the sorted union of categories.
///
/// Expected counts are `row_total · column_total / total`; `dof = k − 1`. With `dof == 1`, Yates'
/// continuity correction moves every observed count up to 0.5 towards its expected count (never
/// past it), as scipy does. With a single category (`dof == 0`) the table carries no information
/// and the result is scipy's: statistic 0, p-value 1, dof 0.
///
/// `None` when either side has no valid values (an expected count would be 0, which scipy
/// rejects).
pub fn chi2_contingency(
    baseline: &BTreeMap<String, u64>,
    window: &BTreeMap<String, u64>,
) -> Option<Chi2Test> {
    let (b, w) = aligned_counts(baseline, window);
    let k = b.len();
    if k == 0 {
        return None;
    }
    let row_totals = [pairwise_sum(&b), pairwise_sum(&w)];
    let observed: Vec<f64> = b.iter().chain(w.iter()).copied().collect();
    let total = pairwise_sum(&observed);
    let column_totals: Vec<f64> = b.iter().zip(&w).map(|(&x, &y)| x + y).collect();
    let expected: Vec<f64> = row_totals
        .iter()
        .flat_map(|&r| column_totals.iter().map(move |&c| r * c / total))
        .collect();
    if expected.iter().any(|&e| e == 0.0 || e.is_nan()) {
        return None;
    }
    let dof = (k - 1) as u64;
    if dof == 0 {
        return Some(Chi2Test {
            statistic: 0.0,
            dof,
            pvalue: 1.0,
        });
    }
    let observed: Vec<f64> = if dof == 1 {
        observed
            .iter()
            .zip(&expected)
            .map(|(&o, &e)| yates(o, e))
            .collect()
    } else {
        observed
    };
    let terms: Vec<f64> = observed
        .iter()
        .zip(&expected)
        .map(|(&o, &e)| {
            let d = o - e;
            d * d / e
        })
        .collect();
    let statistic = pairwise_sum(&terms);
    Some(Chi2Test {
        statistic,
        dof,
        pvalue: chi2_sf(statistic, dof as f64),
    })
}

/// Yates' correction of one cell: `o + min(0.5, |e − o|) · sign(e − o)` (scipy gh-13875: never
/// past the expected count).
fn yates(observed: f64, expected: f64) -> f64 {
    let diff = expected - observed;
    let direction = if diff > 0.0 {
        1.0
    } else if diff < 0.0 {
        -1.0
    } else {
        0.0
    };
    observed + diff.abs().min(0.5) * direction
}

/// Categories of the window the baseline never saw, and the other way round.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Unseen {
    /// Window rows whose category the baseline lacks, over the window's valid rows; `None` when
    /// the window has no valid rows.
    pub rate: Option<f64>,
    /// Categories in the window but not the baseline, sorted.
    pub unseen: Vec<String>,
    /// Categories in the baseline but not the window, sorted.
    pub vanished: Vec<String>,
}

/// Unseen and vanished categories of `window` against `baseline` (zero counts count as absent).
pub fn unseen(baseline: &BTreeMap<String, u64>, window: &BTreeMap<String, u64>) -> Unseen {
    let present = |map: &BTreeMap<String, u64>, c: &String| map.get(c).is_some_and(|&n| n > 0);
    let mut unseen_rows = 0u64;
    let mut valid_rows = 0u64;
    let mut unseen = Vec::new();
    for (category, &count) in window.iter().filter(|(_, &n)| n > 0) {
        valid_rows += count;
        if !present(baseline, category) {
            unseen_rows += count;
            unseen.push(category.clone());
        }
    }
    let vanished = baseline
        .iter()
        .filter(|(c, &n)| n > 0 && !present(window, c))
        .map(|(c, _)| c.clone())
        .collect();
    Unseen {
        rate: (valid_rows > 0).then(|| unseen_rows as f64 / valid_rows as f64),
        unseen,
        vanished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|&(c, n)| (c.to_string(), n)).collect()
    }

    #[test]
    fn single_category_is_degenerate_not_undefined() {
        let t = chi2_contingency(&counts(&[("a", 5)]), &counts(&[("a", 3)])).unwrap();
        assert_eq!((t.statistic, t.dof, t.pvalue), (0.0, 0, 1.0));
    }

    #[test]
    fn empty_side_is_undefined() {
        assert!(chi2_contingency(&counts(&[("a", 5)]), &counts(&[])).is_none());
        assert!(chi2_contingency(&counts(&[]), &counts(&[])).is_none());
        assert!(category_proportions(&counts(&[]), &counts(&[("a", 1)])).is_none());
    }

    #[test]
    fn unseen_and_vanished() {
        let u = unseen(
            &counts(&[("a", 5), ("b", 1)]),
            &counts(&[("a", 1), ("c", 3)]),
        );
        assert_eq!(u.rate, Some(0.75));
        assert_eq!(u.unseen, vec!["c".to_string()]);
        assert_eq!(u.vanished, vec!["b".to_string()]);
        assert_eq!(unseen(&counts(&[("a", 1)]), &counts(&[])).rate, None);
    }

    #[test]
    fn yates_never_overshoots() {
        assert_eq!(yates(10.0, 10.2), 10.2);
        assert_eq!(yates(10.0, 12.0), 10.5);
        assert_eq!(yates(10.0, 8.0), 9.5);
    }
}
