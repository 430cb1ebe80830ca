//! Engine selection in the running binary: a model that asks for onnxruntime is served by it
//! (metadata and `/config` say so), and a missing library fails that model alone, with the
//! reason, or falls back to tract when its config allows.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::cli::{spawn, wait_ready};
use crate::common::{self, Repo};

async fn get(base: &str, path: &str) -> (u16, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let res = client
        .get(format!("{base}{path}").parse().unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn with_engine(repo: &Repo, model: &str, engine: &str) {
    let path = repo.path().join(model).join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, format!("{text}\n[engine]\n{engine}\n")).unwrap();
}

/// The binary serving `repo` with `library` as its onnxruntime library, ready.
async fn serve(repo: &Repo, state: &std::path::Path, library: &str) -> crate::cli::Spawned {
    let server = spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--model-repository",
            repo.path().to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--onnxruntime-library",
            library,
        ],
        &[],
    );
    wait_ready(&server.base).await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_onnxruntime_fails_that_model_only_or_falls_back() {
    let repo = Repo::with(&["tabular-small"]);
    repo.add_as("tabular-small", "on-ort");
    repo.add_as("tabular-small", "may-fall-back");
    with_engine(&repo, "on-ort", "kind = \"ort\"");
    with_engine(&repo, "may-fall-back", "kind = \"ort\"\nfallback = \"cpu\"");
    let state = tempfile::tempdir().unwrap();
    let server = serve(&repo, state.path(), "/nonexistent/libonnxruntime.so.1").await;
    let (status, _) = get(&server.base, "/v2/models/tabular-small/ready").await;
    assert_eq!(status, 200, "a model on tract serves");
    let (status, body) = get(&server.base, "/v2/models/on-ort/ready").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/libonnxruntime.so.1"),
        "the reason names the library: {body}"
    );
    let (status, config) = get(&server.base, "/v2/models/may-fall-back/config").await;
    assert_eq!(status, 200);
    assert_eq!(config["backend"], "tract", "{config}");
    let mut fallbacks = 0.0;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..50 {
        let res = client
            .get(format!("{}/metrics", server.base).parse().unwrap())
            .await
            .unwrap();
        let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec())
            .unwrap();
        fallbacks = text
            .lines()
            .find(|l| {
                l.starts_with(
                    "cairn_engine_fallbacks_total{engine=\"ort\",model=\"may-fall-back\"}",
                )
            })
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0.0);
        if fallbacks > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fallbacks, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_on_onnxruntime_says_so_and_answers_as_tract_does() {
    let Some(library) = common::ort_library() else {
        eprintln!("skipped: no onnxruntime library");
        return;
    };
    let repo = Repo::with(&["iris"]);
    repo.add_as("iris", "iris-ort");
    with_engine(&repo, "iris-ort", "kind = \"ort\"");
    let state = tempfile::tempdir().unwrap();
    let server = serve(&repo, state.path(), library.to_str().unwrap()).await;
    let (_, meta) = get(&server.base, "/v2/models/iris-ort").await;
    assert_eq!(meta["platform"], "onnxruntime_onnx", "{meta}");
    let (_, config) = get(&server.base, "/v2/models/iris-ort/config").await;
    assert_eq!(config["backend"], "onnxruntime", "{config}");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let body = r#"{"inputs":[{"name":"input","shape":[3,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2,6.2,2.9,4.3,1.3,7.7,3.0,6.1,2.3]}]}"#;
    let mut answers = Vec::new();
    for model in ["iris", "iris-ort"] {
        let req = http::Request::post(format!("{}/v2/models/{model}/infer", server.base))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = client.request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let v: Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        answers.push(v["outputs"].clone());
    }
    let probs = |a: &Value| -> Vec<f64> {
        a.as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "probabilities")
            .unwrap()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    for (a, b) in probs(&answers[0]).iter().zip(probs(&answers[1])) {
        assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
    }
    let label = |a: &Value| {
        a.as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "label")
            .unwrap()["data"]
            .clone()
    };
    assert_eq!(label(&answers[0]), label(&answers[1]));
}
