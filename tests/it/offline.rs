//! `cairn baseline` and `cairn drift` as a user runs them, on CSV and Parquet files.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Normal draws from a fixed seed (xorshift + Box–Muller), so the files are reproducible.
pub struct Normal(u64);

impl Normal {
    pub fn new(seed: u64) -> Normal {
        Normal(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn sample(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// A CSV of `rows` rows: `x` ~ N(shift, 1), `y` ~ N(0, 1) (the control), `color` drawn with
/// `p_red` for red, the rest green and blue, `code` an integer 1..=3 (categorical only when
/// forced), and a missing `y` every 50th row.
fn write_csv(path: &Path, rows: usize, shift: f64, p_red: f64, seed: u64) {
    let mut rng = Normal::new(seed);
    let mut out = String::from("x,y,color,code\n");
    for i in 0..rows {
        let x = rng.sample() + shift;
        let y = rng.sample();
        let u = rng.uniform();
        let color = if u < p_red {
            "red"
        } else if u < p_red + (1.0 - p_red) / 2.0 {
            "green"
        } else {
            "blue"
        };
        let code = 1 + (rng.uniform() * 3.0) as u32;
        let y = if i % 50 == 0 {
            String::new()
        } else {
            format!("{y}")
        };
        out.push_str(&format!("{x},{y},{color},{code}\n"));
    }
    std::fs::write(path, out).unwrap();
}

pub(crate) fn cairn(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("cairn runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn baseline_summarizes_a_csv_into_the_model_version_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.csv");
    write_csv(&data, 2000, 0.0, 0.3, 1);
    let version = dir.path().join("model/1");
    std::fs::create_dir_all(&version).unwrap();
    let (code, stdout, stderr) = cairn(&[
        "baseline",
        "--data",
        s(&data),
        "--model-dir",
        s(&version),
        "--categorical",
        "code",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("2000 rows"), "{stderr}");
    let b: Value =
        serde_json::from_slice(&std::fs::read(version.join("baseline.json")).unwrap()).unwrap();
    assert_eq!(b["rows"], 2000);
    let x = &b["features"]["x"];
    assert_eq!(x["kind"], "numeric");
    assert_eq!(x["count"], 2000);
    assert_eq!(x["edges"].as_array().unwrap().len(), 9, "{x}");
    assert_eq!(x["proportions"].as_array().unwrap().len(), 10);
    assert_eq!(
        x["sample"].as_array().unwrap().len(),
        2000,
        "exact below the sample size"
    );
    assert_eq!(b["features"]["y"]["missing"], 40);
    assert_eq!(b["features"]["color"]["kind"], "categorical");
    assert_eq!(b["features"]["code"]["kind"], "categorical", "forced");

    // Stdout without a destination, and a reservoir when the sample is smaller than the data.
    let (code, stdout, stderr) = cairn(&["baseline", "--data", s(&data), "--sample-size", "100"]);
    assert_eq!(code, 0, "{stderr}");
    let b: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(b["features"]["x"]["sample"].as_array().unwrap().len(), 100);
    assert_eq!(b["features"]["code"]["kind"], "numeric", "not forced");
}

#[test]
fn drift_flags_the_shifted_feature_and_not_the_control() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.csv");
    let same = dir.path().join("same.csv");
    let shifted = dir.path().join("shifted.csv");
    write_csv(&train, 3000, 0.0, 0.3, 1);
    write_csv(&same, 1000, 0.0, 0.3, 2);
    write_csv(&shifted, 1000, 1.0, 0.6, 3);
    let baseline = dir.path().join("baseline.json");
    let (code, _, stderr) = cairn(&["baseline", "--data", s(&train), "--out", s(&baseline)]);
    assert_eq!(code, 0, "{stderr}");

    let (code, stdout, stderr) = cairn(&[
        "drift",
        "--baseline",
        s(&baseline),
        "--window",
        s(&shifted),
        "--fail-on-drift",
    ]);
    assert_eq!(code, 3, "drifted: {stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let x = &r["features"]["x"];
    assert_eq!(x["kind"], "numeric");
    assert_eq!(x["drifted"], true);
    for key in [
        "psi",
        "js",
        "wasserstein",
        "wasserstein_norm",
        "missing_rate_baseline",
        "missing_rate_window",
        "out_of_range_rate",
    ] {
        assert!(x[key].is_number(), "{key} in {x}");
    }
    assert!(x["ks"]["statistic"].is_number() && x["ks"]["pvalue"].is_number());
    assert!(x.get("chi2").is_none() && x.get("unseen").is_none(), "{x}");
    assert!(x["psi"].as_f64().unwrap() > 0.2);
    assert_eq!(r["features"]["y"]["drifted"], false, "the control");
    let color = &r["features"]["color"];
    assert_eq!(color["kind"], "categorical");
    assert_eq!(color["drifted"], true);
    assert!(color["chi2"]["dof"] == 2 && color["chi2"]["pvalue"].as_f64().unwrap() < 1e-6);
    assert!(color.get("ks").is_none() && color.get("wasserstein").is_none());
    assert_eq!(color["unseen_rate"], 0.0);

    // The unshifted window, from a baseline built on the fly from the CSV itself.
    let (code, stdout, stderr) = cairn(&[
        "drift",
        "--baseline",
        s(&train),
        "--window",
        s(&same),
        "--fail-on-drift",
    ]);
    assert_eq!(code, 0, "nothing drifted: {stdout} {stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        r["drifted"].as_array().unwrap().is_empty(),
        "{}",
        r["drifted"]
    );
}

#[test]
fn drift_reads_thresholds_and_writes_html_without_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.csv");
    let shifted = dir.path().join("shifted.csv");
    write_csv(&train, 2000, 0.0, 0.3, 1);
    write_csv(&shifted, 500, 0.3, 0.3, 5);
    // A PSI threshold high enough to pass and tests off: nothing is judged drifted.
    let thresholds = dir.path().join("config.toml");
    std::fs::write(
        &thresholds,
        "[monitoring]\nenabled = true\n[monitoring.thresholds]\npsi = 5.0\nalpha = 1e-300\n",
    )
    .unwrap();
    let (code, stdout, stderr) = cairn(&[
        "drift",
        "--baseline",
        s(&train),
        "--window",
        s(&shifted),
        "--thresholds",
        s(&thresholds),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert!(r["drifted"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["thresholds"]["psi"], 5.0);

    let page = dir.path().join("report.html");
    let (code, _, stderr) = cairn(&[
        "drift",
        "--baseline",
        s(&train),
        "--window",
        s(&shifted),
        "--format",
        "html",
        "--out",
        s(&page),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") || html.starts_with("<!doctype html>"));
    assert!(html.contains("<svg"), "inline charts");
    assert!(!html.contains("<script"), "renders without JavaScript");
    for fetch in ["src=", "href=\"http", "url(", "@import", "<link"] {
        assert!(!html.contains(fetch), "nothing fetched: {fetch}");
    }
    for name in ["x", "y", "color", "code"] {
        assert!(html.contains(name));
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("a.csv");
    std::fs::write(&csv, "x\n1\n2\n").unwrap();
    let (code, _, stderr) = cairn(&[
        "drift",
        "--baseline",
        "/nonexistent.json",
        "--window",
        s(&csv),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent.json"), "{stderr}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"format\": 99}").unwrap();
    let (code, _, stderr) = cairn(&["drift", "--baseline", s(&bad), "--window", s(&csv)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("format"), "{stderr}");
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "x\n").unwrap();
    let (code, _, stderr) = cairn(&["baseline", "--data", s(&empty)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no rows"), "{stderr}");
    let (code, _, stderr) = cairn(&[
        "drift",
        "--baseline",
        s(&csv),
        "--window",
        s(&csv),
        "--from",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("prediction log"), "{stderr}");
    let (code, _, stderr) = cairn(&[
        "drift",
        "--baseline",
        s(&csv),
        "--window",
        s(&csv),
        "--from",
        "soon",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("RFC 3339"), "{stderr}");
}
