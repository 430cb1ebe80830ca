"""What uploading the prediction log to an object store costs serving, and how fast segments go up.

    .venv/bin/python benches/load/log_store.py [--duration 10] [--rounds 2]

tabular-small, monitoring on (every row logged), segments sealed every 2 s
(`prediction_log_segment_age_s`, the smallest useful setting, so that uploads run all through
the measured window), concurrency 64 over binary HTTP, fresh server per run, setups alternated in
rounds: "off" (the log stays on local disk) and "file store" (`log_store = file://<dir>` on the
same disk: what the uploader itself costs, without a network in the way). Then an upload
throughput run: a log directory of sealed segments left by a stopped server is uploaded by a
fresh one, timed from its start until the backlog gauge reads zero, to the file store and to
moto's S3 server on 127.0.0.1 (moto is Python: an upper bound on no S3, a lower bound on ours).
Prints Markdown tables and writes benches/results/log-store-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

MODEL = "tabular-small"
MONITORING = "\n[monitoring]\nenabled = true\n"
SETUPS = ["off", "file store"]


def repo(work: Path) -> Path:
    root = work / "repo"
    shutil.copytree(bench.ROOT / "models" / MODEL, root / MODEL)
    config = root / MODEL / "config.toml"
    config.write_text(config.read_text() + MONITORING)
    return root


def gauge(values: dict, name: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(name + "{") and f'model="{MODEL}"' in k)


def one_run(loadgen: Path, root: Path, work: Path, setup: str, args) -> dict:
    state = Path(tempfile.mkdtemp(dir=work, prefix="state-"))
    extra = ["--state-dir", str(state), "--prediction-log-segment-age-s", "2"]
    store = None
    if setup == "file store":
        store = Path(tempfile.mkdtemp(dir=work, prefix="store-"))
        extra += ["--log-store", f"file://{store}", "--replica-id", "bench"]
    server = bench.Cairn(root, extra=extra)
    try:
        path, header_len = bench.bodies(work)[MODEL]["binary"]
        url = f"http://{server.addr}/v2/models/{MODEL}/infer"
        r = bench.loadgen_http(loadgen, url, path, header_len, 64, args.duration, args.warmup)
        values = bench.metrics(server.addr)
        row = {
            "setup": setup,
            "rps": r["rps"],
            "p50_us": r["p50_us"],
            "p99_us": r["p99_us"],
            "uploaded_segments": gauge(values, "cairn_log_store_uploaded_segments_total"),
            "uploaded_bytes": gauge(values, "cairn_log_store_uploaded_bytes_total"),
            "upload_failures": gauge(values, "cairn_log_store_upload_failures_total"),
            "backlog_bytes_at_end": gauge(values, "cairn_log_store_backlog_bytes"),
            "dropped_rows": gauge(values, "cairn_prediction_log_dropped_total"),
        }
        return row
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
        if store:
            shutil.rmtree(store, ignore_errors=True)


def fill_log(root: Path, work: Path, loadgen: Path, seconds: float) -> Path:
    """A state directory whose log holds `seconds` of load at c=64, sealed by a clean stop."""
    state = work / "filled"
    # 1 MiB segments: many objects, as a busy log with a short segment age makes them.
    server = bench.Cairn(root, extra=["--state-dir", str(state), "--prediction-log-segment-bytes",
                                      str(1 << 20)])
    try:
        path, header_len = bench.bodies(work)[MODEL]["binary"]
        bench.loadgen_http(loadgen, f"http://{server.addr}/v2/models/{MODEL}/infer", path,
                           header_len, 64, seconds, 0.5)
    finally:
        server.stop()
    return state


def upload_run(root: Path, work: Path, filled: Path, url: str) -> dict:
    """Starts a server on a copy of `filled` with `url` as its log store; the time until
    everything it found is uploaded."""
    state = work / "upload-state"
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(filled, state)
    log = state / "predictions" / MODEL
    files = [p for p in log.rglob("*.parquet")]
    total = sum(p.stat().st_size for p in files)
    t0 = time.monotonic()
    server = bench.Cairn(root, extra=["--state-dir", str(state), "--log-store", url,
                                      "--replica-id", "bench"])
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            values = bench.metrics(server.addr)
            done = gauge(values, "cairn_log_store_uploaded_bytes_total")
            if done >= total and gauge(values, "cairn_log_store_backlog_bytes") == 0:
                break
            time.sleep(0.05)
        took = time.monotonic() - t0
        return {"url": url.split("://")[0], "segments": len(files), "bytes": total,
                "seconds": took, "mib_per_s": total / took / 2**20}
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fill", type=float, default=20.0, help="seconds of load for the upload run")
    args = ap.parse_args()
    loadgen = bench.build()
    work = Path(tempfile.mkdtemp(prefix="cairn-log-store-"))
    root = repo(work)
    rows = []
    for rnd in range(args.rounds):
        for setup in SETUPS:
            row = one_run(loadgen, root, work, setup, args)
            row["round"] = rnd
            rows.append(row)
            bench.log(f"round {rnd} {setup}: {row['rps']:.0f} req/s, p99 {row['p99_us']:.0f} µs, "
                      f"{row['uploaded_segments']:.0f} segments / {row['uploaded_bytes'] / 2**20:.1f} MiB "
                      f"uploaded, dropped {row['dropped_rows']:.0f}")
    print("| Setup | req/s (each round) | p50 / p99 µs (each round) | segments uploaded (MiB) | rows dropped |")
    print("|---|---|---|---|---|")
    for setup in SETUPS:
        sel = [r for r in rows if r["setup"] == setup]
        rps = ", ".join(f"{r['rps']:,.0f}" for r in sel)
        lat = ", ".join(f"{r['p50_us']:,.0f} / {r['p99_us']:,.0f}" for r in sel)
        up = ", ".join(f"{r['uploaded_segments']:.0f} ({r['uploaded_bytes'] / 2**20:.1f})" for r in sel)
        dropped = ", ".join(f"{r['dropped_rows']:.0f}" for r in sel)
        print(f"| {setup} | {rps} | {lat} | {up} | {dropped} |")
    for setup in SETUPS:
        sel = [r["rps"] for r in rows if r["setup"] == setup]
        bench.log(f"{setup}: median {statistics.median(sel):,.0f} req/s")

    filled = fill_log(root, work, loadgen, args.fill)
    uploads = []
    store = work / "upload-store"
    uploads.append(upload_run(root, work, filled, f"file://{store}"))
    shutil.rmtree(store, ignore_errors=True)
    try:
        import logging

        from moto.server import ThreadedMotoServer
        import boto3

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # The server inherits this process's environment: the store's client reads AWS_*.
        env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_REGION": "us-east-1", "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
        os.environ.update(env)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="logs")
        try:
            uploads.append(upload_run(root, work, filled, "s3://logs/cairn"))
        finally:
            moto.stop()
    except ImportError:
        bench.log("moto is not installed: the S3 upload run is skipped")
    print()
    print("| Store | segments | MiB | seconds | MiB/s |")
    print("|---|---|---|---|---|")
    for u in uploads:
        print(f"| {u['url']} | {u['segments']} | {u['bytes'] / 2**20:.1f} | {u['seconds']:.2f} | {u['mib_per_s']:.1f} |")
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    (bench.RESULTS / f"log-store-{stamp}.json").write_text(json.dumps({"serving": rows, "uploads": uploads}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
