//! Statistics of categorical features: counts, the chi-squared test of homogeneity, category
//! proportions for PSI and Jensen–Shannon, and unseen/vanished categories.
//!
//! Every comparison runs over the sorted union of the categories observed on either side
//! (a category whose count is 0 on both sides is not observed and is left out).
//!
//! Counts are bounded whatever the values ([`crate::category`]): each category is cut to its
//! first bytes, and past [`MAX_CATEGORIES`] the rarest share one bucket, so the statistics are
//! exact for data under those bounds and compare the bucket as one category beyond them.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::category::{self, MAX_CATEGORIES, MAX_LISTED_CATEGORIES, OTHER_CATEGORY};

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

/// Counts each category of `values` (cut to [`MAX_CATEGORY_BYTES`]); `None` is a missing value.
/// At most [`MAX_CATEGORIES`] categories are counted by name, the most frequent (ties to the
/// earlier name); the rest count under [`OTHER_CATEGORY`]. Under the cap, every category is
/// counted by name, exactly.
///
/// [`MAX_CATEGORY_BYTES`]: crate::category::MAX_CATEGORY_BYTES
pub fn category_counts(values: &[Option<String>]) -> CategoryCounts {
    category_counts_keeping(values, &BTreeMap::new())
}

/// [`category_counts`], ranking the categories of `known` (a baseline's) before the others when
/// there are more than [`MAX_CATEGORIES`]: a window is then compared with its baseline category
/// by category, and only categories the baseline lacks fall into [`OTHER_CATEGORY`] (which a
/// baseline past the cap holds too: the two buckets are compared as one category).
pub fn category_counts_keeping(
    values: &[Option<String>],
    known: &BTreeMap<String, u64>,
) -> CategoryCounts {
    // Keyed by the values themselves: counting allocates only for a value that is cut.
    let mut all: HashMap<Cow<'_, str>, u64> = HashMap::new();
    let mut missing = 0u64;
    for value in values {
        match value {
            Some(category) => *all.entry(category::bounded(category)).or_insert(0) += 1,
            None => missing += 1,
        }
    }
    let mut counts = CategoryCounts {
        counts: BTreeMap::new(),
        missing,
    };
    if all.len() <= MAX_CATEGORIES {
        counts.counts = all.into_iter().map(|(c, n)| (c.into_owned(), n)).collect();
        return counts;
    }
    // The bucket's own name ranks nowhere: it is where the rest goes.
    let mut other = all.remove(OTHER_CATEGORY).unwrap_or(0);
    let mut ranked: Vec<(Cow<'_, str>, u64)> = all.into_iter().collect();
    ranked.sort_unstable_by(|(a, n), (b, m)| {
        let known_first = known
            .contains_key(b.as_ref())
            .cmp(&known.contains_key(a.as_ref()));
        known_first.then(m.cmp(n)).then_with(|| a.cmp(b))
    });
    let named = MAX_CATEGORIES - 1;
    other += ranked[named..].iter().map(|(_, n)| n).sum::<u64>();
    ranked.truncate(named);
    counts.counts = ranked
        .into_iter()
        .map(|(c, n)| (c.into_owned(), n))
        .collect();
    counts.counts.insert(OTHER_CATEGORY.to_string(), other);
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
    /// Categories in the window but not the baseline: the [`MAX_LISTED_CATEGORIES`] with the
    /// most window rows (ties to the earlier name), sorted.
    pub unseen: Vec<String>,
    /// How many categories are unseen in all.
    pub unseen_count: usize,
    /// Categories in the baseline but not the window: the [`MAX_LISTED_CATEGORIES`] with the
    /// most baseline rows, sorted.
    pub vanished: Vec<String>,
    /// How many categories vanished in all.
    pub vanished_count: usize,
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
            unseen.push((category, count));
        }
    }
    let vanished: Vec<(&String, u64)> = baseline
        .iter()
        .filter(|(c, &n)| n > 0 && !present(window, c))
        .map(|(c, &n)| (c, n))
        .collect();
    Unseen {
        rate: (valid_rows > 0).then(|| unseen_rows as f64 / valid_rows as f64),
        unseen_count: unseen.len(),
        unseen: heaviest(unseen),
        vanished_count: vanished.len(),
        vanished: heaviest(vanished),
    }
}

/// The names of the [`MAX_LISTED_CATEGORIES`] heaviest of `categories` (given sorted by name),
/// sorted by name.
fn heaviest(mut categories: Vec<(&String, u64)>) -> Vec<String> {
    if categories.len() > MAX_LISTED_CATEGORIES {
        // Stable: equal counts keep their order by name.
        categories.sort_by(|(_, n), (_, m)| m.cmp(n));
        categories.truncate(MAX_LISTED_CATEGORIES);
        categories.sort_unstable_by_key(|(a, _)| *a);
    }
    categories.into_iter().map(|(c, _)| c.clone()).collect()
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
        assert_eq!((u.unseen_count, u.vanished_count), (1, 1));
        assert_eq!(unseen(&counts(&[("a", 1)]), &counts(&[])).rate, None);
    }

    #[test]
    fn unseen_and_vanished_lists_keep_the_heaviest_and_count_all() {
        let many = |prefix: &str, n: u64| -> BTreeMap<String, u64> {
            (0..n).map(|i| (format!("{prefix}{i:03}"), i + 1)).collect()
        };
        let total = MAX_LISTED_CATEGORIES as u64 + 30;
        let u = unseen(&many("b", total), &many("w", total));
        assert_eq!(u.rate, Some(1.0), "the rate counts every row");
        assert_eq!((u.unseen_count, u.vanished_count), (50, 50));
        assert_eq!(u.unseen.len(), MAX_LISTED_CATEGORIES);
        assert_eq!(u.vanished.len(), MAX_LISTED_CATEGORIES);
        // The heaviest are the last (counts grow with the index), listed by name.
        assert_eq!(u.unseen.first().map(String::as_str), Some("w030"));
        assert_eq!(u.unseen.last().map(String::as_str), Some("w049"));
        assert!(u.vanished.iter().all(|c| c.as_str() >= "b030"));
        assert!(u.unseen.windows(2).all(|p| p[0] < p[1]), "sorted");
    }

    #[test]
    fn counts_under_the_cap_are_exact() {
        let values: Vec<Option<String>> = (0..MAX_CATEGORIES)
            .map(|i| Some(format!("c{i}")))
            .chain([None, Some(OTHER_CATEGORY.to_string())])
            .collect();
        let c = category_counts(&values[..MAX_CATEGORIES]);
        assert_eq!(c.counts.len(), MAX_CATEGORIES);
        assert!(!c.counts.contains_key(OTHER_CATEGORY));
        // A value spelled like the bucket is an ordinary category under the cap...
        let c = category_counts(&values[MAX_CATEGORIES - 1..]);
        assert_eq!(c.counts[OTHER_CATEGORY], 1);
        assert_eq!((c.counts.len(), c.missing), (2, 1));
    }

    #[test]
    fn categories_past_the_cap_count_in_the_other_bucket() {
        // Categories "f0".."f9" are frequent; then 2 × MAX_CATEGORIES of one value each, and a
        // value spelled like the bucket (which counts in it past the cap).
        let mut values: Vec<Option<String>> = Vec::new();
        for f in 0..10 {
            values.extend(std::iter::repeat_n(Some(format!("f{f}")), 5));
        }
        values.extend((0..2 * MAX_CATEGORIES).map(|i| Some(format!("r{i:05}"))));
        values.push(Some(OTHER_CATEGORY.to_string()));
        values.push(None);
        let c = category_counts(&values);
        assert_eq!(c.counts.len(), MAX_CATEGORIES);
        assert_eq!(c.missing, 1);
        assert_eq!(
            c.valid(),
            values.len() as u64 - 1,
            "every valid value is counted"
        );
        for f in 0..10 {
            assert_eq!(c.counts[&format!("f{f}")], 5, "the frequent ones are named");
        }
        // Ties go to the earlier name: r00000.. are kept, the later ones are in the bucket.
        let named_rare = MAX_CATEGORIES - 1 - 10;
        assert!(c.counts.contains_key(&format!("r{:05}", named_rare - 1)));
        assert!(!c.counts.contains_key(&format!("r{named_rare:05}")));
        let other = (2 * MAX_CATEGORIES - named_rare) as u64 + 1;
        assert_eq!(c.counts[OTHER_CATEGORY], other);
        let (b, w) = category_proportions(&c.counts, &c.counts).unwrap();
        assert!((b.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);

        // A window counted against a baseline names the baseline's categories first, however
        // rare in the window.
        let known: BTreeMap<String, u64> = [("r01999".to_string(), 1)].into();
        let w = category_counts_keeping(&values, &known);
        assert_eq!(w.counts.len(), MAX_CATEGORIES);
        assert_eq!(w.counts["r01999"], 1);
        assert_eq!(w.counts[OTHER_CATEGORY], other);
    }

    #[test]
    fn long_values_are_counted_cut() {
        let long = "x".repeat(10 * category::MAX_CATEGORY_BYTES);
        let values = vec![Some(long.clone()), Some(long + "y")];
        let c = category_counts(&values);
        assert_eq!(c.counts.len(), 1, "the same first bytes: one category");
        let (name, &n) = c.counts.iter().next().unwrap();
        assert_eq!(n, 2);
        assert!(name.len() <= category::MAX_CATEGORY_BYTES);
        assert!(name.ends_with(category::TRUNCATION_MARK));
    }

    #[test]
    fn yates_never_overshoots() {
        assert_eq!(yates(10.0, 10.2), 10.2);
        assert_eq!(yates(10.0, 12.0), 10.5);
        assert_eq!(yates(10.0, 8.0), 9.5);
    }
}
