//! Versions, hot reload and rollouts against the real server: new and removed versions, bad
//! versions rejected while serving goes on, canary shares and sticky routing, shadows that never
//! change an answer, automatic promotion and rollback, the control API and its token, state that
//! survives a restart, and hundreds of transitions under load without a failed request.

use crate::common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use common::{Repo, TestServer};

const IRIS_CONFIG: &str = r#"
max_batch_size = 64
version_policy = { all = {} }

[[input]]
name = "input"
datatype = "FP32"
dims = [4]

[dynamic_batching]
max_queue_delay_us = 0

[rollout]
min_requests = 20
# Debug builds on a shared machine make latency ratios noisy; latency is not under test here.
max_p99_ratio = 1000.0
"#;

/// iris with versions 1 (logistic regression) and 2 (MLP) and the test config.
fn iris_repo() -> Repo {
    let repo = Repo::with(&["iris"]);
    repo.write("iris/config.toml", IRIS_CONFIG.as_bytes());
    repo
}

fn rollout_model(name: &str) -> Vec<u8> {
    std::fs::read(common::root().join("tests/models/rollout").join(name)).unwrap()
}

fn iris_rows(seed: usize) -> Value {
    let rows = [
        [5.1, 3.5, 1.4, 0.2],
        [6.7, 3.0, 5.2, 2.3],
        [5.9, 3.0, 4.2, 1.5],
        [6.3, 2.9, 5.6, 1.8],
    ];
    let row = rows[seed % rows.len()];
    json!({"id": format!("r{seed}"), "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": row}]})
}

/// Infers without a version; returns the status and the answering version.
async fn infer(
    s: &TestServer,
    seed: usize,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<String>) {
    let body = serde_json::to_vec(&iris_rows(seed)).unwrap();
    let r = s
        .request(Method::POST, "/v2/models/iris/infer", headers, body)
        .await;
    let version = (r.status == StatusCode::OK)
        .then(|| r.json()["model_version"].as_str().unwrap().to_string());
    (r.status, version)
}

async fn control(s: &TestServer, action: &str, body: Value) -> (StatusCode, Value) {
    let r = s
        .request(
            Method::POST,
            &format!("/v2/models/iris/deployment/{action}"),
            &[],
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

async fn deployment(s: &TestServer) -> Value {
    s.get("/v2/models/iris/deployment").await.json()
}

async fn rescan(s: &TestServer) -> Value {
    let r = s.post("/v2/repository/rescan", Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

/// Waits (bounded) until `check` holds on the deployment.
async fn wait_deployment(s: &TestServer, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..500 {
        let d = deployment(s).await;
        if check(&d) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("deployment never reached: {what}: {}", deployment(s).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_picks_up_a_new_version() {
    let repo = iris_repo();
    std::fs::remove_dir_all(repo.path().join("iris/2")).unwrap();
    let s = TestServer::start_with(repo, |c| {
        c.repository_poll_interval = Some(Duration::from_millis(300))
    })
    .await;
    assert_eq!(infer(&s, 0, &[]).await.1.as_deref(), Some("1"));
    // A new version directory: a later poll loads it, warms it up and publishes it (a poll that
    // sees it half-copied fails to load it, and the next one, seeing it changed, tries again).
    common::copy_dir(
        &common::root().join("models/iris/2"),
        &s.repo.path().join("iris/2"),
    );
    let mut served = None;
    for _ in 0..400 {
        served = infer(&s, 0, &[]).await.1;
        if served.as_deref() == Some("2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(served.as_deref(), Some("2"), "the poll picked up version 2");
    let d = deployment(&s).await;
    assert_eq!(d["versions"], json!([1, 2]));
    assert_eq!(
        d["history"].as_array().unwrap().last().unwrap()["action"],
        "replace"
    );
    s.shutdown().await;
}

/// The poller acts on a changed model only once two consecutive polls see it the same: a
/// version whose file is still being written is never loaded (nor failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_never_loads_a_version_still_being_copied() {
    use std::io::Write;
    let s = TestServer::start_with(iris_repo(), |c| {
        c.repository_poll_interval = Some(Duration::from_millis(200))
    })
    .await;
    let model = std::fs::read(common::root().join("models/iris/2/model.onnx")).unwrap();
    std::fs::create_dir_all(s.repo.path().join("iris/3")).unwrap();
    let mut file = std::fs::File::create(s.repo.path().join("iris/3/model.onnx")).unwrap();
    let failures = "cairn_model_load_failures_total{model=\"iris\",version=\"3\"}";
    // A slow copy: a piece every 100 ms, so every poll sees the file changed.
    let pieces: Vec<&[u8]> = model.chunks(model.len() / 12 + 1).collect();
    for piece in &pieces {
        file.write_all(piece).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            s.metric(failures).await,
            0.0,
            "a half-copied version was loaded"
        );
        let d = deployment(&s).await;
        assert_eq!(
            d["versions"],
            json!([1, 2]),
            "a half-copied version was loaded"
        );
    }
    drop(file);
    wait_deployment(&s, "version 3 loaded once complete", |d| {
        d["versions"] == json!([1, 2, 3])
    })
    .await;
    assert_eq!(s.metric(failures).await, 0.0);
    s.shutdown().await;
}

/// The repository's publish: staged out of the scanner's sight, checked by loading, renamed into
/// place; a version that does not load leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_stages_checks_and_renames_into_place() {
    let s = TestServer::start(iris_repo()).await;
    let repo = std::sync::Arc::clone(&s.server.as_ref().unwrap().state.repository);
    let model = std::fs::read(common::root().join("models/iris/2/model.onnx")).unwrap();
    let sample = std::fs::read(common::root().join("models/iris/1/sample.json")).unwrap();
    let v = repo
        .publish(
            "iris",
            None,
            vec![("model.onnx".into(), model.clone())],
            None,
        )
        .await
        .unwrap();
    assert_eq!(v, 3);
    assert_eq!(deployment(&s).await["versions"], json!([1, 2, 3]));
    assert!(s.repo.path().join("iris/3/model.onnx").is_file());
    let staging = s.repo.path().join(".staging");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    // A file that is not a model fails the check; the repository is as it was.
    let err = repo
        .publish(
            "iris",
            None,
            vec![("model.onnx".into(), vec![7u8; 64])],
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("failed to load 'iris'"), "{err}");
    assert!(!s.repo.path().join("iris/4").exists());
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    // An existing version is not overwritten.
    let err = repo
        .publish(
            "iris",
            Some(3),
            vec![("model.onnx".into(), model.clone())],
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already has version 3"), "{err}");
    // A new model gets its config.toml, and serves.
    let config: cairn::config::ModelConfig =
        toml::from_str("max_batch_size = 8\n[warmup]\nrequests = [\"sample.json\"]\n").unwrap();
    let v = repo
        .publish(
            "fresh",
            None,
            vec![("model.onnx".into(), model), ("sample.json".into(), sample)],
            Some(config.clone()),
        )
        .await
        .unwrap();
    assert_eq!(v, 1);
    let written: cairn::config::ModelConfig =
        toml::from_str(&std::fs::read_to_string(s.repo.path().join("fresh/config.toml")).unwrap())
            .unwrap();
    assert_eq!(written, config);
    let r = s.post_json("/v2/models/fresh/infer", &iris_rows(0)).await;
    assert_eq!(r.status, StatusCode::OK);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescan_loads_reloads_and_unloads_what_changed() {
    let s = TestServer::start(iris_repo()).await;
    assert_eq!(infer(&s, 0, &[]).await.1.as_deref(), Some("2"));
    // Nothing changed: nothing reloaded.
    assert_eq!(rescan(&s).await["changed"], json!([]));
    // A removed version stops taking requests.
    std::fs::remove_dir_all(s.repo.path().join("iris/2")).unwrap();
    assert_eq!(rescan(&s).await["changed"], json!(["iris"]));
    assert_eq!(infer(&s, 0, &[]).await.1.as_deref(), Some("1"));
    assert_eq!(
        s.get("/v2/models/iris/versions/2/ready").await.status,
        StatusCode::NOT_FOUND
    );
    // A model directory that appears is loaded; one that disappears is unloaded.
    s.repo.add_as("tabular-small", "fresh");
    assert_eq!(rescan(&s).await["changed"], json!(["fresh"]));
    assert_eq!(s.get("/v2/models/fresh/ready").await.status, StatusCode::OK);
    std::fs::remove_dir_all(s.repo.path().join("fresh")).unwrap();
    assert_eq!(rescan(&s).await["changed"], json!(["fresh"]));
    let r = s.get("/v2/models/fresh/ready").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("removed from the repository"));
    // An explicitly unloaded model stays unloaded until its directory changes.
    assert_eq!(
        s.post("/v2/repository/models/iris/unload", Bytes::new())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(rescan(&s).await["changed"], json!([]));
    assert_eq!(
        s.get("/v2/models/iris/ready").await.status,
        StatusCode::BAD_REQUEST
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_mismatched_versions_are_rejected_while_serving_goes_on() {
    let s = TestServer::start(iris_repo()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let (stop, failures) = (Arc::clone(&stop), Arc::clone(&failures));
        let client = s.client.clone();
        let base = s.base.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::post(format!("{base}/v2/models/iris/infer"))
                    .body(http_body_util::Full::new(Bytes::from(
                        serde_json::to_vec(&iris_rows(n)).unwrap(),
                    )))
                    .unwrap();
                let status = client.request(req).await.unwrap().status();
                if status != StatusCode::OK {
                    failures.lock().unwrap().push(status);
                }
                n += 1;
            }
            n
        })
    };

    // Version 3: not ONNX at all.
    s.repo.write("iris/3/model.onnx", b"definitely not a model");
    let r = s
        .post("/v2/repository/models/iris/load", Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("version 3"));
    // Version 4: a real model whose inputs disagree with config.toml (32 features, not 4).
    s.repo.write(
        "iris/4/model.onnx",
        &std::fs::read(common::root().join("models/tabular-small/1/model.onnx")).unwrap(),
    );
    let r = s
        .post("/v2/repository/models/iris/load", Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let message = r.error();
    assert!(
        message.contains("version 4") && message.contains("disagree"),
        "{message}"
    );

    let index = s.post("/v2/repository/index", Bytes::new()).await.json();
    let state = |v: &str| {
        index
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "iris" && r["version"] == v)
            .unwrap()
            .clone()
    };
    assert_eq!(state("2")["state"], "READY");
    assert_eq!(state("3")["state"], "UNAVAILABLE");
    assert_eq!(state("4")["state"], "UNAVAILABLE");
    assert_eq!(
        s.get("/v2/models/iris/versions/3/ready").await.status,
        StatusCode::BAD_REQUEST
    );
    let metrics = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(metrics.contains("cairn_model_ready{model=\"iris\",version=\"3\"} 0"));
    assert!(metrics.contains("cairn_model_ready{model=\"iris\",version=\"4\"} 0"));
    assert!(metrics.contains("cairn_model_load_failures_total{model=\"iris\",version=\"4\"} 1"));

    // The highest good version kept serving throughout.
    stop.store(true, Ordering::Relaxed);
    let served = load.await.unwrap();
    assert!(served > 0);
    assert!(
        failures.lock().unwrap().is_empty(),
        "failed requests: {:?}",
        failures.lock().unwrap()
    );
    assert_eq!(infer(&s, 1, &[]).await.1.as_deref(), Some("2"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_shares_hold_and_sticky_callers_stay_put() {
    let s = TestServer::start(iris_repo()).await;
    let manual = json!({"auto_promote": false, "auto_rollback": false});
    let (status, d) = control(&s, "stable", json!({"version": 1})).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    let (status, d) = control(
        &s,
        "canary",
        json!({"version": 2, "weight": 0.3, "criteria": manual}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["candidate"]["mode"], "canary");
    assert_eq!(d["candidate"]["weight"], 0.3);

    let n = 1000;
    let mut on_candidate = 0;
    for i in 0..n {
        let (status, version) = infer(&s, i, &[]).await;
        assert_eq!(status, StatusCode::OK);
        if version.as_deref() == Some("2") {
            on_candidate += 1;
        }
    }
    let share = on_candidate as f64 / n as f64;
    // Binomial standard deviation at n = 1000 is 0.0145; the split is tighter than random.
    assert!((share - 0.3).abs() < 0.05, "canary share {share}");
    // Naming a version bypasses the deployment.
    let r = s
        .post_json("/v2/models/iris/versions/1/infer", &iris_rows(0))
        .await;
    assert_eq!(r.json()["model_version"], "1");

    // Sticky: each caller always lands on the same side; callers split near the weight.
    let (status, _) = control(
        &s,
        "canary",
        json!({"version": 2, "weight": 0.5, "sticky_header": "x-user", "criteria": manual}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut users_on_candidate = 0;
    for user in 0..60 {
        let id = format!("user-{user}");
        let mut seen = BTreeSet::new();
        for i in 0..5 {
            let (status, version) = infer(&s, i, &[("x-user", &id)]).await;
            assert_eq!(status, StatusCode::OK);
            seen.insert(version.unwrap());
        }
        assert_eq!(seen.len(), 1, "{id} saw {seen:?}");
        if seen.contains("2") {
            users_on_candidate += 1;
        }
    }
    assert!(
        (15..=45).contains(&users_on_candidate),
        "{users_on_candidate} of 60 callers on the candidate"
    );

    // Weight changes move callers one way only: from stable to candidate as it grows.
    let before: Vec<String> = futures_side(&s, 0..40).await;
    let (status, _) = control(&s, "weight", json!({"weight": 0.8})).await;
    assert_eq!(status, StatusCode::OK);
    let after: Vec<String> = futures_side(&s, 0..40).await;
    for (b, a) in before.iter().zip(&after) {
        assert!(
            !(b == "2" && a == "1"),
            "a caller moved back to stable when the weight grew"
        );
    }
    s.shutdown().await;
}

async fn futures_side(s: &TestServer, users: std::ops::Range<usize>) -> Vec<String> {
    let mut out = Vec::new();
    for user in users {
        let id = format!("user-{user}");
        out.push(infer(s, 0, &[("x-user", &id)]).await.1.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_never_changes_the_answer_and_a_disagreeing_one_is_rolled_back() {
    let repo = iris_repo();
    repo.write("iris/2/model.onnx", &rollout_model("disagreeing.onnx"));
    let s = TestServer::start(repo).await;
    let (status, _) = control(&s, "stable", json!({"version": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, d) = control(
        &s,
        "shadow",
        json!({"version": 2, "criteria": {"min_requests": 40}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["candidate"]["mode"], "shadow");

    // Every answer is the stable version's, byte for byte.
    for i in 0..30 {
        let body = iris_rows(i);
        let via_shadow = s.post_json("/v2/models/iris/infer", &body).await;
        let direct = s.post_json("/v2/models/iris/versions/1/infer", &body).await;
        assert_eq!(via_shadow.status, StatusCode::OK);
        assert_eq!(via_shadow.body, direct.body, "request {i}");
    }
    let d = deployment(&s).await;
    let trial = &d["candidate"]["trial"]["shadow"];
    assert!(trial["sent"].as_u64().unwrap() >= 30, "{d}");
    // Requests keep flowing until the comparisons reach min_requests and the criteria decide.
    let mut i = 30;
    let d = loop {
        let d = deployment(&s).await;
        if d["candidate"].is_null() {
            break d;
        }
        assert_eq!(infer(&s, i, &[]).await.1.as_deref(), Some("1"));
        i += 1;
        assert!(i < 2000, "no decision: {d}");
    };
    let last = d["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "rollback", "{d}");
    assert_eq!(last["trigger"], "auto");
    assert!(
        last["reason"].as_str().unwrap().contains("agreement"),
        "{last}"
    );
    assert_eq!(d["stable"], 1);
    let metrics = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("cairn_rollout_transitions_total{action=\"rollback\",model=\"iris\",trigger=\"auto\"} 1"),
        "{metrics}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_rolls_back_and_a_good_one_is_promoted() {
    let repo = iris_repo();
    repo.write("iris/3/model.onnx", &rollout_model("failing.onnx"));
    let s = TestServer::start(repo).await;
    let (status, _) = control(&s, "stable", json!({"version": 1})).await;
    assert_eq!(status, StatusCode::OK);

    // The failing version loads and warms up (its warm-up input is in range) ...
    let (status, d) = control(&s, "canary", json!({"version": 3, "weight": 0.5})).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    // ... then fails on real rows, and is rolled back by itself.
    let mut failed = 0;
    for i in 0..400 {
        let (status, _) = infer(&s, i, &[]).await;
        if status != StatusCode::OK {
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            failed += 1;
        }
        if deployment(&s).await["candidate"].is_null() {
            break;
        }
    }
    let d = wait_deployment(&s, "rollback", |d| d["candidate"].is_null()).await;
    let last = d["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "rollback", "{d}");
    assert_eq!(last["trigger"], "auto");
    assert!(last["reason"].as_str().unwrap().contains("error"), "{last}");
    assert!(failed >= 1, "the failing canary was tried");
    for i in 0..50 {
        assert_eq!(
            infer(&s, i, &[]).await,
            (StatusCode::OK, Some("1".to_string()))
        );
    }

    // A good candidate meets the criteria after min_requests and is promoted.
    let (status, _) = control(&s, "canary", json!({"version": 2, "weight": 0.5})).await;
    assert_eq!(status, StatusCode::OK);
    for i in 0..200 {
        assert_eq!(infer(&s, i, &[]).await.0, StatusCode::OK);
        if deployment(&s).await["candidate"].is_null() {
            break;
        }
    }
    let d = wait_deployment(&s, "promotion", |d| d["candidate"].is_null()).await;
    let last = d["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "promote", "{d}");
    assert_eq!(last["trigger"], "auto");
    assert_eq!(d["stable"], 2);
    assert_eq!(infer(&s, 0, &[]).await.1.as_deref(), Some("2"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_can_enter_as_a_canary_by_itself() {
    let repo = iris_repo();
    std::fs::remove_dir_all(repo.path().join("iris/2")).unwrap();
    repo.write(
        "iris/config.toml",
        IRIS_CONFIG
            .replace("min_requests = 20", "min_requests = 20\non_new_version = \"canary\"\ncanary_weight = 0.25\nauto_promote = false")
            .as_bytes(),
    );
    let s = TestServer::start(repo).await;
    common::copy_dir(
        &common::root().join("models/iris/2"),
        &s.repo.path().join("iris/2"),
    );
    rescan(&s).await;
    let d = deployment(&s).await;
    assert_eq!(d["stable"], 1, "{d}");
    assert_eq!(d["candidate"]["version"], 2);
    assert_eq!(d["candidate"]["weight"], 0.25);
    assert_eq!(
        d["history"].as_array().unwrap().last().unwrap()["trigger"],
        "reload"
    );
    // The candidate's version leaves: the candidate is dropped, and that is a transition like
    // any other (history, log, counter).
    std::fs::remove_dir_all(s.repo.path().join("iris/2")).unwrap();
    rescan(&s).await;
    let d = deployment(&s).await;
    assert!(d["candidate"].is_null(), "{d}");
    let last = d["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "drop", "{d}");
    assert_eq!(last["trigger"], "reload");
    assert_eq!(last["version"], 2);
    let metrics = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cairn_rollout_transitions_total")
                && l.contains("action=\"drop\"")),
        "no drop counted"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_checks_its_input_and_its_token() {
    let s = TestServer::start_with(iris_repo(), |c| c.admin_token = Some("s3cret".into())).await;
    let auth = [("Authorization", "Bearer s3cret")];
    for path in ["/v2/models/iris/deployment", "/v2/deployments"] {
        let r = s.get(path).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        r.error();
        let r = s
            .request(
                Method::GET,
                path,
                &[("Authorization", "Bearer wrong")],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            s.request(Method::GET, path, &auth, Bytes::new())
                .await
                .status,
            StatusCode::OK
        );
    }
    for path in [
        "/v2/repository/index",
        "/v2/repository/models/iris/unload",
        "/v2/repository/rescan",
    ] {
        assert_eq!(
            s.post(path, Bytes::new()).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    // Inference, metadata, health and metrics stay open.
    assert_eq!(infer(&s, 0, &[]).await.0, StatusCode::OK);
    assert_eq!(s.get("/v2/models/iris").await.status, StatusCode::OK);
    assert_eq!(s.get("/metrics").await.status, StatusCode::OK);

    let act = |action: &'static str, body: Value| {
        let s = &s;
        async move {
            let r = s
                .request(
                    Method::POST,
                    &format!("/v2/models/iris/deployment/{action}"),
                    &[("Authorization", "Bearer s3cret")],
                    serde_json::to_vec(&body).unwrap(),
                )
                .await;
            (
                r.status,
                if r.status.is_success() {
                    String::new()
                } else {
                    r.error()
                },
            )
        }
    };
    let cases = [
        (
            "canary",
            json!({"version": 9}),
            StatusCode::CONFLICT,
            "no ready version 9",
        ),
        (
            "canary",
            json!({"version": 2, "weight": 1.5}),
            StatusCode::BAD_REQUEST,
            "weight 1.5",
        ),
        (
            "canary",
            json!({"version": "two"}),
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
        (
            "canary",
            json!({"version": 2, "criteria": {"max_error_rate": 7}}),
            StatusCode::BAD_REQUEST,
            "max_error_rate",
        ),
        (
            "shadow",
            json!({"version": 2, "weight": 0.5}),
            StatusCode::BAD_REQUEST,
            "no share of traffic",
        ),
        (
            "promote",
            json!({}),
            StatusCode::CONFLICT,
            "has no candidate",
        ),
        (
            "rollback",
            json!({}),
            StatusCode::CONFLICT,
            "has no candidate",
        ),
        (
            "weight",
            json!({"weight": 0.5}),
            StatusCode::CONFLICT,
            "has no candidate",
        ),
        (
            "stable",
            json!({"version": 7}),
            StatusCode::CONFLICT,
            "no ready version 7",
        ),
        ("explode", json!({}), StatusCode::NOT_FOUND, "no endpoint"),
        (
            "canary",
            json!({"version": 2, "surprise": true}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
    ];
    for (action, body, status, needle) in cases {
        let (got, message) = act(action, body.clone()).await;
        assert_eq!(got, status, "{action} {body}");
        assert!(message.contains(needle), "{action} {body}: {message}");
    }
    let r = s
        .request(
            Method::GET,
            "/v2/models/nope/deployment",
            &auth,
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The stable version's config defaults apply when the request gives none.
    let (status, _) = act("canary", json!({"version": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let d = s
        .request(
            Method::GET,
            "/v2/models/iris/deployment",
            &auth,
            Bytes::new(),
        )
        .await
        .json();
    assert_eq!(d["candidate"]["weight"], 0.1);
    assert_eq!(d["candidate"]["criteria"]["min_requests"], 20);
    s.shutdown().await;

    // protect_inference puts inference behind the token too.
    let s = TestServer::start_with(iris_repo(), |c| {
        c.admin_token = Some("s3cret".into());
        c.protect_inference = true;
    })
    .await;
    assert_eq!(infer(&s, 0, &[]).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(infer(&s, 0, &auth).await.0, StatusCode::OK);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_state_survives_a_restart() {
    let repo = iris_repo();
    let state_dir = tempfile::tempdir().unwrap();
    let dir = state_dir.path().to_path_buf();
    let s = TestServer::start_with(repo, |c| c.state_dir = dir.clone()).await;
    let (status, _) = control(&s, "stable", json!({"version": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = control(
        &s,
        "canary",
        json!({"version": 2, "weight": 0.2, "sticky_header": "x-user", "criteria": {"auto_promote": false}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.join("deployments.json")).unwrap()).unwrap();
    assert_eq!(saved["models"]["iris"]["candidate"]["weight"], 0.2);
    let repo = {
        let mut s = s;
        let server = s.server.take().unwrap();
        server.shutdown().await;
        // Keep the repository directory for the next server.
        std::mem::replace(&mut s.repo, Repo::with(&[]))
    };
    let s = TestServer::start_with(repo, |c| c.state_dir = dir.clone()).await;
    let d = deployment(&s).await;
    assert_eq!(d["stable"], 1, "{d}");
    assert!(d["stable_pinned"].as_bool().unwrap());
    assert_eq!(d["candidate"]["version"], 2);
    assert_eq!(d["candidate"]["weight"], 0.2);
    assert_eq!(d["candidate"]["sticky_header"], "x-user");
    assert_eq!(
        d["history"].as_array().unwrap().last().unwrap()["action"],
        "restore"
    );
    s.shutdown().await;
}

/// What one state of the deployment allows, and when it was in force.
struct Epoch {
    /// When the transition that created this state was requested.
    from: Instant,
    /// When the transition that replaced it had returned (`None`: still in force).
    until: Option<Instant>,
    allowed: BTreeSet<&'static str>,
}

/// Closes the current epoch now and opens the one a transition requested at `started` made.
fn begin_epoch(epochs: &Mutex<Vec<Epoch>>, started: Instant, allowed: BTreeSet<&'static str>) {
    let mut e = epochs.lock().unwrap();
    e.last_mut().unwrap().until = Some(Instant::now());
    e.push(Epoch {
        from: started,
        until: None,
        allowed,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_transitions_under_load_fail_no_request() {
    let s = Arc::new(TestServer::start(iris_repo()).await);
    let (status, _) = control(&s, "stable", json!({"version": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let manual = json!({"auto_promote": false, "auto_rollback": false});
    let epochs: Arc<Mutex<Vec<Epoch>>> = Arc::new(Mutex::new(vec![Epoch {
        from: Instant::now(),
        until: None,
        allowed: ["1"].into(),
    }]));
    let stop = Arc::new(AtomicBool::new(false));
    type Answer = (
        String,
        Instant,
        Instant,
        StatusCode,
        Option<String>,
        Option<String>,
    );
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (s, stop, answers) = (Arc::clone(&s), Arc::clone(&stop), Arc::clone(&answers));
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("c{c}-{n}");
                let mut body = iris_rows(n);
                body["id"] = json!(id);
                let sent = Instant::now();
                let r = s.post_json("/v2/models/iris/infer", &body).await;
                let got = Instant::now();
                let (version, echoed) = if r.status == StatusCode::OK {
                    let v = r.json();
                    (
                        v["model_version"].as_str().map(String::from),
                        v["id"].as_str().map(String::from),
                    )
                } else {
                    (None, None)
                };
                answers
                    .lock()
                    .unwrap()
                    .push((id, sent, got, r.status, version, echoed));
                n += 1;
            }
        }));
    }

    // The transitions: blue/green switches, canaries, weights, promotions, rollbacks, shadows
    // and reloads, in a fixed rotation; each records what it allows.
    let mut stable = "1";
    let mut transitions = 0;
    let mut step_counter = 0;
    while transitions < 240 {
        let other = if stable == "1" { "2" } else { "1" };
        let step = step_counter % 8;
        step_counter += 1;
        let started = Instant::now();
        let (status, allowed): (StatusCode, BTreeSet<&'static str>) = match step {
            0 => (control(&s, "canary", json!({"version": other.parse::<u64>().unwrap(), "weight": 0.5, "criteria": manual})).await.0, [stable, other].into()),
            1 => (control(&s, "weight", json!({"weight": 0.9})).await.0, [stable, other].into()),
            2 => {
                let st = control(&s, "promote", json!({})).await.0;
                stable = other;
                (st, [stable].into())
            }
            3 => (control(&s, "shadow", json!({"version": other.parse::<u64>().unwrap(), "criteria": manual})).await.0, [stable].into()),
            4 => (control(&s, "rollback", json!({})).await.0, [stable].into()),
            5 => {
                let st = control(&s, "stable", json!({"version": other.parse::<u64>().unwrap()})).await.0;
                stable = other;
                (st, [stable].into())
            }
            6 => (s.post("/v2/repository/models/iris/load", Bytes::new()).await.status, [stable].into()),
            _ => (control(&s, "canary", json!({"version": other.parse::<u64>().unwrap(), "weight": 0.0, "criteria": manual})).await.0, [stable].into()),
        };
        assert_eq!(
            status,
            StatusCode::OK,
            "transition {transitions} (step {step})"
        );
        begin_epoch(&epochs, started, allowed);
        transitions += 1;
        if step == 7 {
            // Clear the zero-weight canary so the next rotation starts clean.
            let started = Instant::now();
            let (st, _) = control(&s, "rollback", json!({})).await;
            assert_eq!(st, StatusCode::OK);
            begin_epoch(&epochs, started, [stable].into());
            transitions += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let epochs = std::mem::take(&mut *epochs.lock().unwrap());
    assert!(answers.len() > 200, "{} requests under load", answers.len());
    let mut ids = HashSet::new();
    let mut per_version: HashMap<String, usize> = HashMap::new();
    for (id, sent, got, status, version, echoed) in answers.iter() {
        assert_eq!(*status, StatusCode::OK, "request {id} failed");
        assert_eq!(
            echoed.as_deref(),
            Some(id.as_str()),
            "request {id} got another's answer"
        );
        assert!(ids.insert(id.clone()), "request {id} answered twice");
        let version = version.clone().unwrap();
        let allowed: BTreeSet<&str> = epochs
            .iter()
            .filter(|e| e.from <= *got && e.until.is_none_or(|u| u >= *sent))
            .flat_map(|e| e.allowed.iter().copied())
            .collect();
        assert!(
            allowed.contains(version.as_str()),
            "request {id} answered by {version}, allowed {allowed:?}"
        );
        *per_version.entry(version).or_default() += 1;
    }
    assert!(
        per_version.len() == 2,
        "both versions served: {per_version:?}"
    );
    let metrics = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(metrics.contains(
        "cairn_rollout_transitions_total{action=\"promote\",model=\"iris\",trigger=\"manual\"}"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_warm_up_requests_gate_a_version() {
    let repo = iris_repo();
    // The failing model passes a warm-up of ones, but not one of real rows.
    repo.write("iris/3/model.onnx", &rollout_model("failing.onnx"));
    repo.write(
        "iris/config.toml",
        format!("{IRIS_CONFIG}\n[warmup]\nrequests = [\"sample.json\"]\ncount = 2\n").as_bytes(),
    );
    // Versions 1 and 2 carry their own sample.json; version 3 falls back to the model directory.
    repo.write(
        "iris/sample.json",
        &std::fs::read(common::root().join("models/iris/1/sample.json")).unwrap(),
    );
    let s = TestServer::start(repo).await;
    assert_eq!(
        s.get("/v2/models/iris/versions/1/ready").await.status,
        StatusCode::OK
    );
    assert_eq!(
        s.get("/v2/models/iris/versions/2/ready").await.status,
        StatusCode::OK
    );
    let r = s.get("/v2/models/iris/versions/3/ready").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("warm-up failed"));
    // A warm-up file that does not exist fails the load with its name.
    s.repo.write(
        "iris/config.toml",
        format!("{IRIS_CONFIG}\n[warmup]\nrequests = [\"missing.json\"]\n").as_bytes(),
    );
    let r = s
        .post("/v2/repository/models/iris/load", Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r
        .error()
        .contains("warm-up request 'missing.json' not found"));
    // ...and what served before keeps serving.
    assert_eq!(infer(&s, 0, &[]).await.0, StatusCode::OK);
    s.shutdown().await;
}
