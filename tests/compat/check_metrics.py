"""Lints the server's /metrics output with Prometheus' own `promtool check metrics`.

Run: python tests/compat/check_metrics.py [path/to/cairn] (promtool on PATH, Debian package
`prometheus`). Starts the binary on the example models, sends successful, failing and batched
traffic so every family has series, then pipes /metrics to promtool; any lint problem fails.
"""

import json
import os
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cairn_server import ROOT, Server  # noqa: E402

BINARY = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "cairn")


def main():
    server = Server(BINARY, os.path.join(ROOT, "models"),
                    "--state-dir", os.path.join(ROOT, "target", "check-metrics-state"))
    try:
        server.wait_ready()
        sample = open(os.path.join(ROOT, "models", "iris", "1", "sample.json"), "rb").read()
        for _ in range(20):
            assert server.call("POST", "/v2/models/iris/infer", sample)[0] == 200
        bad = json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
        assert server.call("POST", "/v2/models/iris/infer", bad.encode())[0] == 400
        with urllib.request.urlopen(f"http://{server.url}/metrics", timeout=10) as r:
            text = r.read()
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
        out = (check.stdout + check.stderr).decode()
        if check.returncode != 0 or out.strip():
            print(out)
            sys.exit(f"promtool check metrics found problems (exit {check.returncode})")
        families = len({l.split()[2] for l in text.decode().splitlines() if l.startswith("# TYPE")})
        print(f"promtool check metrics: clean ({families} metric families)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
