"""Build the test-only model repository and the expected outputs used by tests.

Run from the repository root, after models/generate.py (expected.json also
covers the example models it produces):

    .venv/bin/python tests/models/generate.py

The graphs here are written by hand with onnx.helper so each one isolates a
single server concern: multiple inputs/outputs, every V2 datatype, strings,
fixed (non-batched) shapes, a repository entry without config.toml, and a file
that is not ONNX at all. Each model is checked by onnx.checker and run through
onnxruntime; onnxruntime's results are what tests compare the server against.

Writes, relative to this script's directory:

    <name>/1/model.onnx, <name>/config.toml (where the model has one)
    expected.json  {model path relative to the repo root: [test case, ...]}
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent

OPSET = 17
IR_VERSION = 8

# Label outputs are an argmax over probabilities. Rows whose top two classes
# are closer than this are skipped, so a different (but correct) float32
# evaluation order in another runtime cannot flip the expected label.
MIN_LABEL_MARGIN = 1e-3

V2_DATATYPES = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(object): "BYTES",
}


# --------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------

def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cairn-tests",
    )
    # Pinned rather than taken from the installed onnx package, so the files
    # stay loadable by older runtimes and do not change when onnx is upgraded.
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _batched(name: str, elem_type: int, *dims: int) -> onnx.ValueInfoProto:
    """A tensor whose first dimension is the symbolic batch size N."""
    return helper.make_tensor_value_info(name, elem_type, ["N", *dims])


def simple(elem_type: int, graph_name: str) -> onnx.ModelProto:
    """Triton's classic example: two [N,16] inputs, their sum and difference."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        graph_name,
        inputs=[_batched("INPUT0", elem_type, 16), _batched("INPUT1", elem_type, 16)],
        outputs=[_batched("OUTPUT0", elem_type, 16), _batched("OUTPUT1", elem_type, 16)],
    )
    return _model(graph)


def dtypes() -> onnx.ModelProto:
    """One independent computation per V2 datatype, all batched on N."""
    initializers = [
        numpy_helper.from_array(np.array(2.0, dtype=np.float64), "two_f64"),
        numpy_helper.from_array(np.array(7, dtype=np.int64), "seven_i64"),
        numpy_helper.from_array(np.array(3, dtype=np.int32), "three_i32"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
    ]
    nodes = [
        helper.make_node("Mul", ["f64", "two_f64"], ["f64_out"]),
        helper.make_node("Add", ["i64", "seven_i64"], ["i64_out"]),
        helper.make_node("Not", ["flag"], ["flag_out"]),
        # Both reductions drop the feature axis, so outputs can have a
        # different rank from their input.
        helper.make_node("ReduceSum", ["f32", "axis_1"], ["f32_sum"], keepdims=0),
        helper.make_node("ArgMax", ["f32"], ["f32_argmax"], axis=1, keepdims=0),
        helper.make_node("Mul", ["i32", "three_i32"], ["i32_times_3"]),
        helper.make_node("Cast", ["i32_times_3"], ["i32_out"], to=TensorProto.INT32),
    ]
    graph = helper.make_graph(
        nodes,
        "dtypes",
        inputs=[
            _batched("f64", TensorProto.DOUBLE, 3),
            _batched("i64", TensorProto.INT64, 2),
            _batched("flag", TensorProto.BOOL, 2),
            _batched("f32", TensorProto.FLOAT, 4),
            _batched("i32", TensorProto.INT32, 1),
        ],
        outputs=[
            _batched("f64_out", TensorProto.DOUBLE, 3),
            _batched("i64_out", TensorProto.INT64, 2),
            _batched("flag_out", TensorProto.BOOL, 2),
            _batched("f32_sum", TensorProto.FLOAT),
            _batched("f32_argmax", TensorProto.INT64),
            _batched("i32_out", TensorProto.INT32, 1),
        ],
        initializer=initializers,
    )
    return _model(graph)


def strings() -> onnx.ModelProto:
    """STRING in, STRING out, unchanged (V2 BYTES)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["text_out"])],
        "strings",
        inputs=[_batched("text", TensorProto.STRING, 1)],
        outputs=[_batched("text_out", TensorProto.STRING, 1)],
    )
    return _model(graph)


def fixed() -> onnx.ModelProto:
    """No batch dimension at all: y[2,2] = x[2,3] @ W[3,2] + B[2]."""
    w = np.array([[1.0, -1.0], [0.5, 2.0], [-0.25, 0.75]], dtype=np.float32)
    b = np.array([0.1, -0.2], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["y"]),
        ],
        "fixed",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    return _model(graph)


def corrupt_bytes() -> bytes:
    """64 seeded random bytes: a model file that no ONNX parser should accept."""
    data = np.random.default_rng(64).integers(0, 256, size=64, dtype=np.uint8).tobytes()
    try:
        onnx.load_from_string(data)
    except Exception:
        pass
    else:
        raise AssertionError("corrupt model bytes unexpectedly parse as ONNX")
    try:
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception:
        pass
    else:
        raise AssertionError("onnxruntime unexpectedly loads the corrupt model")
    return data


def config(comment: str, max_batch_size: int) -> str:
    return f"# {comment}\nmax_batch_size = {max_batch_size}\n"


def test_models():
    """(name, model or raw file bytes, config.toml text or None for no file)."""
    return [
        (
            "simple",
            simple(TensorProto.INT32, "simple"),
            config("Triton's classic add/sub example, INT32.", 8),
        ),
        # No config.toml: the server has to fall back to its defaults.
        ("simple_fp32", simple(TensorProto.FLOAT, "simple_fp32"), None),
        ("dtypes", dtypes(), config("One small computation per V2 datatype.", 16)),
        ("strings", strings(), config("STRING identity (V2 BYTES).", 8)),
        ("fixed", fixed(), config("Fixed [2,3] -> [2,2] shapes, no batch dimension.", 0)),
        (
            "corrupt",
            corrupt_bytes(),
            config("Not an ONNX file: loading this model must fail cleanly.", 4),
        ),
    ]


# --------------------------------------------------------------------------
# Test inputs
# --------------------------------------------------------------------------

# Chosen rather than random so both cases cover the awkward strings: empty,
# non-ASCII, and characters that need escaping in JSON.
STRING_CASES = [
    ["naïve café"],
    ["hello", "", "日本語", "line\nbreak", '"quoted" \\ tab\t'],
]


def simple_inputs(rng, rows: int, dtype) -> dict:
    def make() -> np.ndarray:
        if dtype == np.int32:
            # Small magnitudes: sums and differences cannot overflow INT32.
            return rng.integers(-1000, 1000, size=(rows, 16), dtype=np.int32)
        return rng.standard_normal((rows, 16)).astype(np.float32)

    return {"INPUT0": make(), "INPUT1": make()}


def dtypes_inputs(rng, rows: int) -> dict:
    return {
        "f64": rng.standard_normal((rows, 3)),
        "i64": rng.integers(-(2**40), 2**40, size=(rows, 2), dtype=np.int64),
        "flag": rng.integers(0, 2, size=(rows, 2)).astype(np.bool_),
        "f32": rng.standard_normal((rows, 4)).astype(np.float32),
        "i32": rng.integers(-1000, 1000, size=(rows, 1), dtype=np.int32),
    }


def strings_inputs(words: list[str]) -> dict:
    return {"text": np.array([[w] for w in words], dtype=object)}


def fixed_inputs(rng) -> dict:
    return {"x": rng.standard_normal((2, 3)).astype(np.float32)}


def load_example_models():
    """models/generate.py, imported for its data sets (nothing is retrained)."""
    path = REPO_ROOT / "models" / "generate.py"
    spec = importlib.util.spec_from_file_location("example_models", path)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while it executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def held_out_rows(rng, session: ort.InferenceSession, x_test: np.ndarray, rows: int) -> dict:
    """Random held-out rows whose predicted label is unambiguous."""
    proba = session.run(["probabilities"], {"input": x_test})[0]
    top2 = np.sort(proba, axis=1)[:, -2:]
    eligible = np.flatnonzero(top2[:, 1] - top2[:, 0] >= MIN_LABEL_MARGIN)
    picks = rng.choice(eligible, size=rows, replace=False)
    return {"input": x_test[np.sort(picks)]}


# --------------------------------------------------------------------------
# expected.json
# --------------------------------------------------------------------------

def tensor_json(array: np.ndarray) -> dict:
    datatype = V2_DATATYPES[array.dtype]
    if datatype == "BYTES":
        data = [str(v) for v in array.ravel()]
    else:
        # tolist() yields Python bool/int/float; a float32 widened to a Python
        # float is exact, so parsing it back as f64 and narrowing is lossless.
        data = array.ravel().tolist()
    return {"datatype": datatype, "shape": list(array.shape), "data": data}


def run_case(session: ort.InferenceSession, inputs: dict) -> dict:
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, inputs)
    return {
        "inputs": {name: tensor_json(value) for name, value in inputs.items()},
        "outputs": {name: tensor_json(value) for name, value in zip(names, outputs)},
    }


def session_for(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_test_model_outputs(name: str, case: dict) -> None:
    """Independent numpy re-computation, so expected.json is not just ORT's word."""
    i = {k: np.array(v["data"]).reshape(v["shape"]) for k, v in case["inputs"].items()}
    o = {k: np.array(v["data"]).reshape(v["shape"]) for k, v in case["outputs"].items()}
    if name in ("simple", "simple_fp32"):
        np.testing.assert_allclose(o["OUTPUT0"], i["INPUT0"] + i["INPUT1"], rtol=1e-6)
        np.testing.assert_allclose(o["OUTPUT1"], i["INPUT0"] - i["INPUT1"], rtol=1e-6)
    elif name == "dtypes":
        np.testing.assert_array_equal(o["f64_out"], i["f64"] * 2.0)
        np.testing.assert_array_equal(o["i64_out"], i["i64"] + 7)
        np.testing.assert_array_equal(o["flag_out"], ~i["flag"].astype(bool))
        np.testing.assert_allclose(o["f32_sum"], i["f32"].sum(axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(o["f32_argmax"], i["f32"].argmax(axis=1))
        np.testing.assert_array_equal(o["i32_out"], i["i32"] * 3)
    elif name == "strings":
        assert case["outputs"]["text_out"]["data"] == case["inputs"]["text"]["data"]
    elif name == "fixed":
        assert o["y"].shape == (2, 2)


def write_expected(expected: dict, path: Path) -> None:
    # One test case per line: diffable, and far shorter than indent= output,
    # which would put every number of a 256-wide row on its own line.
    lines = ["{"]
    items = list(expected.items())
    for i, (model_path, cases) in enumerate(items):
        lines.append(f"  {json.dumps(model_path)}: [")
        for j, case in enumerate(cases):
            comma = "," if j < len(cases) - 1 else ""
            lines.append("    " + json.dumps(case, ensure_ascii=False) + comma)
        lines.append("  ]" + ("," if i < len(items) - 1 else ""))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == expected
    path.write_text(text, encoding="utf-8")


def main() -> None:
    expected: dict[str, list] = {}

    for name, model, config in test_models():
        version_dir = HERE / name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        model_path = version_dir / "model.onnx"
        data = model if isinstance(model, bytes) else model.SerializeToString()
        model_path.write_bytes(data)

        config_path = HERE / name / "config.toml"
        if config is None:
            config_path.unlink(missing_ok=True)
        else:
            config_path.write_text(config)

        print(f"{model_path.relative_to(REPO_ROOT)}: {len(data)} bytes")
        if name == "corrupt":
            continue

        session = session_for(model_path)
        # A seed per model keeps each model's cases stable when others change.
        rng = np.random.default_rng(sum(name.encode()))
        if name == "fixed":
            inputs = [fixed_inputs(rng), fixed_inputs(rng)]
        elif name == "simple":
            inputs = [simple_inputs(rng, rows, np.int32) for rows in (1, 5)]
        elif name == "simple_fp32":
            inputs = [simple_inputs(rng, rows, np.float32) for rows in (1, 5)]
        elif name == "dtypes":
            inputs = [dtypes_inputs(rng, rows) for rows in (1, 5)]
        elif name == "strings":
            inputs = [strings_inputs(words) for words in STRING_CASES]
        else:
            raise AssertionError(name)

        cases = [run_case(session, i) for i in inputs]
        for case in cases:
            check_test_model_outputs(name, case)
        expected[str(model_path.relative_to(REPO_ROOT))] = cases

    example = load_example_models()
    for spec in example.MODELS:
        model_path = REPO_ROOT / "models" / spec.name / str(spec.version) / "model.onnx"
        if not model_path.exists():
            raise SystemExit(f"{model_path} is missing: run models/generate.py first")
        session = session_for(model_path)
        x_test = spec.data().x_test
        rng = np.random.default_rng(sum(f"{spec.name}/{spec.version}".encode()))
        row_counts = (1, 3) if spec.name == "mlp-large" else (1, 5)
        expected[str(model_path.relative_to(REPO_ROOT))] = [
            run_case(session, held_out_rows(rng, session, x_test, rows)) for rows in row_counts
        ]

    write_expected(expected, HERE / "expected.json")
    for model_path, cases in expected.items():
        print(f"expected.json: {model_path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
