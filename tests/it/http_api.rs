//! The KServe V2 REST API over real HTTP against the real server: every endpoint, both tensor
//! encodings and every error the protocol defines.

use crate::common;

use std::io::Write;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use common::{Repo, TestServer};

const ALL_TEST_MODELS: &[&str] = &[
    "simple",
    "simple_fp32",
    "dtypes",
    "strings",
    "fixed",
    "corrupt",
    "iris",
    "tabular-small",
    "mlp-large",
];

async fn server() -> TestServer {
    TestServer::start(Repo::with(ALL_TEST_MODELS)).await
}

fn simple_request() -> Value {
    let a: Vec<i32> = (0..16).collect();
    let b: Vec<i32> = (0..16).map(|x| 100 - x).collect();
    json!({
        "id": "req-7",
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b},
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_server_metadata() {
    let s = server().await;
    assert_eq!(s.get("/v2/health/live").await.status, StatusCode::OK);
    assert_eq!(s.get("/v2/health/ready").await.status, StatusCode::OK);
    let meta = s.get("/v2").await;
    assert_eq!(meta.status, StatusCode::OK);
    let v = meta.json();
    assert_eq!(v["name"], "cairn");
    assert!(v["version"].is_string());
    assert_eq!(
        v["extensions"],
        json!([
            "binary_tensor_data",
            "model_repository",
            "model_configuration",
            "statistics"
        ])
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_and_readiness() {
    let s = server().await;
    for path in ["/v2/models/simple", "/v2/models/simple/versions/1"] {
        let r = s.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let v = r.json();
        assert_eq!(v["name"], "simple");
        assert_eq!(v["versions"], json!(["1"]));
        assert_eq!(v["platform"], "tract_onnx");
        assert_eq!(
            v["inputs"],
            json!([
                {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
                {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
            ])
        );
        assert_eq!(
            v["outputs"][1],
            json!({"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]})
        );
        assert_eq!(s.get(&format!("{path}/ready")).await.status, StatusCode::OK);
    }
    // No config.toml: no batching, the model's own dims (variable first dim) are the shape.
    let v = s.get("/v2/models/simple_fp32").await.json();
    assert_eq!(v["inputs"][0]["shape"], json!([-1, 16]));
    let v = s.get("/v2/models/fixed").await.json();
    assert_eq!(v["inputs"][0]["shape"], json!([2, 3]));
    // Two versions served under `latest 2`, the default being the highest.
    let v = s.get("/v2/models/iris").await.json();
    assert_eq!(v["versions"], json!(["1", "2"]));

    for (path, status) in [
        ("/v2/models/nope", StatusCode::NOT_FOUND),
        ("/v2/models/nope/ready", StatusCode::NOT_FOUND),
        ("/v2/models/simple/versions/9", StatusCode::NOT_FOUND),
        ("/v2/models/simple/versions/9/ready", StatusCode::NOT_FOUND),
        ("/v2/models/simple/versions/x", StatusCode::NOT_FOUND),
        ("/v2/models/corrupt", StatusCode::SERVICE_UNAVAILABLE),
        // Readiness "false" is a 4xx in the V2 protocol (400, as Triton), with the reason.
        ("/v2/models/corrupt/ready", StatusCode::BAD_REQUEST),
        (
            "/v2/models/corrupt/versions/1/ready",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, status, "{path}");
        let msg = r.error();
        if status != StatusCode::NOT_FOUND {
            assert!(
                msg.contains("not ready") && msg.contains("cannot load model"),
                "{path}: {msg}"
            );
        }
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_inference_matches_onnxruntime_on_every_model() {
    let s = server().await;
    let expected = common::expected();
    for (rel, cases) in &expected {
        let model = rel.split('/').rev().nth(2).unwrap();
        let version = rel.split('/').rev().nth(1).unwrap();
        for (i, case) in cases.as_array().unwrap().iter().enumerate() {
            let body = common::request_from_case(case);
            let r = s
                .post_json(
                    &format!("/v2/models/{model}/versions/{version}/infer"),
                    &body,
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{rel} case {i}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let v = r.json();
            assert_eq!(v["model_name"], model);
            assert_eq!(v["model_version"], version);
            let outputs = v["outputs"].as_array().unwrap();
            let want = case["outputs"].as_object().unwrap();
            assert_eq!(outputs.len(), want.len(), "{rel}: all outputs by default");
            for out in outputs {
                let name = out["name"].as_str().unwrap();
                common::assert_tensor_close(
                    &format!("{rel} case {i} {name}"),
                    out,
                    &want[name],
                    1e-5,
                );
            }
        }
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_parameters_and_output_selection() {
    let s = server().await;
    let mut body = simple_request();
    body["parameters"] = json!({"custom": "x"});
    body["outputs"] = json!([{"name": "OUTPUT1"}]);
    let r = s.post_json("/v2/models/simple/infer", &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["id"], "req-7");
    assert_eq!(v["model_version"], "1");
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v["outputs"][0]["name"], "OUTPUT1");
    let diff: Vec<i64> = (0..16).map(|x| x - (100 - x)).collect();
    assert_eq!(v["outputs"][0]["data"], json!(diff));
    // Nested data is accepted like flat data.
    let nested = json!({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
        "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}]});
    let v = s
        .post_json("/v2/models/iris/versions/1/infer", &nested)
        .await
        .json();
    assert_eq!(v["outputs"][0]["data"], json!([0, 2]));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensor_extension() {
    let s = server().await;
    let rows = [[5.1f32, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]];
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let json_ref = s
        .post_json(
            "/v2/models/iris/versions/1/infer",
            &json!({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": flat}]}),
        )
        .await
        .json();

    // Binary input, all outputs binary.
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                    "parameters": {"binary_data_size": 32}}],
        "parameters": {"binary_data_output": true},
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&common::f32_le(&flat));
    let len = header.len().to_string();
    let r = s
        .request(
            Method::POST,
            "/v2/models/iris/versions/1/infer",
            &[
                ("Inference-Header-Content-Length", &len),
                ("Content-Type", "application/octet-stream"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let (h, tail) = common::split_binary(&r);
    assert_eq!(
        h["outputs"][0]["parameters"],
        json!({"binary_data_size": 16})
    );
    assert_eq!(
        h["outputs"][1]["parameters"],
        json!({"binary_data_size": 24})
    );
    assert!(h["outputs"][0].get("data").is_none());
    let labels: Vec<i64> = tail[..16]
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(json!(labels), json_ref["outputs"][0]["data"]);
    let probs = common::f32_from_le(&tail[16..]);
    common::assert_tensor_close(
        "binary probabilities",
        &json!({"datatype": "FP32", "shape": [2, 3], "data": probs}),
        &json_ref["outputs"][1],
        1e-7,
    );

    // Per-output choice: one binary, one JSON.
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                    "parameters": {"binary_data_size": 32}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": false}},
                    {"name": "probabilities", "parameters": {"binary_data": true}}],
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&common::f32_le(&flat));
    let len = header.len().to_string();
    let r = s
        .request(
            Method::POST,
            "/v2/models/iris/versions/1/infer",
            &[("Inference-Header-Content-Length", &len)],
            body,
        )
        .await;
    let (h, tail) = common::split_binary(&r);
    assert_eq!(h["outputs"][0]["data"], json_ref["outputs"][0]["data"]);
    assert_eq!(tail.len(), 24);

    // Raw binary form: no JSON at all, one input, batch 1, outputs binary.
    let r = s
        .request(
            Method::POST,
            "/v2/models/iris/versions/1/infer",
            &[("Inference-Header-Content-Length", "0")],
            common::f32_le(&rows[0]),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let (h, tail) = common::split_binary(&r);
    assert_eq!(h["outputs"][1]["shape"], json!([1, 3]));
    assert_eq!(tail.len(), 8 + 12);

    // BYTES in binary: 4-byte length prefixes, in and out.
    let mut data = Vec::new();
    for s in ["héllo", "", "x y"] {
        data.extend_from_slice(&(s.len() as u32).to_le_bytes());
        data.extend_from_slice(s.as_bytes());
    }
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "text", "shape": [3, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": data.len()}}],
        "outputs": [{"name": "text_out", "parameters": {"binary_data": true}}],
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&data);
    let len = header.len().to_string();
    let r = s
        .request(
            Method::POST,
            "/v2/models/strings/infer",
            &[("Inference-Header-Content-Length", &len)],
            body,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let (h, tail) = common::split_binary(&r);
    assert_eq!(h["outputs"][0]["datatype"], "BYTES");
    assert_eq!(&tail[..], &data[..]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datatype_in_json() {
    let s = server().await;
    let body = json!({"inputs": [
        {"name": "f64", "shape": [1, 3], "datatype": "FP64", "data": [1.5, -2.25, 1e300]},
        {"name": "i64", "shape": [1, 2], "datatype": "INT64", "data": [9007199254740993i64, -7]},
        {"name": "flag", "shape": [1, 2], "datatype": "BOOL", "data": [true, false]},
        {"name": "f32", "shape": [1, 4], "datatype": "FP32", "data": [1, 4, 2, 3]},
        {"name": "i32", "shape": [1, 1], "datatype": "INT32", "data": [-5]},
    ]});
    let r = s.post_json("/v2/models/dtypes/infer", &body).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    let out = |name: &str| {
        v["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no output {name}"))
            .clone()
    };
    assert_eq!(out("f64_out")["data"], json!([3.0, -4.5, 2e300]));
    assert_eq!(out("f64_out")["datatype"], "FP64");
    assert_eq!(out("i64_out")["data"], json!([9007199254741000i64, 0]));
    assert_eq!(out("flag_out")["data"], json!([false, true]));
    assert_eq!(out("f32_sum")["data"], json!([10.0]));
    assert_eq!(out("f32_argmax")["data"], json!([1]));
    assert_eq!(out("i32_out")["data"], json!([-15]));
    assert_eq!(out("i32_out")["datatype"], "INT32");
    let r = s
        .post_json(
            "/v2/models/strings/infer",
            &json!({"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": ["a", "ünï"]}]}),
        )
        .await;
    assert_eq!(r.json()["outputs"][0]["data"], json!(["a", "ünï"]));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let s = server().await;
    let infer = "/v2/models/simple/infer";
    let good = simple_request();
    let with_input0 = |input0: Value| {
        let mut b = good.clone();
        b["inputs"][0] = input0;
        b
    };
    let cases: Vec<(&str, Bytes, StatusCode, &str)> = vec![
        (
            infer,
            Bytes::from_static(b"{\"inputs\": ["),
            StatusCode::BAD_REQUEST,
            "malformed request JSON",
        ),
        (
            infer,
            Bytes::from_static(b"not json"),
            StatusCode::BAD_REQUEST,
            "malformed request JSON",
        ),
        (
            infer,
            Bytes::new(),
            StatusCode::BAD_REQUEST,
            "malformed request JSON",
        ),
        (
            infer,
            json_bytes(&with_input0(
                json!({"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": vec![1.0; 16]}),
            )),
            StatusCode::BAD_REQUEST,
            "datatype FP32 does not match the model's INT32",
        ),
        (
            infer,
            json_bytes(&with_input0(
                json!({"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": vec![1.5; 16]}),
            )),
            StatusCode::BAD_REQUEST,
            "expected INT32 elements",
        ),
        (
            infer,
            json_bytes(&with_input0(
                json!({"name": "INPUT0", "shape": [2, 8], "datatype": "INT32", "data": vec![1; 16]}),
            )),
            StatusCode::BAD_REQUEST,
            "shape [2, 8] does not match the model's [-1, 16]",
        ),
        (
            infer,
            json_bytes(&with_input0(
                json!({"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 15]}),
            )),
            StatusCode::BAD_REQUEST,
            "holds 16 elements, but 15 were given",
        ),
        (
            infer,
            json_bytes(&with_input0(
                json!({"name": "INPUT0", "shape": [9, 16], "datatype": "INT32", "data": vec![1; 144]}),
            )),
            StatusCode::BAD_REQUEST,
            "max_batch_size 8",
        ),
        (
            infer,
            json_bytes(&json!({"inputs": [good["inputs"][0]]})),
            StatusCode::BAD_REQUEST,
            "missing input 'INPUT1'",
        ),
        (
            infer,
            json_bytes(&{
                let mut b = good.clone();
                b["inputs"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "EXTRA", "shape": [1], "datatype": "INT32", "data": [1]}));
                b
            }),
            StatusCode::BAD_REQUEST,
            "unknown input 'EXTRA'",
        ),
        (
            infer,
            json_bytes(&{
                let mut b = good.clone();
                b["outputs"] = json!([{"name": "NOPE"}]);
                b
            }),
            StatusCode::BAD_REQUEST,
            "unknown output 'NOPE'",
        ),
        (
            "/v2/models/nope/infer",
            json_bytes(&good),
            StatusCode::NOT_FOUND,
            "unknown model 'nope'",
        ),
        (
            "/v2/models/simple/versions/3/infer",
            json_bytes(&good),
            StatusCode::NOT_FOUND,
            "unknown version '3'",
        ),
        (
            "/v2/models/corrupt/infer",
            json_bytes(&good),
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready",
        ),
    ];
    for (path, body, status, needle) in cases {
        let r = s.post(path, body.clone()).await;
        assert_eq!(
            r.status,
            status,
            "{path} {}",
            String::from_utf8_lossy(&body)
        );
        let msg = r.error();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }

    // Binary-extension framing errors.
    let header = br#"{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"INT32","parameters":{"binary_data_size":64}}]}"#;
    for (len, extra, needle) in [
        ("abc", 0usize, "Inference-Header-Content-Length"),
        ("100000", 0, "Inference-Header-Content-Length is 100000"),
        ("", 10, "Inference-Header-Content-Length"),
    ] {
        let len = if len.is_empty() {
            header.len().to_string()
        } else {
            len.to_string()
        };
        let mut body = header.to_vec();
        body.extend(std::iter::repeat_n(0u8, extra));
        let r = s
            .request(
                Method::POST,
                infer,
                &[("Inference-Header-Content-Length", &len)],
                body,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let msg = r.error();
        assert!(
            msg.contains(needle) || msg.contains("binary_data_size"),
            "{msg}"
        );
    }

    // Wrong method and unknown endpoints.
    let r = s.get(infer).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.error().contains("use POST"));
    let r = s.get("/v3/nothing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.error();

    // The server still answers normally after all of that.
    assert_eq!(s.post_json(infer, &good).await.status, StatusCode::OK);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let s = TestServer::start_with(Repo::with(&["simple"]), |c| c.max_body_bytes = 4096).await;
    let mut big = serde_json::to_vec(&simple_request()).unwrap();
    big.extend(std::iter::repeat_n(b' ', 5000));
    let r = s.post("/v2/models/simple/infer", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.error().contains("4096"));
    // A small gzip body that inflates past the limit is refused the same way.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 100_000]).unwrap();
    let r = s
        .request(
            Method::POST,
            "/v2/models/simple/infer",
            &[("Content-Encoding", "gzip")],
            gz.finish().unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    r.error();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_requests_are_inflated() {
    let s = TestServer::start(Repo::with(&["simple"])).await;
    let body = json_bytes(&simple_request());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let r = s
        .request(
            Method::POST,
            "/v2/models/simple/infer",
            &[("Content-Encoding", "gzip")],
            gz.finish().unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&body).unwrap();
    let r = s
        .request(
            Method::POST,
            "/v2/models/simple/infer",
            &[("Content-Encoding", "deflate")],
            z.finish().unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .request(
            Method::POST,
            "/v2/models/simple/infer",
            &[("Content-Encoding", "br")],
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    r.error();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_model_config() {
    let s = server().await;
    let v = s.get("/v2/models/iris/config").await.json();
    assert_eq!(v["name"], "iris");
    assert_eq!(v["max_batch_size"], 64);
    assert_eq!(v["input"][0]["name"], "input");
    assert_eq!(v["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(v["input"][0]["dims"], json!([4]));
    assert_eq!(v["output"][1]["dims"], json!([3]));
    assert_eq!(v["version_policy"], json!({"latest": {"num_versions": 2}}));
    assert_eq!(v["dynamic_batching"]["max_queue_delay_microseconds"], 100);
    let v = s
        .get("/v2/models/simple_fp32/versions/1/config")
        .await
        .json();
    assert_eq!(v["max_batch_size"], 0);
    assert!(v.get("dynamic_batching").is_none());
    assert_eq!(v["input"][0]["dims"], json!([-1, 16]));
    assert_eq!(
        s.get("/v2/models/nope/config").await.status,
        StatusCode::NOT_FOUND
    );
    s.shutdown().await;
}

/// `[engine]` chooses the engine; metadata and `/config` report what the engine says it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_section_is_carried_to_the_engine() {
    let repo = Repo::with(&["iris"]);
    repo.write(
        "iris/config.toml",
        b"max_batch_size = 8
instances = 2
[engine]
kind = \"tract\"
threads = 1
",
    );
    let s = TestServer::start(repo).await;
    let v = s.get("/v2/models/iris/config").await.json();
    assert_eq!(v["backend"], "tract");
    assert_eq!(v["platform"], "tract_onnx");
    assert_eq!(v["instance_group"][0]["kind"], "KIND_CPU");
    assert_eq!(v["instance_group"][0]["count"], 2);
    assert_eq!(
        s.get("/v2/models/iris").await.json()["platform"],
        "tract_onnx"
    );
    // An engine setting the engine cannot honour fails the load with the reason.
    s.repo.write(
        "iris/config.toml",
        b"max_batch_size = 8
[engine]
kind = \"tract\"
threads = 4
",
    );
    let r = s
        .post("/v2/repository/models/iris/load", Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("engine.threads"), "{}", r.error());
    s.repo.write(
        "iris/config.toml",
        b"[engine]
kind = \"gpu\"
",
    );
    let r = s
        .post("/v2/repository/models/iris/load", Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("unknown variant `gpu`"), "{}", r.error());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_index_load_and_unload() {
    let repo = Repo::with(&["simple", "corrupt"]);
    // A bad config.toml is reported with its file, key and reason, and does not stop the others.
    repo.add_as("simple", "badconfig");
    repo.write(
        "badconfig/config.toml",
        b"max_batch_size = 8\nmax_queue = 3\n",
    );
    let s = TestServer::start(repo).await;

    let index = s.post("/v2/repository/index", Bytes::new()).await.json();
    let rows = index.as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    assert_eq!(
        row("simple"),
        json!({"name": "simple", "version": "1", "state": "READY", "reason": ""})
    );
    assert_eq!(row("corrupt")["state"], "UNAVAILABLE");
    assert!(row("corrupt")["reason"]
        .as_str()
        .unwrap()
        .contains("cannot load model"));
    let reason = row("badconfig")["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("config.toml") && reason.contains("max_queue"),
        "{reason}"
    );
    let ready = s
        .post_json("/v2/repository/index", &json!({"ready": true}))
        .await
        .json();
    assert_eq!(ready.as_array().unwrap().len(), 1);

    // Unload: not ready, infer refused, index says so.
    assert_eq!(
        s.post("/v2/repository/models/simple/unload", Bytes::new())
            .await
            .status,
        StatusCode::OK
    );
    let r = s.get("/v2/models/simple/ready").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("unloaded"), "{}", r.error());
    let r = s
        .post_json("/v2/models/simple/infer", &simple_request())
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.error().contains("unloaded"));
    let index = s.post("/v2/repository/index", Bytes::new()).await.json();
    let simple = index
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "simple")
        .unwrap()
        .clone();
    assert_eq!(simple["state"], "UNAVAILABLE");

    // Load again: serving.
    assert_eq!(
        s.post("/v2/repository/models/simple/load", Bytes::new())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        s.post_json("/v2/models/simple/infer", &simple_request())
            .await
            .status,
        StatusCode::OK
    );

    // A fixed config is picked up by an explicit load.
    s.repo
        .write("badconfig/config.toml", b"max_batch_size = 8\n");
    assert_eq!(
        s.post("/v2/repository/models/badconfig/load", Bytes::new())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        s.get("/v2/models/badconfig/ready").await.status,
        StatusCode::OK
    );

    // Errors.
    let r = s
        .post("/v2/repository/models/absent/load", Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.error();
    let r = s
        .post("/v2/repository/models/corrupt/load", Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("cannot load model"));
    let r = s
        .post(
            "/v2/repository/models/simple/load",
            Bytes::from_static(b"{oops"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    r.error();
    let r = s
        .post("/v2/repository/models/absent/unload", Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_with_config_and_file_parameters() {
    use base64::Engine as _;
    let s = TestServer::start(Repo::with(&["simple"])).await;
    let onnx = std::fs::read(common::root().join("tests/models/simple/1/model.onnx")).unwrap();
    let body = json!({"parameters": {
        "config": "{\"max_batch_size\": 4}",
        "file:5/model.onnx": base64::engine::general_purpose::STANDARD.encode(&onnx),
    }});
    let r = s
        .post_json("/v2/repository/models/uploaded/load", &body)
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = s.get("/v2/models/uploaded").await.json();
    assert_eq!(v["versions"], json!(["5"]));
    let r = s
        .post_json("/v2/models/uploaded/versions/5/infer", &simple_request())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Files without a config, bad base64 and escaping paths are refused.
    for (params, needle) in [
        (
            json!({"file:1/model.onnx": "AAAA"}),
            "needs the 'config' parameter",
        ),
        (
            json!({"config": "{}", "file:1/model.onnx": "***"}),
            "not base64",
        ),
        (
            json!({"config": "{}", "file:../x": "AAAA"}),
            "relative path",
        ),
        (json!({"config": "{\"bogus\": 1}"}), "unknown field"),
    ] {
        let r = s
            .post_json(
                "/v2/repository/models/other/load",
                &json!({"parameters": params}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{params}");
        let msg = r.error();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_served() {
    let s = TestServer::start(Repo::with(&["simple"])).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let req = http::Request::post(format!("{}/v2/models/simple/infer", s.base))
        .body(http_body_util::Full::new(json_bytes(&simple_request())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    s.shutdown().await;
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap())
}

/// While draining, readiness is the protocol's "false" (400 with the reason) and the answer tells
/// an HTTP/1.1 client to close. The drain closes a connection idle for half a second; on a
/// loaded machine the client can be starved that long between two requests, so an attempt
/// whose connection closed before any 400 is made again (three at most).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_400_while_shutting_down() {
    for attempt in 0..3 {
        if let Some(text) = readiness_while_draining().await {
            assert!(text.starts_with("http/1.1 400"), "{text}");
            assert!(text.contains("connection: close"), "{text}");
            assert!(text.contains("shutting down"), "{text}");
            return;
        }
        eprintln!("attempt {attempt}: the connection closed before a 400; again");
    }
    panic!("no attempt saw readiness answer 400 while draining");
}

/// The first non-200 readiness answer during a drain, lower-cased; `None` when the connection
/// closed first.
async fn readiness_while_draining() -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TestServer::start(Repo::with(&["simple"])).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let server = s.server.take().unwrap();
    let stopping = tokio::spawn(server.shutdown());
    let mut answer = None;
    for _ in 0..200 {
        if conn
            .write_all(b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .is_err()
        {
            break;
        }
        let n = match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !buf[..n].starts_with(b"HTTP/1.1 200") {
            answer = Some(String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase());
            break;
        }
    }
    stopping.await.unwrap();
    answer
}

/// After shutdown nothing keeps the loaded versions alive: the evaluator and the poller stop
/// with the server, so the router, every version, its engine threads and memory are freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_frees_every_loaded_version() {
    let mut s = TestServer::start_with(Repo::with(&["iris"]), |c| {
        c.repository_poll_interval = Some(std::time::Duration::from_secs(1));
    })
    .await;
    let r = s.post_json("/v2/models/iris/infer", &iris_body()).await;
    assert_eq!(r.status, StatusCode::OK);
    let server = s.server.take().unwrap();
    let router = std::sync::Arc::downgrade(&server.state.router);
    let versions: Vec<_> = server.state.router.snapshot().models["iris"]
        .versions
        .values()
        .map(std::sync::Arc::downgrade)
        .collect();
    assert_eq!(versions.len(), 2);
    server.shutdown().await;
    for _ in 0..1000 {
        if router.upgrade().is_none() && versions.iter().all(|v| v.upgrade().is_none()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the router or a loaded version outlived the server");
}

fn iris_body() -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})
}
