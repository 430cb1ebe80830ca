"""What a canary or a shadow costs the prediction log: syncs per second and how far the synced
watermark trails, against one version alone, at concurrency 64.

    .venv/bin/python benches/load/log_mix.py [--duration 10] [--rounds 2]

tabular-small with two identical versions (the same model file, so the same logged columns) and a
third whose graph has one more output (so other logged columns: another layout), monitoring on
(every row logged, `prediction_log_fsync_ms` 1000, the default). Four setups, alternated in
rounds on fresh servers: "one" (version 1 only answers), "canary" (version 2 a canary at weight
0.1), "shadow" (version 2 scores a copy of every request) and "shadow, other layout" (version 3
does). For each run:
throughput, `fdatasync`/`fsync` calls per second over the measured window (`strace -c -f` on the
server), and `cairn_prediction_log_lag_seconds` sampled every 100 ms (median and max). Prints a
Markdown table and writes benches/results/log-mix-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

MONITORING = "\n[monitoring]\nenabled = true\n"
# The trials never decide during a run: a promotion would leave one version serving.
HOLD = {"criteria": {"auto_promote": False, "auto_rollback": False}}
SETUPS = {
    "one": None,
    "canary": ("canary", {"version": 2, "weight": 0.1, **HOLD}),
    "shadow": ("shadow", {"version": 2, **HOLD}),
    "shadow, other layout": ("shadow", {"version": 3, **HOLD}),
}


def repo(work: Path) -> Path:
    root = work / "repo"
    model = root / "tabular-small"
    shutil.copytree(bench.ROOT / "models" / "tabular-small", model)
    shutil.copytree(model / "1", model / "2")
    shutil.copytree(model / "1", model / "3")
    one_more_output(model / "3" / "model.onnx")
    config = model / "config.toml"
    # Both versions serve (a top-level key, so before the tables), both logged.
    config.write_text("version_policy = { all = {} }\n" + config.read_text() + MONITORING)
    return root


def one_more_output(path: Path) -> None:
    """The same graph with a copy of its first output as another output: the same answers,
    another logged layout."""
    import onnx
    from onnx import helper

    m = onnx.load(str(path))
    first = m.graph.output[0]
    m.graph.node.append(helper.make_node("Identity", [first.name], ["extra"]))
    extra = onnx.ValueInfoProto()
    extra.CopyFrom(first)
    extra.name = "extra"
    m.graph.output.append(extra)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def lag_sampler(addr: str, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        try:
            values = bench.metrics(addr)
            lag = values.get('cairn_prediction_log_lag_seconds{model="tabular-small"}')
            if lag is not None:
                out.append(lag)
        except Exception:  # noqa: BLE001 - a scrape that failed under load is skipped
            pass
        stop.wait(0.1)


def one_run(loadgen: Path, root: Path, work: Path, setup: str, args) -> dict:
    server = bench.Cairn(root)
    try:
        status, _, reply = server.call("POST", "/v2/models/tabular-small/deployment/stable", {"version": 1})
        assert status == 200, reply
        step = SETUPS[setup]
        if step:
            action, body = step
            status, _, reply = server.call("POST", f"/v2/models/tabular-small/deployment/{action}", body)
            assert status == 200, reply
        path, header_len = bench.bodies(work)["tabular-small"]["binary"]
        url = f"http://{server.addr}/v2/models/tabular-small/infer"
        pid = server.proc.pid
        strace_out = work / f"strace-{setup}.txt"
        lags: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=lag_sampler, args=(server.addr, stop, lags))
        # strace attaches after the warm-up and detaches at the end of the measured window.
        def traced():
            time.sleep(args.warmup)
            subprocess.run(["timeout", "-s", "INT", str(args.duration), "strace", "-c", "-f", "-e",
                            "trace=fdatasync,fsync", "-o", str(strace_out), "-p", str(pid)],
                           capture_output=True)
        tracer = threading.Thread(target=traced)
        tracer.start()
        sampler.start()
        r = bench.loadgen_http(loadgen, url, path, header_len, 64, args.duration, args.warmup)
        if step:
            status, _, deployment = server.call("GET", "/v2/models/tabular-small/deployment")
            assert deployment.get("candidate"), f"the trial ended during the run: {deployment}"
        stop.set()
        sampler.join()
        tracer.join()
        calls = 0
        for line in strace_out.read_text().splitlines():
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fdatasync|fsync)$", line)
            if m:
                calls += int(m.group(1))
        measured = lags[int(len(lags) * args.warmup / (args.warmup + args.duration)):] or lags
        return {
            "setup": setup,
            "rps": r["rps"],
            "p99_us": r["p99_us"],
            "syncs_per_s": calls / args.duration,
            "lag_median_s": statistics.median(measured) if measured else None,
            "lag_max_s": max(measured) if measured else None,
        }
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    loadgen = bench.build()
    work = Path(tempfile.mkdtemp(prefix="cairn-log-mix-"))
    root = repo(work)
    rows = []
    for rnd in range(args.rounds):
        for setup in SETUPS:
            row = one_run(loadgen, root, work, setup, args)
            row["round"] = rnd
            rows.append(row)
            bench.log(f"round {rnd} {setup}: {row['rps']:.0f} req/s, {row['syncs_per_s']:.1f} syncs/s, "
                      f"lag median {row['lag_median_s']} s, max {row['lag_max_s']} s")
    print("| Setup | req/s (each round) | syncs/s (each round) | watermark lag, median / max (each round) |")
    print("|---|---|---|---|")
    for setup in SETUPS:
        sel = [r for r in rows if r["setup"] == setup]
        rps = ", ".join(f"{r['rps']:,.0f}" for r in sel)
        syncs = ", ".join(f"{r['syncs_per_s']:.1f}" for r in sel)
        lags = ", ".join(f"{r['lag_median_s']:.2f} / {r['lag_max_s']:.2f} s" for r in sel)
        print(f"| {setup} | {rps} | {syncs} | {lags} |")
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    (bench.RESULTS / f"log-mix-{stamp}.json").write_text(json.dumps(rows, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
