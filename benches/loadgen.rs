//! A lean closed-loop HTTP load generator, and the in-process engine floor.
//!
//! Run through `benches/load/run.py`, or by hand:
//!
//! ```text
//! cargo bench --bench loadgen -- http --url http://127.0.0.1:8000/v2/models/m/infer \
//!     --body req.json [--header-len N] --concurrency 64 --duration 10 --warmup 2
//! cargo bench --bench loadgen -- http --grpc --url http://127.0.0.1:8001 \
//!     --body model_infer_request.pb --concurrency 64 --duration 10 --warmup 2
//! cargo bench --bench loadgen -- floor --model models/mlp-large/1/model.onnx --width 256 \
//!     --batch 64 --threads 2 --duration 5 [--engine tract|ort|cuda|auto]
//! ```
//!
//! `http` keeps `concurrency` HTTP/1.1 keep-alive connections busy from one thread (so its CPU
//! cost is one process's, reported beside the figures) and records every latency. With `--grpc`
//! the body is a serialized `ModelInferRequest`, sent as `ModelInfer` calls multiplexed on one
//! HTTP/2 connection (as tritonclient's and perf_analyzer's gRPC clients do), and a call counts
//! as a success when its `grpc-status` is 0. `floor` runs
//! the server's own engine with no HTTP at all: the ceiling a served figure is read against.
//! Both print one JSON object.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(mode) = args.first() else {
        eprintln!("usage: loadgen http|floor [options]");
        std::process::exit(2);
    };
    let opt = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let num = |name: &str, default: f64| -> f64 {
        opt(name).map_or(default, |v| v.parse().expect("a number"))
    };
    match mode.as_str() {
        "http" => {
            let load = HttpLoad {
                url: opt("--url").expect("--url"),
                body: Bytes::from(
                    std::fs::read(opt("--body").expect("--body")).expect("readable body file"),
                ),
                header_len: opt("--header-len"),
                grpc: args.iter().any(|a| a == "--grpc"),
                // Counts any answer as a success: measures the HTTP floor on an endpoint that
                // refuses the body (a 405 costs the server no model work).
                any_status: args.iter().any(|a| a == "--any-status"),
                // Ends the measurement early once this file exists (for runs as long as a
                // script's other work, such as the soak's swaps).
                until_file: opt("--until-file").map(PathBuf::from),
                concurrency: num("--concurrency", 1.0) as usize,
                warmup: Duration::from_secs_f64(num("--warmup", 2.0)),
                duration: Duration::from_secs_f64(num("--duration", 10.0)),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            println!("{}", runtime.block_on(local.run_until(http_load(load))));
        }
        "floor" => {
            let model = PathBuf::from(opt("--model").expect("--model"));
            let width = num("--width", 32.0) as usize;
            let batch = num("--batch", 1.0) as usize;
            let threads = num("--threads", 1.0) as usize;
            let duration = Duration::from_secs_f64(num("--duration", 5.0));
            let kind = match opt("--engine").as_deref().unwrap_or("tract") {
                "tract" => cairn::config::EngineKind::Tract,
                "ort" => cairn::config::EngineKind::Ort,
                "cuda" => cairn::config::EngineKind::Cuda,
                "auto" => cairn::config::EngineKind::Auto,
                other => {
                    eprintln!("unknown engine {other} (tract, ort, cuda, auto)");
                    std::process::exit(2);
                }
            };
            println!("{}", floor(&model, kind, width, batch, threads, duration));
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}

/// One closed-loop HTTP run.
struct HttpLoad {
    url: String,
    body: Bytes,
    header_len: Option<String>,
    grpc: bool,
    any_status: bool,
    until_file: Option<PathBuf>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
}

async fn http_load(load: HttpLoad) -> serde_json::Value {
    let HttpLoad {
        url,
        body,
        header_len,
        grpc,
        any_status,
        until_file,
        concurrency,
        warmup,
        duration,
    } = load;
    let full: http::Uri = url.parse().expect("a URL");
    let authority = full.authority().expect("host:port").to_string();
    // Requests carry the origin form (`/v2/...`) with a Host header, as browsers and curl send
    // them; some servers refuse the absolute form.
    let uri: http::Uri = if grpc {
        "/inference.GRPCInferenceService/ModelInfer"
            .parse()
            .unwrap()
    } else {
        full.path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .expect("a path")
    };
    // gRPC's length-prefixed message: not compressed, then the length, big-endian.
    let body = if grpc {
        let mut framed = Vec::with_capacity(5 + body.len());
        framed.push(0);
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        Bytes::from(framed)
    } else {
        body
    };
    let h2 = if grpc {
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("HTTP/2 handshake");
        tokio::task::spawn_local(conn);
        Some(sender)
    } else {
        None
    };
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let stopped = std::rc::Rc::new(std::cell::Cell::new(None::<Instant>));
    if let Some(path) = until_file {
        let stopped = stopped.clone();
        tokio::task::spawn_local(async move {
            while !path.exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stopped.set(Some(Instant::now()));
        });
    }
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let uri = uri.clone();
        let authority = authority.clone();
        let body = body.clone();
        let header_len = header_len.clone();
        let stopped = stopped.clone();
        let h2 = h2.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut sender = match h2 {
                Some(h2) => Sender::Two(h2),
                None => {
                    let stream = tokio::net::TcpStream::connect(&authority)
                        .await
                        .expect("connect");
                    stream.set_nodelay(true).unwrap();
                    let (sender, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                            .expect("handshake");
                    tokio::task::spawn_local(conn);
                    Sender::One(sender)
                }
            };
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= stop_at || stopped.get().is_some() {
                    break;
                }
                let mut req = http::Request::post(uri.clone());
                if grpc {
                    req = req
                        .uri(format!("http://{authority}{uri}"))
                        .header(http::header::CONTENT_TYPE, "application/grpc")
                        .header(http::header::TE, "trailers");
                } else {
                    req = req
                        .header(http::header::HOST, authority.as_str())
                        .header(http::header::CONTENT_TYPE, "application/json");
                }
                if let Some(len) = &header_len {
                    req = req.header("Inference-Header-Content-Length", len.as_str());
                }
                let req = req.body(Full::new(body.clone())).unwrap();
                if sender.ready().await.is_err() {
                    errors += 1;
                    break;
                }
                let ok = match sender.send(req).await {
                    Ok(resp) => {
                        let good = any_status || resp.status().is_success();
                        match resp.into_body().collect().await {
                            Ok(collected) if grpc => {
                                good && collected
                                    .trailers()
                                    .is_some_and(|t| t.get("grpc-status").is_some_and(|s| s == "0"))
                            }
                            Ok(_) => good,
                            Err(_) => false,
                        }
                    }
                    Err(_) => false,
                };
                if sent >= measure_from {
                    if ok {
                        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_warm = process_cpu_seconds();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        latencies.extend(l);
        errors += e;
    }
    let cpu = process_cpu_seconds() - cpu_warm;
    let duration = stopped
        .get()
        .map_or(duration, |at| at.saturating_duration_since(measure_from));
    latencies.sort_unstable();
    let n = latencies.len();
    let pct = |p: f64| -> u32 {
        if n == 0 {
            0
        } else {
            latencies[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
        }
    };
    let seconds = duration.as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    serde_json::json!({
        "requests": n,
        "errors": errors,
        "seconds": seconds,
        "rps": n as f64 / seconds,
        "mean_us": if n == 0 { 0.0 } else { latencies.iter().map(|&l| l as f64).sum::<f64>() / n as f64 },
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": latencies.last().copied().unwrap_or(0),
        "client_cpu_seconds": cpu,
        "client_cpu_share": cpu / (seconds * cores),
        "client_cpu_us_per_request": if n == 0 { 0.0 } else { cpu * 1e6 / n as f64 },
    })
}

/// An HTTP/1.1 connection of the task's own, or its share of the HTTP/2 connection.
enum Sender {
    One(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Two(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::One(s) => s.ready().await,
            Sender::Two(s) => s.ready().await,
        }
    }

    async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        match self {
            Sender::One(s) => s.send_request(req).await,
            Sender::Two(s) => s.send_request(req).await,
        }
    }
}

fn floor(
    model: &std::path::Path,
    kind: cairn::config::EngineKind,
    width: usize,
    batch: usize,
    threads: usize,
    duration: Duration,
) -> serde_json::Value {
    use cairn::engine::{self, BatchInput, LoadOptions};
    use cairn::tensor::Tensor;
    let engine = engine::load(
        model,
        &LoadOptions {
            kind,
            batch_dim: true,
            max_batch: batch,
            ..LoadOptions::default()
        },
    )
    .expect("model loads");
    let values: Vec<f32> = (0..batch * width)
        .map(|i| ((i as f32) * 0.618).sin())
        .collect();
    let input = Tensor::from_values(vec![batch, width], &values).unwrap();
    let stop = Instant::now() + duration;
    let results: Vec<(u64, Vec<u32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let engine = engine.clone();
                let input = &input;
                scope.spawn(move || {
                    let mut session = engine.new_session().unwrap();
                    let mut calls = 0u64;
                    let mut times = Vec::new();
                    while Instant::now() < stop {
                        let t = Instant::now();
                        session
                            .set_inputs(&[BatchInput {
                                shape: input.shape.clone(),
                                parts: vec![input],
                            }])
                            .unwrap();
                        std::hint::black_box(session.run().unwrap());
                        times.push(t.elapsed().as_nanos() as u32);
                        calls += 1;
                    }
                    (calls, times)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let calls: u64 = results.iter().map(|r| r.0).sum();
    let mut times: Vec<u32> = results.into_iter().flat_map(|r| r.1).collect();
    times.sort_unstable();
    let p50_us = times.get(times.len() / 2).copied().unwrap_or(0) as f64 / 1000.0;
    let p99_us = times.get(times.len() * 99 / 100).copied().unwrap_or(0) as f64 / 1000.0;
    serde_json::json!({
        "engine": engine.info().backend,
        "call_p99_us": p99_us,
        "batch": batch,
        "threads": threads,
        "rows_per_s": (calls * batch as u64) as f64 / duration.as_secs_f64(),
        "call_p50_us": p50_us,
    })
}

/// This process's user + system CPU time, from /proc (Linux).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}
