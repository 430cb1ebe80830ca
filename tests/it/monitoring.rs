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

use crate::common::{Repo, TestServer};
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
    let s = TestServer::start_with(Repo::with(&["iris"]), fast).await;
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
