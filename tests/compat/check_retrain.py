"""The closed loop, end to end, on a real data set with a real, time-located shift.

Run: python tests/compat/check_retrain.py [path/to/cairn]   (default: target/release/cairn)

The data: NOAA's daily Seattle weather 2012-2015 (public domain; shipped by the vega_datasets
package from PyPI, MIT licence): precipitation, temperatures and wind, and the day's weather
label. How days were labelled changed over the period: in 2012 wet days are "rain"; from 2013 on
"fog" takes their place (2014: 151 fog, 3 rain). A model of 2012 is right on 75 % of 2012's days
and on about 40 % of the later ones.

1. `cairn train` makes v1 from 2012 (a time split: tested on 2012's last days).
2. The server serves it, monitored, with `[retrain]` on; each version it trains enters as a
   shadow judged on pairs of answers with their feedback (`[retrain] trial = "paired"`, the
   default; the `[rollout]` canary settings apply to versions that arrive otherwise).
3. 2013-2015 are replayed day by day, each answer followed by its true label as feedback.
   Drift windows are reported, retraining starts by itself on the most recent labelled rows,
   each new version is gated, shadowed and promoted (or rolled back) by the rollout.
4. Checked: no request failed; drift was reported; at least one automatic job published a
   version that the rollout promoted by itself; live accuracy after the first promotion is
   well above what v1 scores on the same days. The timeline and the figures are printed (README
   quotes them).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from vega_datasets import data as vega

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_monitoring import BINARY, FAILURES, Server, check  # noqa: E402
from checks import finish  # noqa: E402

FEATURES = ["precipitation", "temp_max", "temp_min", "wind"]
CLASSES = {"drizzle": 0, "fog": 1, "rain": 2, "snow": 3, "sun": 4}


MODEL_CONFIG = f"""# The weather model: monitored, retrained on drift, trained versions judged on pairs.
backend = "onnx"
max_batch_size = 64
version_policy = {{ all = {{}} }}

[monitoring]
enabled = true
features = {json.dumps(FEATURES)}
window_rows = 60
quality_window_rows = 60

[rollout]
on_new_version = "canary"
canary_weight = 0.5
min_requests = 40
max_p99_ratio = 100.0
max_accuracy_drop = 0.05
min_labelled = 30

[retrain]
enabled = true
consecutive_windows = 2
min_labelled_rows = 100
min_labelled_rows_since_drift = 60
train_since_drift = true
recent_rows = 240
cooldown_s = 15
max_per_day = 6
"""

SERVER_TRAIN_CONFIG = f"""# Retraining from the prediction log joined with feedback.
model = "weather"
seed = 1
threads = 2
[data]
log = {{}}
features = {json.dumps(FEATURES)}
[split]
method = "time"
validation = 0.15
test = 0.2
[trainer]
kind = "logistic"
epochs = 150
batch_size = 16
learning_rate = 0.05
patience = 15
[gate]
metric = "accuracy"
margin = 0.02
"""


def v1_config(csv, repo, runs):
    return f"""model = "weather"
seed = 1
threads = 2
[data]
path = "{csv}"
features = {json.dumps(FEATURES)}
target = "label"
time_column = "time"
[split]
method = "time"
validation = 0.15
test = 0.2
[trainer]
kind = "logistic"
epochs = 150
batch_size = 16
learning_rate = 0.05
patience = 15
[output]
repository = "{repo}"
runs_dir = "{runs}"
"""


def main():
    df = vega.seattle_weather()
    df["label"] = df.weather.map(CLASSES)
    df["time"] = df.date.astype("int64") // 10**9
    early = df[df.date.dt.year == 2012]
    later = df[df.date.dt.year >= 2013].reset_index(drop=True)
    work = tempfile.mkdtemp(prefix="cairn-retrain-")
    try:
        repo, runs, state, configs = (os.path.join(work, d) for d in ("repo", "runs", "state", "configs"))
        for d in (repo, configs):
            os.makedirs(d)
        os.makedirs(os.path.join(repo, "weather"))
        with open(os.path.join(repo, "weather", "config.toml"), "w") as f:
            f.write(MODEL_CONFIG)
        with open(os.path.join(configs, "weather.toml"), "w") as f:
            f.write(SERVER_TRAIN_CONFIG)
        csv = os.path.join(work, "early.csv")
        early[FEATURES + ["label", "time"]].to_csv(csv, index=False)
        v1 = os.path.join(work, "v1.toml")
        with open(v1, "w") as f:
            f.write(v1_config(csv, repo, runs))
        out = subprocess.run([BINARY, "train", "--config", v1, "--quiet"], capture_output=True, text=True)
        print(out.stdout)
        if not check(out.returncode == 0, f"cairn train (v1) failed: {out.stderr[-2000:]}"):
            return
        v1_model = ort.InferenceSession(os.path.join(repo, "weather", "1", "model.onnx"))
        x_later = later[FEATURES].to_numpy(np.float32)
        v1_pred = v1_model.run(["label"], {"input": x_later})[0]

        server = Server(repo, state, "--train-config-dir", configs, "--repository-poll-interval-s", "0")
        try:
            server.wait_ready(["weather"])
            served, correct, failed = [], [], 0
            events = []
            t0 = time.time()
            first_promotion = None
            seen_history = 0
            for i, row in later.iterrows():
                body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                    "data": [float(row[f]) for f in FEATURES]}]}
                status, _, reply = server.call("POST", "/v2/models/weather/infer", body)
                if status != 200:
                    failed += 1
                    served.append(None)
                    correct.append(False)
                    continue
                label = next(o for o in reply["outputs"] if o["name"] == "label")["data"][0]
                served.append(int(reply["model_version"]))
                correct.append(label == row["label"])
                fb = {"feedback": [{"id": reply["id"], "row": 0, "label": int(row["label"])}]}
                status, _, _ = server.call("POST", "/v2/models/weather/feedback", fb)
                check(status == 200, f"feedback answered {status}")
                if i % 10 == 0:
                    _, _, dep = server.call("GET", "/v2/models/weather/deployment")
                    history = dep.get("history", []) if isinstance(dep, dict) else []
                    for h in history[seen_history:]:
                        events.append((i, round(time.time() - t0, 1), h))
                        if first_promotion is None and h.get("action") == "promote" and h.get("trigger") == "auto":
                            first_promotion = (i, time.time() - t0)
                    seen_history = len(history)
                time.sleep(0.02)
            # Let the last windows and jobs settle, then read everything.
            time.sleep(2)
            _, _, jobs = server.call("GET", "/v2/training/jobs")
            _, _, drift = server.call("GET", "/v2/models/weather/drift?limit=200")
            _, _, dep = server.call("GET", "/v2/models/weather/deployment")
            status, _, page = server.call("GET", "/")
            _, _, metrics = server.call("GET", "/metrics")
        finally:
            code = server.stop()
        check(code == 0, f"the server exited with {code}")
        check(failed == 0, f"{failed} requests failed")
        windows = sum(len(v["reports"]) for v in drift["versions"].values())
        drifted = sum(1 for v in drift["versions"].values() for r in v["reports"] if r.get("drifted"))
        check(drifted > 0, "no drift window reported drift")
        auto = [j for j in jobs["jobs"] if j["trigger"] == "auto"]
        published = [j for j in auto if j["state"] == "published"]
        check(len(published) > 0, f"no automatic job published a version: {json.dumps(auto)[:2000]}")
        history = dep.get("history", [])
        promotions = [h for h in history if h.get("action") == "promote" and h.get("trigger") == "auto"]
        rollbacks = [h for h in history if h.get("action") == "rollback" and h.get("trigger") == "auto"]
        check(len(promotions) > 0, f"the rollout promoted nothing: {json.dumps(history)[:2000]}")
        check("Training" in page, "the status page shows no training section")
        check("cairn_retrain_decisions_total" in metrics and "cairn_training_jobs_total" in metrics,
              "training metrics missing")
        if first_promotion is None and promotions:
            first_promotion = (len(later), time.time() - t0)
        correct = np.array(correct)
        v1_right = v1_pred == later["label"].to_numpy()
        n = len(later)
        first_window = slice(0, 120)
        after = slice(first_promotion[0], n) if first_promotion else slice(n, n)
        live_after = correct[after].mean() if first_promotion else float("nan")
        v1_after = v1_right[after].mean() if first_promotion else float("nan")
        print("\n== closed loop on Seattle weather 2013-2015 (v1 trained on 2012)")
        print(f"requests {n}, failed {failed}; drift windows {windows}, drifted {drifted}")
        print(f"automatic jobs {len(auto)}: " + ", ".join(f"{j['state']}" + (f" v{j['version']}" if j.get('version') else "") for j in auto))
        print(f"promotions {len(promotions)}, rollbacks {len(rollbacks)}")
        for v, d in sorted(drift["versions"].items(), key=lambda kv: int(kv[0])):
            reports = d["reports"]
            print(f"  version {v}: {sum(1 for r in reports if r.get('drifted'))} of {len(reports)} windows drifted")
        for i, t, h in events:
            print(f"  day {i:4d} (+{t:5.1f} s): {h.get('action')} {h.get('trigger')} v{h.get('version')} — {h.get('reason', '')[:160]}")
        if first_promotion:
            print(f"first promotion after {first_promotion[0]} days of traffic, {first_promotion[1]:.1f} s after the shift's first request")
        print(f"v1 accuracy on 2013-2015's first 120 days {v1_right[first_window].mean():.3f}")
        print(f"live accuracy after the first promotion {live_after:.3f}; v1 on the same days {v1_after:.3f}")
        print(f"live accuracy over all 2013-2015 traffic {correct.mean():.3f}; v1 alone {v1_right.mean():.3f}")
        check(live_after >= v1_after + 0.1,
              f"live accuracy after the promotion ({live_after:.3f}) is not well above v1's ({v1_after:.3f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finish("retraining checks passed", "retraining checks failed")


if __name__ == "__main__":
    main()
