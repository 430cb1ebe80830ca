#!/usr/bin/env python3
"""The side-by-side load benchmark: cairn against the in-process engine floor and against
MLServer, in one run on one machine.

    python3 benches/load/run.py            # everything (about 10 minutes on 2 cores)
    python3 benches/load/run.py --quick    # shorter runs, for a smoke test

What it does:
  1. builds the release binary and the `loadgen` bench (a lean Rust closed-loop client, one
     thread, HTTP/1.1 keep-alive; it reports its own CPU share);
  2. measures the engine floor in process: rows/s at batch 1 and at batch 64 with as many
     threads as the server's engine workers (the same thread budget);
  3. starts cairn on `tabular-small` and `mlp-large` (their shipped config.toml) and drives
     single-row requests, JSON and binary, at concurrency 1, 8 and 64; the mean batch size comes
     from the server's own metrics;
  4. measures the cost of scraping /metrics once a second under load;
  5. runs Triton's perf_analyzer against cairn (from the tritonclient 2.50.0 wheel, the last
     build that runs on glibc 2.36);
  6. installs MLServer 1.7.1 in .venv-bench, serves the same ONNX files through a small
     onnxruntime runtime with adaptive batching (max batch 64, 5 ms), and drives it with the same
     load generator (JSON: MLServer has no binary extension).
Results go to benches/results/ (JSON and a Markdown table) and to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "compat"))
from cairn_server import Server, answers_200, metrics, wait_for  # noqa: E402

RESULTS = ROOT / "benches" / "results"
BENCH_VENV = ROOT / ".venv-bench"
TOOLS = ROOT / "target" / "bench-tools"
MODELS = {"tabular-small": 32, "mlp-large": 256}
CONCURRENCY = [1, 8, 64]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kw)


# ---------------------------------------------------------------------------------- setup


def build() -> Path:
    log("building the release binary and the load generator")
    run(["cargo", "build", "--release", "--bin", "cairn"], cwd=ROOT)
    out = run(
        ["cargo", "bench", "--bench", "loadgen", "--no-run", "--message-format=json"],
        cwd=ROOT,
        capture_output=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "loadgen":
            if msg.get("executable"):
                return Path(msg["executable"])
    raise SystemExit("cannot find the loadgen executable")


def ensure_bench_venv() -> Path:
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        log("creating .venv-bench (MLServer 1.7.1, onnxruntime)")
        run([sys.executable, "-m", "venv", str(BENCH_VENV)])
        run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    probe = subprocess.run([str(python), "-c", "import mlserver, onnxruntime"], capture_output=True)
    if probe.returncode != 0 or not (BENCH_VENV / "bin" / "mlserver").exists():
        # MLServer 1.7.1 needs uvloop 0.21 ("There is no current event loop" with newer ones).
        run([str(python), "-m", "pip", "install", "--quiet", "mlserver==1.7.1", "uvloop==0.21.0",
             "onnxruntime==1.32.0", "numpy"])
    return python


def ensure_perf_analyzer(python: Path) -> tuple[Path, dict] | None:
    """perf_analyzer from the tritonclient 2.50.0 wheel (manylinux1), with its two libraries."""
    binary = TOOLS / "perf_analyzer"
    if not binary.exists():
        TOOLS.mkdir(parents=True, exist_ok=True)
        log("fetching perf_analyzer from the tritonclient 2.50.0 wheel")
        with tempfile.TemporaryDirectory() as tmp:
            run([str(python), "-m", "pip", "download", "--quiet", "--no-deps", "tritonclient==2.50.0",
                 "--only-binary=:all:", "--platform", "manylinux1_x86_64", "-d", tmp])
            wheel = next(Path(tmp).glob("tritonclient-2.50.0-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                data = z.read("tritonclient-2.50.0.data/data/bin/perf_analyzer")
        binary.write_bytes(data)
        binary.chmod(0o755)
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               capture_output=True).stdout.strip()
    cudart = Path(site) / "nvidia" / "cuda_runtime" / "lib"
    if not (cudart / "libcudart.so.12").exists():
        # libcudart is needed at link time only; no GPU is used.
        run([str(python), "-m", "pip", "install", "--quiet", "nvidia-cuda-runtime-cu12"])
    if subprocess.run(["sh", "-c", "ldconfig -p | grep -q libb64.so.0d"]).returncode != 0:
        if os.geteuid() == 0:
            subprocess.run(["apt-get", "install", "-y", "-qq", "libb64-0d"], capture_output=True)
    env = dict(os.environ, LD_LIBRARY_PATH=f"{cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    check = subprocess.run([str(binary), "--version"], capture_output=True, env=env)
    if b"error while loading shared libraries" in check.stderr + check.stdout:
        log(f"perf_analyzer does not run here: {check.stderr[:200]!r}")
        return None
    return binary, env


def bodies(workdir: Path) -> dict:
    """Single-row request bodies per model: JSON, and binary with its header length."""
    out = {}
    for model, width in MODELS.items():
        row = [round(((i * 0.618) % 2.0) - 1.0, 6) for i in range(width)]
        js = json.dumps({"inputs": [{"name": "input", "shape": [1, width], "datatype": "FP32", "data": row}]})
        header = json.dumps({
            "inputs": [{"name": "input", "shape": [1, width], "datatype": "FP32",
                        "parameters": {"binary_data_size": 4 * width}}],
            "parameters": {"binary_data_output": True},
        }).encode()
        import struct
        binary = header + struct.pack(f"<{width}f", *row)
        (workdir / f"{model}.json").write_text(js)
        (workdir / f"{model}.bin").write_bytes(binary)
        out[model] = {"json": (workdir / f"{model}.json", None), "binary": (workdir / f"{model}.bin", len(header))}
    return out


# ---------------------------------------------------------------------------------- servers


class Cairn(Server):
    """cairn as the benches run it: the release binary unless another is named, a log of
    warnings and the listen lines only, ready when constructed; `addr` is its host:port."""

    def __init__(self, repo: Path, binary: Path | None = None, extra: list[str] | None = None):
        super().__init__(binary or ROOT / "target" / "release" / "cairn", repo, *(extra or []),
                         env={"RUST_LOG": "warn,cairn::server=info"})
        self.addr = self.url
        self.wait_ready()


class MLServer:
    def __init__(self, python: Path, workdir: Path, port: int):
        root = workdir / "mlserver"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        shutil.copy(ROOT / "benches" / "load" / "mlserver_runtime.py", root / "mlserver_runtime.py")
        (root / "settings.json").write_text(json.dumps({
            "parallel_workers": 0, "http_port": port, "grpc_port": port + 1,
            "metrics_port": port + 2, "debug": False,
        }))
        for model in MODELS:
            d = root / model
            d.mkdir()
            (d / "model-settings.json").write_text(json.dumps({
                "name": model,
                "implementation": "mlserver_runtime.OnnxRuntimeModel",
                "parameters": {"uri": str(ROOT / "models" / model / "1" / "model.onnx")},
                "max_batch_size": 64,
                "max_batch_time": 0.005,
            }))
        env = dict(os.environ, PYTHONPATH=str(root))
        self.log = open(workdir / "mlserver.log", "w")
        self.proc = subprocess.Popen(
            [str(python.parent / "mlserver"), "start", str(root)],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.addr = f"127.0.0.1:{port}"
        for model in MODELS:
            wait_ready(f"http://{self.addr}/v2/models/{model}/ready", timeout=180)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wait_ready(url: str, timeout: float = 120) -> None:
    """Until `url` (MLServer's, say) answers 200."""
    if not wait_for(lambda: answers_200(url, timeout=2), timeout):
        raise SystemExit(f"not ready: {url}")


# ---------------------------------------------------------------------------------- measurements


def loadgen_http(loadgen: Path, url: str, body: Path, header_len, concurrency: int, duration: float,
                 warmup: float, grpc: bool = False) -> dict:
    """With `grpc`, `url` is the gRPC port's and `body` a serialized ModelInferRequest."""
    cmd = [str(loadgen), "http", "--url", url, "--body", str(body), "--concurrency", str(concurrency),
           "--duration", str(duration), "--warmup", str(warmup)] + (["--grpc"] if grpc else [])
    if header_len is not None:
        cmd += ["--header-len", str(header_len)]
    return json.loads(run(cmd, capture_output=True).stdout)


def floor(loadgen: Path, model: str, batch: int, threads: int, duration: float) -> dict:
    out = run([str(loadgen), "floor", "--model", str(ROOT / "models" / model / "1" / "model.onnx"),
               "--width", str(MODELS[model]), "--batch", str(batch), "--threads", str(threads),
               "--duration", str(duration)], capture_output=True).stdout
    return json.loads(out)


def instances(model: str) -> int:
    text = (ROOT / "models" / model / "config.toml").read_text()
    m = re.search(r"^instances\s*=\s*(\d+)", text, re.M)
    return int(m.group(1)) if m else 1


def perf_analyzer(pa, addr: str, model: str, concurrency: int, binary: bool,
                  protocol: str = "http", window_ms: int = 4000) -> dict:
    """`addr` is the address of `protocol`'s port; `binary` applies to HTTP only (gRPC always
    carries raw tensor bytes)."""
    binary_path, env = pa
    fmt = "binary" if binary else "json"
    cmd = [str(binary_path), "-m", model, "-i", protocol, "-u", addr, "-b", "1",
           "--concurrency-range", str(concurrency), "--input-data", "random", "-p", str(window_ms),
           "--max-trials", "3", "--stability-percentage", "1000",
           # Asynchronous requests: in its synchronous mode this perf_analyzer build never
           # finishes a measurement at concurrency 64.
           "--async"]
    if protocol == "http":
        cmd += ["--input-tensor-format", fmt, "--output-tensor-format", fmt]
    started = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    except subprocess.TimeoutExpired as e:
        proc = subprocess.CompletedProcess(cmd, 124, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), "timed out")
    text = proc.stdout
    def grab(pattern):
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None
    return {
        "throughput": grab(r"Throughput:\s*([\d.]+)\s*infer/sec"),
        "p50_us": grab(r"p50 latency:\s*(\d+)"),
        "p99_us": grab(r"p99 latency:\s*(\d+)"),
        # From its server-side section (our statistics extension):
        # "Avg request latency: 135 usec (overhead 79 usec + queue 31 usec + ... compute infer 23 usec ...)"
        "server_request_us": grab(r"Avg request latency:\s*(\d+)\s*usec"),
        "server_queue_us": grab(r"\+ queue (\d+) usec"),
        "server_compute_infer_us": grab(r"compute infer (\d+) usec"),
        "ok": proc.returncode == 0,
        "seconds": round(time.time() - started, 1),
        "tail": "" if proc.returncode == 0 else (text + proc.stderr)[-600:],
    }


def control(server: Cairn, model: str, action: str, payload: dict) -> dict:
    return server.ok("POST", f"/v2/models/{model}/deployment/{action}", payload)[1]


class Scraper(threading.Thread):
    def __init__(self, addr: str):
        super().__init__(daemon=True)
        self.addr, self.stop_flag, self.count = addr, threading.Event(), 0

    def run(self):
        while not self.stop_flag.wait(1.0):
            metrics(self.addr)
            self.count += 1


# ---------------------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    lines = []
    f = res["floor"]
    lines.append(f"Run {res['date']} on {res['machine']}; load generator `loadgen` "
                 f"({res['duration_s']} s per point after {res['warmup_s']} s warm-up).\n")
    lines.append("| Engine floor (in process, no HTTP) | batch 1, 1 thread | batch 1 call p50 | batch 64, server's threads |")
    lines.append("|---|---:|---:|---:|")
    for model in MODELS:
        lines.append(f"| {model} | {f[model]['b1']['rows_per_s']:,.0f} rows/s | {f[model]['b1']['call_p50_us']:.1f} µs | "
                     f"{f[model]['b64']['rows_per_s']:,.0f} rows/s ({f[model]['b64']['threads']} threads) |")
    lines.append("")
    lines.append("| Model | Encoding | Conc. | cairn req/s | p50 | p99 | mean batch | client CPU | "
                 "MLServer req/s | MLServer p50 / p99 | × MLServer | % of floor (b64) |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in res["cairn"]:
        ml = next((m for m in res.get("mlserver", []) if m["model"] == row["model"]
                   and m["concurrency"] == row["concurrency"]), None)
        ml_rps = f"{ml['rps']:,.0f}" if ml else "–"
        ml_lat = f"{ml['p50_us']/1000:.2f} / {ml['p99_us']/1000:.2f} ms" if ml else "–"
        ratio = f"{row['rps']/ml['rps']:.1f}×" if ml and ml["rps"] else "–"
        pct = 100 * row["rps"] / f[row["model"]]["b64"]["rows_per_s"]
        lines.append(
            f"| {row['model']} | {row['encoding']} | {row['concurrency']} | {row['rps']:,.0f} | "
            f"{row['p50_us']} µs | {row['p99_us']} µs | {row['mean_batch']:.1f} | "
            f"{100*row['client_cpu_share']:.0f}% ({row['client_cpu_us_per_request']:.1f} µs/req) | "
            f"{ml_rps} | {ml_lat} | {ratio} | {pct:.0f}% |")
    if res.get("scrape"):
        s = res["scrape"]
        lines.append("")
        spread = lambda xs: f"{min(xs):,.0f}–{max(xs):,.0f}"
        lines.append(f"Scraping /metrics once a second (tabular-small, binary, c=64, 3 alternated pairs): "
                     f"{s['with']:,.0f} req/s with (runs {spread(s['runs']['with'])}) against "
                     f"{s['without']:,.0f} without (runs {spread(s['runs']['without'])}): "
                     f"{100*(1 - s['with']/s['without']):+.1f} %. One scrape takes {s['scrape_ms']:.2f} ms "
                     f"end to end, i.e. at most {s['scrape_ms']/10/2:.3f} % of 2 cores at one scrape a second.")
    if res.get("rollout"):
        lines.append("")
        lines.append("| Deployment of tabular-small (binary, c=64) | req/s | p50 | p99 |")
        lines.append("|---|---:|---:|---:|")
        for r in res["rollout"]:
            lines.append(f"| {r['setup']} | {r['rps']:,.0f} | {r['p50_us']} µs | {r['p99_us']} µs |")
    if res.get("perf_analyzer"):
        lines.append("")
        lines.append("| perf_analyzer → cairn | Format | Conc. | infer/s | p50 | p99 | server request | server queue | server compute |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for p in res["perf_analyzer"]:
            fmtv = lambda v, unit="": "–" if v is None else f"{v:,.0f}{unit}"
            lines.append(f"| {p['model']} | {p['format']} | {p['concurrency']} | {fmtv(p['throughput'])} | "
                         f"{fmtv(p['p50_us'], ' µs')} | {fmtv(p['p99_us'], ' µs')} | "
                         f"{fmtv(p['server_request_us'], ' µs')} | "
                         f"{fmtv(p['server_queue_us'], ' µs')} | {fmtv(p['server_compute_infer_us'], ' µs')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true", help="3 s points, for a smoke test")
    ap.add_argument("--skip-mlserver", action="store_true")
    ap.add_argument("--skip-perf-analyzer", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0

    loadgen = build()
    work = Path(tempfile.mkdtemp(prefix="cairn-bench-"))
    body = bodies(work)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    res = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({cpu})",
        "duration_s": args.duration, "warmup_s": args.warmup,
        "floor": {}, "cairn": [],
    }

    log("engine floor")
    for model in MODELS:
        res["floor"][model] = {
            "b1": floor(loadgen, model, 1, 1, min(args.duration, 5)),
            "b64": floor(loadgen, model, 64, instances(model), min(args.duration, 5)),
        }

    repo = work / "repo"
    for model in MODELS:
        shutil.copytree(ROOT / "models" / model, repo / model)
    # Two identical versions of tabular-small, for the cost of a canary and of a shadow.
    rollout_dir = repo / "tabular-rollout"
    shutil.copytree(ROOT / "models" / "tabular-small", rollout_dir)
    shutil.copytree(ROOT / "models" / "tabular-small" / "1", rollout_dir / "2")
    config = (rollout_dir / "config.toml").read_text()
    (rollout_dir / "config.toml").write_text(
        config.replace("instances = 2", "instances = 2\nversion_policy = { all = {} }"))
    server = Cairn(repo)
    log(f"cairn on {server.addr}")
    try:
        for model in MODELS:
            for encoding in ("json", "binary"):
                path, header_len = body[model][encoding]
                for c in CONCURRENCY:
                    before = metrics(server.addr)
                    r = loadgen_http(loadgen, f"http://{server.addr}/v2/models/{model}/infer", path,
                                     header_len, c, args.duration, args.warmup)
                    after = metrics(server.addr)
                    key = f'{{model="{model}",version="1"}}'
                    rows = after[f"cairn_inference_rows_total{key}"] - before.get(f"cairn_inference_rows_total{key}", 0)
                    execs = after[f"cairn_execution_total{key}"] - before.get(f"cairn_execution_total{key}", 0)
                    r.update(model=model, encoding=encoding, concurrency=c,
                             mean_batch=rows / execs if execs else 0.0)
                    log(f"cairn {model} {encoding} c={c}: {r['rps']:,.0f} req/s p50 {r['p50_us']} µs "
                        f"p99 {r['p99_us']} µs batch {r['mean_batch']:.1f}")
                    res["cairn"].append(r)

        log("cost of scraping /metrics")
        path, header_len = body["tabular-small"]["binary"]
        url = f"http://{server.addr}/v2/models/tabular-small/infer"
        without, with_ = [], []
        # Alternated pairs, because run-to-run noise on a shared 2-core machine is larger than
        # the effect being measured.
        for _ in range(3):
            without.append(loadgen_http(loadgen, url, path, header_len, 64, args.duration, args.warmup)["rps"])
            scraper = Scraper(server.addr)
            scraper.start()
            with_.append(loadgen_http(loadgen, url, path, header_len, 64, args.duration, args.warmup)["rps"])
            scraper.stop_flag.set()
        # The direct cost: server time to render one scrape, once a second, out of 2 cores.
        started = time.perf_counter()
        for _ in range(50):
            metrics(server.addr)
        scrape_ms = (time.perf_counter() - started) * 1000 / 50
        res["scrape"] = {"without": sum(without) / len(without), "with": sum(with_) / len(with_),
                         "runs": {"without": without, "with": with_}, "scrape_ms": scrape_ms}

        log("cost of a canary and of a shadow")
        url = f"http://{server.addr}/v2/models/tabular-rollout/infer"
        manual = {"auto_promote": False, "auto_rollback": False}
        res["rollout"] = []
        for label, action, payload in [
            ("plain (stable only)", "stable", {"version": 1}),
            ("canary 10 %", "canary", {"version": 2, "weight": 0.1, "criteria": manual}),
            ("shadow (every request copied)", "shadow", {"version": 2, "criteria": manual}),
        ]:
            control(server, "tabular-rollout", action, payload)
            r = loadgen_http(loadgen, url, path, header_len, 64, args.duration, args.warmup)
            r.update(setup=label)
            log(f"{label}: {r['rps']:,.0f} req/s p99 {r['p99_us']} µs")
            res["rollout"].append(r)
        control(server, "tabular-rollout", "rollback", {})

        if not args.skip_perf_analyzer:
            python = ensure_bench_venv()
            pa = ensure_perf_analyzer(python)
            if pa:
                res["perf_analyzer"] = []
                for model in MODELS:
                    for c in CONCURRENCY:
                        p = perf_analyzer(pa, server.addr, model, c, binary=True)
                        p.update(model=model, concurrency=c, format="binary")
                        log(f"perf_analyzer {model} c={c}: {p['throughput']} infer/s p99 {p['p99_us']} µs")
                        res["perf_analyzer"].append(p)
    finally:
        server.stop()

    if not args.skip_mlserver:
        python = ensure_bench_venv()
        ml = MLServer(python, work, 18080)
        log(f"MLServer on {ml.addr}")
        res["mlserver"] = []
        try:
            for model in MODELS:
                path, _ = body[model]["json"]
                for c in CONCURRENCY:
                    r = loadgen_http(loadgen, f"http://{ml.addr}/v2/models/{model}/infer", path, None, c,
                                     args.duration, args.warmup)
                    r.update(model=model, encoding="json", concurrency=c)
                    log(f"MLServer {model} c={c}: {r['rps']:,.0f} req/s p50 {r['p50_us']} µs p99 {r['p99_us']} µs")
                    res["mlserver"].append(r)
        finally:
            ml.stop()

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"load-{stamp}.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (RESULTS / f"load-{stamp}.md").write_text(md)
    print(md)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
