//! Dynamic batching, overload and cancellation, statistics and Prometheus metrics, over HTTP
//! against the real server.

use crate::common;

use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use common::{Repo, TestServer};

fn row(seed: usize, width: usize) -> Vec<f32> {
    (0..width)
        .map(|i| (((seed * 31 + i) as f32) * 0.37).sin() * 2.0)
        .collect()
}

fn body(rows: usize, width: usize, seed: usize) -> Value {
    let data: Vec<f32> = (0..rows).flat_map(|r| row(seed + r, width)).collect();
    json!({"inputs": [{"name": "input", "shape": [rows, width], "datatype": "FP32", "data": data}]})
}

/// A repository whose `slow` model (mlp-large, one worker, no batching) keeps its queue busy.
fn slow_repo(extra_config: &str) -> Repo {
    let repo = Repo::with(&[]);
    repo.add_as("mlp-large", "slow");
    repo.write(
        "slow/config.toml",
        format!("max_batch_size = 64\ninstances = 1\n{extra_config}").as_bytes(),
    );
    repo
}

/// Sends `n` 64-row requests to `slow` without waiting for them; each task yields the status
/// and the body. The binary extension keeps decoding cheap, so the requests arrive faster than
/// the single worker runs them.
fn flood(s: &TestServer, n: usize) -> Vec<tokio::task::JoinHandle<(StatusCode, bytes::Bytes)>> {
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [64, 256],
        "datatype": "FP32", "parameters": {"binary_data_size": 64 * 256 * 4}}]}))
    .unwrap();
    (0..n)
        .map(|i| {
            let mut payload = header.clone();
            payload.extend(common::f32_le(
                &(0..64).flat_map(|r| row(i + r, 256)).collect::<Vec<_>>(),
            ));
            let client = s.client.clone();
            let req = http::Request::post(format!("{}/v2/models/slow/infer", s.base))
                .header("Inference-Header-Content-Length", header.len())
                .body(http_body_util::Full::new(bytes::Bytes::from(payload)))
                .unwrap();
            tokio::spawn(async move {
                use http_body_util::BodyExt;
                let resp = client.request(req).await.unwrap();
                let status = resp.status();
                (status, resp.into_body().collect().await.unwrap().to_bytes())
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_results_equal_unbatched_ones() {
    let repo = Repo::with(&[]);
    repo.add_as("tabular-small", "batched");
    repo.write(
        "batched/config.toml",
        b"max_batch_size = 64\ninstances = 1\n[dynamic_batching]\nmax_queue_delay_us = 20000\n",
    );
    repo.add_as("tabular-small", "alone");
    repo.write("alone/config.toml", b"max_batch_size = 64\n");
    let s = TestServer::start(repo).await;

    let n = 48;
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = s.client.clone();
        let rows = 1 + i % 3; // requests of 1, 2 and 3 rows share batches
        let req = http::Request::post(format!("{}/v2/models/batched/infer", s.base))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::to_vec(&body(rows, 32, i * 10)).unwrap(),
            )))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            use http_body_util::BodyExt;
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }));
    }
    let mut batched = Vec::new();
    for t in tasks {
        batched.push(t.await.unwrap());
    }
    for (i, got) in batched.iter().enumerate() {
        let alone = s
            .post_json("/v2/models/alone/infer", &body(1 + i % 3, 32, i * 10))
            .await
            .json();
        assert_eq!(
            got["outputs"], alone["outputs"],
            "request {i}: batched output differs"
        );
    }
    let stats = s.get("/v2/models/batched/stats").await.json();
    let st = &stats["model_stats"][0];
    let rows: u64 = (0..n).map(|i| 1 + (i % 3) as u64).sum();
    assert_eq!(st["inference_count"], rows, "k-row requests count k rows");
    let executions = st["execution_count"].as_u64().unwrap();
    assert!(
        executions < n as u64 / 2,
        "requests were batched: {executions} executions"
    );
    let batch_stats = st["batch_stats"].as_array().unwrap();
    assert!(batch_stats
        .iter()
        .any(|b| b["batch_size"].as_u64().unwrap() > 3));
    assert!(batch_stats
        .iter()
        .all(|b| b["batch_size"].as_u64().unwrap() <= 64));
    // The alone model ran one execution per request.
    let alone = s.get("/v2/models/alone/stats").await.json();
    assert_eq!(alone["model_stats"][0]["execution_count"], n as u64);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_at_once() {
    let s = TestServer::start(slow_repo("[queue]\nmax_queue_size = 1\n")).await;
    let mut ok = 0;
    let mut full = 0;
    for t in flood(&s, 24) {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                full += 1;
                let v: Value = serde_json::from_slice(&body).unwrap();
                let message = v["error"].as_str().unwrap();
                assert!(
                    message.contains("queue of slow:1 is full (1 requests waiting)"),
                    "{message}"
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(full > 0, "some requests found the queue full");
    assert_eq!(ok + full, 24);
    let r = s
        .post_json("/v2/models/slow/infer", &body(64, 256, 0))
        .await;
    assert_eq!(r.status, StatusCode::OK, "the server recovers");
    let failures = s
        .metric("cairn_request_failure_total{model=\"slow\",reason=\"queue_full\",version=\"1\"}")
        .await;
    assert_eq!(failures, full as f64);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_gets_504_and_never_runs() {
    let s = TestServer::start(slow_repo("")).await;
    let handles = flood(&s, 8);
    let mut late = body(1, 256, 99);
    late["parameters"] = json!({"timeout": 1});
    let r = s.post_json("/v2/models/slow/infer", &late).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.error().contains("timed out"));
    for h in handles {
        assert_eq!(h.await.unwrap().0, StatusCode::OK);
    }
    let stats = s.get("/v2/models/slow/stats").await.json();
    let st = &stats["model_stats"][0];
    assert_eq!(
        st["execution_count"], 8,
        "the timed-out request did not run"
    );
    assert_eq!(st["inference_count"], 8 * 64);
    assert_eq!(st["inference_stats"]["fail"]["count"], 1);
    let timeouts = s
        .metric("cairn_request_failure_total{model=\"slow\",reason=\"timeout\",version=\"1\"}")
        .await;
    assert_eq!(timeouts, 1.0);

    // The model's default timeout applies to requests that set none.
    let s2 = TestServer::start(slow_repo("[queue]\ndefault_timeout_us = 1\n")).await;
    let r = s2
        .post_json("/v2/models/slow/infer", &body(1, 256, 1))
        .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    s2.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_left_is_dropped_before_it_runs() {
    let s = TestServer::start(slow_repo("")).await;
    let pending = "cairn_pending_requests{model=\"slow\",version=\"1\"}";
    let done = "cairn_request_success_total{model=\"slow\",version=\"1\"}";
    let flooded = 40;
    let handles = flood(&s, flooded);
    // Wait until the flood is queued behind the busy worker.
    for _ in 0..1000 {
        if s.metric(pending).await + s.metric(done).await >= flooded as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let addr = s.base.trim_start_matches("http://").to_string();
    let payload = serde_json::to_vec(&body(1, 256, 7)).unwrap();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v2/models/slow/infer HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        payload.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&payload).await.unwrap();
    // Once the server holds the request (one more than the flood), hang up.
    for _ in 0..1000 {
        if s.metric(pending).await + s.metric(done).await > flooded as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let queued_at_hangup = s.metric(pending).await;
    drop(conn);
    for h in handles {
        assert_eq!(h.await.unwrap().0, StatusCode::OK);
    }
    // Let the worker reach and discard the abandoned job.
    for _ in 0..500 {
        if s.metric(pending).await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        queued_at_hangup > 1.0,
        "the request was still queued at hang-up"
    );
    let canceled = s
        .metric("cairn_request_failure_total{model=\"slow\",reason=\"canceled\",version=\"1\"}")
        .await;
    assert_eq!(
        canceled, 1.0,
        "the abandoned request is counted as canceled"
    );
    let stats = s.get("/v2/models/slow/stats").await.json();
    assert_eq!(
        stats["model_stats"][0]["execution_count"], flooded,
        "it never ran"
    );
    assert_eq!(stats["model_stats"][0]["inference_count"], flooded * 64);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_appears_and_moves_with_traffic() {
    let repo = Repo::with(&["tabular-small", "corrupt"]);
    let s = TestServer::start(repo).await;
    let before = s
        .metric("cairn_request_success_total{model=\"tabular-small\",version=\"1\"}")
        .await;
    for i in 0..20 {
        let r = s
            .post_json("/v2/models/tabular-small/infer", &body(1 + i % 4, 32, i))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    assert_eq!(
        s.post_json("/v2/models/tabular-small/infer", &bad)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    let text = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    let labels = "model=\"tabular-small\",version=\"1\"";
    for family in [
        "cairn_request_duration_seconds_bucket",
        "cairn_queue_duration_seconds_bucket",
        "cairn_compute_input_duration_seconds_bucket",
        "cairn_compute_infer_duration_seconds_bucket",
        "cairn_compute_output_duration_seconds_bucket",
        "cairn_batch_size_bucket",
    ] {
        assert!(
            text.contains(&format!("{family}{{{labels},le=")),
            "missing {family}"
        );
    }
    for series in [
        format!("cairn_queue_depth{{{labels}}}"),
        format!("cairn_pending_requests{{{labels}}}"),
        format!("cairn_model_ready{{{labels}}} 1"),
        format!("cairn_model_load_duration_seconds{{{labels}}}"),
        "cairn_model_ready{model=\"corrupt\",version=\"1\"} 0".to_string(),
        "cairn_model_load_failures_total{model=\"corrupt\",version=\"1\"} 1".to_string(),
        "cairn_uptime_seconds".to_string(),
        "cairn_build_info{version=".to_string(),
        "process_cpu_seconds_total".to_string(),
        "process_resident_memory_bytes".to_string(),
        "cairn_http_requests_total{endpoint=\"infer\",status=\"2xx\"}".to_string(),
    ] {
        assert!(text.contains(&series), "missing {series}");
    }
    let success = s
        .metric(&format!("cairn_request_success_total{{{labels}}}"))
        .await;
    assert_eq!(success - before, 20.0);
    let rows = s
        .metric(&format!("cairn_inference_rows_total{{{labels}}}"))
        .await;
    assert_eq!(rows, (0..20).map(|i| 1 + i % 4).sum::<usize>() as f64);
    let executions = s
        .metric(&format!("cairn_execution_total{{{labels}}}"))
        .await;
    assert!((1.0..=20.0).contains(&executions));
    let invalid = s
        .metric(
            "cairn_request_failure_total{model=\"tabular-small\",reason=\"invalid\",version=\"1\"}",
        )
        .await;
    assert_eq!(invalid, 1.0);
    let count = s
        .metric(&format!("cairn_request_duration_seconds_count{{{labels}}}"))
        .await;
    assert_eq!(count, 20.0);
    let batch_sum = s.metric(&format!("cairn_batch_size_sum{{{labels}}}")).await;
    assert_eq!(batch_sum, rows);

    // Triton's statistics agree with the metrics.
    let stats = s.get("/v2/models/stats").await.json();
    let st = stats["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tabular-small")
        .unwrap()
        .clone();
    assert_eq!(st["version"], "1");
    assert_eq!(st["inference_count"].as_f64().unwrap(), rows);
    assert_eq!(st["execution_count"].as_f64().unwrap(), executions);
    assert_eq!(st["inference_stats"]["success"]["count"], 20);
    assert_eq!(st["inference_stats"]["fail"]["count"], 1);
    for stage in ["queue", "compute_input", "compute_infer", "compute_output"] {
        assert!(
            st["inference_stats"][stage]["ns"].as_u64().unwrap() > 0,
            "{stage}"
        );
    }
    assert!(st["last_inference"].as_u64().unwrap() > 1_600_000_000_000);
    let per_size: u64 = st["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["compute_infer"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(per_size as f64, executions);
    assert_eq!(
        s.get("/v2/models/tabular-small/versions/1/stats")
            .await
            .json()["model_stats"][0]["name"],
        "tabular-small"
    );
    assert_eq!(
        s.get("/v2/models/nope/stats").await.status,
        StatusCode::NOT_FOUND
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unloaded_version_answers_what_it_had_queued() {
    let s = TestServer::start(slow_repo("")).await;
    let flooded = 24;
    let handles = flood(&s, flooded);
    // Unload while the flood is queued behind the single busy worker.
    for _ in 0..1000 {
        if s.metric("cairn_queue_depth{model=\"slow\",version=\"1\"}")
            .await
            >= 4.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let r = s
        .post("/v2/repository/models/slow/unload", bytes::Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // New requests are refused at once ...
    let r = s.post_json("/v2/models/slow/infer", &body(1, 256, 0)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // ... and every request the version had accepted is still answered.
    for h in handles {
        assert_eq!(h.await.unwrap().0, StatusCode::OK);
    }
    s.shutdown().await;
}
