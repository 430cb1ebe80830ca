//! The drift report: its JSON shape, pairing of features, thresholds, and the false-positive
//! control of the Bonferroni-corrected tests on simulated windows.

use cairn_monitor::baseline::{Baseline, BaselineOptions, FeatureBaseline};
use cairn_monitor::category::{
    MAX_CATEGORIES, MAX_CATEGORY_BYTES, MAX_LISTED_CATEGORIES, OTHER_CATEGORY, TRUNCATION_MARK,
};
use cairn_monitor::column::{Column, Columns};
use cairn_monitor::report::{
    drift, Comparison, Histogram, Statistic, Thresholds, MAX_HISTOGRAM_CATEGORIES,
};
use cairn_monitor::stats;
use serde_json::{json, Value};

/// A small seeded normal generator (SplitMix64 + Box–Muller), so the simulation is reproducible.
struct Normal {
    state: u64,
    spare: Option<f64>,
}

impl Normal {
    fn new(seed: u64) -> Self {
        Normal {
            state: seed,
            spare: None,
        }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 53 random bits in (0, 1).
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn sample(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * v;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    fn column(&mut self, n: usize, mean: f64) -> Vec<f64> {
        (0..n).map(|_| mean + self.sample()).collect()
    }
}

fn numeric(name: &str, values: Vec<f64>) -> (String, Column) {
    (name.to_string(), Column::Numeric(values))
}

fn categorical(name: &str, values: &[&str]) -> (String, Column) {
    let values = values
        .iter()
        .map(|v| (!v.is_empty()).then(|| v.to_string()))
        .collect();
    (name.to_string(), Column::Categorical(values))
}

const FEATURES: [&str; 5] = ["shifted", "c1", "c2", "c3", "c4"];

fn simulated_baseline(rng: &mut Normal) -> Baseline {
    let features: Columns = FEATURES
        .iter()
        .map(|&f| numeric(f, rng.column(5_000, 0.0)))
        .collect();
    Baseline::from_columns(&features, &Vec::new(), &BaselineOptions::default())
}

/// How many of `windows` windows (500 rows each) drift, overall and per feature, with `shift`
/// added to the mean of the first feature.
fn simulate(windows: usize, shift: f64, seed: u64) -> (usize, Vec<usize>) {
    let mut rng = Normal::new(seed);
    let baseline = simulated_baseline(&mut rng);
    let thresholds = Thresholds::default();
    let mut any = 0;
    let mut per_feature = vec![0; FEATURES.len()];
    for _ in 0..windows {
        let window: Columns = FEATURES
            .iter()
            .enumerate()
            .map(|(i, &f)| numeric(f, rng.column(500, if i == 0 { shift } else { 0.0 })))
            .collect();
        let report = drift(&baseline, &window, &Vec::new(), &thresholds);
        assert_eq!(report.thresholds.comparisons, FEATURES.len());
        if !report.drifted.is_empty() {
            any += 1;
        }
        for (count, f) in per_feature.iter_mut().zip(FEATURES) {
            if report.features[f].drifted {
                *count += 1;
            }
        }
    }
    (any, per_feature)
}

/// Windows per simulation, and the allowance over alpha = 0.01 for the share that may flag: with
/// 500 windows a true rate of 1% exceeds 3% with probability below 1e-4.
const WINDOWS: usize = 500;
const ALLOWED_FALSE_POSITIVE_SHARE: f64 = 0.03;

#[test]
fn unshifted_windows_rarely_drift() {
    let (any, per_feature) = simulate(WINDOWS, 0.0, 11);
    let share = any as f64 / WINDOWS as f64;
    assert!(
        share <= ALLOWED_FALSE_POSITIVE_SHARE,
        "{any} of {WINDOWS} unshifted windows drifted (per feature {per_feature:?})"
    );
}

#[test]
fn a_half_sd_shift_is_flagged_and_the_controls_are_not() {
    let (_, per_feature) = simulate(WINDOWS, 0.5, 12);
    let flagged = per_feature[0] as f64 / WINDOWS as f64;
    assert!(
        flagged >= 0.98,
        "shifted feature flagged in {flagged} of windows"
    );
    for (count, f) in per_feature.iter().zip(FEATURES).skip(1) {
        let share = *count as f64 / WINDOWS as f64;
        assert!(
            share <= ALLOWED_FALSE_POSITIVE_SHARE,
            "control {f} flagged in {share} of windows"
        );
    }
}

fn mixed_baseline() -> Baseline {
    let mut rng = Normal::new(3);
    let features: Columns = vec![
        numeric("num", rng.column(400, 0.0)),
        numeric("gone", rng.column(400, 0.0)),
        numeric("flip", rng.column(400, 0.0)),
        categorical("cat", &["a", "b", "c", "a"].repeat(100)),
    ];
    let outputs: Columns = vec![numeric("score", rng.column(400, 0.0))];
    Baseline::from_columns(&features, &outputs, &BaselineOptions::default())
}

fn mixed_window(shift: f64) -> (Columns, Columns) {
    let mut rng = Normal::new(4);
    let mut num = rng.column(200, shift);
    num[0] = f64::NAN;
    let features: Columns = vec![
        numeric("num", num),
        categorical("flip", &["x"; 200]),
        categorical("cat", &["a", "b", "d", ""].repeat(50)),
        numeric("new", rng.column(200, 0.0)),
    ];
    let outputs: Columns = vec![numeric("score", rng.column(200, shift))];
    (features, outputs)
}

#[test]
fn report_json_has_the_documented_shape() {
    let baseline = mixed_baseline();
    let (features, outputs) = mixed_window(0.0);
    let report = drift(&baseline, &features, &outputs, &Thresholds::default());
    let value = serde_json::to_value(&report).unwrap();
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(
        keys(&value),
        [
            "drifted",
            "features",
            "missing_in_baseline",
            "missing_in_window",
            "outputs",
            "rows",
            "thresholds"
        ]
    );
    assert_eq!(value["rows"], 200);
    let num = &value["features"]["num"];
    let mut num_keys = keys(num);
    num_keys.sort();
    assert_eq!(
        num_keys,
        [
            "drifted",
            "histogram",
            "js",
            "kind",
            "ks",
            "missing_rate_baseline",
            "missing_rate_window",
            "out_of_range_rate",
            "psi",
            "violations",
            "wasserstein",
            "wasserstein_norm"
        ]
    );
    assert_eq!(num["kind"], "numeric");
    let mut ks_keys = keys(&num["ks"]);
    ks_keys.sort();
    assert_eq!(ks_keys, ["pvalue", "statistic"]);
    assert_eq!(num["missing_rate_window"], 0.005);
    let cat = &value["features"]["cat"];
    let mut cat_keys = keys(cat);
    cat_keys.sort();
    assert_eq!(
        cat_keys,
        [
            "chi2",
            "drifted",
            "histogram",
            "js",
            "kind",
            "missing_rate_baseline",
            "missing_rate_window",
            "psi",
            "unseen",
            "unseen_count",
            "unseen_rate",
            "vanished",
            "vanished_count",
            "violations"
        ]
    );
    let mut chi2_keys = keys(&cat["chi2"]);
    chi2_keys.sort();
    assert_eq!(chi2_keys, ["dof", "pvalue", "statistic"]);
    assert_eq!(cat["unseen"], json!(["d"]));
    assert_eq!(cat["vanished"], json!(["c"]));
    assert_eq!(
        (cat["unseen_count"].as_u64(), cat["vanished_count"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(cat["unseen_rate"], 1.0 / 3.0);
    assert_eq!(cat["missing_rate_window"], 0.25);
    let flip = &value["features"]["flip"];
    assert_eq!(flip["kind"], "numeric");
    assert!(flip["error"].as_str().unwrap().contains("categorical"));
    assert_eq!(flip["drifted"], false);
    assert!(flip.get("psi").is_none());
    assert!(flip.get("histogram").is_none());
    assert_eq!(value["outputs"]["score"]["kind"], "numeric");
    assert_eq!(value["missing_in_baseline"], json!(["new"]));
    assert_eq!(value["missing_in_window"], json!(["gone"]));
    let t = &value["thresholds"];
    assert_eq!(t["psi"], 0.2);
    assert_eq!(t["alpha"], 0.01);
    assert_eq!(t["js"], Value::Null);
    // num, cat and the output score are compared; flip (kind mismatch) is not.
    assert_eq!(t["comparisons"], 3);
    assert_eq!(t["alpha_corrected"], 0.01 / 3.0);
}

#[test]
fn drifted_lists_features_then_outputs_with_their_violations() {
    let baseline = mixed_baseline();
    let (features, outputs) = mixed_window(1.0);
    let report = drift(&baseline, &features, &outputs, &Thresholds::default());
    assert_eq!(report.drifted, ["cat", "num", "score"]);
    let num = &report.features["num"];
    assert!(num.violations.contains(&Statistic::Ks));
    assert!(num.violations.contains(&Statistic::Psi));
    // The window loses category c and gains d: chi-squared sees it.
    assert!(report.features["cat"].violations.contains(&Statistic::Chi2));
}

#[test]
fn optional_thresholds_fire_only_when_set() {
    let baseline = mixed_baseline();
    let (features, outputs) = mixed_window(0.0);
    let off = Thresholds {
        psi: None,
        alpha: 1e-300,
        ..Thresholds::default()
    };
    let report = drift(&baseline, &features, &outputs, &off);
    assert!(report.drifted.is_empty(), "{:?}", report.drifted);

    let on = Thresholds {
        js: Some(0.0),
        wasserstein_norm: Some(0.0),
        out_of_range_rate: Some(-1.0),
        unseen_rate: Some(0.1),
        missing_rate_increase: Some(0.001),
        ..off
    };
    let report = drift(&baseline, &features, &outputs, &on);
    let num = &report.features["num"].violations;
    for s in [
        Statistic::Js,
        Statistic::WassersteinNorm,
        Statistic::OutOfRangeRate,
        Statistic::MissingRateIncrease,
    ] {
        assert!(num.contains(&s), "num lacks {s:?}: {num:?}");
    }
    let cat = &report.features["cat"].violations;
    for s in [
        Statistic::Js,
        Statistic::UnseenRate,
        Statistic::MissingRateIncrease,
    ] {
        assert!(cat.contains(&s), "cat lacks {s:?}: {cat:?}");
    }
    let value = serde_json::to_value(&report.features["cat"]).unwrap();
    assert!(value["violations"]
        .as_array()
        .unwrap()
        .contains(&json!("unseen_rate")));
}

#[test]
fn a_window_without_valid_values_has_undefined_statistics() {
    let baseline = mixed_baseline();
    let features: Columns = vec![
        numeric("num", vec![f64::NAN; 10]),
        categorical("cat", &[""; 10]),
    ];
    let report = drift(&baseline, &features, &Vec::new(), &Thresholds::default());
    let Comparison::Numeric(num) = &report.features["num"].comparison else {
        panic!("numeric expected");
    };
    assert_eq!((num.psi, num.ks, num.wasserstein), (None, None, None));
    assert_eq!(num.missing_rate_window, Some(1.0));
    let Comparison::Categorical(cat) = &report.features["cat"].comparison else {
        panic!("categorical expected");
    };
    assert_eq!((cat.psi, cat.chi2, cat.unseen_rate), (None, None, None));
    assert_eq!(cat.vanished, ["a", "b", "c"]);
    let value = serde_json::to_value(&report).unwrap();
    assert_eq!(value["features"]["num"]["ks"], Value::Null);
    assert!(report.drifted.is_empty());
}

#[test]
fn histograms_hold_the_proportions_psi_compared() {
    let baseline = mixed_baseline();
    let (features, outputs) = mixed_window(1.0);
    let report = drift(&baseline, &features, &outputs, &Thresholds::default());
    let value = serde_json::to_value(&report).unwrap();

    // Numeric: the baseline's edges and proportions, the window's share of each bin.
    let num = &report.features["num"];
    let Some(Histogram::Numeric {
        edges,
        baseline: Some(b),
        window: Some(w),
    }) = &num.histogram
    else {
        panic!("numeric histogram expected: {:?}", num.histogram);
    };
    let cairn_monitor::baseline::FeatureBaseline::Numeric(nb) = &baseline.features["num"] else {
        panic!("numeric baseline expected");
    };
    assert_eq!(edges, &nb.edges);
    assert_eq!(b, &nb.proportions);
    assert_eq!((edges.len(), b.len(), w.len()), (9, 10, 10));
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    let Comparison::Numeric(d) = &num.comparison else {
        panic!("numeric expected");
    };
    assert_eq!(stats::psi(b, w), d.psi);
    assert_eq!(stats::js_distance(b, w), d.js);
    let h = &value["features"]["num"]["histogram"];
    assert_eq!(h["edges"].as_array().unwrap().len(), 9);
    assert_eq!(h["window"].as_array().unwrap().len(), 10);

    // Categorical: the sorted union, each side over its own valid values.
    let cat = &report.features["cat"];
    let Comparison::Categorical(d) = &cat.comparison else {
        panic!("categorical expected");
    };
    let h = &value["features"]["cat"]["histogram"];
    assert_eq!(h["categories"], json!(["a", "b", "c", "d"]));
    assert_eq!(h["baseline"], json!([0.5, 0.25, 0.25, 0.0]));
    let third = 1.0 / 3.0;
    assert_eq!(h["window"], json!([third, third, 0.0, third]));
    assert!(h.get("rest").is_none());
    let Some(Histogram::Categorical {
        baseline: Some(b),
        window: Some(w),
        ..
    }) = &cat.histogram
    else {
        panic!("categorical histogram expected");
    };
    assert_eq!(stats::psi(b, w), d.psi);

    // A window without valid values draws the baseline alone.
    let empty: Columns = vec![
        numeric("num", vec![f64::NAN; 4]),
        categorical("cat", &[""; 4]),
    ];
    let value = serde_json::to_value(drift(
        &baseline,
        &empty,
        &Vec::new(),
        &Thresholds::default(),
    ))
    .unwrap();
    let h = &value["features"]["num"]["histogram"];
    assert_eq!(h["window"], Value::Null);
    assert_eq!(h["baseline"].as_array().unwrap().len(), 10);
    let h = &value["features"]["cat"]["histogram"];
    assert_eq!(h["categories"], json!(["a", "b", "c"]));
    assert_eq!(h["baseline"], json!([0.5, 0.25, 0.25]));
    assert_eq!(h["window"], Value::Null);
}

#[test]
fn a_histogram_of_many_categories_keeps_the_heaviest_and_sums_the_rest() {
    // 60 baseline categories; "k00".."k09" are ten times as frequent as the rest.
    let mut values: Vec<String> = Vec::new();
    for k in 0..60 {
        let times = if k < 10 { 10 } else { 1 };
        values.extend(std::iter::repeat_n(format!("k{k:02}"), times));
    }
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let baseline = Baseline::from_columns(
        &vec![categorical("c", &refs)],
        &Vec::new(),
        &BaselineOptions::default(),
    );
    let window: Columns = vec![categorical("c", &["k00", "new"])];
    let report = drift(&baseline, &window, &Vec::new(), &Thresholds::default());
    let Some(Histogram::Categorical {
        categories,
        baseline: Some(b),
        window: Some(w),
        rest: Some(rest),
    }) = &report.features["c"].histogram
    else {
        panic!("a bounded histogram expected");
    };
    assert_eq!(categories.len(), MAX_HISTOGRAM_CATEGORIES);
    assert_eq!(rest.categories, 61 - MAX_HISTOGRAM_CATEGORIES);
    assert!(categories.windows(2).all(|p| p[0] < p[1]), "sorted");
    for heavy in ["k00", "k09", "new"] {
        assert!(categories.iter().any(|c| c == heavy), "{heavy} kept");
    }
    let total_b = b.iter().sum::<f64>() + rest.baseline.unwrap();
    let total_w = w.iter().sum::<f64>() + rest.window.unwrap();
    assert!((total_b - 1.0).abs() < 1e-12 && (total_w - 1.0).abs() < 1e-12);
    assert_eq!(rest.window, Some(0.0));
}

/// Every category name a report holds: histogram categories, unseen and vanished.
fn category_names(report: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for f in report["features"].as_object().unwrap().values() {
        for key in ["unseen", "vanished"] {
            names.extend(f[key].as_array().unwrap().iter().map(|v| v.to_string()));
        }
        names.extend(
            f["histogram"]["categories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
    }
    names
}

#[test]
fn a_report_of_huge_distinct_values_stays_small() {
    // Each value 64 KiB, distinct in its first bytes: a baseline of 3,000 of them and a window of
    // 3,000 others, past every cap.
    let value = |i: usize| format!("{i:06}{}", "é".repeat(32 << 10));
    let baseline_values: Vec<String> = (0..3000).map(value).collect();
    let window_values: Vec<String> = (3000..6000).map(value).collect();
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let baseline = Baseline::from_columns(
        &vec![categorical("c", &refs(&baseline_values))],
        &Vec::new(),
        &BaselineOptions::default(),
    );
    let FeatureBaseline::Categorical(b) = &baseline.features["c"] else {
        panic!("categorical expected");
    };
    assert_eq!(b.frequencies.len(), MAX_CATEGORIES);
    assert_eq!(
        b.frequencies[OTHER_CATEGORY],
        3000 - (MAX_CATEGORIES as u64 - 1)
    );
    assert_eq!(b.count, 3000);
    assert!(b.frequencies.keys().all(|c| c.len() <= MAX_CATEGORY_BYTES));
    baseline
        .validate()
        .expect("a capped baseline is a valid one");

    let window: Columns = vec![categorical("c", &refs(&window_values))];
    let report = drift(&baseline, &window, &Vec::new(), &Thresholds::default());
    let json = serde_json::to_value(&report).unwrap();
    let size = json.to_string().len();
    assert!(size < 64 << 10, "the report is {size} bytes");
    let c = &json["features"]["c"];
    assert_eq!(c["unseen"].as_array().unwrap().len(), MAX_LISTED_CATEGORIES);
    assert_eq!(
        c["vanished"].as_array().unwrap().len(),
        MAX_LISTED_CATEGORIES
    );
    // Past the cap both sides have a bucket, compared as one category: 999 named categories of
    // each side are unseen or vanished.
    assert_eq!(c["unseen_count"], MAX_CATEGORIES - 1);
    assert_eq!(c["vanished_count"], MAX_CATEGORIES - 1);
    assert_eq!(c["unseen_rate"].as_f64().unwrap(), 999.0 / 3000.0);
    assert_eq!(c["drifted"], true);
    for name in category_names(&json) {
        assert!(name.len() <= MAX_CATEGORY_BYTES + 2, "{} bytes", name.len());
    }
    let listed = c["unseen"][0].as_str().unwrap();
    assert!(listed.ends_with(TRUNCATION_MARK) && listed.starts_with("003000"));
}
