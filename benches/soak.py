#!/usr/bin/env python3
"""Soak: version swaps and load/unload cycles under load (a benchmark, not a CI test).

    python3 benches/soak.py                       # 1,000 swaps + 1,000 load/unload cycles
    python3 benches/soak.py --swaps 100 --cycles 100

While the `loadgen` client keeps single-row requests (no version named) flowing to
`tabular-small`, the script
  1. measures steady-state latency for a while,
  2. swaps the serving version 1,000 times (blue/green switches between versions 1 and 2, every
     tenth one through a canary that is promoted), and
  3. loads and unloads `mlp-large` (5 MB of weights, warmed up at each load) 1,000 times,
then reports failed requests (target 0), p99 during the swaps against steady state (target at
most 2x) and the server's RSS at the end against the start (target within 10 %: the memory a
dropped version held comes back). Results: stdout and benches/results/soak-*.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches" / "load"))
from run import bodies, build  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "compat"))
from cairn_server import Server  # noqa: E402


def log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--swaps", type=int, default=1000)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--steady", type=float, default=10.0, help="seconds of steady-state load")
    args = ap.parse_args()

    loadgen = build()
    work = Path(tempfile.mkdtemp(prefix="cairn-soak-"))
    repo = work / "repo"
    shutil.copytree(ROOT / "models" / "tabular-small", repo / "tabular-small")
    shutil.copytree(ROOT / "models" / "tabular-small" / "1", repo / "tabular-small" / "2")
    config = (repo / "tabular-small" / "config.toml").read_text()
    (repo / "tabular-small" / "config.toml").write_text(
        config.replace("instances = 2", "instances = 2\nversion_policy = { all = {} }")
    )
    shutil.copytree(ROOT / "models" / "mlp-large", repo / "mlp-large")
    body = bodies(work)
    path, header_len = body["tabular-small"]["binary"]

    server = Server(ROOT / "target" / "release" / "cairn", repo, "--state-dir", work / "state",
                    env={"NO_COLOR": "1", "RUST_LOG": "warn,cairn::server=info", "PATH": "/usr/bin:/bin"},
                    inherit=False)
    server.wait_ready()
    url = f"http://{server.url}/v2/models/tabular-small/infer"

    def load(duration: float, until: Path | None = None) -> dict:
        # The churn phases measure from the first request: the server is warm by then.
        warmup = "1" if until is None else "0"
        cmd = [str(loadgen), "http", "--url", url, "--body", str(path), "--header-len", str(header_len),
               "--concurrency", str(args.concurrency), "--duration", str(duration), "--warmup", warmup]
        if until:
            cmd += ["--until-file", str(until)]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "swaps": args.swaps, "cycles": args.cycles, "concurrency": args.concurrency}
    try:
        log("steady state")
        steady = load(args.steady)
        rss_start = server.rss() // 1024
        result["steady"] = steady
        log(f"steady: {steady['rps']:,.0f} req/s p99 {steady['p99_us']} µs, RSS {rss_start / 1024:.1f} MiB")

        churn: dict = {}

        def swaps(stop: Path):
            t0 = time.time()
            for i in range(args.swaps):
                target = 1 + i % 2
                if i % 10 == 9:
                    server.ok("POST", "/v2/models/tabular-small/deployment/canary",
                              {"version": target, "weight": 0.5, "criteria": {"auto_promote": False}})
                    server.ok("POST", "/v2/models/tabular-small/deployment/promote", {})
                else:
                    server.ok("POST", "/v2/models/tabular-small/deployment/stable", {"version": target})
            churn["swap_seconds"] = time.time() - t0
            stop.touch()

        def cycles(stop: Path):
            t0 = time.time()
            for _ in range(args.cycles):
                server.ok("POST", "/v2/repository/models/mlp-large/unload", {})
                server.ok("POST", "/v2/repository/models/mlp-large/load", {})
            churn["cycle_seconds"] = time.time() - t0
            stop.touch()

        for phase, work_fn in (("swaps", swaps), ("cycles", cycles)):
            stop = work / f"stop-{phase}"
            worker = threading.Thread(target=work_fn, args=(stop,))
            log(f"{phase} under load")
            worker.start()
            result[phase] = load(3600, until=stop)
            worker.join()
            result[phase]["rss_after_kib"] = server.rss() // 1024
            log(f"{phase}: {result[phase]['rps']:,.0f} req/s p99 {result[phase]['p99_us']} µs, "
                f"{result[phase]['errors']} failed, RSS {result[phase]['rss_after_kib'] / 1024:.1f} MiB")
        time.sleep(2)  # let dropped versions drain and free
        rss_end = server.rss() // 1024
        result.update(churn=churn, rss_start_kib=rss_start, rss_end_kib=rss_end)
    finally:
        server.stop()

    failed = sum(result[k]["errors"] for k in ("steady", "swaps", "cycles"))
    steady_p99 = max(result["steady"]["p99_us"], 1)
    swap_ratio = result["swaps"]["p99_us"] / steady_p99
    cycle_ratio = result["cycles"]["p99_us"] / steady_p99
    rss_change = (result["rss_end_kib"] - result["rss_start_kib"]) / result["rss_start_kib"]
    result["summary"] = {"failed_requests": failed, "p99_ratio_swaps": swap_ratio,
                         "p99_ratio_cycles": cycle_ratio, "rss_change": rss_change}
    out = ROOT / "benches" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"soak-{dt.datetime.now():%Y%m%d-%H%M%S}.json").write_text(json.dumps(result, indent=1))
    sw, cy, st = result["swaps"], result["cycles"], result["steady"]
    print(f"""
| Soak (c={args.concurrency}, single-row binary requests to tabular-small) | Result | Target |
|---|---:|---:|
| Steady state | {st['rps']:,.0f} req/s, p99 {st['p99_us']} µs | |
| {args.swaps} version swaps ({churn['swap_seconds']:.1f} s) | {sw['requests']:,} requests, p99 {sw['p99_us']} µs ({swap_ratio:.2f}× steady) | ≤ 2× |
| {args.cycles} load/unload cycles of mlp-large ({churn['cycle_seconds']:.1f} s) | {cy['requests']:,} requests, p99 {cy['p99_us']} µs ({cycle_ratio:.2f}× steady) | |
| Failed requests | {failed} | 0 |
| RSS after warm-up / at the end | {result['rss_start_kib']/1024:.1f} MiB / {result['rss_end_kib']/1024:.1f} MiB ({100*rss_change:+.1f} %) | within 10 % |
""")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
