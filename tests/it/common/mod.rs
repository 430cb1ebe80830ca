//! Shared test helpers: a real server on a free loopback port, an HTTP client, temporary
//! repositories built from the committed test models, and the reference outputs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use cairn::config::ServerConfig;
use cairn::server::RunningServer;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The onnxruntime library the tests use: `ORT_DYLIB_PATH`, else the one the onnxruntime wheel
/// installed into `.venv` (as `.ci/run` makes it). Named to the engine once; `None` when there
/// is none, and then a test of the ort engine says it is skipped, unless `CAIRN_REQUIRE_ORT` is
/// set (CI), where it fails.
pub fn ort_library() -> Option<PathBuf> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let found = std::env::var_os("ORT_DYLIB_PATH")
                .map(PathBuf::from)
                .or_else(|| {
                    let lib = root().join(".venv/lib");
                    std::fs::read_dir(&lib).ok()?.flatten().find_map(|py| {
                        let capi = py.path().join("site-packages/onnxruntime/capi");
                        std::fs::read_dir(capi)
                            .ok()?
                            .flatten()
                            .map(|e| e.path())
                            .find(|p| {
                                p.file_name()
                                    .and_then(|n| n.to_str())
                                    .is_some_and(|n| n.starts_with("libonnxruntime.so."))
                            })
                    })
                });
            if let Some(path) = &found {
                cairn::engine::set_onnxruntime_library(path.clone());
            }
            if found.is_none() && std::env::var_os("CAIRN_REQUIRE_ORT").is_some() {
                panic!("CAIRN_REQUIRE_ORT is set but no onnxruntime library was found");
            }
            found
        })
        .clone()
}

/// A temporary repository holding copies of the named models. A name is looked up in
/// `tests/models/` first, then in `models/`.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn with(models: &[&str]) -> Repo {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in models {
            let src = [
                root().join("tests/models").join(name),
                root().join("models").join(name),
            ]
            .into_iter()
            .find(|p| p.is_dir())
            .unwrap_or_else(|| panic!("no test model {name}"));
            copy_dir(&src, &dir.path().join(name));
        }
        Repo { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies a model directory in under another name.
    pub fn add_as(&self, source: &str, name: &str) {
        let src = [
            root().join("tests/models").join(source),
            root().join("models").join(source),
        ]
        .into_iter()
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no test model {source}"));
        copy_dir(&src, &self.path().join(name));
    }

    pub fn write(&self, rel: &str, content: &[u8]) {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else if entry.file_name() != "generate.py" {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
}

/// The real server, in this process, on a free port.
/// The longest any test waits for one answer; far beyond what any request here takes.
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub base: String,
    pub client: Client<HttpConnector, Full<Bytes>>,
    pub repo: Repo,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `error` message of an error reply, checking the shape `{"error": "..."}`.
    pub fn error(&self) -> String {
        let v = self.json();
        let obj = v.as_object().expect("error body is an object");
        assert_eq!(obj.len(), 1, "error body has only 'error': {v}");
        obj["error"]
            .as_str()
            .expect("error is a string")
            .to_string()
    }
}

impl TestServer {
    pub async fn start(repo: Repo) -> TestServer {
        Self::start_with(repo, |_| {}).await
    }

    pub async fn start_with(repo: Repo, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        // Loads go through the checked load in a child process, as in the real binary.
        let mut config = ServerConfig::for_repository(repo.path())
            .with_load_check(PathBuf::from(env!("CARGO_BIN_EXE_cairn")));
        tweak(&mut config);
        let server = RunningServer::start(config).await.expect("server starts");
        tokio::time::timeout(Duration::from_secs(120), server.wait_ready())
            .await
            .expect("server becomes ready");
        let base = format!("http://{}", server.addr);
        TestServer {
            server: Some(server),
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
            repo,
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        // A server that never answers fails the test with the request named, instead of
        // hanging it.
        let answer = async {
            let resp = self.client.request(req).await.expect("request is answered");
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, headers, body)
        };
        let (status, headers, body) = tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .unwrap_or_else(|_| panic!("no answer to {path} within {ANSWER_TIMEOUT:?}"));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.request(Method::POST, path, &[], body).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post(path, serde_json::to_vec(body).unwrap()).await
    }

    /// Scrapes one series' value from `/metrics`; 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = String::from_utf8(self.get("/metrics").await.body.to_vec()).unwrap();
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Shuts the server down and keeps its repository (and state directory) for inspection.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// Reference cases from `tests/models/expected.json` (onnxruntime's outputs).
pub fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(root().join("tests/models/expected.json")).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

/// Asserts two V2 tensors (datatype, shape, flat data) are equal, floats within `tol`.
pub fn assert_tensor_close(name: &str, got: &Value, want: &Value, tol: f64) {
    assert_eq!(got["datatype"], want["datatype"], "{name}: datatype");
    assert_eq!(got["shape"], want["shape"], "{name}: shape");
    let g = flatten(&got["data"]);
    let w = flatten(&want["data"]);
    assert_eq!(g.len(), w.len(), "{name}: element count");
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{name}[{i}]: got {x}, want {y}"
            ),
            _ => assert_eq!(a, b, "{name}[{i}]"),
        }
    }
}

pub fn flatten(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.iter().flat_map(flatten).collect(),
        other => vec![other.clone()],
    }
}

/// A V2 request body from an expected case's inputs.
pub fn request_from_case(case: &Value) -> Value {
    let inputs: Vec<Value> = case["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| {
            serde_json::json!({"name": name, "datatype": t["datatype"], "shape": t["shape"], "data": t["data"]})
        })
        .collect();
    serde_json::json!({ "inputs": inputs })
}

/// Splits a binary-extension body into its JSON header and binary tail.
pub fn split_binary(reply: &Reply) -> (Value, Bytes) {
    let len: usize = reply
        .headers
        .get("inference-header-content-length")
        .expect("binary reply has Inference-Header-Content-Length")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let header = serde_json::from_slice(&reply.body[..len]).unwrap();
    (header, reply.body.slice(len..))
}

pub fn f32_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
