"""The cost of monitoring on the whole server: throughput and latency at concurrency 64 with the
prediction log (every row) and drift windows on, against the same model with monitoring off.

    python3 benches/load/monitoring.py [--pairs 3] [--duration 10] [--warmup 2]

For tabular-small and mlp-large, runs alternate off/on in pairs (run-to-run noise on a shared
2-core machine is as large as the difference looked for). "On" logs every row (sample_rate 1,
fsync every 1000 ms, the defaults), closes a drift window every 1,000 rows against a baseline
taken from the first 1,000 rows, so the comparison runs too. After each "on" run, the log's own
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

MONITORING = """
[monitoring]
enabled = true
window_rows = 1000
baseline_rows = 1000
"""


def repo_for(work: Path, model: str, on: bool) -> Path:
    repo = work / f"{model}-{'on' if on else 'off'}"
    if not repo.exists():
        shutil.copytree(bench.ROOT / "models" / model, repo / model)
        if on:
            with open(repo / model / "config.toml", "a") as f:
                f.write(MONITORING)
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
                for on in (False, True):
                    repo = repo_for(work, model, on)
                    state = work / f"state-{model}-{pair}-{on}"
                    server = bench.Cairn(repo, extra=["--state-dir", str(state)])
                    try:
                        url = f"http://{server.addr}/v2/models/{model}/infer"
                        r = bench.loadgen_http(loadgen, url, path, None, 64, args.duration, args.warmup)
                        m = bench.metrics(server.addr)
                    finally:
                        server.stop()
                    row = {"model": model, "pair": pair, "monitoring": on, **r}
                    if on:
                        row["logged_rows"] = m.get(f'cairn_prediction_log_rows_total{{model="{model}"}}', 0)
                        row["dropped_rows"] = sum(v for k, v in m.items()
                                                  if k.startswith("cairn_prediction_log_dropped_total"))
                        row["drift_windows"] = sum(v for k, v in m.items()
                                                   if k.startswith("cairn_drift_windows_total"))
                        sealed = list((state / "predictions" / model / "predictions").glob("*.parquet"))
                        size = sum(p.stat().st_size for p in sealed)
                        row["bytes_per_record"] = size / row["logged_rows"] if row["logged_rows"] else None
                    rows.append(row)
                    bench.log(f"{model} pair {pair} monitoring {'on' if on else 'off'}: "
                              f"{r['rps']:.0f} req/s" + (f", logged {row['logged_rows']:.0f}, dropped "
                                                          f"{row['dropped_rows']:.0f}" if on else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("| model | monitoring | req/s (median of pairs) | p50 µs | p99 µs | rows logged | dropped | drift windows | bytes/record (Parquet) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in bench.MODELS:
        for on in (False, True):
            sel = [r for r in rows if r["model"] == model and r["monitoring"] == on]
            med = lambda k: statistics.median(r[k] for r in sel)  # noqa: E731
            extra = (f"{sum(r['logged_rows'] for r in sel):.0f} | {sum(r['dropped_rows'] for r in sel):.0f} | "
                     f"{sum(r['drift_windows'] for r in sel):.0f} | {med('bytes_per_record'):.1f}") if on else "— | — | — | —"
            print(f"| {model} | {'on' if on else 'off'} | {med('rps'):.0f} | {med('p50_us'):.0f} | "
                  f"{med('p99_us'):.0f} | {extra} |")
        off = statistics.median(r["rps"] for r in rows if r["model"] == model and not r["monitoring"])
        on_ = statistics.median(r["rps"] for r in rows if r["model"] == model and r["monitoring"])
        print(f"\n{model}: monitoring on serves {on_ / off:.1%} of off")
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    out = bench.RESULTS / f"monitoring-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(rows, indent=2))
    bench.log(f"wrote {out}")


if __name__ == "__main__":
    main()
