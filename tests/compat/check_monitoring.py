"""End-to-end check of the prediction log, feedback and live quality against the standard
Python data tools.

Run: python tests/compat/check_monitoring.py [path/to/cairn]   (default: target/release/cairn)

1. iris (monitoring on, named features, small quality windows): a few hundred requests, single-
   and multi-row, with and without client ids, to the deployment and to named versions. Then
   feedback: most rows, some unknown ids and rows, one duplicate; every answer's counts must be
   exact. `GET /quality` must equal scikit-learn (accuracy, macro precision/recall/F1 with
   zero_division=0) on exactly the matched (truth, answered label) pairs, window by window, to
   1e-9 relative.
2. tabular-small (binary: ROC AUC on its class-1 probability) and tests/models/dtypes (its
   `f32_sum` output as a regressor: MAE, RMSE), the same way.
3. After SIGTERM, the sealed Parquet log read by pyarrow, pandas and DuckDB: all three agree on
   row count, ids, features (as sent, in float32), answered outputs, arms and versions; a DuckDB
   join of predictions with the feedback log reproduces the matched counts.
4. Crash: traffic, SIGKILL, the open segment's last message torn on purpose, restart (recovery
   seals it), more traffic, SIGTERM; everything sealed reads back with no error, nothing
   acknowledged as synced is lost except the torn message.

Every failure is collected; the script exits non-zero listing them all.
"""

import glob
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
from sklearn.datasets import load_iris, make_classification
from sklearn.metrics import (
    accuracy_score,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    roc_auc_score,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import FAILURES, check, finish  # noqa: E402
import cairn_server  # noqa: E402
from cairn_server import ROOT  # noqa: E402

BINARY = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "cairn")

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_QUALITY_WINDOW = 25
TABULAR_QUALITY_WINDOW = 40
DTYPES_QUALITY_WINDOW = 30
REL_TOL = 1e-9



def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-15)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------

class Server(cairn_server.Server):
    """The binary as these checks run it: its prediction log synced after every batch the
    writer takes (fsync 0), so that a SIGKILL loses nothing that was written."""

    def __init__(self, repo, state_dir, *extra):
        super().__init__(BINARY, repo, "--state-dir", state_dir, "--prediction-log-fsync-ms", "0", *extra)


def without_monitoring(config):
    """The config without its [monitoring] tables (this check writes its own)."""
    out, skipping = [], False
    for line in config.splitlines():
        if line.startswith("["):
            skipping = line.startswith("[monitoring")
        if not skipping:
            out.append(line)
    return "\n".join(out)


def model_repo(work, models):
    """A repository under `work`: {name: (source dir, extra config text)}."""
    repo = tempfile.mkdtemp(prefix="repo-", dir=work)
    for name, (src, extra) in models.items():
        shutil.copytree(src, os.path.join(repo, name))
        path = os.path.join(repo, name, "config.toml")
        with open(path) as f:
            kept = without_monitoring(f.read())
        with open(path, "w") as f:
            f.write(kept + "\n" + extra)
    return repo


IRIS_CONFIG = f"""[monitoring]
enabled = true
features = {json.dumps(IRIS_FEATURES)}
quality_window_rows = {IRIS_QUALITY_WINDOW}
window_rows = 50
baseline_rows = 100
"""

TABULAR_CONFIG = f"""[monitoring]
enabled = true
quality_window_rows = {TABULAR_QUALITY_WINDOW}
"""

DTYPES_CONFIG = f"""[monitoring]
enabled = true
inputs = ["f32"]
features = ["a", "b", "c", "d"]
prediction = "f32_sum"
quality_window_rows = {DTYPES_QUALITY_WINDOW}
"""


# --------------------------------------------------------------------------------------------
# Traffic
# --------------------------------------------------------------------------------------------

UUID_V7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def send_all(server, requests, workers=4):
    """Sends `requests` (dicts with path, body, client_id) concurrently; returns the answers in
    the same order. Checks the id of every answer."""

    def one(r):
        headers, body = server.ok("POST", r["path"], r["body"])
        rid = body.get("id")
        if r["client_id"] is not None:
            check(rid == r["client_id"], f"answer id {rid!r}, the client sent {r['client_id']!r}")
        else:
            check(isinstance(rid, str) and UUID_V7.match(rid) is not None,
                  f"server-made id {rid!r} is not a UUID v7")
        check(headers.get("x-request-id") == rid,
              f"x-request-id {headers.get('x-request-id')!r} differs from the body's id {rid!r}")
        return body

    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(one, requests))
    ids = [a["id"] for a in answers]
    check(len(set(ids)) == len(ids), f"{len(ids) - len(set(ids))} request ids answered twice")
    return answers


def output(answer, name):
    for o in answer["outputs"]:
        if o["name"] == name:
            return o
    sys.exit(f"answer has no output {name!r}: {answer}")


def iris_traffic(rng, count, prefix):
    """Requests to iris: rows near real iris rows (so the truth is known), 1 to 16 rows each,
    half with a client id, a quarter to a named version."""
    x_all, y_all = load_iris(return_X_y=True)
    requests = []
    for i in range(count):
        n = int(rng.choice([1, 1, 1, 1, 2, 3, 4, 7, 16]))
        idx = rng.integers(0, len(x_all), n)
        x = np.round(x_all[idx] + rng.normal(0, 0.25, (n, 4)), 3)
        # Some truth is deliberately wrong, so that no metric sits at 1.
        truth = [int(t) if rng.random() > 0.08 else int(rng.integers(0, 3)) for t in y_all[idx]]
        where = rng.random()
        version = "1" if where < 0.15 else "2" if where < 0.25 else None
        client_id = f"{prefix}-{i:04d}" if rng.random() < 0.5 else None
        body = {"inputs": [{"name": "input", "shape": [n, 4], "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        if client_id is not None:
            body["id"] = client_id
        path = "/v2/models/iris" + (f"/versions/{version}" if version else "") + "/infer"
        requests.append({"path": path, "body": body, "client_id": client_id, "x": x,
                         "truth": truth, "version": version})
    return requests


def iris_rows(requests, answers):
    """One dict per logged row, keyed by (request id, row), from what was sent and answered."""
    rows = {}
    for r, a in zip(requests, answers):
        expected_version = r["version"] or "2"
        check(a["model_version"] == expected_version,
              f"{r['path']} answered by version {a['model_version']}, expected {expected_version}")
        labels = output(a, "label")["data"]
        probs = np.array(output(a, "probabilities")["data"], dtype=np.float32).reshape(-1, 3)
        for k in range(len(r["truth"])):
            rows[(a["id"], k)] = {
                "version": int(a["model_version"]),
                "arm": "direct" if r["version"] else "stable",
                "x": r["x"][k].astype(np.float32),
                "truth": r["truth"][k],
                "label": int(labels[k]),
                "probs": probs[k],
                "single": len(r["truth"]) == 1,
            }
    return rows


# --------------------------------------------------------------------------------------------
# Feedback and quality
# --------------------------------------------------------------------------------------------

def send_feedback(server, model, calls, index_of):
    """Sends each call (a list of feedback items, each carrying `_key` = (id, row)) and checks its
    answer against what the server was expected to know. `index_of(key)` says whether a key
    names a logged row. Returns the matched items in the order the server took them, with the
    keys already answered."""
    answered = set()
    matched = []
    totals = {"received": 0, "matched": 0, "duplicates": 0, "unknown_count": 0}
    for n, items in enumerate(calls):
        expected = {"received": len(items), "matched": 0, "duplicates": 0, "unknown": [],
                    "unknown_count": 0}
        for item in items:
            key = item["_key"]
            if not index_of(key):
                expected["unknown_count"] += 1
                if len(expected["unknown"]) < 100 and key[0] not in expected["unknown"]:
                    expected["unknown"].append(key[0])
            elif key in answered:
                expected["duplicates"] += 1
            else:
                answered.add(key)
                expected["matched"] += 1
                matched.append(item)
        body = {"feedback": [{k: v for k, v in item.items() if not k.startswith("_")}
                             for item in items]}
        _, answer = server.ok("POST", f"/v2/models/{model}/feedback", body)
        check(answer == expected,
              f"{model} feedback call {n}: answered {answer}, expected {expected}")
        for k in totals:
            totals[k] += expected[k]
    return matched, totals


def partitions(matched, calls_of, window, version_of):
    """The matched items of each version cut into quality windows, two ways: exactly `window`
    rows each (what `quality_window_rows` says), and as the server would if it closed a window
    only at the end of the feedback call that filled it. Returns {version: (closed, current)}
    for each."""
    strict, per_call = {}, {}
    for item in matched:
        v = version_of(item)
        closed, current = strict.setdefault(v, ([], []))
        current.append(item)
        if len(current) == window:
            closed.append(list(current))
            current.clear()
    by_call = {}
    for item in matched:
        by_call.setdefault(calls_of(item), []).append(item)
    for call in sorted(by_call):
        touched = []
        for item in by_call[call]:
            v = version_of(item)
            per_call.setdefault(v, ([], []))[1].append(item)
            touched.append(v)
        for v in set(touched):
            closed, current = per_call[v]
            if len(current) >= window:
                closed.append(list(current))
                current.clear()
    return strict, per_call


def expected_classification(items, truth_of, predicted_of, score_of=None):
    truth = [truth_of(i) for i in items]
    predicted = [predicted_of(i) for i in items]
    p, r, f, _ = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
    out = {"rows": len(items), "accuracy": accuracy_score(truth, predicted),
           "precision": float(p), "recall": float(r), "f1": float(f), "roc_auc": None}
    if score_of is not None and len(set(truth)) == 2:
        out["roc_auc"] = float(roc_auc_score([int(t) for t in truth], [score_of(i) for i in items]))
    return out


def expected_regression(items, target_of, value_of):
    t = [target_of(i) for i in items]
    v = [value_of(i) for i in items]
    return {"rows": len(items), "mae": float(mean_absolute_error(t, v)),
            "rmse": float(math.sqrt(mean_squared_error(t, v)))}


def compare_quality(model, quality, window, strict, per_call, section, expected_of):
    """Compares `GET /quality` with scikit-learn on the expected windows. When the server's
    window sizes do not follow `quality_window_rows`, says so and compares with the windows it
    did make, so that wrong sizes and wrong metrics are told apart."""
    versions = quality["versions"]
    check(sorted(versions) == sorted(str(v) for v in strict),
          f"{model} quality has versions {sorted(versions)}, expected {sorted(strict)}")
    compared = 0
    for v in sorted(strict):
        got = versions.get(str(v), {"windows": [], "current": None})
        got_windows = list(got.get("windows", [])) + ([got["current"]] if got.get("current") else [])
        got_sizes = [w.get("rows") for w in got_windows]

        def sizes(part):
            closed, current = part[v]
            return [len(w) for w in closed] + ([len(current)] if current else [])

        chosen = strict
        if got_sizes != sizes(strict):
            check(False, f"{model} v{v}: quality windows hold {got_sizes} rows, but "
                         f"quality_window_rows = {window} "
                         f"gives {sizes(strict)}")
            if got_sizes == sizes(per_call):
                print(f"  note: {model} v{v}: the server closes a window only at the end of the "
                      f"feedback call that filled it ({sizes(per_call)}); metrics compared on "
                      "those windows")
                chosen = per_call
            else:
                check(False, f"{model} v{v}: quality windows {got_sizes} match no partition of the "
                             "matched feedback; metrics not compared")
                continue
        closed, current = chosen[v]
        for n, (items, report) in enumerate(zip(closed + ([current] if current else []), got_windows)):
            want = expected_of(items)
            have = report.get(section)
            if not check(isinstance(have, dict), f"{model} v{v} window {n}: no '{section}' in {report}"):
                continue
            for metric, value in want.items():
                compared += 1
                check(close(have.get(metric), value),
                      f"{model} v{v} window {n} ({len(items)} rows): {metric} = {have.get(metric)}, "
                      f"scikit-learn says {value}")
    return compared


# --------------------------------------------------------------------------------------------
# Reading the log
# --------------------------------------------------------------------------------------------

def leftovers(directory):
    return sorted(p for p in os.listdir(directory) if not p.endswith(".parquet"))


def read_three_ways(pred_dir, columns):
    """The sealed prediction log as rows sorted by (request_id, row), read by pyarrow, pandas
    and DuckDB: {reader: list of tuples of `columns`}."""
    out = {}
    table = pq.read_table(pred_dir)
    out["pyarrow"] = sorted(zip(*(table.column(c).to_pylist() for c in columns)))
    frame = pd.read_parquet(pred_dir)
    out["pandas"] = sorted(zip(*(frame[c].tolist() for c in columns)))
    select = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    out["duckdb"] = sorted(duckdb.sql(
        f"SELECT {select} FROM read_parquet('{pred_dir}/*.parquet')").fetchall())
    return table, out


def normalise(value):
    """Values from the three readers in one form (pandas gives numpy scalars and Timestamps)."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def check_log(model, pred_dir, fb_dir, rows, features, outputs, feedback_received, started_us, ended_us):
    """The sealed log of `model` against what was sent and answered (`rows`: {(id, row):
    {"version", "arm", "x", "outputs": {column: value}}})."""
    check(os.path.isdir(pred_dir), f"{model}: no prediction log at {pred_dir}")
    left = leftovers(pred_dir)
    check(not left, f"{model}: files other than sealed Parquet in {pred_dir} after a clean stop: {left}")
    columns = ["request_id", "row", "model_version", "arm", "status", *features, *outputs]
    table, read = read_three_ways(pred_dir, columns)
    print(f"  {model}: {len(glob.glob(os.path.join(pred_dir, '*.parquet')))} sealed segment(s), "
          f"{table.num_rows} rows; read by pyarrow, pandas and DuckDB")
    read = {k: [tuple(normalise(v) for v in r) for r in rs] for k, rs in read.items()}
    for reader in ("pandas", "duckdb"):
        check(read[reader] == read["pyarrow"],
              f"{model}: {reader} reads the log differently from pyarrow "
              f"({len(read[reader])} vs {len(read['pyarrow'])} rows)")
    check(table.num_rows == len(rows), f"{model}: the log holds {table.num_rows} rows, {len(rows)} were sent")
    schema = table.schema
    want_types = {"request_id": pa.string(), "row": pa.uint32(), "model_version": pa.uint64(),
                  "arm": pa.string(), "latency_us": pa.uint64(), "status": pa.string(),
                  "time": pa.timestamp("us", tz="UTC")}
    for name, t in want_types.items():
        check(schema.field(name).type == t if name in schema.names else False,
              f"{model}: column {name} is {schema.field(name).type if name in schema.names else 'missing'}, expected {t}")
    check(schema.names[7:7 + len(features)] == features,
          f"{model}: feature columns {schema.names[7:7 + len(features)]}, expected {features}")
    logged = {(r[0], r[1]): r for r in read["pyarrow"]}
    check(set(logged) == set(rows), f"{model}: logged (request_id, row) pairs differ from those sent: "
          f"{len(set(rows) - set(logged))} missing, {len(set(logged) - set(rows))} unexpected")
    bad = []
    for key, want in rows.items():
        got = logged.get(key)
        if got is None:
            continue
        _, _, version, arm, status, *rest = got
        values = rest[:len(features)]
        outs = rest[len(features):]
        problems = []
        if version != want["version"]:
            problems.append(f"model_version {version} != {want['version']}")
        if arm != want["arm"]:
            problems.append(f"arm {arm!r} != {want['arm']!r}")
        if status != "ok":
            problems.append(f"status {status!r}")
        # Features are logged as float64 of the float32 the server decoded: exact after rounding
        # what was sent to float32.
        if not np.array_equal(np.array(values, dtype=np.float64), want["x"].astype(np.float64)):
            problems.append(f"features {values} != {want['x'].tolist()}")
        for column, value in zip(outputs, outs):
            w = want["outputs"][column]
            if (value != w) if isinstance(w, int) else not (value == w or math.isclose(value, w, rel_tol=1e-7)):
                problems.append(f"{column} {value} != {w}")
        if problems:
            bad.append(f"{key}: {'; '.join(problems)}")
    check(not bad, f"{model}: {len(bad)} logged rows differ from what was sent/answered, e.g. {bad[:3]}")
    times = table.column("time").cast(pa.int64()).to_numpy()
    check(len(times) == 0 or (times.min() >= started_us and times.max() <= ended_us),
          f"{model}: logged times outside the run ({times.min()}..{times.max()} vs {started_us}..{ended_us})")
    latency = table.column("latency_us").to_numpy()
    check(len(latency) == 0 or latency.min() > 0, f"{model}: a logged latency_us is 0")
    if fb_dir is not None:
        left = leftovers(fb_dir)
        check(not left, f"{model}: files other than sealed Parquet in {fb_dir}: {left}")
        fb = pq.read_table(fb_dir)
        check(fb.num_rows == feedback_received,
              f"{model}: the feedback log holds {fb.num_rows} items, {feedback_received} were sent")
        check(fb.schema.names == ["request_id", "row", "label", "target", "time", "received"],
              f"{model}: feedback columns {fb.schema.names}")
    return table


OFFLINE_JOIN = """\
WITH feedback AS (
    -- The first feedback for a row counts; later ones are duplicates.
    SELECT request_id, "row", label, target,
           row_number() OVER (PARTITION BY request_id, "row" ORDER BY received) AS nth
    FROM read_parquet('{feedback}/*.parquet')
)
SELECT p.model_version,
       count(*) AS matched,
       avg(CASE WHEN CAST(p."{prediction}" AS VARCHAR) = f.label THEN 1.0 ELSE 0.0 END) AS accuracy
FROM read_parquet('{predictions}/*.parquet') AS p
JOIN feedback AS f ON f.request_id = p.request_id AND f."row" = p."row"
WHERE f.nth = 1 AND p.status = 'ok' AND p.arm <> 'shadow'
GROUP BY p.model_version
ORDER BY p.model_version"""


# --------------------------------------------------------------------------------------------
# The passes
# --------------------------------------------------------------------------------------------

def now_us():
    return time.time_ns() // 1000


def iris_pass(work, rng):
    print("== iris: traffic, feedback, quality vs scikit-learn, the sealed log")
    repo = model_repo(work, {"iris": (os.path.join(ROOT, "models", "iris"), IRIS_CONFIG)})
    state = os.path.join(work, "iris-state")
    started = now_us()
    server = Server(repo, state)
    try:
        server.wait_ready(["iris"])
        requests = iris_traffic(rng, 300, "client")
        answers = send_all(server, requests)
        rows = iris_rows(requests, answers)
        print(f"  {len(requests)} requests, {len(rows)} rows "
              f"({sum(1 for r in requests if r['client_id'])} with a client id, "
              f"{sum(1 for r in requests if r['version'])} to a named version)")

        # Feedback: 85% of the rows, in calls of 1 to 60 items, labels as numbers or strings,
        # some with an observation time; unknown ids, rows past a request's end, and one
        # duplicate (with a different label: the first one counts).
        keys = list(rows)
        order = rng.permutation(len(keys))
        chosen = [keys[i] for i in order[: int(len(keys) * 0.85)]]
        items = []
        for n, key in enumerate(chosen):
            truth = rows[key]["truth"]
            item = {"id": key[0], "label": truth if n % 2 else str(truth), "_key": key}
            if key[1] != 0 or not rows[key]["single"] or n % 3:
                item["row"] = key[1]
            if n % 5 == 0:
                item["time"] = time.time() - float(rng.integers(0, 3600))
            items.append(item)
        for k in range(6):
            items.insert(int(rng.integers(0, len(items))),
                         {"id": f"no-such-request-{k}", "label": 1, "_key": (f"no-such-request-{k}", 0)})
        for key in chosen[:2]:
            items.insert(int(rng.integers(0, len(items))),
                         {"id": key[0], "row": 500, "label": 0, "_key": (key[0], 500)})
        calls, i = [], 0
        while i < len(items):
            size = int(rng.integers(1, 61))
            calls.append(items[i:i + size])
            i += size
        first = chosen[0]
        calls.append([{"id": first[0], "row": first[1], "label": (rows[first]["truth"] + 1) % 3,
                       "_key": first}])
        for c, call in enumerate(calls):
            for item in call:
                item["_call"] = c
        matched, totals = send_feedback(server, "iris", calls, lambda k: k in rows)
        print(f"  feedback: {len(calls)} calls, {totals['received']} items: {totals['matched']} matched, "
              f"{totals['unknown_count']} unknown, {totals['duplicates']} duplicate; every answer exact")
        check(totals["duplicates"] == 1, "the duplicate was not sent")

        _, quality = server.ok("GET", "/v2/models/iris/quality")
        strict, per_call = partitions(matched, lambda i: i["_call"], IRIS_QUALITY_WINDOW,
                                      lambda i: rows[i["_key"]]["version"])
        compared = compare_quality(
            "iris", quality, IRIS_QUALITY_WINDOW, strict, per_call, "classification",
            lambda items: expected_classification(
                items, lambda i: str(rows[i["_key"]]["truth"]), lambda i: str(rows[i["_key"]]["label"])))
        for v in sorted(strict):
            every = [i for i in matched if rows[i["_key"]]["version"] == v]
            overall = expected_classification(every, lambda i: rows[i["_key"]]["truth"],
                                              lambda i: rows[i["_key"]]["label"])
            print(f"  v{v}: {len(every)} matched rows; scikit-learn overall: accuracy "
                  f"{overall['accuracy']:.4f}, macro precision {overall['precision']:.4f}, "
                  f"recall {overall['recall']:.4f}, F1 {overall['f1']:.4f}")
        print(f"  quality: {compared} window metrics compared with scikit-learn (rel. tol. {REL_TOL})")
        status, _, drift = server.call("GET", "/v2/models/iris/drift")
        check(status == 200 and isinstance(drift, dict) and "versions" in drift,
              f"GET /v2/models/iris/drift answered {status}: {drift}")
    finally:
        code = server.stop()
    ended = now_us()
    check(code == 0, f"iris server exited with {code} after SIGTERM")

    log_dir = os.path.join(state, "predictions", "iris")
    pred_dir, fb_dir = os.path.join(log_dir, "predictions"), os.path.join(log_dir, "feedback")
    outputs = ["output.label", "output.probabilities[0]", "output.probabilities[1]",
               "output.probabilities[2]"]
    logged_rows = {
        key: {"version": r["version"], "arm": r["arm"], "x": r["x"],
              "outputs": {"output.label": r["label"],
                          **{f"output.probabilities[{k}]": float(r["probs"][k]) for k in range(3)}}}
        for key, r in rows.items()
    }
    check_log("iris", pred_dir, fb_dir, logged_rows, IRIS_FEATURES, outputs,
              totals["received"], started, ended)

    sql = OFFLINE_JOIN.format(feedback=fb_dir, predictions=pred_dir, prediction="output.label")
    print("  offline join (DuckDB):\n" + "\n".join("    " + l for l in sql.splitlines()))
    joined = {int(v): (n, acc) for v, n, acc in duckdb.sql(sql).fetchall()}
    for v in sorted(strict):
        every = [i for i in matched if rows[i["_key"]]["version"] == v]
        n, acc = joined.get(v, (0, None))
        want = accuracy_score([str(rows[i["_key"]]["truth"]) for i in every],
                              [str(rows[i["_key"]]["label"]) for i in every])
        check(n == len(every), f"offline join: v{v} has {n} matched rows, the server matched {len(every)}")
        check(close(float(acc), want) if acc is not None else False,
              f"offline join: v{v} accuracy {acc}, scikit-learn on the matched pairs {want}")
        print(f"  offline join: v{v} {n} matched rows, accuracy {float(acc):.4f}")
    check(sum(n for n, _ in joined.values()) == totals["matched"],
          f"offline join: {sum(n for n, _ in joined.values())} matched rows, the server answered {totals['matched']}")


def tabular_dtypes_pass(work, rng):
    print("== tabular-small (binary: ROC AUC) and dtypes (f32_sum as a regressor: MAE, RMSE)")
    repo = model_repo(work, {
        "tabular-small": (os.path.join(ROOT, "models", "tabular-small"), TABULAR_CONFIG),
        "dtypes": (os.path.join(ROOT, "tests", "models", "dtypes"), DTYPES_CONFIG),
    })
    state = os.path.join(work, "second-state")
    log_dir = os.path.join(work, "second-log")
    started = now_us()
    server = Server(repo, state, "--prediction-log-dir", log_dir)
    try:
        server.wait_ready(["tabular-small", "dtypes"])
        x_all, y_all = make_classification(n_samples=20000, n_features=32, n_informative=16,
                                           n_classes=2, random_state=0)
        tab_requests = []
        for i in range(120):
            n = int(rng.choice([1, 1, 2, 3, 5]))
            idx = rng.integers(0, len(x_all), n)
            x = x_all[idx].astype(np.float32)
            truth = [int(t) if rng.random() > 0.1 else 1 - int(t) for t in y_all[idx]]
            cid = f"tab-{i:04d}" if i % 2 else None
            body = {"inputs": [{"name": "input", "shape": [n, 32], "datatype": "FP32",
                                "data": [float(v) for v in x.ravel()]}]}
            if cid:
                body["id"] = cid
            tab_requests.append({"path": "/v2/models/tabular-small/infer", "body": body,
                                 "client_id": cid, "x": x, "truth": truth})
        reg_requests = []
        for i in range(80):
            n = int(rng.choice([1, 1, 2, 4]))
            f32 = np.round(rng.normal(0, 3, (n, 4)), 4)
            cid = f"reg-{i:04d}" if i % 3 else None
            body = {"inputs": [
                {"name": "f64", "shape": [n, 3], "datatype": "FP64", "data": rng.normal(size=3 * n).tolist()},
                {"name": "i64", "shape": [n, 2], "datatype": "INT64", "data": rng.integers(-9, 9, 2 * n).tolist()},
                {"name": "flag", "shape": [n, 2], "datatype": "BOOL", "data": (rng.random(2 * n) < 0.5).tolist()},
                {"name": "f32", "shape": [n, 4], "datatype": "FP32", "data": f32.ravel().tolist()},
                {"name": "i32", "shape": [n, 1], "datatype": "INT32", "data": rng.integers(-9, 9, n).tolist()},
            ]}
            if cid:
                body["id"] = cid
            reg_requests.append({"path": "/v2/models/dtypes/infer", "body": body, "client_id": cid,
                                 "x": f32.astype(np.float32),
                                 "target": (f32.sum(axis=1) + rng.normal(0, 0.5, n)).tolist()})
        tab_answers = send_all(server, tab_requests)
        reg_answers = send_all(server, reg_requests)

        tab_rows, reg_rows = {}, {}
        for r, a in zip(tab_requests, tab_answers):
            labels = output(a, "label")["data"]
            probs = np.array(output(a, "probabilities")["data"], dtype=np.float32).reshape(-1, 2)
            for k in range(len(r["truth"])):
                tab_rows[(a["id"], k)] = {"version": 1, "arm": "stable", "x": r["x"][k], "truth": r["truth"][k],
                                          "label": int(labels[k]), "probs": probs[k]}
        for r, a in zip(reg_requests, reg_answers):
            sums = np.array(output(a, "f32_sum")["data"], dtype=np.float32)
            argmax = output(a, "f32_argmax")["data"]
            for k in range(len(r["target"])):
                reg_rows[(a["id"], k)] = {"version": 1, "arm": "stable", "x": r["x"][k],
                                          "target": r["target"][k], "value": float(sums[k]),
                                          "argmax": int(argmax[k])}
        print(f"  tabular-small: {len(tab_requests)} requests, {len(tab_rows)} rows; "
              f"dtypes: {len(reg_requests)} requests, {len(reg_rows)} rows")

        def make_calls(rows, make_item, share, sizes):
            keys = list(rows)
            picked = [keys[i] for i in rng.permutation(len(keys))[: int(len(keys) * share)]]
            items = [dict(make_item(key), id=key[0], row=key[1], _key=key) for key in picked]
            items.insert(int(rng.integers(0, len(items))),
                         dict(make_item(picked[0]), id="never-seen", _key=("never-seen", 0)))
            calls, i = [], 0
            while i < len(items):
                size = int(rng.choice(sizes))
                calls.append(items[i:i + size])
                i += size
            calls.append([dict(make_item(picked[1]), id=picked[1][0], row=picked[1][1], _key=picked[1])])
            for c, call in enumerate(calls):
                for item in call:
                    item["_call"] = c
            return calls

        tab_calls = make_calls(tab_rows, lambda k: {"label": tab_rows[k]["truth"]}, 0.9, [7, 13, 40, 55])
        tab_matched, tab_totals = send_feedback(server, "tabular-small", tab_calls, lambda k: k in tab_rows)
        reg_calls = make_calls(reg_rows, lambda k: {"target": reg_rows[k]["target"]}, 0.9, [5, 11, 30, 31])
        reg_matched, reg_totals = send_feedback(server, "dtypes", reg_calls, lambda k: k in reg_rows)
        print(f"  feedback: tabular-small {tab_totals['matched']} matched, dtypes {reg_totals['matched']} "
              "matched (each with one unknown id and one duplicate); every answer exact")

        _, quality = server.ok("GET", "/v2/models/tabular-small/quality")
        strict, per_call = partitions(tab_matched, lambda i: i["_call"], TABULAR_QUALITY_WINDOW, lambda i: 1)
        n1 = compare_quality(
            "tabular-small", quality, TABULAR_QUALITY_WINDOW, strict, per_call, "classification",
            lambda items: expected_classification(
                items, lambda i: str(tab_rows[i["_key"]]["truth"]), lambda i: str(tab_rows[i["_key"]]["label"]),
                lambda i: float(tab_rows[i["_key"]]["probs"][1])))
        aucs = [w.get("classification", {}).get("roc_auc") for w in quality["versions"].get("1", {}).get("windows", [])]
        check(any(a is not None for a in aucs), f"tabular-small: no quality window has a ROC AUC ({aucs})")
        _, quality = server.ok("GET", "/v2/models/dtypes/quality")
        strict, per_call = partitions(reg_matched, lambda i: i["_call"], DTYPES_QUALITY_WINDOW, lambda i: 1)
        n2 = compare_quality(
            "dtypes", quality, DTYPES_QUALITY_WINDOW, strict, per_call, "regression",
            lambda items: expected_regression(items, lambda i: reg_rows[i["_key"]]["target"],
                                              lambda i: reg_rows[i["_key"]]["value"]))
        print(f"  quality: {n1} tabular-small and {n2} dtypes window metrics compared with scikit-learn")
    finally:
        code = server.stop()
    ended = now_us()
    check(code == 0, f"second server exited with {code} after SIGTERM")
    check(not os.path.exists(os.path.join(state, "predictions")),
          "--prediction-log-dir was given, yet a log appeared under <state_dir>/predictions")

    tab_features = [f"input[{k}]" for k in range(32)]
    check_log("tabular-small", os.path.join(log_dir, "tabular-small", "predictions"),
              os.path.join(log_dir, "tabular-small", "feedback"),
              {k: {"version": 1, "arm": "stable", "x": r["x"],
                   "outputs": {"output.label": r["label"], "output.probabilities[0]": float(r["probs"][0]),
                               "output.probabilities[1]": float(r["probs"][1])}}
               for k, r in tab_rows.items()},
              tab_features, ["output.label", "output.probabilities[0]", "output.probabilities[1]"],
              tab_totals["received"], started, ended)
    check_log("dtypes", os.path.join(log_dir, "dtypes", "predictions"),
              os.path.join(log_dir, "dtypes", "feedback"),
              {k: {"version": 1, "arm": "stable", "x": r["x"],
                   "outputs": {"output.f32_sum": r["value"], "output.f32_argmax": r["argmax"]}}
               for k, r in reg_rows.items()},
              ["a", "b", "c", "d"], ["output.f32_sum", "output.f32_argmax"],
              reg_totals["received"], started, ended)
    pred = os.path.join(log_dir, "dtypes", "predictions")
    fb = os.path.join(log_dir, "dtypes", "feedback")
    mae = duckdb.sql(f"""
        SELECT count(*), avg(abs(f.target - p."output.f32_sum"))
        FROM read_parquet('{pred}/*.parquet') p
        JOIN (SELECT * FROM read_parquet('{fb}/*.parquet')
              QUALIFY row_number() OVER (PARTITION BY request_id, "row" ORDER BY received) = 1) f
          ON f.request_id = p.request_id AND f."row" = p."row" """).fetchall()[0]
    want = mean_absolute_error([reg_rows[i["_key"]]["target"] for i in reg_matched],
                               [reg_rows[i["_key"]]["value"] for i in reg_matched])
    check(mae[0] == reg_totals["matched"] and close(mae[1], want),
          f"dtypes offline join: {mae[0]} rows, MAE {mae[1]}; expected {reg_totals['matched']}, {want}")


def arrow_stream_batches(path):
    """Record batch sizes of an Arrow IPC stream, reading until its end (or a torn message)."""
    sizes, keys = [], []
    with open(path, "rb") as f:
        reader = pa.ipc.open_stream(f)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            sizes.append(batch.num_rows)
            keys.append(list(zip(batch.column("request_id").to_pylist(), batch.column("row").to_pylist())))
    return sizes, keys


def crash_pass(work, rng):
    print("== crash: SIGKILL with an open segment, a torn tail, restart, clean stop")
    repo = model_repo(work, {"iris": (os.path.join(ROOT, "models", "iris"), IRIS_CONFIG)})
    state = os.path.join(work, "crash-state")
    log_dir = os.path.join(state, "predictions", "iris")
    pred_dir, fb_dir = os.path.join(log_dir, "predictions"), os.path.join(log_dir, "feedback")
    server = Server(repo, state)
    try:
        server.wait_ready(["iris"])
        requests = iris_traffic(rng, 120, "crash-a")
        answers = send_all(server, requests)
        sent_a = {(a["id"], k) for r, a in zip(requests, answers) for k in range(len(r["truth"]))}
        fb_items = [{"id": key[0], "row": key[1], "label": 1} for key in sorted(sent_a)[:50]]
        _, answer = server.ok("POST", "/v2/models/iris/feedback", {"feedback": fb_items})
        check(answer["matched"] == 50, f"crash pass feedback: {answer}")
        # With a sync after every batch, every row is in the open segment soon after its answer.
        deadline = time.time() + 15
        sizes, batch_keys = [], []
        while True:
            open_segments = glob.glob(os.path.join(pred_dir, "*.arrows"))
            sizes = []
            if len(open_segments) == 1:
                try:
                    sizes, batch_keys = arrow_stream_batches(open_segments[0])
                except (pa.ArrowInvalid, OSError):
                    sizes, batch_keys = [], []
            if sum(sizes) == len(sent_a) or time.time() > deadline:
                break
            time.sleep(0.2)
    finally:
        server.kill()
    if not check(len(open_segments) == 1, f"after traffic, {pred_dir} holds open segments {open_segments}"):
        return
    check(sum(sizes) == len(sent_a),
          f"with --prediction-log-fsync-ms 0, the open segment holds {sum(sizes)} rows 15 s after "
          f"{len(sent_a)} were answered")
    if not check(sizes, f"the open segment {open_segments[0]} holds no readable batch"):
        return
    check(set(k for b in batch_keys for k in b) <= sent_a, "the open segment holds rows never sent")
    print(f"  SIGKILL with {len(sent_a)} rows answered; the open segment (read by pyarrow as an Arrow "
          f"stream) holds {sum(sizes)} rows in {len(sizes)} batches")
    # Tear the last message, as a crash in the middle of a write would.
    segment = open_segments[0]
    size = os.path.getsize(segment)
    with open(segment, "r+b") as f:
        f.truncate(size - 9)
    kept_a = {k for b in batch_keys[:-1] for k in b}
    print(f"  cut the last 9 bytes: the last batch ({sizes[-1]} rows) is torn, {len(kept_a)} rows remain whole")

    server = Server(repo, state)
    try:
        server.wait_ready(["iris"])
        left = leftovers(pred_dir)
        check(not left, f"after restart, {pred_dir} still holds {left} (recovery should seal them)")
        recovered = [l for l in server.log if "earlier run were sealed" in l]
        check(recovered and "torn=1" in recovered[0] and f"rows={len(kept_a)}" in recovered[0],
              f"no recovery log line with torn=1 rows={len(kept_a)}: {recovered}")
        requests = iris_traffic(rng, 60, "crash-b")
        answers = send_all(server, requests)
        sent_b = {(a["id"], k) for r, a in zip(requests, answers) for k in range(len(r["truth"]))}
    finally:
        code = server.stop()
    check(code == 0, f"restarted server exited with {code} after SIGTERM")
    for d in (pred_dir, fb_dir):
        left = leftovers(d)
        check(not left, f"after the clean stop, {d} holds {left}")
    segments = sorted(glob.glob(os.path.join(pred_dir, "*.parquet")))
    for s in segments:
        try:
            pq.read_table(s)
        except Exception as e:  # noqa: BLE001 - any error is the finding
            check(False, f"pyarrow cannot read {s}: {e}")
    try:
        table = pq.read_table(pred_dir)
        n_duck = duckdb.sql(f"SELECT count(*) FROM read_parquet('{pred_dir}/*.parquet')").fetchall()[0][0]
        n_pandas = len(pd.read_parquet(pred_dir))
    except Exception as e:  # noqa: BLE001
        check(False, f"the log after recovery cannot be read: {e}")
        return
    keys = set(zip(table.column("request_id").to_pylist(), table.column("row").to_pylist()))
    want = kept_a | sent_b
    check(table.num_rows == len(want) == n_duck == n_pandas,
          f"after recovery: pyarrow {table.num_rows}, pandas {n_pandas}, DuckDB {n_duck} rows; expected "
          f"{len(kept_a)} recovered + {len(sent_b)} after the restart = {len(want)}")
    check(keys == want, f"after recovery: {len(want - keys)} rows missing, {len(keys - want)} unexpected")
    fb = duckdb.sql(f"SELECT count(*) FROM read_parquet('{fb_dir}/*.parquet')").fetchall()[0][0]
    check(fb == 50, f"acknowledged feedback before SIGKILL: {fb} of 50 items in the feedback log")
    print(f"  after recovery and a clean stop: {len(segments)} sealed segment(s), {table.num_rows} rows "
          f"read alike by pyarrow, pandas and DuckDB; the 50 acknowledged feedback items survived")


def main():
    if not os.access(BINARY, os.X_OK):
        sys.exit(f"no server binary at {BINARY}")
    t0 = time.time()
    work = tempfile.mkdtemp(prefix="cairn-monitoring-")
    rng = np.random.default_rng(20261202)
    try:
        iris_pass(work, rng)
        tabular_dtypes_pass(work, rng)
        crash_pass(work, rng)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    took = time.time() - t0
    finish(f"monitoring checks passed in {took:.0f} s", f"check(s) failed ({took:.0f} s)")


if __name__ == "__main__":
    main()
