#!/usr/bin/env python3
"""Triton's perf_analyzer against cairn over gRPC and over HTTP (binary tensors), side by side.

    python3 benches/load/grpc.py                  # about 7 minutes on 2 cores, after the build
    python3 benches/load/grpc.py --quick          # concurrency 1 and 8, 2 s windows
    python3 benches/load/grpc.py --binary PATH    # an existing build; no cargo

What it does:
  1. builds the release binary (in $CARGO_TARGET_DIR, or target/);
  2. starts cairn on `tabular-small` and `mlp-large` as shipped (their config.toml), with both
     listeners on free ports;
  3. runs perf_analyzer (asynchronous mode, as benches/load/run.py does) at concurrency 1, 8
     and 64, HTTP and gRPC alternated point by point so that drift of a shared machine hits
     both alike. For each point it records perf_analyzer's figures, its server-side breakdown
     (our statistics extension, over the protocol under test), the mean batch and the
     requests served (the server's metrics), and the CPU time of perf_analyzer and of the
     server per request served.
Results go to benches/results/ (JSON and a Markdown table) and to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    MODELS, RESULTS, ROOT, ensure_bench_venv, ensure_perf_analyzer, log, perf_analyzer, run,
)

sys.path.insert(0, str(ROOT / "tests" / "compat"))
from cairn_server import Server  # noqa: E402

PROTOCOLS = ("http", "grpc")


def build() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    log(f"building the release binary in {target}")
    run(["cargo", "build", "--release", "--bin", "cairn"], cwd=ROOT,
        env=dict(os.environ, CARGO_TARGET_DIR=str(target)))
    return target / "release" / "cairn"


def with_listen_lines(rust_log: str) -> str:
    """The addresses are read from cairn::server's info lines: keep them in any RUST_LOG."""
    directives = [d.strip() for d in rust_log.split(",")]
    if any(d in ("info", "debug", "trace") or d.startswith("cairn::server") for d in directives):
        return rust_log
    return f"{rust_log},cairn::server=info"


def cpu_s(server: Server) -> float:
    """The server's user and system CPU time so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def point(pa, server: Server, model: str, protocol: str, concurrency: int, window_ms: int) -> dict:
    key = f'{{model="{model}",version="1"}}'
    before, server_cpu, client_cpu = server.metrics(), cpu_s(server), children_cpu_s()
    addr = server.grpc if protocol == "grpc" else server.url
    p = perf_analyzer(pa, addr, model, concurrency, binary=True, protocol=protocol,
                      window_ms=window_ms)
    client_cpu, server_cpu = children_cpu_s() - client_cpu, cpu_s(server) - server_cpu
    after = server.metrics()
    served = after.get(f"cairn_inference_rows_total{key}", 0) - before.get(f"cairn_inference_rows_total{key}", 0)
    execs = after.get(f"cairn_execution_total{key}", 0) - before.get(f"cairn_execution_total{key}", 0)
    p.update(
        model=model, protocol=protocol, concurrency=concurrency,
        format="binary" if protocol == "http" else "protobuf",
        # Over the whole run of perf_analyzer (start-up, every trial), not its windows only.
        served=int(served),
        mean_batch=served / execs if execs else None,
        client_cpu_s=round(client_cpu, 3),
        server_cpu_s=round(server_cpu, 3),
        client_cpu_us_per_request=1e6 * client_cpu / served if served else None,
        server_cpu_us_per_request=1e6 * server_cpu / served if served else None,
    )
    return p


def markdown(res: dict) -> str:
    def n(v, unit=""):
        return "–" if v is None else f"{v:,.0f}{unit}"

    lines = [f"Run {res['date']} on {res['machine']}; perf_analyzer from tritonclient 2.50.0, "
             f"`--async -b 1 --input-data random`, {res['window_ms']} ms windows, "
             f"concurrency {', '.join(map(str, res['concurrency']))}.\n",
             "| perf_analyzer → cairn | Protocol | Conc. | infer/s | gRPC ÷ HTTP | p50 | p99 | "
             "server request | server queue | server compute | mean batch | "
             "perf_analyzer CPU / req | server CPU / req |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in res["points"]:
        ratio = "–"
        if p["protocol"] == "grpc":
            h = next((q for q in res["points"] if q["protocol"] == "http" and q["model"] == p["model"]
                      and q["concurrency"] == p["concurrency"]), None)
            if h and h["throughput"] and p["throughput"]:
                ratio = f"{p['throughput'] / h['throughput']:.2f}×"
        proto = "HTTP (binary)" if p["protocol"] == "http" else "gRPC"
        batch = "–" if p["mean_batch"] is None else f"{p['mean_batch']:.1f}"
        lines.append(
            f"| {p['model']} | {proto} | {p['concurrency']} | {n(p['throughput'])} | {ratio} | "
            f"{n(p['p50_us'], ' µs')} | {n(p['p99_us'], ' µs')} | {n(p['server_request_us'], ' µs')} | "
            f"{n(p['server_queue_us'], ' µs')} | {n(p['server_compute_infer_us'], ' µs')} | {batch} | "
            f"{n(p['client_cpu_us_per_request'], ' µs')} | {n(p['server_cpu_us_per_request'], ' µs')} |")
    failed = [p for p in res["points"] if not p["ok"]]
    for p in failed:
        lines.append(f"\n{p['model']} {p['protocol']} c={p['concurrency']} failed: "
                     f"`{p['tail'].strip().splitlines()[-1] if p['tail'].strip() else '?'}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="concurrency 1 and 8, 2 s windows")
    ap.add_argument("--binary", type=Path, help="an existing cairn binary; skips the build")
    ap.add_argument("--server-log", type=Path, help="write the server's log here")
    ap.add_argument("--rust-log", default="warn,cairn::server=info", help="the server's RUST_LOG")
    args = ap.parse_args()
    concurrency = [1, 8] if args.quick else [1, 8, 64]
    window_ms = 2000 if args.quick else 4000

    binary = args.binary.resolve() if args.binary else build()
    pa = ensure_perf_analyzer(ensure_bench_venv())
    if pa is None:
        raise SystemExit("perf_analyzer does not run on this machine")

    work = Path(tempfile.mkdtemp(prefix="cairn-grpc-bench-"))
    repo = work / "repo"
    for model in MODELS:
        shutil.copytree(ROOT / "models" / model, repo / model)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    res = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({cpu})",
        "binary": str(binary), "window_ms": window_ms, "concurrency": concurrency, "points": [],
    }
    server = Server(binary, repo, "--grpc-listen", "127.0.0.1:0", "--state-dir", work / "state",
                    env={"RUST_LOG": with_listen_lines(args.rust_log)}, cwd=ROOT, log_file=args.server_log)
    server.wait_ready()
    log(f"cairn: HTTP on {server.url}, gRPC on {server.grpc}")
    try:
        for model in MODELS:
            for c in concurrency:
                for protocol in PROTOCOLS:
                    p = point(pa, server, model, protocol, c, window_ms)
                    status = "" if p["ok"] else f" FAILED: {p['tail'][-300:]!r}"
                    log(f"{model} {protocol} c={c}: {p['throughput']} infer/s p50 {p['p50_us']} µs "
                        f"p99 {p['p99_us']} µs, perf_analyzer {p['client_cpu_us_per_request'] or 0:.0f} µs CPU/req, "
                        f"server {p['server_cpu_us_per_request'] or 0:.0f} µs CPU/req{status}")
                    res["points"].append(p)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"grpc-{stamp}.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (RESULTS / f"grpc-{stamp}.md").write_text(md)
    print(md)
    if any(not p["ok"] for p in res["points"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
