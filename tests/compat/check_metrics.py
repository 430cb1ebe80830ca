"""Lints the server's /metrics output with Prometheus' own `promtool check metrics`.

Run: python tests/compat/check_metrics.py [path/to/cairn] (promtool on PATH, Debian package
`prometheus`). Starts the binary on the example models, sends successful, failing and batched
traffic so every family has series, then pipes /metrics to promtool; any lint problem fails.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "cairn")


def post(url, body):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def main():
    proc = subprocess.Popen(
        [BINARY, "serve", "--listen", "127.0.0.1:0", "--model-repository", os.path.join(ROOT, "models"),
         "--state-dir", os.path.join(ROOT, "target", "check-metrics-state")],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=dict(os.environ, NO_COLOR="1"),
    )
    try:
        line = re.sub(r"\x1b\[[0-9;]*m", "", proc.stderr.readline())
        addr = re.search(r"listening on http://(\S+)", line).group(1)
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        base = f"http://{addr}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.1)
        sample = open(os.path.join(ROOT, "models", "iris", "1", "sample.json"), "rb").read()
        for _ in range(20):
            assert post(f"{base}/v2/models/iris/infer", sample) == 200
        bad = json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
        assert post(f"{base}/v2/models/iris/infer", bad.encode()) == 400
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            text = r.read()
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
        out = (check.stdout + check.stderr).decode()
        if check.returncode != 0 or out.strip():
            print(out)
            sys.exit(f"promtool check metrics found problems (exit {check.returncode})")
        families = len({l.split()[2] for l in text.decode().splitlines() if l.startswith("# TYPE")})
        print(f"promtool check metrics: clean ({families} metric families)")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
