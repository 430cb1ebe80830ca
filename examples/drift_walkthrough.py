#!/usr/bin/env python3
"""Send iris traffic from a shifted distribution, then its ground truth, to a running cairn.

    python3 examples/drift_walkthrough.py [--url http://localhost:8000] [--shift 1.5]

Rows are drawn from models/iris/train.csv with `petal_length` moved by --shift centimetres
(the other features untouched); the true class of each row is sent back as feedback. Then the
drift report and live quality are printed. Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import urllib.request
from pathlib import Path

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
HERE = Path(__file__).resolve().parent


def call(url: str, body: object | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://localhost:8000")
    ap.add_argument("--shift", type=float, default=1.5)
    ap.add_argument("--rows", type=int, default=400)
    args = ap.parse_args()
    with open(HERE.parent / "models/iris/train.csv") as f:
        train = [(([float(r[k]) for k in FEATURES]), int(r["output.label"])) for r in csv.DictReader(f)]
    rng = random.Random(0)
    feedback = []
    sent = 0
    while sent < args.rows:
        batch = [rng.choice(train) for _ in range(20)]
        data = []
        for x, _ in batch:
            x = list(x)
            x[2] += args.shift
            data.extend(x)
        answer = call(
            f"{args.url}/v2/models/iris/infer",
            {"inputs": [{"name": "input", "shape": [len(batch), 4], "datatype": "FP32", "data": data}]},
        )
        feedback += [{"id": answer["id"], "row": i, "label": y} for i, (_, y) in enumerate(batch)]
        sent += len(batch)
    print(f"sent {sent} rows with petal_length shifted by {args.shift}")
    print("feedback:", call(f"{args.url}/v2/models/iris/feedback", {"feedback": feedback}))
    drift = call(f"{args.url}/v2/models/iris/drift")
    for version, v in drift["versions"].items():
        for report in v["reports"]:
            print(f"version {version}, window {report['from']} .. {report['to']}: drifted {report['drifted']}")
            for name, f in report["features"].items():
                stats = {k: f.get(k) for k in ("psi", "js", "wasserstein_norm")}
                print(f"  {name:13} psi {stats['psi']:.3f}  ks p {f['ks']['pvalue']:.2e}  violations {f['violations']}")
    quality = call(f"{args.url}/v2/models/iris/quality")
    for version, q in quality["versions"].items():
        for w in q.get("windows", [])[-1:] + [q.get("current")]:
            if w:
                print(f"version {version} quality over {w['rows']} rows: {w.get('classification')}")
    print(f"report page: {args.url}/v2/models/iris/drift/report   status page: {args.url}/")


if __name__ == "__main__":
    main()
