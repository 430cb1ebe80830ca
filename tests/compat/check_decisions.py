"""Rollout decisions on a real data set, end to end: a deliberately worse candidate is rolled back
and an equally good one promoted, every time, by the paired accuracy test of a shadow trial, with
the evidence printed.

Run: python tests/compat/check_decisions.py [path/to/cairn]   (default: target/release/cairn)

The data: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes; bundled with the
package, from the UCI repository). `cairn train` makes three versions of a logistic model:
v1 and v2 from the same training rows with different seeds (as good as each other), v3 from the
same rows with their labels shuffled (no better than chance). The server serves v1; each round
puts a candidate in shadow (`max_accuracy_drop = 0.05`, `accuracy_test = "sequential"`,
`alpha = 0.05`), replays the held-out rows in a new order through the deployment, each answer
followed by its true label, until the rollout decides by itself. Checked: v3 is rolled back and
v2 promoted in every round, each with a reason that names McNemar's discordant pairs and the
interval.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from sklearn.datasets import load_digits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_monitoring import BINARY, Server, check  # noqa: E402
from checks import finish  # noqa: E402

FEATURES = [f"p{i}" for i in range(64)]
ROUNDS = 3

MODEL_CONFIG = f"""# Digits: monitored for feedback; candidates judged in shadow on pairs of answers.
backend = "onnx"
max_batch_size = 64
version_policy = {{ all = {{}} }}

[monitoring]
enabled = true
prediction = "label"
features = {json.dumps(FEATURES)}

[rollout]
min_requests = 50
max_p99_ratio = 100.0
min_agreement = 0.0
max_accuracy_drop = 0.05
min_labelled = 30
accuracy_test = "sequential"
alpha = 0.05
"""


def train_config(csv, repo, runs, seed):
    return f"""model = "digits"
seed = {seed}
threads = 2
[data]
path = "{csv}"
features = {json.dumps(FEATURES)}
target = "label"
[split]
method = "stratified"
validation = 0.15
test = 0.15
[trainer]
kind = "logistic"
epochs = 60
batch_size = 32
learning_rate = 0.05
patience = 10
[output]
repository = "{repo}"
runs_dir = "{runs}"
"""


def train(work, name, frame, seed):
    """One version, trained alone (no gate against another), its directory returned."""
    csv = os.path.join(work, f"{name}.csv")
    frame.to_csv(csv, index=False)
    repo, runs = os.path.join(work, f"repo-{name}"), os.path.join(work, f"runs-{name}")
    config = os.path.join(work, f"{name}.toml")
    with open(config, "w") as f:
        f.write(train_config(csv, repo, runs, seed))
    out = subprocess.run([BINARY, "train", "--config", config, "--quiet"], capture_output=True, text=True)
    if not check(out.returncode == 0, f"cairn train ({name}) failed: {out.stderr[-2000:]}"):
        return None
    return os.path.join(repo, "digits", "1")


def trial(server, candidate, rows, labels, rng):
    """Shadows `candidate` beside stable v1 and replays the rows (new orders, as often as it
    takes) until the rollout decides; its history entry and the rows sent."""
    server.call("POST", "/v2/models/digits/deployment/stable", {"version": 1})
    status, _, reply = server.call("POST", "/v2/models/digits/deployment/shadow", {"version": candidate})
    check(status == 200, f"shadow v{candidate}: {status} {reply}")
    _, _, dep = server.call("GET", "/v2/models/digits/deployment")
    seen = len(dep.get("history", []))
    sent = 0
    for _ in range(20):
        for i in rng.permutation(len(rows)):
            body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                "data": [float(v) for v in rows[i]]}]}
            status, _, reply = server.call("POST", "/v2/models/digits/infer", body)
            if status != 200:
                check(False, f"infer answered {status}: {reply}")
                return None, sent
            sent += 1
            fb = {"feedback": [{"id": reply["id"], "label": int(labels[i])}]}
            server.call("POST", "/v2/models/digits/feedback", fb)
            if sent % 20 == 0:
                _, _, dep = server.call("GET", "/v2/models/digits/deployment")
                for h in dep.get("history", [])[seen:]:
                    if h.get("trigger") == "auto" and h.get("action") in ("promote", "rollback"):
                        return h, sent
    return None, sent


def main():
    digits = load_digits(as_frame=True)
    frame = digits.frame.rename(columns={f"pixel_{r}_{c}": f"p{r * 8 + c}" for r in range(8) for c in range(8)})
    frame = frame.rename(columns={"target": "label"})
    rng = np.random.default_rng(7)
    order = rng.permutation(len(frame))
    train_rows, held_out = frame.iloc[order[:1200]], frame.iloc[order[1200:]]
    shuffled = train_rows.copy()
    shuffled["label"] = rng.permutation(shuffled["label"].to_numpy())
    work = tempfile.mkdtemp(prefix="cairn-decisions-")
    try:
        made = [train(work, "v1", train_rows, 1), train(work, "v2", train_rows, 2), train(work, "v3", shuffled, 3)]
        if None in made:
            return
        repo = os.path.join(work, "repo")
        os.makedirs(os.path.join(repo, "digits"))
        for version, path in enumerate(made, start=1):
            shutil.copytree(path, os.path.join(repo, "digits", str(version)))
        with open(os.path.join(repo, "digits", "config.toml"), "w") as f:
            f.write(MODEL_CONFIG)
        rows = held_out[FEATURES].to_numpy(np.float32)
        labels = held_out["label"].to_numpy()
        server = Server(repo, os.path.join(work, "state"))
        outcomes = []
        try:
            server.wait_ready(["digits"])
            for r in range(ROUNDS):
                for candidate, wanted in ((3, "rollback"), (2, "promote")):
                    started = time.time()
                    decision, sent = trial(server, candidate, rows, labels, rng)
                    action = decision.get("action") if decision else "none"
                    reason = decision.get("reason", "") if decision else "no decision"
                    outcomes.append((r, candidate, wanted, action, sent, time.time() - started, reason))
                    check(action == wanted, f"round {r}: v{candidate} {action}, wanted {wanted}: {reason}")
                    check("McNemar" in reason and "anytime interval" in reason,
                          f"round {r}: v{candidate}'s reason lacks the paired evidence: {reason}")
        finally:
            code = server.stop()
        check(code == 0, f"the server exited with {code}")
        print("\n== shadow trials on scikit-learn's digits (v1 stable; v2 as good, v3 trained on shuffled labels)")
        for r, candidate, wanted, action, sent, took, reason in outcomes:
            print(f"round {r}: v{candidate} {action} (wanted {wanted}) after {sent} requests, {took:.1f} s")
            print(f"  {reason}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finish("decision checks passed", "decision checks failed")


if __name__ == "__main__":
    main()
