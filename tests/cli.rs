//! The `cairn` binary as a user runs it: settings from file, flags and environment, the first
//! log line with the chosen address, and graceful shutdown on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use common::Repo;

struct Spawned {
    child: Child,
    base: String,
    stderr: std::sync::mpsc::Receiver<String>,
}

/// Starts the binary and reads its first log line, which must carry the address.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> Spawned {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a first log line");
    let plain = strip_ansi(&first);
    let addr = plain
        .split("listening on http://")
        .nth(1)
        .unwrap_or_else(|| panic!("first log line names the address: {plain}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    Spawned {
        child,
        base: format!("http://{addr}"),
        stderr: rx,
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn get_status(base: &str, path: &str) -> StatusCode {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("{base}{path}").parse().unwrap();
    client
        .get(uri)
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

async fn wait_ready(base: &str) {
    for _ in 0..1200 {
        if get_status(base, "/v2/health/ready").await == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server never became ready");
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_zero_prints_the_address_and_sigterm_exits_cleanly() {
    let repo = Repo::with(&["simple"]);
    let config = common::root().join("configs/server.toml");
    let mut s = spawn(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--model-repository",
            repo.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(get_status(&s.base, "/v2/health/live").await, StatusCode::OK);
    wait_ready(&s.base).await;
    assert_eq!(
        get_status(&s.base, "/v2/models/simple/ready").await,
        StatusCode::OK
    );
    sigterm(&s.child);
    let status = tokio::task::spawn_blocking(move || s.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_sets_what_flags_do_not() {
    let repo = Repo::with(&["simple"]);
    let mut s = spawn(
        &["serve"],
        &[
            ("CAIRN_LISTEN", "127.0.0.1:0"),
            ("CAIRN_MODEL_REPOSITORY", repo.path().to_str().unwrap()),
        ],
    );
    wait_ready(&s.base).await;
    assert_eq!(
        get_status(&s.base, "/v2/models/simple/ready").await,
        StatusCode::OK
    );
    s.child.kill().unwrap();
    let _ = s.child.wait();
}

#[test]
fn an_explicit_settings_file_must_exist() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--config", "/nonexistent/server.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/server.toml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn a_bad_settings_file_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nmax_body = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.toml") && stderr.contains("max_body"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_after_sigterm() {
    // One engine worker and big batches: a few hundred requests take a while to drain.
    let repo = Repo::with(&["mlp-large"]);
    repo.write(
        "mlp-large/config.toml",
        b"max_batch_size = 64\ninstances = 1\n",
    );
    let mut s = spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--model-repository",
            repo.path().to_str().unwrap(),
        ],
        &[],
    );
    wait_ready(&s.base).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let rows = 64;
    let body = serde_json::to_vec(
        &serde_json::json!({"inputs": [{"name": "input", "shape": [rows, 256],
        "datatype": "FP32", "data": vec![0.5f32; rows * 256]}]}),
    )
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = client.clone();
        let req = http::Request::post(format!("{}/v2/models/mlp-large/infer", s.base))
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let resp = client.request(req).await?;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        }));
    }
    // Once every request has reached the server (answered or pending), ask it to stop.
    let mut seen = 0.0;
    let mut pending = 0.0;
    for _ in 0..2000 {
        let uri = format!("{}/metrics", s.base).parse().unwrap();
        let text = match client.get(uri).await {
            Ok(resp) => String::from_utf8(
                resp.into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
            .unwrap(),
            Err(_) => String::new(),
        };
        let value = |metric: &str| {
            text.lines()
                .find(|l| l.starts_with(metric))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        pending = value("cairn_pending_requests{");
        seen = value("cairn_request_success_total{") + pending;
        if seen >= 200.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen, 200.0, "all requests reached the server");
    assert!(
        pending > 0.0,
        "requests are still in flight when the signal is sent"
    );
    sigterm(&s.child);
    let mut ok = 0;
    for t in tasks {
        if let Ok(Ok(status)) = t.await {
            assert_eq!(status, StatusCode::OK);
            ok += 1;
        }
    }
    assert_eq!(ok, 200, "every in-flight request is answered");
    let status = tokio::task::spawn_blocking(move || s.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let log: Vec<String> = s.stderr.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("shutdown signal received")),
        "{log:?}"
    );
}
