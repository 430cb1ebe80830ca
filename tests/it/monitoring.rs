//! The prediction log, drift windows, feedback and live quality, over real HTTP against the real
//! server, read back from disk with the log's own reader.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow_array::{
    Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray, UInt32Array,
    UInt64Array,
};
use http::StatusCode;
use serde_json::{json, Value};

use crate::cli::{spawn, wait_ready};
use crate::common::{Repo, TestServer};
use crate::offline::{cairn, Normal};
use cairn::config::ServerConfig;

/// iris (v1 logistic regression, v2 MLP) with monitoring on.
fn iris(monitoring: &str) -> Repo {
    let repo = Repo::with(&["iris"]);
    repo.write(
        "iris/config.toml",
        format!(
            "max_batch_size = 64\nversion_policy = {{ all = {{}} }}\n\
             [rollout]\nmin_requests = 1000000\nauto_promote = false\nauto_rollback = false\n\
             [monitoring]\nenabled = true\nfeatures = [\"sepal_length\", \"sepal_width\", \"petal_length\", \"petal_width\"]\n{monitoring}\n"
        )
        .as_bytes(),
    );
    repo
}

/// Settings for tests: the log synced after every batch, in the repository's state dir.
fn fast(c: &mut ServerConfig) {
    c.monitor.fsync = Duration::ZERO;
}

fn rows(n: usize, seed: usize) -> Vec<[f32; 4]> {
    (0..n)
        .map(|i| {
            let k = (i + seed) as f32;
            [
                5.0 + (k * 0.37).sin(),
                3.0 + (k * 0.11).cos() * 0.4,
                3.5 + (k * 0.23).sin() * 2.0,
                1.2 + (k * 0.53).cos() * 0.8,
            ]
        })
        .collect()
}

fn body(id: Option<&str>, rows: &[[f32; 4]]) -> Value {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let mut v = json!({"inputs": [{"name": "input", "shape": [rows.len(), 4], "datatype": "FP32", "data": data}]});
    if let Some(id) = id {
        v["id"] = json!(id);
    }
    v
}

/// The log of one model, read back: one map per row with the meta columns and features.
fn read_log(s: &TestServer, model: &str) -> Vec<BTreeMap<String, Value>> {
    let dir = s
        .repo
        .path()
        .join(".cairn/predictions")
        .join(model)
        .join("predictions");
    let (batches, report) = cairn_monitor::log::read_dir(&dir).unwrap();
    assert_eq!(report.torn_tails, 0);
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        for r in 0..b.num_rows() {
            let mut row = BTreeMap::new();
            for (i, f) in schema.fields().iter().enumerate() {
                row.insert(f.name().clone(), cell(b.column(i).as_ref(), r));
            }
            out.push(row);
        }
    }
    out
}

fn cell(c: &dyn Array, r: usize) -> Value {
    if c.is_null(r) {
        return Value::Null;
    }
    if let Some(a) = c.as_any().downcast_ref::<StringArray>() {
        json!(a.value(r))
    } else if let Some(a) = c.as_any().downcast_ref::<Float64Array>() {
        json!(a.value(r))
    } else if let Some(a) = c.as_any().downcast_ref::<UInt64Array>() {
        json!(a.value(r))
    } else if let Some(a) = c.as_any().downcast_ref::<UInt32Array>() {
        json!(a.value(r))
    } else if let Some(a) = c.as_any().downcast_ref::<Int64Array>() {
        json!(a.value(r))
    } else if let Some(a) = c.as_any().downcast_ref::<TimestampMicrosecondArray>() {
        json!(a.value(r))
    } else {
        Value::Null
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_logged_with_its_id_version_and_arm() {
    let s = TestServer::start_with(iris(""), fast).await;
    let sample = rows(3, 0);
    // A client id is echoed; without one the server makes one, in the body and a header.
    let r = s
        .post_json(
            "/v2/models/iris/versions/1/infer",
            &body(Some("client-1"), &sample),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["id"], "client-1");
    assert_eq!(r.headers["x-request-id"], "client-1");
    let r = s
        .post_json("/v2/models/iris/infer", &body(None, &sample[..1]))
        .await;
    let made = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(made.len(), 36, "a UUID: {made}");
    assert_eq!(r.headers["x-request-id"], made.as_str());
    // A canary at weight 1 and a shadow.
    let control = |action: &str, b: Value| {
        let s = &s;
        let action = action.to_string();
        async move {
            s.post_json(&format!("/v2/models/iris/deployment/{action}"), &b)
                .await
                .status
        }
    };
    assert_eq!(
        control("stable", json!({"version": 1})).await,
        StatusCode::OK
    );
    assert_eq!(
        control("canary", json!({"version": 2, "weight": 1.0})).await,
        StatusCode::OK
    );
    let r = s
        .post_json(
            "/v2/models/iris/infer",
            &body(Some("canary-1"), &sample[..2]),
        )
        .await;
    assert_eq!(r.json()["model_version"], "2");
    assert_eq!(
        control("shadow", json!({"version": 2})).await,
        StatusCode::OK
    );
    let r = s
        .post_json(
            "/v2/models/iris/infer",
            &body(Some("shadowed-1"), &sample[..1]),
        )
        .await;
    assert_eq!(r.json()["model_version"], "1");
    // A request the model refuses is not a prediction.
    let r = s.post_json("/v2/models/iris/infer", &json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let mut s = s;
    s.stop().await;
    let log = read_log(&s, "iris");
    let by_id = |id: &str| -> Vec<&BTreeMap<String, Value>> {
        log.iter().filter(|r| r["request_id"] == id).collect()
    };
    let direct = by_id("client-1");
    assert_eq!(direct.len(), 3, "one record per row");
    for (i, r) in direct.iter().enumerate() {
        assert_eq!(r["row"], i as u64);
        assert_eq!(r["arm"], "direct");
        assert_eq!(r["model_version"], 1);
        assert_eq!(r["status"], "ok");
        assert!((r["sepal_length"].as_f64().unwrap() - sample[i][0] as f64).abs() < 1e-6);
        assert!((r["petal_width"].as_f64().unwrap() - sample[i][3] as f64).abs() < 1e-6);
        assert!(r["output.label"].is_i64());
        assert!(r["output.probabilities[2]"].is_f64());
    }
    let stable = by_id(&made);
    assert_eq!(stable.len(), 1);
    assert_eq!(stable[0]["arm"], "stable");
    assert_eq!(stable[0]["model_version"], 2);
    let canary = by_id("canary-1");
    assert_eq!(canary.len(), 2);
    assert!(canary
        .iter()
        .all(|r| r["arm"] == "canary" && r["model_version"] == 2));
    // The shadowed request: the stable answer and the candidate's copy, marked as such.
    let mut shadowed: Vec<(String, u64)> = by_id("shadowed-1")
        .iter()
        .map(|r| {
            (
                r["arm"].as_str().unwrap().to_string(),
                r["model_version"].as_u64().unwrap(),
            )
        })
        .collect();
    shadowed.sort();
    assert_eq!(shadowed, vec![("shadow".into(), 2), ("stable".into(), 1)]);
    assert_eq!(
        log.len(),
        3 + 1 + 2 + 2,
        "nothing else, and nothing for the refused request"
    );
    // A clean shutdown sealed everything to Parquet.
    let dir = s.repo.path().join(".cairn/predictions/iris/predictions");
    let open: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "arrows"))
        .collect();
    assert!(open.is_empty(), "{open:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_is_off_by_default_and_sampled_when_asked() {
    let repo = Repo::with(&["iris"]);
    repo.write(
        "iris/config.toml",
        b"max_batch_size = 64\nversion_policy = { all = {} }\n",
    );
    let s = TestServer::start_with(repo, fast).await;
    for _ in 0..5 {
        let r = s
            .post_json("/v2/models/iris/infer", &body(None, &rows(1, 0)))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = s.get("/v2/models/iris/drift").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("not monitored"), "{}", r.error());
    let mut s = s;
    s.stop().await;
    assert!(!s.repo.path().join(".cairn/predictions/iris").exists());

    let mut s = TestServer::start_with(iris("sample_rate = 0.25"), fast).await;
    for i in 0..200 {
        let r = s
            .post_json(
                "/v2/models/iris/infer",
                &body(Some(&format!("r{i}")), &rows(1, i)),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    s.stop().await;
    let logged = read_log(&s, "iris").len();
    assert!(
        (49..=51).contains(&logged),
        "a quarter of the requests, spread evenly: {logged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_rotate_and_retention_bounds_the_log() {
    let mut s = TestServer::start_with(iris(""), |c| {
        fast(c);
        c.monitor.segment_max_bytes = 8 << 10;
        c.monitor.retention_max_bytes = Some(64 << 10);
    })
    .await;
    for i in 0..400 {
        let r = s
            .post_json(
                "/v2/models/iris/infer",
                &body(Some(&format!("r{i}")), &rows(8, i)),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    s.stop().await;
    let dir = s.repo.path().join(".cairn/predictions/iris/predictions");
    let sealed: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert!(sealed.len() >= 2, "segments rotated: {sealed:?}");
    assert!(
        sealed.iter().sum::<u64>() <= 64 << 10,
        "retention bound: {sealed:?}"
    );
    let log = read_log(&s, "iris");
    assert!(log.len() < 3200, "the oldest went");
    assert_eq!(
        log.last().unwrap()["request_id"],
        "r399",
        "the newest stayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_falls_behind_drops_and_counts_or_holds_the_request() {
    for (when_full, expect_drops) in [
        (cairn::config::WhenFull::Drop, true),
        (cairn::config::WhenFull::Block, false),
    ] {
        let mut s = TestServer::start_with(iris(""), |c| {
            c.monitor.queue = 1;
            c.monitor.when_full = when_full;
            c.monitor.block = Duration::from_secs(30);
            c.monitor.fsync = Duration::ZERO;
        })
        .await;
        let mut tasks = Vec::new();
        let client = s.client.clone();
        for i in 0..400 {
            let client = client.clone();
            let base = s.base.clone();
            tasks.push(tokio::spawn(async move {
                let req = http::Request::post(format!("{base}/v2/models/iris/infer"))
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        serde_json::to_vec(&body(Some(&format!("r{i}")), &rows(4, i))).unwrap(),
                    )))
                    .unwrap();
                client.request(req).await.unwrap().status()
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.unwrap(),
                StatusCode::OK,
                "logging never fails a request"
            );
        }
        let dropped = s
            .metric("cairn_prediction_log_dropped_total{model=\"iris\",reason=\"queue_full\"}")
            .await;
        s.stop().await;
        let logged = read_log(&s, "iris").len() as f64 / 4.0;
        assert_eq!(
            logged + dropped,
            400.0,
            "{when_full:?}: logged {logged}, dropped {dropped}"
        );
        if expect_drops {
            assert!(
                dropped > 0.0,
                "a queue of one under 400 requests drops some"
            );
        } else {
            assert_eq!(dropped, 0.0, "backpressure holds requests instead");
        }
    }
}

/// iris's four features in the baseline: N(mean, sd) each.
const IRIS_MEANS: [f64; 4] = [5.8, 3.0, 3.7, 1.2];
const IRIS_SDS: [f64; 4] = [0.8, 0.4, 1.7, 0.7];
const IRIS_FEATURES: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];

/// Rows drawn from the baseline's distribution, with petal_length moved by `shift` of its sd.
fn iris_draws(rng: &mut Normal, n: usize, shift: f64) -> Vec<[f32; 4]> {
    (0..n)
        .map(|_| {
            let mut row = [0f32; 4];
            for (j, x) in row.iter_mut().enumerate() {
                let moved = if j == 2 { shift } else { 0.0 };
                *x = (IRIS_MEANS[j] + IRIS_SDS[j] * (rng.sample() + moved)) as f32;
            }
            row
        })
        .collect()
}

/// `cairn baseline` on 3,000 baseline rows, written into iris version 1.
fn write_iris_baseline(repo: &Repo) {
    let mut rng = Normal::new(1);
    let mut csv = IRIS_FEATURES.join(",") + "\n";
    for row in iris_draws(&mut rng, 3000, 0.0) {
        let cells: Vec<String> = row.iter().map(|x| x.to_string()).collect();
        csv += &(cells.join(",") + "\n");
    }
    let data = repo.path().join("train.csv");
    std::fs::write(&data, csv).unwrap();
    let (code, _, stderr) = cairn(&[
        "baseline",
        "--data",
        data.to_str().unwrap(),
        "--model-dir",
        repo.path().join("iris/1").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
}

/// The version's drift reports, waiting until `n` windows have closed: compared, or skipped
/// because the comparer was still busy (on a loaded machine it may be; a skipped window is
/// counted and its rows stay in the log).
async fn drift_reports(s: &TestServer, version: u64, n: usize) -> Vec<Value> {
    for _ in 0..1200 {
        let r = s
            .get(&format!(
                "/v2/models/iris/versions/{version}/drift?limit=1000"
            ))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.error());
        let reports = r.json()["versions"][version.to_string()]["reports"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let skipped = s
            .metric(&format!(
                "cairn_drift_windows_skipped_total{{model=\"iris\",version=\"{version}\"}}"
            ))
            .await as usize;
        if reports.len() + skipped >= n {
            return reports;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} drift windows never closed");
}

/// Unshifted windows after the shifted one; with 4 features at a family-wise alpha of 0.01, at
/// most 2 of 50 may flag (a true rate of 1% gives 3 or more with probability 1.4%; the data are
/// drawn from a fixed seed, so the outcome is the same on every run).
const CONTROL_WINDOWS: usize = 50;
const ALLOWED_FALSE_WINDOWS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_raised_on_the_shifted_feature_only_and_the_offline_report_agrees() {
    let repo = iris("window_rows = 200");
    write_iris_baseline(&repo);
    let mut s = TestServer::start_with(repo, fast).await;
    let mut rng = Normal::new(7);
    for window in 0..=CONTROL_WINDOWS {
        let shift = if window == 0 { 0.5 } else { 0.0 };
        for _ in 0..4 {
            let rows = iris_draws(&mut rng, 50, shift);
            let r = s
                .post_json("/v2/models/iris/versions/1/infer", &body(None, &rows))
                .await;
            assert_eq!(r.status, StatusCode::OK);
        }
        // One window at a time: the comparer never has a backlog, so none is skipped however
        // slow the machine is.
        drift_reports(&s, 1, window + 1).await;
    }
    let reports = drift_reports(&s, 1, CONTROL_WINDOWS + 1).await;
    let r = s.get("/v2/models/iris/versions/1/drift").await.json();
    assert_eq!(r["versions"]["1"]["baseline"], "baseline.json");
    assert_eq!(
        r["versions"]["1"]["reports"].as_array().unwrap().len(),
        1,
        "latest only"
    );

    let shifted = &reports[0];
    assert_eq!(shifted["rows"], 200);
    let petal = &shifted["features"]["petal_length"];
    assert_eq!(petal["drifted"], true, "{petal}");
    let violations = petal["violations"].as_array().unwrap();
    assert!(violations.contains(&json!("ks")), "{violations:?}");
    for control in ["sepal_length", "sepal_width", "petal_width"] {
        assert_eq!(
            shifted["features"][control]["drifted"], false,
            "{control}: {}",
            shifted["features"][control]
        );
    }
    let false_windows = reports[1..]
        .iter()
        .filter(|r| !r["drifted"].as_array().unwrap().is_empty())
        .count();
    assert!(
        false_windows <= ALLOWED_FALSE_WINDOWS,
        "{false_windows} of {CONTROL_WINDOWS} unshifted windows flagged"
    );
    // Prometheus carries the windows and the last statistics.
    let windows = s
        .metric("cairn_drift_windows_total{model=\"iris\",version=\"1\"}")
        .await;
    assert_eq!(
        windows,
        reports.len() as f64,
        "every compared window counted"
    );
    assert_eq!(reports.len(), CONTROL_WINDOWS + 1, "every window compared");
    assert!(
        s.metric(
            "cairn_drift_violations_total{feature=\"petal_length\",model=\"iris\",version=\"1\"}"
        )
        .await
            >= 1.0
    );
    s.stop().await;

    // The same rows from the log on disk give the same statistics.
    let from = shifted["from"].as_str().unwrap();
    let to = humantime::parse_rfc3339(shifted["to"].as_str().unwrap()).unwrap()
        + Duration::from_micros(1);
    let to = humantime::format_rfc3339_micros(to).to_string();
    let baseline = s.repo.path().join("iris/1/baseline.json");
    let log = s.repo.path().join(".cairn/predictions/iris");
    let (code, stdout, stderr) = cairn(&[
        "drift",
        "--baseline",
        baseline.to_str().unwrap(),
        "--window",
        log.to_str().unwrap(),
        "--version",
        "1",
        "--from",
        from,
        "--to",
        &to,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let offline: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(offline["rows"], 200);
    for f in IRIS_FEATURES {
        for path in ["/psi", "/js", "/ks/statistic", "/ks/pvalue", "/wasserstein"] {
            let live = shifted["features"][f]
                .pointer(path)
                .unwrap()
                .as_f64()
                .unwrap();
            let file = offline["features"][f]
                .pointer(path)
                .unwrap()
                .as_f64()
                .unwrap();
            assert!(
                (live - file).abs() <= 1e-12 * live.abs().max(1e-300),
                "{f}{path}: live {live}, offline {file}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_joins_matched_unknown_duplicate_and_late() {
    let mut s = TestServer::start_with(
        iris("quality_window_rows = 1000000\nprediction = \"label\""),
        fast,
    )
    .await;
    let mut predicted = Vec::new();
    for i in 0..20 {
        let id = format!("q{i}");
        let r = s
            .post_json(
                "/v2/models/iris/versions/1/infer",
                &body(Some(&id), &rows(2, i)),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let out = r.json();
        let labels = out["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "label")
            .unwrap()["data"]
            .clone();
        for (row, label) in labels.as_array().unwrap().iter().enumerate() {
            predicted.push((id.clone(), row, label.as_i64().unwrap()));
        }
    }
    // Truth: right for even ids, class (p + 1) % 3 for odd ones.
    let truth = |i: usize, p: i64| if i % 2 == 0 { p } else { (p + 1) % 3 };
    let feedback: Vec<Value> = predicted
        .iter()
        .enumerate()
        .map(|(k, (id, row, p))| json!({"id": id, "row": row, "label": truth(k / 2, *p)}))
        .collect();
    let r = s
        .post_json(
            "/v2/models/iris/feedback",
            &json!({ "feedback": feedback[..30] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    let a = r.json();
    assert_eq!(a["matched"], 30, "{a}");
    assert_eq!(a["unknown_count"], 0, "{a}");
    // The rest later, one row twice, and ids the server never answered.
    let mut more: Vec<Value> = feedback[30..].to_vec();
    more.push(feedback[3].clone());
    more.push(json!({"id": "never-sent", "label": 1}));
    more.push(json!({"id": "q1", "row": 7, "label": 1}));
    let r = s.post_json("/v2/models/iris/feedback", &json!(more)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    let a = r.json();
    assert_eq!(a["matched"], 10, "{a}");
    assert_eq!(a["duplicates"], 1, "{a}");
    assert_eq!(a["unknown_count"], 2, "{a}");
    let unknown: Vec<String> = a["unknown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(unknown.contains(&"never-sent".to_string()), "{a}");
    assert!(unknown.iter().any(|u| u.starts_with("q1")), "{a}");
    // Bad feedback changes nothing.
    let r = s
        .post_json("/v2/models/iris/feedback", &json!([{"id": "q2"}]))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.metric("cairn_feedback_total{model=\"iris\",outcome=\"unknown\"}")
            .await,
        2.0
    );
    // Quality: half the requests right.
    let q = s.get("/v2/models/iris/quality").await.json();
    let current = &q["versions"]["1"]["current"];
    assert_eq!(current["rows"], 40, "{q}");
    let accuracy = current["classification"]["accuracy"].as_f64().unwrap();
    assert!((accuracy - 0.5).abs() < 1e-12, "{q}");
    assert_eq!(
        s.metric("cairn_quality{metric=\"accuracy\",model=\"iris\",version=\"1\"}")
            .await,
        0.5
    );
    s.stop().await;
    // Stored durably beside the log, for the offline join.
    let dir = s.repo.path().join(".cairn/predictions/iris/feedback");
    let (batches, _) = cairn_monitor::log::read_dir(&dir).unwrap();
    let stored: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(
        stored,
        30 + 10 + 3,
        "every row accepted is stored, matched or not"
    );
}

/// A server process killed with SIGKILL while under load, again and again: every request
/// answered more than the fsync interval before the kill is in the log exactly once, and every
/// file reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_before_the_synced_watermark() {
    const KILLS: usize = 20;
    const FSYNC_MS: u64 = 100;
    let repo = iris("");
    let config = crate::common::root().join("configs/server.toml");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut must_have: Vec<(String, usize)> = Vec::new();
    let mut synced_rounds = 0;
    for kill in 0..KILLS {
        let server = spawn(
            &[
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--model-repository",
                repo.path().to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--prediction-log-fsync-ms",
                &FSYNC_MS.to_string(),
                "--prediction-log-when-full",
                "block",
                "--prediction-log-block-ms",
                "60000",
            ],
            &[],
        );
        wait_ready(&server.base).await;
        let acked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for task in 0..4 {
            let (client, base, acked) = (client.clone(), server.base.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let id = format!("k{kill}-{task}-{n}");
                    let count = 1 + (n % 4);
                    let payload = serde_json::to_vec(&body(Some(&id), &rows(count, n))).unwrap();
                    let req = http::Request::post(format!("{base}/v2/models/iris/infer"))
                        .body(http_body_util::Full::new(bytes::Bytes::from(payload)))
                        .unwrap();
                    match client.request(req).await {
                        Ok(r) if r.status() == StatusCode::OK => {
                            acked.lock().push((id, count, std::time::SystemTime::now()))
                        }
                        _ => break,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + 37 * kill as u64)).await;
        // What the server says a crash can no longer lose, read just before the kill: every
        // request acknowledged before it was handed to the writer before it, so is on disk.
        let synced = synced_watermark(&client, &server.base).await;
        let mut server = server;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        for t in tasks {
            let _ = t.await;
        }
        let acked = acked.lock();
        assert!(acked.len() > 10, "load ran before kill {kill}");
        let before = must_have.len();
        must_have.extend(
            acked
                .iter()
                .filter(|(_, _, at)| *at < synced)
                .map(|(id, rows, _)| (id.clone(), *rows)),
        );
        synced_rounds += usize::from(must_have.len() > before);
    }
    // The watermark moves while the server is under load (with fsync every 100 ms, it trails
    // by about that much), so most rounds have acknowledged requests it covers.
    assert!(
        synced_rounds >= KILLS / 2,
        "the synced watermark covered acknowledged requests in only {synced_rounds} of {KILLS} rounds"
    );
    // A last clean start recovers the torn segments and a clean stop seals them.
    let mut s = TestServer::start_with(Repo { dir: repo.dir }, fast).await;
    s.stop().await;
    let log = read_log(&s, "iris");
    let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for r in &log {
        *seen
            .entry((
                r["request_id"].as_str().unwrap().to_string(),
                r["row"].as_u64().unwrap(),
            ))
            .or_default() += 1;
        assert_eq!(r["status"], "ok");
        assert!(r["sepal_length"].as_f64().unwrap().is_finite(), "{r:?}");
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated records: {duplicated:?}");
    let lost: Vec<_> = must_have
        .iter()
        .filter(|(id, rows)| (0..*rows as u64).any(|row| !seen.contains_key(&(id.clone(), row))))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} requests acknowledged before the synced watermark lost, e.g. {:?}",
        lost.len(),
        must_have.len(),
        &lost[..lost.len().min(5)]
    );
}

/// `cairn_prediction_log_synced_timestamp_seconds{model="iris"}` as a time.
async fn synced_watermark(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    base: &str,
) -> std::time::SystemTime {
    let req = http::Request::get(format!("{base}/metrics"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = client.request(req).await.expect("metrics answer");
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let series = "cairn_prediction_log_synced_timestamp_seconds{model=\"iris\"}";
    let secs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not exported"));
    std::time::UNIX_EPOCH + Duration::from_secs_f64(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_names_come_from_the_baseline_when_the_config_names_none() {
    let repo = Repo::with(&["iris"]);
    repo.write(
        "iris/config.toml",
        b"max_batch_size = 64\nversion_policy = { specific = { versions = [1] } }\n\
          [monitoring]\nenabled = true\nwindow_rows = 50\n",
    );
    write_iris_baseline(&repo);
    let mut s = TestServer::start_with(repo, fast).await;
    let mut rng = Normal::new(3);
    let r = s
        .post_json(
            "/v2/models/iris/versions/1/infer",
            &body(None, &iris_draws(&mut rng, 50, 0.0)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let reports = drift_reports(&s, 1, 1).await;
    let names: Vec<&String> = reports[0]["features"].as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for f in IRIS_FEATURES {
        assert!(
            reports[0]["features"][f].is_object(),
            "{f} compared: {names:?}"
        );
    }
    s.stop().await;
    let log = read_log(&s, "iris");
    assert_eq!(log.len(), 50);
    assert!(log[0].contains_key("petal_length") && !log[0].contains_key("input[2]"));
}

/// Records of versions that log the same columns share one batch: traffic alternating between
/// them is written and synced at the log's cadence, not once per change of version (which made
/// a canary or a shadow sync hundreds of times a second and the log fall behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_versions_are_synced_at_the_logs_cadence() {
    let mut s = TestServer::start_with(iris(""), |c| {
        c.monitor.fsync = Duration::from_millis(500);
    })
    .await;
    let requests = 200;
    for i in 0..requests {
        let version = 1 + i % 2;
        let r = s
            .post_json(
                &format!("/v2/models/iris/versions/{version}/infer"),
                &body(Some(&format!("mix-{i}")), &rows(1, i)),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Two cadences: everything sent is written by then.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let appends = s
        .metric("cairn_prediction_log_appends_total{model=\"iris\"}")
        .await;
    s.stop().await;
    assert!(appends >= 1.0, "the log was written");
    let logged = read_log(&s, "iris");
    assert_eq!(logged.len(), requests, "every record is in the log");
    assert!(
        appends < (requests / 4) as f64,
        "{appends} appends for {requests} records alternating between two versions"
    );
}

/// A shadow trial with feedback: each labelled row the stable version answered and the shadow
/// scored too is one pair, counted on the side that alone was right, and the trial's status
/// judges accuracy on the pairs (McNemar's counts and the interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_trial_judges_accuracy_on_pairs_of_answers() {
    let repo = iris("prediction = \"label\"");
    repo.write(
        "iris/config.toml",
        b"max_batch_size = 64\nversion_policy = { all = {} }\n\
          [rollout]\nmin_requests = 20\nauto_promote = false\nauto_rollback = false\n\
          min_agreement = 0.0\nmax_p99_ratio = 1000.0\n\
          max_accuracy_drop = 0.05\nmin_labelled = 10\naccuracy_test = \"sequential\"\n\
          [monitoring]\nenabled = true\nprediction = \"label\"\n\
          features = [\"sepal_length\", \"sepal_width\", \"petal_length\", \"petal_width\"]\n",
    );
    let s = TestServer::start_with(repo, fast).await;
    let r = s
        .post_json("/v2/models/iris/deployment/stable", &json!({"version": 1}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    let r = s
        .post_json("/v2/models/iris/deployment/shadow", &json!({"version": 2}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    // Requests through the deployment: version 1 answers, version 2 scores a copy.
    let mut answered = Vec::new();
    for i in 0..40 {
        let id = format!("p{i}");
        let r = s
            .post_json("/v2/models/iris/infer", &body(Some(&id), &rows(1, i * 7)))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let out = r.json();
        assert_eq!(out["model_version"], "1");
        let label = out["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "label")
            .unwrap()["data"][0]
            .as_i64()
            .unwrap();
        answered.push((id, label));
    }
    // Every copy compared (its record is on its way to the log), then a moment for the writer.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = s.get("/v2/models/iris/deployment").await.json();
        if d["candidate"]["trial"]["shadow"]["compared"] == 40 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "copies not compared: {d}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The truth is what the stable version said for even ids, another class for odd ones.
    let feedback: Vec<Value> = answered
        .iter()
        .enumerate()
        .map(|(i, (id, p))| json!({"id": id, "label": if i % 2 == 0 { *p } else { (p + 1) % 3 }}))
        .collect();
    let r = s
        .post_json("/v2/models/iris/feedback", &json!(feedback))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    assert_eq!(r.json()["matched"], 40);
    let d = s.get("/v2/models/iris/deployment").await.json();
    let trial = &d["candidate"]["trial"];
    let shadow = &trial["shadow"];
    assert_eq!(shadow["labelled_pairs"], 40, "{trial}");
    // Where the stable answer is the truth, the shadow can only tie or lose, and the other way
    // round: the discordant pairs are the rows the two versions disagree on.
    let (b, c) = (
        shadow["stable_only_correct"].as_u64().unwrap(),
        shadow["candidate_only_correct"].as_u64().unwrap(),
    );
    assert!(b + c <= 40, "{trial}");
    assert_eq!(trial["stable"]["labelled"], 40, "{trial}");
    let status = trial["status"].as_str().unwrap();
    assert!(
        status.contains("McNemar") && status.contains("anytime interval"),
        "{status}"
    );
}
