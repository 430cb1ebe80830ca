//! The `cairn` binary as a user runs it: settings from file, flags and environment, the first
//! log line with the chosen address, and graceful shutdown on SIGTERM.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use common::Repo;

pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) stderr: std::sync::mpsc::Receiver<String>,
}

/// Starts the binary and reads its first log line, which must carry the address.
pub(crate) fn spawn(args: &[&str], env: &[(&str, &str)]) -> Spawned {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(args);
    spawn_command(cmd, env)
}

/// As [`spawn`], for a command line of the caller's (a shell that sets limits first).
fn spawn_command(mut cmd: Command, env: &[(&str, &str)]) -> Spawned {
    cmd.env("RUST_LOG", "info")
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
    let first = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let plain = strip_ansi(&first);
    let Some(addr) = plain
        .split("listening on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
    else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the first log line names the address: {plain:?}");
    };
    Spawned {
        child,
        base: format!("http://{addr}"),
        stderr: rx,
    }
}

impl Drop for Spawned {
    /// A test that fails halfway leaves no server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

pub(crate) async fn wait_ready(base: &str) {
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
    let status = tokio::task::block_in_place(|| s.child.wait()).unwrap();
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
    for args in [
        &["serve", "--config", "/nonexistent/server.toml"][..],
        &["serve", "--config=/nonexistent/server.toml"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("/nonexistent/server.toml: cannot read"),
            "{args:?}: {stderr}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve"])
        .env("CAIRN_CONFIG", "/nonexistent/server.toml")
        .output()
        .unwrap();
    assert!(!out.status.success());
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
    // A scrape reads the counter and the gauge one after the other, so a request finishing
    // between the two reads is counted in both: the sum can overshoot, never undershoot.
    assert!(seen >= 200.0, "all requests reached the server: {seen}");
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
    let status = tokio::task::block_in_place(|| s.child.wait()).unwrap();
    assert!(status.success());
    let log: Vec<String> = s.stderr.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("shutdown signal received")),
        "{log:?}"
    );
}

/// One request to the `simple` test model.
const SIMPLE_REQUEST: &[u8] = br#"{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"INT32","data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]},{"name":"INPUT1","shape":[1,16],"datatype":"INT32","data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}]}"#;

/// Sends back-to-back requests on one keep-alive connection until a response says
/// `Connection: close`. Returns (requests written, responses read, ended cleanly).
async fn keep_alive_loop(addr: String, request: Vec<u8>) -> (usize, usize, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut written, mut answered) = (0, 0);
    let mut buf = Vec::new();
    loop {
        if stream.write_all(&request).await.is_err() {
            return (written, answered, false);
        }
        written += 1;
        // Read one response: the head, then content-length bytes.
        buf.clear();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return (written, answered, false),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return (written, answered, false),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        answered += 1;
        if head.contains("connection: close") {
            return (written, answered, true);
        }
    }
}

// A request written on a keep-alive connection at the moment of SIGTERM is answered, never
// closed without a response: while draining, responses carry `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_written_at_sigterm_are_answered() {
    let repo = Repo::with(&["simple"]);
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
    let addr = s.base.trim_start_matches("http://").to_string();
    let body = SIMPLE_REQUEST;
    let mut request = format!(
        "POST /v2/models/simple/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let loops: Vec<_> = (0..16)
        .map(|_| tokio::spawn(keep_alive_loop(addr.clone(), request.clone())))
        .collect();
    // Let every connection get going, then stop the server under their feet.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..2000 {
        let uri = format!("{}/metrics", s.base).parse().unwrap();
        let done = match client.get(uri).await {
            Ok(resp) => {
                let text = resp.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8_lossy(&text)
                    .lines()
                    .find(|l| l.starts_with("cairn_request_success_total{"))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .unwrap_or(0.0)
            }
            Err(_) => 0.0,
        };
        if done >= 2000.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sigterm(&s.child);
    let mut total = 0;
    for l in loops {
        let (written, answered, clean) = l.await.unwrap();
        assert!(
            clean && written == answered,
            "{written} written, {answered} answered, ended with Connection: close: {clean}"
        );
        total += answered;
    }
    assert!(total > 2000, "{total}");
    let status = tokio::task::block_in_place(|| s.child.wait()).unwrap();
    assert!(status.success());
}

// With a low open-file limit, extra connections are refused with 503 (no `accept failed`
// flood), and new clients are served once the crowd leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_file_limit_refuses_connections_without_a_log_flood() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let repo = Repo::with(&["simple"]);
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "ulimit -n 128 && exec '{}' serve --listen 127.0.0.1:0 --model-repository '{}'",
        env!("CARGO_BIN_EXE_cairn"),
        repo.path().display()
    ));
    let mut s = spawn_command(cmd, &[]);
    wait_ready(&s.base).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut crowd = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let Ok(mut c) = tokio::net::TcpStream::connect(&addr).await else {
            continue;
        };
        let mut buf = [0u8; 64];
        // A refused connection is answered at once; an accepted one says nothing until asked.
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await {
            if buf[..n].starts_with(b"HTTP/1.1 503") {
                refused += 1;
            }
        }
        crowd.push(c);
    }
    assert!(refused > 100, "{refused} refused");
    drop(crowd);
    let mut served = false;
    for _ in 0..200 {
        if let Ok(mut c) = tokio::net::TcpStream::connect(&addr).await {
            let _ = c
                .write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
            if out.starts_with(b"HTTP/1.1 200") {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a new client is served after the crowd left");
    s.child.kill().unwrap();
    let _ = s.child.wait();
    let log: Vec<String> = s.stderr.try_iter().collect();
    let accept_failures = log.iter().filter(|l| l.contains("accept failed")).count();
    let refusals = log
        .iter()
        .filter(|l| l.contains("connection refused"))
        .count();
    assert_eq!(accept_failures, 0, "{log:?}");
    assert!(
        refusals <= 2,
        "refusals are logged at most once per period: {log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("max_connections lowered")),
        "{log:?}"
    );
}

// `--protect-inference` is a plain flag, and the token can come from a file, out of the
// process list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_inference_is_a_flag_and_the_token_comes_from_a_file() {
    let repo = Repo::with(&["simple"]);
    let token_file = repo.path().join("token");
    std::fs::write(&token_file, "file-s3cret\n").unwrap();
    let mut s = spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--model-repository",
            repo.path().to_str().unwrap(),
            "--protect-inference",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    );
    wait_ready(&s.base).await;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", s.child.id())).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&cmdline).contains("file-s3cret"));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let body = SIMPLE_REQUEST;
    for (auth, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer file-s3cret"), StatusCode::OK),
    ] {
        let mut req = http::Request::post(format!("{}/v2/models/simple/infer", s.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = client
            .request(req.body(Full::new(Bytes::from_static(body))).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), status);
    }
    s.child.kill().unwrap();
    let _ = s.child.wait();

    // A token on the command line works, with a warning that it is visible.
    let mut s = spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--model-repository",
            repo.path().to_str().unwrap(),
            "--admin-token",
            "flag-s3cret",
        ],
        &[],
    );
    wait_ready(&s.base).await;
    s.child.kill().unwrap();
    let _ = s.child.wait();
    let log: Vec<String> = s.stderr.try_iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains("visible to every local user")),
        "{log:?}"
    );
}

#[test]
fn selftest_without_a_gpu_says_what_is_missing_and_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["selftest"])
        .current_dir(common::root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if cairn_engine_cuda::available() {
        // A GPU host: the shipped models must pass.
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("cuda fp32"), "{stdout}");
    } else {
        assert_eq!(out.status.code(), Some(2), "{stdout}");
        assert!(
            stdout.starts_with("no GPU to test: not found: libcuda"),
            "{stdout}"
        );
    }
}
