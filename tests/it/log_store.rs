//! The prediction log in an object store (`log_store`, here `file://`), through the real server:
//! every sealed segment uploaded under `<model>/<kind>/date=YYYY-MM-DD/<replica>-...parquet`
//! and deleted locally once there; a store that fails keeps everything on disk, counted and
//! retried; a full backlog drops records (counted) and refuses feedback (503); a restart
//! uploads what the previous process sealed. Then the readers: `cairn drift`, `cairn baseline`
//! and `cairn train` on a store holding two replicas' segments.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

use crate::common::{Repo, TestServer};
use crate::offline::cairn;
use cairn::config::ServerConfig;

/// iris (v1 logistic regression, v2 MLP) with monitoring on and every label matched.
fn iris() -> Repo {
    let repo = Repo::with(&["iris"]);
    repo.write(
        "iris/config.toml",
        b"max_batch_size = 64\nversion_policy = { all = {} }\n\
          [rollout]\nmin_requests = 1000000\nauto_promote = false\nauto_rollback = false\n\
          [monitoring]\nenabled = true\nprediction = \"label\"\n\
          features = [\"sepal_length\", \"sepal_width\", \"petal_length\", \"petal_width\"]\n",
    );
    repo
}

/// The log synced after every batch and a segment sealed after each (tiny segments), uploaded
/// to `store` as `replica`.
fn logged_to(store: &Path, replica: &str) -> impl FnOnce(&mut ServerConfig) {
    let url = format!("file://{}", store.display());
    let replica = replica.to_string();
    move |c| {
        c.monitor.fsync = Duration::ZERO;
        c.monitor.segment_max_bytes = 1;
        c.monitor.log_store = Some(url);
        c.replica_id = replica;
    }
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

/// Sends `requests` requests of 2 rows with ids `<tag>-<i>` to version 1; their predicted
/// labels as feedback items.
async fn traffic(s: &TestServer, tag: &str, requests: usize) -> Vec<Value> {
    let mut feedback = Vec::new();
    for i in 0..requests {
        let id = format!("{tag}-{i}");
        let data: Vec<f32> = rows(2, i).into_iter().flatten().collect();
        let r = s
            .post_json(
                "/v2/models/iris/versions/1/infer",
                &json!({"id": id, "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": data}]}),
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
            feedback.push(json!({"id": id, "row": row, "label": label}));
        }
    }
    feedback
}

/// Every object file under `dir`, relative to it, sorted.
fn objects(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Rows in the sealed segments of one kind in the store, over every partition.
fn stored_rows(store: &Path, kind: &str) -> usize {
    let dir = store.join("iris").join(kind);
    let Ok(partitions) = std::fs::read_dir(&dir) else {
        return 0;
    };
    partitions
        .flatten()
        .map(|p| {
            let (batches, _) = cairn_monitor::log::read_dir(&p.path()).unwrap();
            batches.iter().map(|b| b.num_rows()).sum::<usize>()
        })
        .sum()
}

/// Sealed segments still on local disk.
fn local_sealed(s: &TestServer, kind: &str) -> usize {
    let dir = s.repo.path().join(".cairn/predictions/iris").join(kind);
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
                .count()
        })
        .unwrap_or(0)
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn today() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    format!("date={}", &now[..10])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_segments_are_uploaded_by_day_and_deleted_once_there() {
    let store = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_with(iris(), logged_to(store.path(), "pod-a")).await;
    let feedback = traffic(&s, "a", 12).await;
    let r = s
        .post_json("/v2/models/iris/feedback", &json!({ "feedback": feedback }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    // Each batch seals a segment (1-byte segments); the uploader takes each within a second or
    // so. Feedback's own segment too: it is sealed at once under this size.
    wait_until("every prediction row in the store", async || {
        stored_rows(store.path(), "predictions") == 24
    })
    .await;
    wait_until("the feedback in the store", async || {
        stored_rows(store.path(), "feedback") == 24
    })
    .await;
    wait_until("local copies deleted", async || {
        local_sealed(&s, "predictions") == 0 && local_sealed(&s, "feedback") == 0
    })
    .await;
    let listed = objects(store.path());
    let day = today();
    for name in &listed {
        let parts: Vec<&str> = name.split('/').collect();
        assert_eq!(parts.len(), 4, "{name}");
        assert_eq!(parts[0], "iris");
        assert!(["predictions", "feedback"].contains(&parts[1]), "{name}");
        // A segment opened just before midnight may carry yesterday's date.
        assert!(parts[2].starts_with("date=20"), "{name}");
        let file = parts[3];
        let stem = file
            .strip_prefix("pod-a-")
            .and_then(|f| f.strip_suffix(".parquet"))
            .unwrap_or_else(|| panic!("{name}"));
        let (start, seq) = stem.split_once('-').unwrap();
        assert!(start.len() == 13 && seq.len() == 6, "{name}");
    }
    assert!(listed.iter().any(|n| n.contains(&day)), "{listed:?}");
    assert!(
        s.metric("cairn_log_store_uploaded_segments_total{kind=\"predictions\",model=\"iris\"}")
            .await
            >= 1.0
    );
    assert!(
        s.metric("cairn_log_store_uploaded_bytes_total{kind=\"feedback\",model=\"iris\"}")
            .await
            > 0.0
    );
    let text = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    for series in [
        "cairn_log_store_backlog_bytes{kind=\"predictions\",model=\"iris\"}",
        "cairn_log_store_oldest_pending_age_seconds{kind=\"feedback\",model=\"iris\"}",
    ] {
        assert!(text.contains(series), "{series}");
    }
    assert!(!text.contains("cairn_log_store_upload_failures_total{"));
    // A clean stop seals the open segments and uploads them before it returns.
    traffic(&s, "b", 3).await;
    s.stop().await;
    assert_eq!(stored_rows(store.path(), "predictions"), 30);
    assert_eq!(local_sealed(&s, "predictions"), 0);
}

/// A store that cannot be written (a file stands where its directory should be): uploads fail,
/// are counted and retried with backoff, nothing local is deleted; once the store is back, the
/// retries upload everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_keeps_everything_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("store");
    std::fs::write(&blocked, b"a file, not a directory").unwrap();
    let store = blocked.join("logs");
    let s = TestServer::start_with(iris(), logged_to(&store, "pod-a")).await;
    traffic(&s, "a", 5).await;
    let failures = "cairn_log_store_upload_failures_total{kind=\"predictions\",model=\"iris\"}";
    wait_until("failures counted", async || s.metric(failures).await >= 2.0).await;
    assert!(local_sealed(&s, "predictions") >= 1, "nothing deleted");
    assert_eq!(
        s.metric("cairn_log_store_uploaded_segments_total{kind=\"predictions\",model=\"iris\"}")
            .await,
        0.0
    );
    assert!(
        s.metric("cairn_log_store_backlog_bytes{kind=\"predictions\",model=\"iris\"}")
            .await
            > 0.0
    );
    std::fs::remove_file(&blocked).unwrap();
    wait_until("uploaded once the store is back", async || {
        stored_rows(&store, "predictions") == 10 && local_sealed(&s, "predictions") == 0
    })
    .await;
    s.shutdown().await;
}

/// Past `log_store_backlog_max_bytes` (the store failing), records are dropped and counted
/// with their reason, and feedback is refused with a 503 rather than acknowledged and lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_drops_records_and_refuses_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("store");
    std::fs::write(&blocked, b"a file, not a directory").unwrap();
    let store = blocked.join("logs");
    let logged = logged_to(&store, "pod-a");
    let s = TestServer::start_with(iris(), move |c| {
        logged(c);
        c.monitor.log_store_backlog_max_bytes = 1;
    })
    .await;
    let feedback = traffic(&s, "a", 2).await;
    let dropped = "cairn_prediction_log_dropped_total{model=\"iris\",reason=\"upload_backlog\"}";
    let mut sent = 0;
    wait_until("records dropped for the backlog", async || {
        traffic(&s, "more", 1).await;
        sent += 1;
        s.metric(dropped).await >= 1.0
    })
    .await;
    let r = s
        .post_json("/v2/models/iris/feedback", &json!({ "feedback": feedback }))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.error().contains("log_store_backlog_max_bytes"),
        "{}",
        r.error()
    );
    assert_eq!(
        s.metric("cairn_log_store_feedback_refused_total{model=\"iris\"}")
            .await,
        1.0
    );
    // Answers are never refused for the log's sake.
    assert!(sent >= 1);
    s.shutdown().await;
}

/// Segments a previous process sealed (here one without a log store) are uploaded by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_uploads_what_the_previous_process_sealed() {
    let store = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(iris(), |c| {
        c.monitor.fsync = Duration::ZERO;
    })
    .await;
    traffic(&s, "before", 4).await;
    let TestServer {
        server: Some(server),
        repo,
        ..
    } = s
    else {
        unreachable!("started")
    };
    server.shutdown().await;
    let sealed = repo.path().join(".cairn/predictions/iris/predictions");
    assert!(std::fs::read_dir(&sealed).unwrap().count() >= 1);
    let s = TestServer::start_with(repo, logged_to(store.path(), "pod-b")).await;
    wait_until("the earlier segments uploaded", async || {
        stored_rows(store.path(), "predictions") == 8 && local_sealed(&s, "predictions") == 0
    })
    .await;
    assert!(objects(store.path()).iter().all(|n| n.contains("/pod-b-")));
    s.shutdown().await;
}

/// The store's root for readers: `<store>` as a URL.
fn url(store: &Path) -> String {
    format!("file://{}", store.display())
}

/// A store holding two replicas' logs of the same model: each served its own requests (ids
/// `a-*`, `b-*`) and took feedback for them.
async fn two_replicas(store: &Path) -> (usize, PathBuf) {
    let mut total = 0;
    let mut model_dir = None;
    for replica in ["pod-a", "pod-b"] {
        let s = TestServer::start_with(iris(), logged_to(store, replica)).await;
        let feedback = traffic(&s, replica, 30).await;
        total += feedback.len();
        let r = s
            .post_json("/v2/models/iris/feedback", &json!({ "feedback": feedback }))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.error());
        let TestServer {
            server: Some(server),
            repo,
            ..
        } = s
        else {
            unreachable!("started")
        };
        server.shutdown().await;
        model_dir.get_or_insert_with(|| {
            let kept = tempfile::tempdir().unwrap().keep();
            crate::common::copy_dir(&repo.path().join("iris"), &kept.join("iris"));
            kept
        });
    }
    (total, model_dir.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_baseline_and_train_read_every_replica_from_the_store() {
    let store = tempfile::tempdir().unwrap();
    let (rows, repo) = two_replicas(store.path()).await;
    let names = objects(store.path());
    assert!(names.iter().any(|n| n.contains("/pod-a-")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("/pod-b-")), "{names:?}");
    let work = tempfile::tempdir().unwrap();
    let window = format!("{}/iris", url(store.path()));
    // drift: every replica's rows in the window, pruned to the partitions of the range.
    let baseline_v1 = repo.join("iris/1/baseline.json");
    let out = work.path().join("drift.json");
    let (code, _, err) = cairn(&[
        "drift",
        "--baseline",
        baseline_v1.to_str().unwrap(),
        "--window",
        &window,
        "--version",
        "1",
        "--from",
        "2020-01-01T00:00:00Z",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["rows"], rows, "{report}");
    // Nothing in a range before the log began: no partition is even listed.
    let (code, _, err) = cairn(&[
        "drift",
        "--baseline",
        baseline_v1.to_str().unwrap(),
        "--window",
        &window,
        "--to",
        "2020-01-01T00:00:00Z",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no rows"), "{err}");
    // baseline: from the store's log.
    let baseline = work.path().join("baseline.json");
    let (code, _, err) = cairn(&[
        "baseline",
        "--data",
        &window,
        "--out",
        baseline.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let b: Value = serde_json::from_str(&std::fs::read_to_string(&baseline).unwrap()).unwrap();
    assert_eq!(b["rows"], rows, "{b}");
    // train: the log joined with feedback, from both replicas.
    let config = work.path().join("train.toml");
    std::fs::write(
        &config,
        format!(
            "model = \"iris\"\nseed = 1\nthreads = 1\n\
             [data]\nlog = {{ dir = \"{}\" }}\n\
             features = [\"sepal_length\", \"sepal_width\", \"petal_length\", \"petal_width\"]\n\
             target = \"output.label\"\n\
             [trainer]\nkind = \"logistic\"\nepochs = 5\n\
             [output]\nrepository = \"{}\"\nruns_dir = \"{}\"\npublish = false\n",
            url(store.path()),
            repo.display(),
            work.path().join("runs").display()
        ),
    )
    .unwrap();
    let (_, out, err) = cairn(&["train", "--quiet", "--config", config.to_str().unwrap()]);
    assert!(
        out.contains(&format!("{rows} rows read, 0 without a label")),
        "{out}{err}"
    );
    assert!(
        out.contains(&format!("prediction log {}/iris", url(store.path()))),
        "the source named as the store: {out}"
    );
    // A training job on a third replica: `data.log.dir` left out, it reads the server's log
    // store (both replicas before it) with its own segments, uploaded or not, exactly once.
    let configs = tempfile::tempdir().unwrap();
    std::fs::write(
        configs.path().join("iris.toml"),
        "model = \"iris\"\nseed = 1\nthreads = 1\n\
         [data]\nlog = { from = \"2020-01-01T00:00:00Z\" }\n\
         features = [\"sepal_length\", \"sepal_width\", \"petal_length\", \"petal_width\"]\n\
         target = \"output.label\"\n\
         [trainer]\nkind = \"logistic\"\nepochs = 5\n\
         [output]\npublish = false\n",
    )
    .unwrap();
    let dir = configs.path().to_path_buf();
    let logged = logged_to(store.path(), "pod-c");
    let s = TestServer::start_with(iris(), move |c| {
        logged(c);
        c.training.config_dir = dir;
    })
    .await;
    let feedback = traffic(&s, "pod-c", 5).await;
    let r = s
        .post_json("/v2/models/iris/feedback", &json!({ "feedback": feedback }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    let r = s.post("/v2/models/iris/train", "").await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let mut job = Value::Null;
    wait_until("the job finishes", async || {
        job = s.get(&format!("/v2/training/jobs/{id}")).await.json();
        job["state"] != "running"
    })
    .await;
    assert!(
        job["state"] == "passed" || job["state"] == "refused",
        "{job}"
    );
    let run = job["run"].as_str().unwrap();
    let record = s.repo.path().join(".cairn/runs").join(run).join("run.json");
    let record: Value = serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap();
    assert_eq!(record["data"]["rows_read"], rows + 10, "{}", record["data"]);
    assert_eq!(record["data"]["unlabelled"], 0, "{}", record["data"]);
    // The copy it read from is gone with the job.
    let log_dir = s.repo.path().join(".cairn/predictions");
    let hidden: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&repo);
}
