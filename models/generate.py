"""Train and export the example models that ship with cairn.

Run from the repository root:

    .venv/bin/python models/generate.py

Every model is a real scikit-learn estimator exported with skl2onnx, so the
server is exercised with the same kind of graphs users will bring (including
the `ai.onnx.ml` operators skl2onnx emits). Everything is seeded, so re-running
the script rewrites byte-identical files on the same machine and library
versions (see tests/compat/requirements.txt).

For each model version this writes, relative to this script's directory:

    <name>/config.toml            model configuration read by the server
    <name>/<version>/model.onnx   the exported graph
    <name>/<version>/sample.json  a KServe V2 request body with 3 held-out rows

Before writing anything, each export is run through onnxruntime and checked
against scikit-learn's own predict / predict_proba on the held-out rows.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent

# Shared by every model so a held-out row is never seen during training.
TEST_SIZE = 0.2
SPLIT_SEED = 0

# Probabilities are computed in float32 by onnxruntime and (usually) float64
# by scikit-learn; anything beyond this tolerance means a broken export.
PROBA_ATOL = 1e-5

# Number of held-out rows in each sample.json request body.
SAMPLE_ROWS = 3

ONNX_OPSET = 17


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    # Features are float32 end to end: that is the dtype the exported graph
    # takes (FP32 in the V2 protocol), so training sees exactly what serving sees.
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    return Split(x_train, x_test, y_train, y_test)


def iris_data() -> Split:
    """150 rows, 4 features, 3 classes (bundled with scikit-learn)."""
    x, y = load_iris(return_X_y=True)
    return _split(x, y)


def tabular_small_data() -> Split:
    """Synthetic binary classification, 32 features."""
    x, y = make_classification(
        n_samples=20000, n_features=32, n_informative=16, n_classes=2, random_state=0
    )
    return _split(x, y)


def mlp_large_data() -> Split:
    """Synthetic 10-class classification, 256 features."""
    x, y = make_classification(
        n_samples=4000, n_features=256, n_informative=64, n_classes=10, random_state=0
    )
    return _split(x, y)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int
    data: Callable[[], Split]
    estimator: Callable[[], object]


MODELS = [
    ModelSpec(
        "iris",
        1,
        iris_data,
        lambda: LogisticRegression(max_iter=1000),
    ),
    # A different estimator behind the same input/output signature, so the
    # server has two genuinely different versions of one model to route to.
    ModelSpec(
        "iris",
        2,
        iris_data,
        lambda: MLPClassifier(hidden_layer_sizes=(16,), max_iter=2000, random_state=0),
    ),
    ModelSpec(
        "tabular-small",
        1,
        tabular_small_data,
        lambda: MLPClassifier(hidden_layer_sizes=(64,), activation="relu", random_state=0),
    ),
    # Deliberately heavy (~1.3M multiply-adds per row) so batching and
    # multiple instances matter. Accuracy is beside the point, so training is
    # cut short to keep this script fast.
    ModelSpec(
        "mlp-large",
        1,
        mlp_large_data,
        lambda: MLPClassifier(hidden_layer_sizes=(1024, 1024), max_iter=20, random_state=0),
    ),
]

CONFIGS = {
    "iris": """\
# Logistic regression (v1) and a small MLP (v2) on the iris data set.
backend = "onnx"
max_batch_size = 64
version_policy = { latest = { num_versions = 2 } }

[dynamic_batching]
max_queue_delay_us = 100

# Prediction log, drift and live quality (see README, "Monitoring"). Each version's baseline is
# baseline.json beside its model, made from train.csv by `cairn baseline`.
[monitoring]
enabled = true
features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
window_rows = 200
quality_window_rows = 100
""",
    "tabular-small": """\
# Binary MLP classifier (32 -> 64 -> 2) on a synthetic tabular data set.
backend = "onnx"
max_batch_size = 64
instances = 2

[dynamic_batching]
# No added delay: requests gather into batches while both engine workers are busy, so a
# lone request is not held back and a loaded server still batches.
max_queue_delay_us = 0
""",
    "mlp-large": """\
# Wide MLP classifier (256 -> 1024 -> 1024 -> 10) on synthetic data.
backend = "onnx"
max_batch_size = 64
instances = 2

[dynamic_batching]
# A batch of 64 rows costs this model 25x a single row: waiting up to 200 us for company
# (little next to its 70 us batch-1 compute) buys larger batches under load.
max_queue_delay_us = 200
""",
}


def train(spec: ModelSpec, split: Split):
    clf = spec.estimator()
    with warnings.catch_warnings():
        # mlp-large stops after a fixed, small number of epochs on purpose.
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        clf.fit(split.x_train, split.y_train)
    return clf


def export(clf, name: str, n_features: int) -> onnx.ModelProto:
    return convert_sklearn(
        clf,
        # skl2onnx otherwise names the graph with a random UUID, which would
        # make every re-export differ byte-wise.
        name=name,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        # Without this, probabilities come out as a sequence of maps, which has
        # no tensor representation in the V2 protocol.
        options={id(clf): {"zipmap": False}},
        target_opset=ONNX_OPSET,
    )


def verify(model: onnx.ModelProto, clf, x_test: np.ndarray) -> None:
    """Fail loudly unless onnxruntime reproduces scikit-learn on held-out rows."""
    onnx.checker.check_model(model, full_check=True)

    outputs = [o.name for o in model.graph.output]
    assert outputs == ["label", "probabilities"], outputs

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    label, proba = sess.run(["label", "probabilities"], {"input": x_test})

    n, n_classes = len(x_test), len(clf.classes_)
    # skl2onnx reshapes the label explicitly; check we really get a flat [N]
    # vector and not [N, 1].
    assert label.shape == (n,), label.shape
    assert label.dtype == np.int64, label.dtype
    assert proba.shape == (n, n_classes), proba.shape
    assert proba.dtype == np.float32, proba.dtype

    np.testing.assert_array_equal(label, clf.predict(x_test))
    np.testing.assert_allclose(proba, clf.predict_proba(x_test), rtol=0, atol=PROBA_ATOL)


def describe(model: onnx.ModelProto) -> str:
    def dim(d) -> str:
        # skl2onnx leaves the batch dimension with neither a value nor a name.
        return d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")

    def fmt(value_info) -> str:
        t = value_info.type.tensor_type
        dims = ", ".join(dim(d) for d in t.shape.dim)
        return f"{value_info.name}: {onnx.TensorProto.DataType.Name(t.elem_type)}[{dims}]"

    ins = ", ".join(fmt(v) for v in model.graph.input)
    outs = ", ".join(fmt(v) for v in model.graph.output)
    return f"{ins} -> {outs}"


def short_float(x: np.float32) -> float:
    """Shortest decimal that still parses back to the same float32.

    Keeps sample.json readable (5.8 rather than 5.800000190734863)."""
    value = float(str(x))
    # A reader parsing to f64 then narrowing must land on the original value.
    assert np.float32(value) == x, (x, value)
    return value


def sample_request(x: np.ndarray) -> str:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": [short_float(v) for v in x.ravel()],
            }
        ]
    }
    return json.dumps(body, separators=(",", ":")) + "\n"


IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def write_training_csv(split: Split, path: Path) -> None:
    """The training rows, for `cairn baseline`: the features as the model saw them (float32)
    and the true class as `output.label`, the prediction distribution a good model has."""
    lines = [",".join(IRIS_FEATURES + ["output.label"])]
    for row, label in zip(split.x_train, split.y_train):
        lines.append(",".join([repr(float(v)) for v in row] + [str(int(label))]))
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    for name, text in CONFIGS.items():
        (HERE / name).mkdir(parents=True, exist_ok=True)
        (HERE / name / "config.toml").write_text(text)

    splits: dict[Callable[[], Split], Split] = {}
    for spec in MODELS:
        split = splits.setdefault(spec.data, spec.data())
        clf = train(spec, split)
        model = export(clf, spec.name, split.x_train.shape[1])
        verify(model, clf, split.x_test)

        out_dir = HERE / spec.name / str(spec.version)
        out_dir.mkdir(parents=True, exist_ok=True)
        model_path = out_dir / "model.onnx"
        model_path.write_bytes(model.SerializeToString())
        (out_dir / "sample.json").write_text(sample_request(split.x_test[:SAMPLE_ROWS]))

        if spec.name == "iris" and spec.version == 1:
            write_training_csv(split, HERE / "iris" / "train.csv")

        accuracy = clf.score(split.x_test, split.y_test)
        print(
            f"{spec.name}/{spec.version}: {type(clf).__name__}, "
            f"held-out accuracy {accuracy:.3f} on {len(split.x_test)} rows, "
            f"{model_path.stat().st_size} bytes; {describe(model)}"
        )


if __name__ == "__main__":
    main()
