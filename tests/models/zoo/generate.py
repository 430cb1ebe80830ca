"""The model zoo: tree ensembles and scikit-learn pipelines from real exporters, hand-written
graphs, and onnxruntime's answers to them.

Exact versions: tests/compat/requirements.txt (scikit-learn 1.9.1, skl2onnx 1.20.0,
onnxruntime 1.32.0, onnx 1.23.2, onnxmltools 1.16.0, onnxconverter-common 1.16.0, xgboost-cpu
3.2.0, lightgbm 4.7.0; Python 3.11). Run from the repository root:

    .venv/bin/pip install -r tests/compat/requirements.txt
    .venv/bin/python tests/models/zoo/generate.py
    .venv/bin/python tests/models/zoo/generate.py --bench-model   # 500 trees, to target/
    .venv/bin/python tests/models/zoo/generate.py --out /tmp/zoo  # elsewhere: CI serves that
                                                                  # (CAIRN_ZOO_DIR, tests/it/zoo.rs)

Every model is trained on data shipped inside scikit-learn (nothing is downloaded), small
(tens of trees, depth <= 6). Besides the exporters' models, `spec-*` models are written by hand
with onnx.helper to reach what exporters rarely write: every node mode, every aggregate
function, every post transform, base values, the binary special cases, integer and double
inputs. The models beyond trees (pipelines, linear models, SVMs, text, ZipMap, k-means, a
torch-style graph, FP16 and mixed-precision graphs from onnxconverter-common, and their `spec-*`
graphs) are in pipelines.py beside this file.
onnxruntime's outputs for held-out rows are recorded (a ZipMap's sequence of maps as the
[N, classes] FP32 tensor cairn answers); the tests hold every engine to them. Rows whose label
is within 1e-4 of changing (2e-2 for the FP16 models) are not used. Writes, beside this script
(or to `--out`):

    <name>/1/model.onnx, <name>/config.toml
    expected.json   {model path from the repo root: [case, ...]} (tests/models/expected.json's form)
    MODELS.md       what each model is: exporter, estimator, data, opsets, operators

Graph names are random (skl2onnx), so regenerating rewrites every model file; keep the files of
models whose answers did not change.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as helper
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent.parent
# Where the zoo is written: beside this script, or `--out` (CI regenerates it there and serves
# it, so that the exporters' current output is what the engines are held to).
OUT = HERE


def _load_test_models_generator():
    """tests/models/generate.py, for its expected.json writer (the same file format)."""
    spec = importlib.util.spec_from_file_location("test_models", HERE.parent / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


TEST_MODELS = _load_test_models_generator()
sys.path.insert(0, str(HERE))
import pipelines  # noqa: E402  (beside this file)

warnings.filterwarnings("ignore")

# Rows per case: few enough that onnxruntime sums every row's trees in order on one thread
# (it splits the trees across threads above 50 rows, which reorders float sums).
ROWS = (1, 12)
# Rows whose two best class scores are closer than this are not used: a float rounding in
# another (correct) evaluation order could flip their label.
MIN_LABEL_MARGIN = 1e-4
MAX_MODEL_BYTES = 300_000


def _patch_onnx_bool_attributes() -> None:
    """skl2onnx 1.20 writes a Python bool into nodes_missing_value_tracks_true for the leaves of
    HistGradientBoosting trees, which onnx 1.23's make_attribute refuses; write them as 0/1."""
    original = helper.make_attribute

    def make_attribute(key, value, *args, **kwargs):
        if isinstance(value, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in value):
            value = [int(v) for v in value]
        return original(key, value, *args, **kwargs)

    helper.make_attribute = make_attribute


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def split(x, y, seed=0):
    from sklearn.model_selection import train_test_split

    return train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=seed)


def data(name):
    from sklearn import datasets

    if name == "breast_cancer":
        return split(*datasets.load_breast_cancer(return_X_y=True))
    if name == "iris":
        return split(*datasets.load_iris(return_X_y=True))
    if name == "iris_names":
        bunch = datasets.load_iris()
        return split(bunch.data, bunch.target_names[bunch.target])
    if name == "wine":
        return split(*datasets.load_wine(return_X_y=True))
    if name == "diabetes":
        return split(*datasets.load_diabetes(return_X_y=True))
    if name == "classification_nan":
        x, y = datasets.make_classification(
            n_samples=600, n_features=10, n_informative=6, random_state=7
        )
        rng = np.random.default_rng(7)
        x[rng.random(x.shape) < 0.15] = np.nan
        return split(x, y)
    raise KeyError(name)


# --------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------

SKL_OPSET = 17  # skl2onnx: ai.onnx 17, ai.onnx.ml 1 (3 with double inputs below)
MLTOOLS_OPSET = 15  # onnxmltools 1.16 converts up to ai.onnx 15


def skl(model, features, double=False):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    kind = DoubleTensorType if double else FloatTensorType
    options = {id(model): {"zipmap": False}} if hasattr(model, "classes_") else None
    opset = {"": SKL_OPSET, "ai.onnx.ml": 3} if double else SKL_OPSET
    return convert_sklearn(
        model,
        initial_types=[("input", kind([None, features]))],
        options=options,
        target_opset=opset,
    )


def xgb(model, features):
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    return convert_xgboost(
        model, initial_types=[("input", FloatTensorType([None, features]))], target_opset=MLTOOLS_OPSET
    )


def lgbm(model, features):
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    return convert_lightgbm(
        model,
        initial_types=[("input", FloatTensorType([None, features]))],
        target_opset=MLTOOLS_OPSET,
        zipmap=False,
    )


def exported_models():
    """(name, exporter, estimator description, data set, factory returning (onnx, x_test))."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeClassifier
    import lightgbm
    import xgboost

    def sk(estimator, dataset, double=False):
        def make():
            x_train, x_test, y_train, _ = data(dataset)
            estimator.fit(x_train, y_train)
            x_test = x_test.astype(np.float64) if double else x_test
            return skl(estimator, x_train.shape[1], double), x_test

        return make

    def ml(estimator, dataset, convert):
        def make():
            x_train, x_test, y_train, _ = data(dataset)
            estimator.fit(x_train, y_train)
            return convert(estimator, x_train.shape[1]), x_test

        return make

    lgb = dict(n_estimators=30, num_leaves=15, max_depth=5, verbose=-1, random_state=0)
    return [
        ("dt-binary", "skl2onnx", "DecisionTreeClassifier(max_depth=6)", "breast_cancer",
         sk(DecisionTreeClassifier(max_depth=6, random_state=0), "breast_cancer")),
        ("dt-multiclass", "skl2onnx", "DecisionTreeClassifier(max_depth=5)", "wine",
         sk(DecisionTreeClassifier(max_depth=5, random_state=0), "wine")),
        ("rf-binary", "skl2onnx", "RandomForestClassifier(20 trees, depth 6)", "breast_cancer",
         sk(RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0), "breast_cancer")),
        ("rf-multiclass", "skl2onnx", "RandomForestClassifier(20 trees, depth 5)", "wine",
         sk(RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0), "wine")),
        ("rf-string-labels", "skl2onnx", "RandomForestClassifier(10 trees, depth 4), string classes",
         "iris (target names)",
         sk(RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0), "iris_names")),
        ("extratrees-multiclass", "skl2onnx", "ExtraTreesClassifier(20 trees, depth 5)", "wine",
         sk(ExtraTreesClassifier(n_estimators=20, max_depth=5, random_state=0), "wine")),
        ("gb-binary", "skl2onnx", "GradientBoostingClassifier(30 trees, depth 3)", "breast_cancer",
         sk(GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0), "breast_cancer")),
        ("gb-multiclass", "skl2onnx", "GradientBoostingClassifier(15 rounds × 3 classes, depth 3)",
         "iris",
         sk(GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0), "iris")),
        ("hgb-binary", "skl2onnx", "HistGradientBoostingClassifier(30 iterations, depth 5)",
         "breast_cancer",
         sk(HistGradientBoostingClassifier(max_iter=30, max_depth=5, random_state=0), "breast_cancer")),
        ("hgb-binary-nan", "skl2onnx",
         "HistGradientBoostingClassifier(30 iterations, depth 5), trained and tested with NaN",
         "make_classification(seed 7), 15 % NaN",
         sk(HistGradientBoostingClassifier(max_iter=30, max_depth=5, random_state=0), "classification_nan")),
        ("rf-regressor", "skl2onnx", "RandomForestRegressor(20 trees, depth 6)", "diabetes",
         sk(RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0), "diabetes")),
        ("gb-regressor", "skl2onnx", "GradientBoostingRegressor(30 trees, depth 3)", "diabetes",
         sk(GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0), "diabetes")),
        ("xgb-binary", "onnxmltools", "XGBClassifier(30 trees, depth 4)", "breast_cancer",
         ml(xgboost.XGBClassifier(n_estimators=30, max_depth=4, random_state=0), "breast_cancer", xgb)),
        ("xgb-multiclass", "onnxmltools", "XGBClassifier(15 rounds × 3 classes, depth 4)", "wine",
         ml(xgboost.XGBClassifier(n_estimators=15, max_depth=4, random_state=0), "wine", xgb)),
        ("xgb-regressor", "onnxmltools", "XGBRegressor(30 trees, depth 4)", "diabetes",
         ml(xgboost.XGBRegressor(n_estimators=30, max_depth=4, random_state=0), "diabetes", xgb)),
        ("lgbm-binary", "onnxmltools", "LGBMClassifier(30 trees, 15 leaves)", "breast_cancer",
         ml(lightgbm.LGBMClassifier(**lgb), "breast_cancer", lgbm)),
        ("lgbm-multiclass", "onnxmltools", "LGBMClassifier(15 rounds × 3 classes, 15 leaves)", "wine",
         ml(lightgbm.LGBMClassifier(**dict(lgb, n_estimators=15)), "wine", lgbm)),
        ("lgbm-regressor", "onnxmltools", "LGBMRegressor(30 trees, 15 leaves)", "diabetes",
         ml(lightgbm.LGBMRegressor(**lgb), "diabetes", lgbm)),
        ("lgbm-binary-nan", "onnxmltools", "LGBMClassifier(30 trees, 15 leaves), NaN in and out",
         "make_classification(seed 7), 15 % NaN",
         ml(lightgbm.LGBMClassifier(**lgb), "classification_nan", lgbm)),
    ]


# --------------------------------------------------------------------------
# Hand-written models: what exporters rarely write
# --------------------------------------------------------------------------

MODES = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]


def random_trees(rng, n_trees, depth, features, width, modes, grid, missing=False,
                 leaf_ids=None, weight=lambda rng: rng.normal()):
    """Full binary trees. Thresholds come from `grid` (as the inputs do) so EQ/NEQ branch both
    ways; `leaf_ids(rng)` lists the classes or targets a leaf votes for."""
    a = {k: [] for k in ["treeids", "nodeids", "featureids", "values", "modes", "true", "false",
                         "missing", "l_tree", "l_node", "l_id", "l_weight"]}
    for t in range(n_trees):
        n_nodes = 2 ** (depth + 1) - 1
        for i in range(n_nodes):
            leaf = i >= 2 ** depth - 1
            a["treeids"].append(t)
            a["nodeids"].append(i)
            a["featureids"].append(0 if leaf else int(rng.integers(features)))
            a["values"].append(0.0 if leaf else float(rng.choice(grid)))
            a["modes"].append("LEAF" if leaf else str(rng.choice(modes)))
            a["true"].append(0 if leaf else 2 * i + 1)
            a["false"].append(0 if leaf else 2 * i + 2)
            a["missing"].append(0 if leaf or not missing else int(rng.integers(2)))
            if leaf:
                ids = leaf_ids(rng) if leaf_ids else range(width)
                for k in ids:
                    a["l_tree"].append(t)
                    a["l_node"].append(i)
                    a["l_id"].append(int(k))
                    a["l_weight"].append(float(np.float32(weight(rng))))
    return a


def ensemble_node(op, a, in_type=TensorProto.FLOAT, double_attrs=False, **extra):
    prefix = "class" if op == "TreeEnsembleClassifier" else "target"
    attrs = dict(
        nodes_treeids=a["treeids"], nodes_nodeids=a["nodeids"], nodes_featureids=a["featureids"],
        nodes_modes=a["modes"], nodes_truenodeids=a["true"], nodes_falsenodeids=a["false"],
        nodes_missing_value_tracks_true=a["missing"],
        **{f"{prefix}_treeids": a["l_tree"], f"{prefix}_nodeids": a["l_node"],
           f"{prefix}_ids": a["l_id"]},
    )
    if double_attrs:
        attrs["nodes_values_as_tensor"] = numpy_helper.from_array(np.array(a["values"]), "v")
        attrs[f"{prefix}_weights_as_tensor"] = numpy_helper.from_array(np.array(a["l_weight"]), "w")
        if "base_values" in extra:
            attrs["base_values_as_tensor"] = numpy_helper.from_array(
                np.array(extra.pop("base_values"), dtype=np.float64), "b")
    else:
        attrs["nodes_values"] = a["values"]
        attrs[f"{prefix}_weights"] = a["l_weight"]
    attrs.update(extra)
    return attrs


def spec_model(op, attrs, features, in_type=TensorProto.FLOAT, ml_opset=1):
    if op == "TreeEnsembleClassifier":
        label = TensorProto.STRING if "classlabels_strings" in attrs else TensorProto.INT64
        width = len(attrs.get("classlabels_strings") or attrs["classlabels_int64s"])
        outputs = [helper.make_tensor_value_info("label", label, ["N"]),
                   helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", width])]
    else:
        outputs = [helper.make_tensor_value_info("variable", TensorProto.FLOAT, ["N", attrs["n_targets"]])]
    node = helper.make_node(op, ["input"], [o.name for o in outputs], domain="ai.onnx.ml", **attrs)
    graph = helper.make_graph(
        [node], "spec", [helper.make_tensor_value_info("input", in_type, ["N", features])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", ml_opset)],
                              producer_name="cairn-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


GRID = np.array([0.0, 1.0, 2.0, 3.0], dtype=np.float32)


def grid_rows(rng, rows, features, nan=False, dtype=np.float32):
    x = rng.choice(GRID, size=(rows, features)) + rng.choice([0.0, 0.5], size=(rows, features))
    if nan:
        x[rng.random(x.shape) < 0.25] = np.nan
    return x.astype(dtype)


def spec_models():
    """(name, description, model, inputs maker(rng, rows))."""
    out = []
    F = 4

    def add(name, description, op, attrs, in_type=TensorProto.FLOAT, ml_opset=1, nan=False,
            dtype=np.float32):
        model = spec_model(op, attrs, F, in_type, ml_opset)
        out.append((name, description, model, lambda rng, rows: grid_rows(rng, rows, F, nan, dtype)))

    def trees(seed, **kw):
        return random_trees(np.random.default_rng(seed), features=F, grid=GRID, **kw)

    reg, clf = "TreeEnsembleRegressor", "TreeEnsembleClassifier"
    # Every node mode in one forest, two targets, base values.
    add("spec-modes", "every node mode mixed in each tree; 2 targets, SUM, base_values", reg,
        ensemble_node(reg, trees(1, n_trees=6, depth=4, width=2, modes=MODES),
                      n_targets=2, base_values=[0.5, -1.0]))
    for mode in MODES:
        add(f"spec-mode-{mode.lower()}", f"{mode} only (the specialised walk)", reg,
            ensemble_node(reg, trees(2, n_trees=5, depth=3, width=1, modes=[mode]), n_targets=1))
    # NaN: missing values go the true way where the node says so.
    add("spec-missing", "nodes_missing_value_tracks_true on half the nodes, NaN in a quarter of "
        "the inputs, mixed modes", reg,
        ensemble_node(reg, trees(3, n_trees=6, depth=4, width=1, modes=MODES, missing=True),
                      n_targets=1), nan=True)
    # Aggregates, one target (onnxruntime's single-score path) and three.
    for agg in ["SUM", "AVERAGE", "MIN", "MAX"]:
        for width in (1, 3):
            add(f"spec-{agg.lower()}-{width}", f"aggregate_function {agg}, n_targets {width}, "
                "base_values", reg,
                ensemble_node(reg, trees(4, n_trees=5, depth=3, width=width, modes=["BRANCH_LEQ"],
                                         leaf_ids=lambda rng, w=width: sorted(
                                             rng.choice(w, size=int(rng.integers(1, w + 1)), replace=False))),
                              n_targets=width, aggregate_function=agg,
                              base_values=[0.25 * (k + 1) for k in range(width)]))
    # Regressor post transforms: only PROBIT applies to one target.
    for post in ["LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"]:
        for width in (1, 3):
            weight = (lambda rng: rng.uniform(0.0, 0.2)) if post == "PROBIT" else (lambda rng: rng.normal())
            ids = (lambda rng, w=width: [int(rng.integers(w))]) if post == "SOFTMAX_ZERO" else None
            add(f"spec-reg-{post.lower()}-{width}", f"regressor, post_transform {post}, "
                f"n_targets {width}", reg,
                ensemble_node(reg, trees(5, n_trees=4, depth=3, width=width, modes=["BRANCH_LT"],
                                         weight=weight, leaf_ids=ids),
                              n_targets=width, post_transform=post))
    # Classifier post transforms with four classes and base values.
    for post in ["NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT"]:
        weight = (lambda rng: rng.uniform(0.0, 0.12)) if post == "PROBIT" else (lambda rng: rng.normal())
        base = [0.01, 0.02, 0.03, 0.04] if post == "PROBIT" else [0.1, -0.2, 0.3, 0.0]
        add(f"spec-clf-{post.lower()}", f"4 classes, post_transform {post}, base_values", clf,
            ensemble_node(clf, trees(6, n_trees=6, depth=3, width=4, modes=["BRANCH_GTE"],
                                     weight=weight,
                                     leaf_ids=lambda rng: sorted(rng.choice(4, size=2, replace=False))),
                          classlabels_int64s=[10, 20, 30, 40], post_transform=post, base_values=base))
    # The binary special cases (onnxruntime's binary_case_ and its literal 0/1 labels).
    positive = lambda rng: rng.uniform(0.0, 0.25)  # noqa: E731
    one = lambda k: (lambda rng: [k])  # noqa: E731
    add("spec-binary-class1-positive", "2 classes, weights on class 1 only, all positive "
        "(label: score > 0.5)", clf,
        ensemble_node(clf, trees(7, n_trees=4, depth=3, width=2, modes=["BRANCH_LEQ"],
                                 weight=positive, leaf_ids=one(1)), classlabels_int64s=[3, 8]))
    add("spec-binary-class0-positive", "2 classes, weights on class 0 only, all positive", clf,
        ensemble_node(clf, trees(8, n_trees=4, depth=3, width=2, modes=["BRANCH_LEQ"],
                                 weight=positive, leaf_ids=one(0)), classlabels_int64s=[3, 8]))
    for post in ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"]:
        for base in ([], [0.3]):
            name = f"spec-binary-mixed-{post.lower()}" + ("-base" if base else "")
            extra = {"base_values": base} if base else {}
            add(name, f"2 classes, signed weights on class 0 only, {post}, base_values {base}", clf,
                ensemble_node(clf, trees(9, n_trees=5, depth=3, width=2, modes=["BRANCH_LEQ"],
                                         leaf_ids=one(0)),
                              classlabels_int64s=[0, 1], post_transform=post, **extra))
    add("spec-binary-base2", "2 classes, weights on class 1, base_values of 2 (onnxruntime "
        "ignores base_values[0])", clf,
        ensemble_node(clf, trees(10, n_trees=4, depth=3, width=2, modes=["BRANCH_LEQ"],
                                 weight=positive, leaf_ids=one(1)),
                      classlabels_int64s=[0, 1], base_values=[0.2, 0.1]))
    add("spec-binary-both-classes", "2 classes labelled 5 and 9, weights on both: onnxruntime "
        "answers the literal 1 or 0", clf,
        ensemble_node(clf, trees(11, n_trees=4, depth=3, width=2, modes=["BRANCH_LEQ"]),
                      classlabels_int64s=[5, 9], post_transform="LOGISTIC"))
    add("spec-binary-strings", "2 string classes, signed weights on class 0, LOGISTIC", clf,
        ensemble_node(clf, trees(12, n_trees=4, depth=3, width=2, modes=["BRANCH_GT"],
                                 leaf_ids=one(0)),
                      classlabels_strings=["no", "yes"], post_transform="LOGISTIC"))
    add("spec-int64-input", "INT64 input, 3 classes", clf,
        ensemble_node(clf, trees(13, n_trees=4, depth=3, width=3, modes=["BRANCH_LT"]),
                      classlabels_int64s=[0, 1, 2], post_transform="SOFTMAX"),
        in_type=TensorProto.INT64, dtype=np.int64)
    add("spec-double", "DOUBLE input and *_as_tensor doubles (ai.onnx.ml 3), 2 targets", reg,
        ensemble_node(reg, trees(14, n_trees=5, depth=3, width=2, modes=["BRANCH_LEQ"]),
                      double_attrs=True, n_targets=2, base_values=[1.0, 2.0]),
        in_type=TensorProto.DOUBLE, ml_opset=3, dtype=np.float64)
    return out


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def session(model_bytes):
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def tree_ops(model):
    """The operators of a model, in order, each once; tree and linear operators with their
    post_transform."""
    found = []
    for node in model.graph.node:
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if "post_transform" in attrs or op.startswith("TreeEnsemble"):
            op = f"{op} ({attrs.get('post_transform', b'NONE').decode()})"
        if op not in found:
            found.append(op)
    return ", ".join(found)


def opsets(model):
    return ", ".join(sorted(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import))


def tensor_json(array):
    """tests/models/generate.py's form, with NaN written as null (JSON has no NaN)."""
    t = TEST_MODELS.tensor_json(array)
    if array.dtype.kind == "f":
        t["data"] = [None if np.isnan(v) else v for v in t["data"]]
    return t


def zipmap_keys(model):
    """{output name: class keys} of the ZipMap nodes."""
    keys = {}
    for node in model.graph.node:
        if node.op_type == "ZipMap":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            labels = attrs.get("classlabels_int64s") or [
                s.decode() for s in attrs["classlabels_strings"]]
            keys[node.output[0]] = list(labels)
    return keys


def run_outputs(sess, inputs, zipmaps):
    """onnxruntime's outputs by name; a ZipMap's sequence of maps as the [N, classes] FP32
    tensor cairn answers, the columns in the node's class order."""
    names = [o.name for o in sess.get_outputs()]
    outputs = sess.run(names, inputs)
    for i, name in enumerate(names):
        if name in zipmaps:
            rows = outputs[i]
            outputs[i] = np.array([[row[k] for k in zipmaps[name]] for row in rows],
                                  dtype=np.float32).reshape(len(rows), len(zipmaps[name]))
    return names, outputs


def run_case(sess, inputs, zipmaps=None):
    names, outputs = run_outputs(sess, inputs, zipmaps or {})
    for name, value in zip(names, outputs):
        assert value.dtype.kind != "f" or not np.isnan(value).any(), f"{name} has NaN"
    return {
        "inputs": {k: tensor_json(v) for k, v in inputs.items()},
        "outputs": {k: tensor_json(v) for k, v in zip(names, outputs)},
    }


def clear_label_rows(sess, x, rng, rows):
    """`rows` rows of x whose label is not a near tie (regressors: any rows)."""
    outputs = sess.get_outputs()
    if len(outputs) == 1:
        eligible = np.arange(len(x))
    else:
        proba = sess.run([outputs[1].name], {"input": x})[0]
        if proba.shape[1] == 2:
            # The binary label compares the second score with 0.5 or 0 depending on the model.
            margin = np.minimum(np.abs(proba[:, 1] - 0.5), np.abs(proba[:, 1]))
            margin = np.minimum(margin, np.abs(proba[:, 1] - proba[:, 0]))
        else:
            top2 = np.sort(proba, axis=1)[:, -2:]
            margin = top2[:, 1] - top2[:, 0]
        eligible = np.flatnonzero(margin >= MIN_LABEL_MARGIN)
    return x[np.sort(rng.choice(eligible, size=rows, replace=False))]


def computes_in_half(model) -> bool:
    """Whether any weight or cast of the graph is FP16 (its outputs may still be FP32)."""
    g = model.graph
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16
                                    for a in n.attribute) for n in g.node)


def zoo_key(version: Path) -> str:
    """expected.json's key for a model: its path in the repository, wherever it was written
    (tests/it/zoo.rs finds the file under the zoo directory it is given)."""
    return f"tests/models/zoo/{version.parent.name}/1/model.onnx"


def write(name, model, x_pool, rng, expected, manifest, description):
    data = model.SerializeToString()
    assert len(data) <= MAX_MODEL_BYTES, f"{name} is {len(data)} bytes"
    version = OUT / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.onnx").write_bytes(data)
    (OUT / name / "config.toml").write_text(
        f"# {description}\nmax_batch_size = 64\n", encoding="utf-8")
    sess = session(data)
    cases = []
    for rows in ROWS:
        x = clear_label_rows(sess, x_pool, rng, rows)
        cases.append(run_case(sess, {"input": x}))
    rel = zoo_key(version)
    expected[rel] = cases
    manifest.append((name, description, opsets(model), tree_ops(model), len(data)))
    print(f"{rel}: {len(data)} bytes, {tree_ops(model)}")


def default_margin(sess, zipmaps):
    """Per row, how far its label is from changing: the gap between the two best (and the two
    worst, for ArgMin) class scores; for two scores, also their distance from 0.5 and from 0
    (the binary labels compare with either). Rows of a model without labels are all clear."""

    def margin(inputs):
        names, outputs = run_outputs(sess, inputs, zipmaps)
        n = len(next(iter(inputs.values())))
        labels = [v for v in outputs if v.ndim == 1 and v.dtype.kind in "iUO"]
        scores = [v for v in outputs if v.ndim == 2 and v.dtype.kind == "f"]
        if not labels or not scores:
            return np.full(n, np.inf)
        s = scores[0]
        if s.shape[1] == 1:
            return np.abs(s[:, 0])
        if s.shape[1] == 2:
            p = s[:, 1]
            return np.minimum.reduce([np.abs(p - 0.5), np.abs(p), np.abs(p - s[:, 0])])
        ordered = np.sort(s, axis=1)
        return np.minimum(ordered[:, -1] - ordered[:, -2], ordered[:, 1] - ordered[:, 0])

    return margin


def write_model(m, expected, manifest, exporters):
    """One model of pipelines.py: any inputs, labels kept clear of ties, ZipMap as a tensor."""
    data = m.model.SerializeToString()
    assert len(data) <= MAX_MODEL_BYTES, f"{m.name} is {len(data)} bytes"
    version = OUT / m.name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.onnx").write_bytes(data)
    (OUT / m.name / "config.toml").write_text(
        f"# {m.description}\n" + "\n".join(m.config) + "\n", encoding="utf-8")
    sess = session(data)
    zipmaps = zipmap_keys(m.model)
    margin = m.margin or default_margin(sess, zipmaps)
    rng = np.random.default_rng(sum(m.name.encode()))
    cases = []
    for rows in ROWS:
        pool = m.inputs(rng, 200)
        clear = np.flatnonzero(margin(pool) >= (m.min_margin or MIN_LABEL_MARGIN))
        assert len(clear) >= rows, f"{m.name}: {len(clear)} rows clear of label ties"
        pick = np.sort(rng.choice(clear, size=rows, replace=False))
        case = run_case(sess, {k: v[pick] for k, v in pool.items()}, zipmaps)
        if computes_in_half(m.model):
            # Every layer rounds to 11 bits, and engines order their sums differently.
            case["tolerance"] = 1e-2
        cases.append(case)
    rel = zoo_key(version)
    expected[rel] = cases
    exporters[m.name] = m.exporter
    manifest.append((m.name, m.description, opsets(m.model), tree_ops(m.model), len(data)))
    print(f"{rel}: {len(data)} bytes, {tree_ops(m.model)}")


def write_manifest(manifest, exporters):
    lines = [
        "# Test models: trees, pipelines, linear models, SVMs, text, ZipMap",
        "",
        "Written by `generate.py` beside this file (its docstring pins the versions; the models "
        "beyond trees come from `pipelines.py`); onnxruntime's outputs are in `expected.json`.",
        "",
        "| Model | Exporter | What | Opsets | Operators (post_transform) | Bytes |",
        "|---|---|---|---|---|---:|",
    ]
    for name, description, ops, trees, size in manifest:
        lines.append(f"| `{name}` | {exporters.get(name, 'onnx.helper')} | {description} | "
                     f"{ops} | {trees} | {size:,} |")
    (OUT / "MODELS.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def bench_model():
    """A 500-tree LightGBM binary classifier (32 features) for benches/engine.rs, written to
    target/ (about 1.5 MB, not committed)."""
    import lightgbm
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=4000, n_features=32, n_informative=16, random_state=3)
    clf = lightgbm.LGBMClassifier(n_estimators=500, num_leaves=31, verbose=-1, random_state=0)
    clf.fit(x.astype(np.float32), y)
    model = lgbm(clf, 32)
    out = REPO_ROOT / "target" / "zoo-bench" / "lgbm-500" / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString())
    print(f"{out.relative_to(REPO_ROOT)}: {out.stat().st_size} bytes, {tree_ops(model)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench-model", action="store_true",
                        help="write the 500-tree bench model to target/zoo-bench/ and stop")
    parser.add_argument("--out", type=Path,
                        help="write the zoo to this directory instead of beside this script")
    args = parser.parse_args()
    global OUT
    if args.out:
        OUT = args.out.resolve()
        OUT.mkdir(parents=True, exist_ok=True)
    _patch_onnx_bool_attributes()
    if args.bench_model:
        bench_model()
        return

    expected: dict[str, list] = {}
    manifest = []
    exporters = {}
    for name, exporter, estimator, dataset, make in exported_models():
        model, x_test = make()
        exporters[name] = exporter
        rng = np.random.default_rng(sum(name.encode()))
        write(name, model, x_test, rng, expected, manifest, f"{estimator} on {dataset}")
    for name, description, model, inputs in spec_models():
        rng = np.random.default_rng(sum(name.encode()))
        write(name, model, inputs(rng, 200), rng, expected, manifest, description)
    for m in pipelines.all_models():
        write_model(m, expected, manifest, exporters)
    TEST_MODELS.write_expected(expected, OUT / "expected.json")
    write_manifest(manifest, exporters)
    print(f"expected.json: {len(expected)} models")


if __name__ == "__main__":
    main()
