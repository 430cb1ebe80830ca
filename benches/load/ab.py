"""Two cairn binaries side by side, and the cost of the checked load.

    python3 benches/load/ab.py --baseline /path/to/old/cairn [--pairs 3] [--duration 10]
        [--models tabular-small,mlp-large] [--protocols json,binary,grpc] [--parts throughput]

1. Throughput and latency at concurrency 64 (tabular-small over JSON and binary HTTP unless
   told otherwise; `grpc` is ModelInfer on one HTTP/2 connection), in alternated pairs
   (baseline, then this tree's release binary), because run-to-run noise on a shared 2-core
   machine is larger than the differences looked for.
2. Server instructions per request (valgrind's callgrind, which counts instructions and so is
   repeatable on a noisy machine): the server's total over N single-row requests on one
   keep-alive connection, minus its total over none, divided by N.
3. Model load time with the checked load (a child process under model_load_memory_bytes)
   against loads in process only (--model-load-memory-bytes 0): the server's own
   cairn_model_load_duration_seconds of every shipped model, over several starts.

Prints a Markdown table per part and writes benches/results/ab-<date>.json.
"""

import argparse
import datetime as dt
import http.client
import json
import shutil
import statistics
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

sys.path.insert(0, str(bench.ROOT / "tests" / "compat"))
from cairn_server import Server  # noqa: E402


def _field(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _bytes(number: int, data: bytes) -> bytes:
    return _field(number, 2) + _varint(len(data)) + data


def grpc_body(work: Path, model: str, width: int) -> Path:
    """A serialized `ModelInferRequest` of one FP32 row in raw contents (as tritonclient.grpc
    sends it), written by hand from inference.proto's field numbers so that no protobuf
    package is needed."""
    row = [round(((i * 0.618) % 2.0) - 1.0, 6) for i in range(width)]
    shape = _varint(1) + _varint(width)
    tensor = _bytes(1, b"input") + _bytes(2, b"FP32") + _bytes(3, shape)
    message = _bytes(1, model.encode()) + _bytes(5, tensor) + _bytes(7, struct.pack(f"<{width}f", *row))
    path = work / f"{model}.pb"
    path.write_bytes(message)
    return path


def throughput(loadgen, baseline: Path, work: Path, args) -> list[dict]:
    repo = work / "repo"
    bodies = bench.bodies(work)
    rows = []
    for pair in range(args.pairs):
        for name, binary in (("before", baseline), ("after", bench.ROOT / "target" / "release" / "cairn")):
            server = bench.Cairn(repo, binary)
            try:
                for model in args.models:
                    for encoding in args.protocols:
                        if encoding == "grpc":
                            body = grpc_body(work, model, bench.MODELS[model])
                            r = bench.loadgen_http(loadgen, f"http://{server.grpc}", body, None, 64,
                                                   args.duration, args.warmup, grpc=True)
                        else:
                            path, header_len = bodies[model][encoding]
                            url = f"http://{server.addr}/v2/models/{model}/infer"
                            r = bench.loadgen_http(loadgen, url, path, header_len, 64, args.duration, args.warmup)
                        rows.append({"pair": pair, "build": name, "model": model, "encoding": encoding, **r})
                        bench.log(f"pair {pair} {name} {model} {encoding}: {r['rps']:.0f} req/s"
                                  f" ({r['errors']} errors)")
            finally:
                server.stop()
    return rows


def callgrind_total(binary: Path, repo: Path, body: bytes, headers: dict, requests: int, out: Path) -> int:
    server = Server(binary, repo, env={"NO_COLOR": "1", "RUST_LOG": "info", "PATH": "/usr/bin:/bin"}, inherit=False,
                    prefix=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"], wait=600)
    server.wait_ready(timeout=600)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    for _ in range(requests):
        conn.request("POST", "/v2/models/tabular-small/infer", body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
    conn.close()
    server.stop(timeout=600)
    for line in out.read_text().splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit(f"no total in {out}")


def instructions(baseline: Path, work: Path, args) -> list[dict]:
    repo = work / "repo"
    body = bench.bodies(work)["tabular-small"]
    out = []
    for encoding in ("json", "binary"):
        path, header_len = body[encoding]
        headers = {"Content-Type": "application/json"}
        if header_len is not None:
            headers["Inference-Header-Content-Length"] = str(header_len)
        data = path.read_bytes()
        for name, binary in (("before", baseline), ("after", bench.ROOT / "target" / "release" / "cairn")):
            idle = callgrind_total(binary, repo, data, headers, 0, work / f"cg-{name}-{encoding}-0")
            busy = callgrind_total(binary, repo, data, headers, args.requests, work / f"cg-{name}-{encoding}-n")
            per = (busy - idle) / args.requests
            bench.log(f"{name} {encoding}: {per:,.0f} instructions per request")
            out.append({"build": name, "encoding": encoding, "per_request": per})
    return out


def load_cost(work: Path, args) -> list[dict]:
    repo = work / "load-repo"
    for model in ("iris", "tabular-small", "mlp-large"):
        shutil.copytree(bench.ROOT / "models" / model, repo / model)
    out = []
    for start in range(args.starts):
        for mode, extra in (("checked", []), ("in process", ["--model-load-memory-bytes", "0"])):
            server = bench.Cairn(repo, extra=extra)
            try:
                values = bench.metrics(server.addr)
            finally:
                server.stop()
            for key, value in values.items():
                if key.startswith("cairn_model_load_duration_seconds{"):
                    out.append({"start": start, "mode": mode, "series": key, "seconds": value})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, required=True, help="the cairn binary to compare against")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--requests", type=int, default=2000, help="requests per callgrind run")
    ap.add_argument("--models", default="tabular-small", help="comma-separated, for the throughput part")
    ap.add_argument("--protocols", default="json,binary", help="comma-separated: json, binary, grpc")
    ap.add_argument("--parts", default="throughput,instructions,loads", help="which parts to run")
    args = ap.parse_args()
    args.models = args.models.split(",")
    args.protocols = args.protocols.split(",")
    parts = args.parts.split(",")
    loadgen = bench.build()
    work = Path(tempfile.mkdtemp(prefix="cairn-ab-"))
    for model in set(args.models) | {"tabular-small"}:
        shutil.copytree(bench.ROOT / "models" / model, work / "repo" / model)
    rows = throughput(loadgen, args.baseline, work, args) if "throughput" in parts else []
    counted = instructions(args.baseline, work, args) if "instructions" in parts else []
    loads = load_cost(work, args) if "loads" in parts else []

    print("| Model | Encoding | Build | req/s (each pair) | median req/s | median p50 | median p99 |")
    print("|---|---|---|---|---:|---:|---:|")
    for model in args.models:
        for encoding in args.protocols:
            for build in ("before", "after"):
                sel = [r for r in rows if r["model"] == model and r["encoding"] == encoding and r["build"] == build]
                if not sel:
                    continue
                rps = [r["rps"] for r in sel]
                print(f"| {model} | {encoding} | {build} | {', '.join(f'{x:,.0f}' for x in rps)} | "
                      f"{statistics.median(rps):,.0f} | {statistics.median(r['p50_us'] for r in sel):.0f} µs | "
                      f"{statistics.median(r['p99_us'] for r in sel):.0f} µs |")
    print()
    if counted:
        print("| Encoding | instructions per request, before | after | change |")
        print("|---|---:|---:|---:|")
        for encoding in ("json", "binary"):
            b = next(c["per_request"] for c in counted if c["encoding"] == encoding and c["build"] == "before")
            a = next(c["per_request"] for c in counted if c["encoding"] == encoding and c["build"] == "after")
            print(f"| {encoding} | {b:,.0f} | {a:,.0f} | {100 * (a - b) / b:+.1f} % |")
        print()
    if loads:
        print("| Version | checked load (median) | in process only (median) |")
        print("|---|---:|---:|")
    for series in sorted({l["series"] for l in loads}):
        med = {m: statistics.median(l["seconds"] for l in loads if l["series"] == series and l["mode"] == m)
               for m in ("checked", "in process")}
        label = series.split("{", 1)[1].rstrip("}")
        print(f"| {label} | {med['checked'] * 1000:.0f} ms | {med['in process'] * 1000:.0f} ms |")

    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    (bench.RESULTS / f"ab-{stamp}.json").write_text(
        json.dumps({"throughput": rows, "instructions": counted, "loads": loads}, indent=1))


if __name__ == "__main__":
    main()
