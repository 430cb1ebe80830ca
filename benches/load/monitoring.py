"""The cost of monitoring on the whole server: throughput and latency at concurrency 64 with the
prediction log (every row) and drift windows on, against the same model with monitoring off.

    python3 benches/load/monitoring.py [--pairs 3] [--duration 10] [--warmup 2]

For tabular-small and mlp-large, runs alternate off / log / drift in rounds (run-to-run noise
on a shared 2-core machine is as large as the difference looked for). "log" logs every row
(sample_rate 1, fsync every 1000 ms, the defaults) with no baseline; "drift" also closes a
drift window every 1,000 rows against a baseline taken from the first 1,000 rows. After each logged run, the log's own
metrics say how many rows were logged and dropped, and the sealed log's size gives bytes per
record. Prints a Markdown table and writes benches/results/monitoring-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

# "log": every row logged, no baseline (so no drift windows); "drift": the same, with a baseline
# from the first 1,000 rows and a window compared every 1,000 rows.
VARIANTS = {
    "off": None,
    "log": "\n[monitoring]\nenabled = true\n",
    "drift": "\n[monitoring]\nenabled = true\nwindow_rows = 1000\nbaseline_rows = 1000\n",
}


def repo_for(work: Path, model: str, variant: str) -> Path:
    repo = work / f"{model}-{variant}"
    if not repo.exists():
        shutil.copytree(bench.ROOT / "models" / model, repo / model)
        if VARIANTS[variant]:
            with open(repo / model / "config.toml", "a") as f:
                f.write(VARIANTS[variant])
    return repo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    args = ap.parse_args()
    loadgen = bench.build()
    work = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    body = bench.bodies(work)
    rows = []
    try:
        for model in bench.MODELS:
            path, _ = body[model]["json"]
            for pair in range(args.pairs):
                for variant in VARIANTS:
                    on = variant != "off"
                    repo = repo_for(work, model, variant)
                    state = work / f"state-{model}-{pair}-{variant}"
                    server = bench.Cairn(repo, extra=["--state-dir", str(state)])
                    try:
                        url = f"http://{server.addr}/v2/models/{model}/infer"
                        r = bench.loadgen_http(loadgen, url, path, None, 64, args.duration, args.warmup)
                        m = bench.metrics(server.addr)
                    finally:
                        server.stop()
                    row = {"model": model, "pair": pair, "monitoring": variant, **r}
                    if on:
                        row["logged_rows"] = m.get(f'cairn_prediction_log_rows_total{{model="{model}"}}', 0)
                        row["dropped_rows"] = sum(v for k, v in m.items()
                                                  if k.startswith("cairn_prediction_log_dropped_total"))
                        row["dropped_by_reason"] = {k: v for k, v in m.items()
                                                    if k.startswith("cairn_prediction_log_dropped_total")}
                        row["drift_windows"] = sum(v for k, v in m.items()
                                                   if k.startswith("cairn_drift_windows_total"))
                        row["skipped_windows"] = sum(v for k, v in m.items()
                                                     if k.startswith("cairn_drift_windows_skipped_total"))
                        sealed = list((state / "predictions" / model / "predictions").glob("*.parquet"))
                        size = sum(p.stat().st_size for p in sealed)
                        row["bytes_per_record"] = size / row["logged_rows"] if row["logged_rows"] else None
                    rows.append(row)
                    bench.log(f"{model} pair {pair} monitoring {variant}: "
                              f"{r['rps']:.0f} req/s" + (f", logged {row['logged_rows']:.0f}, dropped "
                                                          f"{row['dropped_rows']:.0f}" if on else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("| model | monitoring | req/s (median of pairs) | p50 µs | p99 µs | rows logged | dropped | drift windows (skipped) | bytes/record (Parquet) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in bench.MODELS:
        off = statistics.median(r["rps"] for r in rows if r["model"] == model and r["monitoring"] == "off")
        for variant in VARIANTS:
            sel = [r for r in rows if r["model"] == model and r["monitoring"] == variant]
            med = lambda k: statistics.median(r[k] for r in sel)  # noqa: E731
            extra = (f"{sum(r['logged_rows'] for r in sel):.0f} | {sum(r['dropped_rows'] for r in sel):.0f} | "
                     f"{sum(r['drift_windows'] for r in sel):.0f} ({sum(r['skipped_windows'] for r in sel):.0f}) | "
                     f"{med('bytes_per_record'):.1f}") if variant != "off" else "— | — | — | —"
            print(f"| {model} | {variant} | {med('rps'):.0f} ({med('rps') / off:.0%}) | {med('p50_us'):.0f} | "
                  f"{med('p99_us'):.0f} | {extra} |")
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    out = bench.RESULTS / f"monitoring-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(rows, indent=2))
    bench.log(f"wrote {out}")


if __name__ == "__main__":
    main()
