"""Trainer quality: cairn's logistic regression and MLP against scikit-learn's on the same
splits.

Run: python benches/train/quality.py [path/to/cairn]   (default: target/release/cairn)

Data sets shipped with scikit-learn (no download): breast cancer (569 × 30, 2 classes), wine
(178 × 13, 3 classes), digits (1797 × 64, 10 classes). Each is split once, stratified, 60/20/20,
seed 0; the split is written into the CSV as a `split` column that `cairn train` follows
(`split.method = "column"`), so both sides see exactly the same rows. Both standardise the
features (fitted on the training rows). Comparable settings:

- logistic: scikit-learn `LogisticRegression(C=1.0, max_iter=5000)` (L2, lbfgs, full batch);
  cairn `logistic`, AdamW, l2 = 1/(C · n_train) — the same penalty per row — early stopping on
  the validation split.
- MLP: scikit-learn `MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-4, solver="adam",
  learning_rate_init=1e-3, max_iter=500, early_stopping=True, random_state=0)` (its early stopping
  holds out 10 % of what it is given, so it is given train + validation); cairn `mlp`,
  hidden [64], l2 1e-4, learning rate 1e-3, batch 64, patience 20.

Prints one table (test accuracy, and the difference in points); benches/README.md quotes it.
Exits non-zero when cairn is more than 1 point below scikit-learn anywhere.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "cairn")


def splits(y):
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=0)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=0)
    return train, val, test


def cairn(work, name, x, y, part, kind, extra):
    features = [f"f{i}" for i in range(x.shape[1])]
    csv = os.path.join(work, f"{name}.csv")
    with open(csv, "w") as f:
        f.write(",".join(features + ["y", "split"]) + "\n")
        for row, label, p in zip(x, y, part):
            f.write(",".join(repr(float(v)) for v in row) + f",{label},{p}\n")
    config = os.path.join(work, f"{name}-{kind}.toml")
    with open(config, "w") as f:
        f.write(f"""model = "{name}"
seed = 0
threads = 2
[data]
path = "{csv}"
features = {json.dumps(features)}
target = "y"
[split]
method = "column"
column = "split"
[trainer]
kind = "{kind}"
{extra}
[output]
repository = "{work}/repo-{kind}"
runs_dir = "{work}/runs"
publish = false
""")
    out = subprocess.run([BINARY, "train", "--config", config, "--quiet", "--no-publish"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"cairn train failed on {name}/{kind}:\n{out.stderr}")
    runs = sorted(os.listdir(os.path.join(work, "runs")))
    with open(os.path.join(work, "runs", runs[-1], "run.json")) as f:
        run = json.load(f)
    return run["test"]["accuracy"], run["duration_s"]


def main():
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, loader in [("breast_cancer", load_breast_cancer), ("wine", load_wine), ("digits", load_digits)]:
            x, y = loader(return_X_y=True)
            train, val, test = splits(y)
            part = np.empty(len(y), dtype=object)
            part[train], part[val], part[test] = "train", "validation", "test"
            scaler = StandardScaler().fit(x[train])
            xs = scaler.transform(x)
            lr = LogisticRegression(C=1.0, max_iter=5000).fit(xs[train], y[train])
            sk_lr = (lr.predict(xs[test]) == y[test]).mean()
            fit_rows = np.concatenate([train, val])
            mlp = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-4, solver="adam", learning_rate_init=1e-3,
                                max_iter=500, early_stopping=True, random_state=0).fit(xs[fit_rows], y[fit_rows])
            sk_mlp = (mlp.predict(xs[test]) == y[test]).mean()
            l2 = 1.0 / len(train)
            ours_lr, t_lr = cairn(work, name, x, y, part, "logistic",
                                  f"epochs = 500\nbatch_size = 32\nlearning_rate = 0.01\nl2 = {l2}\npatience = 30")
            ours_mlp, t_mlp = cairn(work, name, x, y, part, "mlp",
                                    "hidden = [64]\nepochs = 500\nbatch_size = 64\nlearning_rate = 0.001\nl2 = 1e-4\npatience = 20")
            rows.append((name, len(y), x.shape[1], len(set(y)), sk_lr, ours_lr, t_lr, sk_mlp, ours_mlp, t_mlp))
    print("| data set | rows × features, classes | LogisticRegression | cairn logistic | Δ points | MLPClassifier | cairn mlp | Δ points |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for name, n, f, k, a, b, tb, c, d, td in rows:
        worst = min(worst, (b - a) * 100, (d - c) * 100)
        print(f"| {name} | {n} × {f}, {k} | {a:.4f} | {b:.4f} ({tb:.1f} s) | {(b - a) * 100:+.1f} | {c:.4f} | {d:.4f} ({td:.1f} s) | {(d - c) * 100:+.1f} |")
    if worst < -1.0:
        sys.exit(f"cairn is {-worst:.1f} points below scikit-learn somewhere")
    print("within 1 point of scikit-learn everywhere")


if __name__ == "__main__":
    main()
