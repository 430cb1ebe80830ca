"""The zoo's models beyond trees: scikit-learn pipelines as skl2onnx writes them (scalers,
imputers, one-hot columns with one input per column, linear models, SVMs, text, ZipMap,
k-means), a torch-style graph with intermediate shape annotations, and `spec-*` graphs written
with onnx.helper for what exporters rarely write (every post transform, the binary layouts,
integer and double inputs, the LabelEncoder variants, CategoryMapper, FeatureVectorizer, the
Tokenizer's modes, TfIdfVectorizer's modes and skips). generate.py writes them beside the tree
models; onnxruntime's answers go to the same expected.json.

Each entry is a Model: its graph, a maker of input rows (a dict of arrays, `rows` rows), and
optionally a margin function (per row: how far its label is from changing; rows closer than
MIN_LABEL_MARGIN are not used) and config lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx.helper as helper
from onnx import TensorProto

SKL_OPSET = 17


@dataclass
class Model:
    name: str
    exporter: str
    description: str
    model: onnx.ModelProto
    inputs: Callable[[np.random.Generator, int], dict]
    margin: Callable[[dict], np.ndarray] | None = None
    config: list[str] = field(default_factory=lambda: ["max_batch_size = 64"])
    # Rows whose margin is below this are not used (generate.py's MIN_LABEL_MARGIN when None):
    # half-precision models round far more than 1e-4 between engines.
    min_margin: float | None = None


# --------------------------------------------------------------------------
# Exported pipelines
# --------------------------------------------------------------------------


def skl(model, initial_types, zipmap=False, options=None, opset=SKL_OPSET):
    from skl2onnx import convert_sklearn

    options = dict(options or {})
    last = model.steps[-1][1] if hasattr(model, "steps") else model
    # LinearSVC has no ZipMap to turn off; SVC without probabilities has one.
    if hasattr(last, "classes_") and type(last).__name__ != "LinearSVC" and not zipmap:
        options.setdefault(id(last), {})["zipmap"] = False
    return convert_sklearn(model, initial_types=initial_types, options=options or None,
                           target_opset=opset)


def float_input(width):
    from skl2onnx.common.data_types import FloatTensorType

    return [("input", FloatTensorType([None, width]))]


def rows_of(pool):
    """An inputs maker drawing rows of a test pool (a dict of equally long arrays)."""
    n = len(next(iter(pool.values())))

    def make(rng, rows):
        pick = np.sort(rng.choice(n, size=min(rows, n), replace=False))
        return {k: v[pick] for k, v in pool.items()}

    return make


def svc_margin(pipeline):
    """SVC labels come from one-versus-one votes: a row is clear when no decision value is
    near 0."""

    def margin(inputs):
        decision = pipeline.decision_function(inputs["input"])
        if decision.ndim == 1:
            return np.abs(decision)
        return np.abs(decision).min(axis=1)

    return margin


CORPUS = [
    ("the rain kept falling all afternoon", "weather"),
    ("a cold wind from the north tonight", "weather"),
    ("sunny skies and a warm breeze", "weather"),
    ("heavy snow closed the mountain roads", "weather"),
    ("thunder and lightning over the hills", "weather"),
    ("fog in the valley until noon", "weather"),
    ("the forecast says more rain tomorrow", "weather"),
    ("a humid night with scattered storms", "weather"),
    ("frost on the windows this morning", "weather"),
    ("clear and cold with a light wind", "weather"),
    ("fresh bread with butter and honey", "food"),
    ("a bowl of tomato soup for lunch", "food"),
    ("grilled fish with lemon and rice", "food"),
    ("the cake needs more sugar and eggs", "food"),
    ("spicy noodles with garlic and chili", "food"),
    ("roast chicken with potatoes tonight", "food"),
    ("apple pie and cream for dessert", "food"),
    ("a salad of beans, corn and onions", "food"),
    ("coffee and a warm croissant", "food"),
    ("pasta with basil and cheese for dinner", "food"),
]

TEXT_TESTS = np.array([
    ["Rain and wind all night"], ["The soup was cold"], ["snow, fog and frost"],
    ["garlic bread with cheese"], ["A WARM BREEZE TONIGHT"], ["chicken soup and rice"],
    ["storms over the valley"], ["honey cake with cream"], ["lightning! thunder?"],
    ["noodles for lunch"], ["the roads are clear"], ["sugar, eggs and butter"],
    ["a light breeze and sunny skies"], ["fish and lemon"], ["more rain tomorrow morning"],
    ["basil pasta"],
], dtype=object)


def exported():
    from sklearn.cluster import KMeans
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Binarizer, Normalizer, OneHotEncoder, StandardScaler
    from sklearn.svm import SVC, SVR, LinearSVC
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    def split(x, y, seed=0):
        return train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=seed)

    iris, wine = load_iris(), load_wine()
    xi_train, xi_test, yi_train, _ = split(iris.data, iris.target)
    xb_train, xb_test, yb_train, _ = split(*load_breast_cancer(return_X_y=True))
    xw_train, xw_test, yw_train, _ = split(wine.data, wine.target)
    xd_train, xd_test, yd_train, _ = split(*load_diabetes(return_X_y=True))
    out = []

    def add(name, description, estimator, model, pool, margin=None, config=None):
        kw = {"config": config} if config else {}
        out.append(Model(name, "skl2onnx", description, model, rows_of(pool), margin, **kw))

    p = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(xi_train, yi_train)
    add("scaler-logreg", "StandardScaler + LogisticRegression on iris", p,
        skl(p, float_input(4)), {"input": xi_test})

    # NaN in a tenth of the values, in training and in the test rows.
    rng = np.random.default_rng(11)
    xn_train, xn_test = xb_train.copy(), xb_test.copy()
    xn_train[rng.random(xn_train.shape) < 0.1] = np.nan
    xn_test[rng.random(xn_test.shape) < 0.1] = np.nan
    p = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=1000))
    p.fit(xn_train, yb_train)
    add("impute-scale-logreg", "SimpleImputer + StandardScaler + LogisticRegression on "
        "breast_cancer, 10 % NaN in training and test rows (binary)", p,
        skl(p, float_input(30)), {"input": xn_test})

    # One input per column, as a data frame's columns arrive: two numbers, two strings.
    def columns(x):
        color = np.where(x[:, 9] < 3.5, "pale", np.where(x[:, 9] < 6, "medium", "deep"))
        hue = np.where(x[:, 10] < 0.8, "brown", "red")
        return {
            "alcohol": x[:, 0:1].astype(np.float32),
            "malic_acid": x[:, 1:2].astype(np.float32),
            "color": color.astype(object).reshape(-1, 1),
            "hue": hue.astype(object).reshape(-1, 1),
        }

    train_cols, test_cols = columns(xw_train), columns(xw_test)
    test_cols["alcohol"][::7] = np.nan
    frame = np.empty((len(xw_train), 4), dtype=object)
    for i, k in enumerate(["alcohol", "malic_acid", "color", "hue"]):
        frame[:, i] = train_cols[k][:, 0]
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), [0, 1]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), [2, 3]),
    ])
    p = make_pipeline(ct, LogisticRegression(max_iter=1000)).fit(frame, yw_train)
    types = [("alcohol", FloatTensorType([None, 1])), ("malic_acid", FloatTensorType([None, 1])),
             ("color", StringTensorType([None, 1])), ("hue", StringTensorType([None, 1]))]
    add("columns-onehot", "ColumnTransformer (SimpleImputer + StandardScaler on two number "
        "columns, OneHotEncoder on two string columns), one input per column, + "
        "LogisticRegression on wine", p, skl(p, types), test_cols)

    names = iris.target_names[iris.target]
    xs_train, xs_test, ys_train, _ = split(iris.data, names)
    p = LogisticRegression(max_iter=500).fit(xs_train, ys_train)
    add("logreg-string-labels", "LogisticRegression, string classes on iris (target names)", p,
        skl(p, float_input(4)), {"input": xs_test})

    p = LinearRegression().fit(xd_train, yd_train)
    add("linreg", "LinearRegression on diabetes", p, skl(p, float_input(10)),
        {"input": xd_test})
    y2 = np.stack([yd_train, np.log(yd_train)], axis=1)
    p = Ridge(alpha=0.5).fit(xd_train, y2)
    add("ridge-2-targets", "Ridge(alpha 0.5), two targets on diabetes", p,
        skl(p, float_input(10)), {"input": xd_test})

    p = SVC(probability=True, random_state=0).fit(xi_train, yi_train)
    add("svc-rbf-proba", "SVC(rbf, probability=True) on iris", p, skl(p, float_input(4)),
        {"input": xi_test}, svc_margin(p))
    p = make_pipeline(StandardScaler(), SVC(probability=True, random_state=0))
    p.fit(xb_train, yb_train)
    add("svc-rbf-proba-binary", "StandardScaler + SVC(rbf, probability=True) on "
        "breast_cancer", p, skl(p, float_input(30)), {"input": xb_test}, svc_margin(p))
    for kernel in ["linear", "poly", "sigmoid"]:
        p = make_pipeline(StandardScaler(), SVC(kernel=kernel, random_state=0))
        p.fit(xw_train, yw_train)
        add(f"svc-{kernel}", f"StandardScaler + SVC({kernel}), decision values, on wine", p,
            skl(p, float_input(13)), {"input": xw_test}, svc_margin(p))
    p = make_pipeline(StandardScaler(), SVC(kernel="rbf", random_state=0))
    p.fit(xb_train, yb_train)
    add("svc-rbf-binary", "StandardScaler + SVC(rbf), decision values, on breast_cancer", p,
        skl(p, float_input(30)), {"input": xb_test}, svc_margin(p))
    p = make_pipeline(StandardScaler(), SVR(C=20.0)).fit(xd_train, yd_train)
    add("svr", "StandardScaler + SVR(rbf, C=20) on diabetes", p, skl(p, float_input(10)),
        {"input": xd_test})
    # skl2onnx 1.20 cannot convert a pipeline ending in LinearSVC (it asks for a zipmap
    # option LinearSVC does not have): the data is standardized beforehand instead.
    for name, x_train, x_test, y_train, data in [
        ("linear-svc", xw_train, xw_test, yw_train, "wine"),
        ("linear-svc-binary", xb_train, xb_test, yb_train, "breast_cancer"),
    ]:
        scale = StandardScaler().fit(x_train)
        p = LinearSVC(random_state=0).fit(scale.transform(x_train), y_train)
        add(name, f"LinearSVC on standardized {data}", p, skl(p, float_input(x_train.shape[1])),
            {"input": scale.transform(x_test).astype(np.float32)})

    p = make_pipeline(Normalizer(norm="l2"), Binarizer(threshold=0.3),
                      LogisticRegression(max_iter=500)).fit(xi_train, yi_train)
    add("normalizer-binarizer", "Normalizer(l2) + Binarizer(0.3) + LogisticRegression on iris",
        p, skl(p, float_input(4)), {"input": xi_test})
    p = make_pipeline(Normalizer(norm="max"), LogisticRegression(max_iter=500))
    p.fit(xw_train, yw_train)
    add("normalizer-max", "Normalizer(max) + LogisticRegression on wine", p,
        skl(p, float_input(13)), {"input": xw_test})

    texts = np.array([t for t, _ in CORPUS], dtype=object)
    labels = np.array([c for _, c in CORPUS])
    text_type = [("input", StringTensorType([None, 1]))]
    # onnxruntime's StringNormalizer wants a locale the machine has: en_US is not everywhere.
    tfidf = TfidfVectorizer(ngram_range=(1, 2))
    p = make_pipeline(tfidf, LogisticRegression(max_iter=500)).fit(texts, labels)
    add("tfidf-logreg", "TfidfVectorizer(1- and 2-grams) + LogisticRegression on a 20-sentence "
        "corpus (string labels)", p,
        skl(p, text_type, options={id(tfidf): {"locale": "C.UTF-8"}}), {"input": TEXT_TESTS})
    count = CountVectorizer(lowercase=False)
    p = make_pipeline(count, LogisticRegression(max_iter=500)).fit(texts, labels)
    add("count-separators-logreg", "CountVectorizer(case kept), skl2onnx separators option, + "
        "LogisticRegression on the same corpus", p,
        skl(p, text_type, options={id(count): {"separators": [" ", ",", "!", "[?]"]}}),
        {"input": TEXT_TESTS})

    p = LogisticRegression(max_iter=500).fit(xi_train, yi_train)
    add("zipmap-logreg", "LogisticRegression on iris with skl2onnx's default ZipMap "
        "(int64 keys)", p, skl(p, float_input(4), zipmap=True), {"input": xi_test})
    p = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(xs_train, ys_train)
    add("zipmap-string-labels", "StandardScaler + LogisticRegression with string classes and "
        "the default ZipMap (string keys) on iris", p, skl(p, float_input(4), zipmap=True),
        {"input": xs_test})

    p = KMeans(n_clusters=3, n_init=3, random_state=0).fit(xi_train)
    add("kmeans", "KMeans(3 clusters) on iris", p, skl(p, float_input(4)), {"input": xi_test})
    return out


# --------------------------------------------------------------------------
# Hand-written graphs
# --------------------------------------------------------------------------


def graph_model(nodes, inputs, outputs, initializers=(), value_info=(), ml_opset=1, opset=17,
                ms=False):
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("ai.onnx.ml", ml_opset)]
    if ms:
        imports.append(helper.make_opsetid("com.microsoft", 1))
    graph = helper.make_graph(nodes, "spec", inputs, outputs, initializer=list(initializers),
                              value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=imports, producer_name="cairn-tests")
    model.ir_version = 8
    if not ms:
        onnx.checker.check_model(model, full_check=True)
    return model


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def ml(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, domain="ai.onnx.ml", **attrs)


F, I64, S, D = TensorProto.FLOAT, TensorProto.INT64, TensorProto.STRING, TensorProto.DOUBLE


def floats(width, dtype=np.float32, low=-2.0, high=2.0, zero_rows=False):
    def make(rng, rows):
        x = rng.uniform(low, high, size=(rows, width)).round(2).astype(dtype)
        if zero_rows:
            x[::4] = 0
        return {"input": x}

    return make


def classifier(op_attrs, width=3, labels=None, in_type=F, dtype=np.float32, op="LinearClassifier",
               features=3, ml_opset=1):
    labels = labels if labels is not None else dict(classlabels_ints=list(range(10, 10 + width)))
    label_type = S if "classlabels_strings" in labels else I64
    scores = 2 if width == 1 else width
    node = ml(op, ["input"], ["label", "probabilities"], **op_attrs, **labels)
    return graph_model([node], [vi("input", in_type, ["N", features])],
                       [vi("label", label_type, ["N"]), vi("probabilities", F, ["N", scores])],
                       ml_opset=ml_opset)


POSTS = ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"]


def specs():
    out = []

    def add(name, description, model, inputs, margin=None):
        out.append(Model(name, "onnx.helper", description, model, inputs, margin))

    coef3 = [0.5, -1.0, 0.25, -0.75, 0.5, 1.0, 0.2, 0.3, -0.6]
    for post in POSTS:
        # PROBIT needs scores in (0, 1).
        coefficients = [abs(c) * 0.1 for c in coef3] if post == "PROBIT" else coef3
        scale = 0.1 if post == "PROBIT" else 1.0
        add(f"spec-linear-clf-{post.lower()}", f"LinearClassifier, 3 classes, {post}",
            classifier(dict(coefficients=coefficients,
                            intercepts=[0.1 * scale, 0.5 * scale, 0.3 * scale],
                            post_transform=post)),
            floats(3, low=0.0, high=1.0) if post == "PROBIT" else floats(3))
    for post in POSTS[:4]:
        add(f"spec-linear-binary-{post.lower()}", f"LinearClassifier, one coefficient row and "
            f"two labels, {post}",
            classifier(dict(coefficients=[0.5, -1.0, 0.25], intercepts=[0.1],
                            post_transform=post), width=1, labels=dict(classlabels_ints=[3, 8])),
            floats(3))
    add("spec-linear-binary-strings", "LinearClassifier, one row, two string labels, int64 input",
        classifier(dict(coefficients=[0.5, -1.0, 0.25], intercepts=[0.1]), width=1,
                   labels=dict(classlabels_strings=["no", "yes"]), in_type=I64),
        lambda rng, rows: {"input": rng.integers(-3, 4, size=(rows, 3)).astype(np.int64)})
    add("spec-linear-clf-double", "LinearClassifier, 3 string classes, double input",
        classifier(dict(coefficients=coef3, intercepts=[0.1, 0.5, 0.3], post_transform="SOFTMAX"),
                   labels=dict(classlabels_strings=["a", "b", "c"]), in_type=D),
        floats(3, dtype=np.float64))
    for post, targets in [("NONE", 1), ("PROBIT", 1), ("SOFTMAX", 3), ("LOGISTIC", 3),
                          ("SOFTMAX_ZERO", 3)]:
        scale = 0.1 if post == "PROBIT" else 1.0
        coefficients = [abs(c) * scale if post == "PROBIT" else c for c in coef3[:3 * targets]]
        node = ml("LinearRegressor", ["input"], ["variable"], targets=targets,
                  coefficients=coefficients,
                  intercepts=[0.2 * scale] * targets, post_transform=post)
        add(f"spec-linear-reg-{post.lower()}-{targets}", f"LinearRegressor, {targets} targets, "
            f"{post}", graph_model([node], [vi("input", F, ["N", 3])],
                                   [vi("variable", F, ["N", targets])]),
            floats(3, low=0.0, high=1.0) if post == "PROBIT" else floats(3))
    node = ml("LinearRegressor", ["input"], ["variable"], targets=1, coefficients=[1.0, 2.0, 3.0],
              intercepts=[5.0, 6.0])
    add("spec-linear-reg-intercepts", "LinearRegressor whose intercepts do not match its targets "
        "(onnxruntime ignores them)",
        graph_model([node], [vi("input", F, ["N", 3])], [vi("variable", F, ["N", 1])]), floats(3))

    for name, in_type, dtype, attrs in [
        ("spec-scaler-int64", I64, np.int64, dict(scale=[0.5], offset=[1.0])),
        ("spec-scaler-double", D, np.float64, dict(scale=[0.5, 2.0, -1.0], offset=[0.1, 0.2, 0.3])),
    ]:
        node = ml("Scaler", ["input"], ["variable"], **attrs)
        make = ((lambda rng, rows: {"input": rng.integers(-5, 6, size=(rows, 3)).astype(np.int64)})
                if dtype == np.int64 else floats(3, dtype=dtype))
        add(name, f"Scaler, {dtype.__name__} input, scale and offset {attrs}",
            graph_model([node], [vi("input", in_type, ["N", 3])], [vi("variable", F, ["N", 3])]),
            make)
    node = ml("Imputer", ["input"], ["variable"], imputed_value_int64s=[7, 8, 9],
              replaced_value_int64=-1)
    add("spec-imputer-int64", "Imputer of int64 -1 by column",
        graph_model([node], [vi("input", I64, ["N", 3])], [vi("variable", I64, ["N", 3])]),
        lambda rng, rows: {"input": rng.integers(-1, 3, size=(rows, 3)).astype(np.int64)})
    node = ml("Imputer", ["input"], ["variable"], imputed_value_floats=[0.5],
              replaced_value_float=0.0)
    add("spec-imputer-zero", "Imputer of float 0 by one value",
        graph_model([node], [vi("input", F, ["N", 3])], [vi("variable", F, ["N", 3])]),
        lambda rng, rows: {"input": rng.choice([0.0, 1.5, -2.0], size=(rows, 3)).astype(np.float32)})
    node = ml("OneHotEncoder", ["input"], ["variable"], cats_int64s=[1, 3, 5], zeros=1)
    add("spec-onehot-float", "OneHotEncoder of int64 categories on a float input (truncated)",
        graph_model([node], [vi("input", F, ["N", 2])], [vi("variable", F, ["N", 2, 3])]),
        lambda rng, rows: {"input": rng.choice([1.0, 1.7, 3.2, 4.0, 5.9], size=(rows, 2)).astype(np.float32)})
    for norm in ["MAX", "L1", "L2"]:
        node = ml("Normalizer", ["input"], ["variable"], norm=norm)
        add(f"spec-normalizer-{norm.lower()}", f"Normalizer {norm}, rows of zeros among them",
            graph_model([node], [vi("input", F, ["N", 3])], [vi("variable", F, ["N", 3])]),
            floats(3, zero_rows=True))
    node = ml("Normalizer", ["input"], ["variable"], norm="L2")
    add("spec-normalizer-int64", "Normalizer L2 of an int64 input",
        graph_model([node], [vi("input", I64, ["N", 3])], [vi("variable", F, ["N", 3])]),
        lambda rng, rows: {"input": rng.integers(-4, 5, size=(rows, 3)).astype(np.int64)})
    node = ml("Binarizer", ["input"], ["variable"], threshold=0.25)
    add("spec-binarizer", "Binarizer(0.25)",
        graph_model([node], [vi("input", F, ["N", 3])], [vi("variable", F, ["N", 3])]), floats(3))

    # LabelEncoder: opset 1 both ways, opset 2 key/value types, opset 4's NaN key.
    words = ["red", "green", "blue", "green"]
    node = ml("LabelEncoder", ["input"], ["variable"], classes_strings=words, default_int64=-7)
    add("spec-label-encoder-1-to-int", "LabelEncoder opset 1, strings to index (a duplicate: "
        "the last wins)",
        graph_model([node], [vi("input", S, ["N", 2])], [vi("variable", I64, ["N", 2])]),
        lambda rng, rows: {"input": rng.choice(words + ["grey"], size=(rows, 2)).astype(object)})
    node = ml("LabelEncoder", ["input"], ["variable"], classes_strings=words)
    add("spec-label-encoder-1-to-string", "LabelEncoder opset 1, index to strings",
        graph_model([node], [vi("input", I64, ["N", 2])], [vi("variable", S, ["N", 2])]),
        lambda rng, rows: {"input": rng.integers(-1, 6, size=(rows, 2)).astype(np.int64)})
    for keys, values, in_type, out_type, make in [
        (dict(keys_strings=words), dict(values_strings=["r", "g", "b", "G"]), S, S,
         lambda rng, rows: {"input": rng.choice(words + ["x"], size=(rows, 2)).astype(object)}),
        (dict(keys_int64s=[1, 2, 3]), dict(values_floats=[0.5, 1.5, 2.5]), I64, F,
         lambda rng, rows: {"input": rng.integers(0, 5, size=(rows, 2)).astype(np.int64)}),
        (dict(keys_floats=[0.5, float("nan"), -0.0]), dict(values_int64s=[5, 6, 7]), F, I64,
         lambda rng, rows: {"input": rng.choice([0.5, np.nan, 0.0, 2.0], size=(rows, 2)).astype(np.float32)}),
        (dict(keys_strings=words), dict(values_int64s=[1, 2, 3, 4]), S, I64,
         lambda rng, rows: {"input": rng.choice(words + ["x"], size=(rows, 2)).astype(object)}),
    ]:
        for opset in (2, 4) if "keys_floats" in keys else (2,):
            k, v = next(iter(keys)), next(iter(values))
            node = ml("LabelEncoder", ["input"], ["variable"], **keys, **values)
            add(f"spec-label-encoder-{opset}-{k[5:]}-{v[7:]}", f"LabelEncoder opset {opset}, "
                f"{k} to {v} (duplicates: the first wins; NaN keys match from opset 4)",
                graph_model([node], [vi("input", in_type, ["N", 2])],
                            [vi("variable", out_type, ["N", 2])], ml_opset=opset), make)
    node = ml("CategoryMapper", ["input"], ["variable"], cats_strings=words,
              cats_int64s=[1, 2, 3, 4])
    add("spec-category-mapper-to-int", "CategoryMapper strings to int64, no defaults (-1)",
        graph_model([node], [vi("input", S, ["N", 2])], [vi("variable", I64, ["N", 2])]),
        lambda rng, rows: {"input": rng.choice(words + ["x"], size=(rows, 2)).astype(object)})
    node = ml("CategoryMapper", ["input"], ["variable"], cats_strings=words,
              cats_int64s=[1, 2, 3, 4], default_string="?", default_int64=0)
    add("spec-category-mapper-to-string", "CategoryMapper int64 to strings, both defaults set",
        graph_model([node], [vi("input", I64, ["N", 2])], [vi("variable", S, ["N", 2])]),
        lambda rng, rows: {"input": rng.integers(0, 6, size=(rows, 2)).astype(np.int64)})

    # ArrayFeatureExtractor: columns of a matrix, and labels of a class list by index.
    idx = helper.make_tensor("idx", I64, [2], [2, 0])
    node = ml("ArrayFeatureExtractor", ["input", "idx"], ["variable"])
    add("spec-array-feature-extractor", "ArrayFeatureExtractor, columns 2 and 0",
        graph_model([node], [vi("input", F, ["N", 3])], [vi("variable", F, ["N", 2])], [idx]),
        floats(3))
    classes = helper.make_tensor("classes", S, [3], [b"cat", b"dog", b"eel"])
    nodes = [helper.make_node("ArgMax", ["input"], ["best"], axis=1, keepdims=0),
             ml("ArrayFeatureExtractor", ["classes", "best"], ["picked"]),
             helper.make_node("Reshape", ["picked", "flat"], ["label"])]
    flat = helper.make_tensor("flat", I64, [1], [-1])
    add("spec-array-feature-extractor-labels", "ArgMax, then ArrayFeatureExtractor over a "
        "class list (a 1-D input: onnxruntime answers [1, N]), then Reshape",
        graph_model(nodes, [vi("input", F, ["N", 3])], [vi("label", S, ["N"])], [classes, flat]),
        floats(3))
    node = ml("FeatureVectorizer", ["a", "b"], ["variable"], inputdimensions=[3, 2])
    add("spec-feature-vectorizer", "FeatureVectorizer of two int64 inputs, one padded to 3 "
        "columns, one cut to 2",
        graph_model([node], [vi("a", I64, ["N", 2]), vi("b", I64, ["N", 3])],
                    [vi("variable", F, ["N", 5])]),
        lambda rng, rows: {"a": rng.integers(-3, 4, size=(rows, 2)).astype(np.int64),
                           "b": rng.integers(-9, 9, size=(rows, 3)).astype(np.int64)})

    # SVMs in liblinear mode (no support vectors) and a one-class regressor.
    # onnxruntime refuses an SVM without kernel_params, even where it does not read them.
    svm = dict(coefficients=[0.5, -1.0, 0.25, -0.75, 0.5, 1.0], rho=[0.1],
               kernel_params=[0.0, 0.0, 0.0])
    add("spec-svm-linear-binary", "SVMClassifier without support vectors (liblinear), 2 classes",
        classifier(svm, width=2, op="SVMClassifier", labels=dict(classlabels_ints=[0, 1])),
        floats(3), margin=lambda inputs: np.abs(inputs["input"] @ np.array([0.5, -1.0, 0.25]) + 0.1))
    add("spec-svm-linear-3", "SVMClassifier without support vectors, 3 classes, LOGISTIC",
        classifier(dict(coefficients=coef3, rho=[0.2], post_transform="LOGISTIC",
                        kernel_params=[0.0, 0.0, 0.0]),
                   op="SVMClassifier"), floats(3))
    node = ml("SVMRegressor", ["input"], ["variable"], coefficients=[0.5, -1.0, 0.25], rho=[0.3],
              kernel_type="RBF", kernel_params=[0.5, 0.0, 3.0])
    add("spec-svm-regressor-linear", "SVMRegressor without support vectors (the kernel is "
        "ignored)", graph_model([node], [vi("input", F, ["N", 3])], [vi("variable", F, ["N", 1])]),
        floats(3))
    node = ml("SVMRegressor", ["input"], ["variable"], coefficients=[0.5, -1.0], rho=[0.1],
              n_supports=2, support_vectors=[1.0, 0.0, 0.5, 0.0, 1.0, -0.5], one_class=1,
              kernel_type="POLY", kernel_params=[0.5, 1.0, 2.0])
    add("spec-svm-one-class-poly", "SVMRegressor, poly kernel of degree 2, one_class (±1)",
        graph_model([node], [vi("input", F, ["N", 3])], [vi("variable", F, ["N", 1])]),
        floats(3), margin=None)

    # Text: the Tokenizer's separators with marks, characters, and TfIdfVectorizer's modes.
    def doc(rng, rows):
        texts = ["a b, c", "bb a.a", "c", "a;b b", "", "ab"]
        return {"input": rng.choice(texts, size=(rows, 1)).astype(object)}

    node = helper.make_node("Tokenizer", ["input"], ["tokens"], domain="com.microsoft", mark=1,
                            pad_value="#", mincharnum=1, separators=[" ", ",", "[.;]"])
    add("spec-tokenizer-separators", "Tokenizer (com.microsoft) with three separators and marks",
        graph_model([node], [vi("input", S, ["N", 1])], [vi("tokens", S, None)], ms=True), doc)
    node = helper.make_node("Tokenizer", ["input"], ["tokens"], domain="com.microsoft", mark=0,
                            pad_value="_", mincharnum=1, tokenexp=".")
    add("spec-tokenizer-chars", "Tokenizer (com.microsoft) of characters",
        graph_model([node], [vi("input", S, ["N"])], [vi("tokens", S, None)], ms=True),
        lambda rng, rows: {"input": rng.choice(["abc", "é", "xy"], size=rows).astype(object)})
    pool = dict(pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7], ngram_counts=[0, 4],
                ngram_indexes=[0, 1, 2, 3, 4, 5, 6])
    for mode, extra in [("TF", dict(max_skip_count=0)), ("IDF", dict(max_skip_count=2)),
                        ("TFIDF", dict(max_skip_count=1,
                                       weights=[0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]))]:
        node = helper.make_node("TfIdfVectorizer", ["input"], ["variable"], mode=mode,
                                min_gram_length=1, max_gram_length=2, **pool, **extra)
        add(f"spec-tfidf-int-{mode.lower()}", f"TfIdfVectorizer of int64 1- and 2-grams, {mode}, "
            f"{extra}", graph_model([node], [vi("input", I64, ["N", 6])],
                                    [vi("variable", F, ["N", 7])]),
            lambda rng, rows: {"input": rng.integers(2, 9, size=(rows, 6)).astype(np.int64)})
    node = helper.make_node("TfIdfVectorizer", ["input"], ["variable"], mode="TF",
                            min_gram_length=2, max_gram_length=2, max_skip_count=0,
                            pool_strings=["a", "b", "b", "a", "a", "b"], ngram_counts=[0, 2],
                            ngram_indexes=[0, 1, 2, 3])
    add("spec-tfidf-string-bigrams", "TfIdfVectorizer of string 2-grams only (min 2)",
        graph_model([node], [vi("input", S, ["N", 4])], [vi("variable", F, ["N", 4])]),
        lambda rng, rows: {"input": rng.choice(["a", "b", "c"], size=(rows, 4)).astype(object)})
    node = helper.make_node("StringNormalizer", ["input"], ["variable"],
                            case_change_action="UPPER", is_case_sensitive=1, stopwords=["zzz"],
                            locale="C.UTF-8")
    add("spec-string-normalizer-upper", "StringNormalizer UPPER, case-sensitive stop words "
        "(none in the rows)",
        graph_model([node], [vi("input", S, ["N"])], [vi("variable", S, ["N"])]),
        lambda rng, rows: {"input": rng.choice(["abc", "ZzZ", "hé!", "Q"], size=rows).astype(object)})
    return out


def torch_style(renamed):
    """A torch.onnx-style MLP: the batch named `batch` on the input, shapes annotated on the
    intermediate tensors (value_info), the flattening done with Shape/Gather/Concat/Reshape."""
    rng = np.random.default_rng(5)
    w1 = rng.normal(size=(16, 6)).astype(np.float32) * 0.5
    w2 = rng.normal(size=(3, 16)).astype(np.float32) * 0.5
    inits = [onnx.numpy_helper.from_array(w1, "w1"),
             onnx.numpy_helper.from_array(np.zeros(16, np.float32) + 0.1, "b1"),
             onnx.numpy_helper.from_array(w2, "w2"),
             onnx.numpy_helper.from_array(np.array([0.1, -0.2, 0.0], np.float32), "b2"),
             onnx.numpy_helper.from_array(np.array(0, np.int64), "zero"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
             onnx.numpy_helper.from_array(np.array([0], np.int64), "axes")]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
        helper.make_node("Reshape", ["r", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    inner = "batch_size" if renamed else "batch"
    value_info = [vi("h", F, [inner, 16]), vi("r", F, [inner, 16]), vi("s", I64, [2]),
                  vi("flat", F, [inner, 16]), vi("logits", F, [inner, 3])]
    return graph_model(nodes, [vi("x", F, ["batch", 6])],
                       [vi("label", I64, ["batch"]), vi("probabilities", F, ["batch", 3])],
                       inits, value_info)


def torch_models():
    def rows(rng, n):
        return {"x": rng.normal(size=(n, 6)).round(2).astype(np.float32)}

    config = ["max_batch_size = 8"]
    return [
        Model("torch-style", "onnx.helper", "torch.onnx-style MLP: input batch `batch`, "
              "intermediate value_info with the same name, max_batch_size = 8",
              torch_style(False), rows, config=config),
        Model("torch-style-renamed", "onnx.helper", "the same MLP with its intermediate "
              "value_info naming the batch `batch_size` (onnxruntime ignores the mismatch)",
              torch_style(True), rows, config=config),
    ]


def small_cnn():
    """Conv, BatchNormalization, Relu, MaxPool, GlobalAveragePool, Flatten, Gemm, Softmax:
    a vision model's layers, on 1x8x8 images."""
    rng = np.random.default_rng(9)
    f = np.float32
    inits = [onnx.numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(f) * 0.5, "k"),
             onnx.numpy_helper.from_array(rng.normal(size=4).astype(f) * 0.1, "kb"),
             onnx.numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(f), "scale"),
             onnx.numpy_helper.from_array(rng.normal(size=4).astype(f) * 0.1, "bias"),
             onnx.numpy_helper.from_array(rng.normal(size=4).astype(f) * 0.1, "mean"),
             onnx.numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(f), "var"),
             onnx.numpy_helper.from_array(rng.normal(size=(3, 4)).astype(f), "w"),
             onnx.numpy_helper.from_array(np.array([0.1, 0.0, -0.1], f), "wb")]
    nodes = [
        helper.make_node("Conv", ["image", "k", "kb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "wb"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    return graph_model(nodes, [vi("image", F, ["N", 1, 8, 8])],
                       [vi("label", I64, ["N"]), vi("probabilities", F, ["N", 3])], inits)


def fp16_models():
    """Half precision as onnxconverter-common's float16 converter writes it (the usual way to
    halve a model): every layer FP16 with FP16 inputs and outputs, FP16 inside FP32 edges (Cast
    nodes), and a mixed graph keeping its Softmax in FP32."""
    from onnxconverter_common import float16

    def half(model, **options):
        converted = float16.convert_float_to_float16(model, **options)
        onnx.checker.check_model(converted, full_check=True)
        return converted

    def rows(dtype):
        def make(rng, n):
            return {"x": rng.normal(size=(n, 6)).round(2).astype(dtype)}
        return make

    def images(rng, n):
        return {"image": rng.normal(size=(n, 1, 8, 8)).round(2).astype(np.float16)}

    def gap(name):
        """Per row, the gap between the two best probabilities."""
        def margin(inputs):
            import onnxruntime as ort
            sess = ort.InferenceSession(models[name].SerializeToString(),
                                        providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            proba = sess.run(names, inputs)[names.index("probabilities")].astype(np.float64)
            top = np.sort(proba, axis=1)
            return top[:, -1] - top[:, -2]
        return margin

    models = {
        "fp16-mlp": half(torch_style(False)),
        "fp16-mlp-fp32-io": half(torch_style(False), keep_io_types=True),
        "fp16-mlp-mixed": half(torch_style(False), keep_io_types=True, op_block_list=["Softmax"]),
        "fp16-cnn": half(small_cnn()),
    }
    config = ["max_batch_size = 16"]
    exporter = "onnxconverter-common"
    return [
        Model("fp16-mlp", exporter, "the torch-style MLP in FP16, FP16 inputs and outputs",
              models["fp16-mlp"], rows(np.float16), gap("fp16-mlp"), config, 0.02),
        Model("fp16-mlp-fp32-io", exporter, "the MLP in FP16 inside FP32 inputs and outputs "
              "(keep_io_types)", models["fp16-mlp-fp32-io"], rows(np.float32),
              gap("fp16-mlp-fp32-io"), config, 0.02),
        Model("fp16-mlp-mixed", exporter, "mixed precision: FP16 layers, Softmax kept in FP32 "
              "(op_block_list), FP32 edges", models["fp16-mlp-mixed"], rows(np.float32),
              gap("fp16-mlp-mixed"), config, 0.02),
        Model("fp16-cnn", exporter, "a small CNN (Conv, BatchNormalization, MaxPool, "
              "GlobalAveragePool, Gemm) in FP16, FP16 inputs and outputs", models["fp16-cnn"],
              images, gap("fp16-cnn"), config, 0.02),
    ]


def all_models():
    return exported() + specs() + torch_models() + fp16_models()
