//! The HTML pages over real HTTP: the status page at `/` and a monitored model's live drift
//! report, before and after a window closes, with the headers that keep them self-contained.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{Reply, Repo, TestServer};
use cairn::config::ServerConfig;

const FEATURES: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];

/// iris (v1 and v2) with monitoring on: a baseline from the first 100 rows, windows of 100 rows,
/// quality windows of 20 feedback rows.
fn monitored_iris() -> Repo {
    let repo = Repo::with(&["iris"]);
    repo.write(
        "iris/config.toml",
        b"max_batch_size = 64\nversion_policy = { all = {} }\n\
          [rollout]\nmin_requests = 1000000\nauto_promote = false\nauto_rollback = false\n\
          [monitoring]\nenabled = true\n\
          features = [\"sepal_length\", \"sepal_width\", \"petal_length\", \"petal_width\"]\n\
          baseline_rows = 100\nwindow_rows = 100\nquality_window_rows = 20\nprediction = \"label\"\n",
    );
    // The baseline comes from the first rows here, not the shipped files.
    for v in ["1", "2"] {
        let _ = std::fs::remove_file(repo.path().join(format!("iris/{v}/baseline.json")));
    }
    repo
}

fn fast(c: &mut ServerConfig) {
    c.monitor.fsync = Duration::ZERO;
}

/// Rows near iris's; `shift` moves petal length (and a little sepal width) far off.
fn rows(n: usize, seed: usize, shift: f32) -> Vec<f32> {
    (0..n)
        .flat_map(|i| {
            let k = (i + seed) as f32;
            [
                5.0 + (k * 0.37).sin(),
                3.0 + (k * 0.11).cos() * 0.4 + shift * 0.3,
                3.5 + (k * 0.23).sin() * 2.0 + shift,
                1.2 + (k * 0.53).cos() * 0.8,
            ]
        })
        .collect()
}

/// Sends `requests` requests of 10 rows to version 2; returns `(id, row, predicted label)`.
async fn traffic(s: &TestServer, prefix: &str, requests: usize, shift: f32) -> Vec<(String, i64)> {
    let mut predicted = Vec::new();
    for i in 0..requests {
        let id = format!("{prefix}{i}");
        let body = json!({"id": id, "inputs": [{"name": "input", "shape": [10, 4],
                          "datatype": "FP32", "data": rows(10, i * 10, shift)}]});
        let r = s.post_json("/v2/models/iris/versions/2/infer", &body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.error());
        let out = r.json();
        let labels = out["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["name"] == "label"))
            .map(|o| o["data"].clone())
            .expect("iris answers a label");
        for label in labels.as_array().unwrap() {
            predicted.push((id.clone(), label.as_i64().unwrap()));
        }
    }
    predicted
}

async fn wait_for_report(s: &TestServer) -> Value {
    for _ in 0..600 {
        let r = s.get("/v2/models/iris/versions/2/drift").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.error());
        if let Some(report) = r.json()["versions"]["2"]["reports"]
            .as_array()
            .and_then(|a| a.last().cloned())
        {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no drift window closed");
}

/// The page of an HTML reply, checking what every page must be: HTML, with a policy that lets
/// the browser load and run nothing, and without script or reference to anywhere else.
fn page(r: &Reply) -> String {
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    let text = String::from_utf8(r.body.to_vec()).expect("UTF-8");
    assert!(text.starts_with("<!DOCTYPE html>"), "{}", &text[..60]);
    let lower = text.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "no script");
    let elsewhere = lower.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !elsewhere.contains("http://") && !elsewhere.contains("https://"),
        "nothing fetched from anywhere"
    );
    assert!(!lower.contains("<link") && !lower.contains("<img") && !lower.contains("url("));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_and_the_live_drift_report() {
    let s = TestServer::start_with(monitored_iris(), fast).await;

    // Before any window: a page that says so, not an error.
    let html = page(&s.get("/v2/models/iris/drift/report").await);
    assert!(html.contains("No drift window has closed yet"), "{html}");

    // The baseline from the first 100 rows, then a window of 100 shifted ones.
    let mut predicted = traffic(&s, "base-", 10, 0.0).await;
    predicted.extend(traffic(&s, "moved-", 10, 3.0).await);
    let report = wait_for_report(&s).await;
    assert_eq!(report["rows"], 100);
    assert_eq!(report["features"]["petal_length"]["drifted"], true);
    assert!(report["features"]["petal_length"]["histogram"]["edges"].is_array());

    // Feedback for 30 rows: one quality window closes, one fills.
    let mut next_row = std::collections::HashMap::<String, usize>::new();
    let feedback: Vec<Value> = predicted
        .iter()
        .take(30)
        .enumerate()
        .map(|(k, (id, label))| {
            let row = next_row.entry(id.clone()).or_default();
            let item = json!({"id": id, "row": *row, "label": if k % 4 == 0 { (label + 1) % 3 } else { *label }});
            *row += 1;
            item
        })
        .collect();
    // A quality window closes at its size (20): one closed, 10 rows filling.
    for part in [&feedback[..20], &feedback[20..]] {
        let r = s
            .post_json("/v2/models/iris/feedback", &json!({ "feedback": part }))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.error());
        assert_eq!(r.json()["matched"], part.len());
    }
    // The drift JSON carries the version's live quality beside its reports.
    let drift = s.get("/v2/models/iris/versions/2/drift").await.json();
    let quality = &drift["versions"]["2"]["quality"];
    assert_eq!(
        quality["windows"].as_array().map(Vec::len),
        Some(1),
        "{drift}"
    );
    assert_eq!(quality["current"]["rows"], 10, "{drift}");

    let html = page(&s.get("/v2/models/iris/drift/report").await);
    for f in FEATURES {
        assert!(html.contains(f), "{f} on the page");
    }
    assert!(html.contains("Drift report: iris, version 2"));
    assert!(html.contains("DRIFTED") && html.contains("✗ VIOLATED"));
    assert!(html.contains("Rows in window</dt><dd>100"));
    assert!(html.contains("<svg"), "charts are inline SVG");
    assert!(html.contains("Live quality") && html.contains("accuracy"));
    assert!(html.contains("still filling"), "the filling quality window");
    assert!(
        html.contains("the first 100 logged rows"),
        "the baseline's source"
    );
    // The version named; a version that has none yet; one that does not exist.
    let named = page(&s.get("/v2/models/iris/versions/2/drift/report").await);
    assert!(named.contains("petal_length"));
    let v1 = page(&s.get("/v2/models/iris/versions/1/drift/report").await);
    assert!(v1.contains("No drift window has closed yet"));
    let r = s.get("/v2/models/iris/versions/9/drift/report").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains('9'), "{}", r.error());
    let r = s.get("/v2/models/nope/drift/report").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!r.error().is_empty());
    let r = s
        .request(
            Method::POST,
            "/v2/models/iris/drift/report",
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // The status page: the model, its versions and state, the deployment, the report's link.
    let html = page(&s.get("/").await);
    assert!(html.contains(">iris</a>"), "{html}");
    assert!(html.contains("version 1 <span class=\"badge good\">READY</span>"));
    assert!(html.contains("version 2 <span class=\"badge good\">READY</span>"));
    assert!(html.contains("stable: version 2"), "no admin token: shown");
    assert!(html.contains("no candidate"));
    assert!(html.contains("href=\"/v2/models/iris/drift/report\""));
    assert!(html.contains("· ready"), "the server's state");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_on_the_status_page_need_the_admin_token() {
    let repo = Repo::with(&["iris"]);
    repo.write("iris/config.toml", b"max_batch_size = 64\n");
    let s = TestServer::start_with(repo, |c| {
        c.admin_token = Some("s3cret".into());
    })
    .await;
    let html = page(&s.get("/").await);
    assert!(html.contains(">iris</a>") && html.contains("READY"));
    assert!(html.contains("needs the admin token"));
    assert!(!html.contains("stable: version"));
    assert!(
        html.contains("<span class=\"muted\">off</span>"),
        "not monitored"
    );
    let r = s
        .request(
            Method::GET,
            "/",
            &[("authorization", "Bearer s3cret")],
            bytes::Bytes::new(),
        )
        .await;
    let html = page(&r);
    assert!(html.contains("stable: version 2 (highest ready)"), "{html}");
    // A wrong token is no error on a public page: it shows what is public.
    let r = s
        .request(
            Method::GET,
            "/",
            &[("authorization", "Bearer wrong")],
            bytes::Bytes::new(),
        )
        .await;
    assert!(page(&r).contains("needs the admin token"));
    // Not monitored: the report is the JSON endpoints' 404.
    let r = s.get("/v2/models/iris/drift/report").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("not monitored"), "{}", r.error());
    s.shutdown().await;
}
