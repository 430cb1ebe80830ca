//! The drift statistics, baseline summaries and drift report against numpy/scipy reference
//! values (`tests/fixtures/stats.json`, written by `tests/fixtures/generate.py`).

mod common;

use std::collections::BTreeMap;

use cairn_monitor::baseline::{Baseline, BaselineOptions, FeatureBaseline};
use cairn_monitor::column::Column;
use cairn_monitor::report::{drift, Comparison, Thresholds};
use cairn_monitor::stats::{self, KsMethod, SortedValues};
use common::{nan_for_null, Check};
use serde::Deserialize;

const FIXTURES: &str = include_str!("fixtures/stats.json");

#[derive(Deserialize)]
struct Fixtures {
    arrays: BTreeMap<String, Vec<Option<f64>>>,
    numeric: Vec<NumericCase>,
    categorical: Vec<CategoricalCase>,
    chi2_sf: Vec<(f64, f64, f64)>,
    kstwo_sf: Vec<(f64, u64, f64)>,
}

/// Values inline, or the name of a shared array.
#[derive(Deserialize)]
#[serde(untagged)]
enum Values {
    Inline(Vec<Option<f64>>),
    Shared(String),
}

#[derive(Deserialize)]
struct NumericCase {
    name: String,
    baseline: Values,
    window: Values,
    expected: NumericExpected,
}

#[derive(Deserialize)]
struct NumericExpected {
    missing_rate_baseline: Option<f64>,
    missing_rate_window: Option<f64>,
    baseline: Summary,
    window_proportions: Option<Vec<f64>>,
    psi: Option<f64>,
    js: Option<f64>,
    ks: Option<KsExpected>,
    wasserstein: Option<f64>,
    wasserstein_norm: Option<f64>,
    out_of_range_rate: Option<f64>,
}

#[derive(Deserialize)]
struct Summary {
    count: u64,
    missing: u64,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    std: Option<f64>,
    edges: Option<Vec<f64>>,
    proportions: Option<Vec<f64>>,
}

#[derive(Deserialize)]
struct KsExpected {
    statistic: f64,
    pvalue: f64,
    method: String,
}

#[derive(Deserialize)]
struct CategoricalCase {
    name: String,
    baseline: Vec<Option<String>>,
    window: Vec<Option<String>>,
    expected: CategoricalExpected,
}

#[derive(Deserialize)]
struct CategoricalExpected {
    categories: Vec<String>,
    baseline_counts: Vec<u64>,
    window_counts: Vec<u64>,
    missing_rate_baseline: f64,
    missing_rate_window: f64,
    unseen: Vec<String>,
    vanished: Vec<String>,
    unseen_rate: f64,
    chi2: Chi2Expected,
    js: Option<f64>,
    psi: f64,
}

#[derive(Deserialize)]
struct Chi2Expected {
    statistic: f64,
    dof: u64,
    pvalue: f64,
}

fn fixtures() -> Fixtures {
    serde_json::from_str(FIXTURES).expect("stats.json parses")
}

impl Fixtures {
    fn values(&self, v: &Values) -> Vec<f64> {
        match v {
            Values::Inline(values) => nan_for_null(values),
            Values::Shared(name) => nan_for_null(&self.arrays[name]),
        }
    }
}

/// A sample size large enough that every fixture baseline keeps all its values, so that KS and
/// Wasserstein through a baseline are exactly scipy's.
fn exact_options() -> BaselineOptions {
    BaselineOptions {
        sample_size: 20_000,
        seed: 1,
    }
}

#[test]
fn numeric_statistics_match_scipy() {
    let fx = fixtures();
    let mut check = Check::default();
    for case in &fx.numeric {
        let name = &case.name;
        let e = &case.expected;
        let (raw_b, raw_w) = (fx.values(&case.baseline), fx.values(&case.window));
        let (b, w) = (SortedValues::new(&raw_b), SortedValues::new(&raw_w));
        check.opt_stat(
            format!("{name} missing_rate_baseline"),
            stats::missing_rate(&raw_b),
            e.missing_rate_baseline,
        );
        check.opt_stat(
            format!("{name} missing_rate_window"),
            stats::missing_rate(&raw_w),
            e.missing_rate_window,
        );
        check.opt_stat(format!("{name} mean"), stats::mean(&raw_b), e.baseline.mean);
        check.opt_stat(format!("{name} std"), stats::std(&raw_b), e.baseline.std);
        let edges = stats::quantile_edges(&b);
        check.equal(
            format!("{name} edges defined"),
            edges.is_some(),
            e.baseline.edges.is_some(),
        );
        let (Some(edges), Some(expected_edges)) = (edges, &e.baseline.edges) else {
            continue;
        };
        check.slice(format!("{name} edges"), &edges, expected_edges);
        let bp = stats::bin_proportions(&edges, &b).unwrap();
        check.slice(
            format!("{name} baseline proportions"),
            &bp,
            e.baseline.proportions.as_ref().unwrap(),
        );
        let Some(expected_wp) = &e.window_proportions else {
            continue;
        };
        let wp = stats::bin_proportions(&edges, &w).unwrap();
        check.slice(format!("{name} window proportions"), &wp, expected_wp);
        check.opt_stat(format!("{name} psi"), stats::psi(&bp, &wp), e.psi);
        check.opt_stat(format!("{name} js"), stats::js_distance(&bp, &wp), e.js);
        let ks = stats::ks_2samp(&b, &w).unwrap();
        let expected_ks = e.ks.as_ref().unwrap();
        check.stat(
            format!("{name} ks statistic"),
            ks.statistic,
            expected_ks.statistic,
        );
        check.pvalue(format!("{name} ks pvalue"), ks.pvalue, expected_ks.pvalue);
        let method = match ks.method {
            KsMethod::Exact => "exact",
            KsMethod::Asymptotic => "asymptotic",
        };
        check.equal(
            format!("{name} ks method"),
            method,
            expected_ks.method.as_str(),
        );
        let wd = stats::wasserstein(&b, &w);
        check.opt_stat(format!("{name} wasserstein"), wd, e.wasserstein);
        check.opt_stat(
            format!("{name} wasserstein_norm"),
            stats::wasserstein_normalized(wd, stats::std(&raw_b)),
            e.wasserstein_norm,
        );
        let (min, max) = (b.min().unwrap(), b.max().unwrap());
        check.opt_stat(
            format!("{name} out_of_range_rate"),
            stats::out_of_range_rate(&w, min, max),
            e.out_of_range_rate,
        );
        // The report's symmetric use: KS and Wasserstein do not depend on the order.
        let swapped = stats::ks_2samp(&w, &b).unwrap();
        check.stat(
            format!("{name} ks statistic swapped"),
            swapped.statistic,
            expected_ks.statistic,
        );
        check.pvalue(
            format!("{name} ks pvalue swapped"),
            swapped.pvalue,
            expected_ks.pvalue,
        );
    }
    check.finish(fx.numeric.len() * 30);
}

#[test]
fn baseline_summaries_match_numpy() {
    let fx = fixtures();
    let mut check = Check::default();
    for case in &fx.numeric {
        let name = &case.name;
        let s = &case.expected.baseline;
        let values = fx.values(&case.baseline);
        let features = vec![("x".to_string(), Column::Numeric(values.clone()))];
        let baseline = Baseline::from_columns(&features, &Vec::new(), &BaselineOptions::default());
        let Some(FeatureBaseline::Numeric(n)) = baseline.features.get("x") else {
            panic!("{name}: no numeric summary");
        };
        check.equal(format!("{name} rows"), baseline.rows, values.len() as u64);
        check.equal(format!("{name} count"), n.count, s.count);
        check.equal(format!("{name} missing"), n.missing, s.missing);
        check.opt_stat(format!("{name} min"), n.min, s.min);
        check.opt_stat(format!("{name} max"), n.max, s.max);
        check.opt_stat(format!("{name} mean"), n.mean, s.mean);
        check.opt_stat(format!("{name} std"), n.std, s.std);
        check.slice(
            format!("{name} edges"),
            &n.edges,
            s.edges.as_deref().unwrap_or(&[]),
        );
        check.slice(
            format!("{name} proportions"),
            &n.proportions,
            s.proportions.as_deref().unwrap_or(&[]),
        );
        let exact = n.count as usize <= cairn_monitor::baseline::DEFAULT_SAMPLE_SIZE;
        check.equal(format!("{name} sample_exact"), n.sample_exact, exact);
        if exact {
            check.equal(
                format!("{name} sample"),
                &n.sample,
                &SortedValues::new(&values).into_vec(),
            );
        } else {
            check.equal(
                format!("{name} sample size"),
                n.sample.len(),
                cairn_monitor::baseline::DEFAULT_SAMPLE_SIZE,
            );
            check.equal(
                format!("{name} sample sorted"),
                n.sample.windows(2).all(|p| p[0] <= p[1]),
                true,
            );
        }
        let json = baseline
            .to_json()
            .expect("a computed baseline is consistent");
        check.equal(
            format!("{name} round trip"),
            Baseline::from_json(&json).ok(),
            Some(baseline),
        );
    }
    check.finish(fx.numeric.len() * 20);
}

#[test]
fn numeric_report_matches_scipy() {
    let fx = fixtures();
    let mut check = Check::default();
    for case in &fx.numeric {
        let name = &case.name;
        let e = &case.expected;
        let b = vec![("x".to_string(), Column::Numeric(fx.values(&case.baseline)))];
        let w = vec![("x".to_string(), Column::Numeric(fx.values(&case.window)))];
        let baseline = Baseline::from_columns(&b, &Vec::new(), &exact_options());
        let report = drift(&baseline, &w, &Vec::new(), &Thresholds::default());
        let Comparison::Numeric(d) = &report.features["x"].comparison else {
            panic!("{name}: not a numeric comparison");
        };
        check.opt_stat(format!("{name} report psi"), d.psi, e.psi);
        check.opt_stat(format!("{name} report js"), d.js, e.js);
        check.opt_stat(
            format!("{name} report wasserstein"),
            d.wasserstein,
            e.wasserstein,
        );
        check.opt_stat(
            format!("{name} report wasserstein_norm"),
            d.wasserstein_norm,
            e.wasserstein_norm,
        );
        check.opt_stat(
            format!("{name} report out_of_range_rate"),
            d.out_of_range_rate,
            e.out_of_range_rate,
        );
        check.opt_stat(
            format!("{name} report missing_rate_baseline"),
            d.missing_rate_baseline,
            e.missing_rate_baseline,
        );
        check.opt_stat(
            format!("{name} report missing_rate_window"),
            d.missing_rate_window,
            e.missing_rate_window,
        );
        match (&d.ks, &e.ks) {
            (Some(ks), Some(expected)) => {
                check.stat(
                    format!("{name} report ks statistic"),
                    ks.statistic,
                    expected.statistic,
                );
                check.pvalue(
                    format!("{name} report ks pvalue"),
                    ks.pvalue,
                    expected.pvalue,
                );
            }
            (None, None) => {}
            (got, _) => check
                .failures
                .push(format!("{name} report ks: got {got:?}")),
        }
    }
    check.finish(fx.numeric.len() * 8);
}

#[test]
fn categorical_statistics_match_scipy() {
    let fx = fixtures();
    let mut check = Check::default();
    for case in &fx.categorical {
        let name = &case.name;
        let e = &case.expected;
        let b = stats::category_counts(&case.baseline);
        let w = stats::category_counts(&case.window);
        let categories: Vec<&String> = b
            .counts
            .keys()
            .chain(w.counts.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        check.equal(
            format!("{name} categories"),
            categories,
            e.categories.iter().collect(),
        );
        let row = |counts: &BTreeMap<String, u64>| -> Vec<u64> {
            e.categories
                .iter()
                .map(|c| counts.get(c).copied().unwrap_or(0))
                .collect()
        };
        check.equal(
            format!("{name} baseline counts"),
            row(&b.counts),
            e.baseline_counts.clone(),
        );
        check.equal(
            format!("{name} window counts"),
            row(&w.counts),
            e.window_counts.clone(),
        );
        let chi2 = stats::chi2_contingency(&b.counts, &w.counts).unwrap();
        check.stat(
            format!("{name} chi2 statistic"),
            chi2.statistic,
            e.chi2.statistic,
        );
        check.equal(format!("{name} chi2 dof"), chi2.dof, e.chi2.dof);
        check.pvalue(format!("{name} chi2 pvalue"), chi2.pvalue, e.chi2.pvalue);
        let (bp, wp) = stats::category_proportions(&b.counts, &w.counts).unwrap();
        check.opt_stat(format!("{name} js"), stats::js_distance(&bp, &wp), e.js);
        check.opt_stat(format!("{name} psi"), stats::psi(&bp, &wp), Some(e.psi));
        let u = stats::unseen(&b.counts, &w.counts);
        check.opt_stat(format!("{name} unseen_rate"), u.rate, Some(e.unseen_rate));
        check.equal(format!("{name} unseen"), &u.unseen, &e.unseen);
        check.equal(format!("{name} vanished"), &u.vanished, &e.vanished);

        // The same numbers through a baseline and a report.
        let features = vec![("c".to_string(), Column::Categorical(case.baseline.clone()))];
        let window = vec![("c".to_string(), Column::Categorical(case.window.clone()))];
        let baseline = Baseline::from_columns(&features, &Vec::new(), &BaselineOptions::default());
        let json = baseline.to_json().unwrap();
        check.equal(
            format!("{name} round trip"),
            Baseline::from_json(&json).ok().as_ref(),
            Some(&baseline),
        );
        let report = drift(&baseline, &window, &Vec::new(), &Thresholds::default());
        let Comparison::Categorical(d) = &report.features["c"].comparison else {
            panic!("{name}: not a categorical comparison");
        };
        let chi2 = d.chi2.unwrap();
        check.stat(
            format!("{name} report chi2 statistic"),
            chi2.statistic,
            e.chi2.statistic,
        );
        check.pvalue(
            format!("{name} report chi2 pvalue"),
            chi2.pvalue,
            e.chi2.pvalue,
        );
        check.opt_stat(format!("{name} report js"), d.js, e.js);
        check.opt_stat(format!("{name} report psi"), d.psi, Some(e.psi));
        check.opt_stat(
            format!("{name} report unseen_rate"),
            d.unseen_rate,
            Some(e.unseen_rate),
        );
        check.opt_stat(
            format!("{name} report missing_rate_baseline"),
            d.missing_rate_baseline,
            Some(e.missing_rate_baseline),
        );
        check.opt_stat(
            format!("{name} report missing_rate_window"),
            d.missing_rate_window,
            Some(e.missing_rate_window),
        );
        check.equal(format!("{name} report unseen"), &d.unseen, &e.unseen);
        check.equal(format!("{name} report vanished"), &d.vanished, &e.vanished);
    }
    check.finish(fx.categorical.len() * 20);
}

#[test]
fn chi2_survival_function_matches_scipy() {
    let fx = fixtures();
    let mut check = Check::default();
    for &(x, dof, sf) in &fx.chi2_sf {
        check.pvalue(format!("chi2.sf({x}, {dof})"), stats::chi2_sf(x, dof), sf);
    }
    check.finish(100);
}

#[test]
fn kstwo_survival_function_matches_scipy() {
    let fx = fixtures();
    let mut check = Check::default();
    for &(d, n, sf) in &fx.kstwo_sf {
        check.pvalue(format!("kstwo.sf({d}, {n})"), stats::kstwo_sf(d, n), sf);
    }
    check.finish(200);
}
