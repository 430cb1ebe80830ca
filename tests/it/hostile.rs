//! Hostile input over real HTTP: requests, uploads, connections and files that once took the
//! server down, exhausted its memory or corrupted its state. Each test names the finding it
//! covers; each one fails (or aborts the test process) on a server without the bound it checks.

use crate::common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{Repo, TestServer};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn hostile_model(name: &str) -> Vec<u8> {
    std::fs::read(common::root().join("tests/models/hostile").join(name)).unwrap()
}

fn iris_rows() -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})
}

/// The server still answers health checks and real inferences.
async fn assert_serving(s: &TestServer) {
    assert_eq!(s.get("/v2/health/live").await.status, StatusCode::OK);
    let r = s.post_json("/v2/models/iris/infer", &iris_rows()).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// Waits (bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn addr(s: &TestServer) -> String {
    s.base.trim_start_matches("http://").to_string()
}

/// Reads from a raw connection until the server closes it; what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open; it sent {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

// Finding 1: a ~100-byte request whose declared shape sized an allocation aborted the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_shapes_never_size_an_allocation() {
    let s = TestServer::start(Repo::with(&["iris", "strings"])).await;
    for (shape, datatype, data) in [
        ("[1099511627776,1]", "BYTES", r#"["a"]"#),
        ("[8,134217728]", "BYTES", r#"["a"]"#),
        ("[4294967296,4294967296]", "BYTES", r#"["a"]"#),
        ("[1099511627776,1]", "FP32", "[1]"),
        ("[4294967296,4294967296]", "FP32", "[1]"),
    ] {
        for model in ["iris", "strings"] {
            let body = format!(
                r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#
            );
            let r = s.post(&format!("/v2/models/{model}/infer"), body).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{model} {shape} {datatype}"
            );
            let msg = r.error();
            assert!(
                msg.contains("elements") || msg.contains("too large"),
                "{shape}: {msg}"
            );
            assert!(
                !msg.contains("18446744073709551615"),
                "saturated count: {msg}"
            );
        }
    }
    assert_serving(&s).await;
    s.shutdown().await;
}

async fn upload(
    s: &TestServer,
    model: &str,
    config: Value,
    files: &[(&str, Vec<u8>)],
) -> common::Reply {
    let mut params = serde_json::Map::new();
    params.insert("config".into(), Value::String(config.to_string()));
    for (path, content) in files {
        params.insert(format!("file:{path}"), Value::String(b64(content)));
    }
    s.post_json(
        &format!("/v2/repository/models/{model}/load"),
        &json!({ "parameters": params }),
    )
    .await
}

// Finding 2: config dims pinned on a fully symbolic input sized the generated warm-up sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_dims_cannot_size_the_warm_up_sample() {
    let s = TestServer::start(Repo::with(&["iris"])).await;
    let r = upload(
        &s,
        "pinned",
        json!({"input": [{"name": "x", "datatype": "FP32", "dims": [1099511627776i64, 1]}]}),
        &[("1/model.onnx", hostile_model("symbolic.onnx"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let msg = r.error();
    assert!(msg.contains("warm-up sample for input 'x'"), "{msg}");
    assert!(msg.contains("max_body_bytes"), "{msg}");
    // The same model with sane pinned dims loads and serves.
    let r = upload(
        &s,
        "pinned",
        json!({"input": [{"name": "x", "datatype": "FP32", "dims": [2, 3]}]}),
        &[("1/model.onnx", hostile_model("symbolic.onnx"))],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_serving(&s).await;
    s.shutdown().await;
}

// Finding 3: a warm-up count of a billion grew memory by gigabytes while the repository waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_counts_are_bounded() {
    let s = TestServer::start(Repo::with(&["iris"])).await;
    let iris = std::fs::read(common::root().join("models/iris/2/model.onnx")).unwrap();
    let sample = std::fs::read(common::root().join("models/iris/1/sample.json")).unwrap();
    let files = [
        ("1/model.onnx", iris.clone()),
        ("sample.json", sample.clone()),
    ];
    let config = |count: u64| json!({"max_batch_size": 8, "warmup": {"requests": ["sample.json"], "count": count}});
    let r = upload(&s, "warm", config(1_000_000_000), &files).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("warmup.count"), "{}", r.error());
    // The repository is free at once: the next load does not wait behind a billion runs.
    let r = upload(&s, "warm", config(1000), &files).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_serving(&s).await;
    s.shutdown().await;
}

// Finding 4: a 184-byte model whose constant folding materialises 16 GiB, and a ConstantOfShape
// of 4 TiB. The checked load runs them in a child under the memory budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_files_that_would_exhaust_memory_fail_to_load() {
    let s = TestServer::start(Repo::with(&["iris"])).await;
    for file in ["expand_bomb.onnx", "constant_of_shape.onnx"] {
        let r = upload(
            &s,
            "bomb",
            json!({}),
            &[("1/model.onnx", hostile_model(file))],
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{file}");
        let msg = r.error();
        assert!(msg.contains("failed to load 'bomb'"), "{file}: {msg}");
        assert!(
            msg.contains("needs more memory than the budget"),
            "{file}: {msg}"
        );
        assert_serving(&s).await;
    }
    let index = s.post("/v2/repository/index", "{}").await.json();
    let row = index
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "bomb")
        .expect("the failed model is in the index");
    assert_eq!(row["state"], "UNAVAILABLE");
    s.shutdown().await;
}

// Finding 5: stalled bodies held their bytes forever, without a bound across connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_bounded_and_timed_out() {
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| {
        c.max_body_bytes = 2 << 20;
        c.connections.max_buffered_body_bytes = 4 << 20;
        c.connections.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    let head = |len: usize| {
        format!(
            "POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {len}\r\n\r\n"
        )
    };
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(head(2 << 20).as_bytes()).await.unwrap();
        c.write_all(&vec![b' '; 1 << 20]).await.unwrap();
        stalled.push(c);
    }
    eventually("both stalled bodies are counted", || async {
        s.metric("cairn_http_buffered_body_bytes").await >= (4 << 20) as f64
    })
    .await;
    // The budget is spent: a third body is refused at once, not queued.
    let r = s
        .request(
            Method::POST,
            "/v2/models/iris/infer",
            &[],
            Bytes::from(vec![b' '; 1 << 20]),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.error().contains("max_buffered_body_bytes"),
        "{}",
        r.error()
    );
    // The stalled bodies time out with 408 and give their bytes back.
    for mut c in stalled {
        let answer = read_until_closed(&mut c).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("body_read_timeout_s"), "{text}");
    }
    eventually("the stalled bytes are freed", || async {
        s.metric("cairn_http_buffered_body_bytes").await == 0.0
    })
    .await;
    assert_serving(&s).await;
    s.shutdown().await;
}

// Finding 6: no header-read or idle timeout, no bound on connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed() {
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| {
        c.connections.header_read_timeout = Duration::from_secs(1);
        c.connections.keep_alive_timeout = Duration::from_secs(1);
    })
    .await;
    // Nothing sent, part of the headers sent, and an idle keep-alive connection: all closed.
    let mut silent = TcpStream::connect(addr(&s)).await.unwrap();
    let mut partial = TcpStream::connect(addr(&s)).await.unwrap();
    partial
        .write_all(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(addr(&s)).await.unwrap();
    idle.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());
    assert!(read_until_closed(&mut partial).await.is_empty());
    let answered = read_until_closed(&mut idle).await;
    assert!(String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200"));
    eventually("closed connections are no longer counted", || async {
        // The scrape itself holds one connection.
        s.metric("cairn_http_connections_open").await <= 1.0
    })
    .await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_503_and_are_closed() {
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| {
        c.connections.max_connections = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    for _ in 0..20 {
        let mut extra = TcpStream::connect(addr(&s)).await.unwrap();
        let answer = read_until_closed(&mut extra).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("limit of 3 connections"), "{text}");
    }
    // Once a connection closes, new clients are served again.
    drop(held.pop());
    let mut served = false;
    for _ in 0..500 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut c).await;
        let text = String::from_utf8_lossy(&answer);
        if text.starts_with("HTTP/1.1 200") {
            let refused = text
                .lines()
                .find(|l| l.starts_with("cairn_http_connections_refused_total "))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap();
            assert!(refused >= 20.0, "{refused}");
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served, "a new client is served once a connection closed");
    drop(held);
    s.shutdown().await;
}

// Finding 7: a client that went away during a load released the repository lock while the
// load went on, and the index showed LOADING forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_load_finishes_and_the_index_stays_true() {
    let repo = Repo::with(&["iris"]);
    let s = TestServer::start(repo).await;
    // A model that takes a while to load: a thousand warm-up runs, twice (check and load).
    s.repo.add_as("iris", "slow");
    s.repo.write(
        "slow/config.toml",
        b"max_batch_size = 64\nversion_policy = { all = {} }\n[warmup]\nrequests = [\"sample.json\"]\ncount = 1000\n",
    );
    std::fs::copy(
        common::root().join("models/iris/1/sample.json"),
        s.repo.path().join("slow/sample.json"),
    )
    .unwrap();
    let mut client = TcpStream::connect(addr(&s)).await.unwrap();
    client
        .write_all(
            b"POST /v2/repository/models/slow/load HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        )
        .await
        .unwrap();
    eventually("the load started", || async {
        let index = s.post("/v2/repository/index", "{}").await.json();
        index
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "slow" && r["state"] == "LOADING")
    })
    .await;
    drop(client);
    // A second operation waits for the first instead of running beside it, and both end with
    // the truth in the index.
    let r = s.post("/v2/repository/models/slow/load", "").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let index = s.post("/v2/repository/index", "{}").await.json();
    let rows: Vec<&Value> = index
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "slow")
        .collect();
    assert!(rows.iter().all(|r| r["state"] == "READY"), "{rows:?}");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let r = s.post_json("/v2/models/slow/infer", &iris_rows()).await;
    assert_eq!(r.status, StatusCode::OK);
    s.shutdown().await;
}

// Finding 8: an unreadable deployments.json was replaced by an empty state within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_state_file_is_kept_aside() {
    let repo = Repo::with(&["iris"]);
    let garbage = b"{\"models\":{\"iris\":{\"stable\":1".to_vec();
    repo.write(".cairn/deployments.json", &garbage);
    let s = TestServer::start(repo).await;
    // Give the evaluator, which saves changed state every 100 ms, time to (wrongly) write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state_dir = s.repo.path().join(".cairn");
    let aside: Vec<_> = std::fs::read_dir(&state_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("deployments.json.unreadable-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the unreadable file is kept aside");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), garbage);
    assert!(!state_dir.join("deployments.json").exists());
    // With no saved state known, traffic follows the highest version, and a new pin is saved.
    let r = s.post_json("/v2/models/iris/infer", &iris_rows()).await;
    assert_eq!(r.json()["model_version"], "2");
    let r = s
        .post_json("/v2/models/iris/deployment/stable", &json!({"version": 1}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let saved: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("deployments.json")).unwrap())
            .unwrap();
    assert_eq!(saved["models"]["iris"]["stable"], 1);
    s.shutdown().await;
}

// Finding 9: gzip bodies inflated on the HTTP threads (the inflation itself is shown to run
// off the runtime in `http::body`'s unit tests); here, a bomb gets 413 and frees its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_gets_413_and_frees_its_bytes() {
    use std::io::Write;
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| c.max_body_bytes = 1 << 20).await;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![b' '; 64 << 20]).unwrap();
    let bomb = enc.finish().unwrap();
    let r = s
        .request(
            Method::POST,
            "/v2/models/iris/infer",
            &[("content-encoding", "gzip")],
            bomb,
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s.metric("cairn_http_buffered_body_bytes").await, 0.0);
    assert_serving(&s).await;
    s.shutdown().await;
}

// Finding 10, uploads: odd keys answered 500 with a temporary path, and failed uploads left
// their directories behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upload_keys_are_400_and_failed_uploads_leave_nothing() {
    let repo = Repo::with(&["iris"]);
    // A directory left by a crashed run is removed at start.
    repo.write(".cairn/uploads/load-stale/m/1/model.onnx", b"x");
    let s = TestServer::start(repo).await;
    let uploads = s.repo.path().join(".cairn/uploads");
    eventually("the stale upload is removed", || async {
        !uploads.join("load-stale").exists()
    })
    .await;
    for key in ["1/.", "1/a\u{0}b", "./1/model.onnx", "1//model.onnx"] {
        let r = upload(&s, "up", json!({}), &[(key, vec![1, 2, 3])]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{key:?}");
        let msg = r.error();
        assert!(msg.contains("plain names"), "{key:?}: {msg}");
        assert!(!msg.contains(&*s.repo.path().to_string_lossy()), "{msg}");
        assert!(!msg.contains("/tmp"), "{msg}");
    }
    // A model file that fails to load: its upload directory goes with it.
    let r = upload(&s, "up", json!({}), &[("1/model.onnx", vec![0u8; 64])]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let left: Vec<_> = std::fs::read_dir(&uploads).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    // One that loads keeps its directory while it serves, and loses it when unloaded.
    let iris = std::fs::read(common::root().join("models/iris/2/model.onnx")).unwrap();
    let r = upload(
        &s,
        "up",
        json!({"max_batch_size": 4}),
        &[("1/model.onnx", iris)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 1);
    let r = s.post("/v2/repository/models/up/unload", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
    s.shutdown().await;
}

// Finding 10, auth: the Bearer scheme is case-insensitive (RFC 9110); the token is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| {
        c.admin_token = Some("s3cret".into());
    })
    .await;
    for (header, status) in [
        ("Bearer s3cret", StatusCode::OK),
        ("bearer s3cret", StatusCode::OK),
        ("BEARER  s3cret ", StatusCode::OK),
        ("Bearer S3CRET", StatusCode::FORBIDDEN),
        ("Basic s3cret", StatusCode::FORBIDDEN),
        ("Bearers3cret", StatusCode::FORBIDDEN),
    ] {
        let r = s
            .request(
                Method::POST,
                "/v2/repository/index",
                &[("authorization", header)],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, status, "{header:?}");
    }
    s.shutdown().await;
}

/// On a runtime with one thread, a large gzip body is inflated off that thread: a health check
/// sent while it inflates is answered first.
#[tokio::test(flavor = "current_thread")]
async fn a_large_gzip_body_does_not_stall_a_one_thread_runtime() {
    use std::io::Write;
    let s = TestServer::start(Repo::with(&["iris"])).await;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&vec![b' '; 48 << 20]).unwrap();
    let big = Bytes::from(enc.finish().unwrap());
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (big_done, health_done) = (order.clone(), order.clone());
    let base = s.base.clone();
    let client = s.client.clone();
    let big_request = tokio::spawn(async move {
        let req = http::Request::post(format!("{base}/v2/models/iris/infer"))
            .header("content-encoding", "gzip")
            .body(http_body_util::Full::new(big))
            .unwrap();
        let status = client.request(req).await.unwrap().status();
        big_done.lock().unwrap().push("big");
        status
    });
    // Give the big request time to be read and handed to the inflater.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = s.get("/v2/health/live").await;
    assert_eq!(r.status, StatusCode::OK);
    health_done.lock().unwrap().push("health");
    assert_eq!(big_request.await.unwrap(), StatusCode::BAD_REQUEST);
    assert_eq!(*order.lock().unwrap(), vec!["health", "big"]);
    s.shutdown().await;
}

/// A large gRPC inference message (typed contents, which prost parses value by value) is
/// walked and decoded on the request path's share of the blocking pool, never on a runtime
/// worker: with that share taken the call is refused as busy, and served once it is free, while
/// a small message is decoded inline all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_grpc_message_is_decoded_on_the_blocking_pool() {
    use cairn::grpc::proto;
    use http_body_util::BodyExt as _;
    use prost::Message as _;
    let s = TestServer::start(Repo::with(&["iris"])).await;
    let server = s.server.as_ref().unwrap();
    let grpc = server.grpc_addr.unwrap();
    let message = |rows: usize| {
        let message = proto::ModelInferRequest {
            model_name: "iris".into(),
            inputs: vec![proto::model_infer_request::InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![rows as i64, 4],
                contents: Some(proto::InferTensorContents {
                    fp32_contents: vec![0.5; rows * 4],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        Bytes::from(framed)
    };
    let stream = tokio::net::TcpStream::connect(grpc).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // The call's gRPC status (an error comes trailers-only: its status in the headers).
    let call = |body: Bytes| {
        let mut sender = sender.clone();
        async move {
            let req = http::Request::post(format!(
                "http://{grpc}/inference.GRPCInferenceService/ModelInfer"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(body))
            .unwrap();
            let answer = sender.send_request(req).await.unwrap();
            let headers = answer.headers().clone();
            let collected = answer.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned().unwrap_or_default();
            (trailers.get("grpc-status").or(headers.get("grpc-status")))
                .map(|v| v.to_str().unwrap().to_string())
        }
    };
    // 2 MiB of typed contents (a quarter of a million rows: more than iris batches, so the
    // model refuses it, after it was decoded: INVALID_ARGUMENT); one row is served.
    let (large, small) = (message(128 << 10), message(1));
    assert_eq!(call(large.clone()).await.as_deref(), Some("3"));
    // Take every slot of the request path's share of the blocking pool.
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let hold = std::sync::Arc::new(std::sync::Mutex::new(hold));
    let mut taken = 0;
    while server.state.offload.try_spawn({
        let hold = std::sync::Arc::clone(&hold);
        move || {
            let _ = hold.lock().unwrap().recv();
        }
    }) {
        taken += 1;
    }
    assert!(taken > 0);
    // UNAVAILABLE: no slot to decode it in, and it is not decoded on a runtime worker instead.
    assert_eq!(call(large.clone()).await.as_deref(), Some("14"));
    assert_eq!(call(small.clone()).await.as_deref(), Some("0"));
    drop(release);
    while !server.state.offload.try_spawn(|| {}) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(call(large).await.as_deref(), Some("3"));
    s.shutdown().await;
}

/// Repository operations wait in a short line: beyond it, a load is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_repository_answers_at_once() {
    let s = std::sync::Arc::new(TestServer::start(Repo::with(&["iris"])).await);
    let iris = std::fs::read(common::root().join("models/iris/2/model.onnx")).unwrap();
    let sample = std::fs::read(common::root().join("models/iris/1/sample.json")).unwrap();
    let mut loads = Vec::new();
    for _ in 0..16 {
        let s = std::sync::Arc::clone(&s);
        let files = [
            ("1/model.onnx", iris.clone()),
            ("sample.json", sample.clone()),
        ];
        loads.push(tokio::spawn(async move {
            let config = json!({"max_batch_size": 8, "warmup": {"requests": ["sample.json"], "count": 1000}});
            let r = upload(&s, "line", config, &files).await;
            (r.status, String::from_utf8_lossy(&r.body).to_string())
        }));
    }
    let mut ok = 0;
    let mut busy = 0;
    for l in loads {
        let (status, body) = l.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(body.contains("operations waiting"), "{body}");
                busy += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "{ok} loaded, {busy} refused");
    assert!(ok <= cairn::repository::MAX_WAITING_OPERATIONS, "{ok}");
    assert_serving(&s).await;
}

/// A saved candidate with a mode this server does not know is not guessed into a canary: the
/// file is kept aside and the server starts with no saved deployments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_saved_mode_is_refused_at_start() {
    let repo = Repo::with(&["iris"]);
    repo.write(
        ".cairn/deployments.json",
        br#"{"models":{"iris":{"stable":1,"candidate":{"version":2,"mode":"blue","weight":0.5}}}}"#,
    );
    let s = TestServer::start(repo).await;
    let d = s.get("/v2/models/iris/deployment").await.json();
    assert!(d["candidate"].is_null(), "{d}");
    assert_eq!(d["stable_pinned"], false);
    let aside = std::fs::read_dir(s.repo.path().join(".cairn"))
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("deployments.json.unreadable-")
        });
    assert!(aside);
    s.shutdown().await;
}

// Finding: a monitored model with a BYTES input; 96 MiB of distinct 1 MiB values over a few
// windows: every drift report kept each string whole in `unseen` and histogram labels: +565 MiB
// RSS kept, 384 MiB of reports on disk, a 128 MiB HTML page, `/v2/health/live` slow up to 14.6 s
// while reports rendered. Here 16 MiB of distinct 128 KiB values over a baseline and three
// windows: on the old server each report held some 13 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_huge_strings_keep_drift_reports_pages_and_memory_small() {
    use cairn_monitor::category::{MAX_CATEGORY_BYTES, MAX_LISTED_CATEGORIES, TRUNCATION_MARK};
    const WINDOW: usize = 32;
    const VALUE_BYTES: usize = 128 << 10;
    // What a report, the answer of ten of them, or the page may weigh: a few KiB per category
    // listed, whatever the values.
    const MAX_ANSWER_BYTES: usize = 256 << 10;

    let repo = Repo::with(&["iris", "strings"]);
    repo.write(
        "strings/config.toml",
        format!(
            "max_batch_size = 8\n[monitoring]\nenabled = true\n\
             window_rows = {WINDOW}\nbaseline_rows = {WINDOW}\n"
        )
        .as_bytes(),
    );
    let s = std::sync::Arc::new(
        TestServer::start_with(repo, |c| c.monitor.fsync = Duration::ZERO).await,
    );
    // Health checks and inferences of another model all along, each answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (s, stop) = (std::sync::Arc::clone(&s), std::sync::Arc::clone(&stop));
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut checks = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let started = Instant::now();
                assert_serving(&s).await;
                slowest = slowest.max(started.elapsed());
                checks += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (checks, slowest)
        })
    };

    // Distinct in their first bytes, then three-byte characters: the cut falls inside one.
    let value = |i: usize| format!("{i:06}{}", "€".repeat(VALUE_BYTES / 3));
    let rows = 4 * WINDOW;
    for first in (0..rows).step_by(8) {
        let data: Vec<String> = (first..first + 8).map(value).collect();
        let r = s
            .post_json(
                "/v2/models/strings/infer",
                &json!({"inputs": [{"name": "text", "shape": [8, 1], "datatype": "BYTES", "data": data}]}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // The baseline, then three windows: compared, or skipped when the comparer was busy.
    let deadline = Instant::now() + Duration::from_secs(120);
    let answer = loop {
        let r = s.get("/v2/models/strings/drift?limit=200").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let reports = r.json()["versions"]["1"]["reports"]
            .as_array()
            .map_or(0, Vec::len);
        let skipped = s
            .metric("cairn_drift_windows_skipped_total{model=\"strings\",version=\"1\"}")
            .await as usize;
        if reports + skipped >= 3 {
            break r.body;
        }
        assert!(
            Instant::now() < deadline,
            "three drift windows never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        answer.len() < MAX_ANSWER_BYTES,
        "drift answer of {} bytes",
        answer.len()
    );
    let drift: Value = serde_json::from_slice(&answer).unwrap();
    let reports = drift["versions"]["1"]["reports"].as_array().unwrap();
    assert!(!reports.is_empty());
    for report in reports {
        for name in ["text", "output.text_out"] {
            let section = if name == "text" {
                "features"
            } else {
                "outputs"
            };
            let f = &report[section][name];
            assert_eq!(f["kind"], "categorical", "{f}");
            let listed = |key: &str| -> Vec<String> {
                f[key]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}.{key}: {f}"))
                    .iter()
                    .map(|c| c.as_str().unwrap().to_string())
                    .collect()
            };
            // Every window value is new and every baseline one gone: all listed, the heaviest
            // 20 by name, all counted.
            assert_eq!(f["unseen_count"], WINDOW, "{name}");
            assert_eq!(f["vanished_count"], WINDOW, "{name}");
            assert_eq!(f["unseen_rate"], 1.0, "{name}");
            let unseen = listed("unseen");
            assert_eq!(unseen.len(), MAX_LISTED_CATEGORIES, "{name}");
            let categories: Vec<String> = f["histogram"]["categories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            assert!(!categories.is_empty());
            for c in unseen.iter().chain(&listed("vanished")).chain(&categories) {
                assert!(c.len() <= MAX_CATEGORY_BYTES, "{name}: {} bytes", c.len());
                assert!(c.ends_with(TRUNCATION_MARK), "{name}: cut and marked");
                assert!(value(c[..6].parse().unwrap()).starts_with(c.trim_end_matches('…')));
            }
        }
    }
    // Every value of the baseline's rows and the three windows', input and output, was cut.
    let truncated = s
        .metric("cairn_drift_values_truncated_total{model=\"strings\"}")
        .await;
    assert_eq!(truncated, (2 * 4 * WINDOW) as f64);

    let page = s.get("/v2/models/strings/drift/report").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.len() < MAX_ANSWER_BYTES,
        "page of {} bytes",
        page.body.len()
    );
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(html.contains(&format!("Unseen categories</strong> ({WINDOW}): ")));
    assert!(html.contains(&format!("and {} more", WINDOW - MAX_LISTED_CATEGORIES)));
    assert!(
        !html.contains(&"€".repeat(MAX_CATEGORY_BYTES / 3 + 1)),
        "no value whole"
    );

    let dir = s.repo.path().join(".cairn/predictions/strings/reports");
    let on_disk: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        on_disk < 4 * MAX_ANSWER_BYTES as u64,
        "{on_disk} bytes of reports on disk"
    );

    stop.store(true, std::sync::atomic::Ordering::Release);
    let (checks, slowest) = watcher.await.unwrap();
    assert!(checks > 0);
    // Generous for a loaded debug build: the finding's was 14.6 s.
    assert!(
        slowest < Duration::from_secs(5),
        "a health check took {slowest:?}"
    );
    assert_serving(&s).await;
}

/// A V2 request for iris with a request id, and the label the server predicted for it.
async fn predict(s: &TestServer, id: &str) -> i64 {
    let mut body = iris_rows();
    body["id"] = json!(id);
    let r = s.post_json("/v2/models/iris/infer", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    let out = r.json();
    let label = out["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .expect("iris answers a label")["data"][0]
        .as_i64()
        .unwrap();
    label
}

/// Rows in the current quality window of iris's version 2 (the stable one).
async fn quality_rows(s: &TestServer) -> u64 {
    let q = s.get("/v2/models/iris/quality").await.json();
    q["versions"]["2"]["current"]["rows"].as_u64().unwrap_or(0)
}

// Finding (feedback, high): a `time` of 1e12 s for a logged row panicked the model's log
// writer (a date past year 9999); feedback then answered 503 and logging, drift, quality and
// retraining of the model were dead until a restart. Now the time is refused, naming the field,
// and the model's monitoring goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feedback_time_past_year_9999_is_refused_and_monitoring_goes_on() {
    let s =
        TestServer::start_with(Repo::with(&["iris"]), |c| c.monitor.fsync = Duration::ZERO).await;
    let label = predict(&s, "far-1").await;
    for time in ["1e12", "-1", "1e300"] {
        let body = format!(r#"[{{"id": "far-1", "label": {label}, "time": {time}}}]"#);
        let r = s.post("/v2/models/iris/feedback", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "time {time}");
        let msg = r.error();
        assert!(
            msg.contains("feedback[0].time: expected seconds since the Unix epoch"),
            "{msg}"
        );
    }
    // The writer is alive: the same row's feedback, with a sane time, matches and counts.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let r = s
        .post_json(
            "/v2/models/iris/feedback",
            &json!({"feedback": [{"id": "far-1", "label": label, "time": now}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    assert_eq!(r.json()["matched"], 1);
    assert_eq!(quality_rows(&s).await, 1);
    // And so is logging: a later prediction is matched too.
    let label = predict(&s, "far-2").await;
    let r = s
        .post_json(
            "/v2/models/iris/feedback",
            &json!([{"id": "far-2", "label": label}]),
        )
        .await;
    assert_eq!(
        r.json()["matched"],
        1,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(quality_rows(&s).await, 2);
    assert_eq!(
        s.metric("cairn_monitor_panics_total{model=\"iris\",thread=\"writer\"}")
            .await,
        0.0
    );
    assert_serving(&s).await;
    s.shutdown().await;
}

// Finding (feedback, high): two feedback bodies of 48 MiB raised the server's memory by
// 1.99 GiB, because the row limit was checked after the whole body was decoded into
// `serde_json::Value`s. Now the cap is checked while parsing: past it the rest is never parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_over_the_item_cap_is_refused_while_parsing() {
    let s = std::sync::Arc::new(TestServer::start(Repo::with(&["iris"])).await);
    let item = r#"{"id":"x","label":1},"#;
    let over = format!(
        "[{}]",
        item.repeat(cairn::protocol::MAX_FEEDBACK_ROWS + 1)
            .trim_end_matches(',')
    );
    let started = Instant::now();
    let r = s.post("/v2/models/iris/feedback", over).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let msg = r.error();
    assert!(
        msg.contains("more than 100000 feedback items in one call (the limit)"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // Two bodies of 48 MiB at once, while a well-behaved client keeps inferring.
    let big = Bytes::from(format!("[{}]", item.repeat((48 << 20) / item.len())));
    let well_behaved = {
        let s = std::sync::Arc::clone(&s);
        tokio::spawn(async move {
            for _ in 0..20 {
                assert_serving(&s).await;
            }
        })
    };
    let started = Instant::now();
    let sends: Vec<_> = (0..2)
        .map(|_| {
            let (s, big) = (std::sync::Arc::clone(&s), big.clone());
            tokio::spawn(async move { s.post("/v2/models/iris/feedback", big).await })
        })
        .collect();
    for send in sends {
        let r = send.await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains("more than 100000 feedback items"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    well_behaved.await.unwrap();
    assert_serving(&s).await;
}

// Finding (feedback, medium-high): 16 calls with a 32 MiB label each kept 514 MiB, since labels
// were stored whole in the quality window. Labels and ids are bounded now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_feedback_labels_and_ids_are_refused() {
    let s = TestServer::start(Repo::with(&["iris"])).await;
    let label = predict(&s, "sized").await;
    let huge = "x".repeat(32 << 20);
    let long_label = "y".repeat(cairn::protocol::MAX_LABEL_BYTES + 1);
    let long_id = "i".repeat(cairn::request::MAX_ID_BYTES + 1);
    for (body, field) in [
        (json!([{"id": "sized", "label": huge}]), "feedback[0].label"),
        (
            json!([{"id": "sized", "label": long_label}]),
            "feedback[0].label",
        ),
        (json!([{"id": long_id, "label": label}]), "feedback[0].id"),
        (
            json!({"feedback": [{"id": "sized", "label": label}, {"id": "", "target": 1.0}]}),
            "feedback[1].id",
        ),
    ] {
        let r = s.post_json("/v2/models/iris/feedback", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let msg = r.error();
        assert!(msg.starts_with(field) && msg.contains("expected"), "{msg}");
        assert!(
            msg.len() < 512,
            "the value is not echoed: {} bytes",
            msg.len()
        );
    }
    // Nothing of a refused call was stored: the row still takes its first feedback.
    let ok = "z".repeat(cairn::protocol::MAX_LABEL_BYTES);
    let r = s
        .post_json(
            "/v2/models/iris/feedback",
            &json!([{"id": "sized", "label": ok}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    assert_eq!(r.json()["matched"], 1);
    assert_serving(&s).await;
    s.shutdown().await;
}

// Finding (auth, medium): with an admin token set, 150 inferences and one unauthenticated
// feedback call with false labels rolled the operator's canary back within 3 s. Feedback now
// needs the feedback token (or the admin token) whenever a token is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_needs_the_feedback_or_admin_token() {
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| {
        c.admin_token = Some("s3cret".into());
        c.feedback_token = Some("outcomes".into());
    })
    .await;
    let label = predict(&s, "auth-1").await;
    let body = serde_json::to_vec(&json!([{"id": "auth-1", "label": (label + 1) % 3}])).unwrap();
    let send = |auth: Option<&'static str>| {
        let (s, body) = (&s, body.clone());
        async move {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            s.request(Method::POST, "/v2/models/iris/feedback", &headers, body)
                .await
        }
    };
    let r = send(None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.error().contains("feedback token or admin token"),
        "{}",
        r.error()
    );
    assert_eq!(
        send(Some("Bearer guess")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.metric("cairn_feedback_total{model=\"iris\",outcome=\"matched\"}")
            .await,
        0.0,
        "refused feedback is not counted"
    );
    let r = send(Some("Bearer outcomes")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    assert_eq!(r.json()["matched"], 1);
    assert_eq!(send(Some("Bearer s3cret")).await.status, StatusCode::OK);
    // The feedback token is no admin token.
    let r = s
        .request(
            Method::POST,
            "/v2/repository/index",
            &[("authorization", "Bearer outcomes")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_serving(&s).await;
    s.shutdown().await;

    // With only the admin token, feedback needs it.
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| {
        c.admin_token = Some("s3cret".into());
    })
    .await;
    let r = s
        .post_json(
            "/v2/models/iris/feedback",
            &json!([{"id": "a", "label": 1}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    s.shutdown().await;
}

// Finding (management, medium): `[retrain] config = "/dev/zero"` in a model's config (the
// repository load API is open without an admin token) was read with no size limit, 2 GiB in
// 3 s, and the error told whether any path existed. Now the name must lie inside
// train_config_dir, with one answer whether an outside path exists or not, and the file must
// be a regular file of at most 1 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_configs_are_read_only_inside_the_config_dir() {
    let configs = tempfile::tempdir().unwrap();
    let dir = configs.path().to_path_buf();
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| c.training.config_dir = dir).await;
    let fifo = configs.path().join("fifo.toml");
    let made_fifo = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|st| st.success());
    std::os::unix::fs::symlink("/dev/zero", configs.path().join("zero.toml")).unwrap();
    std::fs::write(configs.path().join("big.toml"), vec![b'#'; (1 << 20) + 1]).unwrap();
    let train_with = |config: &'static str| {
        let s = &s;
        async move {
            let model = json!({"max_batch_size": 64, "retrain": {"config": config}});
            let r = upload(s, "iris", model, &[]).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            let started = Instant::now();
            let r = s.post("/v2/models/iris/train", "").await;
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{config}: slow"
            );
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{config}");
            r.error()
        }
    };
    // Outside: one message, the name given aside, whether the path exists or not.
    let mut answers = Vec::new();
    for outside in [
        "/dev/zero",
        "/etc/hostname",
        "/nonexistent/x.toml",
        "../x.toml",
    ] {
        let msg = train_with(outside).await;
        assert!(
            msg.contains("must name a file inside train_config_dir"),
            "{msg}"
        );
        answers.push(msg.replace(outside, "<given>"));
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "{answers:?}");
    // Inside: a device behind a link, a FIFO and an oversized file, refused at once.
    let mut inside = vec![
        ("zero.toml", "not a regular file"),
        ("big.toml", "larger than the limit of 1048576 bytes"),
    ];
    if made_fifo {
        inside.push(("fifo.toml", "not a regular file"));
    }
    for (name, expected) in inside {
        let msg = train_with(name).await;
        assert!(msg.contains(expected), "{name}: {msg}");
    }
    assert_serving(&s).await;
    s.shutdown().await;
}

// Finding (feedback): a feedback segment larger than the retention limit was deleted right
// after it was written, losing acknowledged feedback; and a malformed item was answered only
// "data did not match any variant of untagged enum FeedbackBody".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_feedback_outlives_a_tiny_retention_and_bad_items_are_named() {
    let s = TestServer::start_with(Repo::with(&["iris"]), |c| {
        c.monitor.segment_max_bytes = 1;
        c.monitor.retention_max_bytes = Some(1);
    })
    .await;
    for (body, expected) in [
        (
            r#"[{"id": "a", "label": 1, "colour": "red"}]"#,
            "feedback[0]: unknown field 'colour'; expected id, row, label, target, time",
        ),
        (
            r#"{"feedback": [{"id": "a", "label": 1}, {"id": "b"}]}"#,
            "feedback[1]: has neither 'label' nor 'target'",
        ),
        (r#"{"rows": []}"#, "unknown field 'rows'; expected feedback"),
    ] {
        let r = s.post("/v2/models/iris/feedback", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains(expected), "{}", r.error());
    }
    let dir = s.repo.path().join(".cairn/predictions/iris/feedback");
    for round in 0..3 {
        let id = format!("kept-{round}");
        let r = s
            .post_json("/v2/models/iris/feedback", &json!([{"id": id, "label": 1}]))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.error());
        // Answered means stored: the segment just written is on disk, sealed and kept.
        let (batches, _) = cairn_monitor::log::read_dir(&dir).unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert!(
            rows >= 1,
            "round {round}: the acknowledged feedback was deleted"
        );
    }
    assert_serving(&s).await;
    s.shutdown().await;
}
