"""Models made by `cairn train` against onnxruntime and the ONNX checker.

Run: python tests/compat/check_training.py [path/to/cairn]   (default: target/release/cairn)

1. A generated table (numeric features with missing values, a categorical code with rare and
   unseen codes, a class and a value target) is trained three ways by `cairn train`: an MLP
   classifier (3 classes), a binary logistic regression with balanced class weights, an MLP
   regressor and a linear regression (from the same table as Parquet, constant imputation), each
   into a new model (so `config.toml` is written too); and the shipped iris config retrains iris
   into a copy of the repository.
2. Every exported model passes `onnx.checker.check_model(full_check=True)`.
3. The server serves each new version; its answers (over tritonclient, binary tensors, NaN rows
   and unseen codes included) equal onnxruntime's on the same file within 1e-5, labels exactly.
4. `cairn runs list/show/compare` read the store; a config with a wrong key fails naming the
   file and the key.

Every failure is collected; the script exits non-zero listing them all.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import tritonclient.http as httpclient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_monitoring import BINARY, FAILURES, ROOT, Server, check  # noqa: E402
from checks import finish  # noqa: E402

TOL = 1e-5


def write_table(path, rows, seed):
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=rows)
    x2 = rng.uniform(-1, 1, size=rows)
    code = rng.choice([0, 1, 2, 3, 7, 9], p=[0.3, 0.3, 0.2, 0.15, 0.04, 0.01], size=rows)
    score = x1 + 1.5 * x2 + np.where(code == 2, 1.0, 0.0) - np.where(code == 3, 1.0, 0.0)
    cls = np.digitize(score, [-0.7, 0.7])
    value = 2.0 * x1 - x2 + 0.5 * (code == 1) + rng.normal(scale=0.1, size=rows)
    binary = (score + rng.normal(scale=0.3, size=rows) > 1.2).astype(int)
    with open(path, "w") as f:
        f.write("x1,x2,code,cls,binary,value\n")
        for i in range(rows):
            a = "" if i % 13 == 0 else f"{x1[i]:.6f}"
            b = "" if i % 29 == 0 else f"{x2[i]:.6f}"
            c = "" if i % 31 == 0 else str(code[i])
            f.write(f"{a},{b},{c},{cls[i]},{binary[i]},{value[i]:.6f}\n")


def config(model, data, target, kind, repo, runs, extra=""):
    hidden = 'hidden = [16]' if kind.startswith("mlp") else ""
    return f"""
model = "{model}"
seed = 7
threads = 2
[data]
path = "{data}"
features = ["x1", "x2", "code"]
categorical = ["code"]
target = "{target}"
[prep]
impute = "median"
max_categories = 4
{extra}
[trainer]
kind = "{kind}"
{hidden}
epochs = 60
batch_size = 64
learning_rate = 0.01
l2 = 1e-4
[search]
trials = 3
learning_rate = [0.003, 0.03]
[output]
repository = "{repo}"
runs_dir = "{runs}"
"""


def train(path):
    out = subprocess.run([BINARY, "train", "--config", path, "--quiet"], capture_output=True, text=True)
    check(out.returncode == 0, f"cairn train --config {path}: exit {out.returncode}\n{out.stderr[-2000:]}")
    return out


def probe_rows(rows, seed):
    """Rows with NaNs, unseen codes (5, 42) and rare ones (9), as float32."""
    rng = np.random.default_rng(seed)
    x = np.stack([
        rng.normal(size=rows),
        rng.uniform(-1, 1, size=rows),
        rng.choice([0, 1, 2, 3, 7, 9, 5, 42], size=rows).astype(float),
    ], axis=1).astype(np.float32)
    x[::7, 0] = np.nan
    x[::11, 1] = np.nan
    x[::5, 2] = np.nan
    return x


def compare(server, model, version, model_file, x):
    onnx.checker.check_model(onnx.load(model_file), full_check=True)
    sess = ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = dict(zip(names, sess.run(None, {"input": x})))
    client = httpclient.InferenceServerClient(f"{server.host}:{server.port}")
    got_all = {n: [] for n in names}
    for start in range(0, len(x), 64):
        chunk = x[start:start + 64]
        inp = httpclient.InferInput("input", list(chunk.shape), "FP32")
        inp.set_data_from_numpy(chunk, binary_data=True)
        outs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in names]
        res = client.infer(model, [inp], model_version=str(version), outputs=outs)
        for n in names:
            got_all[n].append(res.as_numpy(n))
    for n in names:
        got = np.concatenate(got_all[n])
        if want[n].dtype.kind in "iu":
            check(np.array_equal(got, want[n]), f"{model} v{version}: '{n}' differs from onnxruntime")
        else:
            diff = float(np.max(np.abs(got.astype(np.float64) - want[n].astype(np.float64))))
            check(diff <= TOL, f"{model} v{version}: '{n}' max |diff| {diff:.2e} > {TOL}")
            print(f"{model} v{version}: '{n}' matches onnxruntime, max |diff| {diff:.2e}")


def main():
    work = tempfile.mkdtemp(prefix="cairn-train-check-")
    try:
        repo, runs, state = (os.path.join(work, d) for d in ("repo", "runs", "state"))
        os.makedirs(repo)
        shutil.copytree(os.path.join(ROOT, "models", "iris"), os.path.join(repo, "iris"))
        data = os.path.join(work, "table.csv")
        write_table(data, 3000, 1)
        # The same table as Parquet: a file source of the other kind.
        parquet = os.path.join(work, "table.parquet")
        import pandas as pd
        pd.read_csv(data).to_parquet(parquet)
        cases = [
            ("toy_mlp", "cls", "mlp", "", data),
            ("toy_bin", "binary", "logistic", 'class_weight = "balanced"', data),
            ("toy_reg", "value", "mlp_regressor", "", data),
            ("toy_lin", "value", "linear", 'impute = "constant"\nfill_value = 0.0', parquet),
        ]
        for model, target, kind, extra, source in cases:
            path = os.path.join(work, f"{model}.toml")
            text = config(model, source, target, kind, repo, runs, extra)
            if "impute = \"constant\"" in extra:
                text = text.replace('impute = "median"\n', "")
            with open(path, "w") as f:
                f.write(text)
            out = train(path)
            print(out.stdout)
            check(os.path.isfile(os.path.join(repo, model, "config.toml")), f"{model}: no config.toml written")
            check(os.path.isfile(os.path.join(repo, model, "1", "baseline.json")), f"{model}: no baseline.json")
        with open(os.path.join(ROOT, "configs", "train", "iris.toml")) as f:
            iris = f.read().replace('repository = "models"', f'repository = "{repo}"').replace(
                'runs_dir = "state/runs"', f'runs_dir = "{runs}"')
        iris = iris.replace('path = "models/iris/train.csv"', f'path = "{os.path.join(ROOT, "models/iris/train.csv")}"')
        iris_path = os.path.join(work, "iris.toml")
        with open(iris_path, "w") as f:
            f.write(iris)
        print(train(iris_path).stdout)
        server = Server(repo, state)
        try:
            server.wait_ready(["toy_mlp", "toy_bin", "toy_reg", "toy_lin", "iris"])
            x = probe_rows(500, 2)
            for model, _, _, _, _ in cases:
                compare(server, model, 1, os.path.join(repo, model, "1", "model.onnx"), x)
            iris_x = np.random.default_rng(3).uniform(0, 7, size=(200, 4)).astype(np.float32)
            iris_x[::9, 2] = np.nan
            compare(server, "iris", 3, os.path.join(repo, "iris", "3", "model.onnx"), iris_x)
        finally:
            server.stop()
        listing = subprocess.run([BINARY, "runs", "--runs-dir", runs, "list"], capture_output=True, text=True)
        print(listing.stdout)
        ids = [line.split()[0] for line in listing.stdout.splitlines()[1:]]
        check(len(ids) == 5, f"runs list shows {len(ids)} runs, not 5")
        shown = subprocess.run([BINARY, "runs", "--runs-dir", runs, "show", ids[0]], capture_output=True, text=True)
        record = json.loads(shown.stdout)
        check(record["status"] == "succeeded" and len(record["trials"]) == 3, "runs show: wrong record")
        cmp = subprocess.run([BINARY, "runs", "--runs-dir", runs, "compare", ids[0], ids[1]], capture_output=True, text=True)
        check(cmp.returncode == 0 and "learning rate" in cmp.stdout, f"runs compare failed: {cmp.stderr}")
        bad = os.path.join(work, "bad.toml")
        with open(bad, "w") as f:
            f.write(config("toy_bad", data, "cls", "mlp", repo, runs).replace("epochs = 60", "epochs = -1"))
        out = subprocess.run([BINARY, "train", "--config", bad], capture_output=True, text=True)
        check(out.returncode == 1 and f"{bad}: key 'trainer.epochs'" in out.stderr,
              f"a wrong key is not named: {out.stderr}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finish("training checks passed", "training checks failed")


if __name__ == "__main__":
    main()
