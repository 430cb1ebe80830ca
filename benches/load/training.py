"""Training speed, and what a training job costs the serving path.

    python3 benches/load/training.py [--pairs 3] [--duration 10] [--warmup 2]

1. Speed: `cairn train` (release) on a generated table of 20,000 rows × 32 features (3 classes):
   logistic regression, an MLP [64], and a random search of 8 MLP trials on 2 threads. Reports
   seconds per epoch (trial time / epochs run) and per search.
2. Cost: tabular-small at concurrency 64 (JSON, the load generator of run.py), alternately with
   no training and with a training job started over HTTP just before the load (an MLP search on
   the same table, `threads = 2`, long enough to outlast the run). Reports req/s, p50 and p99 for
   both, median of the pairs. Writes benches/results/training-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

FEATURES = [f"f{i}" for i in range(32)]


def table(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 32))
    w = rng.normal(size=(32, 3))
    y = np.argmax(x @ w + rng.normal(scale=0.5, size=(rows, 3)), axis=1)
    with open(path, "w") as f:
        f.write(",".join(FEATURES + ["y"]) + "\n")
        for row, label in zip(x, y):
            f.write(",".join(f"{v:.5f}" for v in row) + f",{label}\n")


def config(model: str, data: Path, work: Path, kind: str, epochs: int, trials: int, patience: int) -> str:
    hidden = "hidden = [64]" if kind == "mlp" else ""
    search = f"[search]\ntrials = {trials}\nlearning_rate = [0.001, 0.01]\n" if trials > 1 else ""
    return f"""model = "{model}"
seed = 0
threads = 2
[data]
path = "{data}"
features = {json.dumps(FEATURES)}
target = "y"
[trainer]
kind = "{kind}"
{hidden}
epochs = {epochs}
batch_size = 64
learning_rate = 0.003
patience = {patience}
{search}
[output]
repository = "{work}/repo"
runs_dir = "{work}/runs"
publish = false
"""


def speed(work: Path, data: Path) -> list[dict]:
    out = []
    for name, kind, trials in [("logistic", "logistic", 1), ("mlp", "mlp", 1), ("search", "mlp", 8)]:
        path = work / f"speed-{name}.toml"
        path.write_text(config("speed", data, work, kind, 20, trials, 0))
        t0 = time.time()
        subprocess.run([str(bench.ROOT / "target/release/cairn"), "train", "--config", str(path), "--quiet",
                        "--no-publish"], check=True, capture_output=True)
        wall = time.time() - t0
        runs = sorted((work / "runs").iterdir())
        run = json.loads((runs[-1] / "run.json").read_text())
        per_epoch = statistics.median(t["duration_s"] / len(t["epochs"]) for t in run["trials"])
        out.append({"what": name, "trials": len(run["trials"]), "epochs": sum(len(t["epochs"]) for t in run["trials"]),
                    "seconds_per_epoch": per_epoch, "run_seconds": run["duration_s"], "wall_seconds": wall,
                    "train_rows": run["data"]["train_rows"], "test_accuracy": run["test"]["accuracy"]})
        bench.log(f"{name}: {per_epoch * 1000:.1f} ms/epoch, run {run['duration_s']:.1f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    args = ap.parse_args()
    loadgen = bench.build()
    work = Path(tempfile.mkdtemp(prefix="bench-training-"))
    try:
        data = work / "table.csv"
        table(data, 20_000)
        speeds = speed(work, data)
        body = bench.bodies(work)
        path, _ = body["tabular-small"]["json"]
        repo = work / "serve"
        shutil.copytree(bench.ROOT / "models" / "tabular-small", repo / "tabular-small")
        configs = work / "configs"
        configs.mkdir()
        # Long enough to outlast warm-up + run: no early stop, many epochs, 4 trials on 2 threads.
        (configs / "tabular-small.toml").write_text(
            config("tabular-small", data, work, "mlp", 100_000, 4, 0).replace("publish = false", "publish = false"))
        rows = []
        for pair in range(args.pairs):
            for training in (False, True):
                state = work / f"state-{pair}-{training}"
                server = bench.Cairn(repo, extra=["--state-dir", str(state), "--train-config-dir", str(configs)])
                try:
                    if training:
                        req = urllib.request.Request(f"http://{server.addr}/v2/models/tabular-small/train",
                                                     data=b"", method="POST")
                        job = json.loads(urllib.request.urlopen(req).read())
                        time.sleep(1)
                    url = f"http://{server.addr}/v2/models/tabular-small/infer"
                    r = bench.loadgen_http(loadgen, url, path, None, 64, args.duration, args.warmup)
                    if training:
                        j = json.loads(urllib.request.urlopen(
                            f"http://{server.addr}/v2/training/jobs/{job['id']}").read())
                        r["job_state"] = j["state"]
                        r["job_epochs_done"] = j["progress"]["epochs_done"]
                finally:
                    server.stop()
                rows.append({"pair": pair, "training": training, **r})
                bench.log(f"pair {pair} training {training}: {r['rps']:.0f} req/s, p99 {r['p99_us']:.0f} µs"
                          + (f", job {r['job_state']} after {r['job_epochs_done']} epochs" if training else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| run | trials | epochs | ms per epoch (median) | run s | test accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in speeds:
        print(f"| {s['what']} | {s['trials']} | {s['epochs']} | {s['seconds_per_epoch'] * 1000:.1f} | "
              f"{s['run_seconds']:.1f} | {s['test_accuracy']:.4f} |")
    print()
    print("| tabular-small, c=64 | req/s (median) | p50 µs | p99 µs |")
    print("|---|---:|---:|---:|")
    for training in (False, True):
        sel = [r for r in rows if r["training"] == training]
        med = lambda k: statistics.median(r[k] for r in sel)  # noqa: E731
        print(f"| {'while a training job runs' if training else 'no training'} | {med('rps'):.0f} | "
              f"{med('p50_us'):.0f} | {med('p99_us'):.0f} |")
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    out = bench.RESULTS / f"training-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"speed": speeds, "serving": rows}, indent=2))
    bench.log(f"wrote {out}")


if __name__ == "__main__":
    main()
