"""Every query of the Grafana dashboard (deploy/grafana/cairn.json) returns data from a real
Prometheus scraping a live server.

Run: python tests/compat/check_grafana.py [path/to/cairn]   (default: target/release/cairn;
`prometheus` and `promtool` on PATH, Debian package `prometheus`; numpy and tritonclient.grpc
for the gRPC load).

1. The dashboard's structure: unique panel ids, grid positions inside 24 columns that do not
   overlap, the datasource variable on every panel and target, a refId and an expr on every
   target, `$__rate_interval` as every range, the `model` variable from
   label_values(cairn_request_success_total, model), every metric name one the server exports.
2. A temporary copy of models/ with what makes the rarer series exist: a second tabular-small
   version (shadowed), a model whose config asks for the CUDA engine with `fallback = "cpu"`, and
   one whose model file is corrupt (a load failure). The server starts on it with a small
   prediction-log queue (large iris requests are dropped, by design) and a training config.
3. Deployments: iris stable 1 with version 2 as a canary, tabular-small stable 1 with version 2
   as a shadow; both trials long enough never to decide. One iris training job (publish off),
   finished before the load starts.
4. Load from a few threads for the whole check: iris rows shifted on petal_length (drift), good
   and wrong-shape requests to the other models (failure series), feedback for iris with unknown
   and duplicate rows (feedback and quality series), and gRPC calls with Triton's client (the
   gRPC series, an unknown model among them).
5. Prometheus (scrape interval 1 s) scrapes the server; once it holds enough samples for the
   rate windows, every target expr, with `$__rate_interval` = 15s and the variables at their
   defaults (`$model` = All = `.*`), must return a series with a finite value. Each expr is then
   run with `$model` = iris, and every series it returns must be iris's (or have no model).

Every failure is collected; the script exits non-zero listing them all.
"""

import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import FAILURES, check, finish  # noqa: E402
from cairn_server import ROOT, Server  # noqa: E402

BINARY = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "cairn")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "cairn.json")

# What Grafana would put in for a 1 s scrape interval is at least 4 s; 15 s holds enough samples
# that a rate over it never misses a scrape.
RATE_INTERVAL = "15s"
DATASOURCE_VAR = "DS_PROMETHEUS"
TOTAL_TIMEOUT_S = 300
# After the first full pass, failing queries are retried for this long: drift windows, the
# training job and lazily created counters appear only once the load has run a while.
RETRY_S = 60
# A time series panel's range query spans this much of the most recent data.
RANGE_S = 10
IRIS_SHIFT = 1.5



class Timeout(Exception):
    pass


def on_alarm(signum, frame):
    raise Timeout(f"the check ran past {TOTAL_TIMEOUT_S} s")


# --------------------------------------------------------------------------------------------
# The dashboard
# --------------------------------------------------------------------------------------------

def all_panels(dashboard):
    """Every panel, rows' nested (collapsed) panels included."""
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def validate_dashboard(d):
    """Structure checks; returns [(panel title, target)] for every query panel's target."""
    check(isinstance(d.get("schemaVersion"), int) and 36 <= d["schemaVersion"] <= 41,
          f"schemaVersion {d.get('schemaVersion')!r} is not a current one (36-41)")
    for key in ("uid", "title"):
        check(isinstance(d.get(key), str) and d[key], f"the dashboard has no {key}")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get(DATASOURCE_VAR)
    check(ds is not None and ds.get("type") == "datasource" and ds.get("query") == "prometheus",
          f"no datasource variable {DATASOURCE_VAR} of type prometheus")
    model = variables.get("model")
    want = "label_values(cairn_request_success_total, model)"
    query = model and model.get("query")
    query = query.get("query") if isinstance(query, dict) else query
    check(model is not None and model.get("type") == "query" and query == want
          and model.get("includeAll") and model.get("allValue") == ".*",
          f"the model variable must be a query variable {want} with All = .*")

    ids, targets, boxes = set(), [], []
    for p in all_panels(d):
        title = p.get("title") or f"panel {p.get('id')}"
        pid = p.get("id")
        check(isinstance(pid, int) and pid not in ids, f"{title}: id {pid!r} missing or not unique")
        ids.add(pid)
        g = p.get("gridPos", {})
        if check(all(isinstance(g.get(k), int) for k in "hwxy"), f"{title}: gridPos {g} lacks h, w, x or y"):
            check(g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0,
                  f"{title}: gridPos {g} is outside the 24 columns")
            for other, og in boxes:
                if (g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"]
                        and g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]):
                    check(False, f"{title}: gridPos {g} overlaps {other} {og}")
            boxes.append((title, g))
        if p.get("type") == "row":
            continue
        ds_ref = {"type": "prometheus", "uid": "${" + DATASOURCE_VAR + "}"}
        check(p.get("datasource") == ds_ref, f"{title}: datasource {p.get('datasource')} is not {ds_ref}")
        ts = p.get("targets")
        if not check(isinstance(ts, list) and ts, f"{title}: no targets"):
            continue
        refs = set()
        for t in ts:
            ref = t.get("refId")
            check(isinstance(ref, str) and ref and ref not in refs, f"{title}: refId {ref!r} missing or repeated")
            refs.add(ref)
            check(t.get("datasource", ds_ref) == ds_ref, f"{title} {ref}: datasource {t.get('datasource')}")
            expr = t.get("expr")
            if not check(isinstance(expr, str) and expr.strip(), f"{title} {ref}: no expr"):
                continue
            for r in re.findall(r"\[([^\]]*)\]", expr):
                check(r == "$__rate_interval", f"{title} {ref}: range [{r}] is not [$__rate_interval]")
            targets.append((title, t))
    return targets


def substitute(expr, d, overrides=None):
    """The expr as Grafana sends it: built-in intervals and each variable's default (All is its
    allValue; a multi-value selection becomes a regex alternation)."""
    expr = expr.replace("${__rate_interval}", RATE_INTERVAL).replace("$__rate_interval", RATE_INTERVAL)
    for v in d.get("templating", {}).get("list", []):
        name = v["name"]
        if v.get("type") == "datasource":
            continue
        if overrides and name in overrides:
            value = overrides[name]
        else:
            current = v.get("current", {}).get("value")
            values = current if isinstance(current, list) else [current]
            if "$__all" in values:
                value = v.get("allValue") or ".*"
            else:
                escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", str(x)) for x in values]
                value = escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        # In a PromQL string a backslash is itself escaped.
        value = value.replace("\\", "\\\\")
        expr = re.sub(r"\$\{" + name + r"(:[a-z]+)?\}|\$" + name + r"\b", lambda _: value, expr)
    check("$" not in expr, f"unresolved variable left in {expr}")
    return expr


METRIC_NAME = re.compile(r"\b((?:cairn|process)_[a-zA-Z0-9_]+)\b")


def metric_names(expr):
    names = set()
    for name in METRIC_NAME.findall(expr):
        names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, name):
    """SIGTERM, then SIGKILL if it has not gone within 20 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        print(f"  {name} ignored SIGTERM for 20 s; killed")
        proc.kill()
        proc.wait(timeout=20)


class Prometheus:
    def __init__(self, work, target):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: cairn
    static_configs:
      - targets: ["{target}"]
""")
        lint = subprocess.run(["promtool", "check", "config", config], capture_output=True, text=True, timeout=30)
        check(lint.returncode == 0, f"promtool check config: {lint.stdout}{lint.stderr}")
        self.log = open(os.path.join(work, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=work,
        )
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                sys.exit("prometheus did not start:\n" + open(self.log.name).read()[-3000:])
            time.sleep(0.2)

    def get(self, path, **params):
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=15) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)

    def query(self, expr, over_s=0):
        """(series, series with a finite value, error): an instant query at now, or with
        `over_s` a range query over the last `over_s` seconds (as a time series panel asks)."""
        if over_s:
            now = time.time()
            answer = self.get("/api/v1/query_range", query=expr, start=now - over_s, end=now, step=1)
        else:
            answer = self.get("/api/v1/query", query=expr)
        if answer.get("status") != "success":
            return [], [], f"{answer.get('errorType')}: {answer.get('error')}"
        data = answer["data"]
        kind = data["resultType"]
        if kind == "scalar":
            series = [{"metric": {}, "values": [data["result"]]}]
        elif kind == "vector":
            series = [{"metric": s["metric"], "values": [s["value"]]} for s in data["result"]]
        elif kind == "matrix":
            series = data["result"]
        else:
            return [], [], f"the query gave a {kind}"
        finite = [s for s in series if any(math.isfinite(float(v)) for _, v in s["values"])]
        return series, finite, None

    def stop(self):
        stop(self.proc, "prometheus")
        self.log.close()


# --------------------------------------------------------------------------------------------
# The repository and the load
# --------------------------------------------------------------------------------------------

def make_repo(work):
    repo = os.path.join(work, "repo")
    shutil.copytree(os.path.join(ROOT, "models"), repo,
                    ignore=shutil.ignore_patterns("*.py", ".cairn", ".staging", "__pycache__"))
    # A second tabular-small version to shadow (both served).
    tab = os.path.join(repo, "tabular-small")
    shutil.copytree(os.path.join(tab, "1"), os.path.join(tab, "2"))
    with open(os.path.join(tab, "config.toml")) as f:
        config = f.read()
    with open(os.path.join(tab, "config.toml"), "w") as f:
        f.write("version_policy = { latest = { num_versions = 2 } }\n" + config)
    # The CUDA engine is not in this build: the model loads on tract and counts a fallback.
    fb = os.path.join(repo, "tabular-fallback")
    os.makedirs(fb)
    shutil.copytree(os.path.join(tab, "1"), os.path.join(fb, "1"))
    with open(os.path.join(fb, "config.toml"), "w") as f:
        f.write(config + '\n[engine]\nkind = "cuda"\nfallback = "cpu"\n')
    # A version that cannot load: cairn_model_load_failures_total and model_ready 0.
    broken = os.path.join(repo, "broken", "1")
    os.makedirs(broken)
    with open(os.path.join(broken, "model.onnx"), "wb") as f:
        f.write(b"this is not an ONNX model")
    with open(os.path.join(repo, "broken", "config.toml"), "w") as f:
        f.write("max_batch_size = 8\n")

    train = os.path.join(work, "train")
    os.makedirs(train)
    # One small trial: the job takes seconds; publishing off, so the canary stays as it is.
    with open(os.path.join(train, "iris.toml"), "w") as f:
        f.write(f"""model = "iris"
seed = 1
threads = 1
[data]
path = {json.dumps(os.path.join(repo, "iris", "train.csv"))}
features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
target = "output.label"
[trainer]
kind = "logistic"
epochs = 20
batch_size = 32
learning_rate = 0.05
[gate]
metric = "accuracy"
margin = 1.0
[output]
publish = false
""")
    return repo, train


def iris_rows(repo):
    rows = []
    with open(os.path.join(repo, "iris", "train.csv")) as f:
        next(f)
        for line in f:
            *x, label = line.strip().split(",")
            x = [float(v) for v in x]
            x[2] += IRIS_SHIFT
            rows.append((x, int(float(label))))
    return rows


class Load:
    """Threads that keep the server busy, and one that sends iris feedback, until stopped."""

    def __init__(self, server, repo, threads=4):
        self.server = server
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.statuses = {}
        self.errors = []
        self.labelled = []  # (request id, label) waiting for feedback
        self.rows = iris_rows(repo)
        self.samples = {m: open(os.path.join(repo, m, "1", "sample.json"), "rb").read()
                        for m in ("tabular-small", "mlp-large", "tabular-fallback")}
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]
        self.threads.append(threading.Thread(target=self._feedback, daemon=True))
        self.threads.append(threading.Thread(target=self._grpc, daemon=True))
        for t in self.threads:
            t.start()

    def _count(self, what, status, expected):
        with self.lock:
            self.statuses[(what, status)] = self.statuses.get((what, status), 0) + 1
            if status != expected and len(self.errors) < 20:
                self.errors.append(f"{what} answered {status}, expected {expected}")

    def _send(self, what, path, body, expected):
        try:
            status, _, answer = self.server.call("POST", path, body)
        except (OSError, http.client.HTTPException) as e:
            if not self.stop_event.is_set():
                self._count(what, type(e).__name__, expected)
            return None
        self._count(what, status, expected)
        return answer

    def _run(self, n):
        rng = random.Random(n)
        i = 0
        while not self.stop_event.is_set():
            i += 1
            x, label = rng.choice(self.rows)
            rid = f"t{n}-{i}"
            body = {"id": rid, "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": x}]}
            if self._send("iris", "/v2/models/iris/infer", body, 200) is not None:
                with self.lock:
                    self.labelled.append((rid, label))
            if i % 10 == 0:
                batch = [v for _ in range(64) for v in rng.choice(self.rows)[0]]
                self._send("iris x64", "/v2/models/iris/infer",
                           {"inputs": [{"name": "input", "shape": [64, 4], "datatype": "FP32", "data": batch}]}, 200)
            for model in ("tabular-small", "tabular-fallback"):
                self._send(model, f"/v2/models/{model}/infer", self.samples[model], 200)
            if i % 4 == 0:
                self._send("mlp-large", "/v2/models/mlp-large/infer", self.samples["mlp-large"], 200)
            if i % 5 == 0:
                # Wrong shape: 400, counted as reason="invalid". Not sent to iris or
                # tabular-small, whose candidates would be judged on it.
                for model in ("mlp-large", "tabular-fallback"):
                    bad = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
                    self._send(f"{model} (bad shape)", f"/v2/models/{model}/infer", bad, 400)

    def _feedback(self):
        sent = 0
        while not self.stop_event.wait(0.5):
            with self.lock:
                items, self.labelled = self.labelled, []
            if not items:
                continue
            feedback = [{"id": rid, "row": 0, "label": label} for rid, label in items]
            # One unknown id and one repeat per call: every outcome has a series.
            feedback.append({"id": f"never-sent-{sent}", "label": 0})
            feedback.append(feedback[0])
            self._send("iris feedback", "/v2/models/iris/feedback", {"feedback": feedback}, 200)
            sent += 1

    def _grpc(self):
        """A few gRPC calls a second with Triton's client, for the gRPC panel: health, metadata,
        an inference and a call for a model that does not exist (NOT_FOUND)."""
        import numpy as np
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.server.grpc)
        rows = np.array([self.rows[0][0]], dtype=np.float32)
        try:
            while not self.stop_event.wait(0.2):
                try:
                    client.is_server_live()
                    client.get_model_metadata("iris")
                    inputs = [grpcclient.InferInput("input", list(rows.shape), "FP32")]
                    inputs[0].set_data_from_numpy(rows)
                    client.infer("iris", inputs)
                    self._count("grpc", "OK", "OK")
                except InferenceServerException as e:
                    self._count("grpc", e.status(), "OK")
                try:
                    client.get_model_metadata("no-such-model")
                    self._count("grpc unknown model", "OK", "StatusCode.NOT_FOUND")
                except InferenceServerException as e:
                    self._count("grpc unknown model", e.status(), "StatusCode.NOT_FOUND")
        finally:
            client.close()

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=35)


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------

def setup_deployments(server):
    never = {"min_requests": 1_000_000_000}
    for path, body in [
        ("/v2/models/iris/deployment/stable", {"version": 1}),
        ("/v2/models/iris/deployment/canary", {"version": 2, "weight": 0.5, "criteria": never}),
        ("/v2/models/tabular-small/deployment/stable", {"version": 1}),
        ("/v2/models/tabular-small/deployment/shadow", {"version": 2, "criteria": never}),
    ]:
        status, _, answer = server.call("POST", path, body)
        check(status == 200, f"POST {path} answered {status}: {answer}")


def run_queries(prom, targets, d):
    """Every target, retried until it returns a finite series or RETRY_S passes: {(title,
    refId): (series, finite series, error)}. A refused query is not retried."""
    results = {}
    pending = list(targets)
    started = time.time()
    first = True
    while pending:
        still = []
        for title, t in pending:
            series, finite, error = prom.query(substitute(t["expr"], d), 0 if t.get("instant") else RANGE_S)
            results[(title, t["refId"])] = (len(series), len(finite), error)
            if error is None and not finite:
                still.append((title, t))
        pending = still
        if first and pending:
            names = ", ".join(f"{title} {t['refId']}" for title, t in pending)
            print(f"  without data on the first pass (retrying up to {RETRY_S} s): {names}")
        first = False
        if not pending or time.time() > started + RETRY_S:
            break
        time.sleep(2)
    if time.time() - started > 5:
        print(f"  queries done after {time.time() - started:.0f} s")
    return results


def main():
    if not os.access(BINARY, os.X_OK):
        sys.exit(f"no server binary at {BINARY}")
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on PATH (Debian package `prometheus`)")
    t0 = time.time()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TOTAL_TIMEOUT_S)

    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    targets = validate_dashboard(dashboard)
    print(f"dashboard: {len(all_panels(dashboard))} panels, {len(targets)} queries; structure checked")

    work = tempfile.mkdtemp(prefix="cairn-grafana-")
    server = prom = load = None
    try:
        repo, train = make_repo(work)
        server = Server(BINARY, repo, "--grpc-listen", "127.0.0.1:0", "--state-dir", os.path.join(work, "state"),
                        "--train-config-dir", train,
                        # A 64-row iris request (2304 bytes of tensors) never fits, a single row (36)
                        # does while the writer keeps up: drops by queue_bytes, and still the rows
                        # drift and quality need.
                        "--prediction-log-queue-bytes", "2048", cwd=work)
        server.wait_ready(["iris", "tabular-small", "mlp-large", "tabular-fallback"])
        setup_deployments(server)
        status, _, job = server.call("POST", "/v2/models/iris/train", {"reason": "dashboard check"})
        check(status == 202, f"POST /v2/models/iris/train answered {status}: {job}")
        # Finished before the load starts: on a starved machine the load would hold it back.
        deadline = time.time() + 120
        while status in (200, 202) and job.get("state") == "running" and time.time() < deadline:
            time.sleep(0.2)
            status, _, job = server.call("GET", f"/v2/training/jobs/{job['id']}")
        check(status == 200 and job.get("state") in ("passed", "refused", "published"),
              f"the training job ended as {job.get('state') if isinstance(job, dict) else job}: "
              f"{job.get('error') if isinstance(job, dict) else ''}")
        load = Load(server, repo)
        prom = Prometheus(work, server.url)
        print(f"server at {server.url}, prometheus at {prom.base}; load running")

        # Enough samples for a rate over RATE_INTERVAL, with traffic in all of them.
        need = int(RATE_INTERVAL.rstrip("s"))
        deadline = time.time() + 90
        while True:
            _, finite, _ = prom.query(f"count_over_time(cairn_uptime_seconds[{RATE_INTERVAL}])")
            if finite and float(finite[0]["values"][-1][1]) >= need - 1:
                break
            if time.time() > deadline:
                sys.exit(f"prometheus has not scraped the server for {RATE_INTERVAL}:\n"
                         + open(prom.log.name).read()[-3000:])
            time.sleep(1)
        _, up, _ = prom.query('up{job="cairn"} == 1')
        check(len(up) == 1, "the cairn target is not up")

        # The model variable's own query, as Grafana runs it.
        answer = prom.get("/api/v1/label/model/values", **{"match[]": "cairn_request_success_total"})
        models = answer.get("data", [])
        check({"iris", "tabular-small", "mlp-large"} <= set(models),
              f"label_values(cairn_request_success_total, model) gives {models}")

        results = run_queries(prom, targets, dashboard)

        # Every metric the dashboard names exists (read after the queries: some families appear
        # only with their first event).
        with urllib.request.urlopen(f"http://{server.url}/metrics", timeout=10) as r:
            exposition = r.read().decode()
        families = {l.split()[2] for l in exposition.splitlines() if l.startswith("# TYPE")}
        used = set()
        for title, t in targets:
            for name in metric_names(t["expr"]):
                used.add(name)
                check(name in families, f"{title} {t['refId']}: {name} is not a metric the server exports")

        # With one model chosen, only that model's series come back (a query that forgot the
        # filter, or drops it in an aggregation's `without`, shows here).
        leaks = []
        for title, t in targets:
            series, _, error = prom.query(substitute(t["expr"], dashboard, {"model": "iris"}),
                                          0 if t.get("instant") else RANGE_S)
            others = {s["metric"].get("model") for s in series} - {"iris", None}
            if error is None and others:
                leaks.append(f"{title} {t['refId']}: {sorted(others)}")
        check(not leaks, f"with $model = iris, queries return other models: {leaks}")

        load.stop()
        with load.lock:
            statuses = dict(load.statuses)
            errors = list(load.errors)
        check(not errors, f"unexpected answers under load: {errors[:5]}")
        sent = sum(statuses.values())
        print(f"load: {sent} requests ({sum(v for (w, s), v in statuses.items() if s == 400)} wrong-shape 400s)")

        width = max(len(title) for title, _ in targets) + 2
        print(f"\n{'panel':{width}}target  series  finite")
        for title, t in targets:
            count, finite, error = results[(title, t["refId"])]
            print(f"{title:{width}}{t['refId']:8}{count:6}  {finite:6}" + (f"  {error}" if error else ""))
            check(error is None, f"{title} {t['refId']}: Prometheus refused the query: {error}")
            check(error is not None or finite > 0,
                  f"{title} {t['refId']}: no series with a finite value for {substitute(t['expr'], dashboard)}"
                  + (f" ({count} series, all NaN)" if count else ""))
        unused = sorted(f for f in families if f.startswith("cairn_") and f not in used)
        if unused:
            print(f"\nexported but on no panel: {', '.join(unused)}")
    except Timeout as e:
        check(False, str(e))
    finally:
        signal.alarm(0)
        if load is not None:
            load.stop()
        if prom is not None:
            prom.stop()
        if server is not None:
            if server.stop(timeout=20) == -signal.SIGKILL:
                print("  server ignored SIGTERM for 20 s; killed")
            if FAILURES:
                print("server log (last 15 lines):\n" + "".join(server.log[-15:]))
        shutil.rmtree(work, ignore_errors=True)

    took = time.time() - t0
    finish(f"\ngrafana dashboard checks passed in {took:.0f} s: {len(targets)} queries, each with data", f"check(s) failed ({took:.0f} s)")


if __name__ == "__main__":
    main()
